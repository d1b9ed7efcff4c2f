//! Retry for HTTP (feature `http`): replayable bodies, `Retry-After`, idempotency.

use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::error::GaveUp;
use super::policy::{RetryPolicy, Verdict};
use crate::bulkhead::error::BulkheadFull;
use crate::circuit_breaker::error::CircuitOpen;
use crate::BoxError;

/// The header that makes a non-idempotent request (POST, PATCH) safe to retry: the server
/// promises to apply a request with the same key once.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// How many attempts a response took, in the response's extensions (added by [`HttpPolicy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts(pub u32);

// === HttpPolicy ===

/// The retry policy for HTTP requests.
///
/// - **What is retried**: errors (the request got no response: connection refused or reset,
///   a per-attempt timeout), and responses 408, 429, 502, 503 and 504. Other responses, 500
///   included, come back as they are.
/// - **Which requests**: idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) are
///   retried. POST, PATCH, CONNECT and unknown methods are retried only with an
///   `Idempotency-Key` header, or after an error that proves the request never left: a
///   refused connection, or a rejection by bulwark's own bulkhead or breaker.
/// - **`Retry-After`** (delta-seconds or an HTTP-date) on a retried response sets the least
///   wait before the next attempt. A wait above `retry_after_cap` (default 30 s) ends the
///   retries (`GaveUp::RetryAfter`); one past the deadline ends them too. A malformed value is
///   ignored.
/// - **Bodies**: see [`ReplayBody`]. A request whose body could not be kept is sent once.
/// - Adds nothing to requests, unless [`attempt_header`](Self::attempt_header) is set; adds
///   [`Attempts`] to each response's extensions.
///
/// In gRPC mode ([`HttpPolicy::grpc`]), responses are retried by their gRPC status instead;
/// see there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPolicy {
    body_limit: usize,
    retry_after_cap: Duration,
    attempt_header: Option<HeaderName>,
    /// In gRPC mode, the codes to retry, one bit per code.
    grpc_codes: Option<u32>,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            body_limit: 64 * 1024,
            retry_after_cap: Duration::from_secs(30),
            attempt_header: None,
            grpc_codes: None,
        }
    }
}

/// The gRPC header by which a server asks for a pause before the next attempt (gRFC A6).
const GRPC_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// gRPC's `UNAVAILABLE` code.
const UNAVAILABLE: u32 = 14;

impl HttpPolicy {
    /// The default policy: bodies kept up to 64 KiB, `Retry-After` honoured up to 30 s, no
    /// attempt header.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps request bodies of up to `limit` bytes for replay (default 64 KiB).
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// The longest `Retry-After` wait honoured (default 30 s); a longer one ends the retries.
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// Sets `name` on retried requests to the attempt number (`2` on the first retry). Off by
    /// default: nothing is added to requests.
    pub fn attempt_header(mut self, name: HeaderName) -> Self {
        self.attempt_header = Some(name);
        self
    }

    /// The policy for gRPC clients (what [`StackLayer::grpc`](crate::stack::StackLayer::grpc)
    /// uses), after gRPC's own retry design (gRFC A6):
    ///
    /// - A response is retried when its gRPC status (its `grpc-status` header, or, without a
    ///   usable one, the code its HTTP status maps to) is `UNAVAILABLE`, whatever the method:
    ///   every gRPC call is a POST, and choosing this policy says the service's methods may be
    ///   sent again. [`grpc_retry_codes`](Self::grpc_retry_codes) changes the codes.
    /// - A `grpc-retry-pushback-ms` header sets the least wait before the next attempt (the
    ///   backoff still applies when longer: a floor, where gRFC A6 waits exactly the
    ///   pushback); one above `retry_after_cap` ends the retries (`GaveUp::RetryAfter`), and one
    ///   that is not a non-negative integer too (`GaveUp::Refused`: the server said not to
    ///   retry).
    /// - Errors are retried as for HTTP: with an `idempotency-key` (metadata are headers), or
    ///   when the request provably never left.
    /// - Bodies, the attempt header and [`Attempts`] as for HTTP.
    pub fn grpc() -> Self {
        HttpPolicy {
            grpc_codes: Some(1 << UNAVAILABLE),
            ..HttpPolicy::default()
        }
    }

