//! Bound how long a call's response may take.
//!
//! [`Timeout`] fails a call with [`Elapsed`](error::Elapsed) when the inner service's response
//! future has not completed within the configured duration, and drops that future at that
//! moment, which cancels the call.
//!
//! ```
//! use std::time::Duration;
//! use bulwark::{timeout::error::Elapsed, BoxError, TimeoutLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let slow = service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_secs(10)).await;
//!     Ok::<_, BoxError>("done")
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_millis(500)))
//!     .service(slow);
//!
//! let err = svc.oneshot(()).await.unwrap_err();
//! let elapsed = err.downcast_ref::<Elapsed>().unwrap();
//! assert_eq!(elapsed.after(), Duration::from_millis(500));
//! assert_eq!(err.to_string(), "request timed out after 500ms");
//! # }
//! ```
//!
//! # What is bounded
//!
//! Only the response future returned by the inner service's `call`: the clock starts when
//! `call` is invoked and the call elapses once that duration has passed.
//!
//! - Not `poll_ready`: waiting for the inner service to become ready is not timed, so a
//!   service that never becomes ready is not cut short by this layer. Put a
//!   bulkhead with a bounded wait, or a load shedder, in front of it for that.
//! - Not the response body: for HTTP, the future completes when the response *head* arrives,
//!   and reading a slow body afterwards is not bounded here.
//!
//! A response that is ready on the same poll as the deadline wins: the inner future is always
//! polled before the timer. A zero duration therefore still lets through responses that are
//! ready on their first poll, and fails everything else.
//!
//! # Readiness
//!
//! Ready when the inner service is ready; an error from the inner `poll_ready` is passed
//! through (as a [`BoxError`]).
//!
//! # Errors
//!
//! The error type is [`BoxError`]. It holds either [`Elapsed`](error::Elapsed), when the
//! deadline passed, or the inner service's error unchanged, so `downcast_ref` to the inner
//! error type still works. [`crate::error::find`] finds `Elapsed` even when another layer has
//! wrapped it.
//!
//! # Panics
//!
//! Like every `tokio::time` timer, the timer panics when it is armed outside a tokio runtime
//! with the time driver enabled (`enable_time` or `enable_all`). It is armed only when the
//! inner future is not ready on its first poll, so a misconfigured runtime may show up only
//! once a call is slow.
//!
//! # Clone
//!
//! Cloning a `Timeout` clones the inner service; the layer holds no shared state.
//!
//! # Cost
//!
//! The success path allocates nothing: the response future holds the inner future and a
//! `tokio::time::Sleep` inline. An elapsed call emits a `debug` event with target
//! `bulwark::timeout`.

use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use crate::BoxError;

pub mod error;
pub mod future;
mod layer;

pub use self::layer::TimeoutLayer;

/// Fails a call whose response future takes longer than a set duration.
///
/// See the [module docs](self) for what is bounded and what is not.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Timeout<S> {
    /// Wraps `inner` so every call's response future is bounded by `timeout`.
    pub const fn new(inner: S, timeout: Duration) -> Self {
        Timeout { inner, timeout }
    }

    /// The duration each call is bounded by.
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }

    inner_service_accessors!();
}

impl<S, Request> Service<Request> for Timeout<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let response = self.inner.call(request);
        future::ResponseFuture::new(response, self.timeout)
    }
}
