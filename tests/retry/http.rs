//! The HTTP retry policy through a real hyper-util client and axum server on loopback.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use bulwark::retry::error::{GaveUp, RetriesExhausted};
use bulwark::retry::{Attempts, HttpRetryLayer, Jitter, ReplayBody, IDEMPOTENCY_KEY};
use bulwark::{BoxError, RetryLayer};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    attempt_header: Option<String>,
    body: Bytes,
    at: Duration,
}

/// A server that answers the first `failures` requests with `status` (and `Retry-After`, if
/// set), then 200, echoing the body's length.
#[derive(Clone)]
struct Script {
    failures: usize,
    status: StatusCode,
    retry_after: Option<&'static str>,
    seen: Arc<Mutex<Vec<Seen>>>,
    start: Instant,
}

impl Script {
    fn new(failures: usize, status: StatusCode, retry_after: Option<&'static str>) -> Self {
        Script {
            failures,
            status,
            retry_after,
            seen: Arc::default(),
            start: Instant::now(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn serve(self) -> String {
        async fn handle(
            State(script): State<Script>,
            method: Method,
            headers: HeaderMap,
            body: Bytes,
        ) -> axum::response::Response {
            let n = {
                let mut seen = script.seen.lock().unwrap();
                seen.push(Seen {
                    method,
                    attempt_header: headers
                        .get("x-attempt")
                        .map(|v| v.to_str().unwrap().to_owned()),
                    body: body.clone(),
                    at: script.start.elapsed(),
                });
                seen.len()
            };
            if n <= script.failures {
                let mut response = (script.status, "not now").into_response();
                if let Some(after) = script.retry_after {
                    response
                        .headers_mut()
                        .insert("retry-after", after.parse().unwrap());
                }
                response
            } else {
                (StatusCode::OK, body.len().to_string()).into_response()
            }
        }
        let app = Router::new().fallback(handle).with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/")
    }
}

fn client<B>() -> Client<HttpConnector, ReplayBody<B>>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

fn layer() -> HttpRetryLayer {
    RetryLayer::http("downstream")
        .max_attempts(3)
        .backoff(Duration::from_millis(100), 2.0, Duration::from_secs(1))
        .jitter(Jitter::None)
        .no_budget()
        .build_http()
        .unwrap()
}

fn request(method: Method, uri: &str, body: &'static [u8], key: bool) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(uri);
    if key {
        b = b.header(IDEMPOTENCY_KEY, "order-42");
    }
    b.body(Full::new(Bytes::from_static(body))).unwrap()
}

async fn text(response: Response<hyper::body::Incoming>) -> String {
    String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_get_is_retried_after_the_servers_retry_after_and_the_attempts_are_reported() {
    let script = Script::new(1, StatusCode::SERVICE_UNAVAILABLE, Some("2"));
    let uri = script.clone().serve().await;
    let svc = layer().layer(client::<Full<Bytes>>());

    let response = svc
        .oneshot(request(Method::GET, &uri, b"", false))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
    let seen = script.seen();
    assert_eq!(seen.len(), 2);
    // The backoff says 100 ms; the server said 2 s: the server wins.
    assert!(
        seen[1].at - seen[0].at >= Duration::from_secs(2),
        "{seen:?}"
    );
    assert_eq!(
        seen[0].attempt_header, None,
        "nothing added to requests by default"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_post_is_not_retried_without_an_idempotency_key() {
    let script = Script::new(1, StatusCode::SERVICE_UNAVAILABLE, None);
    let uri = script.clone().serve().await;
    let svc = layer().layer(client::<Full<Bytes>>());
    let response = svc
        .oneshot(request(Method::POST, &uri, b"charge 10", false))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_post_with_an_idempotency_key_is_retried_with_its_body_replayed() {
    let script = Script::new(2, StatusCode::BAD_GATEWAY, None);
    let uri = script.clone().serve().await;
    let layer = RetryLayer::http("downstream")
        .max_attempts(3)
        .backoff(Duration::from_millis(100), 2.0, Duration::from_secs(1))
        .no_budget()
        .attempt_header(http::HeaderName::from_static("x-attempt"))
        .build_http()
        .unwrap();
    let svc = layer.layer(client::<Full<Bytes>>());
    let response = svc
        .oneshot(request(Method::POST, &uri, b"charge 10", true))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "9");
    let seen = script.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|s| s.method == Method::POST && &s.body[..] == b"charge 10"));
    let headers: Vec<_> = seen.iter().map(|s| s.attempt_header.clone()).collect();
    assert_eq!(headers, [None, Some("2".into()), Some("3".into())]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_body_over_the_limit_goes_once_and_whole() {
    let script = Script::new(5, StatusCode::SERVICE_UNAVAILABLE, None);
    let uri = script.clone().serve().await;
    let svc = layer().layer(client::<Full<Bytes>>());
    let big = Bytes::from(vec![7u8; 100 * 1024]);
    let req = Request::put(&uri).body(Full::new(big.clone())).unwrap();
    let response = svc.oneshot(req).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "not retried"
    );
    let seen = script.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, big, "sent whole, not truncated");
}

/// A body fed by a channel, frame by frame, like a client-streaming gRPC request.
struct Channel(mpsc::UnboundedReceiver<Bytes>);

impl Body for Channel {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stream_whose_frames_are_all_ready_is_replayed_whole() {
    let script = Script::new(1, StatusCode::SERVICE_UNAVAILABLE, None);
    let uri = script.clone().serve().await;
    let (tx, rx) = mpsc::unbounded_channel();
    for part in ["one,", "two,", "three"] {
        tx.send(Bytes::from(part)).unwrap();
    }
    drop(tx);
    let svc = layer().layer(client::<Channel>());
    let response = svc
        .oneshot(Request::put(&uri).body(Channel(rx)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bodies: Vec<_> = script.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(
        bodies,
        [Bytes::from("one,two,three"), Bytes::from("one,two,three")]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_live_stream_goes_once_with_every_frame_in_order() {
    let script = Script::new(1, StatusCode::SERVICE_UNAVAILABLE, None);
    let uri = script.clone().serve().await;
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(Bytes::from("first,")).unwrap();
    let svc = layer().layer(client::<Channel>());
    let call = tokio::spawn(svc.oneshot(Request::put(&uri).body(Channel(rx)).unwrap()));
    // The rest of the stream arrives after the call was made.
    tokio::task::yield_now().await;
    tx.send(Bytes::from("second,")).unwrap();
    tx.send(Bytes::from("third")).unwrap();
    drop(tx);
    let response = call.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "not replayable: not retried"
    );
    let seen = script.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, Bytes::from("first,second,third"));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retry_after_beyond_the_cap_ends_the_retries() {
    let script = Script::new(5, StatusCode::TOO_MANY_REQUESTS, Some("3600"));
    let uri = script.clone().serve().await;
    let svc = layer().layer(client::<Full<Bytes>>());
    let response = svc
        .oneshot(request(Method::GET, &uri, b"", false))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_500_is_not_retried() {
    let script = Script::new(5, StatusCode::INTERNAL_SERVER_ERROR, None);
    let uri = script.clone().serve().await;
    let svc = layer().layer(client::<Full<Bytes>>());
    let response = svc
        .oneshot(request(Method::GET, &uri, b"", false))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_post_to_a_refused_connection_is_retried_since_it_never_left() {
    // A port nothing listens on: bind, note it, close.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let layer = RetryLayer::http("downstream")
        .max_attempts(2)
        .backoff(Duration::from_millis(1), 1.0, Duration::from_millis(1))
        .no_budget()
        .build_http()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(client::<Full<Bytes>>());
    let err = svc
        .oneshot(request(Method::POST, &uri, b"charge 10", false))
        .await
        .unwrap_err();
    let exhausted = err
        .downcast_ref::<RetriesExhausted>()
        .expect("retried, then gave up");
    assert_eq!(
        (exhausted.attempts(), exhausted.reason()),
        (2, GaveUp::MaxAttempts)
    );
    assert_eq!(handle.retries(), 1);
}

#[test]
fn replay_body_keeps_data_and_trailers_for_every_copy() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let frames: VecDeque<Frame<Bytes>> = VecDeque::from([
        Frame::data(Bytes::from("ab")),
        Frame::data(Bytes::from("cd")),
        Frame::trailers(trailers.clone()),
    ]);
    let body = ReplayBody::new(Frames(frames), 1024);
    assert!(body.is_replayable());
    for copy in [body.try_clone().unwrap(), body] {
        let collected = futures_block_on(copy.collect()).unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), Bytes::from("abcd"));
    }
}

/// A body of frames that are all ready.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retry_after_past_the_deadline_ends_the_retries_at_once() {
    let calls = Arc::new(Mutex::new(0u32));
    let counter = calls.clone();
    let inner = tower::service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
        *counter.lock().unwrap() += 1;
        async {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .header("retry-after", "10")
                    .body(())
                    .unwrap(),
            )
        }
    });
    let layer = RetryLayer::http("downstream")
        .deadline(Duration::from_secs(5))
        .no_budget()
        .build_http()
        .unwrap();
    let handle = layer.handle();
    let started = Instant::now();
    let response = layer
        .layer(inner)
        .oneshot(request(Method::GET, "http://x/", b"", false))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no waiting for a retry that cannot happen"
    );
    assert_eq!(*calls.lock().unwrap(), 1);
    assert_eq!(handle.gave_up(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retry_after_http_date_is_honoured() {
    // A date 5 s from now (wall clock, as HTTP-dates are); whole seconds, so 4 to 5 s away.
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(5));
    let script = Script::new(
        1,
        StatusCode::SERVICE_UNAVAILABLE,
        Some(Box::leak(date.into_boxed_str())),
    );
    let uri = script.clone().serve().await;
    let svc = layer().layer(client::<Full<Bytes>>());
    let response = svc
        .oneshot(request(Method::GET, &uri, b"", false))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = script.seen();
    let waited = seen[1].at - seen[0].at;
    assert!(
        waited >= Duration::from_secs(3) && waited <= Duration::from_secs(6),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_ready_stream_over_the_limit_goes_once_and_whole() {
    let script = Script::new(1, StatusCode::SERVICE_UNAVAILABLE, None);
    let uri = script.clone().serve().await;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut sent = Vec::new();
    for i in 0..40u8 {
        let chunk = vec![i; 4 * 1024]; // 160 KiB in all, every frame ready at once
        sent.extend_from_slice(&chunk);
        tx.send(Bytes::from(chunk)).unwrap();
    }
    drop(tx);
    let svc = layer().layer(client::<Channel>());
    let response = svc
        .oneshot(Request::put(&uri).body(Channel(rx)).unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "not retried"
    );
    let seen = script.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, Bytes::from(sent), "every byte, in order");
}

#[test]
fn a_retry_after_cap_above_a_day_is_a_config_error() {
    let err = RetryLayer::http("x")
        .retry_after_cap(Duration::from_secs(2 * 24 * 3600))
        .build_http()
        .unwrap_err();
    assert_eq!(err.field(), "retry_after_cap");
}
