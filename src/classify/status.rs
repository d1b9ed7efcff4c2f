//! HTTP and gRPC classifiers (feature `http`).

use http::{HeaderMap, Response, StatusCode};

use super::{Classify, Outcome};

// === impl HttpClassifier ===

/// Classifies HTTP responses: a 5xx status is a failure, any other status a success, and an
/// `Err` (the request never got a response) a failure.
///
/// A 4xx is the caller's problem, not the downstream's, so it counts as a success for the
/// downstream's health. Some statuses ask the caller to try again later even though they say
/// nothing bad about the downstream's health: [`HttpClassifier::is_retryable_status`] names
/// them for retry.
///
/// ```
/// use bulwark::classify::{Classify, HttpClassifier, Outcome};
/// use http::{Response, StatusCode};
///
/// let c = HttpClassifier::new();
/// let response = |status| Ok::<_, std::io::Error>(Response::builder().status(status).body(()).unwrap());
/// assert_eq!(c.classify(&response(StatusCode::BAD_GATEWAY)), Outcome::Failure);
/// assert_eq!(c.classify(&response(StatusCode::NOT_FOUND)), Outcome::Success);
/// assert_eq!(c.classify(&response(StatusCode::TOO_MANY_REQUESTS)), Outcome::Success);
/// assert!(HttpClassifier::is_retryable_status(StatusCode::TOO_MANY_REQUESTS));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpClassifier {
    _priv: (),
}

impl HttpClassifier {
    /// Creates the HTTP classifier.
    pub const fn new() -> Self {
        HttpClassifier { _priv: () }
    }

    /// Whether a response with this status is worth sending again, later.
    ///
    /// True for 408 Request Timeout, 429 Too Many Requests, 502 Bad Gateway,
    /// 503 Service Unavailable and 504 Gateway Timeout: statuses that say "not now" rather than
    /// "never". 500 is not among them: a server error on a request it received may have had
    /// effects, and sending it again rarely helps. Whether a request may be sent again at all
    /// (its method, its body) is the retry layer's decision.
    pub const fn is_retryable_status(status: StatusCode) -> bool {
        matches!(status.as_u16(), 408 | 429 | 502 | 503 | 504)
    }
}

impl<B, E> Classify<Response<B>, E> for HttpClassifier {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) if response.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

// === impl GrpcClassifier ===

/// Classifies gRPC responses by their `grpc-status`.
///
/// These codes are failures, because they say the server is unwell or overloaded: `UNKNOWN`
/// (2), `DEADLINE_EXCEEDED` (4), `RESOURCE_EXHAUSTED` (8), `INTERNAL` (13) and `UNAVAILABLE`
/// (14). Every other code (`OK`, and codes such as `NOT_FOUND` or `INVALID_ARGUMENT` that are
/// about the request) is a success for the server's health. An `Err` is a failure.
///
/// # Where the status is read
///
/// The classifier sees only the response head, so it reads `grpc-status` from the response
/// *headers*. A server puts it there when it fails before sending any message (a
/// "trailers-only" response, which is how most errors arrive). A status sent in the trailers,
/// after a streamed body, is not visible here, so such a response counts as a success.
///
/// When the headers carry no usable `grpc-status` (missing or malformed, such as a reply from a
/// proxy in front of the server), the HTTP status decides, mapped to a gRPC code as the gRPC
/// specification says clients must (`http-grpc-status-mapping.md`): 200 is a success; 429, 502,
/// 503 and 504 become `UNAVAILABLE` and 400 becomes `INTERNAL` (failures); 401, 403 and 404
/// become `UNAUTHENTICATED`, `PERMISSION_DENIED` and `UNIMPLEMENTED` (not failures); any other
/// status becomes `UNKNOWN` (a failure). A numeric `grpc-status` above 16 is read as `UNKNOWN`,
/// as gRPC clients do.
///
/// ```
/// use bulwark::classify::{Classify, GrpcClassifier, Outcome};
/// use http::Response;
///
/// let c = GrpcClassifier::new();
/// let with_status = |code: &str| {
///     Ok::<_, std::io::Error>(Response::builder().header("grpc-status", code).body(()).unwrap())
/// };
/// assert_eq!(c.classify(&with_status("14")), Outcome::Failure); // UNAVAILABLE
/// assert_eq!(c.classify(&with_status("5")), Outcome::Success); // NOT_FOUND
/// assert_eq!(c.classify(&with_status("0")), Outcome::Success); // OK
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcClassifier {
    _priv: (),
}

/// gRPC status codes this module names.
mod code {
    pub(super) const OK: u32 = 0;
    pub(super) const UNKNOWN: u32 = 2;
    pub(super) const DEADLINE_EXCEEDED: u32 = 4;
    pub(super) const PERMISSION_DENIED: u32 = 7;
    pub(super) const RESOURCE_EXHAUSTED: u32 = 8;
    pub(super) const UNIMPLEMENTED: u32 = 12;
    pub(super) const INTERNAL: u32 = 13;
    pub(super) const UNAVAILABLE: u32 = 14;
    pub(super) const UNAUTHENTICATED: u32 = 16;
}

impl GrpcClassifier {
    /// Creates the gRPC classifier.
    pub const fn new() -> Self {
        GrpcClassifier { _priv: () }
    }

