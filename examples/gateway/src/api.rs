//! The gateway's HTTP API: orders (the saga), sagas, the catalog, order aggregation, health,
//! metrics, and (embedded mode only, loopback only) fault controls.

// Helpers return the response to answer with as their error, as axum handlers do.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bulwark::circuit_breaker::CircuitState;
use bulwark::response::handle_error;
use bulwark::ServiceBuilderExt;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use tokio::time::Instant;
use tower::ServiceBuilder;

use crate::client::{Context, Unavailable};
use crate::faults::{FaultRegistry, FaultSettings};
use crate::saga::{Downstreams, OrderRequest, Sagas};
use crate::{json_body, json_error};

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 16 * 1024;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The downstream clients.
    pub downstreams: Downstreams,
    /// The saga log.
    pub sagas: Arc<Sagas>,
    /// The embedded services' faults; `None` with external downstreams.
    pub faults: Option<FaultRegistry>,
    /// The Prometheus text of the metrics.
    pub metrics: PrometheusHandle,
    /// How long `POST /api/orders` waits for its saga before answering 202 (the saga goes
    /// on; `GET /api/sagas/{id}` follows it).
    pub saga_wait: Duration,
    /// The inventory clients behind the load script's reference routes, when mounted.
    pub bench: Option<BenchClients>,
}

/// The inventory clients of the load script's reference routes.
#[derive(Clone, Debug)]
pub struct BenchClients {
    /// No layer at all: `GET /bench/raw/catalog`.
    pub raw: crate::client::Downstream,
    /// tower's `Timeout` only, as long as the stacks' default total timeout
    /// ([`TOTAL_TIMEOUT`](crate::TOTAL_TIMEOUT)): `GET /bench/timeout/catalog`.
    pub timeout: crate::client::Downstream,
}

/// The gateway's router, with its inbound protection: a body limit, a per-request timeout,
/// JSON errors, request ids.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let mut api = Router::new()
        .route("/api/orders", post(create_order))
        .route("/api/orders/{id}", get(get_order))
        .route("/api/sagas/{id}", get(get_saga))
        .route("/api/catalog", get(catalog))
        .route(
            "/health/live",
            get(|| async { Json(json!({ "status": "live" })) }),
        )
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics));
    if state.faults.is_some() {
        api = api.route("/admin/faults", get(list_faults)).route(
            "/admin/faults/{service}",
            put(set_fault).delete(clear_fault).get(get_fault),
        );
    }
    if state.bench.is_some() {
        api = api
            .route("/bench/raw/catalog", get(bench_raw_catalog))
            .route("/bench/timeout/catalog", get(bench_timeout_catalog));
    }
    api.fallback(|| async { json_error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(request_ids))
                .layer(middleware::from_fn(count_requests))
                .layer(HandleErrorLayer::new(handle_error("gateway")))
                .timeout_after(request_timeout),
        )
}

/// Gives every request an `x-request-id` (kept if the client sent one) and echoes it.
async fn request_ids(mut request: Request, next: Next) -> Response {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = match request.headers().get("x-request-id") {
        Some(v) if !v.is_empty() && v.len() <= 128 => v.clone(),
        _ => {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let value = HeaderValue::from_str(&format!("gw-{n:08x}"));
            let Ok(value) = value else {
                return next.run(request).await;
            };
            request.headers_mut().insert("x-request-id", value.clone());
            value
        }
    };
    let mut response = next.run(request).await;
    response.headers_mut().insert("x-request-id", id);
    response
}

/// Counts requests by route and status, and times them.
async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("gateway_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("gateway_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

fn context(headers: &HeaderMap) -> Context {
    Context {
        request_id: headers.get("x-request-id").cloned(),
        traceparent: headers.get("traceparent").cloned(),
    }
}

/// The body, or a JSON 413/400 saying what was wrong with it.
fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Response> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let (code, detail) = if status == StatusCode::PAYLOAD_TOO_LARGE {
            (
                "body_too_large",
                format!("the body must be at most {BODY_LIMIT} bytes"),
            )
        } else {
            ("unreadable_body", rejection.body_text())
        };
        json_error(status, code, &detail).into_response()
    })
}

async fn create_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body_or_error(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request: OrderRequest = match json_body(&body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    if let Err(problem) = request.validate() {
        return json_error(StatusCode::BAD_REQUEST, "invalid_field", &problem).into_response();
    }
    // The saga runs in its own task: a client that goes away, or the request timeout, does
    // not stop it half-way with nothing undone.
    let saga_id = state.sagas.new_id();
    let saga = tokio::spawn({
        let (sagas, ds, ctx, id) = (
            state.sagas.clone(),
            state.downstreams.clone(),
            context(&headers),
            saga_id.clone(),
        );
        async move { sagas.run(&ds, &ctx, &request, &id).await }
    });
    let outcome = match tokio::time::timeout(state.saga_wait, saga).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "saga_failed",
                "the saga stopped unexpectedly",
            )
            .into_response()
        }
        Err(_) => {
            let mut response = (
                StatusCode::ACCEPTED,
                Json(json!({
                    "outcome": "pending",
                    "saga_id": saga_id,
                    "detail": "still running: follow it at the location given",
                })),
            )
                .into_response();
            if let Ok(location) = HeaderValue::from_str(&format!("/api/sagas/{saga_id}")) {
                response.headers_mut().insert("location", location);
            }
            return response;
        }
    };
    let mut response = (outcome.status, Json(outcome.body)).into_response();
    if let Some(secs) = outcome.retry_after {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    }
    response
}

