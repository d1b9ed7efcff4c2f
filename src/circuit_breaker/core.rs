//! The breaker's shared state and its rules: admission, outcomes, transitions. No `Service`
//! code here, so all of it is tested without a runtime, by passing the time in.

use crate::sync::{AtomicU32, AtomicU64, Ordering};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::config::Policy;
use super::error::CircuitOpen;
use super::state::{CircuitState, Word};
use crate::classify::Outcome;
use crate::window::{CacheLine, CountWindow, StripedCounter, Tally, TimeWindow};

/// Why the breaker changed state, as reported in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    ConsecutiveFailures,
    FailureRate,
    SlowCallRate,
    BreakEnded,
    ProbeFailed,
    ProbeSlow,
    ProbesSucceeded,
    Handle,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::ConsecutiveFailures => "consecutive failures",
            Reason::FailureRate => "failure rate",
            Reason::SlowCallRate => "slow-call rate",
            Reason::BreakEnded => "break ended",
            Reason::ProbeFailed => "probe failed",
            Reason::ProbeSlow => "probe slow",
            Reason::ProbesSucceeded => "probes succeeded",
            Reason::Handle => "set by handle",
        }
    }
}

/// What an admitted call is, for its outcome to be recorded against the right state.
///
/// Packed in one non-zero word, so that a service keeps its admission (`Option<Pass>`) in
/// eight bytes, moved with one load and one store: bits 0-1 the kind, 2-22 the generation,
/// 32-63 a probe's epoch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pass(NonZeroU64);

/// A [`Pass`] unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PassKind {
    /// Admitted while Closed, in this generation.
    Closed(u32),
    /// A HalfOpen probe, holding one of the generation's probe slots. Also carries the low 32
    /// bits of the transition count at admission: the generation in the state word wraps (at
    /// 2^21), and a probe that outlived a whole wrap must not give back a slot of an unrelated
    /// period.
    Probe(u32, u32),
    /// Admitted while ForcedClosed or Disabled: counted, never moves the state.
    Bypass,
}

impl Pass {
    const CLOSED: u64 = 1;
    const PROBE: u64 = 2;
    const BYPASS: u64 = 3;

    fn pack(kind: u64, generation: u32, epoch: u32) -> Self {
        let generation = u64::from(generation) & (super::state::GENERATIONS - 1);
        let raw = kind | generation << 2 | u64::from(epoch) << 32;
        // `kind` is never zero, so neither is `raw`.
        Pass(NonZeroU64::new(raw).unwrap_or(NonZeroU64::MIN))
    }

    #[inline]
    pub(crate) fn closed(generation: u32) -> Self {
        Pass::pack(Pass::CLOSED, generation, 0)
    }

    /// A probe admitted in `generation` when the transition count was `epoch` (its low 32
    /// bits are kept: a probe would have to outlive 2^32 transitions to be misjudged).
    pub(crate) fn probe(generation: u32, epoch: u64) -> Self {
        Pass::pack(Pass::PROBE, generation, epoch as u32)
    }

    pub(crate) fn bypass() -> Self {
        Pass::pack(Pass::BYPASS, 0, 0)
    }

    #[inline]
    pub(crate) fn kind(self) -> PassKind {
        let raw = self.0.get();
        let generation = ((raw >> 2) & (super::state::GENERATIONS - 1)) as u32;
        match raw & 3 {
            Pass::CLOSED => PassKind::Closed(generation),
            Pass::PROBE => PassKind::Probe(generation, (raw >> 32) as u32),
            _ => PassKind::Bypass,
        }
    }

    #[cfg(test)]
    pub(crate) fn is_probe(self) -> bool {
        matches!(self.kind(), PassKind::Probe(..))
    }
}

impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind().fmt(f)
    }
}

/// The decision on one call.
#[derive(Debug)]
pub(crate) enum Decision {
    Admit(Pass),
    Reject(CircuitOpen),
}

/// Counters a handle reads.
#[derive(Debug, Default)]
struct Counters {
    failures: AtomicU64,
    slow: AtomicU64,
    rejections: AtomicU64,
    transitions: AtomicU64,
}

/// A snapshot of a breaker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitCounters {
    /// Calls that completed (with any outcome, including ignored ones).
    pub calls: u64,
    /// Calls classified as failures.
    pub failures: u64,
    /// Calls at least as long as the slow-call threshold (when a slow-call rule is set).
    pub slow_calls: u64,
    /// Calls rejected because the breaker was open (or half-open with its probes taken).
    pub rejections: u64,
    /// State changes, including those made through the handle.
    pub transitions: u64,
}

