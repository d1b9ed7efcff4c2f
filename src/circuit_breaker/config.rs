//! The breaker's configuration: a builder whose `build()` validates every field.

use std::sync::Arc;
use std::time::Duration;

use super::layer::CircuitBreakerLayer;
use crate::classify::DefaultClassifier;
use crate::error::ConfigError;

use super::state::{HALF_OPEN_FIELD_MAX, PAYLOAD_MAX};

const COMPONENT: &str = "circuit breaker";

/// The largest count window: the window's counts are 32-bit and its slots a byte each.
pub(crate) const MAX_COUNT_WINDOW: u32 = 1 << 20;
/// The most buckets a time window may have.
pub(crate) const MAX_BUCKETS: u32 = 1 << 16;

/// A failure-rate (and slow-call-rate) rule over the last N calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CountRule {
    pub(crate) size: u32,
    pub(crate) failure_rate: f64,
    pub(crate) min_calls: u32,
}

/// A failure-rate (and slow-call-rate) rule over the calls of the last `span`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TimeRule {
    pub(crate) span: Duration,
    pub(crate) buckets: u32,
    pub(crate) failure_rate: f64,
    pub(crate) min_calls: u32,
}

/// Calls at least `threshold` long are slow; the breaker trips when the share of slow calls in a
/// window reaches `rate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SlowRule {
    pub(crate) threshold: Duration,
    pub(crate) rate: f64,
}

/// How the break grows on consecutive trips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Backoff {
    pub(crate) factor: f64,
    pub(crate) max: Duration,
    pub(crate) jitter: f64,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) count: Option<CountRule>,
    pub(crate) time: Option<TimeRule>,
    pub(crate) slow: Option<SlowRule>,
    pub(crate) break_duration: Duration,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) half_open_max_calls: u32,
    pub(crate) success_threshold: u32,
    pub(crate) seed: u64,
}

impl Policy {
    /// How long the breaker stays open after its `trips_before`+1-th consecutive trip.
    pub(crate) fn break_for(&self, trips_before: u32, random: f64) -> Duration {
        let Some(backoff) = self.backoff else {
            return self.break_duration;
        };
        if trips_before == 0 {
            return self.break_duration;
        }
        let base = self.break_duration.as_secs_f64();
        let grown = base * backoff.factor.powi(trips_before.min(1_000) as i32);
        let capped = grown.min(backoff.max.as_secs_f64());
        // Jitter takes up to `jitter` of the growth away, so breakers that keep tripping
        // together drift apart; the break never gets shorter than `break_duration`.
        let jittered = base + (capped - base) * (1.0 - backoff.jitter * random.clamp(0.0, 1.0));
        Duration::try_from_secs_f64(jittered)
            .unwrap_or(backoff.max)
            .clamp(self.break_duration, backoff.max)
    }
}

/// Builds a [`CircuitBreakerLayer`]; [`build`](Self::build) validates the configuration.
///
/// Defaults: trip after 5 consecutive failures, stay open 30 s, admit 1 probe at a time when
/// half-open, close after 2 successful probes, no rate rules, no slow-call rule, no backoff of
/// the break, and [`DefaultClassifier`] (every `Err` is a failure).
#[derive(Debug, Clone)]
#[must_use]
pub struct CircuitBreakerLayerBuilder<C = DefaultClassifier> {
    name: Arc<str>,
    classifier: C,
    consecutive_failures: Option<u32>,
    count: Option<CountRule>,
    time: Option<TimeRule>,
    slow: Option<SlowRule>,
    break_duration: Duration,
    backoff: Option<Backoff>,
    half_open_max_calls: u32,
    success_threshold: u32,
    seed: Option<u64>,
}

impl CircuitBreakerLayerBuilder {
    pub(crate) fn new(name: Arc<str>) -> Self {
        CircuitBreakerLayerBuilder {
            name,
            classifier: DefaultClassifier::new(),
            consecutive_failures: Some(5),
            count: None,
            time: None,
            slow: None,
            break_duration: Duration::from_secs(30),
            backoff: None,
            half_open_max_calls: 1,
            success_threshold: 2,
            seed: None,
        }
    }
}

impl<C> CircuitBreakerLayerBuilder<C> {
    /// Trips after `n` failures in a row (default 5). A success resets the streak.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// Turns the consecutive-failures rule off, to trip on rate rules only.
    pub fn no_consecutive_failures(mut self) -> Self {
        self.consecutive_failures = None;
        self
    }

    /// Trips when at least `rate` (in (0, 1]) of the last `window` calls failed, once the window
    /// holds at least `min_calls` calls.
    ///
    /// A call `window + 1` calls ago no longer counts, however long the service was healthy
    /// before. `min_calls` must be between 1 and `window`.
    pub fn failure_rate_over_calls(mut self, rate: f64, window: u32, min_calls: u32) -> Self {
        self.count = Some(CountRule {
            size: window,
            failure_rate: rate,
            min_calls,
        });
        self
    }

