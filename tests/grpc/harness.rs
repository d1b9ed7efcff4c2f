//! A real tonic server and client on loopback, with a hand-written codec: no protoc, no prost.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut};
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{Body as HttpBody, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::Status;
use tower::Service;

pub(crate) const SERVICE_NAME: &str = "bulwark.test.Counter";
pub(crate) const METHOD_PATH: &str = "/bulwark.test.Counter/Next";

// === codec: a u32 as 4 big-endian bytes ===

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct U32Codec;

impl Codec for U32Codec {
    type Encode = u32;
    type Decode = u32;
    type Encoder = U32Codec;
    type Decoder = U32Codec;

    fn encoder(&mut self) -> Self::Encoder {
        U32Codec
    }

    fn decoder(&mut self) -> Self::Decoder {
        U32Codec
    }
}

impl Encoder for U32Codec {
    type Item = u32;
    type Error = Status;

    fn encode(&mut self, item: u32, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_u32(item);
        Ok(())
    }
}

impl Decoder for U32Codec {
    type Item = u32;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<u32>, Status> {
        if src.remaining() != 4 {
            return Err(Status::internal("expected a 4-byte message"));
        }
        Ok(Some(src.get_u32()))
    }
}

// === server: /bulwark.test.Counter/Next returns n + 1, or UNAVAILABLE on demand ===

/// How failing calls fail: their code, and a `grpc-retry-pushback-ms` if any.
type Failure = (tonic::Code, Option<&'static str>);

/// The server's state; clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct CounterServer {
    fail_next: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
    /// How the failing calls fail: their code, and a `grpc-retry-pushback-ms` if any.
    failure: Arc<std::sync::Mutex<Option<Failure>>>,
}

impl CounterServer {
    /// The next `n` calls answer UNAVAILABLE.
    pub(crate) fn fail_next(&self, n: u32) {
        self.fail_next_with(n, tonic::Code::Unavailable, None);
    }

    /// The next `n` calls answer `code`, with `pushback` as `grpc-retry-pushback-ms`.
    pub(crate) fn fail_next_with(&self, n: u32, code: tonic::Code, pushback: Option<&'static str>) {
        *self.failure.lock().unwrap() = Some((code, pushback));
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Calls that reached the handler.
    pub(crate) fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The handler of the one method (what tonic-build calls `NextSvc`).
#[derive(Debug)]
struct Next(CounterServer);

impl UnaryService<u32> for Next {
    type Response = u32;
    type Future = std::future::Ready<Result<tonic::Response<u32>, Status>>;

    fn call(&mut self, request: tonic::Request<u32>) -> Self::Future {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .0
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        std::future::ready(if fail {
            let failure = *self.0.failure.lock().unwrap();
            let (code, pushback) = failure.unwrap_or((tonic::Code::Unavailable, None));
            let mut status = Status::new(code, "injected failure");
            if let Some(pushback) = pushback {
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", pushback.parse().unwrap());
            }
            Err(status)
        } else {
            Ok(tonic::Response::new(request.into_inner().wrapping_add(1)))
        })
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send + 'static>>;

impl Service<http::Request<Body>> for CounterServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() == METHOD_PATH {
            let method = Next(self.clone());
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(U32Codec);
                Ok::<_, Infallible>(grpc.unary(method, req).await)
            })
        } else {
            Box::pin(async move {
                Ok::<_, Infallible>(Status::unimplemented("no such method").into_http::<Body>())
            })
        }
    }
}

impl NamedService for CounterServer {
    const NAME: &'static str = SERVICE_NAME;
}

/// Serves `server` on 127.0.0.1:0 in a background task; returns its address.
pub(crate) async fn spawn_server(server: CounterServer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let incoming = TcpIncoming::from(listener);
    tokio::spawn(async move {
        Server::builder()
            .add_service(server)
            .serve_with_incoming(incoming)
            .await
            .expect("gRPC server failed");
    });
    addr
}

/// A connected channel to `addr` (HTTP/2 prior knowledge over plain TCP).
pub(crate) async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connect")
}

// === client: one unary call over any HTTP service (a Channel, or middleware around one) ===

/// Calls `Next(value)` through `svc`. A not-ready error (e.g. a rejecting breaker) comes back
/// as `Status::from_error`: the original error is `std::error::Error::source(&status)`.
pub(crate) async fn next<S, B>(svc: S, value: u32) -> Result<tonic::Response<u32>, Status>
where
    S: Service<http::Request<Body>, Response = http::Response<B>>,
    S::Error: Into<StdError>,
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError>,
{
    let mut grpc = tonic::client::Grpc::new(svc);
    grpc.ready()
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    grpc.unary(
        tonic::Request::new(value),
        PathAndQuery::from_static(METHOD_PATH),
        U32Codec,
    )
    .await
}