    /// In gRPC mode, the status codes to retry (default: 14, `UNAVAILABLE`). Codes above 16
    /// are not codes gRPC defines and are ignored; a response carrying one is read as
    /// `UNKNOWN` (2), as gRPC clients do. Calling this on a plain HTTP policy switches it to
    /// gRPC mode, with what that means for POSTs (see [`grpc`](Self::grpc)).
    pub fn grpc_retry_codes(mut self, codes: &[u32]) -> Self {
        let mask = codes
            .iter()
            .filter(|&&c| c <= 16)
            .fold(0u32, |mask, &c| mask | 1 << c);
        self.grpc_codes = Some(mask);
        self
    }

    /// The verdict on a gRPC response in gRPC mode.
    fn grpc_verdict<R>(&self, codes: u32, response: &Response<R>) -> Verdict {
        let code = crate::classify::GrpcClassifier::code(response.status(), response.headers());
        // A code gRPC does not define is UNKNOWN, as the breaker's classifier reads it.
        let code = if code > 16 { 2 } else { code };
        if codes & (1 << code) == 0 {
            return Verdict::Return;
        }
        let Some(value) = response.headers().get(GRPC_PUSHBACK) else {
            return Verdict::Retry;
        };
        let pushback = value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .map(|t| Duration::from_millis(t.parse::<u64>().unwrap_or(u64::MAX)));
        match pushback {
            Some(wait) if wait <= self.retry_after_cap => Verdict::RetryAfter(wait),
            Some(_) => Verdict::GiveUp(GaveUp::RetryAfter),
            None => Verdict::GiveUp(GaveUp::Refused),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.body_limit
    }

    pub(crate) fn cap(&self) -> Duration {
        self.retry_after_cap
    }
}

/// Whether `request` may be sent twice without harm.
fn idempotent<B>(request: &Request<B>) -> bool {
    match *request.method() {
        Method::GET
        | Method::HEAD
        | Method::OPTIONS
        | Method::TRACE
        | Method::PUT
        | Method::DELETE => true,
        _ => request.headers().contains_key(IDEMPOTENCY_KEY),
    }
}

/// Whether `err` proves the request was never sent: a refused connection, or a rejection by
/// bulwark's own bulkhead or breaker.
fn never_sent(err: &(dyn Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<BulkheadFull>() || err.is::<CircuitOpen>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// Whether a response with this status is worth sending again.
const fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 502 | 503 | 504)
}

/// Parses a `Retry-After` value: delta-seconds, or an HTTP-date (relative to `now`; a date
/// in the past means no wait). `None` for anything else.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Saturate absurd values rather than fail: they are above any cap anyway.
        return Some(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

impl<B, R> RetryPolicy<Request<ReplayBody<B>>, Response<R>> for HttpPolicy
where
    B: Body,
{
    fn replay(&self, request: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        let body = request.body().try_clone()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }

    fn verdict(
        &self,
        request: &Request<ReplayBody<B>>,
        result: &Result<Response<R>, BoxError>,
    ) -> Verdict {
        match result {
            Ok(response) => {
                if let Some(codes) = self.grpc_codes {
                    return self.grpc_verdict(codes, response);
                }
                if !retryable_status(response.status()) || !idempotent(request) {
                    return Verdict::Return;
                }
                let hint = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                match hint {
                    Some(wait) if wait > self.retry_after_cap => {
                        Verdict::GiveUp(GaveUp::RetryAfter)
                    }
                    Some(wait) => Verdict::RetryAfter(wait),
                    None => Verdict::Retry,
                }
            }
            Err(err) if idempotent(request) || never_sent(&**err) => Verdict::Retry,
            Err(_) => Verdict::Return,
        }
    }

    fn prepare(&self, request: &mut Request<ReplayBody<B>>, attempt: u32) {
        if let Some(name) = &self.attempt_header {
            request
                .headers_mut()
                .insert(name.clone(), HeaderValue::from(attempt));
        }
    }

    fn finish(&self, result: &mut Result<Response<R>, BoxError>, attempts: u32) {
        if let Ok(response) = result {
            response.extensions_mut().insert(Attempts(attempts));
        }
    }
}

/// Makes `request`'s body replayable ([`ReplayBody`]), reporting a body that cannot be.
fn replayable<B>(request: Request<B>, limit: usize, name: &str) -> Request<ReplayBody<B>>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    let request = request.map(|body| ReplayBody::new(body, limit));
    if !request.body().is_replayable() {
        tracing::debug!(
            target: "bulwark::retry",
            name,
            limit,
            "request body not replayable (over the limit, or streaming); sent once"
        );
    }
    request
}

// === Replay ===

/// Makes request bodies replayable for the retry stage of an HTTP stack: takes `Request<B>`,
/// sends `Request<ReplayBody<B>>`. [`HttpStackLayer`](crate::stack::HttpStackLayer) puts it
/// outermost.
#[derive(Debug, Clone)]
pub struct Replay<S> {
    inner: S,
    limit: usize,
    name: std::sync::Arc<str>,
}

impl<S> Replay<S> {
    pub(crate) fn new(inner: S, limit: usize, name: std::sync::Arc<str>) -> Self {
        Replay { inner, limit, name }
    }

