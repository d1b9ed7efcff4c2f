//! The `metrics` feature: names, labels and values, read back from a debugging recorder.
#![cfg(feature = "metrics")]

use std::time::Duration;

use bulwark::{BoxError, BulkheadLayer, CircuitBreakerLayer, RetryLayer};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use tower::{service_fn, Layer, ServiceExt};

/// The value of the metric `name` whose labels include every pair of `labels`.
fn value(
    snapshot: &[(CompositeKey, DebugValue)],
    kind: MetricKind,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    snapshot
        .iter()
        .find(|(key, _)| {
            key.kind() == kind
                && key.key().name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .and_then(|(_, value)| match value {
            DebugValue::Counter(n) => Some(*n as f64),
            DebugValue::Gauge(g) => Some(g.0),
            _ => None,
        })
}

#[test]
fn every_layer_reports_through_the_metrics_facade() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();

    // Handles are registered when the layers are built: build them under the recorder.
    let (breaker, bulkhead, retry) = metrics::with_local_recorder(&recorder, || {
        (
            CircuitBreakerLayer::builder("payments")
                .consecutive_failures(2)
                .build()
                .unwrap(),
            BulkheadLayer::builder("payments")
                .max_concurrent(1)
                .build()
                .unwrap(),
            RetryLayer::builder("payments")
                .max_attempts(2)
                .backoff(Duration::from_millis(1), 1.0, Duration::from_millis(1))
                .no_budget()
                .build()
                .unwrap(),
        )
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let ok = breaker.layer(service_fn(|_: ()| async { Ok::<_, BoxError>(()) }));
        ok.clone().oneshot(()).await.unwrap();

        // Two failures (one call, one retry) open the breaker; the next call is rejected.
        let failing = retry.layer(breaker.layer(service_fn(|_: ()| async {
            Err::<(), BoxError>("down".into())
        })));
        failing.clone().oneshot(()).await.unwrap_err();
        failing.clone().oneshot(()).await.unwrap_err();

        // A full bulkhead rejects.
        let slow = bulkhead.layer(service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(())
        }));
        let held = tokio::spawn(slow.clone().oneshot(()));
        tokio::task::yield_now().await;
        slow.clone().oneshot(()).await.unwrap_err();
        held.await.unwrap().unwrap();
    });

    let snapshot: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect();
    let counter =
        |name, labels: &[(&str, &str)]| value(&snapshot, MetricKind::Counter, name, labels);
    let gauge = |name, labels: &[(&str, &str)]| value(&snapshot, MetricKind::Gauge, name, labels);

    let p = ("name", "payments");
    assert_eq!(
        counter("bulwark_calls_total", &[p, ("outcome", "success")]),
        Some(1.0)
    );
    assert_eq!(
        counter("bulwark_calls_total", &[p, ("outcome", "failure")]),
        Some(2.0)
    );
    assert_eq!(counter("bulwark_retries_total", &[p]), Some(1.0));
    assert_eq!(
        counter("bulwark_rejections_total", &[p, ("reason", "circuit_open")]),
        Some(1.0)
    );
    assert_eq!(
        counter(
            "bulwark_rejections_total",
            &[p, ("reason", "bulkhead_full")]
        ),
        Some(1.0)
    );
    assert_eq!(gauge("bulwark_circuit_state", &[p]), Some(1.0), "open");
    assert_eq!(
        gauge("bulwark_bulkhead_in_flight", &[p]),
        Some(0.0),
        "back to zero once the held call finished"
    );
}
