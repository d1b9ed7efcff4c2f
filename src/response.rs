//! Turn any bulwark error into the HTTP response, or the `tonic::Status`, a caller should see
//! (feature `http`).
//!
//! - [`handle_error`] makes the function for axum's `HandleErrorLayer`.
//! - [`error_response`] (and [`error_response_with`], with another status for the
//!   downstream's own errors) maps one error to a `Response<String>`.
//! - [`StackError`] carries an error out of handler code with `?`; with the `axum` feature it
//!   is an `IntoResponse`.
//! - `error_status` (feature `tonic`) maps an error to a `tonic::Status`.
//!
//! The response has a status, a `Retry-After` when one is known, and an
//! `application/problem+json` body (RFC 9457) naming the stack and the reason:
//!
//! ```
//! use axum::{error_handling::HandleErrorLayer, routing::get, Router};
//! use bulwark::response::handle_error;
//! use bulwark::{BoxError, BulkheadLayer};
//! use tower::ServiceBuilder;
//!
//! # fn app() -> Result<Router, BoxError> {
//! let app = Router::new().route("/", get(|| async { "ok" })).layer(
//!     ServiceBuilder::new()
//!         .layer(HandleErrorLayer::new(handle_error("inventory")))
//!         .layer(BulkheadLayer::builder("inventory").max_concurrent(64).build()?),
//! );
//! # Ok(app)
//! # }
//! # app().unwrap();
//! ```
//!
//! | Error (anywhere in the `source()` chain) | Status | `Retry-After` | `reason` |
//! | --- | --- | --- | --- |
//! | `CircuitOpen` | 503 | seconds to the next probe, rounded up (at least 1); none when forced open | `circuit_open` |
//! | `BulkheadFull` | 503 | none | `bulkhead_full` |
//! | `RetriesExhausted` with reason `Budget` | 503 | none | `retry_budget_exhausted` |
//! | `Elapsed` | 504 | none | `timeout` |
//! | anything else (the downstream's own error) | 502, or the fallback given to [`error_response_with`] | none | `downstream_error` |
//!
//! A `RetriesExhausted` for any other reason maps by its last error, which is its `source()`.
//!
//! The body's `detail` is the rejection's own message, which holds only configuration a client
//! may see (a layer's name, its cap or timeout, the time to the next probe), or, for the
//! downstream's own errors and a spent budget, a fixed sentence: the downstream's error text
//! (addresses, paths, library messages) is not passed on to the caller.

use std::error::Error;
use std::fmt::{self, Write as _};
use std::future::{ready, Ready};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::error::{find, rejection, Rejection};
use crate::retry::error::{GaveUp, RetriesExhausted};
use crate::BoxError;

/// What an error means for the caller, as [`error_response`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind {
    /// The status to answer with.
    pub status: StatusCode,
    /// When to try again, if known.
    pub retry_after: Option<Duration>,
    /// A stable, machine-readable reason: `circuit_open`, `bulkhead_full`,
    /// `retry_budget_exhausted`, `timeout` or `downstream_error`.
    pub reason: &'static str,
}

