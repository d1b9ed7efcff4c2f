//! Configuration files (feature `serde`): every layer's settings, and the standard stack's,
//! from TOML, JSON, YAML or any other self-describing serde format.
//!
//! - Durations are strings with a unit: `"250ms"`, `"1.5s"`, `"1m30s"` (units `ns`, `us` or
//!   `µs`, `ms`, `s`, `m` or `min`, `h`, `d`; parts add up).
//! - A setting that can be switched off takes `"off"` (or `false`).
//! - A field left out keeps the builder's value; for the stack, the stack's defaults.
//! - Unknown fields are an error.
//! - Each type is validated as it is read, as `build()` would validate it applied to the
//!   defaults (a stack file against the stack's defaults), so a bad file fails at load and
//!   the error names the field. The checks between the total and attempt timeouts (and the
//!   breaker's time window) run at load only when the file gives both sides. Applied to a
//!   builder changed in code, `build()` checks the result again.
//!
//! ```
//! use bulwark::config::StackConfig;
//! use bulwark::stack::StackLayer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: StackConfig = serde_json::from_str(r#"{
//!     "total_timeout": "5s",
//!     "attempt_timeout": "1s",
//!     "bulkhead": { "max_concurrent": 64 },
//!     "retry": { "max_attempts": 2, "budget": "off" },
//!     "circuit_breaker": { "consecutive_failures": 3, "break_duration": "10s" }
//! }"#)?;
//! let stack = StackLayer::builder("inventory").config(&config).build()?;
//!
//! let bad = serde_json::from_str::<StackConfig>(
//!     r#"{ "total_timeout": "5s", "attempt_timeout": "40s" }"#,
//! );
//! assert!(bad.unwrap_err().to_string().contains("`attempt_timeout` must not exceed total_timeout"));
//! # let _ = stack;
//! # Ok(())
//! # }
//! ```
//!
//! The same in TOML:
//!
//! ```toml
//! total_timeout = "5s"
//! attempt_timeout = "1s"
//! bulkhead = { max_concurrent = 64, max_wait = "0s" }        # or bulkhead = "off"
//!
//! [retry]                                                     # or retry = "off"
//! max_attempts = 3
//! backoff = { base = "200ms", factor = 2.0, max = "5s" }      # factor: not with decorrelated
//! jitter = "equal"                                            # none, full, decorrelated
//! deadline = "4s"                                             # or "off"
//! budget = { ratio = 0.2, min_per_sec = 10, window = "10s" }  # or "off"
//!
//! [circuit_breaker]                                           # or circuit_breaker = "off"
//! consecutive_failures = 5                                    # or "off"
//! failure_rate_over_calls = { rate = 0.5, window = 100, min_calls = 20 }  # or "off"
//! failure_rate_over_time = { rate = 0.5, span = "30s", buckets = 10, min_calls = 20 }
//! slow_calls = { threshold = "2s", rate = 0.8 }
//! break_duration = "30s"
//! break_backoff = { factor = 2.0, max = "5m", jitter = 0.2 }
//! half_open_max_calls = 1
//! success_threshold = 2
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, value::MapAccessDeserializer, Deserializer, IntoDeserializer, Visitor};
use serde::Deserialize;

use crate::bulkhead::BulkheadLayerBuilder;
use crate::circuit_breaker::CircuitBreakerLayerBuilder;
use crate::error::ConfigError;
use crate::retry::{Jitter, RetryBudget, RetryLayerBuilder};
use crate::stack::StackBuilder;
use crate::{BulkheadLayer, CircuitBreakerLayer, RetryLayer};

// === Durations and "off" ===

/// Parses a duration such as `"250ms"`, `"30s"`, `"1.5s"` or `"1m30s"`.
///
/// # Errors
///
/// A message saying what is wrong: no unit, an unknown unit, no number, or too large.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const UNITS: &str = "ns, us, ms, s, m, h, d";
    let s = text.trim();
    if s.is_empty() {
        return Err("a duration must not be empty".into());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration like \"250ms\" or \"30s\""))?;
        let tail = tail.trim_start();
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            // The micro sign and the Greek mu both.
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "" => return Err(format!("`{text}` needs a unit, like \"250ms\" or \"30s\"")),
            other => return Err(format!("`{other}` in `{text}` is not a unit ({UNITS})")),
        };
        total += number * scale;
        rest = tail.trim_start();
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("`{text}` is too large a duration"))
}

