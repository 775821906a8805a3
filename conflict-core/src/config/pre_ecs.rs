//! Staging ("pre-ECS") settings.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// What happens to an operation that loses its staging group.
///
/// ```
/// use conflict_core::OnLose;
/// assert_eq!(OnLose::from_name("requeue"), Some(OnLose::Requeue));
/// assert_eq!(OnLose::default(), OnLose::Reject);
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnLose {
    /// End at once with `ConflictError::Rejected` (the default).
    #[default]
    Reject,
    /// Stay staged and compete again when the winner finishes, in priority order.
    Requeue,
}

impl OnLose {
    /// Every choice, in declaration order: the vocabulary of `pre_ecs(on_lose = "...")`.
    ///
    /// ```
    /// use conflict_core::OnLose;
    /// for o in OnLose::ALL {
    ///     assert_eq!(OnLose::from_name(o.name()), Some(o));
    /// }
    /// ```
    pub const ALL: [Self; 2] = [Self::Reject, Self::Requeue];

    /// Parses `reject` or `requeue`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "reject" => Self::Reject,
            "requeue" => Self::Requeue,
            _ => return None,
        })
    }

    /// The attribute spelling.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Requeue => "requeue",
        }
    }
}

/// Settings of the staging stage, which resolves competing operations on one target by priority
/// before any of them runs.
///
/// | key | default | range |
/// |---|---|---|
/// | `staging_timeout_ms` | 0 | 0..=60000 |
/// | `on_lose` | `"reject"` | `"reject"`, `"requeue"` |
/// | `max_staged_per_target` | 1024 | 1..=100000 |
/// | `grace_period_ms` | 100 | 0..=3600000 |
///
/// Why `staging_timeout_ms` defaults to 0: with a window, every call, even one on an idle target,
/// waits the whole window before it may run, so an uncontended call would pay a fixed delay.
/// With 0, a call on an idle target runs at once and calls that arrive while it executes form the
/// next group, which is resolved the moment it finishes: contention is still resolved by
/// priority, and only contended calls wait. Set a window (grouping by arrival time) when you want
/// calls that arrive close together to compete even if the target is idle.
///
/// ```
/// use conflict_core::{OnLose, PreEcsConfig};
/// let cfg = PreEcsConfig { staging_timeout_ms: 50, on_lose: OnLose::Requeue, ..PreEcsConfig::DEFAULT };
/// cfg.validate().unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PreEcsConfig {
    /// How long a group collects arrivals from its first operation, in milliseconds.
    pub staging_timeout_ms: u64,
    /// What losers do.
    pub on_lose: OnLose,
    /// The most operations that may wait on one target; more are refused or displace a
    /// lower-priority one.
    pub max_staged_per_target: u32,
    /// How long an executing operation is safe from preemption, in milliseconds.
    pub grace_period_ms: u64,
}

impl PreEcsConfig {
    /// The defaults in the table above.
    pub const DEFAULT: Self = Self {
        staging_timeout_ms: 0,
        on_lose: OnLose::Reject,
        max_staged_per_target: 1024,
        grace_period_ms: 100,
    };

    /// Checks every field against its range.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for the first of `staging_timeout_ms` (`0..=60000`),
    /// `max_staged_per_target` (`1..=100000`) and `grace_period_ms` (`0..=3600000`) outside its
    /// range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.staging_timeout_ms > 60_000 {
            return Err(ConfigError::out_of_range(
                "staging_timeout_ms",
                self.staging_timeout_ms,
                "0..=60000",
            ));
        }
        if !(1..=100_000).contains(&self.max_staged_per_target) {
            return Err(ConfigError::out_of_range(
                "max_staged_per_target",
                self.max_staged_per_target,
                "1..=100000",
            ));
        }
        if self.grace_period_ms > 3_600_000 {
            return Err(ConfigError::out_of_range(
                "grace_period_ms",
                self.grace_period_ms,
                "0..=3600000",
            ));
        }
        Ok(())
    }
}

impl Default for PreEcsConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_enforced() {
        PreEcsConfig::DEFAULT.validate().unwrap();
        let cases = [
            (
                PreEcsConfig {
                    staging_timeout_ms: 60_001,
                    ..PreEcsConfig::DEFAULT
                },
                "staging_timeout_ms",
            ),
            (
                PreEcsConfig {
                    max_staged_per_target: 0,
                    ..PreEcsConfig::DEFAULT
                },
                "max_staged_per_target",
            ),
            (
                PreEcsConfig {
                    max_staged_per_target: 100_001,
                    ..PreEcsConfig::DEFAULT
                },
                "max_staged_per_target",
            ),
            (
                PreEcsConfig {
                    grace_period_ms: 3_600_001,
                    ..PreEcsConfig::DEFAULT
                },
                "grace_period_ms",
            ),
        ];
        for (cfg, field) in cases {
            assert_eq!(cfg.validate().unwrap_err().field(), Some(field));
        }
    }
}
