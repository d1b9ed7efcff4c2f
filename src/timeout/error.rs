//! The error of [`Timeout`](super::Timeout).

use std::error::Error;
use std::fmt;
use std::time::Duration;

/// The response did not arrive within the timeout; the call was cancelled.
///
/// Displays as `request timed out after 500ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed {
    after: Duration,
}

impl Elapsed {
    /// Creates an `Elapsed` for a call that was given up after `after`.
    ///
    /// Public so tests and mocks can produce the same error bulwark does.
    pub const fn new(after: Duration) -> Self {
        Elapsed { after }
    }

    /// How long the call was allowed to take: the configured timeout.
    pub const fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request timed out after {:?}", self.after)
    }
}

impl Error for Elapsed {}
