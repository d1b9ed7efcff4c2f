//! Sliding windows of call outcomes: the circuit breaker's failure-rate and slow-call-rate
//! rules, and the retry budget's record of calls and retries.
//!
//! Both windows are lock-free and O(1) per recorded call. No `Service` code here: they are
//! tested without a runtime, with the time passed in.

use crate::sync::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// A recorded call, as the windows see it.
const RECORDED: u8 = 1;
const FAILURE: u8 = 2;
const SLOW: u8 = 4;

/// What a window holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Tally {
    /// Whether `part` of the calls reaches `rate`, once at least `min_calls` were seen.
    pub(crate) fn reaches(self, part: u32, rate: f64, min_calls: u32) -> bool {
        // A division, correctly rounded, so that exact ratios (7 of 100 at 0.07) compare
        // equal; `part >= rate * calls` gets some of them wrong.
        self.calls >= min_calls && self.calls > 0 && f64::from(part) / f64::from(self.calls) >= rate
    }
}

fn flags(failure: bool, slow: bool) -> u8 {
    RECORDED | if failure { FAILURE } else { 0 } | if slow { SLOW } else { 0 }
}

// === CacheLine, StripedCounter ===

/// Keeps a value on cache lines of its own (128 bytes: two lines, as adjacent-line prefetch
/// pairs them on x86), so writes to its neighbours do not slow down readers of it.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct CacheLine<T>(pub(crate) T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Stripes of a [`StripedCounter`]: a power of two.
const STRIPES: usize = 8;

/// A counter that many threads add to without sharing a cache line: each thread adds to its
/// own stripe (threads are given stripes in turn), and a read sums them. Exact, like one
/// atomic; but two threads counting at once do not pass a cache line back and forth for it.
#[derive(Debug)]
pub(crate) struct StripedCounter {
    stripes: [CacheLine<AtomicU64>; STRIPES],
}

impl StripedCounter {
    pub(crate) fn new() -> Self {
        StripedCounter {
            stripes: std::array::from_fn(|_| CacheLine(AtomicU64::new(0))),
        }
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.stripes[stripe()].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.stripes
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.load(Ordering::Relaxed)))
    }
}

impl Default for StripedCounter {
    fn default() -> Self {
        StripedCounter::new()
    }
}

/// This thread's stripe.
#[inline]
fn stripe() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static STRIPE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    STRIPE.with(|stripe| match stripe.get() {
        usize::MAX => {
            let mine = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % STRIPES;
            stripe.set(mine);
            mine
        }
        mine => mine,
    })
}

// === CountWindow ===

/// The last `size` calls: a ring of outcome slots with running counts.
///
/// Recording swaps the new outcome into the next slot and applies the difference between the
/// old and the new outcome to the counts. Each swap's difference is applied exactly once, so
/// the counts always converge to what the slots hold, under any interleaving; a call recorded
/// `size + 1` calls ago has been swapped out and no longer counts. Recording a success over a
/// success (the common case) touches no count at all.
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    /// Written by every call: on its own cache line, away from the counts every call reads.
    cursor: CacheLine<AtomicU64>,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        CountWindow {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            cursor: CacheLine(AtomicU64::new(0)),
            calls: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
        }
    }

    fn size(&self) -> u32 {
        self.slots.len() as u32
    }

    pub(crate) fn record(&self, failure: bool, slow: bool) {
        let new = flags(failure, slow);
        let index = self.cursor.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64;
        let slot = &self.slots[index as usize];
        // A steady stream of like outcomes finds the slot already holding this one: read it
        // first, and write (and update the counts) only on a change.
        if slot.load(Ordering::Acquire) == new {
            return;
        }
        let old = slot.swap(new, Ordering::AcqRel);
        if old != new {
            self.apply(old, new);
        }
    }

    /// Applies the change of one slot from `old` to `new` to the counts.
    fn apply(&self, old: u8, new: u8) {
        for (bit, count) in [
            (RECORDED, &self.calls),
            (FAILURE, &self.failures),
            (SLOW, &self.slow),
        ] {
            match (old & bit != 0, new & bit != 0) {
                (false, true) => {
                    count.fetch_add(1, Ordering::AcqRel);
                }
                (true, false) => {
                    count.fetch_sub(1, Ordering::AcqRel);
                }
                _ => {}
            }
        }
    }

    /// How many calls the window has recorded since it was made (a clear does not reset it).
    pub(crate) fn recorded(&self) -> u64 {
        self.cursor.load(Ordering::Relaxed)
    }

    /// The calls the window holds: [`tally`](Self::tally)'s `calls`, with one load.
    #[inline]
    pub(crate) fn calls(&self) -> u32 {
        (self.calls.load(Ordering::Acquire) as i32)
            .max(0)
            .unsigned_abs()
            .min(self.size())
    }

    pub(crate) fn tally(&self) -> Tally {
        // Counts may be read mid-update by another thread (a decrement seen before the
        // matching increment): read them as signed and clamp to what the window can hold.
        let read = |count: &AtomicU32| (count.load(Ordering::Acquire) as i32).max(0) as u32;
        let calls = read(&self.calls).min(self.size());
        Tally {
            calls,
            failures: read(&self.failures).min(calls),
            slow: read(&self.slow).min(calls),
        }
    }

    /// Empties the window: every slot goes back to "no call", through the same exact
    /// difference-applying path as recording.
    pub(crate) fn clear(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, Ordering::AcqRel);
            if old != 0 {
                self.apply(old, 0);
            }
        }
    }
}

