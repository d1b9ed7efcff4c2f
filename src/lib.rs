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
//! | Retry with backoff and budget | `retry` | planned |
//! | Bulkhead | [`bulkhead`] | available |
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bulwark::{timeout::error::Elapsed, BoxError, TimeoutLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let client = ServiceBuilder::new()
//!     // Bound each call's response future to 2 seconds.
//!     .layer(TimeoutLayer::new(Duration::from_secs(2)))
//!     .service(service_fn(|name: &'static str| async move {
//!         Ok::<_, BoxError>(format!("hello, {name}"))
//!     }));
//!
//! match client.oneshot("world").await {
//!     Ok(greeting) => assert_eq!(greeting, "hello, world"),
//!     Err(err) if bulwark::error::is::<Elapsed>(&*err) => println!("too slow: {err}"),
//!     Err(err) => return Err(err),
//! }
//! # Ok(())
//! # }
//! ```
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
//! - `http` (default): the HTTP and gRPC classifiers in [`classify`].
//!
//! # Minimum supported Rust version
//!
//! The MSRV is 1.85, the MSRV of the tokio version bulwark builds with (declared in
//! `Cargo.toml`).
//!
//! [`tower::Service`]: tower_service::Service

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bulkhead;
pub mod circuit_breaker;
pub mod classify;
pub mod error;
pub mod timeout;

pub use crate::bulkhead::{Bulkhead, BulkheadLayer};
pub use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use crate::error::BoxError;
pub use crate::timeout::{Timeout, TimeoutLayer};

/// Compiles and runs the Rust snippets of the README, so it stays true to the code.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
