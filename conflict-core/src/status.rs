//! The life cycle of an operation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an operation is in its life.
///
/// `Pending → (Staged →) Executing (→ Retrying → Executing)* → Succeeded | Rejected | Failed |
/// Cancelled`. The last four are terminal: an operation reaches exactly one of them, once.
///
/// ```
/// use conflict_core::OperationStatus;
/// assert!(OperationStatus::Rejected.is_terminal());
/// assert!(!OperationStatus::Staged.is_terminal());
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    /// Created, not yet admitted.
    Pending,
    /// Waiting in the staging area of its target.
    Staged,
    /// Running its body or committing.
    Executing,
    /// Lost a compare-and-commit and is waiting to run again.
    Retrying,
    /// Committed.
    Succeeded,
    /// Lost to another operation (priority, displacement, preemption) or refused at admission.
    Rejected,
    /// Ended with an error of its own: body error or panic, retries exhausted, store error.
    Failed,
    /// Its caller dropped it, or the runtime shut down before it could run.
    Cancelled,
}

impl OperationStatus {
    /// Whether no further transition can happen.
    #[must_use]
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Rejected | Self::Failed | Self::Cancelled
        )
    }

    /// Lower-case name, as serialized.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Staged => "staged",
            Self::Executing => "executing",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for OperationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
