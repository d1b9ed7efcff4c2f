//! The breaker's whole state in one atomic word, so every transition is one compare-and-swap.
//!
//! Layout of the `u64`, low bits first:
//!
//! | bits | field |
//! | --- | --- |
//! | 0..3 | kind: Closed, Open, HalfOpen, ForcedOpen, ForcedClosed, Disabled |
//! | 3..24 | generation: bumped by every transition, wrapping at 2^21 |
//! | 24..64 | payload, by kind (below) |
//!
//! - Closed: consecutive failures so far.
//! - Open: when the break ends, in milliseconds since the breaker was built.
//! - HalfOpen: probes in flight (low 20 bits) and probe successes (high 20 bits).
//!
//! Keeping the probe counts and the failure streak inside the word makes them exact: a probe
//! slot is taken, a success counted or the breaker re-opened by one CAS that also checks the
//! generation, so an outcome from an earlier state can never move the current one.

use std::fmt;

const KIND_BITS: u32 = 3;
const GEN_BITS: u32 = 21;
const PAYLOAD_SHIFT: u32 = KIND_BITS + GEN_BITS;
const KIND_MASK: u64 = (1 << KIND_BITS) - 1;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
/// How many generations there are before the counter wraps.
pub(crate) const GENERATIONS: u64 = 1 << GEN_BITS;
/// The largest payload: 2^40 - 1.
pub(crate) const PAYLOAD_MAX: u64 = (1 << (64 - PAYLOAD_SHIFT)) - 1;
/// The largest half-open probe count or success count: 2^20 - 1.
pub(crate) const HALF_OPEN_FIELD_MAX: u64 = (1 << 20) - 1;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CircuitState {
    /// Traffic flows; outcomes are recorded and may trip the breaker.
    Closed,
    /// Rejecting every call until the break ends.
    Open,
    /// Probing: a limited number of calls go through to test the downstream.
    HalfOpen,
    /// Rejecting every call until the handle clears it.
    ForcedOpen,
    /// Admitting every call and never tripping until the handle clears it.
    ForcedClosed,
    /// Switched off: admits every call and counts it, never trips.
    Disabled,
}

