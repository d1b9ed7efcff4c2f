//! How long to wait before each retry: exponential backoff with a cap and jitter. Pure
//! arithmetic, with the random source passed in so tests are deterministic.

use std::time::Duration;

/// How the wait before a retry is randomised, so that clients that failed together do not
/// retry together.
///
/// With `exp = min(base * factor^(retry - 1), max)`:
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "lowercase")
)]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly `exp`.
    None,
    /// Uniform in `[0, exp]`: the most spread, the lowest mean.
    Full,
    /// Uniform in `[exp / 2, exp]`: spread, and never shorter than half.
    Equal,
    /// Uniform in `[base, min(max, 3 * previous wait)]`, with the first wait taken as `base`
    /// ("decorrelated jitter", from AWS's architecture blog): grows about threefold per retry
    /// on average, whatever the `factor`, never below `base` and never above `max`. The
    /// default.
    #[default]
    Decorrelated,
}

/// A validated backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) factor: f64,
    pub(crate) max: Duration,
    pub(crate) jitter: Jitter,
}

impl Backoff {
    /// The wait before retry number `retry` (1 for the first retry), given the previous wait
    /// (zero before the first) and a uniform random number in `[0, 1)`.
    pub(crate) fn delay(&self, retry: u32, previous: Duration, random: f64) -> Duration {
        let base = self.base.as_secs_f64();
        let max = self.max.as_secs_f64();
        let random = random.clamp(0.0, 1.0);
        let exp = (base * self.factor.powi(retry.saturating_sub(1).min(1_000) as i32)).min(max);
        let secs = match self.jitter {
            Jitter::None => exp,
            Jitter::Full => exp * random,
            Jitter::Equal => exp / 2.0 + exp / 2.0 * random,
            Jitter::Decorrelated => {
                // Before the first retry the previous wait counts as `base`, so even the
                // first retry is spread over [base, 3 * base].
                let upper = (previous.as_secs_f64().max(base) * 3.0).clamp(base, max);
                base + (upper - base) * random
            }
        };
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// A small, fast, seedable random source (SplitMix64).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A uniform number in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backoff(jitter: Jitter) -> Backoff {
        Backoff {
            base: Duration::from_secs(2),
            factor: 2.0,
            max: Duration::from_secs(10),
            jitter,
        }
    }

    #[test]
    fn without_jitter_it_doubles_up_to_the_cap() {
        let b = backoff(Jitter::None);
        let waits: Vec<u64> = (1..=5)
            .map(|n| b.delay(n, Duration::ZERO, 0.7).as_secs())
            .collect();
        assert_eq!(waits, [2, 4, 8, 10, 10]);
    }

    #[test]
    fn each_jitter_stays_in_its_range() {
        let b = backoff(Jitter::Full);
        assert_eq!(b.delay(2, Duration::ZERO, 0.0), Duration::ZERO);
        assert_eq!(b.delay(2, Duration::ZERO, 0.5), Duration::from_secs(2));
        let b = backoff(Jitter::Equal);
        assert_eq!(b.delay(2, Duration::ZERO, 0.0), Duration::from_secs(2));
        assert_eq!(b.delay(2, Duration::ZERO, 0.5), Duration::from_secs(3));
        let b = backoff(Jitter::Decorrelated);
        assert_eq!(
            b.delay(1, Duration::ZERO, 0.0),
            Duration::from_secs(2),
            "first: from base"
        );
        assert_eq!(
            b.delay(1, Duration::ZERO, 0.5),
            Duration::from_secs(4),
            "to 3 * base"
        );
        assert_eq!(
            b.delay(2, Duration::from_secs(2), 0.5),
            Duration::from_secs(4)
        );
        assert_eq!(
            b.delay(3, Duration::from_secs(8), 1.0),
            Duration::from_secs(10),
            "capped"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let (mut a, mut b) = (super::Rng::new(7), super::Rng::new(7));
        for _ in 0..100 {
            let x = a.next_f64();
            assert_eq!(x, b.next_f64());
            assert!((0.0..1.0).contains(&x));
        }
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(
            base_ms in 1u64..10_000,
            extra_ms in 0u64..100_000,
            factor in 1.0f64..10.0,
            retry in 1u32..100_000,
            previous_ms in 0u64..1_000_000,
            random in 0.0f64..1.0,
            jitter in 0usize..4,
        ) {
            let jitter = [Jitter::None, Jitter::Full, Jitter::Equal, Jitter::Decorrelated][jitter];
            let b = Backoff {
                base: Duration::from_millis(base_ms),
                factor,
                max: Duration::from_millis(base_ms + extra_ms),
                jitter,
            };
                        let d = b.delay(retry, Duration::from_millis(previous_ms), random);
            prop_assert!(d <= b.max);
            let exp = (b.base.as_secs_f64() * factor.powi(retry.saturating_sub(1).min(1_000) as i32))
                .min(b.max.as_secs_f64());
            if matches!(jitter, Jitter::None | Jitter::Full | Jitter::Equal) {
                prop_assert!(d.as_secs_f64() <= exp * 1.000_001 + 1e-9, "{:?} above {}", d, exp);
            }
            if jitter == Jitter::None {
                prop_assert!((d.as_secs_f64() - exp).abs() <= exp * 1e-6 + 1e-9, "exactly exp");
            }
            match jitter {
                Jitter::None | Jitter::Decorrelated => {
                    prop_assert!(d.as_secs_f64() >= b.base.as_secs_f64() * 0.999_999)
                }
                Jitter::Equal => prop_assert!(d.as_secs_f64() >= b.base.as_secs_f64() / 2.0 * 0.999_999),
                Jitter::Full => {}
            }
        }
    }
}
