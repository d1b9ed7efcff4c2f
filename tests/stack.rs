//! The four layers composed in the standard order, outer to inner: bulkhead, total
//! timeout, retry (with budget), circuit breaker, attempt timeout. Errors become responses
//! through `response::error_response`. Paused clock throughout.
#![cfg(feature = "http")]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bulwark::circuit_breaker::{CircuitBreakerHandle, CircuitState};
use bulwark::response::error_response;
use bulwark::retry::Jitter;
use bulwark::{BoxError, BulkheadLayer, CircuitBreakerLayer, RetryLayer, TimeoutLayer};
use http_body_util::BodyExt;
use tokio::time;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// A downstream that fails while `failing` is set and takes `delay_ms` per call.
#[derive(Clone, Default)]
struct Downstream {
    failing: Arc<std::sync::atomic::AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    calls: Arc<AtomicU32>,
}

impl Downstream {
    /// The downstream as a service: counts the call, waits `delay_ms`, then fails or doubles.
    fn service(
        &self,
    ) -> impl tower::Service<
        u32,
        Response = u32,
        Error = BoxError,
        Future = impl std::future::Future<Output = Result<u32, BoxError>> + Send,
    > + Clone
           + Send
           + Sync
           + 'static {
        let down = self.clone();
        service_fn(move |x: u32| {
            let down = down.clone();
            async move {
                down.calls.fetch_add(1, Ordering::SeqCst);
                let failing = down.failing.load(Ordering::SeqCst);
                let delay = down.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    time::sleep(Duration::from_millis(delay)).await;
                }
                if failing {
                    Err::<u32, BoxError>(Box::new(std::io::Error::other("refused by 10.1.2.3")))
                } else {
                    Ok(x * 2)
                }
            }
        })
    }
}

type Client = BoxCloneSyncService<u32, u32, BoxError>;

