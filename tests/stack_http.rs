//! The HTTP standard stack around hyper-util's legacy `Client`, against a loopback server that
//! fails, slows down and refuses connections on demand. Paused clock throughout.
#![cfg(feature = "http")]

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, Request, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use bulwark::circuit_breaker::CircuitState;
use bulwark::response::error_response;
use bulwark::retry::{Attempts, Jitter, ReplayBody};
use bulwark::stack::{HttpStackLayer, StackLayer};
use bulwark::BoxError;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::{self, Instant};
use tower::{Layer, Service, ServiceExt};

const OK: u8 = 0;
const FAIL: u8 = 1;
const SLOW: u8 = 2;
/// Fail the next request with a 503, then answer normally.
const FAIL_ONCE: u8 = 3;

#[derive(Clone, Default)]
struct Fault {
    mode: Arc<AtomicU8>,
    calls: Arc<AtomicU32>,
}

impl Fault {
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn serve(fault: Fault) -> String {
    async fn handle(State(fault): State<Fault>, body: Bytes) -> axum::response::Response {
        fault.calls.fetch_add(1, Ordering::SeqCst);
        match fault.mode.load(Ordering::SeqCst) {
            FAIL => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
            FAIL_ONCE => {
                fault.mode.store(OK, Ordering::SeqCst);
                (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
            }
            SLOW => {
                time::sleep(Duration::from_secs(60)).await;
                "late".into_response()
            }
            _ => format!("ok {}", body.len()).into_response(),
        }
    }
    let app = Router::new().fallback(handle).with_state(fault);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/")
}

fn stack() -> HttpStackLayer {
    StackLayer::http("inventory")
        .max_concurrent(8)
        .total_timeout(Duration::from_secs(5))
        .retry(|r| {
            r.max_attempts(3)
                .backoff(Duration::from_millis(100), 2.0, Duration::from_secs(1))
                .jitter(Jitter::None)
        })
        .circuit_breaker(|b| {
            b.consecutive_failures(3)
                .break_duration(Duration::from_secs(10))
        })
        .attempt_timeout(Duration::from_secs(1))
        .build_http()
        .unwrap()
}

type Body = Full<Bytes>;

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, ReplayBody<Body>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send<S>(
    svc: &S,
    method: Method,
    uri: &str,
) -> Result<axum::http::Response<hyper::body::Incoming>, BoxError>
where
    S: Service<
            Request<Body>,
            Response = axum::http::Response<hyper::body::Incoming>,
            Error = BoxError,
        > + Clone,
{
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from_static(b"{\"sku\":\"a\"}")))
        .unwrap();
    svc.clone().oneshot(req).await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn failures_open_the_breaker_and_a_recovered_downstream_closes_it() {
    let fault = Fault::default();
    let uri = serve(fault.clone()).await;
    let layer = stack();
    let handle = layer.handle();
    let svc = layer.layer(client());

    let response = send(&svc, Method::GET, &uri).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));

    // 503s: retried, counted by the breaker; three of them open it.
    fault.set(FAIL);
    let response = send(&svc, Method::GET, &uri).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let breaker = handle.circuit_breaker().unwrap();
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(fault.calls(), 1 + 3);

    // Open: rejected without a request, as a 503 with Retry-After for the caller.
    let err = send(&svc, Method::GET, &uri).await.unwrap_err();
    let mapped = error_response("inventory", &*err);
    assert_eq!(mapped.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(mapped.headers()["retry-after"], "10");
    assert_eq!(fault.calls(), 4);

    // Recovered: after the break, two probes close it.
    fault.set(OK);
    time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        send(&svc, Method::GET, &uri).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&svc, Method::GET, &uri).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slow_downstream_is_cut_per_attempt_and_answers_504() {
    let fault = Fault::default();
    let uri = serve(fault.clone()).await;
    let svc = stack().layer(client());
    fault.set(SLOW);
    let started = Instant::now();
    let err = send(&svc, Method::GET, &uri).await.unwrap_err();
    assert_eq!(
        error_response("inventory", &*err).status(),
        StatusCode::GATEWAY_TIMEOUT
    );
    // 1 s per attempt, 100 ms and 200 ms between: 3.3 s, inside the 5 s total.
    assert_eq!(started.elapsed(), Duration::from_millis(3_300));
    assert_eq!(fault.calls(), 3);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_post_to_a_refused_port_is_retried_and_maps_to_502() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let layer = stack();
    let handle = layer.handle();
    let svc = layer.layer(client());
    let err = send(&svc, Method::POST, &uri).await.unwrap_err();
    // The request never left, so even a POST was retried.
    assert_eq!(handle.retry().unwrap().retries(), 2);
    let mapped = error_response("inventory", &*err);
    assert_eq!(mapped.status(), StatusCode::BAD_GATEWAY);
    assert!(mapped.body().contains("downstream_error"));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_post_that_got_a_503_is_not_retried() {
    let fault = Fault::default();
    let uri = serve(fault.clone()).await;
    let svc = stack().layer(client());
    fault.set(FAIL);
    let response = send(&svc, Method::POST, &uri).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(fault.calls(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_post_with_an_idempotency_key_is_retried_with_its_body() {
    use http_body_util::BodyExt;
    let fault = Fault::default();
    let uri = serve(fault.clone()).await;
    let svc = stack().layer(client());
    fault.set(FAIL_ONCE);
    let req = Request::post(&uri)
        .header("idempotency-key", "order-7")
        .body(Full::new(Bytes::from_static(b"{\"sku\":\"a\"}")))
        .unwrap();
    let response = svc.oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        &body[..],
        b"ok 11",
        "the whole 11-byte body reached the server again"
    );
    assert_eq!(fault.calls(), 2);
}
