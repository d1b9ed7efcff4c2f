//! The error of [`CircuitBreaker`](super::CircuitBreaker).

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::CircuitState;

/// The breaker rejected the call without calling the downstream.
///
/// Says which breaker, in which state, and how long until it lets a probe through:
///
/// - Open: ``circuit `payments` is open; next probe in 12.5s``, with
///   [`retry_after`](Self::retry_after) the rest of the break.
/// - HalfOpen with every probe slot taken: ``circuit `payments` is half-open and its probe
///   slots are taken``, with `retry_after` zero (a slot may free at any moment).
/// - ForcedOpen: ``circuit `payments` is forced open``, with no `retry_after`.
///
/// The downstream was not called, so the call is safe to send again after `retry_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    name: Arc<str>,
    state: CircuitState,
    retry_after: Option<Duration>,
}

impl CircuitOpen {
    /// Creates a `CircuitOpen` for the breaker `name`, rejecting in `state`, that lets a probe
    /// through after `retry_after` (if known).
    ///
    /// Public so tests and mocks can produce the same error bulwark does.
    pub fn new(
        name: impl Into<Arc<str>>,
        state: CircuitState,
        retry_after: Option<Duration>,
    ) -> Self {
        CircuitOpen {
            name: name.into(),
            state,
            retry_after,
        }
    }

    /// The name of the breaker that rejected the call.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The breaker's state when it rejected the call: Open, HalfOpen or ForcedOpen.
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// How long until the breaker lets a probe through, when known (not when forced open).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.state, self.retry_after) {
            (CircuitState::HalfOpen, _) => write!(
                f,
                "circuit `{}` is half-open and its probe slots are taken",
                self.name
            ),
            (CircuitState::ForcedOpen, _) | (_, None) => {
                write!(f, "circuit `{}` is forced open", self.name)
            }
            (_, Some(after)) => write!(
                f,
                "circuit `{}` is open; next probe in {:?}",
                self.name, after
            ),
        }
    }
}

impl Error for CircuitOpen {}
