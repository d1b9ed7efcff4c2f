//! Cap how many calls may be in flight to a downstream at once, shared by every clone.
//!
//! A [`Bulkhead`] admits at most `max_concurrent` calls at a time. When it is full it rejects
//! the call with [`BulkheadFull`], either at once (the default) or after
//! waiting up to `max_wait` for a slot to free. It never queues without bound.
//!
//! ```
//! use std::time::Duration;
//! use bulwark::{bulkhead::error::BulkheadFull, BoxError, BulkheadLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let bulkhead = BulkheadLayer::builder("payments")
//!     .max_concurrent(32)
//!     .max_wait(Duration::from_millis(20))
//!     .build()?;
//! let handle = bulkhead.handle();
//!
//! let client = ServiceBuilder::new()
//!     .layer(bulkhead)
//!     .service(service_fn(|amount: u64| async move { Ok::<_, BoxError>(amount) }));
//!
//! assert_eq!(client.clone().oneshot(42).await?, 42);
//! assert_eq!(handle.in_flight(), 0);
//! assert_eq!(handle.peak_in_flight(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Shared state
//!
//! The slots are created when the layer is built ([`BulkheadLayerBuilder::build`]) and shared
//! by every service that layer wraps and every clone of those services. axum clones a layer's
//! service for every route and every request; all of them draw from the same `max_concurrent`
//! slots. (tower's `ConcurrencyLimitLayer` makes a new limit per `layer()` call, so under axum a
//! per-route limit enforces nothing.) For separate caps, build separate layers.
//!
//! # Readiness
//!
//! `poll_ready` takes a slot for the next call. With a free slot it then waits for the inner
//! service to be ready, holding the slot, so callers stuck on an unready downstream count
//! toward the cap too. When the bulkhead is full, `poll_ready`:
//!
//! - with `max_wait` zero (the default), returns `Ready(Ok(()))` at once, and the next `call`
//!   returns an immediately ready `BulkheadFull` error without calling the inner service
//!   (a later `poll_ready` on the same service looks for a free slot again);
//! - with a `max_wait`, is pending until a slot frees (then waits for the inner service as
//!   above) or until `max_wait` has passed (then returns `Ready(Ok(()))` and the next `call`
//!   rejects). Waiters are served in the order they started waiting.
//!
//! The wait is bounded by `max_wait`; the time spent afterwards waiting for the inner service
//! to be ready, holding the slot, is not (a timeout does not bound it either, see
//! [`crate::timeout`]).
//!
//! `poll_ready` never returns a rejection: tower treats an error there as the service being
//! gone for good. Only an error from the inner `poll_ready` is returned, and then the slot is
//! released.
//!
//! A `call` without a prior `poll_ready` does not panic: it takes a slot if one is free at once
//! and otherwise rejects.
//!
//! # Slot lifetime
//!
//! The slot taken in `poll_ready` moves into the response future at `call` and is released
//! when that future completes (with a response or an error) or is dropped. Dropping a service
//! that holds an unused slot releases it. Cloning a service does not clone its slot: the clone
//! starts with none. [`BulkheadHandle::in_flight`] counts every slot taken, including ones
//! reserved by `poll_ready` whose `call` has not come yet.
//!
//! # Errors
//!
//! The error type is [`BoxError`]: either [`BulkheadFull`], naming the
//! bulkhead and its cap, or the inner service's error unchanged. Each rejection emits a `debug`
//! event with target `bulwark::bulkhead`.
//!
//! # Cost
//!
//! Admitting a call at once allocates nothing and takes no async lock. A bulkhead that never
//! waits (`max_wait` zero) keeps its slots in one atomic counter: a slot is taken with a
//! compare-and-swap and given back with a subtraction, with no lock at all. A bulkhead with a
//! `max_wait` keeps them as permits of a fair `tokio::sync::Semaphore`, whose release takes
//! that semaphore's short internal (non-async) lock, as tower's `ConcurrencyLimit` does on
//! every call. Only a call that has to wait allocates (one box for the wait).

use crate::sync::{AtomicU64, AtomicUsize, Ordering};
use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::sync::{Semaphore, TryAcquireError};
use tower_service::Service;

use crate::BoxError;

pub mod error;
pub mod future;
mod layer;

pub use self::layer::{BulkheadHandle, BulkheadLayer, BulkheadLayerBuilder};

use self::error::BulkheadFull;

// === Shared ===

