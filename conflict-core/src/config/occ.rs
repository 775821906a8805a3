//! OCC settings and the backoff they imply.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Settings of the optimistic stage: how often to retry after a conflict and how long to wait.
///
/// After the `n`-th conflict (n ≥ 1) the executor waits a uniformly random time in
/// `[0, min(max_delay_ms, base_delay_ms × backoff_factor^(n-1))]` ("full jitter"), then runs the
/// body again on a fresh snapshot. After `max_retries` retries (so `max_retries + 1` attempts) it
/// gives up with `RetriesExhausted`.
///
/// | key | default | range |
/// |---|---|---|
/// | `max_retries` | 5 | 0..=1000 |
/// | `base_delay_ms` | 1 | 0..=60000 |
/// | `backoff_factor` | 1.5 | 1.0..=10.0 |
/// | `max_delay_ms` | 100 | `base_delay_ms`..=600000 |
///
/// ```
/// use conflict_core::OccConfig;
/// use std::time::Duration;
///
/// let occ = OccConfig { max_retries: 10, base_delay_ms: 1, backoff_factor: 2.0, max_delay_ms: 50 };
/// occ.validate().unwrap();
/// assert_eq!(occ.max_attempts(), 11);
/// assert_eq!(occ.backoff_ceiling(1), Duration::from_millis(1));
/// assert_eq!(occ.backoff_ceiling(3), Duration::from_millis(4));
/// assert_eq!(occ.backoff_ceiling(30), Duration::from_millis(50)); // capped
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OccConfig {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The ceiling of the first wait, in milliseconds (0: retry at once).
    pub base_delay_ms: u64,
    /// How much the ceiling grows per retry.
    pub backoff_factor: f64,
    /// The largest ceiling, in milliseconds.
    pub max_delay_ms: u64,
}

impl OccConfig {
    /// The defaults in the table above.
    pub const DEFAULT: Self = Self {
        max_retries: 5,
        base_delay_ms: 1,
        backoff_factor: 1.5,
        max_delay_ms: 100,
    };

    /// Largest accepted `max_retries`.
    pub const MAX_RETRIES: u32 = 1000;
    /// Largest accepted `base_delay_ms`.
    pub const MAX_BASE_DELAY_MS: u64 = 60_000;
    /// Largest accepted `max_delay_ms`.
    pub const MAX_DELAY_MS: u64 = 600_000;

    /// Checks every field against its range.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for the first of `max_retries` (`0..=1000`), `base_delay_ms`
    /// (`0..=60000`), `backoff_factor` (finite, `1.0..=10.0`) and `max_delay_ms` (`0..=600000`)
    /// outside its range; [`ConfigError::Inconsistent`] when `max_delay_ms < base_delay_ms`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_retries > Self::MAX_RETRIES {
            return Err(ConfigError::out_of_range(
                "max_retries",
                self.max_retries,
                "0..=1000",
            ));
        }
        if self.base_delay_ms > Self::MAX_BASE_DELAY_MS {
            return Err(ConfigError::out_of_range(
                "base_delay_ms",
                self.base_delay_ms,
                "0..=60000",
            ));
        }
        if !(self.backoff_factor.is_finite() && (1.0..=10.0).contains(&self.backoff_factor)) {
            return Err(ConfigError::out_of_range(
                "backoff_factor",
                self.backoff_factor,
                "1.0..=10.0",
            ));
        }
        if self.max_delay_ms > Self::MAX_DELAY_MS {
            return Err(ConfigError::out_of_range(
                "max_delay_ms",
                self.max_delay_ms,
                "0..=600000",
            ));
        }
        if self.max_delay_ms < self.base_delay_ms {
            return Err(ConfigError::Inconsistent {
                field: "max_delay_ms",
                message: format!(
                    "max_delay_ms ({}) must be at least base_delay_ms ({})",
                    self.max_delay_ms, self.base_delay_ms
                ),
            });
        }
        Ok(())
    }

    /// Attempts in all: `max_retries + 1`.
    #[must_use]
    pub const fn max_attempts(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }

    /// The ceiling of the wait before retry number `retry` (1-based; 0 is treated as 1):
    /// `min(max_delay_ms, base_delay_ms × backoff_factor^(retry-1))`.
    ///
    /// For a valid configuration it is within `[0, max_delay_ms]`, never decreases as `retry`
    /// grows, and is zero for every retry when `base_delay_ms` is zero.
    ///
    /// ```
    /// use conflict_core::OccConfig;
    /// use std::time::Duration;
    ///
    /// let eager = OccConfig { base_delay_ms: 0, backoff_factor: 10.0, ..OccConfig::DEFAULT };
    /// assert_eq!(eager.backoff_ceiling(1000), Duration::ZERO);
    /// ```
    #[must_use]
    #[allow(
        clippy::cast_precision_loss,
        reason = "validated delays (at most 600000 ms) are exact in f64; larger ones go to the cap"
    )]
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        if self.base_delay_ms == 0 {
            // No wait at any retry. Not computed: once `factor^n` overflows to infinity,
            // `0 × ∞` is NaN, and NaN would pass through `min` as the largest delay.
            return Duration::ZERO;
        }
        let cap = Duration::from_millis(self.max_delay_ms);
        #[allow(
            clippy::cast_possible_wrap,
            reason = "clamped to 1024, far below i32::MAX"
        )]
        let exp = retry.saturating_sub(1).min(1024) as i32;
        // base ≥ 1 and factor ≥ 1 (validated), so `ms` is in [1, +∞]: never NaN.
        let ms = (self.base_delay_ms as f64) * self.backoff_factor.powi(exp);
        // Infinity, and a NaN from an unvalidated factor, go to the cap too.
        if ms.is_nan() || ms >= self.max_delay_ms as f64 {
            return cap;
        }
        Duration::from_secs_f64(ms.max(0.0) / 1000.0).min(cap)
    }

    /// The wait before retry number `retry`, given a uniform random `unit` in `[0, 1)`.
    ///
    /// `unit` is clamped into `[0, 1]` (NaN counts as 0), so the result is always within
    /// `[0, backoff_ceiling(retry)]`.
    #[must_use]
    pub fn backoff_delay(&self, retry: u32, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let ceiling = self.backoff_ceiling(retry);
        // `mul_f64` goes through f64 seconds; the `min` keeps its rounding under the ceiling.
        ceiling.mul_f64(unit).min(ceiling)
    }
}

