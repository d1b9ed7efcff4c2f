//! Chaos soak: the embedded gateway under concurrent clients (orders and reads) while a fault
//! schedule breaks each downstream in turn (error rates up to 50%, latency above the attempt
//! timeout, a service refusing connections, a service restarting). At the end it checks, and
//! prints: every request answered (a success or a JSON 4xx/5xx) within the total timeout; no
//! bulkhead ever above its cap; in every phase, the failing service's breaker opened, and all
//! closed after recovery; the saga invariant once the deferred compensations ran.
//!
//! `bounded_soak` runs in CI (about 20 s of faults). `long_soak` is ignored by default:
//! `SOAK_SECS=600 cargo test --release -p gateway --test soak -- --ignored --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark::circuit_breaker::CircuitState;
use common::{assert_consistent, eventually_within, start_with, Http, CONFIG};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Longest a request may take: the gateway's request timeout (8 s in the test config) and a
/// margin for the test client.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Each downstream's bulkhead, narrow enough that the clients fill it.
const CAP: usize = 4;

/// Panics anywhere in the process (a handler, a background task), counted by a hook.
static PANICS: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    answered: AtomicU64,
    by_status: Mutex<BTreeMap<u16, u64>>,
    problems: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, what: &str, status: StatusCode, body: &Value, took: Duration) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        *self
            .by_status
            .lock()
            .unwrap()
            .entry(status.as_u16())
            .or_default() += 1;
        let json_error = body.get("error").is_some() || body.get("outcome").is_some();
        let fine = status.is_success()
            || (status.as_u16() >= 400
                && body.is_object()
                && (json_error || body.get("reason").is_some()));
        if !fine || took > ANSWER_WITHIN {
            self.problems
                .lock()
                .unwrap()
                .push(format!("{what}: {status} after {took:?}: {body}"));
        }
    }
}

/// A small deterministic random source per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn client(
    id: u64,
    http: Http,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    known: Arc<Mutex<Vec<String>>>,
) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    while !stop.load(Ordering::Relaxed) {
        let roll = rng.next() % 10;
        tally.sent.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let (what, answer) = if roll < 6 {
            let sku = ["sku-rope", "sku-anvil", "sku-lamp"][(rng.next() % 3) as usize];
            let customer = if rng.next().is_multiple_of(10) {
                format!("declined-{id}")
            } else {
                format!("soak-{id}")
            };
            let qty = 1 + rng.next() % 2;
            let body = json!({ "customer_id": customer, "items": [{ "sku": sku, "qty": qty }] });
            let a = http
                .try_send(
                    Method::POST,
                    "/api/orders",
                    Some(body.to_string()),
                    ANSWER_WITHIN,
                )
                .await;
            if let Some(order) = a.as_ref().ok().and_then(|a| a.body["order_id"].as_str()) {
                known.lock().unwrap().push(order.to_owned());
            }
            ("order", a)
        } else if roll < 9 {
            let pick = {
                let known = known.lock().unwrap();
                (!known.is_empty()).then(|| known[(rng.next() as usize) % known.len()].clone())
            };
            let path = format!("/api/orders/{}", pick.unwrap_or_else(|| "ord-0".into()));
            let a = http.try_send(Method::GET, &path, None, ANSWER_WITHIN).await;
            ("read", a)
        } else {
            let a = http
                .try_send(Method::GET, "/api/catalog", None, ANSWER_WITHIN)
                .await;
            ("catalog", a)
        };
        match answer {
            Ok(a) => tally.record(what, a.status, &a.body, started.elapsed()),
            Err(why) => tally
                .problems
                .lock()
                .unwrap()
                .push(format!("{what}: no answer: {why}")),
        }
    }
}

