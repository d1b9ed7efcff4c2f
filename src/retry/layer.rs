use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower_layer::Layer;

use super::backoff::{Backoff, Jitter, Rng};
use super::budget::{Budget, RetryBudget};
use super::error::GaveUp;
use super::Retry;
use crate::classify::DefaultClassifier;
use crate::error::ConfigError;

const COMPONENT: &str = "retry";

// === Shared ===

/// The state every clone of one retry layer shares.
///
/// Held by an `Arc` whose count every call changes: aligned so that the count's cache line is
/// not the one the settings are read from.
#[repr(align(128))]
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) deadline: Option<Duration>,
    pub(crate) budget: Option<Budget>,
    seeds: AtomicU64,
    retries: AtomicU64,
    gave_up: AtomicU64,
    meters: crate::meter::RetryMeters,
}

impl Shared {
    /// A random source for one call's retries, seeded from the layer's sequence (taken only
    /// when a call is about to be retried).
    pub(crate) fn rng(&self) -> Rng {
        let mut seeds = Rng::new(
            self.seeds
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed),
        );
        Rng::new((seeds.next_f64() * (1u64 << 53) as f64) as u64)
    }

    pub(crate) fn retried(&self, attempt: u32, delay: Duration, reason: &'static str) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.meters.retried();
        tracing::debug!(
            target: "bulwark::retry",
            name = %self.name,
            attempt,
            delay = ?delay,
            reason,
            "retrying"
        );
    }

    pub(crate) fn gave_up(&self, attempts: u32, reason: GaveUp) {
        self.gave_up.fetch_add(1, Ordering::Relaxed);
        if reason == GaveUp::Budget {
            self.meters.budget_spent();
        }
        tracing::debug!(
            target: "bulwark::retry",
            name = %self.name,
            attempts,
            reason = reason.as_str(),
            "not retrying"
        );
    }

    #[inline]
    pub(crate) fn deposit(&self) {
        if let Some(budget) = &self.budget {
            budget.deposit(Instant::now());
        }
    }

    /// Whether a call needs the time it started: for the budget, or the deadline.
    pub(crate) fn needs_clock(&self) -> bool {
        self.budget.is_some() || self.deadline.is_some()
    }

    /// Records a call made at `now` in the budget.
    pub(crate) fn deposit_at(&self, now: Instant) {
        if let Some(budget) = &self.budget {
            budget.deposit(now);
        }
    }
}

// === RetryLayer ===

/// Applies [`Retry`] to the services it wraps; every one of them shares this layer's retry
/// budget and counters.
///
/// Built with [`RetryLayer::builder`]. See the [module docs](crate::retry).
#[must_use]
pub struct RetryLayer<C = DefaultClassifier> {
    shared: Arc<Shared>,
    classifier: C,
}

impl RetryLayer {
    /// Starts building a retry layer named `name` (used in errors, events and metrics).
    pub fn builder(name: impl Into<Arc<str>>) -> RetryLayerBuilder {
        RetryLayerBuilder {
            name: name.into(),
            classifier: DefaultClassifier::new(),
            max_attempts: 3,
            base: Duration::from_secs(2),
            factor: 2.0,
            max: Duration::from_secs(10),
            jitter: Jitter::default(),
            seed: None,
            deadline: None,
            budget: Some(RetryBudget::default()),
        }
    }
}