    /// Trips when at least `rate` (in (0, 1]) of the calls of the last `span` failed, once at
    /// least `min_calls` calls were seen in it.
    ///
    /// The window slides in `buckets` steps of `span / buckets` (at least 1 ms each): it holds
    /// the calls of the current step and the `buckets - 1` before it.
    pub fn failure_rate_over_time(
        mut self,
        rate: f64,
        span: Duration,
        buckets: u32,
        min_calls: u32,
    ) -> Self {
        self.time = Some(TimeRule {
            span,
            buckets,
            failure_rate: rate,
            min_calls,
        });
        self
    }

    /// Counts calls that take at least `threshold` (success or not) as slow, and trips when at
    /// least `rate` (in (0, 1]) of a window's calls were slow, with that window's minimum calls.
    ///
    /// Needs a rate window ([`failure_rate_over_calls`](Self::failure_rate_over_calls) or
    /// [`failure_rate_over_time`](Self::failure_rate_over_time)). A slow probe in HalfOpen
    /// re-opens the breaker, as a failed one does.
    pub fn slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        self.slow = Some(SlowRule { threshold, rate });
        self
    }

    /// How long the breaker stays open before it lets a probe through (default 30 s).
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.break_duration = duration;
        self
    }

    /// Makes the break grow on each consecutive trip without a successful close in between:
    /// `break_duration * factor^n`, capped at `max`, with up to `jitter` (in [0, 1]) of the
    /// growth taken away at random. Every break lasts at least `break_duration`, the first
    /// exactly that. A successful close resets the growth.
    pub fn break_backoff(mut self, factor: f64, max: Duration, jitter: f64) -> Self {
        self.backoff = Some(Backoff {
            factor,
            max,
            jitter,
        });
        self
    }

    /// How many probes HalfOpen lets through at once, across every clone (default 1).
    pub fn half_open_max_calls(mut self, n: u32) -> Self {
        self.half_open_max_calls = n;
        self
    }

    /// How many successful probes close the breaker (default 2).
    pub fn success_threshold(mut self, n: u32) -> Self {
        self.success_threshold = n;
        self
    }

    /// Seeds the random source of the break's jitter, for reproducible tests.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Decides what counts as a failure (default: [`DefaultClassifier`], every `Err`).
    ///
    /// The classifier sees the inner service's result with the error already boxed
    /// (`&Result<Response, BoxError>`), and is cloned into each call's response future, so
    /// keep it cheap to clone. Rejections by bulwark's own layers inside the breaker
    /// (`BulkheadFull`, an inner `CircuitOpen`) never reach it: they count for nothing, since
    /// the downstream was not called. An [`Elapsed`](crate::timeout::error::Elapsed) does reach
    /// it: a downstream too slow to answer is failing.
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayerBuilder<C2> {
        CircuitBreakerLayerBuilder {
            name: self.name,
            classifier,
            consecutive_failures: self.consecutive_failures,
            count: self.count,
            time: self.time,
            slow: self.slow,
            break_duration: self.break_duration,
            backoff: self.backoff,
            half_open_max_calls: self.half_open_max_calls,
            success_threshold: self.success_threshold,
            seed: self.seed,
        }
    }

    /// Validates the configuration and creates the layer, with its shared state.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid field: a zero count or duration, a rate
    /// outside (0, 1] (or NaN), a minimum of calls above its window, a slow-call rule without a
    /// rate window, a backoff factor below 1, a jitter outside [0, 1], or no trip rule at all.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        let policy = self.validate()?;
        Ok(CircuitBreakerLayer::from_parts(
            self.name,
            policy,
            self.classifier,
        ))
    }

    /// Turns the rule of [`failure_rate_over_calls`](Self::failure_rate_over_calls) off.
    #[cfg(feature = "serde")]
    pub(crate) fn no_failure_rate_over_calls(mut self) -> Self {
        self.count = None;
        self
    }

    /// Turns the rule of [`failure_rate_over_time`](Self::failure_rate_over_time) off.
    #[cfg(feature = "serde")]
    pub(crate) fn no_failure_rate_over_time(mut self) -> Self {
        self.time = None;
        self
    }

    /// Turns the slow-call rule off.
    #[cfg(feature = "serde")]
    pub(crate) fn no_slow_calls(mut self) -> Self {
        self.slow = None;
        self
    }

    /// Turns the break's backoff off.
    #[cfg(feature = "serde")]
    pub(crate) fn no_break_backoff(mut self) -> Self {
        self.backoff = None;
        self
    }

    /// The span of the time window, if one is set (for the standard stack's checks).
    pub(crate) fn time_window_span(&self) -> Option<Duration> {
        self.time.map(|t| t.span)
    }

    pub(crate) fn validate(&self) -> Result<Policy, ConfigError> {
        let err = |field, problem| Err(ConfigError::new(COMPONENT, field, problem));
        let rate_ok = |r: f64| r.is_finite() && r > 0.0 && r <= 1.0;

        if self.consecutive_failures == Some(0) {
            return err("consecutive_failures", "must be greater than zero");
        }
        if let Some(c) = self.count {
            if c.size == 0 || c.size > MAX_COUNT_WINDOW {
                return err(
                    "failure_rate_over_calls.window",
                    "must be between 1 and 2^20",
                );
            }
            if !rate_ok(c.failure_rate) {
                return err("failure_rate_over_calls.rate", "must be in (0, 1]");
            }
            if c.min_calls == 0 || c.min_calls > c.size {
                return err(
                    "failure_rate_over_calls.min_calls",
                    "must be between 1 and the window size",
                );
            }
        }
        if let Some(t) = self.time {
            if t.buckets == 0 || t.buckets > MAX_BUCKETS {
                return err(
                    "failure_rate_over_time.buckets",
                    "must be between 1 and 65536",
                );
            }
            if t.span.as_millis() < u128::from(t.buckets) {
                return err(
                    "failure_rate_over_time.span",
                    "must be at least 1 ms per bucket",
                );
            }
            if t.span.as_millis() > u128::from(u32::MAX) {
                return err(
                    "failure_rate_over_time.span",
                    "must be at most about 49 days",
                );
            }
            if !rate_ok(t.failure_rate) {
                return err("failure_rate_over_time.rate", "must be in (0, 1]");
            }
            if t.min_calls == 0 {
                return err(
                    "failure_rate_over_time.min_calls",
                    "must be greater than zero",
                );
            }
        }
        if let Some(s) = self.slow {
            if s.threshold.is_zero() {
                return err("slow_calls.threshold", "must be greater than zero");
            }
            if !rate_ok(s.rate) {
                return err("slow_calls.rate", "must be in (0, 1]");
            }
            if self.count.is_none() && self.time.is_none() {
                return err(
                    "slow_calls",
                    "needs a rate window (failure_rate_over_calls or failure_rate_over_time)",
                );
            }
        }
        if self.consecutive_failures.is_none() && self.count.is_none() && self.time.is_none() {
            return err(
                "consecutive_failures",
                "is off and no rate rule is set: the breaker could never trip",
            );
        }
        // The break's end is kept in milliseconds in 40 bits; a year is far below that.
        let year = Duration::from_secs(365 * 24 * 3600);
        if self.break_duration < Duration::from_millis(1) {
            return err("break_duration", "must be at least 1 ms");
        }
        if self.break_duration > year {
            return err("break_duration", "must be at most a year");
        }
        debug_assert!(year.as_millis() < u128::from(PAYLOAD_MAX));
        if let Some(b) = self.backoff {
            if !b.factor.is_finite() || b.factor < 1.0 {
                return err(
                    "break_backoff.factor",
                    "must be a finite number of at least 1",
                );
            }
            if b.max < self.break_duration || b.max > year {
                return err(
                    "break_backoff.max",
                    "must be between break_duration and a year",
                );
            }
            if !b.jitter.is_finite() || !(0.0..=1.0).contains(&b.jitter) {
                return err("break_backoff.jitter", "must be in [0, 1]");
            }
        }
        let field_max = HALF_OPEN_FIELD_MAX as u32;
        if self.half_open_max_calls == 0 || self.half_open_max_calls > field_max {
            return err("half_open_max_calls", "must be between 1 and 2^20 - 1");
        }
        if self.success_threshold == 0 || self.success_threshold > field_max {
            return err("success_threshold", "must be between 1 and 2^20 - 1");
        }
        Ok(Policy {
            consecutive_failures: self.consecutive_failures,
            count: self.count,
            time: self.time,
            slow: self.slow,
            break_duration: self.break_duration,
            backoff: self.backoff,
            half_open_max_calls: self.half_open_max_calls,
            success_threshold: self.success_threshold,
            seed: self.seed.unwrap_or_else(|| seed_from(&self.name)),
        })
    }
}

