//! The gRPC standard stack (`StackLayer::grpc`) around a real tonic `Channel`, against a real
//! tonic server on loopback that fails on demand with a chosen code and pushback: a retry that
//! succeeds, a breaker that opens on UNAVAILABLE and fails fast, the server's
//! `grpc-retry-pushback-ms`, codes that are not retried, recovery, and (feature `tonic`)
//! bulwark errors as `tonic::Status`. Paused clock throughout.
#![cfg(feature = "http")]

mod harness;

use std::time::Duration;

use bulwark::circuit_breaker::CircuitState;
use bulwark::error::{rejection, Rejection};
use bulwark::retry::ReplayBody;
use bulwark::stack::StackLayer;
use bulwark::BoxError;
use harness::{connect, next, spawn_server, CounterServer};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::Code;
use tower::ServiceBuilder;

/// The client: the gRPC stack, then the `ReplayBody` back into tonic's body, then the channel.
async fn client(
    server: &CounterServer,
    stack: bulwark::stack::HttpStackLayer<bulwark::classify::GrpcClassifier>,
) -> impl tower::Service<
    http::Request<Body>,
    Response = http::Response<Body>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    let addr = spawn_server(server.clone()).await;
    let channel = connect(addr).await;
    ServiceBuilder::new()
        .layer(stack)
        .map_request(|r: http::Request<ReplayBody<Body>>| r.map(Body::new))
        .service(channel)
}

