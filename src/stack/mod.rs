//! The standard stack: the four layers in the right order, from one builder and one validated
//! configuration.
//!
//! Outer to inner: **bulkhead → total timeout → retry (with budget) → circuit breaker →
//! attempt timeout → inner service**. Each stage can be tuned or switched off; a stage that
//! is off costs a few branches per call.
//!
//! The stages are one service, [`StackService`], with one response future: they behave as the
//! layers composed in that order (and share the layers' state, decisions and events), but a
//! call that succeeds at once takes one reference count, reads the clock once (for the retry
//! budget; twice with a timed breaker rule), and arms no timer; one timer serves the attempt
//! and total deadlines, and the waits between attempts. With retries on, each call keeps a
//! clone of the inner service and a copy of the request, as tower's `Retry` does.
//!
//! ```
//! use std::time::Duration;
//! use bulwark::circuit_breaker::CircuitState;
//! use bulwark::stack::StackLayer;
//! use bulwark::BoxError;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let stack = StackLayer::builder("inventory")
//!     .max_concurrent(64)
//!     .total_timeout(Duration::from_secs(5))
//!     .retry(|r| r.max_attempts(2))
//!     .attempt_timeout(Duration::from_secs(1))
//!     .build()?;
//! let handle = stack.handle();
//!
//! let client = stack.layer(service_fn(|sku: &'static str| async move {
//!     Ok::<_, BoxError>(sku.len())
//! }));
//! assert_eq!(client.oneshot("sku-1").await?, 5);
//! assert_eq!(handle.circuit_breaker().map(|b| b.state()), Some(CircuitState::Closed));
//! # Ok(())
//! # }
//! ```
//!
//! # HTTP
//!
//! [`StackLayer::http`] (feature `http`) builds the same stack for HTTP clients: the breaker
//! counts 5xx responses and errors as failures, retry follows
//! [`HttpPolicy`](crate::retry::HttpPolicy) (idempotent methods or an `Idempotency-Key`,
//! `Retry-After`, 408/429/502/503/504), and the outermost stage makes request bodies
//! replayable. `tests/stack_http.rs` runs it around hyper-util's `Client` against a server that
//! fails, slows down and refuses connections. Turn its errors into responses with
//! [`response::error_response`](crate::response::error_response).
//!
//! # Why this order
//!
//! - The **bulkhead** is outermost, so everything a call does (its retries, their waits)
//!   happens inside one slot: the cap bounds the work this service spends on the downstream.
//! - The **total timeout** sits outside retry, so it bounds all the attempts together: the
//!   caller's budget.
//! - **Retry** sits outside the breaker, so each attempt is counted by the breaker, and an open
//!   breaker's rejection (`CircuitOpen`) ends the retries instead of spending the budget.
//! - The **attempt timeout** is innermost, so a hung attempt becomes a failure that the
//!   breaker counts and that retry can retry.
//!
//! # Defaults
//!
//! For an HTTP-like client: a bulkhead of 100 calls (reject at once when full); a total
//! timeout of 30 s; 3 attempts with backoff from 200 ms to at most 5 s, decorrelated jitter
//! (each wait drawn between 200 ms and three times the previous one),
//! and the default retry budget (with a 10 s attempt timeout, a third slow attempt is cut by
//! the 30 s total: the caller gets a 504); a breaker tripping on 5 consecutive failures or on half of
//! the last 100 calls (once 20 were seen), open 30 s; an attempt timeout of 10 s. (A count
//! window, not a time window, by default: the breaker then needs no clock read per call; the
//! retry budget reads it once.) Every
//! stage is named after the stack, so events and errors say which downstream they are about.
//!
//! # Validation
//!
//! [`StackBuilder::build`] returns a [`ConfigError`] naming the field for anything a stage's own
//! builder rejects, and for contradictions between stages: an attempt timeout above the total
//! timeout, or a breaker time window shorter than two attempt timeouts (it could not see two
//! attempts fail).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::bulkhead::{BulkheadHandle, BulkheadLayer};
use crate::circuit_breaker::{
    CircuitBreakerHandle, CircuitBreakerLayer, CircuitBreakerLayerBuilder,
};
use crate::classify::DefaultClassifier;
use crate::error::ConfigError;
use crate::retry::{RetryHandle, RetryLayer, RetryLayerBuilder};