/// A duration read from a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurVisitor;
        impl Visitor<'_> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, like \"250ms\" or \"30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurVisitor)
    }
}

/// A setting that is either `"off"` or a value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Setting<T> {
    Off,
    On(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Setting<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SettingVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for SettingVisitor<T> {
            type Value = Setting<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value, or \"off\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "off" {
                    return Ok(Setting::Off);
                }
                match T::deserialize(v.into_deserializer()) {
                    Ok(value) => Ok(Setting::On(value)),
                    // A number that came as a string (from environment variables, say).
                    Err(err) => match v.trim().parse::<u64>() {
                        Ok(n) => T::deserialize(n.into_deserializer())
                            .map(Setting::On)
                            .map_err(|_: E| err),
                        Err(_) => Err(err),
                    },
                }
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                if v {
                    Err(E::custom(
                        "`true` is not a setting: give a value, or \"off\"",
                    ))
                } else {
                    Ok(Setting::Off)
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(Setting::On)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(Setting::On)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(Setting::On)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Setting::On)
            }
        }
        deserializer.deserialize_any(SettingVisitor(PhantomData))
    }
}

/// Turns a validation error into the deserializer's error.
fn invalid<E: de::Error>(err: ConfigError) -> E {
    E::custom(err)
}

// === Bulkhead ===

/// A bulkhead's settings; see [`BulkheadLayerBuilder::config`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BulkheadConfig {
    raw: RawBulkhead,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a bulkhead table")]
struct RawBulkhead {
    max_concurrent: Option<usize>,
    max_wait: Option<Dur>,
}

impl<'de> Deserialize<'de> for BulkheadConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let config = BulkheadConfig {
            raw: RawBulkhead::deserialize(deserializer)?,
        };
        // The cap is required by a lone bulkhead, not by the stack: check it only if given.
        if config.raw.max_concurrent.is_some() {
            BulkheadLayer::builder("config")
                .config(&config)
                .validate()
                .map_err(invalid)?;
        }
        Ok(config)
    }
}

impl BulkheadLayerBuilder {
    /// Applies the settings `config` gives; the others keep their values.
    pub fn config(mut self, config: &BulkheadConfig) -> Self {
        if let Some(n) = config.raw.max_concurrent {
            self = self.max_concurrent(n);
        }
        if let Some(wait) = config.raw.max_wait {
            self = self.max_wait(wait.0);
        }
        self
    }
}

// === Retry ===

/// A retry layer's settings; see [`RetryLayerBuilder::config`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryConfig {
    raw: RawRetry,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a retry table")]
struct RawRetry {
    max_attempts: Option<u32>,
    backoff: Option<RawBackoff>,
    jitter: Option<Jitter>,
    deadline: Option<Setting<Dur>>,
    budget: Option<Setting<RawBudget>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a backoff table { base, factor, max }"
)]
struct RawBackoff {
    base: Dur,
    factor: f64,
    max: Dur,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a budget table { ratio, min_per_sec, window }"
)]
struct RawBudget {
    ratio: f64,
    min_per_sec: u32,
    window: Dur,
}

impl<'de> Deserialize<'de> for RetryConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let config = RetryConfig {
            raw: RawRetry::deserialize(deserializer)?,
        };
        RetryLayer::builder("config")
            .config(&config)
            .validate()
            .map_err(invalid)?;
        Ok(config)
    }
}

impl<C> RetryLayerBuilder<C> {
    /// Applies the settings `config` gives; the others keep their values.
    pub fn config(mut self, config: &RetryConfig) -> Self {
        let raw = &config.raw;
        if let Some(n) = raw.max_attempts {
            self = self.max_attempts(n);
        }
        if let Some(b) = raw.backoff {
            self = self.backoff(b.base.0, b.factor, b.max.0);
        }
        if let Some(jitter) = raw.jitter {
            self = self.jitter(jitter);
        }
        match raw.deadline {
            Some(Setting::On(d)) => self = self.deadline(d.0),
            Some(Setting::Off) => self = self.no_deadline(),
            None => {}
        }
        match raw.budget {
            Some(Setting::On(b)) => {
                self = self.budget(RetryBudget::new(b.ratio, b.min_per_sec, b.window.0));
            }
            Some(Setting::Off) => self = self.no_budget(),
            None => {}
        }
        self
    }
}

// === Circuit breaker ===