/// A path parameter, or a JSON 400.
fn path_or_error(path: Result<Path<String>, PathRejection>) -> Result<String, Response> {
    path.map(|Path(p)| p).map_err(|rejection| {
        json_error(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            &rejection.body_text(),
        )
        .into_response()
    })
}

async fn get_saga(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match path_or_error(path) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match state.sagas.get(&id) {
        Some(saga) => Json(saga).into_response(),
        None => json_error(StatusCode::NOT_FOUND, "not_found", "no such saga").into_response(),
    }
}

/// 503 with `Retry-After` (when known) for a downstream that could not answer.
fn unavailable(u: &Unavailable) -> Response {
    let mut response = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        u.kind.reason,
        &format!("the {} service is unavailable", u.service),
    )
    .into_response();
    if let Some(after) = u.kind.retry_after {
        let secs = (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1);
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    }
    response
}

async fn catalog(State(state): State<AppState>, headers: HeaderMap) -> Response {
    catalog_via(&state.downstreams.inventory, &headers).await
}

/// `GET /bench/raw/catalog`: the same work as `GET /api/catalog`, through the same client
/// code with no layer, for the load script's comparison.
async fn bench_raw_catalog(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match &state.bench {
        Some(bench) => catalog_via(&bench.raw, &headers).await,
        None => json_error(StatusCode::NOT_FOUND, "not_found", "no such route").into_response(),
    }
}

/// `GET /bench/timeout/catalog`: the same again, through tower's `Timeout` alone.
async fn bench_timeout_catalog(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match &state.bench {
        Some(bench) => catalog_via(&bench.timeout, &headers).await,
        None => json_error(StatusCode::NOT_FOUND, "not_found", "no such route").into_response(),
    }
}

async fn catalog_via(inventory: &crate::client::Downstream, headers: &HeaderMap) -> Response {
    match inventory
        .call(
            &context(headers),
            Method::GET,
            "/catalog",
            None::<&()>,
            None,
        )
        .await
    {
        Ok(answer) if answer.status.is_success() => match answer.json::<Value>() {
            Ok(products) => Json(json!({ "products": products })).into_response(),
            Err(_) => json_error(
                StatusCode::BAD_GATEWAY,
                "bad_answer",
                "inventory sent an unreadable catalog",
            )
            .into_response(),
        },
        Ok(answer) => json_error(
            if answer.status.is_server_error() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            },
            "downstream_error",
            &format!("inventory answered {}", answer.status.as_u16()),
        )
        .into_response(),
        Err(u) => unavailable(&u),
    }
}

/// The order, its payment and its reservation, fetched in parallel; a section that cannot be
/// fetched is left out and named in `degraded`. An unknown order is 404.
async fn get_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match path_or_error(path) {
        Ok(id) => id,
        Err(r) => return r,
    };
    if id.is_empty()
        || id.len() > 100
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "`id` must be 1 to 100 letters, digits or dashes",
        )
        .into_response();
    }
    let ctx = context(&headers);
    let ds = &state.downstreams;
    let (order_path, payment_path, reservation_path) = (
        format!("/orders/{id}"),
        format!("/charges?order_id={id}"),
        format!("/reservations?order_id={id}"),
    );
    let (order, payment, reservation) = tokio::join!(
        ds.order
            .call(&ctx, Method::GET, &order_path, None::<&()>, None),
        ds.payment
            .call(&ctx, Method::GET, &payment_path, None::<&()>, None),
        ds.inventory
            .call(&ctx, Method::GET, &reservation_path, None::<&()>, None),
    );
    let order = match order {
        Ok(a) if a.status == StatusCode::NOT_FOUND => {
            return json_error(StatusCode::NOT_FOUND, "not_found", "no such order").into_response()
        }
        Ok(a) if a.status.is_success() => match a.json::<Value>() {
            Ok(order) => order,
            Err(_) => {
                return json_error(
                    StatusCode::BAD_GATEWAY,
                    "bad_answer",
                    "order sent an unreadable answer",
                )
                .into_response()
            }
        },
        Ok(a) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "downstream_error",
                &format!("order answered {}", a.status.as_u16()),
            )
            .into_response()
        }
        Err(u) => return unavailable(&u),
    };
    let mut degraded = Vec::new();
    let mut section = |name: &str, result: Result<crate::client::Answer, Unavailable>| match result
    {
        Ok(a) if a.status.is_success() => match a.json::<Value>() {
            Ok(v) => v,
            Err(_) => {
                degraded.push(json!({ "section": name, "reason": "unreadable answer" }));
                Value::Null
            }
        },
        Ok(a) if a.status == StatusCode::NOT_FOUND => Value::Null,
        Ok(a) => {
            degraded.push(
                json!({ "section": name, "reason": format!("answered {}", a.status.as_u16()) }),
            );
            Value::Null
        }
        Err(u) => {
            degraded.push(json!({ "section": name, "reason": u.kind.reason }));
            Value::Null
        }
    };
    let payment = section("payment", payment);
    let reservation = section("reservation", reservation);
    Json(json!({
        "order": order,
        "payment": payment,
        "reservation": reservation,
        "degraded": degraded,
    }))
    .into_response()
}

