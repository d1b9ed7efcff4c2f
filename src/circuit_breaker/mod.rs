//! Stop calling a downstream that keeps failing, and probe it until it recovers.
//!
//! A [`CircuitBreaker`] watches the outcome of every call. When the downstream fails too often
//! it *trips*: it goes Open and rejects calls at once with [`CircuitOpen`],
//! without calling the downstream, for a break (30 s by default). After the break the next
//! call goes through as a *probe* (HalfOpen); enough successful probes close it again, a failed
//! one re-opens it.
//!
//! ```
//! use std::time::Duration;
//! use bulwark::circuit_breaker::{error::CircuitOpen, CircuitState};
//! use bulwark::{BoxError, CircuitBreakerLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let breaker = CircuitBreakerLayer::builder("payments")
//!     .consecutive_failures(3)                        // trip after 3 failures in a row,
//!     .failure_rate_over_calls(0.5, 20, 10)           // or when half of the last 20 calls failed
//!     .break_duration(Duration::from_secs(10))        // stay open 10 s, then probe
//!     .build()?;
//! let handle = breaker.handle();
//!
//! let client = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service(service_fn(|_: ()| async { Err::<(), BoxError>("connection refused".into()) }));
//!
//! for _ in 0..3 {
//!     assert!(client.clone().oneshot(()).await.is_err());
//! }
//! assert_eq!(handle.state(), CircuitState::Open);
//! let err = client.clone().oneshot(()).await.unwrap_err();
//! let open = err.downcast_ref::<CircuitOpen>().expect("rejected by the breaker");
//! assert_eq!(open.retry_after(), Some(Duration::from_secs(10)));
//! # Ok(())
//! # }
//! ```
//!
//! # Trip rules
//!
//! Rules combine; the first one broken trips the breaker.
//!
//! - **Consecutive failures** (default 5): a success resets the streak.
//! - **Failure rate over the last N calls** ([`failure_rate_over_calls`]): a call N+1 calls
//!   ago no longer counts, however long the downstream was healthy before.
//! - **Failure rate over the last T** ([`failure_rate_over_time`]): the calls of the last T,
//!   kept in buckets that slide in steps of T / buckets.
//! - **Slow-call rate** ([`slow_calls`]): the share of calls at least as slow as a threshold
//!   (success or not), over the same windows.
//!
//! A rate rule waits for its window to hold a minimum number of calls. Windows start empty each
//! time the breaker closes.
//!
//! What counts as a failure is the classifier's decision (see [`crate::classify`]; set with
//! [`classifier`]). An `Ignored` outcome, and a rejection by another bulwark layer inside the
//! breaker (the downstream was not called), count for nothing.
//!
//! # States
//!
//! Closed, Open and HalfOpen as above; ForcedOpen, ForcedClosed and Disabled are set (and
//! cleared with `reset`) through a [`CircuitBreakerHandle`], which also reads the state, the
//! counters and the time until the next probe.
//!
//! - Open → HalfOpen happens on the first call after the break; no background task runs.
//! - HalfOpen admits at most `half_open_max_calls` probes at once across every clone, and
//!   rejects the rest. `success_threshold` successful probes close the breaker; a failed (or,
//!   with a slow-call rule, slow) probe re-opens it. A probe whose future is dropped, or whose
//!   outcome is `Ignored`, gives its slot back, so the breaker never stays HalfOpen for lack of
//!   probes.
//! - The break can grow on consecutive trips ([`break_backoff`]); a successful close resets it.
//! - Every call carries the generation of the state it was admitted in. An outcome that
//!   arrives after the state has changed (a slow failure from before the trip, a probe from an
//!   earlier HalfOpen) does not move the new state.
//!
//! # Shared state
//!
//! The state is created when the layer is built and shared by every service the layer wraps
//! and every clone of them, so under axum (which clones a service per route and per request)
//! one breaker sees every call. For separate breakers, build separate layers.
//!
//! # Readiness
//!
//! When the breaker admits the next call, `poll_ready` polls the inner service's readiness as
//! usual. When it rejects (Open, ForcedOpen, or HalfOpen with every probe slot taken),
//! `poll_ready` returns `Ready(Ok(()))` at once without polling the inner service, and `call`
//! returns an immediately ready `CircuitOpen` error. An admission made by `poll_ready` is
//! checked again (one atomic load) by the next `poll_ready` and by `call`: if the breaker has
//! changed state since (it tripped while the call waited for the inner service), the call is
//! decided again. `poll_ready` never returns a rejection:
//! tower treats an error there as the service being gone for good. A probe slot taken by
//! `poll_ready` belongs to that service instance until its `call`; a clone does not copy it,
//! and dropping the service gives it back.
//!
//! # Errors
//!
//! The error type is [`BoxError`]: [`CircuitOpen`] for a rejection, or the
//! inner service's error unchanged.
//!
//! # Events
//!
//! Each transition emits an event with target `bulwark::circuit_breaker` and fields `name`,
//! `from`, `to`, `reason` (`warn` when opening, `info` otherwise); each rejection a `debug`
//! event.
//!
//! # Cost
//!
//! The state machine is one atomic word: admission in Closed is one atomic load, and a success
//! that follows a success writes nothing to it. A call that succeeds while Closed reads the
//! word three times (when the service is readied, when it is called, when the call
//! completes), clones and drops the breaker's `Arc` (its response future's handle), and adds
//! one to a call counter striped by thread (so that two threads do not pass its cache line
//! back and forth). No lock is taken on any path, and an admitted call allocates nothing (a
//! rejection's error is boxed, as a `BoxError`). The windows are rings of atomics (a count
//! window) or buckets (a time window), O(1) per call. The clock is read per call only with a
//! slow-call rule or a time window.
//!
//! [`failure_rate_over_calls`]: CircuitBreakerLayerBuilder::failure_rate_over_calls
//! [`failure_rate_over_time`]: CircuitBreakerLayerBuilder::failure_rate_over_time
//! [`slow_calls`]: CircuitBreakerLayerBuilder::slow_calls
//! [`classifier`]: CircuitBreakerLayerBuilder::classifier
//! [`break_backoff`]: CircuitBreakerLayerBuilder::break_backoff

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use crate::classify::{Classify, DefaultClassifier};
use crate::BoxError;

