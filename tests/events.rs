//! The `tracing` events the layers emit: target, level and fields, as a log pipeline sees them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark::retry::Jitter;
use bulwark::{BoxError, BulkheadLayer, CircuitBreakerLayer, RetryLayer, TimeoutLayer};
use tokio_test::assert_ready_ok;
use tower::{service_fn, Layer, ServiceExt};
use tower_test::mock;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

#[derive(Debug, Clone)]
struct Captured {
    target: String,
    level: Level,
    fields: BTreeMap<String, String>,
}

/// A minimal subscriber that keeps every event.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    fn events(&self, target: &str) -> Vec<Captured> {
        let all = self.0.lock().unwrap();
        all.iter().filter(|e| e.target == target).cloned().collect()
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Captured {
            target: event.metadata().target().to_owned(),
            level: *event.metadata().level(),
            fields,
        });
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn breaker_transitions_and_rejections_are_reported() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let layer = CircuitBreakerLayer::builder("payments")
        .consecutive_failures(2)
        .success_threshold(1)
        .break_duration(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err::<(), BoxError>("down".into())
        } else {
            Ok(())
        }
    }));
    svc.clone().oneshot(true).await.unwrap_err();
    svc.clone().oneshot(true).await.unwrap_err();
    svc.clone().oneshot(false).await.unwrap_err(); // rejected
    tokio::time::advance(Duration::from_secs(1)).await;
    svc.clone().oneshot(false).await.unwrap(); // probe, closes

    let events = capture.events("bulwark::circuit_breaker");
    type Summary<'a> = (Level, Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let summary: Vec<Summary<'_>> = events
        .iter()
        .map(|e| {
            (
                e.level,
                e.fields.get("from").map(String::as_str),
                e.fields.get("to").map(String::as_str),
                e.fields.get("reason").map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                Level::WARN,
                Some("closed"),
                Some("open"),
                Some("consecutive failures")
            ),
            (Level::DEBUG, None, None, None),
            (
                Level::INFO,
                Some("open"),
                Some("half_open"),
                Some("break ended")
            ),
            (
                Level::INFO,
                Some("half_open"),
                Some("closed"),
                Some("probes succeeded")
            ),
        ]
    );
    assert!(events.iter().all(|e| e.fields["name"] == "payments"));
    assert_eq!(events[1].fields["message"], "call rejected");
    assert_eq!(events[1].fields["state"], "open");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn bulkhead_and_timeout_rejections_are_reported() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let bulkhead = BulkheadLayer::builder("inventory")
        .max_concurrent(1)
        .build()
        .unwrap();
    let (mut a, _ha) = mock::spawn_layer::<(), (), _>(bulkhead.clone());
    let (mut b, _hb) = mock::spawn_layer::<(), (), _>(bulkhead);
    assert_ready_ok!(a.poll_ready());
    assert_ready_ok!(b.poll_ready());
    b.call(()).await.unwrap_err();
    let events = capture.events("bulwark::bulkhead");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].level, Level::DEBUG);
    assert_eq!(events[0].fields["name"], "inventory");
    assert_eq!(events[0].fields["max_concurrent"], "1");

    let slow = TimeoutLayer::new(Duration::from_millis(5)).layer(service_fn(|_: ()| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, BoxError>(())
    }));
    slow.oneshot(()).await.unwrap_err();
    let events = capture.events("bulwark::timeout");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].fields["after"], "5ms");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn each_retry_and_the_giving_up_are_reported() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let layer = RetryLayer::builder("inventory")
        .max_attempts(2)
        .backoff(Duration::from_millis(100), 2.0, Duration::from_secs(1))
        .jitter(Jitter::None)
        .no_budget()
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: ()| async {
        Err::<(), BoxError>("down".into())
    }));
    svc.oneshot(()).await.unwrap_err();

    let events = capture.events("bulwark::retry");
    assert_eq!(events.len(), 2);
    let retry = &events[0].fields;
    assert_eq!(
        (
            retry["name"].as_str(),
            retry["attempt"].as_str(),
            retry["delay"].as_str(),
            retry["reason"].as_str()
        ),
        ("inventory", "2", "100ms", "error")
    );
    let gave_up = &events[1].fields;
    assert_eq!(
        (gave_up["attempts"].as_str(), gave_up["reason"].as_str()),
        ("2", "max attempts")
    );
}