fn state_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half_open",
        CircuitState::ForcedOpen => "forced_open",
        CircuitState::ForcedClosed => "forced_closed",
        CircuitState::Disabled => "disabled",
        _ => "unknown",
    }
}

/// 200 while every downstream's breaker lets calls through; 503 while any is open.
async fn ready(State(state): State<AppState>) -> Response {
    let mut all_ready = true;
    let mut downstreams = serde_json::Map::new();
    for d in state.downstreams.all() {
        let handle = d.handle();
        let breaker = handle.circuit_breaker();
        let state = breaker.map(|b| b.state());
        // An Open breaker whose break is over lets the next call through as a probe: the
        // downstream may be back, so that is not a reason to leave the load balancer.
        let probe_due = breaker.and_then(|b| b.time_until_probe()) == Some(Duration::ZERO);
        let open = matches!(state, Some(CircuitState::ForcedOpen))
            || (matches!(state, Some(CircuitState::Open)) && !probe_due);
        all_ready &= !open;
        let shown = match state {
            Some(CircuitState::Open) if probe_due => "open_probe_due",
            Some(s) => state_name(s),
            None => "off",
        };
        downstreams.insert(
            d.name().to_owned(),
            json!({
                "breaker": shown,
                "in_flight": handle.bulkhead().map(|b| b.in_flight()),
                "retries": handle.retry().map(|r| r.retries()),
            }),
        );
    }
    let (status, word) = if all_ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    let (deferred, completed) = state.sagas.deferred_counts();
    (
        status,
        Json(json!({
            "status": word,
            "downstreams": downstreams,
            "compensations": { "deferred": deferred, "completed_later": completed, "pending": state.sagas.pending() },
        })),
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Fault controls answer only to loopback clients.
fn loopback_only(peer: &SocketAddr) -> Result<(), Response> {
    if peer.ip().to_canonical().is_loopback() {
        Ok(())
    } else {
        Err(json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "fault controls answer only on loopback",
        )
        .into_response())
    }
}

async fn list_faults(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Err(r) = loopback_only(&peer) {
        return r;
    }
    match &state.faults {
        Some(faults) => Json(faults.all()).into_response(),
        None => json_error(StatusCode::NOT_FOUND, "not_found", "no such route").into_response(),
    }
}

fn service_faults<'a>(
    state: &'a AppState,
    service: &str,
) -> Result<&'a Arc<crate::faults::Faults>, Response> {
    state
        .faults
        .as_ref()
        .and_then(|f| f.get(service))
        .ok_or_else(|| {
            json_error(
                StatusCode::NOT_FOUND,
                "unknown_service",
                "the service must be one of: inventory, order, payment",
            )
            .into_response()
        })
}

/// The faults a fault-control request addresses: loopback only, a known service.
fn addressed<'a>(
    state: &'a AppState,
    peer: &SocketAddr,
    path: Result<Path<String>, PathRejection>,
) -> Result<&'a Arc<crate::faults::Faults>, Response> {
    loopback_only(peer)?;
    let service = path_or_error(path)?;
    service_faults(state, &service)
}

async fn get_fault(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    match addressed(&state, &peer, path) {
        Ok(f) => Json(f.get()).into_response(),
        Err(r) => r,
    }
}

async fn set_fault(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let parsed = addressed(&state, &peer, path).and_then(|faults| {
        let body = body_or_error(body)?;
        let settings: FaultSettings = json_body(&body)?;
        settings.validate().map_err(|problem| {
            json_error(StatusCode::BAD_REQUEST, "invalid_field", &problem).into_response()
        })?;
        Ok((faults, settings))
    });
    match parsed {
        Ok((faults, settings)) => {
            faults.set(settings);
            Json(faults.get()).into_response()
        }
        Err(r) => r,
    }
}

async fn clear_fault(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    match addressed(&state, &peer, path) {
        Ok(f) => {
            f.set(FaultSettings::default());
            Json(f.get()).into_response()
        }
        Err(r) => r,
    }
}