/// The slots of one bulkhead.
///
/// A bulkhead that never waits needs no queue, so its slots are a plain atomic counter:
/// taking one is a compare-and-swap, giving one back a subtraction, with no lock at all. A
/// bulkhead with a `max_wait` needs waiters served in order, so its slots are the permits of a
/// fair `tokio::sync::Semaphore` (whose release takes its short internal lock).
enum Slots {
    Counter(AtomicUsize),
    Semaphore(Semaphore),
}

/// The state one bulkhead's clones share.
///
/// Not aligned away from its `Arc`'s count, unlike the breaker's and the retry's state: every
/// call writes both the count and the slot counter, and with the two on one cache line a call
/// moves one line between threads, not two. (Aligned, the contended bench measured the
/// bulkhead at 1.3 to 3.2 times tower's `ConcurrencyLimit`; as it is, 0.55.)
pub(crate) struct Shared {
    name: Arc<str>,
    max_concurrent: usize,
    max_wait: Duration,
    slots: Slots,
    rejected: AtomicU64,
    peak_in_flight: AtomicUsize,
    waiting: AtomicUsize,
    meters: crate::meter::BulkheadMeters,
}

impl Shared {
    pub(crate) fn new(name: Arc<str>, max_concurrent: usize, max_wait: Duration) -> Self {
        let meters = crate::meter::BulkheadMeters::new(&name);
        Shared {
            meters,
            name,
            max_concurrent,
            max_wait,
            slots: if max_wait.is_zero() {
                Slots::Counter(AtomicUsize::new(0))
            } else {
                Slots::Semaphore(Semaphore::new(max_concurrent))
            },
            rejected: AtomicU64::new(0),
            peak_in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        }
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    pub(crate) fn max_wait(&self) -> Duration {
        self.max_wait
    }

    #[inline]
    pub(crate) fn in_flight(&self) -> usize {
        match &self.slots {
            Slots::Counter(taken) => taken.load(Ordering::Relaxed),
            Slots::Semaphore(semaphore) => self
                .max_concurrent
                .saturating_sub(semaphore.available_permits()),
        }
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn peak_in_flight(&self) -> usize {
        self.peak_in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes a slot if one is free right now.
    #[inline]
    fn try_admit(self: &Arc<Self>) -> Option<Permit> {
        self.try_take().then(|| Permit {
            shared: self.clone(),
        })
    }

    /// Takes a slot if one is free right now, without a [`Permit`]: the caller gives it back
    /// with [`release`](Self::release).
    #[inline]
    pub(crate) fn try_take(&self) -> bool {
        let in_flight = match &self.slots {
            Slots::Counter(taken) => {
                let mut current = taken.load(Ordering::Relaxed);
                loop {
                    if current >= self.max_concurrent {
                        return false;
                    }
                    match taken.compare_exchange_weak(
                        current,
                        current + 1,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break current + 1,
                        Err(actual) => current = actual,
                    }
                }
            }
            Slots::Semaphore(semaphore) => match semaphore.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    self.in_flight()
                }
                // Never closed; treat it like a full one all the same.
                Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => return false,
            },
        };
        self.note_in_flight(in_flight);
        true
    }

    #[inline]
    fn note_in_flight(&self, in_flight: usize) {
        self.meters.admitted();
        // Load first: the common case (no new peak) then writes nothing shared.
        if in_flight > self.peak_in_flight.load(Ordering::Relaxed) {
            self.peak_in_flight.fetch_max(in_flight, Ordering::Relaxed);
        }
    }

    /// Gives a slot back.
    #[inline]
    pub(crate) fn release(&self) {
        self.meters.released();
        match &self.slots {
            Slots::Counter(taken) => {
                taken.fetch_sub(1, Ordering::Release);
            }
            Slots::Semaphore(semaphore) => semaphore.add_permits(1),
        }
    }

    pub(crate) fn reject(&self) -> BulkheadFull {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.meters.rejected();
        tracing::debug!(
            target: "bulwark::bulkhead",
            name = %self.name,
            max_concurrent = self.max_concurrent,
            max_wait = ?self.max_wait,
            "bulkhead full; call rejected"
        );
        BulkheadFull::new(self.name.clone(), self.max_concurrent)
    }

    /// Starts a bounded wait for a slot: one allocation, only on this slow path. The wait
    /// ends `true` with a slot taken, which the caller must give back.
    pub(crate) fn wait(self: &Arc<Self>) -> Wait {
        let shared = self.clone();
        Box::pin(async move {
            let Slots::Semaphore(semaphore) = &shared.slots else {
                // Only a bulkhead with a `max_wait` waits, and it has a semaphore.
                return false;
            };
            let waiting = WaitingGuard::new(&shared.waiting);
            match tokio::time::timeout(shared.max_wait, semaphore.acquire()).await {
                Ok(Ok(permit)) => {
                    permit.forget();
                    drop(waiting);
                    shared.note_in_flight(shared.in_flight());
                    true
                }
                // Closed (never happens) or `max_wait` elapsed.
                Ok(Err(_)) | Err(_) => false,
            }
        })
    }

    /// Whether calls wait for a slot rather than being rejected at once.
    pub(crate) fn waits(&self) -> bool {
        !self.max_wait.is_zero()
    }
}

/// A taken slot; gives it back when dropped.
pub(crate) struct Permit {
    shared: Arc<Shared>,
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.shared.release();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("bulkhead", &self.shared.name)
            .finish()
    }
}

