//! Everything a typical user needs: `use conflict_runtime::prelude::*;`.
//!
//! Also re-exports serde's `Serialize` and `Deserialize` derives, which `#[derive(Entity)]`
//! requires.

pub use crate::cleanup::{CleanupAction, CleanupError};
pub use crate::config::{OnLose, OpClass, OperationPriority};
pub use crate::entity::Versioned;
pub use crate::operation::OutcomeKind;
pub use crate::operation::{OpId, OperationRecord, current_operation, scope};
pub use crate::store::StoreError;
pub use crate::{
    Committed, ConflictError, Entity, EntityId, Handle, Runtime, cleanup_handler, typed_id,
    with_conflict_resolution,
};
pub use serde::{Deserialize, Serialize};
