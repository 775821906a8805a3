use conflict_runtime::prelude::*;
use conflict_runtime::operation::OperationRecord;

#[cleanup_handler("audit")]
async fn audit(_op: &OperationRecord) -> bool {
    true
}

fn main() {}
