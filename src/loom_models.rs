//! loom models of the lock-free shared state: every interleaving of two threads on the
//! breaker's half-open probe slots and on the bulkhead's slot counter.
//!
//! ```sh
//! RUSTFLAGS="--cfg bulwark_loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --lib loom_models
//! ```

use std::sync::Arc;
use std::time::Duration;

use loom::sync::atomic::{AtomicUsize, Ordering};
use tokio::time::Instant;

use crate::bulkhead::Shared as Bulkhead;
use crate::circuit_breaker::{CircuitBreakerLayer, CircuitState, Core, Decision};
use crate::classify::Outcome;

/// A breaker tripped by one failure, whose break is over at `later`.
fn tripped(max_probes: u32) -> (Arc<Core>, Instant) {
    let layer = CircuitBreakerLayer::builder("loom")
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(1))
        .half_open_max_calls(max_probes)
        .success_threshold(1)
        .build()
        .expect("a valid breaker");
    let core = layer.into_parts().0;
    let now = Instant::now();
    match core.admit(|| now) {
        Decision::Admit(pass) => core.complete(pass, Outcome::Failure, None, Some(now)),
        Decision::Reject(e) => panic!("a new breaker rejected: {e}"),
    }
    assert_eq!(core.state(), CircuitState::Open);
    (core, now + Duration::from_secs(3600))
}

/// A half-open breaker with two probe slots, one already taken: two threads race for the last
/// one. At most one of them gets it, and none is left held after.
#[test]
fn half_open_admits_at_most_its_probes() {
    loom::model(|| {
        let (core, later) = tripped(2);
        // The first call after the break moves the breaker to HalfOpen and takes a slot.
        let held = match core.admit(|| later) {
            Decision::Admit(pass) if pass.is_probe() => pass,
            other => panic!("expected a probe, got {other:?}"),
        };
        let probes = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (core, probes) = (core.clone(), probes.clone());
                loom::thread::spawn(move || match core.admit(|| later) {
                    Decision::Admit(pass) if pass.is_probe() => {
                        // With one probe held, only one more may be out at a time.
                        let at_once = probes.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(at_once <= 1, "{} probes out, the limit is 2", at_once + 1);
                        assert!(core.probes_in_flight() <= 2, "over the probe limit");
                        probes.fetch_sub(1, Ordering::SeqCst);
                        core.abandon(pass);
                    }
                    Decision::Admit(pass) => {
                        core.complete(pass, Outcome::Success, None, Some(later))
                    }
                    Decision::Reject(_) => {}
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        assert_eq!(core.probes_in_flight(), 1, "only the held probe is left");
        core.complete(held, Outcome::Success, None, Some(later));
        assert_eq!(core.state(), CircuitState::Closed);
        assert_eq!(core.probes_in_flight(), 0);
    });
}

/// One thread abandons its probe while the other asks to be let in: the slot comes back, and
/// once both are done a new call gets it.
#[test]
fn an_abandoned_probe_gives_its_slot_back() {
    loom::model(|| {
        let (core, later) = tripped(1);
        let held = match core.admit(|| later) {
            Decision::Admit(pass) if pass.is_probe() => pass,
            other => panic!("expected a probe, got {other:?}"),
        };
        let abandoner = {
            let core = core.clone();
            loom::thread::spawn(move || core.abandon(held))
        };
        let asker = {
            let core = core.clone();
            loom::thread::spawn(move || match core.admit(|| later) {
                Decision::Admit(pass) => {
                    core.abandon(pass);
                    true
                }
                Decision::Reject(_) => false,
            })
        };
        abandoner.join().expect("no panic");
        let _admitted = asker.join().expect("no panic");
        assert_eq!(core.probes_in_flight(), 0, "a probe slot left held");
        assert!(
            matches!(core.admit(|| later), Decision::Admit(pass) if pass.is_probe()),
            "the slot is free for the next call"
        );
    });
}

/// Two threads take and give back slots of a one-slot bulkhead: never both in, none left.
#[test]
fn bulkhead_slots_are_never_over_taken() {
    loom::model(|| {
        let bulkhead = Arc::new(Bulkhead::new("loom".into(), 1, Duration::ZERO));
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (bulkhead, inside) = (bulkhead.clone(), inside.clone());
                loom::thread::spawn(move || {
                    if bulkhead.try_take() {
                        let at_once = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        assert_eq!(at_once, 1, "two calls in a one-slot bulkhead");
                        inside.fetch_sub(1, Ordering::SeqCst);
                        bulkhead.release();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        assert_eq!(bulkhead.in_flight(), 0, "a slot left taken");
        assert!(bulkhead.peak_in_flight() <= 1);
    });
}