/// A per-breaker default seed, so breakers do not jitter in step: the name, hashed (FNV-1a),
/// mixed with a process-wide count of breakers built.
fn seed_from(name: &str) -> u64 {
    static BUILT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let n = BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    hash ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn builder() -> CircuitBreakerLayerBuilder {
        CircuitBreakerLayerBuilder::new("t".into())
    }

    fn field(b: CircuitBreakerLayerBuilder) -> &'static str {
        b.validate().unwrap_err().field()
    }

    #[test]
    fn the_defaults_are_valid() {
        let p = builder().validate().unwrap();
        assert_eq!(p.consecutive_failures, Some(5));
        assert_eq!(p.break_duration, Duration::from_secs(30));
        assert_eq!((p.half_open_max_calls, p.success_threshold), (1, 2));
    }

    #[test]
    fn each_invalid_field_is_named() {
        assert_eq!(
            field(builder().consecutive_failures(0)),
            "consecutive_failures"
        );
        assert_eq!(
            field(builder().failure_rate_over_calls(0.0, 10, 5)),
            "failure_rate_over_calls.rate"
        );
        assert_eq!(
            field(builder().failure_rate_over_calls(f64::NAN, 10, 5)),
            "failure_rate_over_calls.rate"
        );
        assert_eq!(
            field(builder().failure_rate_over_calls(1.5, 10, 5)),
            "failure_rate_over_calls.rate"
        );
        assert_eq!(
            field(builder().failure_rate_over_calls(0.5, 10, 11)),
            "failure_rate_over_calls.min_calls"
        );
        assert_eq!(
            field(builder().failure_rate_over_calls(0.5, 0, 0)),
            "failure_rate_over_calls.window"
        );
        assert_eq!(
            field(builder().failure_rate_over_time(0.5, Duration::from_millis(5), 10, 1)),
            "failure_rate_over_time.span"
        );
        assert_eq!(
            field(builder().failure_rate_over_time(f64::INFINITY, Duration::from_secs(5), 5, 1)),
            "failure_rate_over_time.rate"
        );
        assert_eq!(
            field(builder().slow_calls(Duration::from_secs(1), 0.5)),
            "slow_calls"
        );
        assert_eq!(
            field(
                builder()
                    .failure_rate_over_calls(0.5, 10, 5)
                    .slow_calls(Duration::ZERO, 0.5)
            ),
            "slow_calls.threshold"
        );
        assert_eq!(
            field(builder().no_consecutive_failures()),
            "consecutive_failures"
        );
        assert_eq!(
            field(builder().break_duration(Duration::ZERO)),
            "break_duration"
        );
        assert_eq!(
            field(builder().break_backoff(0.5, Duration::from_secs(60), 0.1)),
            "break_backoff.factor"
        );
        assert_eq!(
            field(builder().break_backoff(2.0, Duration::from_secs(1), 0.1)),
            "break_backoff.max"
        );
        assert_eq!(
            field(builder().break_backoff(2.0, Duration::from_secs(60), -0.1)),
            "break_backoff.jitter"
        );
        assert_eq!(
            field(builder().half_open_max_calls(0)),
            "half_open_max_calls"
        );
        assert_eq!(field(builder().success_threshold(0)), "success_threshold");
        let e = builder().success_threshold(0).validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid circuit breaker config: `success_threshold` must be between 1 and 2^20 - 1"
        );
    }

    #[test]
    fn the_break_grows_and_is_capped() {
        let p = builder()
            .break_duration(Duration::from_secs(10))
            .break_backoff(2.0, Duration::from_secs(60), 0.0)
            .validate()
            .unwrap();
        let breaks: Vec<u64> = (0..5).map(|n| p.break_for(n, 0.5).as_secs()).collect();
        assert_eq!(breaks, [10, 20, 40, 60, 60]);
        assert_eq!(
            builder().validate().unwrap().break_for(7, 0.9),
            Duration::from_secs(30)
        );
    }

    proptest! {
        #[test]
        fn the_break_stays_within_its_bounds(
            base_ms in 1u64..100_000,
            factor in 1.0f64..10.0,
            extra_ms in 0u64..1_000_000,
            jitter in 0.0f64..=1.0,
            trips in 0u32..10_000,
            random in 0.0f64..1.0,
        ) {
            let base = Duration::from_millis(base_ms);
            let max = base + Duration::from_millis(extra_ms);
            let p = builder().break_duration(base).break_backoff(factor, max, jitter).validate().unwrap();
            let d = p.break_for(trips, random);
            prop_assert!(d <= max);
            prop_assert!(d >= base, "never shorter than break_duration");
            if trips == 0 {
                prop_assert_eq!(d, base, "the first break is exactly break_duration");
            }
        }

        #[test]
        fn validation_never_panics(
            n in any::<u32>(), rate in any::<f64>(), window in any::<u32>(), min in any::<u32>(),
            span_ms in any::<u64>(), buckets in any::<u32>(), factor in any::<f64>(), jitter in any::<f64>(),
        ) {
            let _ = builder()
                .consecutive_failures(n)
                .failure_rate_over_calls(rate, window, min)
                .failure_rate_over_time(rate, Duration::from_millis(span_ms), buckets, min)
                .slow_calls(Duration::from_millis(span_ms), rate)
                .break_backoff(factor, Duration::from_millis(span_ms), jitter)
                .half_open_max_calls(n)
                .success_threshold(n)
                .validate();
        }
    }
}