/// The state shared by every clone of one breaker.
///
/// Held by an `Arc` whose count every call changes: aligned so that the count's cache line is
/// not the one the settings are read from (on two threads, that false sharing made a call
/// several times slower).
#[repr(align(128))]
pub(crate) struct Core {
    pub(crate) name: Arc<str>,
    pub(crate) policy: Policy,
    base: Instant,
    /// Read by every call; on its own cache line, away from the counters every call writes.
    word: CacheLine<AtomicU64>,
    count: Option<CountWindow>,
    time: Option<TimeWindow>,
    /// Consecutive trips without a successful close, for the break's backoff.
    trips: AtomicU32,
    rng: AtomicU64,
    counters: CacheLine<Counters>,
    /// Completed calls not counted by the count window: every success while Closed adds to
    /// it, so it is striped by thread rather than one contended word.
    calls: StripedCounter,
    meters: crate::meter::BreakerMeters,
    /// A slow-call rule or a time window is set: calls are timed.
    needs_clock: bool,
    /// A rate window is set: every outcome is recorded, not only failures.
    has_windows: bool,
}

impl Core {
    pub(crate) fn new(name: Arc<str>, policy: Policy) -> Self {
        let policy_needs_clock = policy.slow.is_some() || policy.time.is_some();
        let policy_has_windows = policy.count.is_some() || policy.time.is_some();
        let meters = crate::meter::BreakerMeters::new(&name);
        meters.state(CircuitState::Closed);
        Core {
            count: policy.count.map(|c| CountWindow::new(c.size)),
            time: policy.time.map(|t| TimeWindow::new(t.span, t.buckets)),
            rng: AtomicU64::new(policy.seed),
            name,
            policy,
            base: Instant::now(),
            word: CacheLine(AtomicU64::new(Word::initial().raw())),
            trips: AtomicU32::new(0),
            counters: CacheLine(Counters::default()),
            calls: StripedCounter::new(),
            meters,
            needs_clock: policy_needs_clock,
            has_windows: policy_has_windows,
        }
    }

    #[inline]
    fn load(&self) -> Word {
        Word::from_raw(self.word.load(Ordering::Acquire))
    }

    #[inline]
    fn cas(&self, current: Word, new: Word) -> Result<(), Word> {
        self.word
            .compare_exchange(
                current.raw(),
                new.raw(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(drop)
            .map_err(Word::from_raw)
    }

    fn since_base(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.base)
    }

    /// Whether a call's duration is needed: a slow-call rule or a time window is set.
    #[inline]
    pub(crate) fn needs_clock(&self) -> bool {
        self.needs_clock
    }

    // === admission ===

    /// Whether the breaker is Closed: a call would be admitted, holding nothing.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.load().state() == CircuitState::Closed
    }

    /// Decides whether a call may go through. `now` is read only when the breaker is open.
    #[inline]
    pub(crate) fn admit(&self, now: impl FnOnce() -> Instant) -> Decision {
        let word = self.load();
        if word.state() == CircuitState::Closed {
            return Decision::Admit(Pass::closed(word.generation()));
        }
        self.admit_slow(word, now)
    }

    #[cold]
    #[inline(never)]
    fn admit_slow(&self, mut word: Word, now: impl FnOnce() -> Instant) -> Decision {
        let mut now = Some(now);
        let mut now_value = None;
        loop {
            match word.state() {
                CircuitState::Closed => return Decision::Admit(Pass::closed(word.generation())),
                CircuitState::ForcedClosed | CircuitState::Disabled => {
                    return Decision::Admit(Pass::bypass())
                }
                CircuitState::ForcedOpen => return self.reject(CircuitState::ForcedOpen, None),
                CircuitState::Open => {
                    let now = *now_value.get_or_insert_with(|| (now.take().expect("read once"))());
                    let since = self.since_base(now);
                    let until = Duration::from_millis(word.open_until_ms());
                    if since < until {
                        return self.reject(CircuitState::Open, Some(until - since));
                    }
                    let probing = word.half_opened();
                    match self.cas(word, probing) {
                        Ok(()) => {
                            self.transitioned(word, probing, Reason::BreakEnded);
                            return Decision::Admit(Pass::probe(
                                probing.generation(),
                                self.epoch(),
                            ));
                        }
                        Err(actual) => word = actual,
                    }
                }
                CircuitState::HalfOpen => {
                    if word.probes() >= u64::from(self.policy.half_open_max_calls) {
                        return self.reject(CircuitState::HalfOpen, Some(Duration::ZERO));
                    }
                    let taken = word.with_probes(word.probes() + 1, word.successes());
                    match self.cas(word, taken) {
                        Ok(()) => {
                            return Decision::Admit(Pass::probe(word.generation(), self.epoch()))
                        }
                        Err(actual) => word = actual,
                    }
                }
            }
        }
    }