#[cfg(feature = "http")]
impl RetryLayer {
    /// Starts building a retry layer for HTTP clients, with [`HttpPolicy`](super::HttpPolicy):
    /// finish with [`build_http`](RetryLayerBuilder::build_http).
    ///
    /// ```
    /// use std::time::Duration;
    /// use bulwark::retry::{Attempts, ReplayBody};
    /// use bulwark::{BoxError, RetryLayer};
    /// use http::{Request, Response, StatusCode};
    /// use http_body_util::Full;
    /// use tower::{service_fn, Layer, ServiceExt};
    /// # use bytes::Bytes;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), BoxError> {
    /// let retry = RetryLayer::http("payments")
    ///     .max_attempts(3)
    ///     .retry_after_cap(Duration::from_secs(10))
    ///     .build_http()?;
    ///
    /// // The inner service (a hyper-util client, say) receives `Request<ReplayBody<B>>`.
    /// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    /// let client = retry.layer(service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
    ///     let first = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
    ///     let status = if first { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    ///     async move { Ok::<_, BoxError>(Response::builder().status(status).body(())?) }
    /// }));
    ///
    /// let response = client.oneshot(Request::get("http://inventory/stock").body(Full::new(Bytes::new()))?).await?;
    /// assert_eq!(response.status(), StatusCode::OK);
    /// assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn http(name: impl Into<Arc<str>>) -> RetryLayerBuilder<super::HttpPolicy> {
        RetryLayer::builder(name).classifier(super::HttpPolicy::default())
    }
}

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl RetryLayerBuilder<super::HttpPolicy> {
    /// Keeps request bodies of up to `limit` bytes for replay (default 64 KiB); see
    /// [`ReplayBody`](super::ReplayBody).
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.classifier = self.classifier.body_limit(limit);
        self
    }

    /// The longest `Retry-After` wait honoured (default 30 s); a longer one ends the retries.
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.classifier = self.classifier.retry_after_cap(cap);
        self
    }

    /// Sets `name` on retried requests to the attempt number (off by default).
    pub fn attempt_header(mut self, name: http::HeaderName) -> Self {
        self.classifier = self.classifier.attempt_header(name);
        self
    }

    /// Validates the configuration and creates the HTTP retry layer.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build), and a `retry_after_cap` above a day.
    pub fn build_http(self) -> Result<super::HttpRetryLayer, ConfigError> {
        if self.classifier.cap() > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new(
                COMPONENT,
                "retry_after_cap",
                "must be at most a day",
            ));
        }
        self.build().map(super::HttpRetryLayer::new)
    }
}

impl<C> RetryLayer<C> {
    /// The shared state and the policy, for the standard stack.
    pub(crate) fn into_parts(self) -> (Arc<Shared>, C) {
        (self.shared, self.classifier)
    }

    /// A handle to this layer's counters and budget.
    pub fn handle(&self) -> RetryHandle {
        RetryHandle::from_shared(self.shared.clone())
    }
}

impl<C: Clone> Clone for RetryLayer<C> {
    fn clone(&self) -> Self {
        RetryLayer {
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_parts(inner, self.shared.clone(), self.classifier.clone())
    }
}

impl<C> fmt::Debug for RetryLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("name", &self.shared.name)
            .field("max_attempts", &self.shared.max_attempts)
            .field("backoff", &self.shared.backoff)
            .field("deadline", &self.shared.deadline)
            .finish()
    }
}

// === RetryLayerBuilder ===

/// Builds a [`RetryLayer`]; [`build`](Self::build) validates the configuration.
///
/// Defaults: 3 attempts (the first included); backoff from 2 s, doubling, capped at 10 s, with
/// decorrelated jitter; no deadline; the default [`RetryBudget`]; [`DefaultClassifier`] (every
/// `Err` is retried, no `Ok` is).
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryLayerBuilder<C = DefaultClassifier> {
    name: Arc<str>,
    classifier: C,
    max_attempts: u32,
    base: Duration,
    factor: f64,
    max: Duration,
    jitter: Jitter,
    seed: Option<u64>,
    deadline: Option<Duration>,
    budget: Option<RetryBudget>,
}

impl<C> RetryLayerBuilder<C> {
    /// The policy (or classifier) set so far.
    #[cfg(feature = "http")]
    pub(crate) fn policy(&self) -> &C {
        &self.classifier
    }

    /// How many attempts a call may get, the first included (default 3; 1 turns retries off).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Exponential backoff: the first retry waits about `base`, each next one `factor` times
    /// longer, never more than `max` (defaults: 2 s, 2, 10 s).
    pub fn backoff(mut self, base: Duration, factor: f64, max: Duration) -> Self {
        self.base = base;
        self.factor = factor;
        self.max = max;
        self
    }