mod config;
pub(crate) use self::core::{Core, Decision, Pass};
pub(crate) use self::future::outcome_of;
mod core;
pub mod error;
pub mod future;
mod handle;
mod layer;
mod state;

pub use self::config::CircuitBreakerLayerBuilder;
pub use self::core::CircuitCounters;
pub use self::handle::CircuitBreakerHandle;
pub use self::layer::CircuitBreakerLayer;
pub use self::state::CircuitState;

use self::error::CircuitOpen;
use self::future::{ResponseFuture, Ticket};

/// Rejects calls to the inner service while its downstream is failing; see the
/// [module docs](self).
pub struct CircuitBreaker<S, C = DefaultClassifier> {
    inner: S,
    admission: Admission,
    classifier: C,
}

/// The breaker's shared state and the decision `poll_ready` made for the next call.
///
/// An admission is a `Copy` pass, not a ticket: the breaker's `Arc` is cloned once per call,
/// in `call`, for the response future. A rejection is kept apart, so the hot path moves only
/// the pass. Dropped while it holds a probe's pass (a readied service that never called), it
/// gives the probe's slot back.
struct Admission {
    core: Arc<Core>,
    pass: Option<Pass>,
    rejection: Option<CircuitOpen>,
}

impl Admission {
    /// A fresh decision on a call.
    #[inline]
    fn fresh(&self) -> Result<Pass, CircuitOpen> {
        match self.core.admit(Instant::now) {
            Decision::Admit(pass) => Ok(pass),
            Decision::Reject(error) => Err(error),
        }
    }

    /// Decides on the next call and keeps the decision, giving back any earlier one.
    #[inline]
    fn decide(&mut self) {
        self.release();
        match self.fresh() {
            Ok(pass) => self.pass = Some(pass),
            Err(error) => self.rejection = Some(error),
        }
    }

    /// Gives back what an admission held and was not used (a probe's slot).
    #[inline]
    fn release(&mut self) {
        if let Some(pass) = self.pass.take() {
            self.core.abandon(pass);
        }
        self.rejection = None;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.release();
    }
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn from_parts(inner: S, core: Arc<Core>, classifier: C) -> Self {
        CircuitBreaker {
            inner,
            admission: Admission {
                core,
                pass: None,
                rejection: None,
            },
            classifier,
        }
    }

    /// A handle to this breaker's shared state.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.admission.core.clone())
    }

    inner_service_accessors!();
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    /// Clones the inner service and shares the breaker; the clone holds no admission (no probe
    /// slot) of its own.
    fn clone(&self) -> Self {
        CircuitBreaker::from_parts(
            self.inner.clone(),
            self.admission.core.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("name", &self.admission.core.name)
            .field("state", &self.admission.core.state())
            .finish()
    }
}

impl<S, C, Request> Service<Request> for CircuitBreaker<S, C>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Decide, or decide again if the last decision no longer holds: a rejection (the break
        // may have ended), or an admission from a state the breaker has since left (it tripped
        // while this call waited for the inner service).
        //
        // A Closed breaker admits without holding anything (its pass is only the state's
        // generation), so nothing is decided or kept here then: `call` reads the state once
        // more either way.
        let admission = &mut self.admission;
        let holds = match admission.pass {
            Some(pass) => admission.core.still_admits(pass),
            None => false,
        };
        if !holds {
            admission.release();
            if !admission.core.is_closed() {
                admission.decide();
            }
        }
        if admission.rejection.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(err)) => {
                // The inner service is gone; give back what this admission held.
                self.admission.release();
                Poll::Ready(Err(err.into()))
            }
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let admission = &mut self.admission;
        let decision = match admission.pass.take() {
            Some(pass) if admission.core.still_admits(pass) => Ok(pass),
            Some(pass) => {
                // The state changed since `poll_ready`: decide again (the inner service is
                // ready either way).
                admission.core.abandon(pass);
                admission.fresh()
            }
            None => match admission.rejection.take() {
                Some(error) => Err(error),
                // Called without `poll_ready`: decide now.
                None => admission.fresh(),
            },
        };
        match decision {
            Ok(pass) => {
                let core = &admission.core;
                let started = core.needs_clock().then(Instant::now);
                let ticket = Ticket::new(core.clone(), pass);
                let response = self.inner.call(request);
                ResponseFuture::called(response, ticket, self.classifier.clone(), started)
            }
            Err(error) => {
                admission.core.rejected(&error);
                ResponseFuture::rejected(error, self.classifier.clone())
            }
        }
    }
}