/// A circuit breaker's settings; see [`CircuitBreakerLayerBuilder::config`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CircuitBreakerConfig {
    raw: RawBreaker,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a circuit breaker table")]
struct RawBreaker {
    consecutive_failures: Option<Setting<u32>>,
    failure_rate_over_calls: Option<Setting<RawCountRule>>,
    failure_rate_over_time: Option<Setting<RawTimeRule>>,
    slow_calls: Option<Setting<RawSlowRule>>,
    break_duration: Option<Dur>,
    break_backoff: Option<Setting<RawBreakBackoff>>,
    half_open_max_calls: Option<u32>,
    success_threshold: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rule table { rate, window, min_calls }"
)]
struct RawCountRule {
    rate: f64,
    window: u32,
    min_calls: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rule table { rate, span, buckets, min_calls }"
)]
struct RawTimeRule {
    rate: f64,
    span: Dur,
    buckets: u32,
    min_calls: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a rule table { threshold, rate }")]
struct RawSlowRule {
    threshold: Dur,
    rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a break backoff table { factor, max, jitter }"
)]
struct RawBreakBackoff {
    factor: f64,
    max: Dur,
    jitter: f64,
}

impl<'de> Deserialize<'de> for CircuitBreakerConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let config = CircuitBreakerConfig {
            raw: RawBreaker::deserialize(deserializer)?,
        };
        CircuitBreakerLayer::builder("config")
            .config(&config)
            .validate()
            .map_err(invalid)?;
        Ok(config)
    }
}

impl<C> CircuitBreakerLayerBuilder<C> {
    /// Applies the settings `config` gives; the others keep their values.
    pub fn config(mut self, config: &CircuitBreakerConfig) -> Self {
        let raw = &config.raw;
        match raw.consecutive_failures {
            Some(Setting::On(n)) => self = self.consecutive_failures(n),
            Some(Setting::Off) => self = self.no_consecutive_failures(),
            None => {}
        }
        match raw.failure_rate_over_calls {
            Some(Setting::On(r)) => {
                self = self.failure_rate_over_calls(r.rate, r.window, r.min_calls);
            }
            Some(Setting::Off) => self = self.no_failure_rate_over_calls(),
            None => {}
        }
        match raw.failure_rate_over_time {
            Some(Setting::On(r)) => {
                self = self.failure_rate_over_time(r.rate, r.span.0, r.buckets, r.min_calls);
            }
            Some(Setting::Off) => self = self.no_failure_rate_over_time(),
            None => {}
        }
        match raw.slow_calls {
            Some(Setting::On(r)) => self = self.slow_calls(r.threshold.0, r.rate),
            Some(Setting::Off) => self = self.no_slow_calls(),
            None => {}
        }
        if let Some(d) = raw.break_duration {
            self = self.break_duration(d.0);
        }
        match raw.break_backoff {
            Some(Setting::On(b)) => self = self.break_backoff(b.factor, b.max.0, b.jitter),
            Some(Setting::Off) => self = self.no_break_backoff(),
            None => {}
        }
        if let Some(n) = raw.half_open_max_calls {
            self = self.half_open_max_calls(n);
        }
        if let Some(n) = raw.success_threshold {
            self = self.success_threshold(n);
        }
        self
    }
}

// === Standard stack ===

/// The standard stack's settings; see [`StackBuilder::config`] and the
/// [module docs](self) for the format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StackConfig {
    raw: RawStack,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a stack table")]
struct RawStack {
    // The stages' own types, unvalidated: the stack validates them together, against the
    // stack's defaults.
    bulkhead: Option<Setting<RawBulkhead>>,
    total_timeout: Option<Setting<Dur>>,
    retry: Option<Setting<RawRetry>>,
    circuit_breaker: Option<Setting<RawBreaker>>,
    attempt_timeout: Option<Setting<Dur>>,
}

impl<'de> Deserialize<'de> for StackConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let config = StackConfig {
            raw: RawStack::deserialize(deserializer)?,
        };
        // The checks between stages run here only when the file gives both sides: a timeout
        // the file leaves out keeps whatever the code set, which `build()` checks.
        let mut builder = crate::stack::StackLayer::builder("config");
        if config.raw.total_timeout.is_none() {
            builder = builder.no_total_timeout();
        }
        if config.raw.attempt_timeout.is_none() {
            builder = builder.no_attempt_timeout();
        }
        builder.config(&config).validate().map_err(invalid)?;
        Ok(config)
    }
}