mod service;

use self::service::Stages;
pub use self::service::{ResponseFuture, StackService};

const COMPONENT: &str = "stack";

// === StackLayer ===

/// The standard stack as one layer; built with [`StackLayer::builder`]. See the
/// [module docs](self).
#[must_use]
pub struct StackLayer<C = DefaultClassifier, P = DefaultClassifier> {
    stages: Arc<Stages<C, P>>,
    handle: StackHandle,
}

impl StackLayer {
    /// Starts building a stack named `name`: every stage is named after it.
    pub fn builder(name: impl Into<Arc<str>>) -> StackBuilder {
        let name = name.into();
        StackBuilder {
            max_concurrent: Some(100),
            bulkhead_wait: Duration::ZERO,
            total_timeout: Some(Duration::from_secs(30)),
            retry: Some(default_retry(&name, DefaultClassifier::new())),
            retry_policy: DefaultClassifier::new(),
            breaker: Some(default_breaker(&name, DefaultClassifier::new())),
            breaker_classifier: DefaultClassifier::new(),
            attempt_timeout: Some(Duration::from_secs(10)),
            name,
        }
    }
}

/// The stack's retry stage by default: 3 attempts, backoff from 200 ms doubling to 5 s.
fn default_retry<P>(name: &Arc<str>, policy: P) -> RetryLayerBuilder<P> {
    RetryLayer::builder(name.clone())
        .classifier(policy)
        .max_attempts(3)
        .backoff(Duration::from_millis(200), 2.0, Duration::from_secs(5))
}

/// The stack's breaker by default: 5 consecutive failures, or half of the last 100 calls once
/// 20 were seen.
fn default_breaker<C>(name: &Arc<str>, classifier: C) -> CircuitBreakerLayerBuilder<C> {
    CircuitBreakerLayer::builder(name.clone())
        .classifier(classifier)
        .consecutive_failures(5)
        .failure_rate_over_calls(0.5, 100, 20)
}

impl<C, P> StackLayer<C, P> {
    /// A handle that reaches every stage's handle.
    pub fn handle(&self) -> StackHandle {
        self.handle.clone()
    }
}

impl<C, P> Clone for StackLayer<C, P> {
    fn clone(&self) -> Self {
        StackLayer {
            stages: self.stages.clone(),
            handle: self.handle.clone(),
        }
    }
}

impl<S, C, P> Layer<S> for StackLayer<C, P> {
    type Service = StackService<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        StackService::new(inner, self.stages.clone())
    }
}

impl<C, P> fmt::Debug for StackLayer<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stages = &self.stages;
        f.debug_struct("StackLayer")
            .field("name", &self.handle.name)
            .field(
                "max_concurrent",
                &stages.bulkhead.as_ref().map(|b| b.max_concurrent()),
            )
            .field(
                "bulkhead_wait",
                &stages.bulkhead.as_ref().map(|b| b.max_wait()),
            )
            .field("total_timeout", &stages.total)
            .field(
                "retry",
                &stages.retry.as_ref().map(|r| {
                    (
                        ("max_attempts", r.max_attempts),
                        ("backoff", r.backoff),
                        ("deadline", r.deadline),
                        ("budget", r.budget.as_ref().map(|b| b.config())),
                    )
                }),
            )
            .field(
                "circuit_breaker",
                &stages.breaker.as_ref().map(|b| &b.policy),
            )
            .field("attempt_timeout", &stages.attempt)
            .finish()
    }
}

// === StackBuilder ===

/// Builds a [`StackLayer`]; see the [module docs](self) for the defaults.
#[must_use]
pub struct StackBuilder<C = DefaultClassifier, P = DefaultClassifier> {
    name: Arc<str>,
    max_concurrent: Option<usize>,
    bulkhead_wait: Duration,
    total_timeout: Option<Duration>,
    retry: Option<RetryLayerBuilder<P>>,
    // Kept apart from the stage, so switching the stage off and on again keeps it.
    retry_policy: P,
    breaker: Option<CircuitBreakerLayerBuilder<C>>,
    breaker_classifier: C,
    attempt_timeout: Option<Duration>,
}

