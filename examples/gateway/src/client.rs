//! A client of one downstream service: hyper-util's client inside a bulwark HTTP standard
//! stack named after the service, with its own breaker, bulkhead and retry budget.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Method, Request, Response, StatusCode};
use bulwark::response::{error_kind, ErrorKind};
use bulwark::retry::ReplayBody;
use bulwark::stack::{HttpStackLayer, StackHandle};
use bulwark::BoxError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

/// How long an idle pooled connection is kept: less than the services' header read timeout,
/// after which they close idle connections, so that the pool does not reuse one being closed.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// The headers a gateway request passes on to every downstream call it makes.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `x-request-id`.
    pub request_id: Option<HeaderValue>,
    /// `traceparent`.
    pub traceparent: Option<HeaderValue>,
}

/// A downstream's answer: its status and body, read whole within the attempt timeout.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// The `error` field of a JSON error body, if any.
    pub fn error_code(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()?
            .get("error")?
            .as_str()
            .map(str::to_owned)
    }
}

/// Why a call to a downstream did not give an answer.
#[derive(Debug)]
pub struct Unavailable {
    /// The service.
    pub service: &'static str,
    /// What the error means for the caller: status, `Retry-After`, reason.
    pub kind: ErrorKind,
    /// The error, for logs (not for responses).
    pub error: BoxError,
}

type Svc = BoxCloneSyncService<Request<Full<Bytes>>, Response<Bytes>, BoxError>;

/// One downstream service, called through its own stack.
///
/// Cheap to clone (one `Arc`): the gateway's state, with every client in it, is cloned for
/// each request it serves.
#[derive(Debug, Clone)]
pub struct Downstream {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    name: &'static str,
    base: String,
    svc: Svc,
    handle: StackHandle,
    description: String,
}

impl Downstream {
    /// A client of `name` at `base` (`http://host:port`), through `stack`.
    pub fn new(name: &'static str, base: &str, stack: HttpStackLayer) -> Self {
        let handle = stack.handle();
        let description = format!("{stack:?}");
        let svc = ServiceBuilder::new().layer(stack).service(reading(
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE)
                .build_http::<ReplayBody<Full<Bytes>>>(),
        ));
        Downstream {
            shared: Arc::new(Shared {
                name,
                base: base.trim_end_matches('/').to_owned(),
                svc: BoxCloneSyncService::new(svc),
                handle,
                description,
            }),
        }
    }

    /// The same client with no bulwark layer at all, for the load script's comparison: the
    /// same request building, boxing and body reading, without the stack.
    pub fn bare(name: &'static str, base: &str) -> Self {
        Downstream::unlayered(name, base, None)
    }

    /// The bare client inside tower's own `Timeout` only, for the load script: what having a
    /// timeout at all costs (a timer armed per call, a runtime that parks with a deadline),
    /// apart from the rest of the stack.
    pub fn bare_with_timeout(name: &'static str, base: &str, timeout: Duration) -> Self {
        Downstream::unlayered(name, base, Some(timeout))
    }

    fn unlayered(name: &'static str, base: &str, timeout: Option<Duration>) -> Self {
        let handle = bulwark::stack::StackLayer::builder(name)
            .no_bulkhead()
            .no_total_timeout()
            .no_retry()
            .no_circuit_breaker()
            .no_attempt_timeout()
            .build()
            .map(|stack| stack.handle())
            .expect("a stack with every stage off is valid");
        let client = reading(
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE)
                .build_http::<Full<Bytes>>(),
        );
        let (svc, description) = match timeout {
            None => (BoxCloneSyncService::new(client), "no layers".to_owned()),
            Some(timeout) => (
                BoxCloneSyncService::new(
                    ServiceBuilder::new()
                        .layer(tower::timeout::TimeoutLayer::new(timeout))
                        .service(client),
                ),
                format!("tower's Timeout ({timeout:?}) only"),
            ),
        };
        Downstream {
            shared: Arc::new(Shared {
                name,
                base: base.trim_end_matches('/').to_owned(),
                svc,
                handle,
                description,
            }),
        }
    }

    /// The stack's settings, as its `Debug` shows them.
    pub fn describe(&self) -> &str {
        &self.shared.description
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.shared.base
    }

    /// The service's name.
    pub fn name(&self) -> &'static str {
        self.shared.name
    }

    /// The stack's handle: breaker state, bulkhead, retries.
    pub fn handle(&self) -> &StackHandle {
        &self.shared.handle
    }

    /// Calls `method path` with an optional JSON body and `Idempotency-Key`.
    pub async fn call(
        &self,
        ctx: &Context,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, Unavailable> {
        let unavailable = |error: BoxError| Unavailable {
            service: self.shared.name,
            kind: error_kind(&*error, StatusCode::BAD_GATEWAY),
            error,
        };
        let body = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|e| unavailable(e.into()))?),
            None => Bytes::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.shared.base, path))
            .header("content-type", "application/json");
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if let Some(id) = &ctx.request_id {
            request = request.header("x-request-id", id.clone());
        }
        if let Some(tp) = &ctx.traceparent {
            request = request.header("traceparent", tp.clone());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| unavailable(e.into()))?;
        match self.shared.svc.clone().oneshot(request).await {
            Ok(response) => Ok(Answer {
                status: response.status(),
                body: response.into_body(),
            }),
            Err(error) => Err(unavailable(error)),
        }
    }
}

/// hyper-util's client, reading each answer's whole body (inside the stack when there is one,
/// so the attempt timeout covers it and a retry sees the complete answer).
fn reading<B>(
    client: Client<hyper_util::client::legacy::connect::HttpConnector, B>,
) -> impl tower::Service<
    Request<B>,
    Response = Response<Bytes>,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Response<Bytes>, BoxError>> + Send,
> + Clone
       + Send
       + Sync
       + 'static
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    client.map_err(BoxError::from).and_then(
        |response: Response<hyper::body::Incoming>| async move {
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, BoxError>(Response::from_parts(parts, body))
        },
    )
}