impl CircuitState {
    /// A short lowercase name: `closed`, `open`, `half_open`, `forced_open`, `forced_closed`,
    /// `disabled`. Stable, for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::ForcedOpen => "forced_open",
            CircuitState::ForcedClosed => "forced_closed",
            CircuitState::Disabled => "disabled",
        }
    }

    /// Whether calls are let through (Closed, HalfOpen for probes, ForcedClosed, Disabled).
    pub const fn admits_calls(self) -> bool {
        !matches!(self, CircuitState::Open | CircuitState::ForcedOpen)
    }

    fn to_bits(self) -> u64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
            CircuitState::ForcedOpen => 3,
            CircuitState::ForcedClosed => 4,
            CircuitState::Disabled => 5,
        }
    }

    fn from_bits(bits: u64) -> Self {
        match bits {
            0 => CircuitState::Closed,
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            3 => CircuitState::ForcedOpen,
            4 => CircuitState::ForcedClosed,
            // Only `Word` builds words, from a `CircuitState`: 5 is the last value.
            _ => CircuitState::Disabled,
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value of the state word.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word(u64);

impl Word {
    pub(crate) const fn from_raw(raw: u64) -> Self {
        Word(raw)
    }

    pub(crate) const fn raw(self) -> u64 {
        self.0
    }

    fn new(state: CircuitState, generation: u32, payload: u64) -> Self {
        debug_assert!(payload <= PAYLOAD_MAX);
        Word(
            state.to_bits()
                | ((u64::from(generation) & GEN_MASK) << KIND_BITS)
                | (payload.min(PAYLOAD_MAX) << PAYLOAD_SHIFT),
        )
    }

    /// The first word of a new breaker: Closed, generation 0, no failures.
    pub(crate) fn initial() -> Self {
        Word::new(CircuitState::Closed, 0, 0)
    }

    pub(crate) fn state(self) -> CircuitState {
        CircuitState::from_bits(self.0 & KIND_MASK)
    }

    pub(crate) fn generation(self) -> u32 {
        ((self.0 >> KIND_BITS) & GEN_MASK) as u32
    }

    fn payload(self) -> u64 {
        self.0 >> PAYLOAD_SHIFT
    }

    fn next_generation(self) -> u32 {
        (self.generation() + 1) & GEN_MASK as u32
    }

    // --- Closed ---

    /// Consecutive failures, when Closed.
    pub(crate) fn failures(self) -> u64 {
        self.payload()
    }

    /// The same Closed generation with another failure count.
    pub(crate) fn with_failures(self, failures: u64) -> Self {
        Word::new(
            CircuitState::Closed,
            self.generation(),
            failures.min(PAYLOAD_MAX),
        )
    }

    // --- Open ---

    /// When the break ends, in milliseconds since the breaker was built, when Open.
    pub(crate) fn open_until_ms(self) -> u64 {
        self.payload()
    }

    // --- HalfOpen ---

    /// Probes in flight, when HalfOpen.
    pub(crate) fn probes(self) -> u64 {
        self.payload() & HALF_OPEN_FIELD_MAX
    }

    /// Probe successes so far, when HalfOpen.
    pub(crate) fn successes(self) -> u64 {
        self.payload() >> 20
    }

    /// The same HalfOpen generation with other counts.
    pub(crate) fn with_probes(self, probes: u64, successes: u64) -> Self {
        Word::new(
            CircuitState::HalfOpen,
            self.generation(),
            probes.min(HALF_OPEN_FIELD_MAX) | (successes.min(HALF_OPEN_FIELD_MAX) << 20),
        )
    }

    // --- transitions: a new generation ---

    /// The word after a transition to `state` (a new generation). Open words are built with
    /// [`Word::opened`], HalfOpen ones with [`Word::half_opened`].
    pub(crate) fn moved_to(self, state: CircuitState) -> Self {
        Word::new(state, self.next_generation(), 0)
    }

    /// The word after tripping: Open until `until_ms`.
    pub(crate) fn opened(self, until_ms: u64) -> Self {
        Word::new(
            CircuitState::Open,
            self.next_generation(),
            until_ms.min(PAYLOAD_MAX),
        )
    }

    /// The word after the break: HalfOpen with the caller as the first probe.
    pub(crate) fn half_opened(self) -> Self {
        Word::new(CircuitState::HalfOpen, self.next_generation(), 1)
    }
}

impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Word")
            .field("state", &self.state())
            .field("generation", &self.generation())
            .field("payload", &self.payload())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [CircuitState; 6] = [
        CircuitState::Closed,
        CircuitState::Open,
        CircuitState::HalfOpen,
        CircuitState::ForcedOpen,
        CircuitState::ForcedClosed,
        CircuitState::Disabled,
    ];

    #[test]
    fn the_initial_word_is_closed_with_no_failures() {
        let w = Word::initial();
        assert_eq!(w.state(), CircuitState::Closed);
        assert_eq!((w.generation(), w.failures()), (0, 0));
    }

    #[test]
    fn transitions_bump_the_generation_and_wrap() {
        let mut w = Word::initial();
        for g in 1..=5 {
            w = w.moved_to(CircuitState::ForcedOpen);
            assert_eq!(w.generation(), g);
        }
        let last = Word::new(CircuitState::Closed, GEN_MASK as u32, 7);
        assert_eq!(last.moved_to(CircuitState::Closed).generation(), 0);
    }

    #[test]
    fn half_open_fields_do_not_bleed_into_each_other() {
        let w = Word::initial().half_opened();
        assert_eq!((w.probes(), w.successes()), (1, 0));
        let w = w.with_probes(HALF_OPEN_FIELD_MAX, 3);
        assert_eq!((w.probes(), w.successes()), (HALF_OPEN_FIELD_MAX, 3));
        let w = w.with_probes(0, HALF_OPEN_FIELD_MAX);
        assert_eq!((w.probes(), w.successes()), (0, HALF_OPEN_FIELD_MAX));
        assert_eq!(w.state(), CircuitState::HalfOpen);
    }

    proptest! {
        #[test]
        fn fields_round_trip(state in 0usize..6, gen in 0u32..(1 << 21), payload in 0u64..=PAYLOAD_MAX) {
            let state = ALL[state];
            let w = Word::new(state, gen, payload);
            prop_assert_eq!(w.state(), state);
            prop_assert_eq!(w.generation(), gen);
            prop_assert_eq!(w.payload(), payload);
            prop_assert_eq!(Word::from_raw(w.raw()), w);
        }

        #[test]
        fn opened_words_keep_their_deadline(gen in 0u32..(1 << 21), until in 0u64..=PAYLOAD_MAX) {
            let w = Word::new(CircuitState::HalfOpen, gen, 5).opened(until);
            prop_assert_eq!(w.state(), CircuitState::Open);
            prop_assert_eq!(w.open_until_ms(), until);
            prop_assert_eq!(w.generation(), (gen + 1) & GEN_MASK as u32);
        }
    }
}