    /// Whether a gRPC status code counts as a failure of the server: `UNKNOWN` (2),
    /// `DEADLINE_EXCEEDED` (4), `RESOURCE_EXHAUSTED` (8), `INTERNAL` (13), `UNAVAILABLE` (14),
    /// and any code above 16 (which clients read as `UNKNOWN`).
    pub const fn is_failure_code(code: u32) -> bool {
        matches!(
            code,
            code::UNKNOWN
                | code::DEADLINE_EXCEEDED
                | code::RESOURCE_EXHAUSTED
                | code::INTERNAL
                | code::UNAVAILABLE
        ) || code > code::UNAUTHENTICATED
    }

    /// The gRPC code of a response head: its `grpc-status` header if that is a number,
    /// otherwise the code the gRPC specification maps its HTTP status to.
    pub(crate) fn code(status: StatusCode, headers: &HeaderMap) -> u32 {
        if let Some(code) = headers
            .get("grpc-status")
            .and_then(|v| parse_code(v.as_bytes()))
        {
            return code;
        }
        match status.as_u16() {
            200 => code::OK,
            400 => code::INTERNAL,
            401 => code::UNAUTHENTICATED,
            403 => code::PERMISSION_DENIED,
            404 => code::UNIMPLEMENTED,
            429 | 502 | 503 | 504 => code::UNAVAILABLE,
            _ => code::UNKNOWN,
        }
    }
}

/// Parses a `grpc-status` value: one to nine ASCII digits and nothing else.
fn parse_code(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || bytes.len() > 9 {
        return None;
    }
    bytes.iter().try_fold(0u32, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

impl<B, E> Classify<Response<B>, E> for GrpcClassifier {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) => {
                let code = Self::code(response.status(), response.headers());
                if Self::is_failure_code(code) {
                    Outcome::Failure
                } else {
                    Outcome::Success
                }
            }
            Err(_) => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn http(status: u16) -> Result<Response<()>, ()> {
        Ok(Response::builder().status(status).body(()).unwrap())
    }

    fn grpc(http_status: u16, grpc_status: Option<&[u8]>) -> Result<Response<()>, ()> {
        let mut b = Response::builder().status(http_status);
        if let Some(v) = grpc_status {
            b = b.header("grpc-status", http::HeaderValue::from_bytes(v).unwrap());
        }
        Ok(b.body(()).unwrap())
    }

    #[test]
    fn http_5xx_is_failure_and_everything_else_success() {
        let c = HttpClassifier::new();
        for s in [500, 501, 502, 503, 504, 599] {
            assert_eq!(c.classify(&http(s)), Outcome::Failure, "{s}");
        }
        for s in [200, 201, 204, 301, 304, 400, 404, 408, 429, 499] {
            assert_eq!(c.classify(&http(s)), Outcome::Success, "{s}");
        }
        assert_eq!(c.classify(&Err::<Response<()>, _>(())), Outcome::Failure);
    }

    #[test]
    fn http_retryable_statuses() {
        let retryable: Vec<u16> = (100..600)
            .filter(|&s| HttpClassifier::is_retryable_status(StatusCode::from_u16(s).unwrap()))
            .collect();
        assert_eq!(retryable, [408, 429, 502, 503, 504]);
    }

    #[test]
    fn grpc_failure_codes() {
        let c = GrpcClassifier::new();
        let failures: Vec<u32> = (0..=16)
            .filter(|code| {
                let v = code.to_string();
                c.classify(&grpc(200, Some(v.as_bytes()))) == Outcome::Failure
            })
            .collect();
        assert_eq!(failures, [2, 4, 8, 13, 14]);
        assert_eq!(
            c.classify(&grpc(200, Some(b"17".as_slice()))),
            Outcome::Failure
        );
        assert_eq!(
            c.classify(&grpc(200, Some(b"014".as_slice()))),
            Outcome::Failure
        );
        assert_eq!(c.classify(&Err::<Response<()>, _>(())), Outcome::Failure);
    }

    #[test]
    fn grpc_without_status_falls_back_to_the_http_status() {
        let c = GrpcClassifier::new();
        assert_eq!(c.classify(&grpc(200, None)), Outcome::Success);
        for s in [400, 429, 500, 502, 503, 504, 302] {
            assert_eq!(c.classify(&grpc(s, None)), Outcome::Failure, "{s}");
        }
        for s in [401, 403, 404] {
            assert_eq!(c.classify(&grpc(s, None)), Outcome::Success, "{s}");
        }
        // The grpc-status header wins over the HTTP status when it is usable.
        assert_eq!(
            c.classify(&grpc(503, Some(b"0".as_slice()))),
            Outcome::Success
        );
    }

    #[test]
    fn grpc_malformed_status_is_ignored_safely() {
        let c = GrpcClassifier::new();
        for bad in [
            &b""[..],
            b"+14",
            b"-1",
            b"1 4",
            b"14 ",
            b"x",
            b"0x0e",
            b"9999999999",
            b"\xff",
        ] {
            assert_eq!(parse_code(bad), None, "{bad:?}");
            // A malformed header on a 200 falls back to the HTTP status: a success.
            assert_eq!(
                c.classify(&grpc(200, Some(bad))),
                Outcome::Success,
                "{bad:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn grpc_status_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let all_digits = !bytes.is_empty() && bytes.len() <= 9 && bytes.iter().all(u8::is_ascii_digit);
            let expected = all_digits
                .then(|| std::str::from_utf8(&bytes).unwrap().parse::<u32>().unwrap());
            prop_assert_eq!(parse_code(&bytes), expected);
            if let Ok(v) = http::HeaderValue::from_bytes(&bytes) {
                let r = Ok::<_, ()>(Response::builder().header("grpc-status", v).body(()).unwrap());
                let _ = GrpcClassifier::new().classify(&r);
            }
        }
    }
}
