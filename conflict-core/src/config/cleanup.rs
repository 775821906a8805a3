//! Cleanup settings: what happens to the records of operations that lost ("zombies").

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::{OperationPriority, PrioritySet};

/// Why a record is cleaned the way it is (see [`CleanupConfig::decide`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupTrigger {
    /// The configured strategy applies.
    Configured,
    /// The priority is in `immediate_cleanup_priorities`.
    Priority,
    /// Memory pressure is above the threshold and `aggressive_on_memory_pressure` is set.
    MemoryPressure,
    /// The total zombie count is above `force_cleanup_threshold`.
    Force,
}

/// What happens to one zombie record: how, why, and how long it is kept first.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CleanupDecision {
    /// The strategy that applies.
    pub strategy: CleanupStrategy,
    /// Why.
    pub trigger: CleanupTrigger,
    /// How long the record is kept before the strategy may remove it (zero: at once).
    pub keep_for: Duration,
}

/// How the records of rejected and failed operations are removed.
///
/// ```
/// use conflict_core::CleanupStrategy;
/// assert_eq!(CleanupStrategy::from_name("lazy"), Some(CleanupStrategy::Lazy));
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CleanupStrategy {
    /// Kept (and counted) until a cap forces them out.
    None,
    /// Removed as soon as the operation ends.
    Immediate,
    /// Removed by a background sweeper once older than the retention window.
    #[default]
    Deferred,
    /// Removed when a query or a new operation on the same target meets an expired one.
    Lazy,
    /// A named handler runs, then the record is removed unless the handler keeps it.
    Custom,
}

impl CleanupStrategy {
    /// Every strategy, in declaration order: the vocabulary of `cleanup(strategy = "...")`.
    ///
    /// ```
    /// use conflict_core::CleanupStrategy;
    /// for s in CleanupStrategy::ALL {
    ///     assert_eq!(CleanupStrategy::from_name(s.name()), Some(s));
    /// }
    /// ```
    pub const ALL: [Self; 5] = [
        Self::None,
        Self::Immediate,
        Self::Deferred,
        Self::Lazy,
        Self::Custom,
    ];

    /// Parses `none`, `immediate`, `deferred`, `lazy` or `custom`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Self::None,
            "immediate" => Self::Immediate,
            "deferred" => Self::Deferred,
            "lazy" => Self::Lazy,
            "custom" => Self::Custom,
            _ => return None,
        })
    }

    /// The attribute spelling.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Immediate => "immediate",
            Self::Deferred => "deferred",
            Self::Lazy => "lazy",
            Self::Custom => "custom",
        }
    }
}

/// Cleanup of rejected and failed operations, per annotated function.
///
/// | key | default | range |
/// |---|---|---|
/// | `strategy` | `"deferred"` | none, immediate, deferred, lazy, custom |
/// | `retention_minutes` | 30 | 0..=1440 (deferred needs > 0) |
/// | `cleanup_check_interval_seconds` | 60 | 10..=3600 |
/// | `aggressive_on_memory_pressure` | true | |
/// | `memory_pressure_threshold` | 0.8 | 0.1..=1.0 |
/// | `immediate_cleanup_priorities` | `[CRITICAL]` | priorities 1..=10 |
/// | `debug_retention_priorities` | `[LOW]` | priorities 1..=10 |
/// | `custom_cleanup_handler` | none | required by, and only allowed with, `custom` |
/// | `max_zombie_count_per_target` | 100 | 1..=10000 |
/// | `force_cleanup_threshold` | 1000 | 100..=100000 |
///
/// ```
/// use conflict_core::{CleanupConfig, CleanupStrategy};
/// let cfg = CleanupConfig::builder()
///     .strategy(CleanupStrategy::Custom)
///     .custom_cleanup_handler("financial_audit")
///     .build()
///     .unwrap();
/// assert_eq!(cfg.custom_cleanup_handler.as_deref(), Some("financial_audit"));
///
/// let err = CleanupConfig::builder().strategy(CleanupStrategy::Custom).build().unwrap_err();
/// assert_eq!(err.field(), Some("custom_cleanup_handler"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CleanupConfig {
    /// The configured strategy.
    pub strategy: CleanupStrategy,
    /// How long deferred (and debug-retained) records stay, in minutes.
    pub retention_minutes: u32,
    /// How often the deferred sweeper runs, in seconds.
    pub cleanup_check_interval_seconds: u32,
    /// Whether memory pressure above the threshold switches to immediate cleanup.
    pub aggressive_on_memory_pressure: bool,
    /// The memory pressure (used / limit, 0..1) above which cleanup turns aggressive.
    pub memory_pressure_threshold: f64,
    /// Priorities whose records are always removed at once.
    pub immediate_cleanup_priorities: PrioritySet,
    /// Priorities whose records are kept for the retention window even when `immediate`
    /// (the strategy, or rule 1) would remove them at once; only while at most
    /// `force_cleanup_threshold` zombies are kept and memory pressure does not apply.
    pub debug_retention_priorities: PrioritySet,
    /// The registered handler that `custom` runs.
    pub custom_cleanup_handler: Option<Cow<'static, str>>,
    /// The most zombies kept per target; the oldest beyond it are removed.
    pub max_zombie_count_per_target: u32,
    /// Total zombies above which every new zombie is removed at once: every strategy acts as
    /// immediate and debug retention is off.
    pub force_cleanup_threshold: u32,
}

