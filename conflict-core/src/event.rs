//! Events the runtime publishes about operations.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{EntityKey, OpId, OperationPriority, OutcomeKind, RejectReason};

/// What every event says about its operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationInfo {
    /// The operation.
    pub op_id: OpId,
    /// The annotated function's name.
    pub op_type: Cow<'static, str>,
    /// The entity it targets (a multi-entity call's first entity parameter).
    pub target: EntityKey,
    /// A multi-entity call's other entities, in parameter order (empty for one entity).
    pub more_targets: Vec<EntityKey>,
    /// Its own priority.
    pub priority: OperationPriority,
    /// Its priority raised to the maximum of its parent chain.
    pub effective_priority: OperationPriority,
    /// The operation whose body called it.
    pub parent_op_id: Option<OpId>,
}

/// The kind of an [`Event`], without payload.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// [`Event::OperationStarted`].
    Started,
    /// [`Event::OperationConflict`].
    Conflict,
    /// [`Event::OperationRetry`].
    Retry,
    /// [`Event::OperationRejected`].
    Rejected,
    /// [`Event::OperationPreempted`].
    Preempted,
    /// [`Event::OperationCompleted`].
    Completed,
}

/// Something that happened to an operation.
///
/// Every operation that is admitted produces one `OperationCompleted` as its last event, whatever
/// its outcome; the others appear as they happen.
///
/// ```
/// use conflict_core::{Event, EventKind};
/// fn on_event(e: &Event) {
///     if e.kind() == EventKind::Completed {
///         println!("{} ended", e.op().op_id);
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An attempt started executing its body.
    OperationStarted {
        /// The operation.
        op: OperationInfo,
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// A compare-and-commit found a newer version.
    OperationConflict {
        /// The operation.
        op: OperationInfo,
        /// The attempt that conflicted.
        attempt: u32,
        /// The version the attempt read.
        expected_version: u64,
        /// The version found at commit, where the store reports it.
        actual_version: Option<u64>,
    },
    /// The operation will run again after `delay`.
    OperationRetry {
        /// The operation.
        op: OperationInfo,
        /// The attempt about to start.
        attempt: u32,
        /// The backoff before it.
        delay: Duration,
    },
    /// Lost its staging group.
    OperationRejected {
        /// The operation.
        op: OperationInfo,
        /// The winner.
        winner_op_id: OpId,
        /// The winner's effective priority.
        winner_priority: OperationPriority,
        /// Why.
        reason: RejectReason,
    },
    /// Preempted by a higher-priority operation.
    OperationPreempted {
        /// The operation.
        op: OperationInfo,
        /// The preempting operation.
        by_op_id: OpId,
        /// Its effective priority.
        by_priority: OperationPriority,
    },
    /// The operation ended.
    OperationCompleted {
        /// The operation.
        op: OperationInfo,
        /// How.
        outcome: OutcomeKind,
        /// The version written, if it committed.
        version: Option<u64>,
        /// How many times the body ran.
        attempts: u32,
        /// From submission to end.
        duration: Duration,
    },
}

impl Event {
    /// The operation the event is about.
    #[must_use]
    pub fn op(&self) -> &OperationInfo {
        match self {
            Self::OperationStarted { op, .. }
            | Self::OperationConflict { op, .. }
            | Self::OperationRetry { op, .. }
            | Self::OperationRejected { op, .. }
            | Self::OperationPreempted { op, .. }
            | Self::OperationCompleted { op, .. } => op,
        }
    }

    /// The kind of event.
    #[must_use]
    pub fn kind(&self) -> EventKind {
        match self {
            Self::OperationStarted { .. } => EventKind::Started,
            Self::OperationConflict { .. } => EventKind::Conflict,
            Self::OperationRetry { .. } => EventKind::Retry,
            Self::OperationRejected { .. } => EventKind::Rejected,
            Self::OperationPreempted { .. } => EventKind::Preempted,
            Self::OperationCompleted { .. } => EventKind::Completed,
        }
    }
}