impl<C, P> StackBuilder<C, P> {
    /// The bulkhead's cap on calls in flight (default 100).
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = Some(n);
        self
    }

    /// How long a call may wait for a bulkhead slot (default zero: reject at once).
    ///
    /// The bulkhead is outside the total timeout, so this wait comes on top of it.
    pub fn bulkhead_wait(mut self, max_wait: Duration) -> Self {
        self.bulkhead_wait = max_wait;
        self
    }

    /// No bulkhead stage.
    pub fn no_bulkhead(mut self) -> Self {
        self.max_concurrent = None;
        self
    }

    /// The caller's whole budget, retries included (default 30 s).
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = Some(timeout);
        self
    }

    /// No total timeout stage.
    pub fn no_total_timeout(mut self) -> Self {
        self.total_timeout = None;
        self
    }

    /// Tunes the retry stage (turning it on again, from the stack's defaults, if it was off).
    pub fn retry(mut self, tune: impl FnOnce(RetryLayerBuilder<P>) -> RetryLayerBuilder<P>) -> Self
    where
        P: Clone,
    {
        let current = match self.retry.take() {
            Some(current) => current,
            None => default_retry(&self.name, self.retry_policy.clone()),
        };
        self.retry = Some(tune(current));
        self
    }

    /// No retry stage.
    pub fn no_retry(mut self) -> Self {
        self.retry = None;
        self
    }

    /// Tunes the circuit-breaker stage (turning it on again, from the stack's defaults, if it
    /// was off).
    pub fn circuit_breaker(
        mut self,
        tune: impl FnOnce(CircuitBreakerLayerBuilder<C>) -> CircuitBreakerLayerBuilder<C>,
    ) -> Self
    where
        C: Clone,
    {
        let current = match self.breaker.take() {
            Some(current) => current,
            None => default_breaker(&self.name, self.breaker_classifier.clone()),
        };
        self.breaker = Some(tune(current));
        self
    }

    /// No circuit-breaker stage.
    pub fn no_circuit_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }

    /// One attempt's limit (default 10 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// No attempt timeout stage.
    pub fn no_attempt_timeout(mut self) -> Self {
        self.attempt_timeout = None;
        self
    }

    /// What the breaker counts as a failure (default: every `Err`).
    pub fn breaker_classifier<C2: Clone>(self, classifier: C2) -> StackBuilder<C2, P> {
        StackBuilder {
            name: self.name,
            max_concurrent: self.max_concurrent,
            bulkhead_wait: self.bulkhead_wait,
            total_timeout: self.total_timeout,
            retry: self.retry,
            retry_policy: self.retry_policy,
            breaker: self.breaker.map(|b| b.classifier(classifier.clone())),
            breaker_classifier: classifier,
            attempt_timeout: self.attempt_timeout,
        }
    }

    /// What retry retries (default: every `Err`); any [`RetryPolicy`](crate::retry::RetryPolicy).
    pub fn retry_policy<P2: Clone>(self, policy: P2) -> StackBuilder<C, P2> {
        StackBuilder {
            name: self.name,
            max_concurrent: self.max_concurrent,
            bulkhead_wait: self.bulkhead_wait,
            total_timeout: self.total_timeout,
            retry: self.retry.map(|r| r.classifier(policy.clone())),
            retry_policy: policy,
            breaker: self.breaker,
            breaker_classifier: self.breaker_classifier,
            attempt_timeout: self.attempt_timeout,
        }
    }

    /// Checks the configuration, as [`build`](Self::build) does, without building anything.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, problem| Err(ConfigError::new(COMPONENT, field, problem));
        if self.total_timeout.is_some_and(|t| t.is_zero()) {
            return err("total_timeout", "must be greater than zero");
        }
        if self.attempt_timeout.is_some_and(|t| t.is_zero()) {
            return err("attempt_timeout", "must be greater than zero");
        }
        if let (Some(attempt), Some(total)) = (self.attempt_timeout, self.total_timeout) {
            if attempt > total {
                return err("attempt_timeout", "must not exceed total_timeout");
            }
        }
        if let (Some(breaker), Some(attempt)) = (&self.breaker, self.attempt_timeout) {
            if breaker
                .time_window_span()
                .is_some_and(|span| span < attempt.saturating_mul(2))
            {
                return err(
                    "circuit_breaker.failure_rate_over_time.span",
                    "must be at least two attempt timeouts",
                );
            }
        }
        if let Some(n) = self.max_concurrent {
            BulkheadLayer::builder(self.name.clone())
                .max_concurrent(n)
                .validate()?;
        }
        if let Some(retry) = &self.retry {
            retry.validate()?;
        }
        if let Some(breaker) = &self.breaker {
            breaker.validate()?;
        }
        Ok(())
    }

    /// Turns the bulkhead stage on with the default cap, if it was off.
    #[cfg(feature = "serde")]
    pub(crate) fn bulkhead_on(mut self) -> Self {
        self.max_concurrent.get_or_insert(100);
        self
    }

    /// Validates every stage and how they fit together, and builds the stack.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of the first invalid stage (its component says which), or one with
    /// component `stack` for a contradiction between stages: `attempt_timeout` above
    /// `total_timeout`, a zero timeout, or a breaker time window shorter than two attempt
    /// timeouts.
    pub fn build(self) -> Result<StackLayer<C, P>, ConfigError> {
        self.validate()?;
        let bulkhead = match self.max_concurrent {
            Some(n) => Some(
                BulkheadLayer::builder(self.name.clone())
                    .max_concurrent(n)
                    .max_wait(self.bulkhead_wait)
                    .build()?,
            ),
            None => None,
        };
        let retry = self.retry.map(RetryLayerBuilder::build).transpose()?;
        let breaker = self
            .breaker
            .map(CircuitBreakerLayerBuilder::build)
            .transpose()?;
        let handle = StackHandle {
            name: self.name,
            bulkhead: bulkhead.as_ref().map(BulkheadLayer::handle),
            retry: retry.as_ref().map(RetryLayer::handle),
            breaker: breaker.as_ref().map(CircuitBreakerLayer::handle),
        };
        Ok(StackLayer {
            stages: Arc::new(Stages::new(
                bulkhead.map(|b| b.shared().clone()),
                self.total_timeout,
                retry.map(RetryLayer::into_parts),
                breaker.map(CircuitBreakerLayer::into_parts),
                (self.breaker_classifier, self.retry_policy),
                self.attempt_timeout,
            )),
            handle,
        })
    }
}

