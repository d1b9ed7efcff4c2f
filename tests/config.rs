//! Configuration files (feature `serde`): TOML and JSON into every config type, readable
//! durations, "off", unknown fields refused, validation at load naming the field, and a stack
//! built from a file that behaves as the file says. Paused clock where time matters.
#![cfg(feature = "serde")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulwark::circuit_breaker::CircuitState;
use bulwark::config::{BulkheadConfig, CircuitBreakerConfig, RetryConfig, StackConfig};
use bulwark::error::{find, rejection, Rejection};
use bulwark::retry::error::RetriesExhausted;
use bulwark::stack::StackLayer;
use bulwark::{BoxError, BulkheadLayer, CircuitBreakerLayer, RetryLayer};
use tower::{service_fn, Layer, Service, ServiceExt};

const FULL_TOML: &str = r#"
total_timeout = "5s"
attempt_timeout = "1s"
bulkhead = { max_concurrent = 2, max_wait = "0s" }

[retry]
max_attempts = 4
backoff = { base = "100ms", factor = 2.0, max = "1s" }
jitter = "none"
deadline = "4s"
budget = "off"

[circuit_breaker]
consecutive_failures = "off"
failure_rate_over_calls = { rate = 0.5, window = 10, min_calls = 4 }
failure_rate_over_time = "off"
slow_calls = "off"
break_duration = "10s"
break_backoff = { factor = 2.0, max = "1m", jitter = 0.0 }
half_open_max_calls = 1
success_threshold = 1
"#;

fn toml_err<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str) -> String {
    toml::from_str::<T>(text).unwrap_err().to_string()
}

fn json_err<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str) -> String {
    serde_json::from_str::<T>(text).unwrap_err().to_string()
}

#[test]
fn a_full_stack_config_reads_from_toml_and_json_alike() {
    let from_toml: StackConfig = toml::from_str(FULL_TOML).unwrap();
    let json = r#"{
        "total_timeout": "5s", "attempt_timeout": "1s",
        "bulkhead": { "max_concurrent": 2, "max_wait": "0s" },
        "retry": { "max_attempts": 4, "backoff": { "base": "100ms", "factor": 2.0, "max": "1s" },
                   "jitter": "none", "deadline": "4s", "budget": "off" },
        "circuit_breaker": { "consecutive_failures": "off",
            "failure_rate_over_calls": { "rate": 0.5, "window": 10, "min_calls": 4 },
            "failure_rate_over_time": "off", "slow_calls": "off", "break_duration": "10s",
            "break_backoff": { "factor": 2.0, "max": "1m", "jitter": 0.0 },
            "half_open_max_calls": 1, "success_threshold": 1 }
    }"#;
    let from_json: StackConfig = serde_json::from_str(json).unwrap();
    assert_eq!(from_toml, from_json);
    // An empty file is the stack's defaults.
    assert_eq!(
        toml::from_str::<StackConfig>("").unwrap(),
        StackConfig::default()
    );
}