// === TimeWindow ===

/// The calls of the last `span`, in `buckets` buckets of `span / buckets` each.
///
/// A call is added to the bucket of the moment it completes. A bucket is reused for a newer
/// period by the first call that finds it stale, which swaps in the new period and zeroes its
/// counts. Under contention, at that instant, a call recorded by another thread may go
/// uncounted, or one that read the old period may be added to the new one: the counts are
/// exact without contention and off by the few calls racing a bucket's turnover with it. The
/// tally covers the current bucket and the `buckets - 1` before it, so it spans between
/// `span - span / buckets` and `span`.
pub(crate) struct TimeWindow {
    width_ms: u64,
    buckets: Box<[Bucket]>,
}

struct Bucket {
    /// The period this bucket holds, plus one; zero is "empty".
    period: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl TimeWindow {
    /// A window of `span` in `buckets` buckets; `span / buckets` must be at least 1 ms.
    pub(crate) fn new(span: Duration, buckets: u32) -> Self {
        let buckets = buckets.max(1);
        let width_ms = (span.as_millis() as u64 / u64::from(buckets)).max(1);
        TimeWindow {
            width_ms,
            buckets: (0..buckets)
                .map(|_| Bucket {
                    period: AtomicU64::new(0),
                    calls: AtomicU32::new(0),
                    failures: AtomicU32::new(0),
                    slow: AtomicU32::new(0),
                })
                .collect(),
        }
    }

    fn period(&self, now_ms: u64) -> u64 {
        now_ms / self.width_ms
    }

    /// Records a call that completed at `now_ms` (milliseconds since the breaker was built);
    /// returns how many calls its bucket holds now.
    pub(crate) fn record(&self, now_ms: u64, failure: bool, slow: bool) -> u32 {
        let period = self.period(now_ms);
        let tag = period + 1;
        let bucket = &self.buckets[(period % self.buckets.len() as u64) as usize];
        let mut seen = bucket.period.load(Ordering::Acquire);
        while seen != tag {
            if seen > tag {
                // The bucket already holds a newer period: this call is too old to count.
                return 0;
            }
            match bucket
                .period
                .compare_exchange(seen, tag, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    bucket.calls.store(0, Ordering::Release);
                    bucket.failures.store(0, Ordering::Release);
                    bucket.slow.store(0, Ordering::Release);
                    break;
                }
                Err(actual) => seen = actual,
            }
        }
        let calls = bucket
            .calls
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if failure {
            bucket.failures.fetch_add(1, Ordering::AcqRel);
        }
        if slow {
            bucket.slow.fetch_add(1, Ordering::AcqRel);
        }
        calls
    }

    /// What the window holds at `now_ms`: the current bucket and the ones before it.
    pub(crate) fn tally(&self, now_ms: u64) -> Tally {
        let current = self.period(now_ms) + 1;
        let oldest = current.saturating_sub(self.buckets.len() as u64 - 1);
        let mut tally = Tally::default();
        for bucket in self.buckets.iter() {
            let tag = bucket.period.load(Ordering::Acquire);
            if tag != 0 && tag >= oldest && tag <= current {
                let calls = bucket.calls.load(Ordering::Acquire);
                tally.calls = tally.calls.saturating_add(calls);
                tally.failures = tally
                    .failures
                    .saturating_add(bucket.failures.load(Ordering::Acquire).min(calls));
                tally.slow = tally
                    .slow
                    .saturating_add(bucket.slow.load(Ordering::Acquire).min(calls));
            }
        }
        tally
    }

