//! Integration tests for the bulkhead layer; timing tests run on tokio's paused clock.

#[path = "../support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulwark::bulkhead::error::BulkheadFull;
use bulwark::bulkhead::BulkheadHandle;
use bulwark::error::{self, Rejection};
use bulwark::{BoxError, Bulkhead, BulkheadLayer};
use support::DownstreamError;
use tokio::time;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_test::{assert_request_eq, mock};

type Mock = mock::Mock<&'static str, &'static str>;
type Handle = mock::Handle<&'static str, &'static str>;

/// A bulkhead that never waits keeps its slots in an atomic counter, one with a `max_wait` in
/// a semaphore: release paths are checked on both.
const BOTH_MODES: [Duration; 2] = [Duration::ZERO, Duration::from_millis(100)];

fn layer(max_concurrent: usize, max_wait: Duration) -> BulkheadLayer {
    BulkheadLayer::builder("test")
        .max_concurrent(max_concurrent)
        .max_wait(max_wait)
        .build()
        .unwrap()
}

fn spawn(layer: &BulkheadLayer) -> (mock::Spawn<Bulkhead<Mock>>, Handle) {
    mock::spawn_layer::<&'static str, &'static str, _>(layer.clone())
}

fn assert_full(err: BoxError, cap: usize) {
    let full = err
        .downcast_ref::<BulkheadFull>()
        .expect("a BulkheadFull error");
    assert_eq!(full.name(), "test");
    assert_eq!(full.max_concurrent(), cap);
    assert!(matches!(
        error::rejection(&*err),
        Some(Rejection::BulkheadFull(_))
    ));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn rejects_at_once_when_full_without_calling_the_inner_service() {
    let layer = layer(1, Duration::ZERO);
    let stats = layer.handle();
    let (mut a, mut handle) = spawn(&layer);
    let (mut b, mut b_handle) = spawn(&layer);

    assert_ready_ok!(a.poll_ready());
    let held = a.call("first");
    assert_eq!(stats.in_flight(), 1);

    // Ready, and the rejection comes from `call`, already complete.
    assert_ready_ok!(b.poll_ready());
    let mut rejected = task::spawn(b.call("second"));
    let err = assert_ready_err!(rejected.poll());
    assert_full(err, 1);
    assert_eq!(
        err_text(&layer),
        "bulkhead `test` is full (1 calls in flight)"
    );
    assert_eq!(stats.rejected(), 1);

    // Only the first request reached the inner service.
    assert_request_eq!(handle, "first").send_response("ok");
    assert_eq!(held.await.unwrap(), "ok");
    assert!(
        b_handle.poll_request().is_pending(),
        "the rejected call never reached its inner service"
    );
    assert_eq!(stats.in_flight(), 0);
}

fn err_text(layer: &BulkheadLayer) -> String {
    let h = layer.handle();
    BulkheadFull::new(h.name(), h.max_concurrent()).to_string()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_rejected_service_tries_again_on_its_next_poll_ready() {
    let layer = layer(1, Duration::ZERO);
    let (mut a, mut handle) = spawn(&layer);
    let (mut b, mut b_handle) = spawn(&layer);

    assert_ready_ok!(a.poll_ready());
    let held = a.call("first");
    assert_ready_ok!(b.poll_ready());
    // Rejected at once: polled once, not awaited, so a regression fails instead of hanging.
    assert_full(assert_ready_err!(task::spawn(b.call("rejected")).poll()), 1);

    assert_request_eq!(handle, "first").send_response("ok");
    held.await.unwrap();

    assert_ready_ok!(b.poll_ready());
    let second = b.call("second");
    assert_request_eq!(b_handle, "second").send_response("ok");
    assert_eq!(second.await.unwrap(), "ok");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn waits_then_admits_when_a_slot_frees() {
    let layer = layer(1, Duration::from_millis(100));
    let stats = layer.handle();
    let (mut a, mut handle) = spawn(&layer);
    let (mut b, mut b_handle) = spawn(&layer);

    assert_ready_ok!(a.poll_ready());
    let first = a.call("first");

    assert_pending!(b.poll_ready());
    assert_eq!(stats.waiting(), 1);
    time::advance(Duration::from_millis(60)).await;
    assert_pending!(b.poll_ready());

    assert_request_eq!(handle, "first").send_response("ok");
    first.await.unwrap();
    assert!(b.is_woken(), "the waiter is woken when the slot frees");
    assert_ready_ok!(b.poll_ready());
    assert_eq!(stats.waiting(), 0);

    let second = b.call("second");
    assert_request_eq!(b_handle, "second").send_response("ok");
    assert_eq!(second.await.unwrap(), "ok");
    assert_eq!(stats.rejected(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn waits_then_rejects_exactly_at_max_wait() {
    let layer = layer(1, Duration::from_millis(100));
    let stats = layer.handle();
    let (mut a, _handle) = spawn(&layer);
    let (mut b, _b_handle) = spawn(&layer);

    assert_ready_ok!(a.poll_ready());
    let _first = a.call("first");

    assert_pending!(b.poll_ready());
    time::advance(Duration::from_millis(99)).await;
    assert_pending!(b.poll_ready());
    time::advance(Duration::from_millis(1)).await;
    assert!(b.is_woken());
    assert_ready_ok!(b.poll_ready());
    assert_eq!(stats.waiting(), 0);

    let err = assert_ready_err!(task::spawn(b.call("second")).poll());
    assert_full(err, 1);
    assert_eq!(stats.rejected(), 1);
    assert_eq!(stats.in_flight(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn waiters_are_admitted_in_the_order_they_came() {
    let layer = layer(1, Duration::from_secs(10));
    let (mut holder, mut handle) = spawn(&layer);
    let (mut a, _a) = spawn(&layer);
    let (mut b, _b) = spawn(&layer);
    let (mut c, _c) = spawn(&layer);

    assert_ready_ok!(holder.poll_ready());
    let first = holder.call("first");
    assert_pending!(a.poll_ready());
    assert_pending!(b.poll_ready());
    assert_pending!(c.poll_ready());

    // A newcomer does not jump the queue either.
    let (mut late, _late) = spawn(&layer);
    assert_request_eq!(handle, "first").send_response("ok");
    first.await.unwrap();
    assert_pending!(late.poll_ready());
    assert_pending!(c.poll_ready());
    assert_pending!(b.poll_ready());
    assert_ready_ok!(a.poll_ready());

    // `a` gives its slot back unused (dropped); `b` is next, not `c` or `late`.
    drop(a);
    assert_pending!(c.poll_ready());
    assert_pending!(late.poll_ready());
    assert_ready_ok!(b.poll_ready());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_slot_is_released_when_the_call_completes() {
    for max_wait in BOTH_MODES {
        the_slot_is_released_when_the_call_completes_with(max_wait).await;
    }
}

async fn the_slot_is_released_when_the_call_completes_with(max_wait: Duration) {
    let layer = layer(1, max_wait);
    let stats = layer.handle();
    let (mut svc, mut handle) = spawn(&layer);

    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call("one"));
    assert_pending!(fut.poll());
    assert_eq!(stats.in_flight(), 1);
    assert_request_eq!(handle, "one").send_response("ok");
    assert_ready_ok!(fut.poll());
    // Released on completion, even though the future is not dropped yet.
    assert_eq!(stats.in_flight(), 0);
    drop(fut);
    assert_eq!(stats.peak_in_flight(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_slot_is_released_when_the_call_fails() {
    for max_wait in BOTH_MODES {
        the_slot_is_released_when_the_call_fails_with(max_wait).await;
    }
}

async fn the_slot_is_released_when_the_call_fails_with(max_wait: Duration) {
    let layer = layer(1, max_wait);
    let stats = layer.handle();
    let (mut svc, mut handle) = spawn(&layer);

    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call("one"));
    assert_request_eq!(handle, "one").send_error(DownstreamError("boom"));
    let err = assert_ready_err!(fut.poll());
    // The inner error passes through unchanged.
    assert_eq!(
        err.downcast_ref::<DownstreamError>(),
        Some(&DownstreamError("boom"))
    );
    assert!(error::rejection(&*err).is_none());
    assert_eq!(stats.in_flight(), 0);
    assert_eq!(stats.rejected(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_slot_is_released_when_the_response_future_is_dropped() {
    for max_wait in BOTH_MODES {
        the_slot_is_released_when_the_response_future_is_dropped_with(max_wait).await;
    }
}

async fn the_slot_is_released_when_the_response_future_is_dropped_with(max_wait: Duration) {
    let layer = layer(1, max_wait);
    let stats = layer.handle();
    let (mut svc, _handle) = spawn(&layer);

    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call("one");
    assert_eq!(stats.in_flight(), 1);
    drop(fut);
    assert_eq!(stats.in_flight(), 0);
    assert_ready_ok!(svc.poll_ready());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slot_reserved_by_poll_ready_is_released_when_the_service_is_dropped() {
    for max_wait in BOTH_MODES {
        a_slot_reserved_by_poll_ready_is_released_when_the_service_is_dropped_with(max_wait).await;
    }
}

async fn a_slot_reserved_by_poll_ready_is_released_when_the_service_is_dropped_with(
    max_wait: Duration,
) {
    let layer = layer(1, max_wait);
    let stats = layer.handle();
    let (mut svc, _handle) = spawn(&layer);
    assert_ready_ok!(svc.poll_ready());
    assert_eq!(stats.in_flight(), 1);
    drop(svc);
    assert_eq!(stats.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_clone_made_after_poll_ready_does_not_carry_the_slot() {
    for max_wait in BOTH_MODES {
        a_clone_made_after_poll_ready_does_not_carry_the_slot_with(max_wait).await;
    }
}

async fn a_clone_made_after_poll_ready_does_not_carry_the_slot_with(max_wait: Duration) {
    let layer = layer(1, max_wait);
    let stats = layer.handle();
    let (mut svc, mut handle) = spawn(&layer);

    assert_ready_ok!(svc.poll_ready());
    let mut twin = mock::Spawn::new(svc.get_ref().clone());
    assert_eq!(stats.in_flight(), 1, "cloning did not take or copy a slot");

    // The clone has no slot: it is rejected (after its wait) while the original holds the
    // only one.
    if !max_wait.is_zero() {
        assert_pending!(twin.poll_ready());
        time::advance(max_wait).await;
    }
    assert_ready_ok!(twin.poll_ready());
    assert_full(assert_ready_err!(task::spawn(twin.call("twin")).poll()), 1);

    // The original still makes its call with its slot.
    let fut = svc.call("original");
    assert_request_eq!(handle, "original").send_response("ok");
    assert_eq!(fut.await.unwrap(), "ok");
    assert_eq!(stats.in_flight(), 0);
    drop(twin);
    drop(svc);
    assert_eq!(stats.in_flight(), 0, "no slot leaked");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_full_service_looks_again_on_its_next_poll_ready() {
    let layer = layer(1, Duration::ZERO);
    let (mut holder, _handle) = spawn(&layer);
    let (mut later, mut later_handle) = spawn(&layer);

    assert_ready_ok!(holder.poll_ready());
    assert_ready_ok!(later.poll_ready()); // full: its call would be rejected
    drop(holder);
    // Polled again after the slot freed: admitted, and its inner service made ready.
    assert_ready_ok!(later.poll_ready());
    assert_eq!(layer.handle().in_flight(), 1);
    let fut = later.call("second");
    assert_request_eq!(later_handle, "second").send_response("ok");
    assert_eq!(fut.await.unwrap(), "ok");
    assert_eq!(layer.handle().rejected(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_call_after_a_full_poll_ready_is_rejected_even_if_a_slot_freed() {
    let layer = layer(1, Duration::ZERO);
    let (mut holder, _handle) = spawn(&layer);
    let (mut later, mut later_handle) = spawn(&layer);

    assert_ready_ok!(holder.poll_ready());
    assert_ready_ok!(later.poll_ready()); // full
    drop(holder);
    // The inner service of `later` was never made ready, so it must not be called.
    assert_full(assert_ready_err!(task::spawn(later.call("x")).poll()), 1);
    assert!(later_handle.poll_request().is_pending());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_woken_waiter_dropped_before_it_polls_passes_the_slot_on() {
    let layer = layer(1, Duration::from_secs(5));
    let stats = layer.handle();
    let (mut holder, mut handle) = spawn(&layer);
    let (mut a, _a) = spawn(&layer);
    let (mut b, _b) = spawn(&layer);

    assert_ready_ok!(holder.poll_ready());
    let first = holder.call("first");
    assert_pending!(a.poll_ready());
    assert_pending!(b.poll_ready());
    assert_request_eq!(handle, "first").send_response("ok");
    first.await.unwrap();
    assert!(a.is_woken(), "the first waiter was handed the slot");
    drop(a); // ... and gives it up without ever polling again
    assert!(b.is_woken());
    assert_ready_ok!(b.poll_ready());
    assert_eq!(stats.in_flight(), 1);
    drop(b);
    assert_eq!(stats.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slot_freed_exactly_at_max_wait_admits_the_waiter() {
    let layer = layer(1, Duration::from_millis(100));
    let (mut holder, mut handle) = spawn(&layer);
    let (mut waiter, _w) = spawn(&layer);

    assert_ready_ok!(holder.poll_ready());
    let first = holder.call("first");
    assert_pending!(waiter.poll_ready());
    time::advance(Duration::from_millis(100)).await;
    // The deadline has come, but the slot frees before the waiter is polled again.
    assert_request_eq!(handle, "first").send_response("ok");
    first.await.unwrap();
    assert_ready_ok!(waiter.poll_ready());
    assert_eq!(layer.handle().in_flight(), 1, "admitted, not rejected");
    assert_eq!(layer.handle().rejected(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn dropping_a_waiting_service_leaves_the_queue() {
    let layer = layer(1, Duration::from_secs(5));
    let stats = layer.handle();
    let (mut holder, mut handle) = spawn(&layer);
    let (mut waiter, _w) = spawn(&layer);
    let (mut next, _n) = spawn(&layer);

    assert_ready_ok!(holder.poll_ready());
    let first = holder.call("first");
    assert_pending!(waiter.poll_ready());
    assert_pending!(next.poll_ready());
    assert_eq!(stats.waiting(), 2);
    drop(waiter);
    assert_eq!(stats.waiting(), 1);

    assert_request_eq!(handle, "first").send_response("ok");
    first.await.unwrap();
    assert_ready_ok!(next.poll_ready());
    assert_eq!(stats.in_flight(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_inner_readiness_error_releases_the_slot_and_passes_through() {
    let layer = layer(1, Duration::ZERO);
    let stats = layer.handle();
    let (mut svc, mut handle) = spawn(&layer);
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    // Waiting on the inner service's readiness holds the slot.
    assert_eq!(stats.in_flight(), 1);
    handle.send_error(DownstreamError("gone"));
    let err = assert_ready_err!(svc.poll_ready());
    assert!(err.is::<DownstreamError>());
    assert_eq!(stats.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn call_without_poll_ready_admits_if_free_and_rejects_otherwise() {
    let layer = layer(1, Duration::ZERO);
    let inner = service_fn(|r: &'static str| async move {
        tokio::task::yield_now().await;
        Ok::<_, std::convert::Infallible>(r)
    });
    let mut a = layer.layer(inner);
    let mut b = layer.layer(inner);
    // No poll_ready: no panic; admitted while a slot is free, rejected when none is.
    let first = a.call("unready");
    assert_full(b.call("unready too").await.unwrap_err(), 1);
    assert_eq!(first.await.unwrap(), "unready");
    assert_eq!(b.call("now free").await.unwrap(), "now free");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn handle_counts_peak_and_admissions() {
    let layer = layer(3, Duration::ZERO);
    let stats = layer.handle();
    let (mut a, mut ha) = spawn(&layer);
    let (mut b, mut hb) = spawn(&layer);

    assert_ready_ok!(a.poll_ready());
    let fa = a.call("a");
    assert_ready_ok!(b.poll_ready());
    let fb = b.call("b");
    assert_eq!(stats.in_flight(), 2);
    assert_eq!(stats.available(), 1);
    assert_request_eq!(ha, "a").send_response("ok");
    assert_request_eq!(hb, "b").send_response("ok");
    fa.await.unwrap();
    fb.await.unwrap();
    assert_eq!(stats.peak_in_flight(), 2);
    assert_eq!(stats.in_flight(), 0);
    assert_eq!(stats.name(), "test");
    assert_eq!(stats.max_concurrent(), 3);
}

#[test]
fn config_validation_names_the_bad_field() {
    let err = BulkheadLayer::builder("x").build().unwrap_err();
    assert_eq!(
        (err.component(), err.field()),
        ("bulkhead", "max_concurrent")
    );
    assert_eq!(
        err.to_string(),
        "invalid bulkhead config: `max_concurrent` must be set"
    );

    let err = BulkheadLayer::builder("x")
        .max_concurrent(0)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid bulkhead config: `max_concurrent` must be greater than zero"
    );

    let err = BulkheadLayer::builder("x")
        .max_concurrent(usize::MAX)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_concurrent");

    assert!(BulkheadLayer::builder("x")
        .max_concurrent(usize::MAX >> 3)
        .build()
        .is_ok());
    assert!(BulkheadLayer::builder("x")
        .max_concurrent(1)
        .max_wait(Duration::MAX)
        .build()
        .is_ok());
}

/// Many clones on two worker threads; the inner service counts how many calls it sees at once.
/// With `max_wait` zero a rejected task tries again after yielding, so every call is made.
async fn hammer(max_wait: Duration) {
    const CAP: usize = 4;
    const TASKS: usize = 64;
    const CALLS: usize = 50;
    let layer = layer(CAP, max_wait);
    let stats = layer.handle();
    let current = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));

    let inner = {
        let (current, peak, calls) = (current.clone(), peak.clone(), calls.clone());
        service_fn(move |_: usize| {
            let (current, peak, calls) = (current.clone(), peak.clone(), calls.clone());
            async move {
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                calls.fetch_add(1, Ordering::SeqCst);
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                current.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(())
            }
        })
    };
    let svc = ServiceBuilder::new().layer(layer).service(inner);

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let mut rejected = 0;
                for i in 0..CALLS {
                    loop {
                        match svc.clone().oneshot(t * 1000 + i).await {
                            Ok(()) => break,
                            Err(err) if err.is::<BulkheadFull>() => {
                                rejected += 1;
                                tokio::task::yield_now().await;
                            }
                            Err(err) => panic!("unexpected error: {err}"),
                        }
                    }
                }
                rejected
            })
        })
        .collect();
    let mut rejected = 0;
    for t in tasks {
        rejected += t.await.unwrap();
    }

    assert_eq!(
        calls.load(Ordering::SeqCst),
        TASKS * CALLS,
        "every call was made"
    );
    assert!(
        peak.load(Ordering::SeqCst) <= CAP,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert!(stats.peak_in_flight() <= CAP);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        CAP,
        "the cap was actually reached"
    );
    assert_eq!(stats.in_flight(), 0);
    assert_eq!(
        stats.rejected(),
        rejected as u64,
        "every rejection was counted"
    );
    if !max_wait.is_zero() {
        assert_eq!(rejected, 0, "a long max_wait admits everyone");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_is_never_exceeded_under_contention_when_rejecting() {
    // A bound so a lost wake-up fails the test instead of hanging it; it times nothing.
    let run = tokio::time::timeout(Duration::from_secs(60), hammer(Duration::ZERO));
    run.await.expect("finished, not stuck");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_is_never_exceeded_under_contention_when_waiting() {
    let run = tokio::time::timeout(Duration::from_secs(60), hammer(Duration::from_secs(3600)));
    run.await.expect("finished, not stuck");
}

mod axum_router {
    use super::*;
    use axum::error_handling::HandleErrorLayer;
    use axum::http::{Request, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Router;
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tokio::sync::{mpsc, Semaphore};

    async fn on_error(err: BoxError) -> impl IntoResponse {
        if error::is::<BulkheadFull>(&*err) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }

    /// Two routes behind one bulkhead of 2; each handler reports that it entered and then
    /// waits at a gate the test opens.
    fn app(
        bulkhead: BulkheadLayer,
        entered: mpsc::UnboundedSender<()>,
        gate: Arc<Semaphore>,
    ) -> Router {
        let handler = move || {
            let (entered, gate) = (entered.clone(), gate.clone());
            async move {
                entered.send(()).unwrap();
                gate.acquire().await.unwrap().forget();
                "done"
            }
        };
        Router::new()
            .route("/a", get(handler.clone()))
            .route("/b", get(handler))
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(on_error))
                    .layer(bulkhead),
            )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_cap_for_every_route_and_request_clone_over_a_real_socket() {
        let bulkhead = BulkheadLayer::builder("router")
            .max_concurrent(2)
            .build()
            .unwrap();
        let stats: BulkheadHandle = bulkhead.handle();
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = app(bulkhead, entered_tx, gate.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let get = |path: &str| {
            let req = Request::get(format!("http://{addr}{path}"))
                .body(Empty::new())
                .unwrap();
            let client = client.clone();
            tokio::spawn(async move { client.request(req).await.unwrap().status() })
        };

        // Two requests on two different routes fill the bulkhead.
        let first = get("/a");
        let second = get("/b");
        entered.recv().await.unwrap();
        entered.recv().await.unwrap();
        assert_eq!(stats.in_flight(), 2);

        // The third is rejected, whichever route serves it.
        assert_eq!(get("/a").await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/b").await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(stats.rejected(), 2);

        gate.add_permits(2);
        assert_eq!(first.await.unwrap(), StatusCode::OK);
        assert_eq!(second.await.unwrap(), StatusCode::OK);

        // Free again.
        gate.add_permits(1);
        assert_eq!(get("/b").await.unwrap(), StatusCode::OK);
        assert_eq!(stats.peak_in_flight(), 2);
    }
}