impl Default for OccConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        OccConfig::DEFAULT.validate().unwrap();
    }

    #[test]
    fn each_field_is_range_checked() {
        let bad = [
            (
                OccConfig {
                    max_retries: 1001,
                    ..OccConfig::DEFAULT
                },
                "max_retries",
            ),
            (
                OccConfig {
                    base_delay_ms: 60_001,
                    max_delay_ms: 600_000,
                    ..OccConfig::DEFAULT
                },
                "base_delay_ms",
            ),
            (
                OccConfig {
                    backoff_factor: 0.99,
                    ..OccConfig::DEFAULT
                },
                "backoff_factor",
            ),
            (
                OccConfig {
                    backoff_factor: f64::NAN,
                    ..OccConfig::DEFAULT
                },
                "backoff_factor",
            ),
            (
                OccConfig {
                    backoff_factor: 10.5,
                    ..OccConfig::DEFAULT
                },
                "backoff_factor",
            ),
            (
                OccConfig {
                    max_delay_ms: 600_001,
                    ..OccConfig::DEFAULT
                },
                "max_delay_ms",
            ),
            (
                OccConfig {
                    base_delay_ms: 10,
                    max_delay_ms: 5,
                    ..OccConfig::DEFAULT
                },
                "max_delay_ms",
            ),
        ];
        for (cfg, field) in bad {
            let err = cfg.validate().unwrap_err();
            assert_eq!(err.field(), Some(field), "{cfg:?}: {err}");
        }
        let edge = OccConfig {
            max_retries: 0,
            base_delay_ms: 0,
            backoff_factor: 1.0,
            max_delay_ms: 0,
        };
        edge.validate().unwrap();
    }

    #[test]
    fn backoff_grows_geometrically_and_is_capped() {
        let occ = OccConfig {
            max_retries: 50,
            base_delay_ms: 2,
            backoff_factor: 1.5,
            max_delay_ms: 40,
        };
        let mut prev = Duration::ZERO;
        for retry in 1..=50 {
            let c = occ.backoff_ceiling(retry);
            assert!(c >= prev, "ceiling must not shrink");
            assert!(c <= Duration::from_millis(40), "retry {retry}: {c:?}");
            prev = c;
        }
        assert_eq!(occ.backoff_ceiling(1), Duration::from_millis(2));
        assert_eq!(occ.backoff_ceiling(2), Duration::from_millis(3));
        assert_eq!(occ.backoff_ceiling(50), Duration::from_millis(40));
        // The design's uncapped loop waited ~65 s at 15 retries; ours never exceeds the cap,
        // even at the largest retry count and factor the validation accepts.
        let extreme = OccConfig {
            max_retries: 1000,
            base_delay_ms: 60_000,
            backoff_factor: 10.0,
            max_delay_ms: 600_000,
        };
        assert_eq!(extreme.backoff_ceiling(1000), Duration::from_secs(600));
    }

    #[test]
    fn jitter_stays_within_zero_and_ceiling() {
        let occ = OccConfig::DEFAULT;
        for retry in 1..=10 {
            let ceiling = occ.backoff_ceiling(retry);
            assert_eq!(occ.backoff_delay(retry, 0.0), Duration::ZERO);
            assert_eq!(occ.backoff_delay(retry, 1.0), ceiling);
            assert!(occ.backoff_delay(retry, 0.5) <= ceiling);
            assert_eq!(occ.backoff_delay(retry, 7.0), ceiling);
            assert_eq!(occ.backoff_delay(retry, -1.0), Duration::ZERO);
            assert_eq!(occ.backoff_delay(retry, f64::NAN), Duration::ZERO);
        }
    }

    #[test]
    fn zero_base_delay_means_no_wait() {
        let occ = OccConfig {
            base_delay_ms: 0,
            ..OccConfig::DEFAULT
        };
        for retry in 1..20 {
            assert_eq!(occ.backoff_ceiling(retry), Duration::ZERO);
        }
    }

    /// Issue #9, defect 8: with base 0 and factor 10, `10^n` overflows to infinity from retry
    /// ~310 on and `0 × ∞ = NaN` made the ceiling `max_delay_ms` instead of zero.
    #[test]
    fn zero_base_delay_stays_zero_when_the_growth_overflows() {
        let occ = OccConfig {
            max_retries: 1000,
            base_delay_ms: 0,
            backoff_factor: 10.0,
            max_delay_ms: 100,
        };
        occ.validate().unwrap();
        for retry in [309, 310, 311, 1000, u32::MAX] {
            assert_eq!(occ.backoff_ceiling(retry), Duration::ZERO, "retry {retry}");
            assert_eq!(
                occ.backoff_delay(retry, 0.999),
                Duration::ZERO,
                "retry {retry}"
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Every valid configuration, with the edges (zero base, factor 1 and 10 and a hair
        /// above 1, max equal to base) drawn often rather than once in tens of thousands.
        fn valid_config() -> impl Strategy<Value = OccConfig> {
            let base = prop_oneof![
                Just(0u64),
                Just(1),
                Just(OccConfig::MAX_BASE_DELAY_MS),
                0..=OccConfig::MAX_BASE_DELAY_MS,
            ];
            let factor = prop_oneof![
                Just(1.0f64),
                Just(10.0),
                Just(1.0 + f64::EPSILON),
                (1u32..1000).prop_map(|k| 1.0 + f64::from(k) * f64::EPSILON),
                1.0f64..=10.0,
            ];
            (0..=OccConfig::MAX_RETRIES, base, factor).prop_flat_map(|(retries, base, factor)| {
                let max = prop_oneof![
                    Just(base),
                    Just(OccConfig::MAX_DELAY_MS),
                    base..=OccConfig::MAX_DELAY_MS,
                ];
                max.prop_map(move |max_delay_ms| OccConfig {
                    max_retries: retries,
                    base_delay_ms: base,
                    backoff_factor: factor,
                    max_delay_ms,
                })
            })
        }

        fn retry() -> impl Strategy<Value = u32> {
            prop_oneof![0u32..=1100, Just(u32::MAX), any::<u32>()]
        }

        fn unit() -> impl Strategy<Value = f64> {
            prop_oneof![
                0.0f64..1.0,
                Just(1.0),
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                any::<f64>(),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            /// Invariant: the ceiling of every valid configuration is within
            /// `[0, max_delay_ms]`, and zero at every retry when the base is zero.
            #[test]
            fn ceiling_is_within_zero_and_max(cfg in valid_config(), retry in retry()) {
                prop_assert!(cfg.validate().is_ok(), "{cfg:?}");
                let c = cfg.backoff_ceiling(retry);
                prop_assert!(c <= Duration::from_millis(cfg.max_delay_ms), "{cfg:?} retry {retry}: {c:?}");
                if cfg.base_delay_ms == 0 {
                    prop_assert_eq!(c, Duration::ZERO, "{:?} retry {}", cfg, retry);
                }
            }

            /// Invariant: the ceiling never decreases as the retry count grows.
            #[test]
            fn ceiling_is_monotone_in_retry(
                cfg in valid_config(),
                a in retry(),
                b in retry(),
                step in 1u32..=3,
            ) {
                let (lo, hi) = (a.min(b), a.max(b));
                prop_assert!(cfg.backoff_ceiling(lo) <= cfg.backoff_ceiling(hi), "{cfg:?} {lo} vs {hi}");
                let next = a.saturating_add(step);
                prop_assert!(cfg.backoff_ceiling(a) <= cfg.backoff_ceiling(next), "{cfg:?} {a} vs {next}");
            }

            /// Invariant: the jittered delay is within `[0, ceiling]` for any `unit`, including
            /// NaN and infinities.
            #[test]
            fn delay_is_within_zero_and_ceiling(
                cfg in valid_config(),
                retry in retry(),
                unit in unit(),
            ) {
                let d = cfg.backoff_delay(retry, unit);
                let c = cfg.backoff_ceiling(retry);
                prop_assert!(d <= c, "{cfg:?} retry {retry} unit {unit}: {d:?} > {c:?}");
            }
        }
    }
}