    /// Gets a reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes this service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> tower_service::Service<Request<B>> for Replay<S>
where
    S: tower_service::Service<Request<ReplayBody<B>>>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        self.inner.call(replayable(request, self.limit, &self.name))
    }
}

// === HttpRetry ===

/// Retries HTTP calls with [`HttpPolicy`]: takes `Request<B>` with any body, makes the body
/// replayable ([`ReplayBody`]) and sends `Request<ReplayBody<B>>` to the inner service.
///
/// Built by [`HttpRetryLayer`]; everything else is as for [`Retry`](super::Retry).
pub struct HttpRetry<S> {
    retry: super::Retry<S, HttpPolicy>,
}

impl<S> HttpRetry<S> {
    /// A handle to the layer's counters and budget.
    pub fn handle(&self) -> super::RetryHandle {
        self.retry.handle()
    }

    /// Gets a reference to the inner service.
    pub fn get_ref(&self) -> &S {
        self.retry.get_ref()
    }

    /// Gets a mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        self.retry.get_mut()
    }

    /// Consumes this service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.retry.into_inner()
    }
}

impl<S: Clone> Clone for HttpRetry<S> {
    fn clone(&self) -> Self {
        HttpRetry {
            retry: self.retry.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for HttpRetry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRetry")
            .field("retry", &self.retry)
            .finish()
    }
}

impl<S, B, R> tower_service::Service<Request<B>> for HttpRetry<S>
where
    S: tower_service::Service<Request<ReplayBody<B>>, Response = Response<R>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = super::future::ResponseFuture<S, Request<ReplayBody<B>>, HttpPolicy>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.retry.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let limit = self.retry.policy().limit();
        let request = replayable(request, limit, self.retry.name());
        self.retry.call(request)
    }
}

/// Applies [`HttpRetry`] to the services it wraps; built with
/// [`RetryLayer::http`](super::RetryLayer::http) and
/// [`build_http`](super::RetryLayerBuilder::build_http).
#[derive(Clone)]
#[must_use]
pub struct HttpRetryLayer {
    layer: super::RetryLayer<HttpPolicy>,
}

impl HttpRetryLayer {
    pub(crate) fn new(layer: super::RetryLayer<HttpPolicy>) -> Self {
        HttpRetryLayer { layer }
    }

    /// A handle to this layer's counters and budget.
    pub fn handle(&self) -> super::RetryHandle {
        self.layer.handle()
    }
}

impl<S> tower_layer::Layer<S> for HttpRetryLayer {
    type Service = HttpRetry<S>;

    fn layer(&self, inner: S) -> HttpRetry<S> {
        HttpRetry {
            retry: self.layer.layer(inner),
        }
    }
}

impl fmt::Debug for HttpRetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRetryLayer")
            .field("layer", &self.layer)
            .finish()
    }
}

// === ReplayBody ===

/// A request body that can be sent again: the body of every request an
/// [`HttpRetry`](super::HttpRetry) sends.
///
/// When the call is made, the body's frames that are ready at once are read, up to the
/// policy's limit (64 KiB by default). If the body ends within the limit it is kept (data and
/// trailers) and every attempt sends it whole. Otherwise (a larger body, or one that streams:
/// a frame not ready yet) the request is sent once, unretried, with the frames read so far
/// followed by the rest of the body: never truncated, never reordered. So a request built
/// from bytes (`Full`, a JSON body, a unary gRPC message) is replayable, and a live stream
/// goes through untouched after its first ready frames.
///
/// The body must be `Unpin` (`Full`, `Empty`, hyper's `Incoming`, axum's and tonic's bodies
/// are); wrap another in `Box::pin(body)`. Frames are read with a no-op waker, so a body fed
/// by a channel that is full at call time may still come out as streaming if tokio's
/// cooperative budget of the calling task is spent: then it is sent once.
pub struct ReplayBody<B> {
    state: State<B>,
}

