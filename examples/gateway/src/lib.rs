//! An example API gateway built on bulwark: an axum gateway in front of three downstream
//! services (order, payment, inventory), each with its own data, each called through its own
//! bulwark standard stack.
//!
//! [`start_embedded`] runs everything in one process on loopback, with switchable faults;
//! `main.rs` is the command line (`cargo run --release -p gateway`).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bulwark::config::StackConfig;
use bulwark::stack::StackLayer;
use bulwark::BoxError;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub mod api;
pub mod client;
pub mod faults;
pub mod inventory;
pub mod orders;
pub mod payment;
pub mod saga;

use crate::client::Downstream;
use crate::faults::{FaultRegistry, Faults};
use crate::saga::{Downstreams, Sagas};

/// One line of an order: a product and a quantity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The product.
    pub sku: String,
    /// How many.
    pub qty: u64,
}

/// A JSON error: `{"error": code, "detail": detail}` with `status`.
pub fn json_error(
    status: StatusCode,
    code: &str,
    detail: &str,
) -> (StatusCode, Json<serde_json::Value>) {
    (status, Json(json!({ "error": code, "detail": detail })))
}

/// A JSON body as `T`, or a 400 naming what is wrong (the field, with its path).
#[allow(clippy::result_large_err)]
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    if body.is_empty() {
        return Err(json_error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body must be a JSON object",
        )
        .into_response());
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let detail = if path == "." || path.is_empty() {
            inner.to_string()
        } else {
            format!("`{path}`: {inner}")
        };
        json_error(StatusCode::BAD_REQUEST, "invalid_body", &detail).into_response()
    })
}

/// Each downstream's stack settings, from the optional TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The order service's stack.
    #[serde(default)]
    pub order: StackConfig,
    /// The payment service's stack.
    #[serde(default)]
    pub payment: StackConfig,
    /// The inventory service's stack.
    #[serde(default)]
    pub inventory: StackConfig,
}

/// The stacks' default total timeout (also the load script's tower-`Timeout` reference route's).
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The gateway's defaults for a downstream's stack, before the file: tighter than the
/// library's (an interactive API): 16 calls in flight, 5 s in all, 1 s per attempt, 3
/// attempts from 50 ms, a break of 5 s after 5 failures in a row (or half of the last 100 calls
/// once 20 were seen).
pub fn stack_defaults(
    name: &'static str,
    config: &StackConfig,
) -> bulwark::stack::StackBuilder<bulwark::classify::HttpClassifier, bulwark::retry::HttpPolicy> {
    StackLayer::http(name)
        .max_concurrent(16)
        .total_timeout(TOTAL_TIMEOUT)
        .attempt_timeout(Duration::from_secs(1))
        .retry(|r| {
            r.max_attempts(3)
                .backoff(Duration::from_millis(50), 2.0, Duration::from_millis(500))
        })
        .circuit_breaker(|b| {
            b.consecutive_failures(5)
                .break_duration(Duration::from_secs(5))
        })
        .config(config)
}

/// The process's metrics recorder (installed once), and its Prometheus text.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (a test harness); then ours only
            // renders what it saw, which is nothing, and that is still a valid page.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// How long a client may take to send a request's head before its connection is closed
/// (against slow-header clients).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head (start line and headers) a connection takes; a larger head is
/// answered 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How long a shutdown waits for the requests in flight before it closes their connections.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` resolves, draining requests in flight, with
/// the default [`HEADER_READ_TIMEOUT`] and [`DRAIN_TIMEOUT`].
pub fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    serve_with(
        listener,
        router,
        shutdown,
        HEADER_READ_TIMEOUT,
        DRAIN_TIMEOUT,
    )
}