/// The client stack, in order, with a comment per layer as a user would write it.
fn client(down: &Downstream) -> (Client, CircuitBreakerHandle) {
    let breaker = CircuitBreakerLayer::builder("inventory")
        .consecutive_failures(3)
        .break_duration(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = breaker.handle();
    let stack = ServiceBuilder::new()
        // At most 16 calls in flight to this downstream, across every clone: reject the rest.
        .layer(
            BulkheadLayer::builder("inventory")
                .max_concurrent(16)
                .build()
                .unwrap(),
        )
        // The caller's whole budget, retries and their waits included.
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        // Retry failures after a backoff, within a budget; stop when the breaker says so.
        .layer(
            RetryLayer::builder("inventory")
                .max_attempts(3)
                .backoff(Duration::from_millis(100), 2.0, Duration::from_secs(1))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        // Count each attempt's outcome; reject at once while the downstream is failing.
        .layer(breaker)
        // One attempt's limit: a hung attempt is a failure the breaker sees and retry retries.
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .service(down.service());
    (BoxCloneSyncService::new(stack), handle)
}

async fn handler(State(client): State<Client>) -> Response {
    match client.oneshot(21).await {
        Ok(n) => n.to_string().into_response(),
        Err(err) => error_response("inventory", &*err).into_response(),
    }
}

async fn get_once(app: &Router) -> (StatusCode, Option<String>, String) {
    let response = app
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        retry_after,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failing_downstream_opens_the_breaker_and_callers_get_503_with_retry_after() {
    let down = Downstream::default();
    let (client, breaker) = client(&down);
    let app = Router::new().route("/", get(handler)).with_state(client);

    assert_eq!(
        get_once(&app).await,
        (StatusCode::OK, None, "42".to_owned())
    );

    // Three attempts fail (one call, two retries): the breaker trips on the third, and the
    // caller gets a 502 that does not leak the downstream's error text.
    down.failing.store(true, Ordering::SeqCst);
    let (status, _, body) = get_once(&app).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains(r#""reason":"downstream_error""#) && !body.contains("10.1.2.3"));
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(down.calls.load(Ordering::SeqCst), 4);

    // Now every call is rejected without reaching the downstream, with the time to wait.
    let (status, retry_after, body) = get_once(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after.as_deref(), Some("30"));
    assert!(body.contains(r#""reason":"circuit_open""#), "{body}");
    assert_eq!(down.calls.load(Ordering::SeqCst), 4);

    // After the break, probes go through and close it again.
    time::advance(Duration::from_secs(30)).await;
    down.failing.store(false, Ordering::SeqCst);
    assert_eq!(get_once(&app).await.0, StatusCode::OK);
    assert_eq!(get_once(&app).await.0, StatusCode::OK);
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_hung_downstream_costs_the_caller_the_total_timeout_at_most() {
    let down = Downstream::default();
    down.delay_ms.store(60_000, Ordering::SeqCst);
    let (client, _breaker) = client(&down);
    let app = Router::new().route("/", get(handler)).with_state(client);

    let started = time::Instant::now();
    let (status, _, body) = get_once(&app).await;
    // Each attempt times out after 1 s and is retried after 100 ms, then 200 ms: three
    // attempts fit in 3.3 s, inside the 5 s total.
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains(r#""reason":"timeout""#));
    assert_eq!(started.elapsed(), Duration::from_millis(3_300));
    assert_eq!(down.calls.load(Ordering::SeqCst), 3);
}

mod builder {
    use super::*;
    use bulwark::stack::{StackHandle, StackLayer};
    use tower::{Layer, Service};

    fn built_client(down: &Downstream) -> (Client, StackHandle) {
        let stack = StackLayer::builder("inventory")
            .max_concurrent(16)
            .total_timeout(Duration::from_secs(5))
            .retry(|r| {
                r.max_attempts(3)
                    .backoff(Duration::from_millis(100), 2.0, Duration::from_secs(1))
                    .jitter(Jitter::None)
            })
            .circuit_breaker(|b| b.consecutive_failures(3))
            .attempt_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let handle = stack.handle();
        let svc = stack.layer(down.service());
        (BoxCloneSyncService::new(svc), handle)
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_built_stack_behaves_as_the_hand_assembled_one() {
        let down = Downstream::default();
        let (client, handle) = built_client(&down);
        let app = Router::new().route("/", get(handler)).with_state(client);
        assert_eq!(get_once(&app).await.0, StatusCode::OK);

        down.failing.store(true, Ordering::SeqCst);
        assert_eq!(get_once(&app).await.0, StatusCode::BAD_GATEWAY);
        let breaker = handle.circuit_breaker().unwrap();
        assert_eq!(breaker.state(), CircuitState::Open);
        let (status, retry_after, _) = get_once(&app).await;
        assert_eq!(
            (status, retry_after.as_deref()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("30"))
        );
        assert_eq!(down.calls.load(Ordering::SeqCst), 4);
        assert_eq!(handle.retry().unwrap().retries(), 2);
        assert_eq!(handle.bulkhead().unwrap().in_flight(), 0);
        assert_eq!(handle.name(), "inventory");
        assert_eq!(
            breaker.name(),
            "inventory",
            "every stage is named after the stack"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_total_timeout_bounds_all_attempts_together() {
        let down = Downstream::default();
        down.delay_ms.store(60_000, Ordering::SeqCst);
        let stack = StackLayer::builder("inventory")
            .total_timeout(Duration::from_millis(1_500))
            .retry(|r| {
                r.backoff(Duration::from_millis(100), 2.0, Duration::from_secs(1))
                    .jitter(Jitter::None)
            })
            .circuit_breaker(|b| b.consecutive_failures(2))
            .attempt_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let handle = stack.handle();
        let svc = stack.layer(down.service());
        let started = time::Instant::now();
        let err = svc.oneshot(1).await.unwrap_err();
        assert!(
            err.is::<bulwark::timeout::error::Elapsed>(),
            "the total timeout's own error"
        );
        // Attempt 1 times out at 1 s; attempt 2 starts at 1.1 s and the total cuts it at 1.5 s.
        assert_eq!(started.elapsed(), Duration::from_millis(1_500));
        assert_eq!(down.calls.load(Ordering::SeqCst), 2);
        // The first attempt's timeout counted as a failure; the second attempt, cut by the
        // total, counts for nothing.
        let breaker = handle.circuit_breaker().unwrap();
        assert_eq!(
            (breaker.state(), breaker.consecutive_failures()),
            (CircuitState::Closed, 1)
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_bulkhead_holds_a_call_through_its_retries() {
        let down = Downstream::default();
        down.delay_ms.store(60_000, Ordering::SeqCst);
        let stack = StackLayer::builder("inventory")
            .max_concurrent(1)
            .no_circuit_breaker()
            .build()
            .unwrap();
        let handle = stack.handle();
        let svc = stack.layer(down.service());
        let first = tokio::spawn(svc.clone().oneshot(1));
        // Past the first attempt's timeout, into the retries: still one slot taken.
        time::sleep(Duration::from_millis(10_500)).await;
        assert_eq!(handle.bulkhead().unwrap().in_flight(), 1);
        let err = svc.clone().oneshot(2).await.unwrap_err();
        let kind = bulwark::response::error_kind(&*err, StatusCode::BAD_GATEWAY);
        assert_eq!(
            (kind.status, kind.reason),
            (StatusCode::SERVICE_UNAVAILABLE, "bulkhead_full")
        );
        first.await.unwrap().unwrap_err();
        assert_eq!(handle.bulkhead().unwrap().in_flight(), 0);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_hung_downstream_is_cut_at_each_attempt_and_by_the_total() {
        let down = Downstream::default();
        down.delay_ms.store(60_000, Ordering::SeqCst);
        let (client, _) = built_client(&down);
        let started = time::Instant::now();
        let err = client.oneshot(1).await.unwrap_err();
        assert_eq!(
            bulwark::response::error_kind(&*err, StatusCode::BAD_GATEWAY).status,
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(started.elapsed(), Duration::from_millis(3_300));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn stages_switch_off() {
        let stack = StackLayer::builder("bare")
            .no_bulkhead()
            .no_total_timeout()
            .no_retry()
            .no_circuit_breaker()
            .no_attempt_timeout()
            .build()
            .unwrap();
        let handle = stack.handle();
        assert!(handle.bulkhead().is_none() && handle.retry().is_none());
        assert!(handle.circuit_breaker().is_none());
        let svc = stack.layer(service_fn(|x: u32| async move {
            time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, BoxError>(x)
        }));
        // No timeout anywhere: an hour-long call completes.
        assert_eq!(svc.oneshot(7).await.unwrap(), 7);
    }

    /// What a call holds is given back when its future is dropped mid-attempt (the bulkhead
    /// slot, a half-open probe's slot), and when a readied service is dropped unused.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_dropped_call_or_service_gives_back_its_slots() {
        let down = Downstream::default();
        let stack = StackLayer::builder("inventory")
            .max_concurrent(1)
            .no_retry()
            .circuit_breaker(|b| {
                b.consecutive_failures(1)
                    .break_duration(Duration::from_secs(1))
                    .success_threshold(1)
            })
            .build()
            .unwrap();
        let handle = stack.handle();
        let (bulkhead, breaker) = (
            handle.bulkhead().unwrap(),
            handle.circuit_breaker().unwrap(),
        );
        let mut svc = stack.layer(down.service());

        // A readied service holds the slot; dropped, it gives it back.
        let mut readied = svc.clone();
        readied.ready().await.unwrap();
        assert_eq!(bulkhead.in_flight(), 1);
        drop(readied);
        assert_eq!(bulkhead.in_flight(), 0);

        // Open the breaker, wait out the break, and drop the probe mid-attempt.
        down.failing.store(true, Ordering::SeqCst);
        svc.ready().await.unwrap().call(1).await.unwrap_err();
        assert_eq!(breaker.state(), CircuitState::Open);
        down.failing.store(false, Ordering::SeqCst);
        down.delay_ms.store(60_000, Ordering::SeqCst);
        time::advance(Duration::from_secs(1)).await;
        let mut probe = Box::pin(svc.ready().await.unwrap().call(2));
        assert!(futures_poll_once(&mut probe).await.is_none());
        assert_eq!((bulkhead.in_flight(), breaker.probes_in_flight()), (1, 1));
        drop(probe);
        assert_eq!((bulkhead.in_flight(), breaker.probes_in_flight()), (0, 0));

        // The probe slot is free again: the next call is the probe, and it closes the breaker.
        down.delay_ms.store(0, Ordering::SeqCst);
        assert_eq!(svc.ready().await.unwrap().call(3).await.unwrap(), 6);
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    /// Polls `fut` once; `Some` if it completed.
    async fn futures_poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *fut).poll(cx) {
                std::task::Poll::Ready(out) => Some(out),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    /// The total timeout also runs during the wait between attempts.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_total_timeout_cuts_a_backoff() {
        let down = Downstream::default();
        down.failing.store(true, Ordering::SeqCst);
        let stack = StackLayer::builder("inventory")
            .total_timeout(Duration::from_secs(1))
            .attempt_timeout(Duration::from_millis(500))
            .retry(|r| {
                r.backoff(Duration::from_secs(2), 2.0, Duration::from_secs(4))
                    .jitter(Jitter::None)
            })
            .no_circuit_breaker()
            .build()
            .unwrap();
        let handle = stack.handle();
        let started = time::Instant::now();
        let err = stack.layer(down.service()).oneshot(1).await.unwrap_err();
        assert!(err.is::<bulwark::timeout::error::Elapsed>(), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(down.calls.load(Ordering::SeqCst), 1);
        assert_eq!(handle.bulkhead().unwrap().in_flight(), 0);
    }

    /// A breaker that opens during a call's retries ends them: the next attempt is rejected
    /// without reaching the downstream, and retry gives up rather than wait out the break.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_breaker_that_opens_mid_retries_ends_them() {
        let down = Downstream::default();
        down.failing.store(true, Ordering::SeqCst);
        let stack = StackLayer::builder("inventory")
            .retry(|r| {
                r.max_attempts(4)
                    .backoff(Duration::from_millis(100), 2.0, Duration::from_secs(1))
                    .jitter(Jitter::None)
            })
            .circuit_breaker(|b| {
                b.consecutive_failures(2)
                    .break_duration(Duration::from_secs(30))
            })
            .build()
            .unwrap();
        let handle = stack.handle();
        let err = stack.layer(down.service()).oneshot(1).await.unwrap_err();
        let exhausted = bulwark::error::find::<bulwark::retry::error::RetriesExhausted>(&*err)
            .expect("retry gave up");
        assert_eq!(
            exhausted.reason(),
            bulwark::retry::error::GaveUp::CircuitOpen
        );
        assert_eq!(
            exhausted.attempts(),
            3,
            "the third attempt was the rejected one"
        );
        assert_eq!(down.calls.load(Ordering::SeqCst), 2);
        let breaker = handle.circuit_breaker().unwrap();
        assert_eq!(breaker.counters().rejections, 1);
    }

    /// A call the bulkhead rejects reaches neither the breaker nor the budget.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_full_bulkhead_rejects_before_the_other_stages() {
        let down = Downstream::default();
        down.delay_ms.store(60_000, Ordering::SeqCst);
        let stack = StackLayer::builder("inventory")
            .max_concurrent(1)
            .build()
            .unwrap();
        let handle = stack.handle();
        let svc = stack.layer(down.service());
        let first = tokio::spawn(svc.clone().oneshot(1));
        tokio::task::yield_now().await;
        let budget_before = handle.retry().unwrap().budget_available();
        let err = svc.clone().oneshot(2).await.unwrap_err();
        assert!(err.is::<bulwark::bulkhead::error::BulkheadFull>(), "{err}");
        assert_eq!(handle.retry().unwrap().budget_available(), budget_before);
        assert_eq!(handle.circuit_breaker().unwrap().counters().calls, 0);
        assert_eq!(handle.bulkhead().unwrap().rejected(), 1);
        first.abort();
    }

    #[test]
    fn contradictions_between_stages_are_named() {
        let field = |b: bulwark::stack::StackBuilder| {
            let e = b.build().unwrap_err();
            (e.component(), e.field())
        };
        assert_eq!(
            field(
                StackLayer::builder("s")
                    .total_timeout(Duration::from_secs(1))
                    .attempt_timeout(Duration::from_secs(2))
            ),
            ("stack", "attempt_timeout")
        );
        assert_eq!(
            field(
                StackLayer::builder("s")
                    .attempt_timeout(Duration::from_secs(10))
                    .circuit_breaker(|b| b.failure_rate_over_time(
                        0.5,
                        Duration::from_secs(15),
                        15,
                        5
                    ))
            ),
            ("stack", "circuit_breaker.failure_rate_over_time.span")
        );
        assert_eq!(
            field(StackLayer::builder("s").retry(|r| r.max_attempts(0))),
            ("retry", "max_attempts")
        );
        assert_eq!(
            field(
                StackLayer::builder("s").circuit_breaker(|b| b.failure_rate_over_calls(1.5, 10, 5))
            ),
            ("circuit breaker", "failure_rate_over_calls.rate")
        );
        assert_eq!(
            field(StackLayer::builder("s").max_concurrent(0)),
            ("bulkhead", "max_concurrent")
        );
        assert!(
            StackLayer::builder("s").build().is_ok(),
            "the defaults are valid"
        );
    }
}