    /// Empties the window.
    pub(crate) fn clear(&self) {
        for bucket in self.buckets.iter() {
            bucket.period.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_striped_counter_sums_every_threads_adds_exactly() {
        let counter = std::sync::Arc::new(StripedCounter::new());
        let threads: Vec<_> = (0..2 * STRIPES as u64)
            .map(|t| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        counter.add(t + 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = 2 * STRIPES as u64;
        assert_eq!(counter.sum(), 10_000 * n * (n + 1) / 2);
    }

    #[test]
    fn a_count_window_forgets_the_call_size_plus_one_ago() {
        let w = CountWindow::new(3);
        w.record(true, false);
        w.record(false, false);
        w.record(false, false);
        assert_eq!(
            w.tally(),
            Tally {
                calls: 3,
                failures: 1,
                slow: 0
            }
        );
        w.record(false, true); // evicts the failure
        assert_eq!(
            w.tally(),
            Tally {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
    }

    #[test]
    fn a_long_healthy_history_does_not_dilute_a_count_window() {
        let w = CountWindow::new(10);
        for _ in 0..2_000 {
            w.record(false, false);
        }
        for _ in 0..5 {
            w.record(true, false);
        }
        let t = w.tally();
        assert_eq!((t.calls, t.failures), (10, 5));
        assert!(t.reaches(t.failures, 0.5, 10));
    }

    #[test]
    fn clearing_a_count_window_empties_it() {
        let w = CountWindow::new(4);
        for i in 0..7 {
            w.record(i % 2 == 0, i % 3 == 0);
        }
        w.clear();
        assert_eq!(w.tally(), Tally::default());
        w.record(true, false);
        assert_eq!(
            w.tally(),
            Tally {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
    }

    #[test]
    fn a_time_window_forgets_calls_older_than_its_span() {
        // 10 s in 10 buckets of 1 s.
        let w = TimeWindow::new(Duration::from_secs(10), 10);
        assert_eq!(w.record(500, true, false), 1);
        assert_eq!(w.record(600, false, false), 2, "the bucket's calls so far");
        w.clear();
        w.record(500, true, false);
        w.record(1_500, false, false);
        assert_eq!(
            w.tally(1_500),
            Tally {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        // At 9.999 s the first bucket (0..1 s) is still in the window.
        assert_eq!(w.tally(9_999).failures, 1);
        // At 10 s it has slid out; the 1..2 s bucket remains.
        assert_eq!(
            w.tally(10_000),
            Tally {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(w.tally(11_000), Tally::default());
    }

    #[test]
    fn a_time_window_reuses_a_bucket_for_a_newer_period() {
        let w = TimeWindow::new(Duration::from_secs(2), 2);
        w.record(100, true, false);
        w.record(2_100, false, false); // same bucket slot, a newer period
        assert_eq!(
            w.tally(2_100),
            Tally {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        // A late record for the old period does not land in the reused bucket.
        w.record(150, true, true);
        assert_eq!(
            w.tally(2_100),
            Tally {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn clearing_a_time_window_empties_it() {
        let w = TimeWindow::new(Duration::from_secs(10), 5);
        w.record(100, true, true);
        w.clear();
        assert_eq!(w.tally(100), Tally::default());
    }

    #[test]
    fn a_rate_needs_its_minimum_calls() {
        let t = Tally {
            calls: 4,
            failures: 4,
            slow: 0,
        };
        assert!(!t.reaches(t.failures, 0.5, 5));
        assert!(t.reaches(t.failures, 0.5, 4));
        assert!(t.reaches(t.failures, 1.0, 1));
        let half = Tally {
            calls: 10,
            failures: 5,
            slow: 0,
        };
        assert!(half.reaches(half.failures, 0.5, 10));
        assert!(!half.reaches(half.failures, 0.51, 10));
    }

    proptest! {
        /// The running counts always equal a recount of the last `size` calls.
        #[test]
        fn count_window_matches_a_recount(
            size in 1u32..20,
            calls in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..200),
            clear_at in proptest::option::of(0usize..200),
        ) {
            let w = CountWindow::new(size);
            let mut kept: Vec<(bool, bool)> = Vec::new();
            for (i, &(failure, slow)) in calls.iter().enumerate() {
                if clear_at == Some(i) {
                    w.clear();
                    kept.clear();
                }
                w.record(failure, slow);
                kept.push((failure, slow));
            }
            // A clear leaves the cursor where it was, so the ring keeps the last `size` calls
            // recorded since the clear.
            let last: Vec<_> = kept.iter().rev().take(size as usize).collect();
            let expected = Tally {
                calls: last.len() as u32,
                failures: last.iter().filter(|c| c.0).count() as u32,
                slow: last.iter().filter(|c| c.1).count() as u32,
            };
            prop_assert_eq!(w.tally(), expected);
        }

        /// The time window counts exactly the calls of the last `buckets` periods.
        #[test]
        fn time_window_matches_a_recount(
            buckets in 1u32..8,
            mut times in proptest::collection::vec((0u64..20_000, any::<bool>()), 0..100),
        ) {
            times.sort();
            let w = TimeWindow::new(Duration::from_millis(1_000 * u64::from(buckets)), buckets);
            for &(t, failure) in &times {
                w.record(t, failure, false);
            }
            let now = times.last().map_or(0, |t| t.0);
            let current = now / 1_000;
            let oldest = (current + 1).saturating_sub(u64::from(buckets));
            let inside: Vec<_> = times.iter().filter(|(t, _)| t / 1_000 >= oldest).collect();
            let expected = Tally {
                calls: inside.len() as u32,
                failures: inside.iter().filter(|c| c.1).count() as u32,
                slow: 0,
            };
            prop_assert_eq!(w.tally(now), expected);
        }
    }
}