    fn reject(&self, state: CircuitState, retry_after: Option<Duration>) -> Decision {
        Decision::Reject(CircuitOpen::new(self.name.clone(), state, retry_after))
    }

    /// Counts a rejection made by the service, and reports it.
    pub(crate) fn rejected(&self, error: &CircuitOpen) {
        self.counters.rejections.fetch_add(1, Ordering::Relaxed);
        self.meters.rejected();
        tracing::debug!(
            target: "bulwark::circuit_breaker",
            name = %self.name,
            state = %error.state(),
            retry_after = ?error.retry_after(),
            "call rejected"
        );
    }

    /// Whether a pass admitted earlier still belongs to the current state: a call that waited
    /// (for the inner service to be ready) while the breaker changed state must be decided
    /// again, or an Open breaker would still let it through.
    #[inline]
    pub(crate) fn still_admits(&self, pass: Pass) -> bool {
        let word = self.load();
        match pass.kind() {
            PassKind::Closed(generation) => {
                word.state() == CircuitState::Closed && word.generation() == generation
            }
            PassKind::Probe(generation, _) => {
                word.state() == CircuitState::HalfOpen && word.generation() == generation
            }
            PassKind::Bypass => matches!(
                word.state(),
                CircuitState::ForcedClosed | CircuitState::Disabled
            ),
        }
    }

    // === outcomes ===

    /// Records the outcome of an admitted call that completed. `elapsed` is its duration when
    /// [`needs_clock`](Self::needs_clock); `now` the moment it completed.
    #[inline]
    pub(crate) fn complete(
        &self,
        pass: Pass,
        outcome: Outcome,
        elapsed: Option<Duration>,
        now: Option<Instant>,
    ) {
        self.meters.call(outcome);
        // The common case, a success while Closed with no failure streak: nothing to judge.
        // With no window to feed (and no slow-call rule, as windows come with it), one load
        // and nothing written; with only a count window already past its minimum of calls
        // (so a success cannot bring it to where a rate is judged), the window records it.
        if let (PassKind::Closed(generation), Outcome::Success) = (pass.kind(), outcome) {
            let word = self.load();
            if word.state() == CircuitState::Closed
                && word.generation() == generation
                && word.failures() == 0
            {
                if !self.has_windows {
                    self.calls.add(1);
                    return;
                }
                if let (Some(window), Some(rule), None, None) =
                    (&self.count, self.policy.count, &self.time, self.policy.slow)
                {
                    if window.calls() > rule.min_calls {
                        // Counted by the window's cursor: one write to shared memory, not two.
                        window.record(false, false);
                        return;
                    }
                }
            }
        }
        if !self.complete_slow(pass, outcome, elapsed, now) {
            self.calls.add(1);
        }
    }

    /// Records an outcome; `true` when the count window recorded it (so counted it).
    fn complete_slow(
        &self,
        pass: Pass,
        outcome: Outcome,
        elapsed: Option<Duration>,
        now: Option<Instant>,
    ) -> bool {
        let slow = match (self.policy.slow, elapsed) {
            (Some(rule), Some(elapsed)) => elapsed >= rule.threshold,
            _ => false,
        };
        if outcome.is_failure() {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            self.counters.slow.fetch_add(1, Ordering::Relaxed);
        }
        match pass.kind() {
            PassKind::Bypass => false,
            PassKind::Probe(generation, epoch) => {
                if !self.outlived_a_wrap(epoch) {
                    self.probe_done(generation, outcome, slow, now);
                }
                false
            }
            PassKind::Closed(generation) => self.closed_done(generation, outcome, slow, now),
        }
    }

    /// Gives back the slot of a probe whose future was dropped before it completed.
    pub(crate) fn abandon(&self, pass: Pass) {
        if let PassKind::Probe(generation, epoch) = pass.kind() {
            if self.outlived_a_wrap(epoch) {
                return;
            }
            self.probe_done(generation, Outcome::Ignored, false, None);
        }
    }

