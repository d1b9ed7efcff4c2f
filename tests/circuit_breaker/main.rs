//! Integration tests for the circuit breaker, on tokio's paused clock unless they need threads.

#[path = "../support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulwark::circuit_breaker::error::CircuitOpen;
use bulwark::circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayerBuilder, CircuitState};
use bulwark::classify::Outcome;
use bulwark::error::{self, Rejection};
use bulwark::{BoxError, BulkheadLayer, CircuitBreakerLayer};
use support::DownstreamError;
use tokio::sync::Semaphore;
use tokio::time;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_test::{assert_request_eq, mock};

/// A downstream whose health the test switches: a call made while `failing` is set fails, and
/// every call takes `delay_ms` of (paused) time.
#[derive(Clone, Default)]
struct Downstream {
    failing: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    calls: Arc<AtomicUsize>,
}

impl Downstream {
    fn fail(&self, yes: bool) {
        self.failing.store(yes, Ordering::SeqCst);
    }

    fn delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<
        u32,
        Response = u32,
        Error = DownstreamError,
        Future = impl std::future::Future<Output = Result<u32, DownstreamError>> + Send,
    > + Clone
           + Send {
        let this = self.clone();
        service_fn(move |x: u32| {
            let this = this.clone();
            async move {
                this.calls.fetch_add(1, Ordering::SeqCst);
                // A call made while failing fails, however long it takes.
                let failing = this.failing.load(Ordering::SeqCst);
                let delay = this.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    time::sleep(Duration::from_millis(delay)).await;
                }
                if failing {
                    Err(DownstreamError("down"))
                } else {
                    Ok(x)
                }
            }
        })
    }
}

fn breaker(b: CircuitBreakerLayerBuilder) -> (CircuitBreakerLayer, CircuitBreakerHandle) {
    let layer = b.build().unwrap();
    let handle = layer.handle();
    (layer, handle)
}

async fn call<S>(svc: &S) -> Result<u32, BoxError>
where
    S: Service<u32, Response = u32, Error = BoxError> + Clone,
{
    svc.clone().oneshot(7).await
}