/// Counts a waiter for as long as it lives.
struct WaitingGuard<'a>(&'a AtomicUsize);

impl<'a> WaitingGuard<'a> {
    fn new(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        WaitingGuard(waiting)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) type Wait = Pin<Box<dyn Future<Output = bool> + Send + Sync>>;

// === Bulkhead ===

/// Caps the calls in flight to the inner service; see the [module docs](self).
pub struct Bulkhead<S> {
    inner: S,
    shared: Arc<Shared>,
    admission: Admission,
}

/// Where this service instance stands with its next call.
enum Admission {
    /// Nothing decided yet.
    Idle,
    /// Waiting, up to `max_wait`, for a slot.
    Waiting(Wait),
    /// Holds a slot for the next call.
    Admitted(Permit),
    /// No slot: the next call is rejected.
    Full,
}

impl<S> Bulkhead<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Bulkhead {
            inner,
            shared,
            admission: Admission::Idle,
        }
    }

    /// A handle to this bulkhead's shared state and counters.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(self.shared.clone())
    }

    inner_service_accessors!();
}

impl<S: Clone> Clone for Bulkhead<S> {
    /// Clones the inner service and shares the slots; the clone holds no slot of its own.
    fn clone(&self) -> Self {
        Bulkhead::from_shared(self.inner.clone(), self.shared.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let admission = match self.admission {
            Admission::Idle => "idle",
            Admission::Waiting(_) => "waiting",
            Admission::Admitted(_) => "admitted",
            Admission::Full => "full",
        };
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("max_concurrent", &self.shared.max_concurrent)
            .field("max_wait", &self.shared.max_wait)
            .field("admission", &admission)
            .finish()
    }
}

impl<S, Request> Service<Request> for Bulkhead<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Admission::Idle = self.admission {
            self.admission = match self.shared.try_admit() {
                Some(permit) => Admission::Admitted(permit),
                None if self.shared.max_wait.is_zero() => Admission::Full,
                None => Admission::Waiting(self.shared.wait()),
            };
        }
        if let Admission::Waiting(wait) = &mut self.admission {
            self.admission = if ready!(wait.as_mut().poll(cx)) {
                Admission::Admitted(Permit {
                    shared: self.shared.clone(),
                })
            } else {
                Admission::Full
            };
        }
        if let Admission::Full = self.admission {
            // A slot may have freed since the last decision (a caller that keeps a ready
            // service for later): take it if so, without starting another wait.
            match self.shared.try_admit() {
                Some(permit) => self.admission = Admission::Admitted(permit),
                None => return Poll::Ready(Ok(())),
            }
        }
        // Admitted: hold the slot while the inner service gets ready.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(err)) => {
                // The inner service is gone; do not keep its slot.
                self.admission = Admission::Idle;
                Poll::Ready(Err(err.into()))
            }
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let permit = match mem::replace(&mut self.admission, Admission::Idle) {
            Admission::Admitted(permit) => Some(permit),
            // Not admitted at `poll_ready`, so the inner service was not made ready: reject,
            // even if a slot has freed since (calling an unready inner service would break its
            // contract; a later `poll_ready` takes the freed slot).
            Admission::Full => None,
            // Called without a ready `poll_ready`: admit only if a slot is free right now.
            Admission::Idle | Admission::Waiting(_) => self.shared.try_admit(),
        };
        match permit {
            Some(permit) => future::ResponseFuture::called(self.inner.call(request), permit),
            None => future::ResponseFuture::rejected(self.shared.reject()),
        }
    }
}
