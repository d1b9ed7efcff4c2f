use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::core::{CircuitCounters, Core};
use super::CircuitState;

/// Reads and steers one circuit breaker's shared state, for health checks, metrics and
/// operators.
///
/// Cheap to clone; every handle of a breaker sees and steers the same state. Get one from
/// [`CircuitBreakerLayer::handle`](super::CircuitBreakerLayer::handle) or
/// [`CircuitBreaker::handle`](super::CircuitBreaker::handle).
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    core: Arc<Core>,
}

impl CircuitBreakerHandle {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        CircuitBreakerHandle { core }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The current state.
    ///
    /// An Open breaker whose break has ended stays Open until the next call, which moves it to
    /// HalfOpen as a probe; [`time_until_probe`](Self::time_until_probe) is zero meanwhile.
    pub fn state(&self) -> CircuitState {
        self.core.state()
    }

    /// How long until the breaker lets a probe through: `Some` when Open, `None` otherwise.
    pub fn time_until_probe(&self) -> Option<Duration> {
        self.core.time_until_probe(Instant::now())
    }

    /// Probes in flight, while HalfOpen (zero in any other state).
    pub fn probes_in_flight(&self) -> u64 {
        self.core.probes_in_flight()
    }

    /// Failures in a row so far, while Closed (zero in any other state).
    pub fn consecutive_failures(&self) -> u64 {
        self.core.consecutive_failures()
    }

    /// The breaker's counters since it was built.
    pub fn counters(&self) -> CircuitCounters {
        self.core.counters()
    }

    /// Rejects every call until [`reset`](Self::reset) (or another forced state).
    pub fn force_open(&self) {
        self.core.force(CircuitState::ForcedOpen);
    }

    /// Admits every call and never trips until [`reset`](Self::reset).
    pub fn force_closed(&self) {
        self.core.force(CircuitState::ForcedClosed);
    }

    /// Switches the breaker off: it admits and counts every call and never trips, until
    /// [`reset`](Self::reset).
    pub fn disable(&self) {
        self.core.force(CircuitState::Disabled);
    }

    /// Back to Closed, from any state: clears the failure streak, the windows and the
    /// break's backoff. Calls admitted before the reset no longer move the state.
    pub fn reset(&self) {
        self.core.force(CircuitState::Closed);
    }
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("name", &self.name())
            .field("state", &self.state())
            .field("counters", &self.counters())
            .finish()
    }
}
