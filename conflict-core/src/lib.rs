// Pedantic lints are enforced (CI denies warnings). Where one does not fit, it is allowed at the
// item with a reason; no lint is allowed crate-wide here.
#![warn(clippy::pedantic)]

//! Plain data types of the `conflict` framework.
//!
//! Everything in this crate is runtime-agnostic: no async executor, no I/O, no global state.
//! The runtime crate (`conflict-runtime`) builds the staging coordinator, the OCC executor and the
//! stores on top of these types; users normally reach them through `conflict_runtime::prelude`.
//!
//! * [`EntityId`], [`OpId`], [`EntityKey`]: identities.
//! * [`Entity`]: the trait `#[derive(Entity)]` implements; [`Versioned`] and [`Committed`] carry the
//!   OCC metadata the framework keeps (version, last-modified).
//! * [`OperationPriority`], [`OpClass`], [`OperationStatus`], [`OperationRecord`]: operations.
//! * [`OccConfig`], [`PreEcsConfig`], [`CleanupConfig`], [`OperationConfig`]: configuration, each
//!   with a `validate()` that the runtime calls once at start-up.
//! * [`ConflictError`], [`StoreError`], [`ConfigError`]: errors.
//! * [`Event`]: what the runtime publishes to subscribers.
//! * [`policy`]: the pure winner-selection rule of the staging stage.
//!
//! ```
//! use conflict_core::{OccConfig, OperationPriority};
//!
//! let occ = OccConfig { max_retries: 3, ..OccConfig::default() };
//! assert!(occ.validate().is_ok());
//! assert!(OperationPriority::CRITICAL > OperationPriority::NORMAL);
//! ```

mod config;
mod entity;
mod error;
mod event;
mod ids;
pub mod policy;
mod priority;
mod record;
mod status;

pub use config::{
    CleanupConfig, CleanupConfigBuilder, CleanupDecision, CleanupStrategy, CleanupTrigger,
    ConfigError, OccConfig, OnLose, OperationConfig, PreEcsConfig, ResolutionMode,
};
pub use entity::{Committed, Entity, EntityIdType, Versioned, Versions};
pub use error::{
    BodyFailed, CleanupAction, CleanupError, ConflictError, DeleteError, OutcomeKind,
    OverloadScope, RejectReason, StoreError,
};
pub use event::{Event, EventKind, OperationInfo};
pub use ids::{EntityId, EntityKey, OpId, ParseIdError};
pub use priority::{OpClass, OperationPriority, PriorityError, PrioritySet};
pub use record::OperationRecord;
pub use status::OperationStatus;