    /// How many transitions have happened: the full count behind the word's wrapping
    /// generation.
    fn epoch(&self) -> u64 {
        self.counters.transitions.load(Ordering::Acquire)
    }

    /// Whether so many transitions happened since `epoch` that the generation may have wrapped
    /// round to the same value (half the wrap, for margin: the count is bumped just after
    /// each transition).
    fn outlived_a_wrap(&self, epoch: u32) -> bool {
        u64::from((self.epoch() as u32).wrapping_sub(epoch)) >= super::state::GENERATIONS / 2
    }

    /// Records a Closed call's outcome; `true` when the count window recorded it.
    fn closed_done(
        &self,
        generation: u32,
        outcome: Outcome,
        slow: bool,
        now: Option<Instant>,
    ) -> bool {
        if outcome.is_ignored() {
            return false;
        }
        let word = self.load();
        if word.state() != CircuitState::Closed || word.generation() != generation {
            // From an earlier Closed period: it says nothing about the current state.
            return false;
        }
        let mut recorded = false;
        let failure = outcome.is_failure();

        // Rate rules: record, then judge when this call could have raised a rate (a failure
        // or a slow call) or brought a window up to its minimum of calls (a success while the
        // window is still small).
        let mut judge = failure || slow;
        if let (Some(window), Some(rule)) = (&self.count, self.policy.count) {
            window.record(failure, slow);
            recorded = true;
            judge |= window.calls() <= rule.min_calls;
        }
        let now_ms = now.map(|now| self.since_base(now).as_millis() as u64);
        if let (Some(window), Some(rule), Some(now_ms)) = (&self.time, self.policy.time, now_ms) {
            // The calls of the current bucket: a cheap sign of a window still small.
            let bucket_calls = window.record(now_ms, failure, slow);
            judge |= bucket_calls <= rule.min_calls;
        }
        let rate_trip = if judge {
            self.rate_exceeded(now_ms)
        } else {
            None
        };

        // The consecutive-failures rule lives in the state word.
        let mut word = word;
        loop {
            if word.state() != CircuitState::Closed || word.generation() != generation {
                return recorded;
            }
            let streak = if failure { word.failures() + 1 } else { 0 };
            let streak_trips = failure
                && self
                    .policy
                    .consecutive_failures
                    .is_some_and(|n| streak >= u64::from(n));
            let reason = if streak_trips {
                Some(Reason::ConsecutiveFailures)
            } else {
                rate_trip
            };
            let next = match reason {
                Some(_) => word.opened(self.open_until_ms(now)),
                None if streak == word.failures() => return recorded,
                None => word.with_failures(streak),
            };
            match self.cas(word, next) {
                Ok(()) => {
                    if let Some(reason) = reason {
                        self.tripped(word, next, reason);
                    }
                    return recorded;
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// The rate rule a window now breaks, if any.
    fn rate_exceeded(&self, now_ms: Option<u64>) -> Option<Reason> {
        let slow_rate = self.policy.slow.map(|s| s.rate);
        let judge = |tally: Tally, failure_rate: f64, min_calls: u32| {
            if tally.reaches(tally.failures, failure_rate, min_calls) {
                Some(Reason::FailureRate)
            } else if slow_rate.is_some_and(|rate| tally.reaches(tally.slow, rate, min_calls)) {
                Some(Reason::SlowCallRate)
            } else {
                None
            }
        };
        if let (Some(window), Some(rule)) = (&self.count, self.policy.count) {
            if let Some(reason) = judge(window.tally(), rule.failure_rate, rule.min_calls) {
                return Some(reason);
            }
        }
        if let (Some(window), Some(rule), Some(now_ms)) = (&self.time, self.policy.time, now_ms) {
            if let Some(reason) = judge(window.tally(now_ms), rule.failure_rate, rule.min_calls) {
                return Some(reason);
            }
        }
        None
    }

    fn probe_done(&self, generation: u32, outcome: Outcome, slow: bool, now: Option<Instant>) {
        let mut word = self.load();
        loop {
            if word.state() != CircuitState::HalfOpen || word.generation() != generation {
                // The probe's HalfOpen period is over; its slot went with it.
                return;
            }
            let probes = word.probes().saturating_sub(1);
            let (next, reason) = if outcome.is_failure() {
                (
                    word.opened(self.open_until_ms(now)),
                    Some(Reason::ProbeFailed),
                )
            } else if slow && !outcome.is_ignored() {
                (
                    word.opened(self.open_until_ms(now)),
                    Some(Reason::ProbeSlow),
                )
            } else if outcome.is_success() {
                let successes = word.successes() + 1;
                if successes >= u64::from(self.policy.success_threshold) {
                    (
                        word.moved_to(CircuitState::Closed),
                        Some(Reason::ProbesSucceeded),
                    )
                } else {
                    (word.with_probes(probes, successes), None)
                }
            } else {
                (word.with_probes(probes, word.successes()), None)
            };
            match self.cas(word, next) {
                Ok(()) => {
                    match reason {
                        Some(Reason::ProbesSucceeded) => {
                            self.trips.store(0, Ordering::Relaxed);
                            self.transitioned(word, next, Reason::ProbesSucceeded);
                        }
                        Some(reason) => self.tripped(word, next, reason),
                        None => {}
                    }
                    return;
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// When a break starting now should end, in milliseconds since the breaker was built.
    fn open_until_ms(&self, now: Option<Instant>) -> u64 {
        let now = now.unwrap_or_else(Instant::now);
        let trips = self.trips.load(Ordering::Relaxed);
        let random = if self.policy.backoff.is_some_and(|b| b.jitter > 0.0) {
            self.next_random()
        } else {
            0.0
        };
        let until = self.since_base(now) + self.policy.break_for(trips, random);
        // Round up: a break never ends early.
        let ms = until.as_millis() + u128::from(!until.subsec_nanos().is_multiple_of(1_000_000));
        ms.min(u128::from(u64::MAX)) as u64
    }

    /// A uniform number in [0, 1) from a shared splitmix64 sequence.
    fn next_random(&self) -> f64 {
        let state = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    // === transitions ===

    fn tripped(&self, from: Word, to: Word, reason: Reason) {
        self.trips.fetch_add(1, Ordering::Relaxed);
        self.transitioned(from, to, reason);
    }

    fn transitioned(&self, from: Word, to: Word, reason: Reason) {
        self.counters.transitions.fetch_add(1, Ordering::Relaxed);
        self.meters.state(to.state());
        if (from.state() == CircuitState::Closed) != (to.state() == CircuitState::Closed) {
            // Each Closed period starts with empty windows: cleared when the breaker leaves
            // Closed, and again when it comes back, so an outcome recorded late by a call of
            // the previous period (it passed its generation check just before the change)
            // does not carry over.
            self.clear_windows();
        }
        let (from, to, reason) = (from.state().as_str(), to.state().as_str(), reason.as_str());
        if to == CircuitState::Open.as_str() {
            tracing::warn!(target: "bulwark::circuit_breaker", name = %self.name, from, to, reason, "circuit opened");
        } else {
            tracing::info!(target: "bulwark::circuit_breaker", name = %self.name, from, to, reason, "circuit state changed");
        }
    }

    fn clear_windows(&self) {
        if let Some(window) = &self.count {
            window.clear();
        }
        if let Some(window) = &self.time {
            window.clear();
        }
    }

    /// Moves to `state` whatever the current state (for the handle): Closed (a reset), or one
    /// of the forced states.
    pub(crate) fn force(&self, state: CircuitState) {
        let mut word = self.load();
        loop {
            let next = word.moved_to(state);
            match self.cas(word, next) {
                Ok(()) => {
                    if state == CircuitState::Closed {
                        self.trips.store(0, Ordering::Relaxed);
                        // A reset forgets what the windows saw (`transitioned` clears them
                        // only on a change between Closed and another state).
                        self.clear_windows();
                    }
                    self.transitioned(word, next, Reason::Handle);
                    return;
                }
                Err(actual) => word = actual,
            }
        }
    }

    // === reading ===

    pub(crate) fn state(&self) -> CircuitState {
        self.load().state()
    }

    /// Time until the breaker lets a probe through: `Some` only when Open (zero once the
    /// break has ended but no call has come yet).
    pub(crate) fn time_until_probe(&self, now: Instant) -> Option<Duration> {
        let word = self.load();
        (word.state() == CircuitState::Open).then(|| {
            Duration::from_millis(word.open_until_ms()).saturating_sub(self.since_base(now))
        })
    }

    pub(crate) fn probes_in_flight(&self) -> u64 {
        let word = self.load();
        if word.state() == CircuitState::HalfOpen {
            word.probes()
        } else {
            0
        }
    }

    pub(crate) fn consecutive_failures(&self) -> u64 {
        let word = self.load();
        if word.state() == CircuitState::Closed {
            word.failures()
        } else {
            0
        }
    }

    pub(crate) fn counters(&self) -> CircuitCounters {
        let c = &self.counters;
        // Calls the count window recorded are counted by its cursor alone.
        let recorded = self.count.as_ref().map_or(0, CountWindow::recorded);
        CircuitCounters {
            calls: self.calls.sum() + recorded,
            failures: c.failures.load(Ordering::Relaxed),
            slow_calls: c.slow.load(Ordering::Relaxed),
            rejections: c.rejections.load(Ordering::Relaxed),
            transitions: c.transitions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit_breaker::CircuitBreakerLayer;

    fn core(
        build: impl FnOnce(
            crate::circuit_breaker::CircuitBreakerLayerBuilder,
        ) -> crate::circuit_breaker::CircuitBreakerLayerBuilder,
    ) -> Arc<Core> {
        let layer = build(CircuitBreakerLayer::builder("t")).build().unwrap();
        layer.core_for_tests()
    }

    fn at(core: &Core, ms: u64) -> Instant {
        core.base + Duration::from_millis(ms)
    }

    fn pass(d: Decision) -> Pass {
        match d {
            Decision::Admit(p) => p,
            Decision::Reject(e) => panic!("rejected: {e}"),
        }
    }

    fn rejected(d: Decision) -> CircuitOpen {
        match d {
            Decision::Reject(e) => e,
            Decision::Admit(p) => panic!("admitted: {p:?}"),
        }
    }

    #[test]
    fn the_fifth_consecutive_failure_trips_and_the_break_ends_exactly() {
        let c = core(|b| b);
        for _ in 0..4 {
            let p = pass(c.admit(|| at(&c, 0)));
            c.complete(p, Outcome::Failure, None, None);
        }
        assert_eq!(c.state(), CircuitState::Closed);
        assert_eq!(c.consecutive_failures(), 4);
        let p = pass(c.admit(|| at(&c, 0)));
        c.complete(p, Outcome::Failure, None, Some(at(&c, 0)));
        assert_eq!(c.state(), CircuitState::Open);
        let e = rejected(c.admit(|| at(&c, 29_999)));
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1)));
        assert!(pass(c.admit(|| at(&c, 30_000))).is_probe());
        assert_eq!(c.state(), CircuitState::HalfOpen);
    }

    #[test]
    fn a_success_resets_the_streak() {
        let c = core(|b| b.consecutive_failures(2));
        let p = pass(c.admit(|| at(&c, 0)));
        c.complete(p, Outcome::Failure, None, None);
        let p = pass(c.admit(|| at(&c, 0)));
        c.complete(p, Outcome::Success, None, None);
        assert_eq!(c.consecutive_failures(), 0);
        let p = pass(c.admit(|| at(&c, 0)));
        c.complete(p, Outcome::Failure, None, None);
        assert_eq!(c.state(), CircuitState::Closed);
    }

    #[test]
    fn half_open_limits_probes_and_closes_after_enough_successes() {
        let c = core(|b| {
            b.consecutive_failures(1)
                .half_open_max_calls(2)
                .success_threshold(3)
        });
        let p = pass(c.admit(|| at(&c, 0)));
        c.complete(p, Outcome::Failure, None, Some(at(&c, 0)));
        let p1 = pass(c.admit(|| at(&c, 30_000)));
        let p2 = pass(c.admit(|| at(&c, 30_000)));
        let e = rejected(c.admit(|| at(&c, 30_000)));
        assert_eq!(e.state(), CircuitState::HalfOpen);
        c.complete(p1, Outcome::Success, None, None);
        let p3 = pass(c.admit(|| at(&c, 30_000)));
        c.complete(p2, Outcome::Success, None, None);
        assert_eq!(c.state(), CircuitState::HalfOpen);
        c.complete(p3, Outcome::Success, None, None);
        assert_eq!(c.state(), CircuitState::Closed);
    }

    #[test]
    fn a_pass_packs_into_one_word_and_unpacks_exactly() {
        use super::super::state::GENERATIONS;
        // The point of packing: an admission kept by a service is one word.
        assert_eq!(std::mem::size_of::<Option<Pass>>(), 8);
        let top = (GENERATIONS - 1) as u32;
        assert_eq!(Pass::closed(0).kind(), PassKind::Closed(0));
        assert_eq!(Pass::closed(top).kind(), PassKind::Closed(top));
        assert_eq!(Pass::bypass().kind(), PassKind::Bypass);
        assert_eq!(Pass::probe(7, 5).kind(), PassKind::Probe(7, 5));
        // The epoch keeps its low 32 bits.
        let epoch = (3 << 32) | 0xDEAD_BEEF;
        assert_eq!(
            Pass::probe(top, epoch).kind(),
            PassKind::Probe(top, 0xDEAD_BEEF)
        );
        assert_ne!(Pass::closed(1), Pass::probe(1, 0));
    }

    #[test]
    fn a_probe_that_outlived_a_wrap_is_told_apart_across_the_epochs_32_bit_boundary() {
        use super::super::state::GENERATIONS;
        let c = core(|b| b);
        // The transition count just below 2^32, so the probe's kept epoch wraps within the
        // margin of a generation wrap.
        let start = (1u64 << 32) - 3;
        c.counters.transitions.store(start, Ordering::Relaxed);
        let PassKind::Probe(_, epoch) = Pass::probe(0, start).kind() else {
            panic!("a probe");
        };
        c.counters
            .transitions
            .store(start + GENERATIONS / 2 - 1, Ordering::Relaxed);
        assert!(!c.outlived_a_wrap(epoch), "within half a wrap");
        c.counters
            .transitions
            .store(start + GENERATIONS / 2, Ordering::Relaxed);
        assert!(c.outlived_a_wrap(epoch), "half a wrap later");
    }

    #[test]
    fn a_stale_outcome_does_not_move_the_new_state() {
        let c = core(|b| b.consecutive_failures(1).success_threshold(1));
        let slow = pass(c.admit(|| at(&c, 0)));
        let p = pass(c.admit(|| at(&c, 0)));
        c.complete(p, Outcome::Failure, None, Some(at(&c, 0)));
        let probe = pass(c.admit(|| at(&c, 30_000)));
        c.complete(probe, Outcome::Success, None, None);
        assert_eq!(c.state(), CircuitState::Closed);
        // The failure of a call admitted before the trip arrives now: ignored.
        c.complete(slow, Outcome::Failure, None, Some(at(&c, 30_000)));
        assert_eq!(c.state(), CircuitState::Closed);
        assert_eq!(c.consecutive_failures(), 0);
    }

    #[test]
    fn an_abandoned_probe_gives_its_slot_back() {
        let c = core(|b| b.consecutive_failures(1));
        let p = pass(c.admit(|| at(&c, 0)));
        c.complete(p, Outcome::Failure, None, Some(at(&c, 0)));
        let probe = pass(c.admit(|| at(&c, 30_000)));
        rejected(c.admit(|| at(&c, 30_000)));
        c.abandon(probe);
        assert!(pass(c.admit(|| at(&c, 30_000))).is_probe());
    }

    #[test]
    fn the_break_grows_on_consecutive_trips_and_resets_on_close() {
        let c = core(|b| {
            b.consecutive_failures(1)
                .success_threshold(1)
                .break_duration(Duration::from_secs(10))
                .break_backoff(2.0, Duration::from_secs(25), 0.0)
        });
        let trip = |now_ms: u64| {
            let p = pass(c.admit(|| at(&c, now_ms)));
            c.complete(p, Outcome::Failure, None, Some(at(&c, now_ms)));
        };
        trip(0);
        assert_eq!(c.time_until_probe(at(&c, 0)), Some(Duration::from_secs(10)));
        trip(10_000); // the probe fails: 20 s
        assert_eq!(
            c.time_until_probe(at(&c, 10_000)),
            Some(Duration::from_secs(20))
        );
        trip(30_000); // and again: capped at 25 s
        assert_eq!(
            c.time_until_probe(at(&c, 30_000)),
            Some(Duration::from_secs(25))
        );
        let probe = pass(c.admit(|| at(&c, 55_000)));
        c.complete(probe, Outcome::Success, None, None);
        assert_eq!(c.state(), CircuitState::Closed);
        trip(60_000);
        assert_eq!(
            c.time_until_probe(at(&c, 60_000)),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn jitter_shortens_the_break_reproducibly() {
        let make = || {
            core(|b| {
                b.consecutive_failures(1)
                    .break_duration(Duration::from_secs(10))
                    .break_backoff(1.0, Duration::from_secs(10), 0.5)
                    .jitter_seed(42)
            })
        };
        let (a, b) = (make(), make());
        for c in [&a, &b] {
            let p = pass(c.admit(|| at(c, 0)));
            c.complete(p, Outcome::Failure, None, Some(at(c, 0)));
        }
        let left = a.time_until_probe(at(&a, 0)).unwrap();
        assert_eq!(Some(left), b.time_until_probe(at(&b, 0)));
        assert!(left >= Duration::from_secs(5) && left <= Duration::from_secs(10));
    }

    /// Threads admit and complete calls as fast as they can against a breaker that keeps
    /// cycling (virtual time: each call moves the clock 1 ms; the break is 3 ms). Each thread
    /// registers a probe in a shared table only after the breaker admitted it, and removes it
    /// before reporting its outcome, so the table never holds more probes of a generation than
    /// the breaker has admitted: any count above the limit is an over-admission.
    #[test]
    fn probes_never_exceed_the_limit_under_threads() {
        use std::collections::HashMap;
        use std::sync::atomic::AtomicUsize;
        use std::sync::Mutex;

        const MAX: u64 = 2;
        let c = core(|b| {
            b.consecutive_failures(2)
                .half_open_max_calls(MAX as u32)
                .success_threshold(3)
                .break_duration(Duration::from_millis(3))
        });
        let clock = Arc::new(AtomicU64::new(0));
        let table: Arc<Mutex<HashMap<u32, u64>>> = Arc::default();
        let (peak, probes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (c, clock, table) = (c.clone(), clock.clone(), table.clone());
                let (peak, probes) = (peak.clone(), probes.clone());
                std::thread::spawn(move || {
                    let mut rng = 0x2545_F491_4F6C_DD1D_u64 ^ (t + 1);
                    for _ in 0..20_000 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let now = at(&c, clock.fetch_add(1, Ordering::Relaxed));
                        let outcome = if rng % 10 < 4 {
                            Outcome::Failure
                        } else {
                            Outcome::Success
                        };
                        match c.admit(|| now) {
                            Decision::Admit(p) if p.is_probe() => {
                                let PassKind::Probe(generation, _) = p.kind() else {
                                    unreachable!("a probe")
                                };
                                probes.fetch_add(1, Ordering::Relaxed);
                                {
                                    let mut table = table.lock().unwrap();
                                    let n = table.entry(generation).or_insert(0);
                                    *n += 1;
                                    peak.fetch_max(*n, Ordering::Relaxed);
                                }
                                std::thread::yield_now();
                                *table.lock().unwrap().get_mut(&generation).unwrap() -= 1;
                                if rng.is_multiple_of(7) {
                                    c.abandon(p);
                                } else {
                                    c.complete(p, outcome, None, Some(now));
                                }
                            }
                            Decision::Admit(p) => c.complete(p, outcome, None, Some(now)),
                            Decision::Reject(_) => {}
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            probes.load(Ordering::Relaxed) > 100,
            "probing was exercised"
        );
        assert!(
            peak.load(Ordering::Relaxed) <= MAX,
            "peak {}",
            peak.load(Ordering::Relaxed)
        );
        assert!(c.counters().transitions > 100);
    }

    #[test]
    fn forced_states_override_and_reset_returns_to_closed() {
        let c = core(|b| b.consecutive_failures(1));
        c.force(CircuitState::ForcedOpen);
        let e = rejected(c.admit(|| at(&c, 0)));
        assert_eq!(
            (e.state(), e.retry_after()),
            (CircuitState::ForcedOpen, None)
        );
        c.force(CircuitState::Disabled);
        for _ in 0..10 {
            let p = pass(c.admit(|| at(&c, 0)));
            c.complete(p, Outcome::Failure, None, Some(at(&c, 0)));
        }
        assert_eq!(c.state(), CircuitState::Disabled);
        assert_eq!(c.counters().failures, 10);
        c.force(CircuitState::ForcedClosed);
        let p = pass(c.admit(|| at(&c, 0)));
        c.complete(p, Outcome::Failure, None, Some(at(&c, 0)));
        assert_eq!(c.state(), CircuitState::ForcedClosed);
        c.force(CircuitState::Closed);
        assert_eq!(c.state(), CircuitState::Closed);
        let p = pass(c.admit(|| at(&c, 0)));
        c.complete(p, Outcome::Failure, None, Some(at(&c, 0)));
        assert_eq!(c.state(), CircuitState::Open);
    }
}