impl<C: Clone, P: Clone> StackBuilder<C, P> {
    /// Applies the settings `config` gives; the others keep their values (the stack's
    /// defaults, or what was set before). A stage given as `"off"` is switched off; a stage
    /// given as a table is switched on and tuned.
    pub fn config(mut self, config: &StackConfig) -> Self {
        let raw = &config.raw;
        match &raw.bulkhead {
            Some(Setting::On(b)) => {
                self = self.bulkhead_on();
                if let Some(n) = b.max_concurrent {
                    self = self.max_concurrent(n);
                }
                if let Some(wait) = b.max_wait {
                    self = self.bulkhead_wait(wait.0);
                }
            }
            Some(Setting::Off) => self = self.no_bulkhead(),
            None => {}
        }
        match raw.total_timeout {
            Some(Setting::On(d)) => self = self.total_timeout(d.0),
            Some(Setting::Off) => self = self.no_total_timeout(),
            None => {}
        }
        match &raw.retry {
            Some(Setting::On(r)) => {
                let r = RetryConfig { raw: r.clone() };
                self = self.retry(|b| b.config(&r));
            }
            Some(Setting::Off) => self = self.no_retry(),
            None => {}
        }
        match &raw.circuit_breaker {
            Some(Setting::On(c)) => {
                let c = CircuitBreakerConfig { raw: c.clone() };
                self = self.circuit_breaker(|b| b.config(&c));
            }
            Some(Setting::Off) => self = self.no_circuit_breaker(),
            None => {}
        }
        match raw.attempt_timeout {
            Some(Setting::On(d)) => self = self.attempt_timeout(d.0),
            Some(Setting::Off) => self = self.no_attempt_timeout(),
            None => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, StackConfig};
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        /// Any text: an error or a duration, never a panic.
        #[test]
        fn duration_parsing_never_panics(text in "\\PC{0,24}") {
            let _ = parse_duration(&text);
        }

        /// A whole number with a unit reads exactly.
        #[test]
        fn whole_numbers_read_exactly(n in 0u64..1_000_000, unit in 0usize..6) {
            let (suffix, nanos) = [("ns", 1u64), ("us", 1_000), ("ms", 1_000_000),
                ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000)][unit];
            let got = parse_duration(&format!("{n}{suffix}")).unwrap();
            let want = Duration::from_nanos(n * nanos);
            // Within a nanosecond per part: the sum is made in f64.
            prop_assert!(got.abs_diff(want) <= Duration::from_nanos(1 + want.as_nanos() as u64 / 1_000_000_000_000), "{got:?} vs {want:?}");
        }

        /// Any JSON made of the config's own words: a config or an error, never a panic.
        #[test]
        fn config_loading_never_panics(parts in proptest::collection::vec(prop_oneof![
            Just("{"), Just("}"), Just("\"retry\":"), Just("\"total_timeout\":"),
            Just("\"circuit_breaker\":"), Just("\"off\""), Just("\"5s\""), Just("0"),
            Just("-1"), Just("1e309"), Just("true"), Just("false"), Just(","), Just("null"),
            Just("\"max_attempts\":"), Just("\"budget\":"), Just("\"failure_rate_over_calls\":"),
            Just("\"rate\":"), Just("0.5"), Just("\"window\":"), Just("\"1ms\""),
        ], 0..24)) {
            let text: String = parts.concat();
            let _ = serde_json::from_str::<StackConfig>(&text);
            let _ = toml::from_str::<StackConfig>(&text);
        }
    }

    #[test]
    fn durations_read_with_their_units() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("30s"), Ok(ms(30_000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration(" 2h "), Ok(ms(7_200_000)));
        assert_eq!(parse_duration("1 m 5 s"), Ok(ms(65_000)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("100\u{b5}s"), Ok(Duration::from_micros(100)));
        assert_eq!(
            parse_duration("100\u{3bc}s"),
            Ok(Duration::from_micros(100))
        );
        assert_eq!(parse_duration("2min"), Ok(ms(120_000)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        assert!(parse_duration("30").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .contains("is not a unit"));
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("   ").unwrap_err().contains("empty"));
        assert!(parse_duration("5 \u{3b1}s")
            .unwrap_err()
            .contains("is not a unit"));
        assert!(parse_duration("ms").unwrap_err().contains("not a duration"));
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999d")
            .unwrap_err()
            .contains("too large"));
    }
}