/// As [`serve`], with `header_read_timeout` and `drain`. HTTP/1 connections through hyper,
/// with the head size bounded by [`MAX_HEAD_BYTES`]; each request carries its peer's address
/// as `ConnectInfo<SocketAddr>`. On shutdown the listener closes, idle connections close, and
/// requests in flight get `drain` to finish; connections still busy then are closed.
pub fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    header_read_timeout: Duration,
    drain: Duration,
) -> JoinHandle<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        // The connections' tasks, reaped as they end, to be closed if the drain runs out.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (stream, peer) = tokio::select! {
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        // Out of file descriptors, say: wait a little rather than spin.
                        eprintln!("accept error: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let router = router.clone();
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let mut request = request.map(axum::body::Body::new);
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    tower::ServiceExt::oneshot(router.clone(), request)
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .max_header_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            connections.spawn(async move {
                let _ = connection.await;
            });
        }
        drop(listener);
        // Drain: requests in flight finish; idle connections close. Then close what is left.
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            while connections.try_join_next().is_some() {}
            eprintln!(
                "{} connections still busy after {drain:?}: closing them",
                connections.len()
            );
        }
        connections.shutdown().await;
    })
}

/// Runs a downstream's router on `addr`, with its faults: while `down`, the listener is
/// closed (connections are refused), and it opens again on the same address after.
pub async fn serve_downstream(
    addr: SocketAddr,
    router: Router,
    faults: Arc<Faults>,
) -> Result<(SocketAddr, JoinHandle<()>), BoxError> {
    let router = router.layer(axum::middleware::from_fn_with_state(
        faults.clone(),
        faults::inject,
    ));
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut down = faults.watch_down();
        let mut listener = Some(listener);
        loop {
            let current = match listener.take() {
                Some(l) => l,
                None => match TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let mut going_down = down.clone();
            let server = serve(current, router.clone(), async move {
                let _ = going_down.wait_for(|d| *d).await;
            });
            let _ = server.await;
            // Down: stay closed until the switch is off again.
            if down.wait_for(|d| !*d).await.is_err() {
                return;
            }
        }
    });
    Ok((addr, task))
}

/// Where the embedded services run, and their state, for tests and checks.
#[derive(Debug)]
pub struct Embedded {
    /// The gateway's address.
    pub gateway: SocketAddr,
    /// The order service's address.
    pub order: SocketAddr,
    /// The payment service's address.
    pub payment: SocketAddr,
    /// The inventory service's address.
    pub inventory: SocketAddr,
    /// The order service's data.
    pub orders: orders::Orders,
    /// The payment service's data.
    pub payments: payment::Payment,
    /// The inventory service's data.
    pub stock: inventory::Inventory,
    /// The switches.
    pub faults: FaultRegistry,
    /// The inventory's stock, as a multiple of the catalog's.
    pub stock_scale: u64,
    /// The gateway's shared state.
    pub state: api::AppState,
    shutdown: tokio::sync::watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl Embedded {
    /// Stops the gateway, draining requests in flight.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        let _ = self.server.await;
    }
}

/// The gateway's options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the gateway listens.
    pub listen: SocketAddr,
    /// Each downstream's stack settings.
    pub config: GatewayConfig,
    /// The per-request timeout of the gateway's own API.
    pub request_timeout: Duration,
    /// How often deferred compensations are retried.
    pub compensation_retry: Duration,
    /// The embedded inventory's stock, as a multiple of the catalog's (for load and soak runs).
    pub stock_scale: u64,
    /// How long a client may take to send a request's head.
    pub header_read_timeout: Duration,
    /// Mount `GET /bench/raw/catalog` (the catalog with no layer) and
    /// `GET /bench/timeout/catalog` (with tower's `Timeout` alone) for load tests.
    pub bench_routes: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            config: GatewayConfig::default(),
            request_timeout: Duration::from_secs(10),
            compensation_retry: Duration::from_millis(500),
            stock_scale: 1,
            header_read_timeout: HEADER_READ_TIMEOUT,
            bench_routes: false,
        }
    }
}

