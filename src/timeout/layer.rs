use std::time::Duration;

use tower_layer::Layer;

use super::Timeout;

/// Applies a [`Timeout`] to the services it wraps.
///
/// See the [module docs](crate::timeout) for an example and what is bounded.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// Creates a layer whose services bound every call's response future by `timeout`.
    pub const fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }

    /// The duration each call is bounded by.
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.timeout)
    }
}
