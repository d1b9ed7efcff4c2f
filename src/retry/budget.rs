//! The retry budget: retries may add at most a share of recent calls, plus a small floor.
//!
//! # Why a budget and not only a maximum of attempts?
//!
//! A maximum of attempts bounds one call, not the load on the downstream: with 3 attempts,
//! an outage triples the traffic to a service that is already failing, and every client does
//! the same at once. A budget bounds the *share* of traffic that retries may add: with a ratio
//! of 0.2, retries add at most 20% to the calls of the recent window, whatever each call's
//! maximum of attempts. The floor (`min_per_sec`) lets a quiet client retry at all.

use std::time::Duration;

use tokio::time::Instant;

use crate::window::TimeWindow;

/// How many retries a [`Retry`](super::Retry) may add to the calls it sees.
///
/// Over a sliding `window`, retries may number at most `min_per_sec * window` plus `ratio`
/// times the calls made. Shared by every clone of the layer's services. The default: a ratio
/// of 0.2, 10 retries per second, a 10 s window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub(crate) ratio: f64,
    pub(crate) min_per_sec: u32,
    pub(crate) window: Duration,
}

impl RetryBudget {
    /// A budget of `ratio` retries per call (for example 0.2), plus `min_per_sec` retries per
    /// second, over a sliding `window`. Validated by the layer's `build()`.
    pub const fn new(ratio: f64, min_per_sec: u32, window: Duration) -> Self {
        RetryBudget {
            ratio,
            min_per_sec,
            window,
        }
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(0.2, 10, Duration::from_secs(10))
    }
}

/// The budget's state: calls and retries in a time window of 10 buckets.
///
/// Calls are recorded as the window's successes and retries as its failures, so the tally's
/// `calls - failures` are the calls and its `failures` the retries.
pub(crate) struct Budget {
    config: RetryBudget,
    window: TimeWindow,
    base: Instant,
}

impl Budget {
    /// The settings.
    pub(crate) fn config(&self) -> RetryBudget {
        self.config
    }

    pub(crate) fn new(config: RetryBudget) -> Self {
        Budget {
            config,
            window: TimeWindow::new(config.window, 10),
            base: Instant::now(),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_millis() as u64
    }

    /// Records a call (a first attempt).
    pub(crate) fn deposit(&self, now: Instant) {
        self.window.record(self.ms(now), false, false);
    }

    /// How many retries the budget allows now.
    pub(crate) fn available(&self, now: Instant) -> f64 {
        let tally = self.window.tally(self.ms(now));
        let retries = f64::from(tally.failures);
        let calls = f64::from(tally.calls) - retries;
        let floor = f64::from(self.config.min_per_sec) * self.config.window.as_secs_f64();
        (floor + self.config.ratio * calls - retries).max(0.0)
    }

    /// Takes one retry from the budget, if it has one.
    ///
    /// Two retries decided at the same instant on two threads may both see the last one, so
    /// the budget may be overdrawn by the number of retries decided concurrently.
    pub(crate) fn try_withdraw(&self, now: Instant) -> bool {
        if self.available(now) >= 1.0 {
            self.window.record(self.ms(now), true, false);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_floor_allows_retries_without_traffic() {
        let b = Budget::new(RetryBudget::new(0.0, 2, Duration::from_secs(1)));
        let now = b.base;
        assert!(b.try_withdraw(now));
        assert!(b.try_withdraw(now));
        assert!(!b.try_withdraw(now), "2 per second over 1 s");
        // The window slides: a second later the floor is back.
        assert!(b.try_withdraw(now + Duration::from_secs(1)));
    }

    #[test]
    fn retries_may_add_the_ratio_of_calls() {
        let b = Budget::new(RetryBudget::new(0.2, 0, Duration::from_secs(10)));
        let now = b.base;
        for _ in 0..50 {
            b.deposit(now);
        }
        let allowed = (0..100).take_while(|_| b.try_withdraw(now)).count();
        assert_eq!(allowed, 10, "20% of 50 calls");
        assert_eq!(b.available(now), 0.0);
    }

    proptest! {
        /// Sequentially, the retries granted never exceed floor + ratio * calls.
        #[test]
        fn the_budget_is_never_overdrawn(
            ratio in 0.0f64..2.0,
            floor in 0u32..5,
            events in proptest::collection::vec(any::<bool>(), 0..300),
        ) {
            let b = Budget::new(RetryBudget::new(ratio, floor, Duration::from_secs(10)));
            let now = b.base;
            let (mut calls, mut retries) = (0u32, 0u32);
            for call in events {
                if call {
                    b.deposit(now);
                    calls += 1;
                } else if b.try_withdraw(now) {
                    retries += 1;
                }
            }
            let limit = f64::from(floor) * 10.0 + ratio * f64::from(calls);
            prop_assert!(f64::from(retries) <= limit + 1e-9, "{} retries, limit {}", retries, limit);
        }
    }
}