#[test]
fn each_layers_config_reads_alone() {
    let b: BulkheadConfig = toml::from_str("max_concurrent = 8\nmax_wait = \"20ms\"").unwrap();
    let layer = BulkheadLayer::builder("b").config(&b).build().unwrap();
    let h = layer.handle();
    assert_eq!(
        (h.max_concurrent(), h.max_wait()),
        (8, Duration::from_millis(20))
    );

    let r: RetryConfig = toml::from_str("max_attempts = 5\ndeadline = \"off\"").unwrap();
    let layer = RetryLayer::builder("r")
        .deadline(Duration::from_secs(1))
        .config(&r)
        .build()
        .unwrap();
    let shown = format!("{layer:?}");
    assert!(
        shown.contains("max_attempts: 5") && shown.contains("deadline: None"),
        "{shown}"
    );

    let c: CircuitBreakerConfig =
        serde_json::from_str(r#"{ "consecutive_failures": 2, "break_duration": "1m30s" }"#)
            .unwrap();
    let layer = CircuitBreakerLayer::builder("c")
        .config(&c)
        .build()
        .unwrap();
    let shown = format!("{layer:?}");
    assert!(shown.contains("break_duration: 90s"), "{shown}");
}

#[test]
fn unknown_fields_are_refused_with_their_name() {
    let e = toml_err::<StackConfig>("total_timout = \"5s\"");
    assert!(e.contains("unknown field `total_timout`"), "{e}");
    let e = toml_err::<StackConfig>("[retry]\nmax_attempt = 3");
    assert!(e.contains("unknown field `max_attempt`"), "{e}");
    let e = json_err::<StackConfig>(
        r#"{ "circuit_breaker": { "slow_calls": { "threshold": "1s", "rate": 0.5, "extra": 1 } } }"#,
    );
    assert!(e.contains("unknown field `extra`"), "{e}");
    let e = json_err::<BulkheadConfig>(r#"{ "max_concurent": 3 }"#);
    assert!(e.contains("unknown field `max_concurent`"), "{e}");
}

#[test]
fn durations_need_a_unit_and_say_so() {
    let e = toml_err::<StackConfig>("total_timeout = \"30\"");
    assert!(e.contains("needs a unit"), "{e}");
    let e = toml_err::<StackConfig>("total_timeout = 30");
    assert!(e.contains("invalid type"), "{e}");
    let e = json_err::<BulkheadConfig>(r#"{ "max_wait": "5 fortnights" }"#);
    assert!(
        e.contains("`fortnights` in `5 fortnights` is not a unit"),
        "{e}"
    );
}

#[test]
fn validation_runs_at_load_and_names_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "total_timeout = \"5s\"\nattempt_timeout = \"40s\"",
            "invalid stack config: `attempt_timeout` must not exceed total_timeout",
        ),
        (
            "[retry]\nmax_attempts = 0",
            "invalid retry config: `max_attempts` must be at least 1",
        ),
        (
            "[circuit_breaker]\nfailure_rate_over_calls = { rate = 1.5, window = 10, min_calls = 5 }",
            "invalid circuit breaker config: `failure_rate_over_calls.rate` must be in (0, 1]",
        ),
        (
            "attempt_timeout = \"10s\"\n[circuit_breaker]\nfailure_rate_over_time = { rate = 0.5, span = \"15s\", buckets = 10, min_calls = 5 }",
            "`circuit_breaker.failure_rate_over_time.span` must be at least two attempt timeouts",
        ),
        (
            "bulkhead = { max_concurrent = 0 }",
            "invalid bulkhead config: `max_concurrent` must be greater than zero",
        ),
        (
            "[circuit_breaker]\nconsecutive_failures = \"off\"\nfailure_rate_over_calls = \"off\"",
            "`consecutive_failures` is off and no rate rule is set",
        ),
    ];
    for (text, expected) in cases {
        let e = toml_err::<StackConfig>(text);
        assert!(e.contains(expected), "{text:?}: got {e}");
    }
    // A lone layer's config is validated too.
    let e =
        json_err::<RetryConfig>(r#"{ "backoff": { "base": "1s", "factor": 0.5, "max": "2s" } }"#);
    assert!(e.contains("`backoff.factor`"), "{e}");
    let e = json_err::<CircuitBreakerConfig>(r#"{ "break_duration": "0s" }"#);
    assert!(e.contains("`break_duration` must be at least 1 ms"), "{e}");
}

/// A stack file is validated against the stack's defaults, not a lone layer's: the stack's
/// breaker has a rate rule, so its streak rule may go and a slow-call rule may come alone.
#[test]
fn a_partial_stack_section_is_judged_against_the_stacks_defaults() {
    for text in [
        "[circuit_breaker]\nconsecutive_failures = \"off\"",
        "[circuit_breaker]\nslow_calls = { threshold = \"2s\", rate = 0.8 }",
        "[circuit_breaker]\nbreak_duration = \"5s\"\nbreak_backoff = { factor = 2.0, max = \"20s\", jitter = 0.0 }",
    ] {
        let config: StackConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let stack = StackLayer::builder("s").config(&config).build().unwrap();
        assert!(stack.handle().circuit_breaker().is_some());
    }
    // A lone breaker has no rate rule by default: the same section is refused there.
    let e = toml_err::<CircuitBreakerConfig>("consecutive_failures = \"off\"");
    assert!(
        e.contains("invalid circuit breaker config: `consecutive_failures` is off"),
        "{e}"
    );
    // And the stack-wide rule names the stack.
    let e = toml_err::<StackConfig>(
        "[circuit_breaker]\nconsecutive_failures = \"off\"\nfailure_rate_over_calls = \"off\"",
    );
    assert!(
        e.contains("invalid circuit breaker config: `consecutive_failures` is off"),
        "{e}"
    );
}

/// Values from loaders that give strings (environment variables) and `false` for "off".
#[test]
fn numbers_as_strings_and_false_as_off() {
    let config: StackConfig = serde_json::from_str(
        r#"{ "retry": false, "circuit_breaker": { "consecutive_failures": "3" } }"#,
    )
    .unwrap();
    let handle = StackLayer::builder("s")
        .config(&config)
        .build()
        .unwrap()
        .handle();
    assert!(handle.retry().is_none());
    let e = json_err::<StackConfig>(r#"{ "retry": true }"#);
    assert!(e.contains("`true` is not a setting"), "{e}");
    let e = json_err::<StackConfig>(r#"{ "retry": 3 }"#);
    assert!(e.contains("expected a retry table"), "{e}");
}

/// A check between two settings runs at load only when the file gives both: one alone keeps
/// the other from the code, and `build()` judges the pair.
#[test]
fn one_timeout_alone_is_judged_with_the_codes_other() {
    let config: StackConfig = toml::from_str("total_timeout = \"3s\"").unwrap();
    let ok = StackLayer::builder("s")
        .attempt_timeout(Duration::from_secs(1))
        .config(&config)
        .build();
    assert!(ok.is_ok());
    let e = StackLayer::builder("s")
        .config(&config)
        .build()
        .unwrap_err();
    assert_eq!((e.component(), e.field()), ("stack", "attempt_timeout"));
}

#[test]
fn off_switches_a_stage_off() {
    let config: StackConfig =
        toml::from_str("bulkhead = \"off\"\nretry = \"off\"\ncircuit_breaker = \"off\"").unwrap();
    let handle = StackLayer::builder("s")
        .config(&config)
        .build()
        .unwrap()
        .handle();
    assert!(handle.bulkhead().is_none());
    assert!(handle.retry().is_none());
    assert!(handle.circuit_breaker().is_none());

    // A table turns a stage back on, from the stack's defaults.
    let on: StackConfig = toml::from_str("bulkhead = { max_wait = \"5ms\" }").unwrap();
    let handle = StackLayer::builder("s")
        .no_bulkhead()
        .config(&on)
        .build()
        .unwrap()
        .handle();
    let bulkhead = handle.bulkhead().unwrap();
    assert_eq!(
        (bulkhead.max_concurrent(), bulkhead.max_wait()),
        (100, Duration::from_millis(5))
    );
}

/// The stack built from `FULL_TOML` behaves as the file says: two calls in flight at most,
/// four attempts with no budget, and a breaker that trips on half of ten calls, not on a
/// streak.
#[tokio::test(start_paused = true)]
async fn a_stack_from_a_file_behaves_as_the_file_says() {
    let config: StackConfig = toml::from_str(FULL_TOML).unwrap();
    let stack = StackLayer::builder("inventory")
        .config(&config)
        .build()
        .unwrap();
    let handle = stack.handle();
    assert_eq!(handle.bulkhead().unwrap().max_concurrent(), 2);

    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let mut svc = stack.layer(service_fn(move |_: ()| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), BoxError>("down".into()) }
    }));

    // Four attempts (no budget to stop them), then the breaker has seen 4 failures of 4: it
    // needs at least 4 calls in its window, at a rate of 0.5, so it trips.
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(find::<RetriesExhausted>(&*err).unwrap().attempts(), 4);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let breaker = handle.circuit_breaker().unwrap();
    assert_eq!(breaker.state(), CircuitState::Open);
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(matches!(rejection(&*err), Some(Rejection::CircuitOpen(_))));
    assert_eq!(calls.load(Ordering::SeqCst), 4, "rejected without a call");

    // The break lasts the file's 10 s.
    let until = breaker.time_until_probe().unwrap();
    assert!(
        until > Duration::from_millis(9_900) && until <= Duration::from_secs(10),
        "{until:?}"
    );
    tokio::time::advance(until).await;
    assert_eq!(breaker.time_until_probe(), Some(Duration::ZERO));
}
