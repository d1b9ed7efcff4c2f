//! Counters and gauges through the `metrics` facade (feature `metrics`); without the feature,
//! every type here is empty and every method does nothing.
//!
//! Handles are registered once, when a layer is built, so a call only increments a handle:
//! install the metrics recorder before building the layers.

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::Arc;

    use metrics::{counter, gauge, Counter, Gauge, SharedString};

    use crate::circuit_breaker::CircuitState;
    use crate::classify::Outcome;

    fn label(name: &Arc<str>) -> SharedString {
        SharedString::from_shared(name.clone())
    }

    fn rejections(name: &Arc<str>, reason: &'static str) -> Counter {
        counter!("bulwark_rejections_total", "name" => label(name), "reason" => reason)
    }

    /// `bulwark_calls_total{name,outcome}`, `bulwark_circuit_state{name}` and
    /// `bulwark_rejections_total{name,reason="circuit_open"}`.
    pub(crate) struct BreakerMeters {
        success: Counter,
        failure: Counter,
        ignored: Counter,
        state: Gauge,
        rejected: Counter,
    }

    impl BreakerMeters {
        pub(crate) fn new(name: &Arc<str>) -> Self {
            let calls = |outcome: &'static str| counter!("bulwark_calls_total", "name" => label(name), "outcome" => outcome);
            BreakerMeters {
                success: calls("success"),
                failure: calls("failure"),
                ignored: calls("ignored"),
                state: gauge!("bulwark_circuit_state", "name" => label(name)),
                rejected: rejections(name, "circuit_open"),
            }
        }

        #[inline]
        pub(crate) fn call(&self, outcome: Outcome) {
            match outcome {
                Outcome::Success => self.success.increment(1),
                Outcome::Failure => self.failure.increment(1),
                Outcome::Ignored => self.ignored.increment(1),
            }
        }

        /// The state as a number: 0 closed, 1 open, 2 half-open, 3 forced open, 4 forced
        /// closed, 5 disabled.
        pub(crate) fn state(&self, state: CircuitState) {
            let value = match state {
                CircuitState::Closed => 0.0,
                CircuitState::Open => 1.0,
                CircuitState::HalfOpen => 2.0,
                CircuitState::ForcedOpen => 3.0,
                CircuitState::ForcedClosed => 4.0,
                CircuitState::Disabled => 5.0,
            };
            self.state.set(value);
        }

        pub(crate) fn rejected(&self) {
            self.rejected.increment(1);
        }
    }

    /// `bulwark_bulkhead_in_flight{name}` and
    /// `bulwark_rejections_total{name,reason="bulkhead_full"}`.
    pub(crate) struct BulkheadMeters {
        in_flight: Gauge,
        rejected: Counter,
    }

    impl BulkheadMeters {
        pub(crate) fn new(name: &Arc<str>) -> Self {
            BulkheadMeters {
                in_flight: gauge!("bulwark_bulkhead_in_flight", "name" => label(name)),
                rejected: rejections(name, "bulkhead_full"),
            }
        }

        #[inline]
        pub(crate) fn admitted(&self) {
            self.in_flight.increment(1.0);
        }

        #[inline]
        pub(crate) fn released(&self) {
            self.in_flight.decrement(1.0);
        }

        pub(crate) fn rejected(&self) {
            self.rejected.increment(1);
        }
    }

    /// `bulwark_retries_total{name}` and
    /// `bulwark_rejections_total{name,reason="retry_budget"}`.
    pub(crate) struct RetryMeters {
        retries: Counter,
        budget: Counter,
    }

    impl RetryMeters {
        pub(crate) fn new(name: &Arc<str>) -> Self {
            RetryMeters {
                retries: counter!("bulwark_retries_total", "name" => label(name)),
                budget: rejections(name, "retry_budget"),
            }
        }

        pub(crate) fn retried(&self) {
            self.retries.increment(1);
        }

        pub(crate) fn budget_spent(&self) {
            self.budget.increment(1);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use std::sync::Arc;

    use crate::circuit_breaker::CircuitState;
    use crate::classify::Outcome;

    pub(crate) struct BreakerMeters;

    impl BreakerMeters {
        pub(crate) fn new(_: &Arc<str>) -> Self {
            BreakerMeters
        }

        #[inline]
        pub(crate) fn call(&self, _: Outcome) {}

        #[inline]
        pub(crate) fn state(&self, _: CircuitState) {}

        #[inline]
        pub(crate) fn rejected(&self) {}
    }

    pub(crate) struct BulkheadMeters;

    impl BulkheadMeters {
        pub(crate) fn new(_: &Arc<str>) -> Self {
            BulkheadMeters
        }

        #[inline]
        pub(crate) fn admitted(&self) {}

        #[inline]
        pub(crate) fn released(&self) {}

        #[inline]
        pub(crate) fn rejected(&self) {}
    }

    pub(crate) struct RetryMeters;

    impl RetryMeters {
        pub(crate) fn new(_: &Arc<str>) -> Self {
            RetryMeters
        }

        #[inline]
        pub(crate) fn retried(&self) {}

        #[inline]
        pub(crate) fn budget_spent(&self) {}
    }
}

pub(crate) use imp::{BreakerMeters, BulkheadMeters, RetryMeters};