/// One soak of `secs` seconds of faults with `clients` concurrent clients, the inventory's
/// stock `scale` times the catalog's.
async fn soak(secs: u64, clients: u64, scale: u64) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let config = format!(
        "{CONFIG}\n[payment.bulkhead]\nmax_concurrent = {CAP}\n\n[inventory.bulkhead]\nmax_concurrent = {CAP}\n\n[order.bulkhead]\nmax_concurrent = {CAP}\n"
    );
    let gw = start_with(&config, scale).await;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let known = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..clients)
        .map(|id| {
            tokio::spawn(client(
                id,
                Http::new(&gw),
                tally.clone(),
                stop.clone(),
                known.clone(),
            ))
        })
        .collect();

    // Watch the breakers: which were open since the current phase began.
    let opened: Arc<Mutex<BTreeMap<&'static str, bool>>> = Arc::default();
    let watcher = tokio::spawn({
        let (opened, stop, ds) = (opened.clone(), stop.clone(), gw.state.downstreams.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                for d in ds.all() {
                    let state = d.handle().circuit_breaker().map(|b| b.state());
                    if state == Some(CircuitState::Open) {
                        opened.lock().unwrap().insert(d.name(), true);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    // The fault schedule: each service fails in turn, in a different way.
    let admin = Http::new(&gw);
    let phase = Duration::from_secs(secs).div_f64(6.0);
    let schedule: [(&str, &str, Value); 5] = [
        (
            "payment fails half its calls",
            "payment",
            json!({ "error_rate": 0.5 }),
        ),
        (
            "inventory slower than the attempt timeout (held requests still handled)",
            "inventory",
            json!({ "latency_ms": 1500, "finish_when_abandoned": true }),
        ),
        (
            "payment refuses connections",
            "payment",
            json!({ "down": true }),
        ),
        (
            "order refuses connections",
            "order",
            json!({ "down": true }),
        ),
        ("inventory restarts", "inventory", json!({ "down": true })),
    ];
    // Whether each phase's faulty service had its breaker open during the phase.
    let mut phases_opened: Vec<(&str, &str, bool)> = Vec::new();
    for (what, service, fault) in schedule {
        println!("soak: {what}");
        opened.lock().unwrap().clear();
        admin.fault(service, fault).await;
        let hold = if what.contains("restarts") {
            Duration::from_secs(1)
        } else {
            phase
        };
        tokio::time::sleep(hold).await;
        let open = opened.lock().unwrap().contains_key(service);
        phases_opened.push((what, service, open));
        admin
            .send(Method::DELETE, &format!("/admin/faults/{service}"), None)
            .await;
        tokio::time::sleep(phase.div_f64(3.0)).await;
    }
    println!("soak: all healthy");
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    watcher.await.unwrap();

    // Recovery: calls probe the breakers until every one has closed again.
    let ds = gw.state.downstreams.clone();
    let all_closed = || {
        ds.all()
            .iter()
            .all(|d| d.handle().circuit_breaker().map(|b| b.state()) == Some(CircuitState::Closed))
    };
    let recovery = Instant::now();
    while !all_closed() {
        assert!(
            recovery.elapsed() < Duration::from_secs(60),
            "breakers still not closed a minute after recovery"
        );
        admin.send(Method::GET, "/api/catalog", None).await;
        admin.order("soak-final", "sku-rope", 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then the sagas finish and the deferred compensations run.
    let sagas = gw.state.sagas.clone();
    // (A long soak leaves tens of thousands of compensations for one sequential pass.)
    eventually_within(
        "no saga runs and no compensation waits",
        Duration::from_secs(600),
        || sagas.running() == 0 && sagas.pending() == 0,
    )
    .await;
    // And no request is still held inside a service (a held reservation that lands late must
    // be checked too).
    let faults = gw.faults.clone();
    eventually_within(
        "no request held in a service",
        Duration::from_secs(30),
        || {
            ["order", "payment", "inventory"]
                .iter()
                .all(|s| faults.get(s).is_some_and(|f| f.in_flight() == 0))
        },
    )
    .await;

    // The figures.
    let (deferred, completed) = gw.state.sagas.deferred_counts();
    let by_status = tally.by_status.lock().unwrap().clone();
    println!(
        "soak: {} s, {clients} clients: {} requests sent, {} answered, by status {by_status:?}; compensations deferred {deferred}, completed later {completed}",
        secs,
        tally.sent.load(Ordering::Relaxed),
        tally.answered.load(Ordering::Relaxed),
    );
    for d in gw.state.downstreams.all() {
        let h = d.handle();
        let b = h.bulkhead().unwrap();
        let c = h.circuit_breaker().unwrap().counters();
        println!(
            "soak: {}: peak in flight {} of {}, breaker transitions {}, calls {}, failures {}, rejections {}, retries {}",
            d.name(),
            b.peak_in_flight(),
            b.max_concurrent(),
            c.transitions,
            c.calls,
            c.failures,
            c.rejections,
            h.retry().unwrap().retries(),
        );
        assert_eq!(b.max_concurrent(), CAP);
        assert!(
            b.peak_in_flight() <= CAP,
            "{}: bulkhead above its cap",
            d.name()
        );
    }
    // The caps were reached, so the check above is not vacuous.
    assert!(
        gw.state
            .downstreams
            .all()
            .iter()
            .any(|d| d.handle().bulkhead().unwrap().peak_in_flight() == CAP),
        "no bulkhead was ever full"
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");

    // The checks.
    let problems = tally.problems.lock().unwrap().clone();
    assert!(
        problems.is_empty(),
        "{} bad answers, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    assert_eq!(
        tally.sent.load(Ordering::Relaxed),
        tally.answered.load(Ordering::Relaxed)
    );
    for (what, service, open) in &phases_opened {
        assert!(open, "{service}'s breaker did not open during \"{what}\"");
    }
    assert!(
        by_status.contains_key(&201),
        "some orders went through: {by_status:?}"
    );
    assert_consistent(&gw);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_soak() {
    soak(20, 8, 1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: SOAK_SECS=600 cargo test --release -p gateway --test soak -- --ignored --nocapture"]
async fn long_soak() {
    let secs = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    soak(secs, 16, 100_000).await;
}
