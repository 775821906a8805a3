use conflict_runtime::prelude::*;
use conflict_runtime::{cleanup::CleanupAction, cleanup::CleanupError, operation::OperationRecord};

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Ledger {
    #[entity(id)]
    id: EntityId,
    n: u64,
}

/// Removes the record (returns `()`).
#[cleanup_handler("financial_audit")]
async fn audit(op: &OperationRecord) -> Result<(), CleanupError> {
    let _ = op.op_id;
    Ok(())
}

/// Keeps the record.
#[cleanup_handler("keep_for_review")]
pub(crate) async fn review(_op: &OperationRecord) -> Result<CleanupAction, CleanupError> {
    Ok(CleanupAction::Keep)
}

#[with_conflict_resolution(cleanup(strategy = "custom", custom_cleanup_handler = "financial_audit"))]
async fn post(l: &mut Ledger, n: u64) {
    l.n += n;
}

fn main() {
    let rt = Runtime::in_memory();
    let names = rt.cleanup_handlers();
    assert!(names.contains(&"financial_audit".to_string()));
    assert!(names.contains(&"keep_for_review".to_string()));
    let _ = (audit, review, post);
}