impl<C, P> fmt::Debug for StackBuilder<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackBuilder")
            .field("name", &self.name)
            .field("max_concurrent", &self.max_concurrent)
            .field("total_timeout", &self.total_timeout)
            .field("retry", &self.retry.is_some())
            .field("circuit_breaker", &self.breaker.is_some())
            .field("attempt_timeout", &self.attempt_timeout)
            .finish()
    }
}

// === StackHandle ===

/// Reaches the handle of every stage of a stack that has one.
#[derive(Debug, Clone)]
pub struct StackHandle {
    name: Arc<str>,
    bulkhead: Option<BulkheadHandle>,
    retry: Option<RetryHandle>,
    breaker: Option<CircuitBreakerHandle>,
}

impl StackHandle {
    /// The stack's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bulkhead's handle, if the stage is on.
    pub fn bulkhead(&self) -> Option<&BulkheadHandle> {
        self.bulkhead.as_ref()
    }

    /// The retry stage's handle, if it is on.
    pub fn retry(&self) -> Option<&RetryHandle> {
        self.retry.as_ref()
    }

    /// The circuit breaker's handle, if the stage is on.
    pub fn circuit_breaker(&self) -> Option<&CircuitBreakerHandle> {
        self.breaker.as_ref()
    }
}

// === HTTP ===

#[cfg(feature = "http")]
mod http_stack {
    use super::*;
    use crate::classify::{GrpcClassifier, HttpClassifier};
    use crate::retry::{HttpPolicy, Replay};

    impl StackLayer {
        /// Starts building the standard stack for an HTTP client: the breaker counts 5xx and
        /// errors as failures ([`HttpClassifier`]), retry follows [`HttpPolicy`] (idempotency,
        /// `Retry-After`, replayable bodies). Finish with
        /// [`build_http`](StackBuilder::build_http).
        pub fn http(name: impl Into<Arc<str>>) -> StackBuilder<HttpClassifier, HttpPolicy> {
            StackLayer::builder(name)
                .breaker_classifier(HttpClassifier::new())
                .retry_policy(HttpPolicy::default())
        }

