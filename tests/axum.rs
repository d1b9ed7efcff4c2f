//! axum integration: `response::handle_error` in a `HandleErrorLayer`, `StackError` as a
//! handler's error (feature `axum`), and `ServiceBuilderExt` building the stack. Driven with
//! `oneshot` on the router, on the paused clock.
#![cfg(feature = "http")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bulwark::response::handle_error;
use bulwark::{BoxError, BulkheadLayer, ServiceBuilderExt};
use http_body_util::BodyExt;
use tower::{service_fn, ServiceBuilder, ServiceExt};

async fn send(app: &Router, path: &str) -> (StatusCode, Option<String>, String) {
    let response: Response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        retry_after,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// Layers around a route: a second request meets the full bulkhead (503), the route's own
/// 30 s sleep meets a 1 s timeout (504), both problem+json through `handle_error`. (The
/// standard stack needs `Clone` requests for its retry stage, which an axum route's are not; a route takes the layers
/// one by one, a downstream client takes the stack.)
#[tokio::test(start_paused = true)]
async fn handle_error_turns_a_layer_error_into_a_problem_response() {
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error("slow-route")))
                .bulkhead(
                    BulkheadLayer::builder("slow-route")
                        .max_concurrent(1)
                        .build()
                        .unwrap(),
                )
                .timeout_after(Duration::from_secs(1)),
        );
    // The first request takes the one slot; a second at the same time is turned away.
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, "/slow").await }
    });
    tokio::task::yield_now().await;
    let (status, _, body) = send(&app, "/slow").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains(r#""stack":"slow-route","reason":"bulkhead_full""#),
        "{body}"
    );

    let (status, _, body) = first.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        body.contains(r#""stack":"slow-route","reason":"timeout""#),
        "{body}"
    );
}

#[cfg(feature = "axum")]
mod with_axum_feature {
    use super::*;
    use bulwark::response::StackError;
    use bulwark::stack::StackLayer;
    use tower::util::BoxCloneSyncService;

    type Client = BoxCloneSyncService<u32, u32, BoxError>;

    #[derive(Clone)]
    struct App {
        inventory: Client,
    }

    /// A handler that calls a downstream through its stack and answers with `?`.
    async fn stock(State(app): State<App>) -> Result<String, StackError> {
        let units = app
            .inventory
            .oneshot(7)
            .await
            .map_err(|e| StackError::new("inventory", e))?;
        Ok(format!("{units} in stock"))
    }

    /// The breaker opens after two failures; the handler's `StackError` answers 503 with
    /// `Retry-After`, then 502 for the downstream's own error (without its text), then 200.
    #[tokio::test(start_paused = true)]
    async fn a_handler_answers_with_stack_error_via_question_mark() {
        let failing = Arc::new(AtomicBool::new(true));
        let flag = failing.clone();
        let stack = StackLayer::builder("inventory")
            .no_retry()
            .circuit_breaker(|b| {
                b.consecutive_failures(2)
                    .break_duration(Duration::from_secs(5))
            })
            .build()
            .unwrap();
        let handle = stack.handle();
        let inventory = ServiceBuilder::new()
            .standard_stack(stack)
            .service(service_fn(move |n: u32| {
                let fail = flag.load(Ordering::SeqCst);
                async move {
                    if fail {
                        Err::<u32, BoxError>("connect to 10.9.8.7 refused".into())
                    } else {
                        Ok(n)
                    }
                }
            }));
        let app = Router::new().route("/stock", get(stock)).with_state(App {
            inventory: BoxCloneSyncService::new(inventory),
        });

        for _ in 0..2 {
            let (status, _, body) = send(&app, "/stock").await;
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            assert!(body.contains(r#""reason":"downstream_error""#), "{body}");
            assert!(
                !body.contains("10.9.8.7"),
                "no downstream text leaks: {body}"
            );
        }
        let (status, retry_after, body) = send(&app, "/stock").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after.as_deref(), Some("5"));
        assert!(
            body.contains(r#""stack":"inventory","reason":"circuit_open""#),
            "{body}"
        );

        failing.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(5)).await;
        let (status, _, body) = send(&app, "/stock").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "7 in stock"));
        assert!(handle.circuit_breaker().unwrap().state().admits_calls());
    }

    #[test]
    fn stack_error_keeps_its_source_chain() {
        let err = StackError::new("p", bulwark::bulkhead::error::BulkheadFull::new("p", 4))
            .fallback(StatusCode::INTERNAL_SERVER_ERROR);
        assert!(bulwark::error::rejection(&err).is_some());
        assert_eq!(err.kind().status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.stack(), "p");
        let other = StackError::new("p", "boom").fallback(StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            other.to_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