fn stack() -> bulwark::stack::HttpStackLayer<bulwark::classify::GrpcClassifier> {
    StackLayer::grpc("counter")
        .retry(|r| {
            r.max_attempts(3)
                .backoff(Duration::from_millis(10), 2.0, Duration::from_millis(100))
        })
        .circuit_breaker(|b| {
            b.consecutive_failures(3)
                .break_duration(Duration::from_secs(5))
                .success_threshold(1)
        })
        .build_http()
        .unwrap()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_unavailable_answer_is_retried_and_the_retry_succeeds() {
    let server = CounterServer::default();
    let svc = client(&server, stack()).await;

    server.fail_next(1);
    let answer = next(svc.clone(), 41).await.unwrap();
    assert_eq!(answer.into_inner(), 42);
    assert_eq!(
        server.calls(),
        2,
        "the first attempt failed, the retry succeeded"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn unavailable_opens_the_breaker_which_fails_fast_then_recovers() {
    let server = CounterServer::default();
    let stack = stack();
    let handle = stack.handle();
    let svc = client(&server, stack).await;
    let breaker = handle.circuit_breaker().unwrap();

    // Three attempts, three UNAVAILABLE: the caller gets the last one, and the breaker opens.
    server.fail_next(u32::MAX);
    let status = next(svc.clone(), 1).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.calls(), 3);
    assert_eq!(breaker.state(), CircuitState::Open);

    // Now calls fail fast, without reaching the server. tonic reports the rejection as
    // UNKNOWN with the bulwark error as its source.
    let status = next(svc.clone(), 1).await.unwrap_err();
    assert_eq!(server.calls(), 3, "rejected without a call");
    assert!(
        matches!(rejection(&status), Some(Rejection::CircuitOpen(_))),
        "{status:?}"
    );

    // After the break, a probe goes through; the server has recovered, so the breaker closes.
    server.fail_next(0);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(next(svc.clone(), 9).await.unwrap().into_inner(), 10);
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(server.calls(), 4);
}

/// The server's `grpc-retry-pushback-ms`: a wait before the retry, or, negative, no retry.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_servers_pushback_sets_the_wait_or_stops_the_retries() {
    let server = CounterServer::default();
    let svc = client(&server, stack()).await;

    server.fail_next_with(1, Code::Unavailable, Some("250"));
    let started = tokio::time::Instant::now();
    assert_eq!(next(svc.clone(), 1).await.unwrap().into_inner(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.calls(), 2);

    server.fail_next_with(1, Code::Unavailable, Some("-1"));
    let status = next(svc.clone(), 1).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.calls(), 3, "not retried");
}

/// A code other than UNAVAILABLE is not retried; the breaker counts the failing ones.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn other_codes_are_not_retried_and_the_breaker_counts_failures() {
    let server = CounterServer::default();
    let stack = stack();
    let handle = stack.handle();
    let svc = client(&server, stack).await;

    server.fail_next_with(1, Code::Internal, None);
    assert_eq!(
        next(svc.clone(), 1).await.unwrap_err().code(),
        Code::Internal
    );
    server.fail_next_with(1, Code::NotFound, None);
    assert_eq!(
        next(svc.clone(), 1).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(server.calls(), 2, "neither was retried");
    let breaker = handle.circuit_breaker().unwrap();
    // INTERNAL is a failure, NOT_FOUND is the caller's problem: the streak is 0 after it.
    assert_eq!(breaker.counters().failures, 1);
    assert_eq!(breaker.consecutive_failures(), 0);
}

#[cfg(feature = "tonic")]
mod status_mapping {
    use super::*;
    use bulwark::bulkhead::error::BulkheadFull;
    use bulwark::circuit_breaker::error::CircuitOpen;
    use bulwark::response::{error_status, StackError};
    use bulwark::timeout::error::Elapsed;

    /// Through the stack: the breaker's rejection, mapped with `error_status`, is UNAVAILABLE
    /// with the time to the next probe as gRPC pushback.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_open_breaker_maps_to_unavailable_with_pushback() {
        let server = CounterServer::default();
        let stack = stack();
        let svc = client(&server, stack).await;
        server.fail_next(u32::MAX);
        next(svc.clone(), 1).await.unwrap_err();
        let status = next(svc.clone(), 1).await.unwrap_err();
        let mapped = error_status("counter", &status);
        assert_eq!(mapped.code(), Code::Unavailable);
        assert!(mapped
            .message()
            .starts_with("counter: circuit `counter` is open"));
        let pushback: u64 = mapped
            .metadata()
            .get("grpc-retry-pushback-ms")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((4_000..=5_000).contains(&pushback), "{pushback}");
    }

    #[test]
    fn each_rejection_maps_to_its_code() {
        let full: BoxError = Box::new(BulkheadFull::new("inv", 4));
        assert_eq!(error_status("inv", &*full).code(), Code::ResourceExhausted);
        let late: BoxError = Box::new(Elapsed::new(Duration::from_secs(1)));
        assert_eq!(error_status("inv", &*late).code(), Code::DeadlineExceeded);
        let forced: BoxError = Box::new(CircuitOpen::new("inv", CircuitState::ForcedOpen, None));
        let status = error_status("inv", &*forced);
        assert_eq!(status.code(), Code::Unavailable);

        // The downstream's own status: a transient code is kept, any other becomes INTERNAL;
        // its message is not passed on.
        let theirs: BoxError = Box::new(tonic::Status::not_found("row 17 of /var/db/secret"));
        let status = error_status("inv", &*theirs);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"), "{}", status.message());
        let theirs: BoxError = Box::new(tonic::Status::resource_exhausted("quota"));
        assert_eq!(
            error_status("inv", &*theirs).code(),
            Code::ResourceExhausted
        );

        // Pushback: rounded up to at least 1 ms; -1 (do not retry) when forced open or when
        // the retry budget is spent.
        let soon: BoxError = Box::new(CircuitOpen::new(
            "inv",
            CircuitState::HalfOpen,
            Some(Duration::from_micros(500)),
        ));
        let pushback = |s: &tonic::Status| {
            s.metadata()
                .get("grpc-retry-pushback-ms")
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(pushback(&error_status("inv", &*soon)).as_deref(), Some("1"));
        assert_eq!(
            pushback(&error_status("inv", &*forced)).as_deref(),
            Some("-1")
        );
        let spent: BoxError = Box::new(bulwark::retry::error::RetriesExhausted::new(
            2,
            bulwark::retry::error::GaveUp::Budget,
            Box::new(std::io::Error::other("reset")),
        ));
        let status = error_status("inv", &*spent);
        assert_eq!(
            (status.code(), pushback(&status).as_deref()),
            (Code::Unavailable, Some("-1"))
        );
        // Anything else is UNAVAILABLE.
        let io: BoxError = Box::new(std::io::Error::other("reset by 10.0.0.1"));
        let status = error_status("inv", &*io);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "inv: the downstream call failed");

        // `StackError` converts, keeping the error as the status's source.
        let status = tonic::Status::from(StackError::new("inv", BulkheadFull::new("inv", 4)));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(matches!(
            rejection(&status),
            Some(Rejection::BulkheadFull(_))
        ));
    }
}
