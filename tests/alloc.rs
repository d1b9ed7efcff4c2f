//! Counts heap allocations on the success path of each layer: it must be zero.
//!
//! A counting global allocator counts only while this thread has switched counting on, and
//! every test drives its calls on a current-thread runtime, so what is counted is exactly the
//! work of the calls. Each scenario runs a warm-up first (the runtime and the timer wheel set
//! themselves up lazily), then counts over many calls.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bulwark::stack::StackLayer;
use bulwark::{BulkheadLayer, CircuitBreakerLayer, RetryLayer, TimeoutLayer};
use tower::util::ServiceFn;
use tower::{service_fn, Layer, Service, ServiceExt};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the allocator may run while thread-locals are being torn down.
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to the system allocator unchanged; counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `calls` calls (requests 1, 2, 3, ...) on a fresh current-thread runtime and returns the
/// allocations made by the counted part, per call.
fn allocations_per_call<S>(mut svc: S, calls: u64) -> f64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..100 {
            svc.ready().await.unwrap().call(i).await.unwrap();
        }
        ALLOCATIONS.with(|n| n.set(0));
        COUNTING.with(|c| c.set(true));
        for req in 1..=calls {
            let res = svc.ready().await.unwrap().call(req).await.unwrap();
            assert_eq!(res, req);
        }
        COUNTING.with(|c| c.set(false));
    });
    ALLOCATIONS.with(|n| n.get()) as f64 / calls as f64
}

/// A future that is pending once (waking itself) before it completes, so the layers around
/// it really arm their timers and register wakers.
struct PendingOnce(Option<u64>, bool);

impl Future for PendingOnce {
    type Output = Result<u64, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.1 {
            self.1 = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(self.0.take().unwrap()))
    }
}

type ReadyInner = ServiceFn<fn(u64) -> std::future::Ready<Result<u64, Infallible>>>;
type PendingInner = ServiceFn<fn(u64) -> PendingOnce>;

fn ready_inner() -> ReadyInner {
    service_fn(|x| std::future::ready(Ok(x)))
}

fn pending_once_inner() -> PendingInner {
    service_fn(|x| PendingOnce(Some(x), false))
}

/// Asserts that `layer`'s success path allocates nothing, around an inner future that is ready
/// at once and around one that is pending once (so timers arm and wakers register).
fn assert_allocates_nothing<L>(layer: &L)
where
    L: Layer<ReadyInner> + Layer<PendingInner>,
    <L as Layer<ReadyInner>>::Service: Service<u64, Response = u64>,
    <<L as Layer<ReadyInner>>::Service as Service<u64>>::Error: std::fmt::Debug,
    <L as Layer<PendingInner>>::Service: Service<u64, Response = u64>,
    <<L as Layer<PendingInner>>::Service as Service<u64>>::Error: std::fmt::Debug,
{
    assert_eq!(
        allocations_per_call(layer.layer(ready_inner()), 1_000),
        0.0,
        "ready at once"
    );
    assert_eq!(
        allocations_per_call(layer.layer(pending_once_inner()), 1_000),
        0.0,
        "pending once"
    );
}

#[test]
fn the_baseline_allocates_nothing() {
    // If this fails, the harness itself allocates and the other results mean nothing.
    assert_eq!(allocations_per_call(ready_inner(), 1_000), 0.0);
    assert_eq!(allocations_per_call(pending_once_inner(), 1_000), 0.0);
}

#[test]
fn the_counter_sees_an_allocation_per_call() {
    // A service that boxes its future must show up, or the counter is not counting.
    let boxing = service_fn(|x: u64| Box::pin(std::future::ready(Ok::<_, Infallible>(x))));
    assert_eq!(allocations_per_call(boxing, 1_000), 1.0);
}

#[test]
fn timeout_success_path_allocates_nothing() {
    assert_allocates_nothing(&TimeoutLayer::new(Duration::from_secs(5)));
}

#[test]
fn bulkhead_admit_path_allocates_nothing() {
    // Both kinds of slots: the lock-free counter (no max_wait) and the fair semaphore.
    for max_wait in [Duration::ZERO, Duration::from_millis(10)] {
        let layer = BulkheadLayer::builder("alloc")
            .max_concurrent(8)
            .max_wait(max_wait)
            .build()
            .unwrap();
        assert_allocates_nothing(&layer);
        assert_eq!(layer.handle().peak_in_flight(), 1);
    }
}

#[test]
fn circuit_breaker_closed_success_path_allocates_nothing() {
    let layers = [
        // The default: consecutive failures only.
        CircuitBreakerLayer::builder("alloc").build().unwrap(),
        // Every rule: a count window, a time window, slow calls (the clock is read per call).
        CircuitBreakerLayer::builder("alloc")
            .failure_rate_over_calls(0.5, 100, 10)
            .failure_rate_over_time(0.5, Duration::from_secs(10), 10, 10)
            .slow_calls(Duration::from_secs(1), 0.5)
            .build()
            .unwrap(),
    ];
    for layer in layers {
        assert_allocates_nothing(&layer);
        assert_eq!(layer.handle().counters().calls, 2 * 1_100);
    }
}

#[test]
fn retry_success_path_allocates_nothing() {
    // With its budget (a clock read and a bucket add per call) and a deadline.
    let layer = RetryLayer::builder("alloc")
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    assert_allocates_nothing(&layer);
    assert_eq!(layer.handle().retries(), 0);
}

#[test]
fn the_standard_stack_success_path_allocates_nothing() {
    // Every stage on, with the defaults (a breaker count window, a retry budget).
    let stack = StackLayer::builder("alloc").build().unwrap();
    assert_allocates_nothing(&stack);
    let handle = stack.handle();
    assert_eq!(
        handle.circuit_breaker().unwrap().counters().calls,
        2 * 1_100
    );
}
