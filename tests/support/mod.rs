//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Counts live futures: each `Tracked` future increments on creation and decrements on drop,
/// so a test can see whether an inner future was dropped (the call cancelled).
#[derive(Clone, Debug, Default)]
pub struct Live(Arc<AtomicUsize>);

impl Live {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Wraps `fut` so it counts as live until it is dropped.
    pub fn track<F>(&self, fut: F) -> Tracked<F> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Tracked {
            fut: Box::pin(fut),
            live: self.0.clone(),
        }
    }
}

/// A future counted by a [`Live`].
pub struct Tracked<F> {
    fut: Pin<Box<F>>,
    live: Arc<AtomicUsize>,
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.fut.as_mut().poll(cx)
    }
}

impl<F> Drop for Tracked<F> {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An error type of the tests' own, to check that inner errors pass through unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamError(pub &'static str);

impl std::fmt::Display for DownstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "downstream failed: {}", self.0)
    }
}

impl std::error::Error for DownstreamError {}
