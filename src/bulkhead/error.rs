//! The error of [`Bulkhead`](super::Bulkhead).

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// The bulkhead had no free slot (within its `max_wait`); the call was not made.
///
/// Displays as ``bulkhead `payments` is full (32 calls in flight)``. The downstream was not
/// called, so the call is safe to send again later, and this rejection says nothing about the
/// downstream's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkheadFull {
    name: Arc<str>,
    max_concurrent: usize,
}

impl BulkheadFull {
    /// Creates a `BulkheadFull` for the bulkhead `name` with cap `max_concurrent`.
    ///
    /// Public so tests and mocks can produce the same error bulwark does.
    pub fn new(name: impl Into<Arc<str>>, max_concurrent: usize) -> Self {
        BulkheadFull {
            name: name.into(),
            max_concurrent,
        }
    }

    /// The name of the bulkhead that rejected the call.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many calls the bulkhead allows in flight at once.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }
}

impl fmt::Display for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bulkhead `{}` is full ({} calls in flight)",
            self.name, self.max_concurrent
        )
    }
}

impl Error for BulkheadFull {}
