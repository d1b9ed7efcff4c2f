//! Integration tests for the timeout layer, all on tokio's paused clock.

#[path = "../support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::time::Duration;

use bulwark::error::{self, Rejection};
use bulwark::timeout::error::Elapsed;
use bulwark::{BoxError, Timeout, TimeoutLayer};
use support::{DownstreamError, Live};
use tokio::time;
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok, task};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_test::{assert_request_eq, mock};

const LIMIT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_response_within_the_limit_passes_through() {
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(TimeoutLayer::new(LIMIT));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call("ping"));

    time::advance(LIMIT - Duration::from_millis(1)).await;
    assert_pending!(fut.poll());
    assert_request_eq!(handle, "ping").send_response("pong");

    assert!(fut.is_woken());
    assert_eq!(assert_ready_ok!(fut.poll()), "pong");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn elapses_exactly_at_the_deadline_and_not_before() {
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(TimeoutLayer::new(LIMIT));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call("ping"));
    let _request = handle
        .next_request()
        .await
        .expect("the inner service got the request");

    time::advance(LIMIT - Duration::from_millis(1)).await;
    assert_pending!(fut.poll());
    assert!(!fut.is_woken());

    time::advance(Duration::from_millis(1)).await;
    assert!(fut.is_woken());
    let err = assert_ready_err!(fut.poll());
    let elapsed = err.downcast_ref::<Elapsed>().expect("an Elapsed error");
    assert_eq!(elapsed.after(), LIMIT);
    assert_eq!(err.to_string(), "request timed out after 2s");
    assert!(matches!(
        error::rejection(&*err),
        Some(Rejection::Elapsed(_))
    ));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_clock_starts_at_call_not_at_construction() {
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(TimeoutLayer::new(LIMIT));
    // Time spent before `call` (waiting for readiness, say) does not count.
    time::advance(LIMIT * 10).await;
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call("ping"));
    time::advance(LIMIT - Duration::from_millis(1)).await;
    assert_pending!(fut.poll());
    assert_request_eq!(handle, "ping").send_response("pong");
    assert_eq!(assert_ready_ok!(fut.poll()), "pong");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_inner_error_passes_through_unchanged_and_downcastable() {
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(TimeoutLayer::new(LIMIT));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call("ping"));
    assert_request_eq!(handle, "ping").send_error(DownstreamError("disk full"));

    let err = assert_ready_err!(fut.poll());
    assert_eq!(
        err.downcast_ref::<DownstreamError>(),
        Some(&DownstreamError("disk full"))
    );
    assert_eq!(err.to_string(), "downstream failed: disk full");
    assert!(error::rejection(&*err).is_none());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_inner_error_just_before_the_deadline_stays_the_inner_error() {
    // An error that arrives in time is the inner error, even a moment before the deadline.
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(TimeoutLayer::new(LIMIT));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call("ping"));
    let request = handle.next_request().await.unwrap();
    time::advance(LIMIT - Duration::from_millis(1)).await;
    request.1.send_error(DownstreamError("late"));
    let err = assert_ready_err!(fut.poll());
    assert!(err.is::<DownstreamError>());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn readiness_and_its_errors_pass_through_untimed() {
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(TimeoutLayer::new(LIMIT));
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    // Not ready for far longer than the limit: readiness is not bounded.
    time::advance(LIMIT * 5).await;
    assert_pending!(svc.poll_ready());

    handle.send_error(DownstreamError("gone"));
    let err = assert_ready_err!(svc.poll_ready());
    assert!(err.is::<DownstreamError>());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn dropping_the_response_future_cancels_the_inner_call() {
    let live = Live::new();
    let tracker = live.clone();
    let inner = service_fn(move |_: ()| {
        tracker.track(async {
            time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>("late")
        })
    });
    let mut svc = Timeout::new(inner, LIMIT);

    let mut fut = task::spawn(svc.ready().await.unwrap().call(()));
    assert_pending!(fut.poll());
    assert_eq!(live.count(), 1);
    drop(fut);
    assert_eq!(live.count(), 0, "the inner future was dropped with ours");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn elapsing_cancels_the_inner_call_at_once() {
    let live = Live::new();
    let tracker = live.clone();
    let inner = service_fn(move |_: ()| {
        tracker.track(async {
            time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>("late")
        })
    });
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(LIMIT))
        .service(inner);

    let mut fut = task::spawn(svc.ready().await.unwrap().call(()));
    assert_pending!(fut.poll());
    time::advance(LIMIT).await;
    let err = assert_ready_err!(fut.poll());
    assert!(err.is::<Elapsed>());
    // Cancelled when it elapsed, while our future is still alive.
    assert_eq!(live.count(), 0);
    drop(fut);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_response_ready_on_the_same_poll_as_the_deadline_wins() {
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(TimeoutLayer::new(LIMIT));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call("ping"));
    assert_pending!(fut.poll());
    assert_request_eq!(handle, "ping").send_response("pong");
    time::advance(LIMIT).await;
    // Both the response and the timer are ready now: the response is returned.
    assert_eq!(assert_ready_ok!(fut.poll()), "pong");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_zero_timeout_still_admits_an_immediately_ready_response() {
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::ZERO))
        .service(service_fn(
            |x: u32| async move { Ok::<_, Infallible>(x + 1) },
        ));
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 2);

    let slow = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::ZERO))
        .service(service_fn(|x: u32| async move {
            tokio::task::yield_now().await;
            Ok::<_, Infallible>(x)
        }));
    let mut fut = task::spawn(slow.oneshot(1));
    // Not ready on its first poll: the zero deadline has passed.
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert!(err.is::<Elapsed>());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn composes_behind_service_builder_with_tower_layers() {
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(LIMIT))
        .map_err(|e: BoxError| e)
        .concurrency_limit(4)
        .layer(TimeoutLayer::new(LIMIT / 2))
        .service(service_fn(|ms: u64| async move {
            time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Infallible>(ms)
        }));

    assert_eq!(svc.clone().oneshot(999).await.unwrap(), 999);
    // The inner (shorter) timeout fires first, and the outer one passes its error through.
    let err = svc.oneshot(1_500).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Elapsed>().unwrap().after(), LIMIT / 2);
}

