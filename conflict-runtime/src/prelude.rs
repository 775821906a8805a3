//! Everything a typical user needs: `use conflict_runtime::prelude::*;`.
//!
//! Also re-exports serde's `Serialize` and `Deserialize` derives, which `#[derive(Entity)]`
//! requires.

pub use crate::{
    Committed, ConflictError, Entity, EntityId, Handle, OpClass, OpId, OperationPriority, Runtime,
    Versioned, cleanup_handler, with_conflict_resolution,
};
pub use serde::{Deserialize, Serialize};
