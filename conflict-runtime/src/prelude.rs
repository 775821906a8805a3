//! Everything a typical user needs: `use conflict_runtime::prelude::*;`.
//!
//! Also re-exports serde's `Serialize` and `Deserialize` derives, which `#[derive(Entity)]`
//! requires.

pub use crate::{
    CleanupAction, CleanupError, Committed, ConflictError, Entity, EntityId, Handle, OnLose,
    OpClass, OpId, OperationPriority, OperationRecord, OutcomeKind, Runtime, Versioned,
    cleanup_handler, current_operation, scope, with_conflict_resolution,
};
pub use serde::{Deserialize, Serialize};