impl CleanupConfig {
    /// The defaults in the table above.
    pub const DEFAULT: Self = Self {
        strategy: CleanupStrategy::Deferred,
        retention_minutes: 30,
        cleanup_check_interval_seconds: 60,
        aggressive_on_memory_pressure: true,
        memory_pressure_threshold: 0.8,
        immediate_cleanup_priorities: PrioritySet::EMPTY.with(OperationPriority::CRITICAL),
        debug_retention_priorities: PrioritySet::EMPTY.with(OperationPriority::LOW),
        custom_cleanup_handler: None,
        max_zombie_count_per_target: 100,
        force_cleanup_threshold: 1000,
    };

    /// The `cleanup = false` setting: strategy `none`, everything else default.
    pub const DISABLED: Self = Self {
        strategy: CleanupStrategy::None,
        ..Self::DEFAULT
    };

    /// The retention window.
    #[must_use]
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.retention_minutes) * 60)
    }

    /// The rule for one record of an operation that did not succeed, given the memory
    /// pressure and the number of zombies kept now:
    ///
    /// 1. a priority in `immediate_cleanup_priorities` → immediate;
    /// 2. memory pressure above the threshold with `aggressive_on_memory_pressure` → immediate;
    /// 3. more than `force_cleanup_threshold` zombies in total → immediate;
    /// 4. otherwise the configured strategy.
    ///
    /// A priority in `debug_retention_priorities` that rule 1 or the configured `immediate`
    /// strategy would remove at once is instead kept for the retention window, but only while
    /// `total_zombies` is at or under `force_cleanup_threshold` and memory pressure does not
    /// apply. So above the threshold every decision, whatever the priority and the strategy
    /// (`none`, `deferred`, `lazy`, `custom`, debug-retained `immediate`), is immediate with
    /// `keep_for` zero: a record is kept only when at most `force_cleanup_threshold` are.
    ///
    /// ```
    /// use conflict_core::{CleanupConfig, CleanupStrategy, CleanupTrigger, OperationPriority as P};
    /// use std::time::Duration;
    /// let cfg = CleanupConfig::DEFAULT;
    /// let d = cfg.decide(P::CRITICAL, 0.1, 0);
    /// assert_eq!((d.strategy, d.trigger), (CleanupStrategy::Immediate, CleanupTrigger::Priority));
    /// let d = cfg.decide(P::NORMAL, 0.95, 0);
    /// assert_eq!(d.trigger, CleanupTrigger::MemoryPressure);
    /// let d = cfg.decide(P::NORMAL, 0.1, 0);
    /// assert_eq!((d.strategy, d.trigger), (CleanupStrategy::Deferred, CleanupTrigger::Configured));
    ///
    /// // LOW is debug-retained by default: kept for the window while the total is at the
    /// // threshold (1000)...
    /// let imm = CleanupConfig::builder().strategy(CleanupStrategy::Immediate).build().unwrap();
    /// assert_eq!(imm.decide(P::LOW, 0.1, 1000).keep_for, imm.retention());
    /// // ...and removed at once above it, like every other record.
    /// let d = imm.decide(P::LOW, 0.1, 1001);
    /// assert_eq!((d.strategy, d.trigger), (CleanupStrategy::Immediate, CleanupTrigger::Force));
    /// assert_eq!(d.keep_for, Duration::ZERO);
    /// ```
    #[must_use]
    pub fn decide(
        &self,
        priority: OperationPriority,
        memory_pressure: f64,
        total_zombies: u64,
    ) -> CleanupDecision {
        let pressured =
            self.aggressive_on_memory_pressure && memory_pressure > self.memory_pressure_threshold;
        let over_threshold = total_zombies > u64::from(self.force_cleanup_threshold);
        let trigger = if self.immediate_cleanup_priorities.contains(priority) {
            CleanupTrigger::Priority
        } else if pressured {
            CleanupTrigger::MemoryPressure
        } else if over_threshold {
            CleanupTrigger::Force
        } else {
            CleanupTrigger::Configured
        };
        let strategy = match trigger {
            CleanupTrigger::Configured => self.strategy,
            _ => CleanupStrategy::Immediate,
        };
        // Debug retention never outranks the bounds: not under pressure, not above the
        // threshold (rule 1 is checked first, so `trigger` alone would not show rule 3).
        let debug_kept =
            self.debug_retention_priorities.contains(priority) && !pressured && !over_threshold;
        let keep_for = match strategy {
            CleanupStrategy::Immediate if debug_kept => self.retention(),
            CleanupStrategy::Immediate | CleanupStrategy::Custom => Duration::ZERO,
            CleanupStrategy::Deferred | CleanupStrategy::Lazy => self.retention(),
            CleanupStrategy::None => Duration::MAX,
        };
        CleanupDecision {
            strategy,
            trigger,
            keep_for,
        }
    }

    /// A builder starting from the defaults.
    pub fn builder() -> CleanupConfigBuilder {
        CleanupConfigBuilder(Self::DEFAULT)
    }

    /// Checks every field against its range and the combinations against each other.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for the first field outside its range (`retention_minutes`,
    /// `cleanup_check_interval_seconds`, `memory_pressure_threshold`,
    /// `max_zombie_count_per_target`, `force_cleanup_threshold`), checked in that order;
    /// [`ConfigError::Inconsistent`] when `strategy = "custom"` has no (or an empty)
    /// `custom_cleanup_handler`, when a handler is named with another strategy, or when
    /// `strategy = "deferred"` has `retention_minutes = 0`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.retention_minutes > 1440 {
            return Err(ConfigError::out_of_range(
                "retention_minutes",
                self.retention_minutes,
                "0..=1440",
            ));
        }
        if !(10..=3600).contains(&self.cleanup_check_interval_seconds) {
            return Err(ConfigError::out_of_range(
                "cleanup_check_interval_seconds",
                self.cleanup_check_interval_seconds,
                "10..=3600",
            ));
        }
        if !(self.memory_pressure_threshold.is_finite()
            && (0.1..=1.0).contains(&self.memory_pressure_threshold))
        {
            return Err(ConfigError::out_of_range(
                "memory_pressure_threshold",
                self.memory_pressure_threshold,
                "0.1..=1.0",
            ));
        }
        if !(1..=10_000).contains(&self.max_zombie_count_per_target) {
            return Err(ConfigError::out_of_range(
                "max_zombie_count_per_target",
                self.max_zombie_count_per_target,
                "1..=10000",
            ));
        }
        if !(100..=100_000).contains(&self.force_cleanup_threshold) {
            return Err(ConfigError::out_of_range(
                "force_cleanup_threshold",
                self.force_cleanup_threshold,
                "100..=100000",
            ));
        }
        match (&self.strategy, &self.custom_cleanup_handler) {
            (CleanupStrategy::Custom, None) => {
                return Err(ConfigError::Inconsistent {
                    field: "custom_cleanup_handler",
                    message: "strategy \"custom\" requires custom_cleanup_handler = \"<name>\""
                        .into(),
                });
            }
            (CleanupStrategy::Custom, Some(name)) if name.trim().is_empty() => {
                return Err(ConfigError::Inconsistent {
                    field: "custom_cleanup_handler",
                    message: "the handler name must not be empty".into(),
                });
            }
            (s, Some(_)) if *s != CleanupStrategy::Custom => {
                return Err(ConfigError::Inconsistent {
                    field: "custom_cleanup_handler",
                    message: format!(
                        "custom_cleanup_handler is only used with strategy = \"custom\", not \"{}\"",
                        s.name()
                    ),
                });
            }
            _ => {}
        }
        if self.strategy == CleanupStrategy::Deferred && self.retention_minutes == 0 {
            return Err(ConfigError::Inconsistent {
                field: "retention_minutes",
                message: "strategy \"deferred\" requires retention_minutes > 0".into(),
            });
        }
        Ok(())
    }
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Builds a [`CleanupConfig`] in code; [`build`](Self::build) validates it.
#[derive(Debug, Clone)]
#[must_use]
pub struct CleanupConfigBuilder(CleanupConfig);

