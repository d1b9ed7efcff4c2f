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
use crate::circuit_breaker::{CircuitBreakerLayer, CircuitState, Core, Decision, Pass};
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

/// Two threads race for one probe slot: never two probes at once, and none left held.
#[test]
fn half_open_admits_at_most_its_probes() {
    loom::model(|| {
        let (core, later) = tripped(1);
        let probing = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (core, probing) = (core.clone(), probing.clone());
                loom::thread::spawn(move || match core.admit(|| later) {
                    Decision::Admit(pass @ Pass::Probe(..)) => {
                        let at_once = probing.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(at_once <= 1, "{at_once} probes at once");
                        probing.fetch_sub(1, Ordering::SeqCst);
                        core.complete(pass, Outcome::Success, None, Some(later));
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
        assert_eq!(core.probes_in_flight(), 0, "a probe slot left held");
        assert_ne!(
            core.state(),
            CircuitState::Open,
            "the successful probe closed it"
        );
    });
}

/// A probe abandoned (its future dropped) gives its slot back, whatever the other thread does
/// meanwhile.
#[test]
fn an_abandoned_probe_gives_its_slot_back() {
    loom::model(|| {
        let (core, later) = tripped(1);
        let threads: Vec<_> = (0..2)
            .map(|i| {
                let core = core.clone();
                loom::thread::spawn(move || {
                    if let Decision::Admit(pass) = core.admit(|| later) {
                        if i == 0 {
                            core.abandon(pass);
                        } else {
                            core.complete(pass, Outcome::Failure, None, Some(later));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        assert_eq!(core.probes_in_flight(), 0, "a probe slot left held");
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