    /// How the waits are randomised (default [`Jitter::Decorrelated`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Seeds the jitter's random source, for reproducible tests.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// No attempt starts later than `deadline` after the call was made: a retry whose wait
    /// would end past it is not made. The attempt under way is not cut short; put a
    /// [`TimeoutLayer`](crate::TimeoutLayer) outside the retry layer for that.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The retry budget, shared by every clone (default [`RetryBudget::default`]).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No retry budget: only the maximum of attempts and the deadline limit retries. An outage
    /// then multiplies the traffic to the failing downstream by the maximum of attempts.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Decides which results are retried: those classified as [`Outcome::Failure`]
    /// (default: [`DefaultClassifier`], every `Err`).
    ///
    /// The classifier sees the result with the error boxed (`&Result<Response, BoxError>`)
    /// and is cloned into each call's response future.
    ///
    /// [`Outcome::Failure`]: crate::classify::Outcome::Failure
    pub fn classifier<C2>(self, classifier: C2) -> RetryLayerBuilder<C2> {
        RetryLayerBuilder {
            name: self.name,
            classifier,
            max_attempts: self.max_attempts,
            base: self.base,
            factor: self.factor,
            max: self.max,
            jitter: self.jitter,
            seed: self.seed,
            deadline: self.deadline,
            budget: self.budget,
        }
    }

    /// Checks the configuration, as [`build`](Self::build) does, without building.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, problem| Err(ConfigError::new(COMPONENT, field, problem));
        if self.max_attempts == 0 {
            return err("max_attempts", "must be at least 1 (the first attempt)");
        }
        if self.base.is_zero() {
            return err("backoff.base", "must be greater than zero");
        }
        if !self.factor.is_finite() || self.factor < 1.0 {
            return err("backoff.factor", "must be a finite number of at least 1");
        }
        if self.max < self.base {
            return err("backoff.max", "must be at least the base");
        }
        if self.deadline.is_some_and(|d| d.is_zero()) {
            return err("deadline", "must be greater than zero");
        }
        if let Some(b) = self.budget {
            if !b.ratio.is_finite() || b.ratio < 0.0 {
                return err("budget.ratio", "must be a finite number of at least 0");
            }
            if b.window < Duration::from_millis(10) || b.window.as_millis() > u128::from(u32::MAX) {
                return err("budget.window", "must be between 10 ms and about 49 days");
            }
        }
        Ok(())
    }

    /// No deadline.
    #[cfg(feature = "serde")]
    pub(crate) fn no_deadline(mut self) -> Self {
        self.deadline = None;
        self
    }

    /// Validates the configuration and creates the layer, with its shared budget.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid field: zero attempts, a zero base, a factor
    /// below 1 (or NaN), a cap below the base, a zero deadline, or a budget with a negative or
    /// non-finite ratio or a window under 10 ms.
    pub fn build(self) -> Result<RetryLayer<C>, ConfigError> {
        self.validate()?;
        let seed = self.seed.unwrap_or_else(|| {
            static BUILT: AtomicU64 = AtomicU64::new(0x853C_49E6_748F_EA9B);
            BUILT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        });
        let meters = crate::meter::RetryMeters::new(&self.name);
        Ok(RetryLayer {
            shared: Arc::new(Shared {
                meters,
                name: self.name,
                max_attempts: self.max_attempts,
                backoff: Backoff {
                    base: self.base,
                    factor: self.factor,
                    max: self.max,
                    jitter: self.jitter,
                },
                deadline: self.deadline,
                budget: self.budget.map(Budget::new),
                seeds: AtomicU64::new(seed),
                retries: AtomicU64::new(0),
                gave_up: AtomicU64::new(0),
            }),
            classifier: self.classifier,
        })
    }
}

// === RetryHandle ===

/// Reads a retry layer's counters and budget, for metrics.
#[derive(Clone)]
pub struct RetryHandle {
    shared: Arc<Shared>,
}

impl RetryHandle {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        RetryHandle { shared }
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Retries made since the layer was built.
    pub fn retries(&self) -> u64 {
        self.shared.retries.load(Ordering::Relaxed)
    }

    /// Calls that failed and were not retried further (out of attempts, budget, deadline, or
    /// facing an open circuit).
    pub fn gave_up(&self) -> u64 {
        self.shared.gave_up.load(Ordering::Relaxed)
    }

    /// Retries the budget allows now (`None` without a budget).
    pub fn budget_available(&self) -> Option<f64> {
        let now = Instant::now();
        self.shared.budget.as_ref().map(|b| b.available(now))
    }
}

impl fmt::Debug for RetryHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryHandle")
            .field("name", &self.name())
            .field("retries", &self.retries())
            .field("gave_up", &self.gave_up())
            .finish()
    }
}
