//! The gRPC standard stack (`StackLayer::grpc`) around a real tonic `Channel`, against a real
//! tonic server on loopback that answers UNAVAILABLE on demand: a retry that succeeds, a
//! breaker that opens on UNAVAILABLE and fails fast, `grpc-retry-pushback-ms`, recovery, and
//! (feature `tonic`) bulwark errors as `tonic::Status`. Paused clock throughout.

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
        assert!(status.metadata().get("grpc-retry-pushback-ms").is_none());

        // The downstream's own status keeps its code, not its message.
        let theirs: BoxError = Box::new(tonic::Status::not_found("row 17 of /var/db/secret"));
        let status = error_status("inv", &*theirs);
        assert_eq!(status.code(), Code::NotFound);
        assert!(!status.message().contains("secret"), "{}", status.message());
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
