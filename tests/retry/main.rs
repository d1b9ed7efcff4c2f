//! Integration tests for the retry layer, on tokio's paused clock.

#[path = "../support/mod.rs"]
mod support;

#[cfg(feature = "http")]
mod http;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bulwark::circuit_breaker::error::CircuitOpen;
use bulwark::circuit_breaker::CircuitState;
use bulwark::classify::Outcome;
use bulwark::error;
use bulwark::retry::error::{GaveUp, RetriesExhausted};
use bulwark::retry::{Jitter, RetryBudget, RetryLayerBuilder};
use bulwark::{BoxError, CircuitBreakerLayer, RetryLayer};
use support::DownstreamError;
use tokio::time::{self, Instant};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// A downstream that fails its first `failures` calls and records when each call came.
#[derive(Clone)]
struct Flaky {
    failures: u32,
    calls: Arc<AtomicU32>,
    times: Arc<Mutex<Vec<Duration>>>,
    start: Instant,
}

impl Flaky {
    fn new(failures: u32) -> Self {
        Flaky {
            failures,
            calls: Arc::default(),
            times: Arc::default(),
            start: Instant::now(),
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn times(&self) -> Vec<Duration> {
        self.times.lock().unwrap().clone()
    }

    fn service(
        &self,
    ) -> impl Service<
        u32,
        Response = u32,
        Error = DownstreamError,
        Future = impl Future<Output = Result<u32, DownstreamError>> + Send,
    > + Clone
           + Send {
        let this = self.clone();
        service_fn(move |x: u32| {
            let n = this.calls.fetch_add(1, Ordering::SeqCst);
            this.times.lock().unwrap().push(this.start.elapsed());
            let fail = n < this.failures;
            async move {
                if fail {
                    Err(DownstreamError("flaky"))
                } else {
                    Ok(x)
                }
            }
        })
    }
}

/// No jitter, 100 ms doubling, no budget: the waits are exact.
fn exact() -> RetryLayerBuilder {
    RetryLayer::builder("test")
        .backoff(100 * MS, 2.0, Duration::from_secs(10))
        .jitter(Jitter::None)
        .no_budget()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failed_call_is_retried_after_the_backoff_and_succeeds() {
    let flaky = Flaky::new(2);
    let layer = exact().max_attempts(3).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(flaky.service());
    assert_eq!(svc.oneshot(7).await.unwrap(), 7);
    assert_eq!(flaky.times(), [Duration::ZERO, 100 * MS, 300 * MS]);
    assert_eq!(handle.retries(), 2);
    assert_eq!(handle.gave_up(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn exhaustion_says_how_many_attempts_and_keeps_the_last_error() {
    let flaky = Flaky::new(u32::MAX);
    let layer = exact().max_attempts(3).build().unwrap();
    let handle = layer.handle();
    let err = layer.layer(flaky.service()).oneshot(1).await.unwrap_err();
    let exhausted = err
        .downcast_ref::<RetriesExhausted>()
        .expect("RetriesExhausted");
    assert_eq!(
        (exhausted.attempts(), exhausted.reason()),
        (3, GaveUp::MaxAttempts)
    );
    assert_eq!(err.to_string(), "gave up after 3 attempts (max attempts)");
    assert_eq!(
        error::find::<DownstreamError>(&*err),
        Some(&DownstreamError("flaky"))
    );
    assert_eq!(flaky.calls(), 3);
    assert_eq!(handle.gave_up(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn what_the_classifier_does_not_retry_comes_back_unchanged() {
    let flaky = Flaky::new(u32::MAX);
    let layer = exact()
        .classifier(|_: &Result<u32, BoxError>| Outcome::Success)
        .build()
        .unwrap();
    let err = layer.layer(flaky.service()).oneshot(1).await.unwrap_err();
    assert!(err.is::<DownstreamError>(), "not wrapped: {err}");
    assert_eq!(flaky.calls(), 1);

    // And an Ok classified as a failure is retried, then returned as is when out of attempts.
    let zero_is_bad = exact()
        .max_attempts(2)
        .classifier(|r: &Result<u32, BoxError>| match r {
            Ok(0) | Err(_) => Outcome::Failure,
            Ok(_) => Outcome::Success,
        })
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let svc = zero_is_bad.layer(service_fn(move |_: ()| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<u32, DownstreamError>(0) }
    }));
    assert_eq!(svc.oneshot(()).await.unwrap(), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn one_attempt_turns_retries_off_and_errors_pass_through() {
    let flaky = Flaky::new(u32::MAX);
    let layer = exact().max_attempts(1).build().unwrap();
    let err = layer.layer(flaky.service()).oneshot(1).await.unwrap_err();
    assert!(err.is::<DownstreamError>());
    assert_eq!(flaky.calls(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_budget_limits_retries_across_clones() {
    let flaky = Flaky::new(u32::MAX);
    // No share of traffic, a floor of 1 retry per second over a 1 s window: 1 retry.
    let layer = exact()
        .max_attempts(5)
        .budget(RetryBudget::new(0.0, 1, Duration::from_secs(1)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(flaky.service());

    let err = svc.clone().oneshot(1).await.unwrap_err();
    let exhausted = err.downcast_ref::<RetriesExhausted>().unwrap();
    assert_eq!(
        (exhausted.attempts(), exhausted.reason()),
        (2, GaveUp::Budget)
    );
    // Another clone, same budget: nothing left, so no retry at all.
    let err = svc.clone().oneshot(1).await.unwrap_err();
    let exhausted = err.downcast_ref::<RetriesExhausted>().unwrap();
    assert_eq!(
        (exhausted.attempts(), exhausted.reason()),
        (1, GaveUp::Budget)
    );
    assert_eq!(handle.retries(), 1);
    assert_eq!(handle.budget_available(), Some(0.0));

    // The window slides on: a second later the floor is back, and a retry with it.
    time::advance(Duration::from_secs(1)).await;
    let err = svc.clone().oneshot(1).await.unwrap_err();
    let exhausted = err.downcast_ref::<RetriesExhausted>().unwrap();
    assert_eq!(
        (exhausted.attempts(), exhausted.reason()),
        (2, GaveUp::Budget)
    );
    assert_eq!(handle.retries(), 2);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_attempt_starts_after_the_deadline() {
    let flaky = Flaky::new(u32::MAX);
    let layer = exact()
        .max_attempts(10)
        .backoff(Duration::from_secs(1), 2.0, Duration::from_secs(10))
        .deadline(Duration::from_millis(1_500))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = layer.layer(flaky.service()).oneshot(1).await.unwrap_err();
    let exhausted = err.downcast_ref::<RetriesExhausted>().unwrap();
    // Attempts at 0 s and 1 s; the next would start at 3 s, past the 1.5 s deadline.
    assert_eq!(
        (exhausted.attempts(), exhausted.reason()),
        (2, GaveUp::Deadline)
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "gave up at once, without waiting"
    );

    // An attempt may start exactly at the deadline.
    let flaky = Flaky::new(u32::MAX);
    let layer = exact()
        .max_attempts(10)
        .backoff(Duration::from_secs(1), 1.0, Duration::from_secs(1))
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    layer.layer(flaky.service()).oneshot(1).await.unwrap_err();
    assert_eq!(
        flaky.times(),
        [
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(2)
        ]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_open_circuit_ends_the_retry_unless_it_probes_before_the_next_attempt() {
    let open_for = |after: Option<Duration>| {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let svc = service_fn(move |_: ()| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                Err::<(), BoxError>(Box::new(CircuitOpen::new(
                    "down",
                    CircuitState::Open,
                    after,
                )))
            }
        });
        (calls, exact().max_attempts(3).build().unwrap().layer(svc))
    };

    // The breaker stays open 30 s, the next attempt would be in 100 ms: stop now.
    let (calls, svc) = open_for(Some(Duration::from_secs(30)));
    let err = svc.oneshot(()).await.unwrap_err();
    let exhausted = err.downcast_ref::<RetriesExhausted>().unwrap();
    assert_eq!(
        (exhausted.attempts(), exhausted.reason()),
        (1, GaveUp::CircuitOpen)
    );
    assert!(
        error::find::<CircuitOpen>(&*err).is_some(),
        "the CircuitOpen is the source"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Forced open: no probe is scheduled at all.
    let (calls, svc) = open_for(None);
    svc.oneshot(()).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // It probes in 50 ms, before the 100 ms backoff ends: worth retrying.
    let (calls, svc) = open_for(Some(50 * MS));
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<RetriesExhausted>().unwrap().reason(),
        GaveUp::MaxAttempts
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn behind_a_real_breaker_retries_stop_once_it_opens() {
    let breaker = CircuitBreakerLayer::builder("down")
        .consecutive_failures(2)
        .build()
        .unwrap();
    let flaky = Flaky::new(u32::MAX);
    let svc = ServiceBuilder::new()
        .layer(exact().max_attempts(5).build().unwrap())
        .layer(breaker)
        .service(flaky.service());
    let err = svc.oneshot(1).await.unwrap_err();
    let exhausted = err.downcast_ref::<RetriesExhausted>().unwrap();
    // Two real failures open the breaker; the third attempt is rejected and ends the retry.
    assert_eq!(
        (exhausted.attempts(), exhausted.reason()),
        (3, GaveUp::CircuitOpen)
    );
    assert_eq!(flaky.calls(), 2);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_same_seed_gives_the_same_waits() {
    let run = || async {
        let flaky = Flaky::new(3);
        let layer = RetryLayer::builder("seeded")
            .max_attempts(4)
            .backoff(100 * MS, 2.0, Duration::from_secs(10))
            .jitter(Jitter::Full)
            .jitter_seed(99)
            .no_budget()
            .build()
            .unwrap();
        layer.layer(flaky.service()).oneshot(1).await.unwrap();
        flaky.times()
    };
    let (a, b) = (run().await, run().await);
    assert_eq!(a, b);
    assert_eq!(a.len(), 4);
    let unjittered = [Duration::ZERO, 100 * MS, 300 * MS, 700 * MS];
    assert_ne!(a, unjittered, "the waits were jittered");
    // Full jitter: each wait within [0, 100 ms * 2^n].
    for (i, pair) in a.windows(2).enumerate() {
        assert!(pair[1] - pair[0] <= 100 * MS * 2u32.pow(i as u32));
    }
}

/// A service whose clones start unready and that panics when called unready: the retry must
/// poll readiness on the instance that makes each attempt.
struct Strict {
    ready: bool,
    calls: Arc<AtomicU32>,
}

impl Clone for Strict {
    fn clone(&self) -> Self {
        Strict {
            ready: false,
            calls: self.calls.clone(),
        }
    }
}

impl Service<()> for Strict {
    type Response = ();
    type Error = DownstreamError;
    type Future = std::future::Ready<Result<(), DownstreamError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DownstreamError>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        assert!(self.ready, "called without poll_ready on this instance");
        self.ready = false;
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err(DownstreamError("strict")))
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn readiness_is_polled_before_every_attempt_on_the_instance_that_makes_it() {
    let calls = Arc::new(AtomicU32::new(0));
    let strict = Strict {
        ready: false,
        calls: calls.clone(),
    };
    let svc = exact().max_attempts(3).build().unwrap().layer(strict);
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<RetriesExhausted>().unwrap().attempts(),
        3
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn dropping_the_future_during_the_backoff_makes_no_further_attempt() {
    let flaky = Flaky::new(u32::MAX);
    let layer = exact().max_attempts(3).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(flaky.service());
    let mut fut = Box::pin(svc.oneshot(1));
    let waker = futures_noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
    drop(fut);
    time::advance(Duration::from_secs(5)).await;
    assert_eq!(flaky.calls(), 1);
    assert_eq!(
        handle.retries(),
        0,
        "a retry is counted when it is made, not when planned"
    );
}

fn futures_noop_waker() -> std::task::Waker {
    std::task::Waker::noop().clone()
}

#[test]
fn invalid_configuration_is_a_typed_error_naming_the_field() {
    let field = |b: RetryLayerBuilder| b.build().unwrap_err().field();
    assert_eq!(
        field(RetryLayer::builder("r").max_attempts(0)),
        "max_attempts"
    );
    assert_eq!(
        field(RetryLayer::builder("r").backoff(Duration::ZERO, 2.0, Duration::from_secs(1))),
        "backoff.base"
    );
    assert_eq!(
        field(RetryLayer::builder("r").backoff(MS, f64::NAN, Duration::from_secs(1))),
        "backoff.factor"
    );
    assert_eq!(
        field(RetryLayer::builder("r").backoff(Duration::from_secs(2), 2.0, MS)),
        "backoff.max"
    );
    assert_eq!(
        field(RetryLayer::builder("r").deadline(Duration::ZERO)),
        "deadline"
    );
    assert_eq!(
        field(RetryLayer::builder("r").budget(RetryBudget::new(-1.0, 1, Duration::from_secs(1)))),
        "budget.ratio"
    );
    assert_eq!(
        field(RetryLayer::builder("r").budget(RetryBudget::new(0.2, 1, MS))),
        "budget.window"
    );
    let e = RetryLayer::builder("r")
        .max_attempts(0)
        .build()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid retry config: `max_attempts` must be at least 1 (the first attempt)"
    );
}

/// A service that answers its first call with an error, and whose clones are never ready.
#[derive(Default)]
struct StuckAfterFirst {
    clone: bool,
}

impl Clone for StuckAfterFirst {
    fn clone(&self) -> Self {
        StuckAfterFirst { clone: true }
    }
}

impl Service<()> for StuckAfterFirst {
    type Response = ();
    type Error = DownstreamError;
    type Future = std::future::Ready<Result<(), DownstreamError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DownstreamError>> {
        if self.clone {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Err(DownstreamError("first")))
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_deadline_also_bounds_the_wait_for_readiness() {
    let layer = exact()
        .max_attempts(3)
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let started = Instant::now();
    let err = layer
        .layer(StuckAfterFirst::default())
        .oneshot(())
        .await
        .unwrap_err();
    let exhausted = err.downcast_ref::<RetriesExhausted>().expect("gave up");
    assert_eq!(
        (exhausted.attempts(), exhausted.reason()),
        (1, GaveUp::Deadline)
    );
    assert_eq!(
        error::find::<DownstreamError>(&*err),
        Some(&DownstreamError("first"))
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "at the deadline, not later"
    );
    assert_eq!(handle.retries(), 0);
}
