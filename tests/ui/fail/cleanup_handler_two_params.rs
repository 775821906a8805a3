use conflict_runtime::prelude::*;
use conflict_runtime::{cleanup::CleanupError, operation::OperationRecord};

#[cleanup_handler("audit")]
async fn audit(_op: &OperationRecord, _extra: u32) -> Result<(), CleanupError> {
    Ok(())
}

fn main() {}
