//! The embedded gateway through real sockets on 127.0.0.1:0 with a real HTTP client: the
//! saga's outcomes and compensations, a breaker opening and closing, retries without double
//! charges, degraded aggregation, deferred compensations, and bad input. Real time, with
//! short timeouts and breaks from a test config, every test bounded.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{assert_consistent, eventually, eventually_within, start, Http};
use gateway::Options;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_happy_order_is_confirmed_and_aggregated() {
    let gw = start().await;
    let http = Http::new(&gw);
    let a = http.order("alice", "sku-rope", 2).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["status"], "confirmed");
    assert_eq!(a.body["total_cents"], 2_500);
    assert!(a.headers.contains_key("x-request-id"));
    let id = a.body["order_id"].as_str().unwrap().to_owned();

    let agg = http
        .send(Method::GET, &format!("/api/orders/{id}"), None)
        .await;
    assert_eq!(agg.status, StatusCode::OK);
    assert_eq!(agg.body["order"]["status"], "confirmed");
    assert_eq!(agg.body["payment"]["status"], "captured");
    assert_eq!(agg.body["reservation"]["status"], "reserved");
    assert_eq!(agg.body["degraded"], json!([]));

    let saga = http
        .send(
            Method::GET,
            &format!("/api/sagas/{}", a.body["saga_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(saga.body["state"], "confirmed");
    assert_eq!(saga.body["steps"].as_array().unwrap().len(), 4);
    let catalog = http.send(Method::GET, "/api/catalog", None).await;
    let rope = catalog.body["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["sku"] == "sku-rope")
        .unwrap()
        .clone();
    assert_eq!(rope["available"], 98);
    assert_consistent(&gw);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_and_declined_payments_are_compensated() {
    let gw = start().await;
    let http = Http::new(&gw);

    let a = http.order("bob", "sku-rare", 2).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert_eq!(a.body["failed_step"], "reserve_inventory");
    assert_eq!(a.body["reason"], "insufficient_stock");

    let a = http.order("declined-bob", "sku-lamp", 1).await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED, "{}", a.body);
    assert_eq!(a.body["failed_step"], "charge_payment");
    assert_eq!(a.body["saga_state"], "compensated");
    let id = a.body["order_id"].as_str().unwrap();
    let order = gw
        .orders
        .orders()
        .into_iter()
        .find(|o| o.order_id == id)
        .unwrap();
    assert_eq!(order.status, "cancelled");
    assert!(
        gw.stock.reserved().is_empty(),
        "the reservation was released"
    );
    assert_consistent(&gw);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_down_opens_its_breaker_then_it_recovers() {
    let gw = start().await;
    let http = Http::new(&gw);
    http.fault("payment", json!({ "down": true })).await;

    // The first order's three attempts are refused: the breaker trips.
    let a = http.order("carol", "sku-rope", 1).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.body["failed_step"], "charge_payment");
    let ready = http.send(Method::GET, "/health/ready", None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["downstreams"]["payment"]["breaker"], "open");

    // Later orders fail fast, with Retry-After, and leave nothing reserved.
    let a = http.order("carol", "sku-rope", 1).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.body["reason"], "payment unavailable: circuit_open");
    assert_eq!(a.headers["retry-after"], "1");
    assert!(gw.stock.reserved().is_empty());

    // Back up: after the break, a probe succeeds and the breaker closes.
    http.send(Method::DELETE, "/admin/faults/payment", None)
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let a = http.order("carol", "sku-rope", 1).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let ready = http.send(Method::GET, "/health/ready", None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(ready.body["downstreams"]["payment"]["breaker"], "closed");

    // The refunds deferred while payment was down have run.
    let sagas = gw.state.sagas.clone();
    eventually("deferred compensations ran", || sagas.pending() == 0).await;
    assert_consistent(&gw);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_payment_is_retried_without_a_double_charge() {
    let gw = start().await;
    let http = Http::new(&gw);
    // The next charge is made, but its answer takes 1.5 s: past the 1 s attempt timeout. The
    // retry, with the same Idempotency-Key, must get that charge back, not make another.
    http.fault(
        "payment",
        json!({ "delay_response_ms": 1500, "slow_requests": 1 }),
    )
    .await;
    let a = http.order("dave", "sku-anvil", 1).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let retries = gw
        .state
        .downstreams
        .payment
        .handle()
        .retry()
        .unwrap()
        .retries();
    assert_eq!(retries, 1, "the slow attempt was retried once");
    let id = a.body["order_id"].as_str().unwrap();
    let charges: Vec<_> = gw
        .payments
        .charges()
        .into_iter()
        .filter(|c| c.order_id == id)
        .collect();
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_consistent(&gw);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregation_survives_a_downstream_that_is_down() {
    let gw = start().await;
    let http = Http::new(&gw);
    let a = http.order("erin", "sku-rope", 1).await;
    assert_eq!(a.status, StatusCode::CREATED);
    let id = a.body["order_id"].as_str().unwrap().to_owned();

    http.fault("payment", json!({ "down": true })).await;
    let agg = http
        .send(Method::GET, &format!("/api/orders/{id}"), None)
        .await;
    assert_eq!(agg.status, StatusCode::OK, "{}", agg.body);
    assert_eq!(agg.body["order"]["status"], "confirmed");
    assert_eq!(agg.body["reservation"]["status"], "reserved");
    assert_eq!(agg.body["payment"], Value::Null);
    assert_eq!(agg.body["degraded"][0]["section"], "payment");

    let missing = http.send(Method::GET, "/api/orders/ord-999", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["error"], "not_found");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_waits_for_its_service_and_completes_when_it_is_back() {
    let gw = start().await;
    let http = Http::new(&gw);
    // The charge is slow (but within the attempt timeout) and declined; meanwhile
    // inventory goes down, so the release must wait.
    http.fault("payment", json!({ "latency_ms": 600 })).await;
    let order = tokio::spawn({
        let http = Http::new(&gw);
        async move { http.order("declined-frank", "sku-lamp", 2).await }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    http.fault("inventory", json!({ "down": true })).await;
    let a = order.await.unwrap();
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED, "{}", a.body);
    assert_eq!(a.body["saga_state"], "compensating");
    assert_eq!(gw.stock.reserved().len(), 1, "not released yet");
    let saga_id = a.body["saga_id"].as_str().unwrap().to_owned();
    let saga = http
        .send(Method::GET, &format!("/api/sagas/{saga_id}"), None)
        .await;
    assert!(saga.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "release_inventory" && s["status"] == "pending"));

    http.send(Method::DELETE, "/admin/faults/inventory", None)
        .await;
    let stock = gw.stock.clone();
    eventually("the reservation was released", || {
        stock.reserved().is_empty()
    })
    .await;
    let sagas = gw.state.sagas.clone();
    eventually("the saga is compensated", || {
        sagas
            .get(&saga_id)
            .is_some_and(|s| s.state == "compensated")
    })
    .await;
    assert_consistent(&gw);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_a_json_body_naming_the_problem() {
    let gw = start().await;
    let http = Http::new(&gw);
    let cases = [
        ("{", StatusCode::BAD_REQUEST, "EOF"),
        (
            r#"{"items":[]}"#,
            StatusCode::BAD_REQUEST,
            "missing field `customer_id`",
        ),
        (
            r#"{"customer_id":"x","items":[{"sku":"sku-rope","qty":"two"}]}"#,
            StatusCode::BAD_REQUEST,
            "`items[0].qty`",
        ),
        (
            r#"{"customer_id":"x","items":[{"sku":"sku-rope","qty":0}]}"#,
            StatusCode::BAD_REQUEST,
            "`items[0].qty` must be between 1 and 1000",
        ),
        (
            r#"{"customer_id":"x","items":[]}"#,
            StatusCode::BAD_REQUEST,
            "`items`",
        ),
        (
            r#"{"customer_id":"x","items":[{"sku":"sku-lamp","qty":5},{"sku":"sku-lamp","qty":5}]}"#,
            StatusCode::BAD_REQUEST,
            "`items[1].sku` repeats `sku-lamp`",
        ),
        (
            r#"{"customer_id":"x","items":[],"coupon":"FREE"}"#,
            StatusCode::BAD_REQUEST,
            "unknown field `coupon`",
        ),
    ];
    for (body, status, needle) in cases {
        let a = http
            .send(Method::POST, "/api/orders", Some(body.to_owned()))
            .await;
        assert_eq!(a.status, status, "{body}: {}", a.body);
        assert!(
            a.body["detail"].as_str().unwrap().contains(needle),
            "{body}: {}",
            a.body
        );
    }
    let big = format!(r#"{{"customer_id":"{}","items":[]}}"#, "x".repeat(20_000));
    let a = http.send(Method::POST, "/api/orders", Some(big)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.body["error"], "body_too_large");

    let a = http.send(Method::GET, "/no/such/route", None).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let a = http.send(Method::DELETE, "/api/catalog", None).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);

    let a = http
        .send(
            Method::PUT,
            "/admin/faults/payment",
            Some(r#"{"error_rate":2}"#.into()),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body["detail"].as_str().unwrap().contains("`error_rate`"));
    let a = http
        .send(
            Method::PUT,
            "/admin/faults/payment",
            Some(r#"{"path":""}"#.into()),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body["detail"].as_str().unwrap().contains("`path`"));
    let a = http
        .send(Method::PUT, "/admin/faults/billing", Some("{}".into()))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_consistent(&gw);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_and_trace_context_reach_the_downstreams() {
    let gw = start().await;
    let http = Http::new(&gw);
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("{}/api/catalog", http.base))
        .header("x-request-id", "req-42")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = http.client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let (id, trace) = gw.faults.get("inventory").unwrap().last_seen();
    assert_eq!(id.as_deref(), Some("req-42"));
    assert_eq!(
        trace.as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    gw.shutdown().await;
}

/// Shutdown lets a request in flight finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_requests_in_flight() {
    let gw = start().await;
    let http = Http::new(&gw);
    http.fault("payment", json!({ "latency_ms": 400 })).await;
    let order = tokio::spawn({
        let http = Http::new(&gw);
        async move { http.order("gina", "sku-rope", 1).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .expect("shut down in time");
    let a = order.await.unwrap();
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
}

/// Four processes' worth: the services alone and the gateway pointed at them. Fault
/// controls do not exist then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_against_external_services_without_fault_controls() {
    let mut urls = Vec::new();
    for router in [
        gateway::orders::Orders::default().router(),
        gateway::payment::Payment::default().router(),
        gateway::inventory::Inventory::default().router(),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        gateway::serve(listener, router, std::future::pending());
    }
    let options = Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Options::default()
    };
    let ds = gateway::downstreams(&options.config, &urls[0], &urls[1], &urls[2]).unwrap();
    let (addr, _state, stop, server) = gateway::start_gateway(&options, ds, None).await.unwrap();
    let http = Http {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: format!("http://{addr}"),
    };
    let a = http.order("hal", "sku-anvil", 1).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let a = http
        .send(
            Method::PUT,
            "/admin/faults/payment",
            Some(r#"{"down":true}"#.into()),
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::NOT_FOUND,
        "no fault controls outside embedded mode"
    );
    stop.send_replace(true);
    server.await.unwrap();
}

/// A client that gives up does not stop the saga half-way: it runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_outlives_the_client_that_gave_up() {
    let gw = start().await;
    let http = Http::new(&gw);
    http.fault("payment", json!({ "latency_ms": 600 })).await;
    let body = json!({ "customer_id": "ivy", "items": [{ "sku": "sku-anvil", "qty": 1 }] });
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{}/api/orders", http.base))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let gave_up =
        tokio::time::timeout(Duration::from_millis(200), http.client.request(request)).await;
    assert!(gave_up.is_err(), "the client gave up before the answer");
    let orders = gw.orders.clone();
    eventually("the order was confirmed", || {
        orders
            .orders()
            .iter()
            .any(|o| o.customer_id == "ivy" && o.status == "confirmed")
    })
    .await;
    let sagas = gw.state.sagas.clone();
    eventually("no saga runs", || sagas.running() == 0).await;
    assert_consistent(&gw);
    gw.shutdown().await;
}

/// A step whose effect happened but whose answer was lost is undone all the same: the
/// reservations made while every inventory answer came too late are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_whose_answer_was_lost_is_released() {
    let gw = start().await;
    let http = Http::new(&gw);
    http.fault("inventory", json!({ "delay_response_ms": 1500 }))
        .await;
    let a = http.order("jo", "sku-lamp", 2).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.body["failed_step"], "reserve_inventory");
    http.send(Method::DELETE, "/admin/faults/inventory", None)
        .await;
    let stock = gw.stock.clone();
    eventually("nothing left reserved", || stock.reserved().is_empty()).await;
    let sagas = gw.state.sagas.clone();
    eventually("compensations done", || sagas.pending() == 0).await;
    assert_consistent(&gw);
    gw.shutdown().await;
}

/// A client that sends its request head too slowly is cut off; one whose head is too large
/// is answered 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_request_heads_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = start().await;

    let mut slow = tokio::net::TcpStream::connect(gw.gateway).await.unwrap();
    slow.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The head never ends: the connection is closed after the header read timeout (2 s
    // in the test config).
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was closed in time");

    let mut big = tokio::net::TcpStream::connect(gw.gateway).await.unwrap();
    let head = format!(
        "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(gateway::MAX_HEAD_BYTES + 1024)
    );
    let _ = big.write_all(head.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), big.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    gw.shutdown().await;
}

/// What a downstream failure looks like to a client: a reason, never the internal error text
/// (addresses, library messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_error_text_is_not_passed_on() {
    let gw = start().await;
    let http = Http::new(&gw);
    http.fault("payment", json!({ "down": true })).await;
    http.fault("inventory", json!({ "down": true })).await;
    let answers = [
        http.order("kim", "sku-rope", 1).await,
        http.send(Method::GET, "/api/catalog", None).await,
        http.send(Method::GET, "/api/orders/ord-1", None).await,
    ];
    for a in answers {
        let text = a.body.to_string();
        for leak in ["127.0.0.1", "refused", "hyper", "tcp connect", "os error"] {
            assert!(!text.to_lowercase().contains(leak), "`{leak}` in {text}");
        }
    }
    gw.shutdown().await;
}

/// Any `Idempotency-Key` bytes: the payment service answers (a charge, or a 400 naming the
/// header, or a 422 for a key reused with another charge), never panics, and an order is
/// charged at most once.
#[tokio::test]
async fn any_idempotency_key_is_handled_safely() {
    use tower::ServiceExt;
    let payment = gateway::payment::Payment::default();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..300u32 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 260) as usize;
        let key: Vec<u8> = (0..len)
            .map(|j| (seed.rotate_left(j as u32) & 0xFF) as u8)
            .collect();
        let Ok(value) = hyper::header::HeaderValue::from_bytes(&key) else {
            continue;
        };
        let body = json!({ "order_id": format!("o-{i}"), "customer_id": "c", "amount_cents": 100 });
        for _ in 0..2 {
            let request = Request::post("/charges")
                .header("idempotency-key", value.clone())
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            let response = payment.router().oneshot(request).await.unwrap();
            let status = response.status();
            assert!(
                matches!(status.as_u16(), 200 | 201 | 400 | 422),
                "key {key:?}: {status}"
            );
        }
    }
    // However many times a key was sent, one charge per order at most.
    let charges = payment.charges();
    let mut orders: Vec<_> = charges.iter().map(|c| c.order_id.clone()).collect();
    orders.sort();
    orders.dedup();
    assert_eq!(orders.len(), charges.len());
}

/// A deferred compensation that a retry pass is running still counts as waiting: `pending`
/// (and readiness) never say "none" while its effect is not done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_being_retried_still_counts_as_waiting() {
    let gw = start().await;
    let http = Http::new(&gw);
    http.fault("payment", json!({ "latency_ms": 600 })).await;
    let order = tokio::spawn({
        let http = Http::new(&gw);
        async move { http.order("declined-lee", "sku-lamp", 1).await }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    http.fault("inventory", json!({ "down": true })).await;
    let a = order.await.unwrap();
    assert_eq!(a.body["saga_state"], "compensating", "{}", a.body);
    // Back, but slow: the release takes 700 ms inside a retry pass.
    http.fault("inventory", json!({ "latency_ms": 700 })).await;
    let sagas = gw.state.sagas.clone();
    let started = tokio::time::Instant::now();
    loop {
        let pending = sagas.pending();
        let reserved = gw.stock.reserved().len();
        if pending == 0 {
            assert_eq!(
                reserved, 0,
                "no compensation said to wait, yet the stock is held"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_consistent(&gw);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_load_scripts_reference_routes_serve_the_catalog_only_when_mounted() {
    let gw = start().await;
    let http = Http::new(&gw);
    for path in ["/bench/raw/catalog", "/bench/timeout/catalog"] {
        let a = http.send(Method::GET, path, None).await;
        assert_eq!(
            a.status,
            StatusCode::NOT_FOUND,
            "{path} without --bench-routes"
        );
    }
    gw.shutdown().await;

    let gw = common::start_with_bench_routes().await;
    let http = Http::new(&gw);
    let catalog = http.send(Method::GET, "/api/catalog", None).await;
    assert_eq!(catalog.status, StatusCode::OK);
    assert!(catalog.body["products"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    for path in ["/bench/raw/catalog", "/bench/timeout/catalog"] {
        let a = http.send(Method::GET, path, None).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.body, catalog.body, "{path} serves what /api/catalog does");
    }
    gw.shutdown().await;
}

/// A confirm that landed but whose answer was lost: the saga cancels first, as a fence, finds
/// the order confirmed, and undoes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_whose_answer_was_lost_is_found_confirmed_and_nothing_is_undone() {
    let gw = start().await;
    let http = Http::new(&gw);
    // Only the confirms' answers are late (past the 1 s attempt timeout); the cancel is not.
    http.fault(
        "order",
        json!({ "delay_response_ms": 1500, "path": "/confirm" }),
    )
    .await;
    let a = http.order("jo", "sku-lamp", 1).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["status"], "confirmed");
    let saga = http
        .send(
            Method::GET,
            &format!("/api/sagas/{}", a.body["saga_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(saga.body["state"], "confirmed", "{}", saga.body);
    let steps = saga.body["steps"].as_array().unwrap();
    let last = steps.last().unwrap();
    assert_eq!(last["name"], "confirm_order", "{steps:?}");
    assert_eq!(
        last["detail"], "confirmed; its answer was lost",
        "{steps:?}"
    );
    assert!(
        steps
            .iter()
            .all(|s| s["name"] != "void_payment" && s["name"] != "release_inventory"),
        "nothing undone: {steps:?}"
    );
    let id = a.body["order_id"].as_str().unwrap().to_owned();
    let agg = http
        .send(Method::GET, &format!("/api/orders/{id}"), None)
        .await;
    assert_eq!(agg.body["payment"]["status"], "captured");
    assert_eq!(agg.body["reservation"]["status"], "reserved");

    let faults = gw.faults.get("order").unwrap().clone();
    eventually("the late confirms answered", || faults.in_flight() == 0).await;
    assert_consistent(&gw);
    gw.shutdown().await;
}

/// A confirm that had not landed when the gateway gave up on it: the cancel goes first and
/// fences it, the saga compensates, and the confirm that arrives later is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_that_lands_after_the_cancel_is_refused_and_the_saga_compensated() {
    let gw = start().await;
    let http = Http::new(&gw);
    // Every confirm is held before it acts for longer than the gateway keeps trying, and
    // then acts all the same.
    http.fault(
        "order",
        json!({ "latency_ms": 6000, "path": "/confirm", "finish_when_abandoned": true }),
    )
    .await;
    let a = http.order("jo", "sku-lamp", 1).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.body["failed_step"], "confirm_order");
    let id = a.body["order_id"].as_str().unwrap().to_owned();
    let faults = gw.faults.get("order").unwrap().clone();
    // The saga gave up after about 3 s; the confirms are held until about 6 s.
    assert!(
        faults.in_flight() >= 1,
        "the confirms are still held in the order service"
    );

    // The held confirms reach the order service after the cancel: refused.
    eventually_within(
        "the held confirms answered",
        Duration::from_secs(15),
        || faults.in_flight() == 0,
    )
    .await;
    let order = gw
        .orders
        .orders()
        .into_iter()
        .find(|o| o.order_id == id)
        .unwrap();
    assert_eq!(order.status, "cancelled");
    let sagas = gw.state.sagas.clone();
    eventually("compensations done", || sagas.pending() == 0).await;
    assert_consistent(&gw);
    gw.shutdown().await;
}

/// A request still running when the drain window ends has its connection closed: a shutdown
/// does not wait on it for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_running_after_the_drain_window_is_cut_off() {
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let entered = Arc::new(tokio::sync::Notify::new());
    let router = {
        let entered = entered.clone();
        axum::Router::new().route(
            "/slow",
            axum::routing::get(move || {
                let entered = entered.clone();
                async move {
                    entered.notify_one();
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }
            }),
        )
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = gateway::serve_with(
        listener,
        router,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(2),
        Duration::from_millis(300),
    );
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = tokio::spawn(client.get(format!("http://{addr}/slow").parse().unwrap()));
    entered.notified().await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stopped soon after the drain window")
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .expect("the client heard at once")
        .unwrap();
    assert!(
        answer.is_err(),
        "the connection was closed without an answer"
    );
}
