//! The error of [`Retry`](super::Retry).

use std::error::Error;
use std::fmt;

use crate::BoxError;

/// Why a [`Retry`](super::Retry) stopped retrying a call that kept failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GaveUp {
    /// The maximum of attempts was reached.
    MaxAttempts,
    /// The retry budget was spent: retries already add their allowed share of the traffic.
    Budget,
    /// The next attempt would start after the retry deadline.
    Deadline,
    /// A circuit breaker rejected the call and will not let a probe through before the next
    /// attempt (or is forced open).
    CircuitOpen,
    /// The downstream asked (with `Retry-After` or gRPC pushback) for a longer wait than the
    /// layer's cap.
    RetryAfter,
    /// The downstream asked not to be retried: a gRPC `grpc-retry-pushback-ms` that is not a
    /// non-negative integer (gRFC A6).
    Refused,
}

impl GaveUp {
    /// A short lowercase description, stable for logs and metrics labels: `max attempts`,
    /// `budget`, `deadline`, `circuit open`, `retry-after too long`, `refused by server`.
    pub const fn as_str(self) -> &'static str {
        match self {
            GaveUp::MaxAttempts => "max attempts",
            GaveUp::Budget => "budget",
            GaveUp::Deadline => "deadline",
            GaveUp::CircuitOpen => "circuit open",
            GaveUp::RetryAfter => "retry-after too long",
            GaveUp::Refused => "refused by server",
        }
    }
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call failed on every attempt the retry layer allowed.
///
/// Displays as `gave up after 3 attempts (max attempts)`; the last attempt's error is its
/// [`source`](Error::source), so [`crate::error::find`] still finds, say, the `Elapsed` or
/// `CircuitOpen` that ended it.
#[derive(Debug)]
pub struct RetriesExhausted {
    attempts: u32,
    reason: GaveUp,
    last: BoxError,
}

impl RetriesExhausted {
    /// The error of a call that gave up after `attempts` attempts for `reason`, with the last
    /// attempt's error (for tests of error handling, say).
    pub fn new(attempts: u32, reason: GaveUp, last: BoxError) -> Self {
        RetriesExhausted {
            attempts,
            reason,
            last,
        }
    }

    /// How many attempts were made, the first included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why no further attempt was made.
    pub fn reason(&self) -> GaveUp {
        self.reason
    }

    /// The last attempt's error.
    pub fn last_error(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.last
    }

    /// Takes the last attempt's error.
    pub fn into_last_error(self) -> BoxError {
        self.last
    }
}

impl fmt::Display for RetriesExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gave up after {} attempt{} ({})",
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.reason
        )
    }
}

impl Error for RetriesExhausted {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.last)
    }
}
