//! Helpers for the gateway's tests: an embedded gateway with short timeouts, a real HTTP
//! client, and the saga invariant. Each test binary uses what it needs.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use gateway::{start_embedded, Embedded, GatewayConfig, Options};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// Short timeouts and breaks, so faults show in a test's time.
pub const CONFIG: &str = r#"
[payment]
attempt_timeout = "1s"
total_timeout = "4s"
retry = { max_attempts = 3, backoff = { base = "20ms", factor = 2.0, max = "100ms" } }
circuit_breaker = { consecutive_failures = 3, break_duration = "700ms", success_threshold = 1 }

[inventory]
attempt_timeout = "1s"
retry = { backoff = { base = "20ms", factor = 2.0, max = "100ms" } }
circuit_breaker = { consecutive_failures = 3, break_duration = "700ms" }

[order]
attempt_timeout = "1s"
"#;

pub async fn start() -> Embedded {
    start_scaled(1).await
}

/// An embedded gateway whose stock is `scale` times the catalog's.
pub async fn start_scaled(scale: u64) -> Embedded {
    start_with(CONFIG, scale).await
}

/// An embedded gateway with `config` (TOML) and stock `scale` times the catalog's.
pub async fn start_with(config: &str, scale: u64) -> Embedded {
    start_options(config, scale, false).await
}

/// An embedded gateway with the load script's reference routes mounted.
pub async fn start_with_bench_routes() -> Embedded {
    start_options(CONFIG, 1, true).await
}

async fn start_options(config: &str, scale: u64, bench_routes: bool) -> Embedded {
    let config: GatewayConfig = toml::from_str(config).expect("test config");
    let options = Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        config,
        request_timeout: Duration::from_secs(8),
        compensation_retry: Duration::from_millis(100),
        stock_scale: scale,
        header_read_timeout: Duration::from_secs(2),
        bench_routes,
    };
    start_embedded(&options).await.expect("gateway starts")
}

pub struct Http {
    pub client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    pub base: String,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Value,
}

impl Http {
    pub fn new(gw: &Embedded) -> Self {
        Http {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(1))
                .build_http(),
            base: format!("http://{}", gw.gateway),
        }
    }

    /// As [`send`](Self::send), with a failure to get an answer (in time) as an error.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        within: Duration,
    ) -> Result<Answer, String> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(within, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {within:?}"))?
            .map_err(|e| format!("transport error: {e}"))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = tokio::time::timeout(within, response.into_body().collect())
            .await
            .map_err(|_| "body not read in time".to_owned())?
            .map_err(|e| format!("body error: {e}"))?
            .to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<String>) -> Answer {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(15), self.client.request(request))
            .await
            .expect("answered in time")
            .expect("a response");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn order(&self, customer: &str, sku: &str, qty: u64) -> Answer {
        let body = json!({ "customer_id": customer, "items": [{ "sku": sku, "qty": qty }] });
        self.send(Method::POST, "/api/orders", Some(body.to_string()))
            .await
    }

    pub async fn fault(&self, service: &str, settings: Value) {
        let a = self
            .send(
                Method::PUT,
                &format!("/admin/faults/{service}"),
                Some(settings.to_string()),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
}

/// Waits, up to 10 s, for `check` to hold.
pub async fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(10), check).await;
}

/// Waits, up to `limit`, for `check` to hold.
pub async fn eventually_within(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let polls = (limit.as_millis() / 50).max(1);
    for _ in 0..polls {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

/// The saga invariant: no reservation and no charge without a confirmed order, no
/// confirmed order without both, nobody charged twice for an order.
pub fn assert_consistent(gw: &Embedded) {
    use std::collections::{HashMap, HashSet};
    // Sets, so that a soak's hundreds of thousands of records check in linear time.
    let orders = gw.orders.orders();
    let confirmed: HashSet<&str> = orders
        .iter()
        .filter(|o| o.status == "confirmed")
        .map(|o| o.order_id.as_str())
        .collect();
    let reserved = gw.stock.reserved();
    let reserved_orders: HashSet<&str> = reserved.iter().map(|r| r.order_id.as_str()).collect();
    for r in &reserved {
        assert!(
            confirmed.contains(r.order_id.as_str()),
            "reservation {} left behind",
            r.reservation_id
        );
    }
    let charges = gw.payments.charges();
    let mut captured: HashMap<&str, u32> = HashMap::new();
    for c in charges.iter().filter(|c| c.status == "captured") {
        assert!(
            confirmed.contains(c.order_id.as_str()),
            "charge {} without a confirmed order",
            c.charge_id
        );
        *captured.entry(c.order_id.as_str()).or_default() += 1;
    }
    for (order, n) in &captured {
        assert_eq!(*n, 1, "order {order} charged twice");
    }
    for o in &confirmed {
        assert!(
            captured.contains_key(o),
            "confirmed order {o} without a charge"
        );
        assert!(
            reserved_orders.contains(o),
            "confirmed order {o} without stock"
        );
    }
    // Stock is conserved: what is available plus what is reserved is what there was.
    let initial = gateway::inventory::Inventory::catalog(gw.stock_scale);
    let mut held: HashMap<&str, u64> = HashMap::new();
    for item in reserved.iter().flat_map(|r| r.items.iter()) {
        *held.entry(item.sku.as_str()).or_default() += item.qty;
    }
    for p in gw.stock.products() {
        let before = initial.iter().find(|i| i.sku == p.sku).unwrap().available;
        let reserved = held.get(p.sku.as_str()).copied().unwrap_or(0);
        assert_eq!(p.available + reserved, before, "stock of {}", p.sku);
    }
    // Once no saga runs and no compensation waits, no order is left pending.
    if gw.state.sagas.running() == 0 && gw.state.sagas.pending() == 0 {
        for o in &orders {
            assert_ne!(o.status, "pending", "order {} left pending", o.order_id);
        }
    }
}
