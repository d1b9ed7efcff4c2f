//! Tower middleware that keeps a service standing when the services it calls fail.
//!
//! bulwark wraps the clients a service uses to call its downstreams (HTTP, gRPC, or any
//! [`tower::Service`]) in layers that bound how long a call may take, stop calling a
//! downstream that keeps failing, retry what is safe to retry, and cap how many calls may be
//! in flight at once. Each is a [`tower_layer::Layer`] that composes in a
//! `tower::ServiceBuilder` inside axum, tonic and hyper apps.
//!
//! | Layer | Module | Status |
//! | --- | --- | --- |
//! | Timeout | [`timeout`] | available |
//! | Circuit breaker | [`circuit_breaker`] | available |
//! | Retry with backoff and budget; HTTP replay, `Retry-After`, idempotency | [`retry`] | available |
//! | Bulkhead | [`bulkhead`] | available |
//! | Standard stack: generic, HTTP and gRPC | [`stack`] | available |
//! | Errors as HTTP responses and `tonic::Status` | `response` (feature `http`) | available |
//! | Configuration files | `config` (feature `serde`) | available |
//! | A method per layer on `tower::ServiceBuilder` | [`ServiceBuilderExt`] | available |
//!
//! # Example: the standard stack
//!
//! One builder puts the four layers in the right order (bulkhead, total timeout, retry with
//! budget, circuit breaker, attempt timeout), validates the whole configuration, and gives one
//! handle to every stage; [`response::error_response`] turns its errors into HTTP responses.
//!
//! ```
//! use std::time::Duration;
//! use bulwark::error::{rejection, Rejection};
//! use bulwark::stack::StackLayer;
//! use bulwark::BoxError;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let stack = StackLayer::builder("inventory")
//!     .max_concurrent(64)                          // bulkhead: 64 calls in flight at most
//!     .total_timeout(Duration::from_secs(5))       // the caller's whole budget
//!     .retry(|r| r.max_attempts(3))                // retries, within the default budget
//!     .circuit_breaker(|b| b.consecutive_failures(5))
//!     .attempt_timeout(Duration::from_secs(1))     // one attempt's limit
//!     .build()?;                                   // a typed ConfigError if inconsistent
//! let handle = stack.handle();                     // every stage's handle, for health checks
//!
//! let client = stack.layer(service_fn(|sku: &'static str| async move {
//!     Ok::<_, BoxError>(format!("{sku}: 3 in stock"))
//! }));
//!
//! match client.oneshot("sku-1").await {
//!     Ok(stock) => println!("{stock}"),
//!     Err(err) => match rejection(&*err) {
//!         Some(Rejection::CircuitOpen(open)) => println!("try after {:?}", open.retry_after()),
//!         Some(other) => println!("rejected: {other}"),
//!         None => println!("the downstream failed: {err}"),
//!     },
//! }
//! assert!(handle.circuit_breaker().unwrap().state().admits_calls());
//! # Ok(())
//! # }
//! ```
//!
//! Each layer is also usable alone, in any `tower::ServiceBuilder`: [`TimeoutLayer`],
//! [`BulkheadLayer`], [`CircuitBreakerLayer`], [`RetryLayer`]; [`ServiceBuilderExt`] adds a
//! method for each, and `standard_stack` for the whole stack.
//!
//! # Shared model
//!
//! - Errors: a layer that can fail returns [`BoxError`], so stacks compose in any order and fit
//!   axum's `HandleErrorLayer` and tonic. Each rejection is a small public type (such as
//!   [`timeout::error::Elapsed`]); [`error::find`] and [`error::rejection`] find one anywhere in
//!   an error's `source()` chain.
//! - Classification: what counts as a failure is a three-way [`classify::Outcome`]
//!   decided by a [`classify::Classify`] implementation: the default counts `Err` as a failure,
//!   the HTTP classifier counts 5xx, the gRPC classifier reads `grpc-status`.
//! - Time: only `tokio::time` is used, so every timing behaviour can be tested on tokio's paused
//!   clock (`#[tokio::test(start_paused = true)]` and `tokio::time::advance`).
//!
//! # Feature flags
//!
//! - `http` (default): the HTTP and gRPC classifiers in [`classify`]; HTTP and gRPC retry
//!   ([`RetryLayer::http`], `HttpPolicy::grpc`: replayable bodies, `Retry-After` and gRPC
//!   pushback, idempotency rules); `StackLayer::http` and `StackLayer::grpc`; and the
//!   `response` module: `error_response` and `handle_error` turn any bulwark error into a
//!   502/503/504 with a problem+json body, `StackError` carries one out of handler code.
//!
//! - `serde`: the `config` module: every layer's settings and the standard stack's from TOML
//!   or JSON, with durations such as `"250ms"`, validated as they are read.
//!
//! - `axum`: `IntoResponse` for `response::StackError`.
//!
//! - `tonic`: `response::error_status` and `From<StackError> for tonic::Status`
//!   (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`, gRPC retry pushback).
//!
//! - `metrics`: counters and gauges through the [`metrics`](https://docs.rs/metrics) facade:
//!   `bulwark_calls_total{name,outcome}`, `bulwark_circuit_state{name}` (0 closed, 1 open,
//!   2 half-open, 3 forced open, 4 forced closed, 5 disabled), `bulwark_retries_total{name}`,
//!   `bulwark_bulkhead_in_flight{name}` and `bulwark_rejections_total{name,reason}` (reason
//!   `circuit_open`, `bulkhead_full` or `retry_budget`). Handles are registered when a layer is
//!   built: install the recorder first.
//!
//! # Minimum supported Rust version
//!
//! The MSRV is 1.88, the MSRV of tonic 0.14, which the `tonic` feature and the tests use
//! (declared in `Cargo.toml`; this project's CI builds with the current stable only).
//!
//! `tower` is a public dependency, through [`ServiceBuilderExt`].
//!
//! [`tower::Service`]: tower_service::Service

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// `get_ref`, `get_mut` and `into_inner` for a service whose inner service is `self.inner`.
macro_rules! inner_service_accessors {
    () => {
        /// Gets a reference to the inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// Gets a mutable reference to the inner service.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Consumes this service, returning the inner service (and releasing anything the
        /// service held, such as a bulkhead slot or a half-open probe slot).
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

mod builder;
pub mod bulkhead;
pub mod circuit_breaker;
pub mod classify;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub mod config;
pub mod error;
mod meter;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod response;
pub mod retry;
pub mod stack;
mod sync;
pub mod timeout;
mod window;

#[cfg(all(test, bulwark_loom))]
mod loom_models;

pub use crate::builder::ServiceBuilderExt;
pub use crate::bulkhead::{Bulkhead, BulkheadLayer};
pub use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use crate::error::BoxError;
pub use crate::retry::{Retry, RetryLayer};
pub use crate::timeout::{Timeout, TimeoutLayer};

/// Compiles and runs the Rust snippets of the README, so it stays true to the code.
#[cfg(all(doctest, feature = "http"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