impl CleanupConfigBuilder {
    /// Sets `strategy`.
    pub fn strategy(mut self, s: CleanupStrategy) -> Self {
        self.0.strategy = s;
        self
    }
    /// Sets `retention_minutes`.
    pub fn retention_minutes(mut self, m: u32) -> Self {
        self.0.retention_minutes = m;
        self
    }
    /// Sets `cleanup_check_interval_seconds`.
    pub fn cleanup_check_interval_seconds(mut self, s: u32) -> Self {
        self.0.cleanup_check_interval_seconds = s;
        self
    }
    /// Sets `aggressive_on_memory_pressure`.
    pub fn aggressive_on_memory_pressure(mut self, on: bool) -> Self {
        self.0.aggressive_on_memory_pressure = on;
        self
    }
    /// Sets `memory_pressure_threshold`.
    pub fn memory_pressure_threshold(mut self, t: f64) -> Self {
        self.0.memory_pressure_threshold = t;
        self
    }
    /// Sets `immediate_cleanup_priorities`.
    pub fn immediate_cleanup_priorities(
        mut self,
        p: impl IntoIterator<Item = OperationPriority>,
    ) -> Self {
        self.0.immediate_cleanup_priorities = p.into_iter().collect();
        self
    }
    /// Sets `debug_retention_priorities`.
    pub fn debug_retention_priorities(
        mut self,
        p: impl IntoIterator<Item = OperationPriority>,
    ) -> Self {
        self.0.debug_retention_priorities = p.into_iter().collect();
        self
    }
    /// Sets `custom_cleanup_handler`.
    pub fn custom_cleanup_handler(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.0.custom_cleanup_handler = Some(name.into());
        self
    }
    /// Sets `max_zombie_count_per_target`.
    pub fn max_zombie_count_per_target(mut self, n: u32) -> Self {
        self.0.max_zombie_count_per_target = n;
        self
    }
    /// Sets `force_cleanup_threshold`.
    pub fn force_cleanup_threshold(mut self, n: u32) -> Self {
        self.0.force_cleanup_threshold = n;
        self
    }
    /// Validates and returns the config.
    ///
    /// # Errors
    ///
    /// The error of [`CleanupConfig::validate`] when a value is out of range or the values
    /// contradict each other.
    pub fn build(self) -> Result<CleanupConfig, ConfigError> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OperationPriority as P;

