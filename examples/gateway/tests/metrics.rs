//! `/metrics` in a process of its own (the metrics recorder is global): bulwark's metrics for
//! each downstream and the gateway's own, as Prometheus text, changing as a breaker opens.

use std::time::Duration;

use gateway::{start_embedded, GatewayConfig, Options};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_each_downstreams_stack_and_the_gateways_requests() {
    let config: GatewayConfig = toml::from_str(
        "[payment]\ncircuit_breaker = { consecutive_failures = 3, break_duration = \"30s\" }\nretry = { backoff = { base = \"10ms\", factor = 2.0, max = \"50ms\" } }",
    )
    .unwrap();
    let options = Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        config,
        request_timeout: Duration::from_secs(8),
        compensation_retry: Duration::from_secs(60),
        stock_scale: 1,
        header_read_timeout: Duration::from_secs(2),
        bench_routes: false,
    };
    let gw = start_embedded(&options).await.unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(1))
        .build_http();
    let base = format!("http://{}", gw.gateway);
    let send = |method: Method, path: &str, body: &str| {
        let request = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let client = client.clone();
        async move {
            let response = client.request(request).await.unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        }
    };
    let order = r#"{"customer_id":"m","items":[{"sku":"sku-rope","qty":1}]}"#;
    send(Method::POST, "/api/orders", order).await;
    let text = send(Method::GET, "/metrics", "").await;
    assert!(
        text.contains("bulwark_circuit_state{name=\"payment\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("bulwark_calls_total{name=\"payment\",outcome=\"success\"}"),
        "{text}"
    );
    assert!(
        text.contains("bulwark_bulkhead_in_flight{name=\"inventory\"}"),
        "{text}"
    );
    assert!(
        text.contains(
            "gateway_requests_total{route=\"/api/orders\",method=\"POST\",status=\"201\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("gateway_request_duration_seconds"), "{text}");

    send(Method::PUT, "/admin/faults/payment", r#"{"down":true}"#).await;
    send(Method::POST, "/api/orders", order).await;
    send(Method::POST, "/api/orders", order).await;
    let text = send(Method::GET, "/metrics", "").await;
    assert!(
        text.contains("bulwark_circuit_state{name=\"payment\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("bulwark_rejections_total{name=\"payment\",reason=\"circuit_open\"}"),
        "{text}"
    );
    assert!(
        text.contains("bulwark_retries_total{name=\"payment\"}"),
        "{text}"
    );
    gw.shutdown().await;
}