        /// Starts building the standard stack for a gRPC client (around a tonic `Channel`,
        /// say): the breaker counts failing `grpc-status` codes and errors as failures
        /// ([`GrpcClassifier`]), retry follows [`HttpPolicy::grpc`] (`UNAVAILABLE` retried,
        /// `grpc-retry-pushback-ms` honoured, replayable bodies). Finish with
        /// [`build_http`](StackBuilder::build_http).
        ///
        /// The stack sends `Request<ReplayBody<B>>`; a tonic `Channel` takes tonic's own body,
        /// so one `map_request` goes between them, and a generated client is built over the
        /// whole (`tests/grpc/` runs this against a real tonic server):
        ///
        /// ```
        /// use bulwark::retry::ReplayBody;
        /// use bulwark::stack::StackLayer;
        /// use tonic::body::Body;
        /// use tonic::transport::Channel;
        /// use tower::ServiceBuilder;
        ///
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), bulwark::BoxError> {
        /// let channel = Channel::from_static("http://127.0.0.1:50051").connect_lazy();
        /// let client = ServiceBuilder::new()
        ///     .layer(StackLayer::grpc("payments").build_http()?)
        ///     .map_request(|r: http::Request<ReplayBody<Body>>| r.map(Body::new))
        ///     .service(channel);
        /// // Then `PaymentsClient::new(client)` for a generated `PaymentsClient`.
        /// # let _ = client;
        /// # Ok(())
        /// # }
        /// ```
        pub fn grpc(name: impl Into<Arc<str>>) -> StackBuilder<GrpcClassifier, HttpPolicy> {
            StackLayer::builder(name)
                .breaker_classifier(GrpcClassifier::new())
                .retry_policy(HttpPolicy::grpc())
        }
    }

    impl<C: Clone> StackBuilder<C, HttpPolicy> {
        /// Validates and builds the HTTP stack: it takes `Request<B>` with any `Unpin` body and
        /// sends `Request<ReplayBody<B>>` to the inner service (a hyper-util `Client` built for
        /// that body type, say).
        ///
        /// # Errors
        ///
        /// As [`build`](Self::build), and a `retry_after_cap` above a day.
        pub fn build_http(self) -> Result<HttpStackLayer<C>, ConfigError> {
            let policy = match &self.retry {
                Some(retry) => retry.policy().clone(),
                None => self.retry_policy.clone(),
            };
            if policy.cap() > Duration::from_secs(24 * 3600) {
                return Err(ConfigError::new(
                    "retry",
                    "retry_after_cap",
                    "must be at most a day",
                ));
            }
            let name = self.name.clone();
            Ok(HttpStackLayer {
                stack: self.build()?,
                limit: policy.limit(),
                name,
            })
        }
    }

    /// The standard stack for HTTP clients, built with [`StackLayer::http`], or for gRPC
    /// clients (`HttpStackLayer<GrpcClassifier>`), built with [`StackLayer::grpc`].
    ///
    /// Outermost, it makes request bodies replayable ([`ReplayBody`](crate::retry::ReplayBody));
    /// then the stages of [`StackLayer`].
    #[derive(Clone)]
    #[must_use]
    pub struct HttpStackLayer<C = HttpClassifier> {
        stack: StackLayer<C, HttpPolicy>,
        limit: usize,
        name: Arc<str>,
    }

    impl<C> HttpStackLayer<C> {
        /// A handle that reaches every stage's handle.
        pub fn handle(&self) -> StackHandle {
            self.stack.handle()
        }
    }

    impl<S, C: Clone> Layer<S> for HttpStackLayer<C> {
        type Service = Replay<StackService<S, C, HttpPolicy>>;

        fn layer(&self, inner: S) -> Self::Service {
            Replay::new(self.stack.layer(inner), self.limit, self.name.clone())
        }
    }

    impl<C> fmt::Debug for HttpStackLayer<C> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("HttpStackLayer")
                .field("stack", &self.stack)
                .field("body_limit", &self.limit)
                .finish()
        }
    }
}

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use self::http_stack::HttpStackLayer;