fn is_open(err: &BoxError) -> bool {
    err.is::<CircuitOpen>()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn four_failures_stay_closed_the_fifth_opens_and_the_break_ends_at_exactly_30s() {
    let down = Downstream::default();
    let (layer, handle) = breaker(CircuitBreakerLayer::builder("payments"));
    let svc = layer.layer(down.service());

    down.fail(true);
    for n in 1..=4 {
        assert!(call(&svc).await.unwrap_err().is::<DownstreamError>());
        assert_eq!(handle.state(), CircuitState::Closed, "after {n} failures");
    }
    assert!(call(&svc).await.unwrap_err().is::<DownstreamError>());
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(down.calls(), 5);

    // Rejected without calling the downstream, with the breaker's name and the time left.
    let err = call(&svc).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().unwrap();
    assert_eq!(open.name(), "payments");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(
        err.to_string(),
        "circuit `payments` is open; next probe in 30s"
    );
    assert!(matches!(
        error::rejection(&*err),
        Some(Rejection::CircuitOpen(_))
    ));
    assert_eq!(down.calls(), 5);

    time::advance(Duration::from_millis(29_999)).await;
    let err = call(&svc).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().unwrap().retry_after(),
        Some(Duration::from_millis(1))
    );
    assert_eq!(handle.time_until_probe(), Some(Duration::from_millis(1)));

    time::advance(Duration::from_millis(1)).await;
    down.fail(false);
    assert_eq!(
        call(&svc).await.unwrap(),
        7,
        "the first call after the break is a probe"
    );
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    assert_eq!(call(&svc).await.unwrap(), 7);
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "closed after 2 successful probes"
    );
    let c = handle.counters();
    assert_eq!(
        (c.calls, c.failures, c.rejections, c.transitions),
        (7, 5, 2, 3)
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failed_probe_reopens_for_another_break() {
    let down = Downstream::default();
    let (layer, handle) = breaker(CircuitBreakerLayer::builder("b").consecutive_failures(1));
    let svc = layer.layer(down.service());
    down.fail(true);
    call(&svc).await.unwrap_err();
    time::advance(Duration::from_secs(30)).await;
    assert!(call(&svc).await.unwrap_err().is::<DownstreamError>());
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(handle.time_until_probe(), Some(Duration::from_secs(30)));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_rate_reached_by_a_success_filling_the_window_trips() {
    let down = Downstream::default();
    let (layer, handle) = breaker(
        CircuitBreakerLayer::builder("b")
            .no_consecutive_failures()
            .failure_rate_over_calls(0.5, 10, 10),
    );
    let svc = layer.layer(down.service());
    down.fail(true);
    for _ in 0..5 {
        call(&svc).await.unwrap_err();
    }
    down.fail(false);
    for _ in 0..4 {
        call(&svc).await.unwrap();
    }
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "9 calls: below the minimum"
    );
    // The 10th call, a success, brings the window to its minimum with 5 of 10 failed.
    call(&svc).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_call_waiting_for_the_inner_service_is_rejected_if_the_breaker_trips_meanwhile() {
    let (layer, handle) = breaker(CircuitBreakerLayer::builder("b").consecutive_failures(1));
    let (mut waiting, mut inner) = mock::spawn_layer::<u32, u32, _>(layer.clone());
    inner.allow(0);
    assert_pending!(waiting.poll_ready()); // Closed (nothing held), waits for the inner service

    // Another clone trips the breaker meanwhile.
    let down = Downstream::default();
    down.fail(true);
    layer.layer(down.service()).oneshot(1).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::Open);

    inner.allow(1);
    assert_ready_ok!(waiting.poll_ready());
    let err = assert_ready_err!(task::spawn(waiting.call(2)).poll());
    assert!(is_open(&err), "decided again, and rejected");
    assert!(
        inner.poll_request().is_pending(),
        "the failing downstream was not called"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_admission_gone_stale_before_call_is_decided_again_at_call() {
    let (layer, handle) = breaker(CircuitBreakerLayer::builder("b"));
    let (mut svc, mut inner) = mock::spawn_layer::<u32, u32, _>(layer);
    assert_ready_ok!(svc.poll_ready()); // Closed: admitted, nothing held
    handle.force_open();
    let err = assert_ready_err!(task::spawn(svc.call(1)).poll());
    assert!(is_open(&err));
    assert!(inner.poll_request().is_pending());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_probe_pass_gone_stale_before_call_is_decided_again_and_rejected() {
    let (layer, handle, _down) = due_for_a_probe(1).await;

    let (mut svc, mut inner) = mock::spawn_layer::<u32, u32, _>(layer.clone());
    assert_ready_ok!(svc.poll_ready()); // HalfOpen: holds the only probe slot
    assert_eq!(handle.probes_in_flight(), 1);
    handle.force_open();
    let err = assert_ready_err!(task::spawn(svc.call(1)).poll());
    assert!(is_open(&err), "decided again at call, and rejected");
    assert!(
        inner.poll_request().is_pending(),
        "the inner service was not called"
    );
    assert_eq!(handle.counters().rejections, 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_bypass_pass_gone_stale_before_call_is_decided_again() {
    let (layer, handle) = breaker(CircuitBreakerLayer::builder("b"));
    handle.force_closed();
    let (mut svc, mut inner) = mock::spawn_layer::<u32, u32, _>(layer);
    assert_ready_ok!(svc.poll_ready()); // ForcedClosed: a bypass pass, kept
    handle.force_open();
    let err = assert_ready_err!(task::spawn(svc.call(1)).poll());
    assert!(is_open(&err));
    assert!(inner.poll_request().is_pending());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_inner_readiness_error_gives_the_probe_slot_back() {
    let (layer, handle, down) = due_for_a_probe(1).await;

    let (mut broken, mut broken_inner) = mock::spawn_layer::<u32, u32, _>(layer.clone());
    broken_inner.allow(0);
    assert_pending!(broken.poll_ready()); // holds the only probe slot
    assert_eq!(handle.probes_in_flight(), 1);
    broken_inner.send_error(DownstreamError("gone"));
    assert!(assert_ready_err!(broken.poll_ready()).is::<DownstreamError>());
    assert_eq!(handle.probes_in_flight(), 0);

    down.fail(false);
    assert_eq!(
        layer.layer(down.service()).oneshot(5).await.unwrap(),
        5,
        "a probe got the slot"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_count_window_forgets_old_successes() {
    let down = Downstream::default();
    let (layer, handle) = breaker(
        CircuitBreakerLayer::builder("b")
            .no_consecutive_failures()
            .failure_rate_over_calls(0.5, 10, 10),
    );
    let svc = layer.layer(down.service());
    for _ in 0..2_000 {
        call(&svc).await.unwrap();
    }
    down.fail(true);
    let mut failures = 0;
    while handle.state() == CircuitState::Closed {
        call(&svc).await.unwrap_err();
        failures += 1;
        assert!(failures <= 10, "still closed after {failures} failures");
    }
    assert_eq!(failures, 5, "half of the last 10 calls");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_rate_rule_waits_for_its_minimum_calls() {
    let down = Downstream::default();
    let (layer, handle) = breaker(
        CircuitBreakerLayer::builder("b")
            .no_consecutive_failures()
            .failure_rate_over_calls(0.5, 20, 8),
    );
    let svc = layer.layer(down.service());
    down.fail(true);
    for _ in 0..7 {
        call(&svc).await.unwrap_err();
    }
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "7 calls: below the minimum"
    );
    call(&svc).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_time_window_forgets_calls_older_than_its_span() {
    let down = Downstream::default();
    let (layer, handle) = breaker(
        CircuitBreakerLayer::builder("b")
            .no_consecutive_failures()
            .failure_rate_over_time(0.5, Duration::from_secs(10), 10, 4),
    );
    let svc = layer.layer(down.service());
    down.fail(true);
    for _ in 0..3 {
        call(&svc).await.unwrap_err();
    }
    // 3 failures, then 10 s pass: they slide out of the window.
    time::advance(Duration::from_secs(10)).await;
    down.fail(false);
    call(&svc).await.unwrap();
    down.fail(true);
    call(&svc).await.unwrap_err();
    call(&svc).await.unwrap_err();
    // Had the old failures counted, 5 of 6 would have failed long ago; the window holds 1
    // success and 2 failures: below the minimum of 4 calls.
    assert_eq!(handle.state(), CircuitState::Closed);
    call(&svc).await.unwrap_err();
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "3 of 4 recent calls failed"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn slow_calls_trip_even_when_they_succeed() {
    let down = Downstream::default();
    let (layer, handle) = breaker(
        CircuitBreakerLayer::builder("b")
            .failure_rate_over_calls(0.5, 4, 4)
            .slow_calls(Duration::from_secs(1), 0.75),
    );
    let svc = layer.layer(down.service());
    call(&svc).await.unwrap();
    down.delay(Duration::from_secs(1));
    call(&svc).await.unwrap();
    call(&svc).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    call(&svc).await.unwrap();
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "3 of 4 calls took at least 1 s"
    );
    assert_eq!(handle.counters().slow_calls, 3);
    assert_eq!(handle.counters().failures, 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slow_failure_from_before_the_trip_does_not_reopen_a_closed_breaker() {
    let down = Downstream::default();
    let (layer, handle) = breaker(
        CircuitBreakerLayer::builder("b")
            .consecutive_failures(1)
            .success_threshold(1)
            .break_duration(Duration::from_secs(5)),
    );
    let svc = layer.layer(down.service());

    // A slow call is admitted while Closed; it will fail after 20 s.
    down.fail(true);
    down.delay(Duration::from_secs(20));
    let mut slow = task::spawn(call(&svc));
    assert_pending!(slow.poll());

    // Meanwhile a fast failure trips the breaker, and a probe closes it again.
    down.delay(Duration::ZERO);
    call(&svc).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::Open);
    time::advance(Duration::from_secs(5)).await;
    down.fail(false);
    call(&svc).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);

    // The stale failure arrives: it is returned to its caller but moves nothing.
    time::advance(Duration::from_secs(15)).await;
    assert!(assert_ready_err!(slow.poll()).is::<DownstreamError>());
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.consecutive_failures(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_open_breaker_is_ready_without_polling_the_inner_service() {
    let (layer, handle) = breaker(CircuitBreakerLayer::builder("b"));
    let (mut svc, mut inner) = mock::spawn_layer::<u32, u32, _>(layer);
    handle.force_open();
    inner.allow(0);
    assert_ready_ok!(svc.poll_ready());
    let err = assert_ready_err!(task::spawn(svc.call(1)).poll());
    let open = err.downcast_ref::<CircuitOpen>().unwrap();
    assert_eq!(
        (open.state(), open.retry_after()),
        (CircuitState::ForcedOpen, None)
    );
    assert_eq!(err.to_string(), "circuit `b` is forced open");
    assert!(inner.poll_request().is_pending());

    // Closed: readiness is the inner service's.
    handle.reset();
    assert_pending!(svc.poll_ready());
    inner.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(2);
    assert_request_eq!(inner, 2).send_response(3);
    assert_eq!(fut.await.unwrap(), 3);
}

/// A [`probing_breaker`] tripped by one failing call and at the end of its break: the next call
/// takes a probe slot. Returns its failing downstream too.
async fn due_for_a_probe(
    max_probes: u32,
) -> (CircuitBreakerLayer, CircuitBreakerHandle, Downstream) {
    let (layer, handle) = probing_breaker(max_probes);
    let down = Downstream::default();
    down.fail(true);
    layer.layer(down.service()).oneshot(1).await.unwrap_err();
    time::advance(Duration::from_secs(1)).await;
    (layer, handle, down)
}

fn probing_breaker(max_probes: u32) -> (CircuitBreakerLayer, CircuitBreakerHandle) {
    breaker(
        CircuitBreakerLayer::builder("b")
            .consecutive_failures(1)
            .half_open_max_calls(max_probes)
            .success_threshold(100)
            .break_duration(Duration::from_secs(1)),
    )
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn half_open_admits_at_most_its_probes_across_clones() {
    let (layer, handle) = probing_breaker(2);
    let gate = Arc::new(Semaphore::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let inner = {
        let (gate, in_flight) = (gate.clone(), in_flight.clone());
        service_fn(move |fail: bool| {
            let (gate, in_flight) = (gate.clone(), in_flight.clone());
            async move {
                if fail {
                    return Err(DownstreamError("down"));
                }
                in_flight.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    let svc = layer.layer(inner);
    svc.clone().oneshot(true).await.unwrap_err();
    time::advance(Duration::from_secs(1)).await;

    // Ten tasks, each with its own clone, try to probe at once.
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(false)))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(in_flight.load(Ordering::SeqCst), 2, "two probes in flight");
    gate.add_permits(10);
    let mut rejected = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => {}
            Err(e)
                if e.downcast_ref::<CircuitOpen>().map(|o| o.state())
                    == Some(CircuitState::HalfOpen) =>
            {
                rejected += 1
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(rejected, 8);
    assert_eq!(handle.state(), CircuitState::HalfOpen);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_dropped_probe_gives_its_slot_back() {
    let (layer, _handle) = probing_breaker(1);
    let (mut svc, mut inner) = mock::spawn_layer::<u32, u32, _>(layer.clone());
    let (mut other, mut other_inner) = mock::spawn_layer::<u32, u32, _>(layer);
    // Trip it.
    assert_ready_ok!(svc.poll_ready());
    let f = svc.call(1);
    assert_request_eq!(inner, 1).send_error(DownstreamError("down"));
    f.await.unwrap_err();
    time::advance(Duration::from_secs(1)).await;

    assert_ready_ok!(svc.poll_ready());
    let probe = svc.call(2);
    let _req = inner.next_request().await.unwrap();
    assert_ready_ok!(other.poll_ready());
    assert!(is_open(&assert_ready_err!(
        task::spawn(other.call(3)).poll()
    )));

    drop(probe);
    assert_ready_ok!(other.poll_ready());
    let probe = other.call(4);
    assert_request_eq!(other_inner, 4).send_response(4);
    assert_eq!(probe.await.unwrap(), 4);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_probe_slot_reserved_by_poll_ready_is_released_by_dropping_the_service_not_copied_by_clone(
) {
    let (layer, handle, _down) = due_for_a_probe(1).await;
    let svc = layer.layer(Downstream::default().service());

    let mut holder = svc.clone();
    std::future::poll_fn(|cx| holder.poll_ready(cx))
        .await
        .unwrap(); // takes the probe slot
    let mut twin = holder.clone();
    std::future::poll_fn(|cx| twin.poll_ready(cx))
        .await
        .unwrap();
    assert!(
        is_open(&twin.call(1).await.unwrap_err()),
        "the clone has no slot"
    );
    drop(holder);
    assert_eq!(call(&svc).await.unwrap(), 7, "the slot came back");
    assert_eq!(handle.state(), CircuitState::HalfOpen);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_ignored_probe_gives_its_slot_back() {
    let layer = CircuitBreakerLayer::builder("b")
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(1))
        .classifier(|r: &Result<u32, BoxError>| match r {
            Ok(0) => Outcome::Ignored,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|x: u32| async move {
        if x == 99 {
            Err::<u32, BoxError>("down".into())
        } else {
            Ok(x)
        }
    }));
    svc.clone().oneshot(99).await.unwrap_err();
    time::advance(Duration::from_secs(1)).await;
    for _ in 0..5 {
        assert_eq!(
            svc.clone().oneshot(0).await.unwrap(),
            0,
            "ignored probes never jam"
        );
    }
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    svc.clone().oneshot(1).await.unwrap();
    svc.clone().oneshot(1).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_full_bulkhead_inside_the_breaker_is_not_a_downstream_failure() {
    let bulkhead = BulkheadLayer::builder("inner")
        .max_concurrent(1)
        .build()
        .unwrap();
    let (layer, handle) = breaker(CircuitBreakerLayer::builder("b").consecutive_failures(2));
    let down = Downstream::default();
    down.delay(Duration::from_secs(5));
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(bulkhead)
        .service(down.service());
    let mut holder = task::spawn(call(&svc));
    assert_pending!(holder.poll());
    for _ in 0..5 {
        let err = call(&svc).await.unwrap_err();
        assert!(matches!(
            error::rejection(&*err),
            Some(Rejection::BulkheadFull(_))
        ));
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.consecutive_failures(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn forced_states_and_reset() {
    let down = Downstream::default();
    let (layer, handle) = breaker(CircuitBreakerLayer::builder("b").consecutive_failures(1));
    let svc = layer.layer(down.service());

    handle.force_open();
    assert_eq!(handle.state(), CircuitState::ForcedOpen);
    assert!(is_open(&call(&svc).await.unwrap_err()));
    assert_eq!(down.calls(), 0);

    handle.force_closed();
    down.fail(true);
    for _ in 0..5 {
        call(&svc).await.unwrap_err();
    }
    assert_eq!(handle.state(), CircuitState::ForcedClosed, "never trips");

    handle.disable();
    for _ in 0..5 {
        call(&svc).await.unwrap_err();
    }
    assert_eq!(
        handle.state(),
        CircuitState::Disabled,
        "records, never trips"
    );
    assert_eq!(handle.counters().failures, 10);

    handle.reset();
    assert_eq!(handle.state(), CircuitState::Closed);
    call(&svc).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(handle.time_until_probe(), Some(Duration::from_secs(30)));
}

#[test]
fn invalid_configuration_is_a_typed_error_naming_the_field() {
    let err = CircuitBreakerLayer::builder("b")
        .failure_rate_over_calls(1.5, 10, 5)
        .build()
        .unwrap_err();
    assert_eq!(err.component(), "circuit breaker");
    assert_eq!(err.field(), "failure_rate_over_calls.rate");
    let err = CircuitBreakerLayer::builder("b")
        .failure_rate_over_calls(0.5, 5, 10)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "failure_rate_over_calls.min_calls");
}

/// Many tasks on two threads hammer a breaker whose downstream fails in bursts, so it keeps
/// cycling through Closed, Open and HalfOpen.
///
/// Which calls are probes is known only inside the breaker (a call admitted while Closed may
/// still be running when the breaker is HalfOpen), so here the probe limit is read from the
/// breaker's own probe count, sampled by the downstream on every call. The tests that can fail
/// on an over-admission count probes from outside: the single-threaded ones above count
/// downstream calls, and `probes_never_exceed_the_limit_under_threads` in
/// `src/circuit_breaker/core.rs` counts admitted probes per generation across 4 threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_two_thread_contention_the_probe_limit_holds_and_counters_add_up() {
    const MAX_PROBES: u64 = 3;
    let layer = CircuitBreakerLayer::builder("stress")
        .consecutive_failures(3)
        .half_open_max_calls(MAX_PROBES as u32)
        .success_threshold(2)
        .break_duration(Duration::from_millis(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let probes_peak = Arc::new(AtomicU64::new(0));
    let half_open_seen = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let inner = {
        let (handle, peak, seen, completed) = (
            handle.clone(),
            probes_peak.clone(),
            half_open_seen.clone(),
            completed.clone(),
        );
        service_fn(move |i: usize| {
            let (handle, peak, seen, completed) = (
                handle.clone(),
                peak.clone(),
                seen.clone(),
                completed.clone(),
            );
            async move {
                for _ in 0..2 {
                    if handle.state() == CircuitState::HalfOpen {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    peak.fetch_max(handle.probes_in_flight(), Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
                completed.fetch_add(1, Ordering::SeqCst);
                // Fail in bursts so the breaker keeps cycling.
                if (i / 7).is_multiple_of(3) {
                    Err(DownstreamError("down"))
                } else {
                    Ok(())
                }
            }
        })
    };
    let svc = layer.layer(inner);
    let rejected = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let (svc, rejected) = (svc.clone(), rejected.clone());
            tokio::spawn(async move {
                for i in 0..300 {
                    match svc.clone().oneshot(t * 1000 + i).await {
                        Err(e) if e.is::<CircuitOpen>() => {
                            rejected.fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                        }
                        _ => {}
                    }
                }
            })
        })
        .collect();
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("finished, not stuck");

    let c = handle.counters();
    assert_eq!(c.calls as usize, completed.load(Ordering::SeqCst));
    assert_eq!(c.rejections as usize, rejected.load(Ordering::SeqCst));
    assert_eq!(
        c.calls + c.rejections,
        32 * 300,
        "every call either ran or was rejected"
    );
    assert!(c.transitions > 0, "the breaker cycled");
    assert!(
        half_open_seen.load(Ordering::SeqCst) > 0,
        "probing was exercised"
    );
    assert!(probes_peak.load(Ordering::SeqCst) <= MAX_PROBES);
    assert!(probes_peak.load(Ordering::SeqCst) >= 1);
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

    async fn on_error(err: BoxError) -> impl IntoResponse {
        match error::rejection(&*err) {
            Some(Rejection::CircuitOpen(_)) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_breaker_opens_for_every_route_over_a_real_socket() {
        let (layer, handle) =
            breaker(CircuitBreakerLayer::builder("router").consecutive_failures(3));
        let failing = Arc::new(AtomicBool::new(true));
        // Build the app the usual way: one layer over every route.
        let failing2 = failing.clone();
        let app = Router::new()
            .route("/a", get(|| async { "a" }))
            .route("/b", get(|| async { "b" }))
            .route("/c", get(|| async { "c" }))
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(on_error))
                    .layer(layer)
                    .map_future(move |fut| {
                        let failing = failing2.clone();
                        async move {
                            let res: Result<_, std::convert::Infallible> = fut.await;
                            if failing.load(Ordering::SeqCst) {
                                Err::<axum::response::Response, BoxError>("down".into())
                            } else {
                                res.map_err(BoxError::from)
                            }
                        }
                    }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let get = |path: &str| {
            let req = Request::get(format!("http://{addr}{path}"))
                .body(Empty::new())
                .unwrap();
            let client = client.clone();
            async move {
                let res = tokio::time::timeout(Duration::from_secs(30), client.request(req));
                res.await.expect("an answer").unwrap().status()
            }
        };

        // Three failures spread over three routes trip the one breaker...
        assert_eq!(get("/a").await, StatusCode::BAD_GATEWAY);
        assert_eq!(get("/b").await, StatusCode::BAD_GATEWAY);
        assert_eq!(get("/c").await, StatusCode::BAD_GATEWAY);
        assert_eq!(handle.state(), CircuitState::Open);
        // ... and every route is now rejected.
        failing.store(false, Ordering::SeqCst);
        for path in ["/a", "/b", "/c"] {
            assert_eq!(get(path).await, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
        assert_eq!(handle.counters().rejections, 3);
    }
}

/// Every completed call is counted once, whether a count window recorded it (a success or
/// failure while Closed) or not (an ignored outcome, a probe).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn calls_are_counted_once_with_a_count_window() {
    let layer = CircuitBreakerLayer::builder("counted")
        .classifier(|r: &Result<u32, BoxError>| match r {
            Ok(7) => Outcome::Ignored,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        })
        .consecutive_failures(3)
        .failure_rate_over_calls(0.9, 10, 5)
        .break_duration(Duration::from_secs(1))
        .success_threshold(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|x: u32| async move {
        if x == 0 {
            Err::<u32, BoxError>("down".into())
        } else {
            Ok(x)
        }
    }));
    // 12 successes (past the window's minimum: the fast path), 2 failures, 3 ignored.
    for x in std::iter::repeat_n(1, 12).chain([0, 0, 7, 7, 7]) {
        let _ = svc.clone().oneshot(x).await;
    }
    assert_eq!(handle.counters().calls, 17);
    // Trip it, then a probe: counted too.
    let _ = svc.clone().oneshot(0).await;
    assert_eq!(handle.state(), CircuitState::Open);
    time::advance(Duration::from_secs(1)).await;
    svc.clone().oneshot(1).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    let c = handle.counters();
    assert_eq!((c.calls, c.failures), (19, 3));
}