    #[test]
    fn decision_follows_the_design_rules_in_order() {
        use CleanupStrategy as S;
        use CleanupTrigger as T;

        let cfg = CleanupConfig::builder()
            .strategy(CleanupStrategy::Lazy)
            .retention_minutes(10)
            .immediate_cleanup_priorities([P::CRITICAL])
            .debug_retention_priorities([P::LOW])
            .force_cleanup_threshold(100)
            .memory_pressure_threshold(0.5)
            .build()
            .unwrap();
        let ten = Duration::from_secs(600);
        let d = |p, mem, z| {
            let d = cfg.decide(p, mem, z);
            (d.strategy, d.trigger, d.keep_for)
        };
        assert_eq!(d(P::NORMAL, 0.1, 0), (S::Lazy, T::Configured, ten));
        assert_eq!(
            d(P::CRITICAL, 0.1, 0),
            (S::Immediate, T::Priority, Duration::ZERO)
        );
        assert_eq!(
            d(P::NORMAL, 0.6, 0),
            (S::Immediate, T::MemoryPressure, Duration::ZERO)
        );
        assert_eq!(
            d(P::NORMAL, 0.1, 101),
            (S::Immediate, T::Force, Duration::ZERO)
        );
        assert_eq!(d(P::NORMAL, 0.1, 100), (S::Lazy, T::Configured, ten));
        // Debug retention never keeps a record above the threshold (see the test below)...
        assert_eq!(
            d(P::LOW, 0.1, 101),
            (S::Immediate, T::Force, Duration::ZERO)
        );
        // ...nor under memory pressure.
        assert_eq!(
            d(P::LOW, 0.6, 0),
            (S::Immediate, T::MemoryPressure, Duration::ZERO)
        );
        // Priority beats pressure in the order of the rules.
        assert_eq!(d(P::CRITICAL, 0.9, 1000).1, T::Priority);
        let calm = CleanupConfig::builder()
            .aggressive_on_memory_pressure(false)
            .build()
            .unwrap();
        assert_eq!(calm.decide(P::NORMAL, 1.0, 0).trigger, T::Configured);
        let none = CleanupConfig::DISABLED.decide(P::NORMAL, 0.0, 0);
        assert_eq!((none.strategy, none.keep_for), (S::None, Duration::MAX));
    }

