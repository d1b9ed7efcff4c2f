//! The timeout layer on a real HTTP call.
//!
//! Starts a small axum server on a loopback port with a fast and a slow route, then calls both
//! through a hyper-util client wrapped in bulwark's `TimeoutLayer`: the fast call answers, the
//! slow one fails with `Elapsed` after 300 ms instead of waiting the 2 s the server takes.
//!
//! ```sh
//! cargo run --example timeout_http
//! ```

use std::time::Duration;

use axum::{routing::get, Router};
use bulwark::{error, timeout::error::Elapsed, BoxError, TimeoutLayer};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // A downstream with one fast route and one slow route, on a port the OS picks.
    let downstream = Router::new()
        .route("/fast", get(|| async { "fast answer" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "slow answer"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, downstream).await });

    // The client: a hyper-util connection pool, every call bounded to 300 ms.
    let client = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(300)))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    let mut all_as_expected = true;
    for path in ["/fast", "/slow"] {
        let request = Request::get(format!("http://{addr}{path}")).body(Empty::new())?;
        let started = tokio::time::Instant::now();
        let result = client.clone().oneshot(request).await;
        let took = started.elapsed();
        match result {
            Ok(response) => {
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                println!("GET {path}: {status} {body:?} in {took:.0?}");
                all_as_expected &= path == "/fast";
            }
            Err(err) if error::is::<Elapsed>(&*err) => {
                println!("GET {path}: gave up: {err} (after {took:.0?})");
                all_as_expected &= path == "/slow";
            }
            Err(err) => {
                println!("GET {path}: failed: {err}");
                all_as_expected = false;
            }
        }
    }

    if all_as_expected {
        println!("ok: the fast call answered and the slow call was cut off by the timeout");
        Ok(())
    } else {
        Err("unexpected result: see above".into())
    }
}
