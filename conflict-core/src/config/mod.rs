//! Configuration of operations, each part with its validation.
//!
//! The macro builds these from attribute literals and calls `validate()` at compile time; the
//! runtime calls it again once at start-up for every registered operation and for configs built
//! in code. After that the hot path trusts them.

mod cleanup;
mod occ;
mod pre_ecs;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use cleanup::{
    CleanupConfig, CleanupConfigBuilder, CleanupDecision, CleanupStrategy, CleanupTrigger,
};
pub use occ::OccConfig;
pub use pre_ecs::{OnLose, PreEcsConfig};

use crate::{OpClass, OperationPriority};

/// A configuration value that cannot be used.
///
/// `field` names the attribute key (as written in `#[with_conflict_resolution(...)]`) so the
/// macro can point at the offending token and start-up errors can name it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A number outside its range.
    #[error("`{field}` = {value} is out of range: expected {expected}")]
    OutOfRange {
        /// The key.
        field: &'static str,
        /// The value given.
        value: String,
        /// The accepted range, in words.
        expected: &'static str,
    },
    /// Values that are fine alone but contradict each other.
    #[error("{message}")]
    Inconsistent {
        /// The key to blame.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An annotated function's configuration is invalid.
    #[error("operation `{function}`: {source}")]
    InOperation {
        /// The function's path.
        function: String,
        /// What is wrong.
        source: Box<ConfigError>,
    },
    /// A function asks for a cleanup handler nobody registered.
    #[error(
        "operation `{function}` uses cleanup handler \"{handler}\", which is not registered: add `#[cleanup_handler(\"{handler}\")]` to a handler function or register it on `Runtime::builder()`"
    )]
    UnknownCleanupHandler {
        /// The function's path.
        function: String,
        /// The handler's name.
        handler: String,
    },
    /// Two handlers registered under one name.
    #[error(
        "cleanup handler \"{name}\" is registered twice ({first} and {second}): names must be unique"
    )]
    DuplicateCleanupHandler {
        /// The name.
        name: String,
        /// Where the first one comes from.
        first: String,
        /// Where the second one comes from.
        second: String,
    },
    /// Two entity types share one type name (they would share a namespace in the store).
    #[error(
        "entity type name \"{name}\" is used by both `{first}` and `{second}`: give one of them `#[entity(name = \"...\")]`"
    )]
    DuplicateEntityType {
        /// The name.
        name: String,
        /// One Rust type.
        first: String,
        /// The other.
        second: String,
    },
    /// Two annotated functions share one operation path (`module::name`): two methods of the
    /// same name in `impl` blocks of one module. Their metrics, events and records could not be
    /// told apart.
    #[error(
        "two annotated functions are both the operation `{path}`: give one of them `#[with_conflict_resolution(name = \"...\")]`"
    )]
    DuplicateOperation {
        /// `module::name`.
        path: String,
    },
}

impl ConfigError {
    /// The attribute key this error is about, if it is about one.
    #[must_use]
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::OutOfRange { field, .. } | Self::Inconsistent { field, .. } => Some(field),
            Self::InOperation { source, .. } => source.field(),
            _ => None,
        }
    }

    pub(crate) fn out_of_range(
        field: &'static str,
        value: impl fmt::Display,
        expected: &'static str,
    ) -> Self {
        Self::OutOfRange {
            field,
            value: value.to_string(),
            expected,
        }
    }
}

/// Which of the two stages an operation uses.
///
/// * `Both` (the default): staging resolves competing calls on a target by priority before they
///   run; OCC then commits with compare-and-swap and retries on conflicts from elsewhere.
/// * `PreEcs`: staging only; the commit still compares versions, but a conflict is not retried
///   (it fails with `RetriesExhausted { attempts: 1 }`).
/// * `Occ`: no staging; every call runs and retries on conflict.
/// * `None`: neither; one attempt, compare-and-commit, no retry. Version checks are never
///   skipped: there is no way to commit without them.
///
/// ```
/// use conflict_core::ResolutionMode;
/// assert!(ResolutionMode::Both.staging() && ResolutionMode::Both.occ());
/// assert_eq!(ResolutionMode::from_name("pre_ecs"), Some(ResolutionMode::PreEcs));
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResolutionMode {
    /// Neither stage.
    None,
    /// Staging only.
    PreEcs,
    /// OCC only.
    Occ,
    /// Staging, then OCC.
    #[default]
    Both,
}

