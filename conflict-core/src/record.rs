//! The record of one operation, as the operation registry keeps it.

use std::borrow::Cow;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{EntityKey, OpId, OperationPriority, OperationStatus, OutcomeKind};

/// Everything known about one operation: what it is, where it is in its life, how it ended.
///
/// ```
/// use conflict_core::{EntityId, EntityKey, OpId, OperationPriority, OperationRecord, OperationStatus};
///
/// let rec = OperationRecord::new(
///     OpId::from_parts(1, 1),
///     "deposit",
///     OperationPriority::NORMAL,
///     vec![EntityKey::new("Account", EntityId::new())],
///     5,
///     None,
/// );
/// assert_eq!(rec.status, OperationStatus::Pending);
/// assert_eq!(rec.effective_priority, OperationPriority::NORMAL);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// The operation's id; never changes.
    pub op_id: OpId,
    /// The annotated function's name.
    pub op_type: Cow<'static, str>,
    /// Its own priority.
    pub priority: OperationPriority,
    /// Its priority raised to the maximum of its parent chain.
    pub effective_priority: OperationPriority,
    /// The entities it targets.
    pub target_ids: Vec<EntityKey>,
    /// How many times it has retried after a conflict.
    pub retry_count: u32,
    /// How many retries it may make.
    pub max_retries: u32,
    /// The operation whose body called this one, if any.
    pub parent_op_id: Option<OpId>,
    /// Where it is.
    pub status: OperationStatus,
    /// How it ended, once it has.
    #[serde(default)]
    pub outcome: Option<OutcomeKind>,
    /// The version it wrote, if it committed.
    #[serde(default)]
    pub version: Option<u64>,
    /// Why it ended, when it did not succeed.
    pub error_message: Option<String>,
    /// When it was created.
    pub submitted_at: SystemTime,
    /// When it started executing.
    pub started_at: Option<SystemTime>,
    /// When it reached a terminal status.
    pub completed_at: Option<SystemTime>,
}

impl OperationRecord {
    /// A pending record, submitted now.
    #[must_use]
    pub fn new(
        op_id: OpId,
        op_type: impl Into<Cow<'static, str>>,
        priority: OperationPriority,
        target_ids: Vec<EntityKey>,
        max_retries: u32,
        parent_op_id: Option<OpId>,
    ) -> Self {
        Self {
            op_id,
            op_type: op_type.into(),
            priority,
            effective_priority: priority,
            target_ids,
            retry_count: 0,
            max_retries,
            parent_op_id,
            status: OperationStatus::Pending,
            outcome: None,
            version: None,
            error_message: None,
            submitted_at: SystemTime::now(),
            started_at: None,
            completed_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntityId;

    #[test]
    fn record_round_trips_through_json() {
        let mut rec = OperationRecord::new(
            OpId::from_parts(3, 9),
            "withdraw",
            OperationPriority::HIGH,
            vec![EntityKey::new("Account", EntityId::new())],
            20,
            Some(OpId::from_parts(3, 1)),
        );
        rec.status = OperationStatus::Rejected;
        rec.error_message = Some("lost".into());
        let json = serde_json::to_string(&rec).unwrap();
        let back: OperationRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
        assert!(json.contains("\"status\":\"rejected\""));
    }
}
