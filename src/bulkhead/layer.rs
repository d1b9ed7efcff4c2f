use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tower_layer::Layer;

use super::{Bulkhead, Shared};
use crate::error::ConfigError;

// === BulkheadLayer ===

/// Applies a [`Bulkhead`] to the services it wraps; every one of them shares this layer's slots.
///
/// Built with [`BulkheadLayer::builder`]. See the [module docs](crate::bulkhead).
#[derive(Clone)]
#[must_use]
pub struct BulkheadLayer {
    shared: Arc<Shared>,
}

impl BulkheadLayer {
    /// Starts building a bulkhead named `name` (used in errors, events and metrics).
    pub fn builder(name: impl Into<Arc<str>>) -> BulkheadLayerBuilder {
        BulkheadLayerBuilder {
            name: name.into(),
            max_concurrent: None,
            max_wait: Duration::ZERO,
        }
    }

    /// The shared slots, for the standard stack.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A handle to this bulkhead's shared state and counters.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.shared.clone())
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::from_shared(inner, self.shared.clone())
    }
}

impl fmt::Debug for BulkheadLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("name", &self.shared.name())
            .field("max_concurrent", &self.shared.max_concurrent())
            .field("max_wait", &self.shared.max_wait())
            .finish()
    }
}

// === BulkheadLayerBuilder ===

/// Builds a [`BulkheadLayer`]; [`build`](Self::build) validates the configuration.
#[derive(Debug, Clone)]
#[must_use]
pub struct BulkheadLayerBuilder {
    name: Arc<str>,
    max_concurrent: Option<usize>,
    max_wait: Duration,
}

impl BulkheadLayerBuilder {
    /// How many calls may be in flight at once (required; at least 1).
    pub fn max_concurrent(mut self, max_concurrent: usize) -> Self {
        self.max_concurrent = Some(max_concurrent);
        self
    }

    /// How long a call may wait for a free slot before it is rejected.
    ///
    /// Zero (the default) rejects at once when the bulkhead is full.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Checks the configuration, as [`build`](Self::build) does, and returns the cap.
    pub(crate) fn validate(&self) -> Result<usize, ConfigError> {
        const COMPONENT: &str = "bulkhead";
        let problem = match self.max_concurrent {
            None => "must be set",
            Some(0) => "must be greater than zero",
            Some(n) if n > Semaphore::MAX_PERMITS => "must be at most usize::MAX >> 3",
            Some(n) => return Ok(n),
        };
        Err(ConfigError::new(COMPONENT, "max_concurrent", problem))
    }

    /// Validates the configuration and creates the layer, with its shared slots.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field when `max_concurrent` was not set, is zero, or is
    /// above the largest number of slots a semaphore can hold (`usize::MAX >> 3`).
    pub fn build(self) -> Result<BulkheadLayer, ConfigError> {
        let max_concurrent = self.validate()?;
        Ok(BulkheadLayer {
            shared: Arc::new(Shared::new(self.name, max_concurrent, self.max_wait)),
        })
    }
}

// === BulkheadHandle ===

/// Reads a bulkhead's shared state and counters, for health checks and metrics.
///
/// Cheap to clone; every handle of a bulkhead sees the same numbers.
#[derive(Clone)]
pub struct BulkheadHandle {
    shared: Arc<Shared>,
}

impl BulkheadHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        BulkheadHandle { shared }
    }

    /// The bulkhead's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// How many calls may be in flight at once.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_concurrent()
    }

    /// How long a call may wait for a slot.
    pub fn max_wait(&self) -> Duration {
        self.shared.max_wait()
    }

    /// Slots taken now: calls in flight, plus slots reserved by `poll_ready` for a call that
    /// has not been made yet.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Free slots now: `max_concurrent - in_flight`.
    pub fn available(&self) -> usize {
        self.max_concurrent().saturating_sub(self.in_flight())
    }

    /// Callers waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.shared.waiting()
    }

    /// The most slots ever taken at once.
    ///
    /// Exact for a bulkhead that never waits. With a `max_wait`, the count is read from the
    /// semaphore just after each admission, so a peak that lasted only while other calls were
    /// finishing at that very moment may be missed.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight()
    }

    /// Calls rejected since the bulkhead was built.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected()
    }
}

impl fmt::Debug for BulkheadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadHandle")
            .field("name", &self.name())
            .field("max_concurrent", &self.max_concurrent())
            .field("in_flight", &self.in_flight())
            .field("waiting", &self.waiting())
            .field("peak_in_flight", &self.peak_in_flight())
            .field("rejected", &self.rejected())
            .finish()
    }
}