mod axum_router {
    use super::*;
    use axum::error_handling::HandleErrorLayer;
    use axum::http::{Request, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Router;
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    async fn on_error(err: BoxError) -> impl IntoResponse {
        match error::find::<Elapsed>(&*err) {
            Some(e) => (StatusCode::GATEWAY_TIMEOUT, e.to_string()),
            None => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".to_owned(),
            ),
        }
    }

    fn app() -> Router {
        Router::new()
            .route("/fast", get(|| async { "fast" }))
            .route(
                "/slow",
                get(|| async {
                    time::sleep(Duration::from_secs(10)).await;
                    "slow"
                }),
            )
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(on_error))
                    .layer(TimeoutLayer::new(LIMIT)),
            )
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_router_answers_504_for_a_slow_route_through_a_real_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app()).await.unwrap() });

        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let get = |path: &str| {
            let uri = format!("http://{addr}{path}");
            let client = client.clone();
            async move {
                let req = Request::get(uri).body(Empty::new()).unwrap();
                let res = client.request(req).await.unwrap();
                let status = res.status();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8(body.to_vec()).unwrap())
            }
        };

        assert_eq!(get("/fast").await, (StatusCode::OK, "fast".to_owned()));
        let started = time::Instant::now();
        assert_eq!(
            get("/slow").await,
            (
                StatusCode::GATEWAY_TIMEOUT,
                "request timed out after 2s".to_owned()
            )
        );
        // The answer came at the limit, not when the handler would have finished.
        assert!(started.elapsed() >= LIMIT && started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_router_answers_504_through_oneshot() {
        let res = app()
            .oneshot(
                Request::get("/slow")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_absurdly_long_timeout_does_not_panic_and_never_elapses() {
    let (mut svc, mut handle) =
        mock::spawn_layer::<&str, &str, _>(TimeoutLayer::new(Duration::MAX));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call("ping"));
    assert_pending!(fut.poll());
    time::advance(Duration::from_secs(86_400 * 365)).await;
    assert_pending!(fut.poll());
    assert_request_eq!(handle, "ping").send_response("pong");
    assert_eq!(assert_ready_ok!(fut.poll()), "pong");
}
