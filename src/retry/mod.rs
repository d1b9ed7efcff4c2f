//! Retry failed calls with exponential backoff, within a shared retry budget.
//!
//! [`Retry`] sends a call again when its result is classified as a failure (by default: any
//! `Err`), after a backoff, up to a maximum of attempts, as long as the layer's shared
//! [`RetryBudget`] allows, and (optionally) no later than a deadline.
//!
//! ```
//! use std::time::Duration;
//! use bulwark::retry::{Jitter, RetryBudget};
//! use bulwark::{BoxError, RetryLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let retry = RetryLayer::builder("inventory")
//!     .max_attempts(3)                                                     // 1 call + 2 retries
//!     .backoff(Duration::from_millis(100), 2.0, Duration::from_secs(2))   // 100 ms, 200 ms, ...
//!     .jitter(Jitter::Full)
//!     .budget(RetryBudget::new(0.2, 10, Duration::from_secs(10)))          // +20% traffic at most
//!     .build()?;
//! let handle = retry.handle();
//!
//! let flaky = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let client = ServiceBuilder::new().layer(retry).service(service_fn(move |sku: &'static str| {
//!     let n = flaky.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         if n == 0 { Err::<_, BoxError>("connection reset".into()) } else { Ok(sku.len()) }
//!     }
//! }));
//!
//! assert_eq!(client.oneshot("sku-1").await?, 5);
//! assert_eq!(handle.retries(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # What is retried
//!
//! A result the layer's classifier ([`RetryLayerBuilder::classifier`]) calls a
//! [`Failure`](crate::classify::Outcome::Failure). A retry is made only if all hold:
//!
//! - the call has attempts left (`max_attempts`, the first included);
//! - the backoff's wait ends before the deadline, if one is set;
//! - the budget has a retry left: retries may add at most its `ratio` of the recent calls
//!   plus `min_per_sec` (see [`RetryBudget`] for why a budget);
//! - if the error is (or wraps) a [`CircuitOpen`](crate::circuit_breaker::error::CircuitOpen):
//!   the breaker lets a probe through before the wait is over. Retrying into a breaker that
//!   is still open only spends the budget, so the retry stops at once instead.
//!
//! # HTTP
//!
//! [`RetryLayer::http`] builds a layer for HTTP clients (feature `http`): it takes
//! `Request<B>` with any body, whether `Clone` or not, and follows [`HttpPolicy`]: it retries
//! errors and 408, 429, 502, 503 and 504; honours `Retry-After`; retries POST and PATCH only
//! with an `Idempotency-Key` or when the request provably never left; and keeps bodies of up
//! to 64 KiB for replay ([`ReplayBody`]), sending larger or streaming ones once.
//!
//! [`RetryLayer::http`] has an example.
//!
//! # Readiness
//!
//! `poll_ready` is the inner service's. Before every retry, the future polls the readiness of
//! its own clone of the inner service and makes the retry on that same instance.
//!
//! # Requests and cost
//!
//! With a classifier, the request must be `Clone`: the layer keeps a copy for retries, made
//! when the call is made (no copy when `max_attempts` is 1), and the inner service is cloned
//! into each call's future. Both copies are the only work on the success path besides the
//! budget's deposit (one clock read and one atomic add), so keep requests cheap to clone
//! (`Bytes`, `Arc`). A request whose clone does not allocate costs no allocation when the
//! first attempt succeeds; a call that is retried allocates once, for its retry state (timers,
//! the failed result), which keeps the future of a successful call small.
//!
//! # Errors
//!
//! The error type is [`BoxError`]. A call that still fails when no retry is allowed comes back
//! as [`RetriesExhausted`](error::RetriesExhausted), saying how many attempts were made and
//! why no more were (`error.reason()`), with the last error as its `source()`. A result that
//! is not retried (a success, or an error the classifier does not retry) comes back
//! unchanged, and so does everything when `max_attempts` is 1. A failed `Ok` response (a 503,
//! with an HTTP classifier) that runs out of retries comes back as the response itself.
//!
//! # Events
//!
//! A `debug` event with target `bulwark::retry` for every retry (`name`, `attempt`, `delay`,
//! `reason`: `error`, `response` or `retry-after`) and for every call given up on (`name`,
//! `attempts`, `reason`).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::classify::DefaultClassifier;
use crate::BoxError;

mod backoff;
mod budget;
pub mod error;
pub mod future;
#[cfg(feature = "http")]
mod http;
mod layer;
mod policy;

pub use self::backoff::Jitter;
pub use self::policy::{RetryPolicy, Verdict};

pub use self::budget::RetryBudget;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use self::http::{
    parse_retry_after, Attempts, HttpPolicy, HttpRetry, HttpRetryLayer, Replay, ReplayBody,
    IDEMPOTENCY_KEY,
};
pub use self::layer::{RetryHandle, RetryLayer, RetryLayerBuilder};

pub(crate) use self::backoff::Rng;
pub(crate) use self::layer::Shared;

/// Retries failed calls to the inner service; see the [module docs](self).
pub struct Retry<S, P = DefaultClassifier> {
    inner: S,
    shared: Arc<Shared>,
    policy: P,
}

impl<S, P> Retry<S, P> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared>, policy: P) -> Self {
        Retry {
            inner,
            shared,
            policy,
        }
    }

    #[cfg(feature = "http")]
    pub(crate) fn name(&self) -> &str {
        &self.shared.name
    }

    /// The layer's retry policy (its classifier, for a classifier policy).
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// A handle to the layer's counters and budget.
    pub fn handle(&self) -> RetryHandle {
        layer::RetryHandle::from_shared(self.shared.clone())
    }

    inner_service_accessors!();
}

impl<S: Clone, C: Clone> Clone for Retry<S, C> {
    fn clone(&self) -> Self {
        Retry::from_parts(self.inner.clone(), self.shared.clone(), self.policy.clone())
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Retry<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("max_attempts", &self.shared.max_attempts)
            .finish()
    }
}

impl<S, P, Request> Service<Request> for Retry<S, P>
where
    S: Service<Request> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Request, S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = future::ResponseFuture<S, Request, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.shared.deposit();
        let copy = if self.shared.max_attempts > 1 {
            self.policy.replay(&request)
        } else {
            None
        };
        // The readied instance makes the first attempt; a clone makes the retries, each after
        // its own `poll_ready` (no clone when the request cannot be sent again).
        let service = copy.as_ref().map(|_| self.inner.clone());
        let response = self.inner.call(request);
        future::ResponseFuture::new(
            response,
            service,
            copy,
            self.policy.clone(),
            self.shared.clone(),
        )
    }
}