enum State<B> {
    /// The whole body, kept: replayable.
    Kept {
        data: Bytes,
        trailers: Option<HeaderMap>,
        data_sent: bool,
        trailers_sent: bool,
    },
    /// The frames read so far, then the rest of the body: sent once.
    Passing {
        read: VecDeque<Frame<Bytes>>,
        rest: Option<B>,
        error: Option<BoxError>,
    },
}

impl<B> ReplayBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    /// Reads what `body` has ready now, up to `limit` bytes; see the type's docs.
    pub fn new(mut body: B, limit: usize) -> Self {
        let passing = |read, rest, error| ReplayBody {
            state: State::Passing { read, rest, error },
        };
        if body.size_hint().lower() > limit as u64 {
            return passing(VecDeque::new(), Some(body), None);
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut size = 0usize;
        let mut trailers = None;
        loop {
            if size > limit {
                return passing(
                    chunks.into_iter().map(Frame::data).collect(),
                    Some(body),
                    None,
                );
            }
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(None) => break,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        let bytes = data.copy_to_bytes(data.remaining());
                        size = size.saturating_add(bytes.len());
                        if !bytes.is_empty() {
                            chunks.push(bytes);
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers = Some(t);
                        }
                        // Trailers end a body.
                        break;
                    }
                },
                Poll::Ready(Some(Err(err))) => {
                    let read = chunks.into_iter().map(Frame::data).collect();
                    return passing(read, None, Some(err.into()));
                }
                Poll::Pending => {
                    let read = chunks.into_iter().map(Frame::data).collect();
                    return passing(read, Some(body), None);
                }
            }
        }
        if size > limit {
            let mut read: VecDeque<_> = chunks.into_iter().map(Frame::data).collect();
            if let Some(t) = trailers {
                read.push_back(Frame::trailers(t));
            }
            return passing(read, None, None);
        }
        let data = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(size);
                for chunk in &chunks {
                    all.extend_from_slice(chunk);
                }
                all.freeze()
            }
        };
        ReplayBody {
            state: State::Kept {
                data,
                trailers,
                data_sent: false,
                trailers_sent: false,
            },
        }
    }
}