/// Builds the three clients.
pub fn downstreams(
    config: &GatewayConfig,
    order: &str,
    payment: &str,
    inventory: &str,
) -> Result<Downstreams, BoxError> {
    // The stacks register their metrics when built: the recorder must be in place first.
    let _ = metrics_handle();
    let make = |name: &'static str, url: &str, cfg: &StackConfig| -> Result<Downstream, BoxError> {
        let stack = stack_defaults(name, cfg)
            .build_http()
            .map_err(|e| format!("[{name}] stack: {e}"))?;
        Ok(Downstream::new(name, url, stack))
    };
    Ok(Downstreams {
        order: make("order", order, &config.order)?,
        payment: make("payment", payment, &config.payment)?,
        inventory: make("inventory", inventory, &config.inventory)?,
    })
}

/// Starts the gateway in front of `downstreams`; `faults` only in embedded mode.
pub async fn start_gateway(
    options: &Options,
    downstreams: Downstreams,
    faults: Option<FaultRegistry>,
) -> Result<
    (
        SocketAddr,
        api::AppState,
        tokio::sync::watch::Sender<bool>,
        JoinHandle<()>,
    ),
    BoxError,
> {
    let sagas = Arc::new(Sagas::default());
    let deferred = tokio::spawn(
        sagas
            .clone()
            .run_deferred(downstreams.clone(), options.compensation_retry),
    );
    let metrics = metrics_handle();
    // Histograms are folded only when asked to: do it regularly, not only when scraped.
    let upkeep = tokio::spawn({
        let metrics = metrics.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        }
    });
    let inventory_base = downstreams.inventory.base().to_owned();
    let state = api::AppState {
        downstreams,
        sagas: sagas.clone(),
        faults,
        metrics,
        saga_wait: options.request_timeout.mul_f64(0.9),
        bench: options.bench_routes.then(|| api::BenchClients {
            raw: client::Downstream::bare("inventory-bare", &inventory_base),
            timeout: client::Downstream::bare_with_timeout(
                "inventory-timeout",
                &inventory_base,
                TOTAL_TIMEOUT,
            ),
        }),
    };
    let listener = TcpListener::bind(options.listen).await?;
    let addr = listener.local_addr()?;
    let (shutdown, mut stop) = tokio::sync::watch::channel(false);
    let router = api::router(state.clone(), options.request_timeout);
    let server = serve_with(
        listener,
        router,
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
        options.header_read_timeout,
        DRAIN_TIMEOUT,
    );
    // After the HTTP requests have drained: let the sagas under way finish, then stop the
    // background work. Compensations still waiting for their services are reported.
    let server = tokio::spawn(async move {
        let _ = server.await;
        sagas.wait_idle(Duration::from_secs(30)).await;
        sagas.stop_deferred(&deferred);
        upkeep.abort();
    });
    Ok((addr, state, shutdown, server))
}

/// Starts the three downstream services (each on its own loopback port, with its own data
/// and faults) and the gateway in front of them.
pub async fn start_embedded(options: &Options) -> Result<Embedded, BoxError> {
    let faults = FaultRegistry::new(&["inventory", "order", "payment"]);
    let (orders, payments, stock) = (
        orders::Orders::default(),
        payment::Payment::default(),
        inventory::Inventory::with_stock_scale(options.stock_scale),
    );
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let fault = |name: &str| faults.get(name).cloned().ok_or("unknown service");
    let (order, _) = serve_downstream(loopback, orders.router(), fault("order")?).await?;
    let (payment, _) = serve_downstream(loopback, payments.router(), fault("payment")?).await?;
    let (inventory, _) = serve_downstream(loopback, stock.router(), fault("inventory")?).await?;
    let ds = downstreams(
        &options.config,
        &format!("http://{order}"),
        &format!("http://{payment}"),
        &format!("http://{inventory}"),
    )?;
    let (gateway, state, shutdown, server) =
        start_gateway(options, ds, Some(faults.clone())).await?;
    Ok(Embedded {
        gateway,
        order,
        payment,
        inventory,
        orders,
        payments,
        stock,
        faults,
        stock_scale: options.stock_scale,
        state,
        shutdown,
        server,
    })
}