    /// Issue #9, defect 7: debug retention kept LOW records for the window even when rule 1 or
    /// rule 3 made them immediate, so failing LOW operations piled up past
    /// `force_cleanup_threshold`. Above the threshold nothing may be kept, whatever the
    /// priority lists and the strategy; at or under it, debug retention still applies.
    #[test]
    fn nothing_is_kept_above_the_force_threshold_not_even_debug_retained() {
        use CleanupStrategy as S;
        let ten = Duration::from_secs(600);
        for strategy in S::ALL {
            let mut b = CleanupConfig::builder()
                .strategy(strategy)
                .retention_minutes(10)
                .force_cleanup_threshold(100)
                .debug_retention_priorities([P::LOW, P::CRITICAL]);
            if strategy == S::Custom {
                b = b.custom_cleanup_handler("audit");
            }
            let cfg = b.build().unwrap();
            for p in [P::LOW, P::NORMAL, P::CRITICAL] {
                for total in [101, 102, 1_000_000, u64::MAX] {
                    let d = cfg.decide(p, 0.1, total);
                    assert_eq!(
                        (d.strategy, d.keep_for),
                        (S::Immediate, Duration::ZERO),
                        "{strategy:?} {p:?} at {total} zombies"
                    );
                }
            }
            // At or under the threshold, debug retention keeps LOW under the `immediate`
            // strategy, and CRITICAL (rule 1) under every strategy.
            for total in [0, 100] {
                let crit = cfg.decide(P::CRITICAL, 0.1, total);
                assert_eq!(
                    (crit.strategy, crit.trigger, crit.keep_for),
                    (S::Immediate, CleanupTrigger::Priority, ten)
                );
                if strategy == S::Immediate {
                    assert_eq!(cfg.decide(P::LOW, 0.1, total).keep_for, ten);
                }
            }
        }
    }

    #[test]
    #[allow(
        clippy::float_cmp,
        reason = "the default is the literal 0.8 itself, so it compares exactly"
    )]
    fn defaults_follow_the_design() {
        let d = CleanupConfig::DEFAULT;
        d.validate().unwrap();
        assert_eq!(d.strategy, CleanupStrategy::Deferred);
        assert_eq!(d.retention_minutes, 30);
        assert_eq!(d.cleanup_check_interval_seconds, 60);
        assert!(d.aggressive_on_memory_pressure);
        assert_eq!(d.memory_pressure_threshold, 0.8);
        assert!(
            d.immediate_cleanup_priorities
                .contains(OperationPriority::CRITICAL)
        );
        assert!(
            d.debug_retention_priorities
                .contains(OperationPriority::LOW)
        );
        assert_eq!(d.max_zombie_count_per_target, 100);
        assert_eq!(d.force_cleanup_threshold, 1000);
        CleanupConfig::DISABLED.validate().unwrap();
    }

    #[test]
    fn ranges_and_combinations_are_enforced() {
        let b = CleanupConfig::builder;
        let cases: Vec<(Result<CleanupConfig, ConfigError>, &str)> = vec![
            (b().retention_minutes(1441).build(), "retention_minutes"),
            (
                b().cleanup_check_interval_seconds(9).build(),
                "cleanup_check_interval_seconds",
            ),
            (
                b().cleanup_check_interval_seconds(3601).build(),
                "cleanup_check_interval_seconds",
            ),
            (
                b().memory_pressure_threshold(0.05).build(),
                "memory_pressure_threshold",
            ),
            (
                b().memory_pressure_threshold(1.01).build(),
                "memory_pressure_threshold",
            ),
            (
                b().max_zombie_count_per_target(0).build(),
                "max_zombie_count_per_target",
            ),
            (
                b().max_zombie_count_per_target(10_001).build(),
                "max_zombie_count_per_target",
            ),
            (
                b().force_cleanup_threshold(99).build(),
                "force_cleanup_threshold",
            ),
            (
                b().force_cleanup_threshold(100_001).build(),
                "force_cleanup_threshold",
            ),
            (
                b().strategy(CleanupStrategy::Custom).build(),
                "custom_cleanup_handler",
            ),
            (
                b().custom_cleanup_handler("audit").build(),
                "custom_cleanup_handler",
            ),
            (
                b().strategy(CleanupStrategy::Deferred)
                    .retention_minutes(0)
                    .build(),
                "retention_minutes",
            ),
        ];
        for (res, field) in cases {
            assert_eq!(res.unwrap_err().field(), Some(field));
        }
        b().strategy(CleanupStrategy::Immediate)
            .retention_minutes(0)
            .build()
            .unwrap();
        b().max_zombie_count_per_target(1)
            .force_cleanup_threshold(100)
            .memory_pressure_threshold(1.0)
            .build()
            .unwrap();
    }
}