/// Classifies `err` as [`error_response`] would, with `fallback` as the status for the
/// downstream's own errors.
pub fn error_kind(err: &(dyn Error + 'static), fallback: StatusCode) -> ErrorKind {
    let budget_spent = find::<RetriesExhausted>(err).is_some_and(|e| e.reason() == GaveUp::Budget);
    let kind = |status, retry_after, reason| ErrorKind {
        status,
        retry_after,
        reason,
    };
    match rejection(err) {
        Some(Rejection::CircuitOpen(open)) => kind(
            StatusCode::SERVICE_UNAVAILABLE,
            open.retry_after(),
            "circuit_open",
        ),
        Some(Rejection::BulkheadFull(_)) => {
            kind(StatusCode::SERVICE_UNAVAILABLE, None, "bulkhead_full")
        }
        _ if budget_spent => kind(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "retry_budget_exhausted",
        ),
        Some(Rejection::Elapsed(_)) => kind(StatusCode::GATEWAY_TIMEOUT, None, "timeout"),
        _ => kind(fallback, None, "downstream_error"),
    }
}

/// The response for an error from the bulwark stack named `stack`, with 502 for the
/// downstream's own errors. See the [module docs](self) for the mapping.
pub fn error_response(stack: &str, err: &(dyn Error + 'static)) -> Response<String> {
    error_response_with(stack, err, StatusCode::BAD_GATEWAY)
}

/// As [`error_response`], with `fallback` as the status for the downstream's own errors (say
/// 500 for a server-side stack).
pub fn error_response_with(
    stack: &str,
    err: &(dyn Error + 'static),
    fallback: StatusCode,
) -> Response<String> {
    let kind = error_kind(err, fallback);
    let detail = detail(&kind, err);
    let mut body = String::with_capacity(160);
    body.push_str("{\"type\":\"about:blank\",\"title\":");
    json_string(&mut body, kind.status.canonical_reason().unwrap_or("Error"));
    let _ = write!(body, ",\"status\":{},\"detail\":", kind.status.as_u16());
    json_string(&mut body, &detail);
    body.push_str(",\"stack\":");
    json_string(&mut body, stack);
    body.push_str(",\"reason\":");
    json_string(&mut body, kind.reason);
    body.push('}');

    let mut response = Response::new(body);
    *response.status_mut() = kind.status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(after) = kind.retry_after {
        // Whole seconds, rounded up, and at least 1: "0" would invite an instant retry.
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

/// The message for the caller: the rejection's own, or a fixed sentence that passes nothing of
/// the downstream's error text on.
fn detail(kind: &ErrorKind, err: &(dyn Error + 'static)) -> String {
    match (kind.reason, rejection(err)) {
        ("retry_budget_exhausted", _) => {
            "the retry budget is spent; the downstream is failing".to_owned()
        }
        ("downstream_error", _) | (_, None) => "the downstream call failed".to_owned(),
        (_, Some(rejection)) => rejection.to_string(),
    }
}

/// The `tonic::Status` for an error from the bulwark stack named `stack` (feature `tonic`):
///
/// | Error | Code | `grpc-retry-pushback-ms` |
/// | --- | --- | --- |
/// | `CircuitOpen` | `UNAVAILABLE` | time to the next probe, rounded up (at least 1); `-1` (do not retry) when forced open |
/// | `BulkheadFull` | `RESOURCE_EXHAUSTED` | |
/// | `RetriesExhausted` with reason `Budget` | `UNAVAILABLE` | `-1`: the downstream is failing, do not retry |
/// | `Elapsed` | `DEADLINE_EXCEEDED` | |
/// | a `tonic::Status` from the downstream | `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED` and `CANCELLED` as they are; any other code becomes `INTERNAL` (the downstream's `NOT_FOUND` or `INVALID_ARGUMENT` says nothing about this caller's request) | |
/// | anything else | `UNAVAILABLE` | |
///
/// A negative pushback is how a gRPC server tells clients not to retry (gRFC A6). The
/// message is `"{stack}: {detail}"`, with the same detail as [`error_response`]: the
/// downstream's own error text is not passed on.
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub fn error_status(stack: &str, err: &(dyn Error + 'static)) -> tonic::Status {
    use tonic::Code;
    let kind = error_kind(err, StatusCode::BAD_GATEWAY);
    let budget_spent = find::<RetriesExhausted>(err).is_some_and(|e| e.reason() == GaveUp::Budget);
    // The same precedence as `error_kind`.
    let (code, pushback_ms) = match rejection(err) {
        Some(Rejection::CircuitOpen(open)) => {
            let pushback = match open.retry_after() {
                Some(after) => {
                    let ms = after.as_nanos().div_ceil(1_000_000).max(1);
                    i64::try_from(ms).unwrap_or(i64::MAX)
                }
                None => -1,
            };
            (Code::Unavailable, Some(pushback))
        }
        Some(Rejection::BulkheadFull(_)) => (Code::ResourceExhausted, None),
        _ if budget_spent => (Code::Unavailable, Some(-1)),
        Some(Rejection::Elapsed(_)) => (Code::DeadlineExceeded, None),
        _ => {
            let code = match find::<tonic::Status>(err).map(tonic::Status::code) {
                None => Code::Unavailable,
                Some(
                    code @ (Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::Cancelled),
                ) => code,
                Some(_) => Code::Internal,
            };
            (code, None)
        }
    };
    let mut status = tonic::Status::new(code, format!("{stack}: {}", detail(&kind, err)));
    if let Some(ms) = pushback_ms {
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", ms.into());
    }
    status
}

/// A function for axum's `HandleErrorLayer` that answers every error of the stack named
/// `stack` with [`error_response`]:
///
/// ```
/// use axum::{error_handling::HandleErrorLayer, routing::get, Router};
/// use bulwark::{response::handle_error, BoxError, BulkheadLayer};
/// use tower::ServiceBuilder;
///
/// # fn app() -> Result<Router, BoxError> {
/// let app = Router::new().route("/", get(|| async { "ok" })).layer(
///     ServiceBuilder::new()
///         .layer(HandleErrorLayer::new(handle_error("inventory")))
///         .layer(BulkheadLayer::builder("inventory").max_concurrent(64).build()?),
/// );
/// # Ok(app)
/// # }
/// # app().unwrap();
/// ```
pub fn handle_error(
    stack: impl Into<Arc<str>>,
) -> impl Fn(BoxError) -> Ready<Response<String>> + Clone + Send + Sync + 'static {
    let stack: Arc<str> = stack.into();
    move |err: BoxError| ready(error_response(&stack, &*err))
}

/// An error from the bulwark stack named by [`stack`](Self::stack), on its way to becoming a
/// response: with the `axum` feature it is an `IntoResponse`, so a handler that calls a
/// downstream through a stack can use `?`:
///
/// ```
/// # #[cfg(feature = "axum")]
/// # mod with_axum {
/// use bulwark::response::StackError;
/// use bulwark::BoxError;
/// use tower::{Service, ServiceExt};
///
/// async fn stock<S>(mut inventory: S) -> Result<String, StackError>
/// where
///     S: Service<&'static str, Response = String, Error = BoxError>,
/// {
///     let ready = inventory.ready().await.map_err(|e| StackError::new("inventory", e))?;
///     ready.call("sku-1").await.map_err(|e| StackError::new("inventory", e))
/// }
/// # }
/// ```
///
/// It displays as ``call through stack `inventory` failed``; its [`source`](Error::source)
/// is the underlying error, so error reports show both, and [`find`] and [`rejection`] work
/// through it. [`fallback`](Self::fallback) is the HTTP status for the downstream's own
/// errors; the gRPC mapping (`From<StackError> for tonic::Status`) has its own.
pub struct StackError {
    stack: Arc<str>,
    error: BoxError,
    fallback: StatusCode,
}

impl StackError {
    /// Wraps `error`, which came from the stack named `stack`. The downstream's own errors map
    /// to 502 unless [`fallback`](Self::fallback) says otherwise.
    pub fn new(stack: impl Into<Arc<str>>, error: impl Into<BoxError>) -> Self {
        StackError {
            stack: stack.into(),
            error: error.into(),
            fallback: StatusCode::BAD_GATEWAY,
        }
    }

    /// Sets the status for the downstream's own errors (say 500 for a server-side stack).
    #[must_use]
    pub fn fallback(mut self, status: StatusCode) -> Self {
        self.fallback = status;
        self
    }

    /// The stack's name.
    pub fn stack(&self) -> &str {
        &self.stack
    }

    /// The underlying error.
    pub fn error(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.error
    }

    /// Gives back the underlying error.
    pub fn into_error(self) -> BoxError {
        self.error
    }

    /// What the error means for the caller.
    pub fn kind(&self) -> ErrorKind {
        error_kind(&*self.error, self.fallback)
    }

    /// The response, as [`error_response_with`] gives it.
    pub fn to_response(&self) -> Response<String> {
        error_response_with(&self.stack, &*self.error, self.fallback)
    }
}

impl fmt::Debug for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackError")
            .field("stack", &self.stack)
            .field("error", &self.error)
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call through stack `{}` failed", self.stack)
    }
}

impl Error for StackError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.error)
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum_core::response::IntoResponse for StackError {
    fn into_response(self) -> axum_core::response::Response {
        self.to_response().into_response()
    }
}

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
impl From<StackError> for tonic::Status {
    /// [`error_status`], with the underlying error as the status's source.
    fn from(err: StackError) -> Self {
        let mut status = error_status(&err.stack, &*err.error);
        status.set_source(Arc::from(err.error));
        status
    }
}

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bulkhead::error::BulkheadFull;
    use crate::circuit_breaker::error::CircuitOpen;
    use crate::circuit_breaker::CircuitState;
    use crate::timeout::error::Elapsed;

    fn io(msg: &str) -> BoxError {
        Box::new(std::io::Error::other(msg.to_owned()))
    }

    fn exhausted(reason: GaveUp, last: BoxError) -> BoxError {
        Box::new(RetriesExhausted::new(3, reason, last))
    }

    #[test]
    fn each_rejection_maps_to_its_status_and_reason() {
        let open: BoxError = Box::new(CircuitOpen::new(
            "payments",
            CircuitState::Open,
            Some(Duration::from_millis(12_300)),
        ));
        let r = error_response("payments", &*open);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "13", "rounded up");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(
            r.body(),
            r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"circuit `payments` is open; next probe in 12.3s","stack":"payments","reason":"circuit_open"}"#
        );

        let forced: BoxError = Box::new(CircuitOpen::new("p", CircuitState::ForcedOpen, None));
        assert!(error_response("p", &*forced)
            .headers()
            .get(RETRY_AFTER)
            .is_none());
        let probing: BoxError = Box::new(CircuitOpen::new(
            "p",
            CircuitState::HalfOpen,
            Some(Duration::ZERO),
        ));
        assert_eq!(error_response("p", &*probing).headers()[RETRY_AFTER], "1");

        let full: BoxError = Box::new(BulkheadFull::new("inventory", 8));
        let k = error_kind(&*full, StatusCode::BAD_GATEWAY);
        assert_eq!((k.status.as_u16(), k.reason), (503, "bulkhead_full"));

        let elapsed: BoxError = Box::new(Elapsed::new(Duration::from_secs(2)));
        let k = error_kind(&*elapsed, StatusCode::BAD_GATEWAY);
        assert_eq!((k.status.as_u16(), k.reason), (504, "timeout"));
    }

    #[test]
    fn retry_exhaustion_maps_by_its_last_error_or_as_a_spent_budget() {
        let e = exhausted(
            GaveUp::MaxAttempts,
            Box::new(Elapsed::new(Duration::from_secs(1))),
        );
        assert_eq!(
            error_kind(&*e, StatusCode::BAD_GATEWAY).status,
            StatusCode::GATEWAY_TIMEOUT
        );
        let e = exhausted(GaveUp::MaxAttempts, io("connection reset"));
        assert_eq!(
            error_kind(&*e, StatusCode::BAD_GATEWAY).status,
            StatusCode::BAD_GATEWAY
        );
        let e = exhausted(GaveUp::Budget, io("connection reset"));
        let k = error_kind(&*e, StatusCode::BAD_GATEWAY);
        assert_eq!(
            (k.status.as_u16(), k.reason),
            (503, "retry_budget_exhausted")
        );
        let open = Box::new(CircuitOpen::new(
            "p",
            CircuitState::Open,
            Some(Duration::from_secs(5)),
        ));
        let e = exhausted(GaveUp::CircuitOpen, open);
        let r = error_response("p", &*e);
        assert_eq!(
            (r.status().as_u16(), &r.headers()[RETRY_AFTER]),
            (503, &HeaderValue::from(5u64))
        );
    }

    #[test]
    fn the_downstreams_own_error_text_is_not_passed_on() {
        let e = io("connect to 10.0.0.7:5432 failed: /etc/secret");
        let r = error_response_with("db", &*e, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!r.body().contains("10.0.0.7") && !r.body().contains("secret"));
        assert!(r
            .body()
            .contains(r#""detail":"the downstream call failed""#));
    }

    #[test]
    fn names_are_escaped_into_valid_json() {
        let full: BoxError = Box::new(BulkheadFull::new("a\"b\\c\nd", 1));
        let r = error_response("x\u{1}y", &*full);
        assert!(r.body().contains(r#""stack":"x\u0001y""#));
        assert!(r.body().contains(r#"bulkhead `a\"b\\c\nd` is full"#));
    }
}