impl ResolutionMode {
    /// Every mode, in declaration order: the vocabulary of `mode = "..."`.
    ///
    /// ```
    /// use conflict_core::ResolutionMode;
    /// for m in ResolutionMode::ALL {
    ///     assert_eq!(ResolutionMode::from_name(m.name()), Some(m));
    /// }
    /// ```
    pub const ALL: [Self; 4] = [Self::None, Self::PreEcs, Self::Occ, Self::Both];

    /// Whether competing calls are staged and resolved by priority.
    #[must_use]
    pub const fn staging(self) -> bool {
        matches!(self, Self::PreEcs | Self::Both)
    }

    /// Whether conflicts at commit are retried.
    #[must_use]
    pub const fn occ(self) -> bool {
        matches!(self, Self::Occ | Self::Both)
    }

    /// Builds the mode from the two stage switches.
    #[must_use]
    pub const fn from_stages(staging: bool, occ: bool) -> Self {
        match (staging, occ) {
            (true, true) => Self::Both,
            (true, false) => Self::PreEcs,
            (false, true) => Self::Occ,
            (false, false) => Self::None,
        }
    }

    /// Parses `none`, `pre_ecs`, `occ` or `both`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Self::None,
            "pre_ecs" => Self::PreEcs,
            "occ" => Self::Occ,
            "both" => Self::Both,
            _ => return None,
        })
    }

    /// The attribute spelling.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::PreEcs => "pre_ecs",
            Self::Occ => "occ",
            Self::Both => "both",
        }
    }
}

/// The whole configuration of one annotated function.
///
/// ```
/// use conflict_core::{OperationConfig, OperationPriority, ResolutionMode};
/// let cfg = OperationConfig::DEFAULT;
/// assert_eq!(cfg.priority, OperationPriority::NORMAL);
/// assert_eq!(cfg.mode, ResolutionMode::Both);
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationConfig {
    /// The operation's own priority.
    pub priority: OperationPriority,
    /// The class it was declared with (it supplied the defaults of `priority` and `max_retries`).
    pub op_class: OpClass,
    /// Which stages run.
    pub mode: ResolutionMode,
    /// Staging settings (used when `mode.staging()`).
    pub pre_ecs: PreEcsConfig,
    /// OCC settings (retries used when `mode.occ()`).
    pub occ: OccConfig,
    /// What happens to the records of operations that lose.
    pub cleanup: CleanupConfig,
}

impl OperationConfig {
    /// Defaults: NORMAL priority, both stages, default stage settings.
    pub const DEFAULT: Self = Self {
        priority: OperationPriority::NORMAL,
        op_class: OpClass::Normal,
        mode: ResolutionMode::Both,
        pre_ecs: PreEcsConfig::DEFAULT,
        occ: OccConfig::DEFAULT,
        cleanup: CleanupConfig::DEFAULT,
    };

    /// Checks every part.
    ///
    /// # Errors
    ///
    /// The first error of [`PreEcsConfig::validate`], [`OccConfig::validate`] and
    /// [`CleanupConfig::validate`], checked in that order.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.pre_ecs.validate()?;
        self.occ.validate()?;
        self.cleanup.validate()
    }

    /// Retries allowed after a conflict: `occ.max_retries` with OCC on, 0 without.
    #[must_use]
    pub const fn effective_max_retries(&self) -> u32 {
        if self.mode.occ() {
            self.occ.max_retries
        } else {
            0
        }
    }
}

impl Default for OperationConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_round_trips_and_switches() {
        for m in ResolutionMode::ALL {
            assert_eq!(ResolutionMode::from_name(m.name()), Some(m));
            assert_eq!(ResolutionMode::from_stages(m.staging(), m.occ()), m);
        }
        assert_eq!(ResolutionMode::from_name("all"), None);
    }

    #[test]
    fn retries_are_zero_without_occ() {
        let mut cfg = OperationConfig::DEFAULT;
        cfg.occ.max_retries = 9;
        assert_eq!(cfg.effective_max_retries(), 9);
        cfg.mode = ResolutionMode::PreEcs;
        assert_eq!(cfg.effective_max_retries(), 0);
    }

    #[test]
    fn operation_validation_reports_the_field() {
        let mut cfg = OperationConfig::DEFAULT;
        cfg.occ.backoff_factor = 0.5;
        assert_eq!(cfg.validate().unwrap_err().field(), Some("backoff_factor"));
    }
}