impl<B> ReplayBody<B> {
    /// A copy to send again, if the whole body was kept.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.state {
            State::Kept { data, trailers, .. } => Some(ReplayBody {
                state: State::Kept {
                    data: data.clone(),
                    trailers: trailers.clone(),
                    data_sent: false,
                    trailers_sent: false,
                },
            }),
            State::Passing { .. } => None,
        }
    }

    /// Whether the whole body was kept, so the request can be sent again.
    pub fn is_replayable(&self) -> bool {
        matches!(self.state, State::Kept { .. })
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().state {
            State::Kept {
                data,
                trailers,
                data_sent,
                trailers_sent,
            } => {
                if !*data_sent {
                    *data_sent = true;
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
                    }
                }
                if !*trailers_sent {
                    *trailers_sent = true;
                    if let Some(t) = trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
                    }
                }
                Poll::Ready(None)
            }
            State::Passing { read, rest, error } => {
                if let Some(frame) = read.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(err) = error.take() {
                    return Poll::Ready(Some(Err(err)));
                }
                let Some(body) = rest else {
                    return Poll::Ready(None);
                };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(
                        frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                    ))),
                    Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
                    Poll::Ready(None) => {
                        *rest = None;
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Kept {
                data,
                trailers,
                data_sent,
                trailers_sent,
            } => (*data_sent || data.is_empty()) && (*trailers_sent || trailers.is_none()),
            State::Passing { read, rest, error } => {
                read.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Kept {
                data,
                data_sent,
                trailers,
                trailers_sent,
            } => {
                let len = if *data_sent { 0 } else { data.len() as u64 };
                if trailers.is_some() && !*trailers_sent {
                    // Trailers need a chunked request on HTTP/1: an exact size would make
                    // hyper send a `Content-Length` and drop them.
                    let mut hint = SizeHint::new();
                    hint.set_lower(len);
                    hint
                } else {
                    SizeHint::with_exact(len)
                }
            }
            State::Passing { read, rest, .. } => {
                let buffered: u64 = read
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                let mut hint = rest
                    .as_ref()
                    .map_or(SizeHint::with_exact(0), |b| b.size_hint());
                hint.set_lower(hint.lower().saturating_add(buffered));
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper.saturating_add(buffered));
                }
                hint
            }
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Kept { data, .. } => f
                .debug_struct("ReplayBody")
                .field("kept_bytes", &data.len())
                .finish(),
            State::Passing { read, .. } => f
                .debug_struct("ReplayBody")
                .field("passing", &true)
                .field("frames_read", &read.len())
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn grpc_answer(code: Option<&str>, pushback: Option<&str>) -> Response<()> {
        let mut b = Response::builder().status(200);
        if let Some(code) = code {
            b = b.header("grpc-status", code);
        }
        if let Some(p) = pushback {
            b = b.header(GRPC_PUSHBACK, p);
        }
        b.body(()).unwrap()
    }

    fn grpc_verdict(policy: &HttpPolicy, answer: Response<()>) -> Verdict {
        let post = Request::post("/pkg.Svc/M")
            .body(ReplayBody::new(http_body_util::Empty::<Bytes>::new(), 1024))
            .unwrap();
        policy.verdict(&post, &Ok(answer))
    }

    #[test]
    fn grpc_mode_retries_unavailable_posts_and_honours_pushback() {
        let p = HttpPolicy::grpc();
        assert_eq!(
            grpc_verdict(&p, grpc_answer(Some("14"), None)),
            Verdict::Retry
        );
        for code in ["0", "2", "4", "8", "13", "99"] {
            assert_eq!(
                grpc_verdict(&p, grpc_answer(Some(code), None)),
                Verdict::Return,
                "{code}"
            );
        }
        // No grpc-status: a 200 is OK (the status is in the trailers), a 503 maps to UNAVAILABLE.
        assert_eq!(grpc_verdict(&p, grpc_answer(None, None)), Verdict::Return);
        let unavailable = Response::builder().status(503).body(()).unwrap();
        assert_eq!(grpc_verdict(&p, unavailable), Verdict::Retry);
        // Pushback: a wait, or the end of retries when malformed or over the cap.
        assert_eq!(
            grpc_verdict(&p, grpc_answer(Some("14"), Some("250"))),
            Verdict::RetryAfter(Duration::from_millis(250))
        );
        for bad in ["-1", "soon", "", "1.5"] {
            assert_eq!(
                grpc_verdict(&p, grpc_answer(Some("14"), Some(bad))),
                Verdict::GiveUp(GaveUp::Refused),
                "{bad:?}"
            );
        }
        assert_eq!(
            grpc_verdict(&p, grpc_answer(Some("14"), Some("31000"))),
            Verdict::GiveUp(GaveUp::RetryAfter),
            "over the cap"
        );
        // Other codes on request; a plain HTTP policy does not retry a POST's UNAVAILABLE.
        let p = HttpPolicy::grpc().grpc_retry_codes(&[8, 14, 99]);
        assert_eq!(
            grpc_verdict(&p, grpc_answer(Some("8"), None)),
            Verdict::Retry
        );
        assert_eq!(
            grpc_verdict(&p, grpc_answer(Some("99"), None)),
            Verdict::Return
        );
        // A code above 16 is UNKNOWN: retried when UNKNOWN is.
        let p = HttpPolicy::grpc().grpc_retry_codes(&[2]);
        assert_eq!(
            grpc_verdict(&p, grpc_answer(Some("99"), None)),
            Verdict::Retry
        );
        assert_eq!(
            grpc_verdict(&HttpPolicy::new(), grpc_answer(Some("14"), None)),
            Verdict::Return
        );
    }

    #[test]
    fn retry_after_delta_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after(&hv("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(&hv(" 7 "), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after(&hv("Wed, 21 Oct 2015 07:28:30 GMT"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(&hv("Wed, 21 Oct 2015 07:00:00 GMT"), now),
            Some(Duration::ZERO),
            "a date in the past: no wait"
        );
        assert_eq!(
            parse_retry_after(&hv("99999999999999999999999"), now),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "+3",
            "0x10",
            "Wed, 32 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(parse_retry_after(&hv(bad), now), None, "{bad:?}");
        }
    }

    #[test]
    fn idempotency_follows_the_method_and_the_key() {
        let req = |m: Method, key: bool| {
            let mut b = Request::builder().method(m);
            if key {
                b = b.header(IDEMPOTENCY_KEY, "k-1");
            }
            b.body(()).unwrap()
        };
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(idempotent(&req(m, false)));
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!idempotent(&req(m.clone(), false)), "{m}");
            assert!(idempotent(&req(m, true)));
        }
    }

    #[test]
    fn a_refused_connection_or_our_own_rejection_proves_the_request_never_left() {
        let refused: BoxError =
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(never_sent(&*refused));
        let reset: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!never_sent(&*reset));
        let full: BoxError = Box::new(BulkheadFull::new("b", 1));
        assert!(never_sent(&*full));
    }

    /// One scripted poll of a body.
    type Step = Poll<Option<Result<Frame<Bytes>, std::io::Error>>>;

    /// A body of scripted polls.
    struct Script(VecDeque<Step>);

    impl Body for Script {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Step {
            self.0.pop_front().unwrap_or(Poll::Ready(None))
        }
    }

    fn data(s: &'static str) -> Step {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(s.as_bytes())))))
    }

    fn drain(body: &mut ReplayBody<Script>) -> Vec<Result<Bytes, String>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(frame)) = Pin::new(&mut *body).poll_frame(&mut cx) {
            out.push(
                frame
                    .map(|f| f.into_data().unwrap_or_default())
                    .map_err(|e| e.to_string()),
            );
        }
        out
    }

    #[test]
    fn an_error_while_reading_comes_after_the_frames_read_before_it() {
        let err = Poll::Ready(Some(Err(std::io::Error::other("reset"))));
        let mut body = ReplayBody::new(Script(VecDeque::from([data("ab"), err])), 1024);
        assert!(!body.is_replayable());
        assert_eq!(
            drain(&mut body),
            [Ok(Bytes::from("ab")), Err("reset".to_owned())]
        );
    }

    #[test]
    fn a_pending_frame_makes_the_body_pass_once_in_order() {
        let script = VecDeque::from([data("a"), Poll::Pending, data("b"), data("c")]);
        let mut body = ReplayBody::new(Script(script), 1024);
        assert!(!body.is_replayable() && body.try_clone().is_none());
        let out: Vec<_> = drain(&mut body).into_iter().map(Result::unwrap).collect();
        assert_eq!(out, [Bytes::from("a"), Bytes::from("b"), Bytes::from("c")]);
        assert!(body.is_end_stream());
    }

    #[test]
    fn a_kept_body_reports_its_size_and_its_end() {
        let mut body = ReplayBody::new(Script(VecDeque::from([data("abc"), data("de")])), 1024);
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let out: Vec<_> = drain(&mut body).into_iter().map(Result::unwrap).collect();
        assert_eq!(out, [Bytes::from("abcde")]);
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[test]
    fn a_kept_body_with_trailers_has_no_exact_size() {
        let trailers = Poll::Ready(Some(Ok(Frame::trailers(HeaderMap::new()))));
        let body = ReplayBody::new(Script(VecDeque::from([data("abc"), trailers])), 1024);
        assert!(body.is_replayable());
        assert_eq!(
            body.size_hint().exact(),
            None,
            "so HTTP/1 sends it chunked, with trailers"
        );
        assert_eq!(body.size_hint().lower(), 3);
    }

    #[test]
    fn crossing_the_limit_passes_the_whole_body_once() {
        let script = VecDeque::from([data("abc"), data("def"), data("g")]);
        let mut body = ReplayBody::new(Script(script), 4);
        assert!(!body.is_replayable());
        let out: Vec<_> = drain(&mut body).into_iter().map(Result::unwrap).collect();
        assert_eq!(out.concat(), b"abcdefg");
    }

    proptest! {
        #[test]
        fn retry_after_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let _ = parse_retry_after(&v, SystemTime::now());
            }
        }

        /// Any `grpc-status` and `grpc-retry-pushback-ms`: a verdict, never a panic; a wait
        /// only for a whole number of milliseconds within the cap.
        #[test]
        fn grpc_verdicts_never_panic(
            status in proptest::collection::vec(any::<u8>(), 0..12),
            pushback in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut answer = Response::builder().status(200);
            if let Ok(v) = HeaderValue::from_bytes(&status) {
                answer = answer.header("grpc-status", v);
            }
            let sent = HeaderValue::from_bytes(&pushback).ok();
            if let Some(v) = &sent {
                answer = answer.header(GRPC_PUSHBACK, v.clone());
            }
            let verdict = grpc_verdict(&HttpPolicy::grpc(), answer.body(()).unwrap());
            if let Verdict::RetryAfter(wait) = verdict {
                let text = sent.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default().trim();
                prop_assert!(text.bytes().all(|b| b.is_ascii_digit()));
                prop_assert!(wait <= Duration::from_secs(30));
            }
        }
    }
}
