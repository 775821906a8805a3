//! Errors: what a call of an annotated function returns when it does not commit.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{EntityId, EntityKey, OpId, OperationPriority};

/// Why an operation was rejected by the staging stage.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    /// Another operation in its staging group had a higher effective priority.
    LostPriority,
    /// Another operation in its staging group had the same effective priority and was
    /// submitted earlier.
    SubmittedLater,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LostPriority => {
                f.write_str("lost its staging group to a higher-priority operation")
            }
            Self::SubmittedLater => f.write_str(
                "lost its staging group to an operation of the same priority submitted earlier",
            ),
        }
    }
}

/// Which bound refused an operation at admission.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverloadScope {
    /// The target's `max_staged_per_target`.
    Target,
    /// The runtime's total staging capacity.
    Total,
}

impl fmt::Display for OverloadScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Target => "per-target",
            Self::Total => "total",
        })
    }
}

/// A failure of the store behind the runtime.
///
/// Cheap to clone (sources are shared), so one error can be reported to several places.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No entity with this key.
    #[error("entity {key} does not exist: insert it first or check the id")]
    NotFound {
        /// The key looked up.
        key: EntityKey,
    },
    /// Insert of a key that is already stored.
    #[error("entity {key} already exists: load it through a handle instead of inserting it again")]
    AlreadyExists {
        /// The key.
        key: EntityKey,
    },
    /// A write or insert whose value is another entity than its key names (another type or
    /// another id): refused before anything was written, so every load of `key` still works.
    #[error(
        "the value written under {key} is entity {found}: nothing was written; pass each value \
         under its own key (`value.entity_key()`)"
    )]
    KeyMismatch {
        /// The key the value was written under.
        key: EntityKey,
        /// The key of the value itself.
        found: EntityKey,
    },
    /// A multi-write commit that writes one key twice: refused as a whole before anything was
    /// written. Not a conflict (retrying it could never succeed): write each entity once per
    /// commit, with its final value.
    #[error(
        "entity {key} appears twice in one commit (written twice, or written and read): \
         nothing was written; name each entity once per commit"
    )]
    DuplicateWrite {
        /// The key written more than once.
        key: EntityKey,
    },
    /// A stored value could not be encoded or decoded.
    #[error("entity {key} could not be (de)serialized: {message}")]
    Codec {
        /// The key.
        key: EntityKey,
        /// The serde error.
        message: String,
    },
    /// The backend failed (connection lost, database error). For a commit this means it did
    /// not apply (a commit whose outcome cannot be settled is [`StoreError::OutcomeUnknown`]);
    /// for an insert the message says whether the entity may have been stored.
    #[error("store backend failed: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// An insert made inside an annotated function's body (which joins that call's commit)
    /// after the body's attempt had ended or been found unable to commit: nothing was stored,
    /// and the root operation runs its body again if it can.
    #[error(
        "entity {key} was not inserted: the attempt of operation {root_op_id} it was inserted \
         in has ended or cannot commit"
    )]
    RolledBack {
        /// The key that was to be inserted.
        key: EntityKey,
        /// The root operation whose commit the insert would have joined.
        root_op_id: OpId,
    },
    /// The backend failed while a commit was in flight, so whether it applied is unknown.
    /// Look the op id up in the store's ledger to find out; the runtime never retries it blindly.
    #[error(
        "commit of operation {op_id} has an unknown outcome ({message}): look the op id up in the ledger"
    )]
    OutcomeUnknown {
        /// The operation whose commit is in doubt.
        op_id: OpId,
        /// What failed.
        message: String,
    },
}

impl StoreError {
    /// A backend error from any error value.
    pub fn backend(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Backend {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }
}

/// Why `conflict_runtime::operation::delete` refused to delete an entity.
///
/// ```
/// use conflict_core::DeleteError;
/// assert!(DeleteError::OutsideCall.to_string().contains("outside"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeleteError {
    /// Not called inside an annotated function's body.
    #[error(
        "`delete` was called outside any annotated function's body: delete an entity from the \
         body of a call that writes it, or with `Handle::delete` and its version"
    )]
    OutsideCall,
    /// The running call does not write this entity.
    #[error(
        "operation {op_id} does not write {target}: only a `&mut` entity parameter of the \
         running call can be deleted"
    )]
    NotWritten {
        /// The running call.
        op_id: OpId,
        /// The entity it was asked to delete.
        target: EntityKey,
    },
    /// The body run it was called from has ended.
    #[error("operation {op_id}'s body has ended: nothing is deleted")]
    Ended {
        /// The call whose body ended.
        op_id: OpId,
    },
}

/// What a custom cleanup handler asks for once it has run.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CleanupAction {
    /// Remove the record (what a handler returning `Ok(())` means).
    #[default]
    Remove,
    /// Keep the record (until a cap or forced cleanup removes it).
    Keep,
}

impl From<()> for CleanupAction {
    fn from((): ()) -> Self {
        Self::Remove
    }
}

/// A cleanup handler's failure. The runtime retries the handler a bounded number of times,
/// then keeps the record and reports the handler as failed in the health check.
///
/// ```
/// use conflict_core::CleanupError;
/// let e = CleanupError::new("audit log unreachable");
/// assert_eq!(e.to_string(), "audit log unreachable");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct CleanupError {
    /// What went wrong.
    pub message: String,
}

impl CleanupError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// How an operation ended, without the payload: the label metrics and reports count by.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Committed.
    Committed,
    /// Lost its staging group.
    Rejected,
    /// Preempted by a higher-priority operation after its grace period.
    Preempted,
    /// Gave up after its retries.
    RetriesExhausted,
    /// Refused or displaced by admission control.
    Overloaded,
    /// Refused or stopped by shutdown.
    ShuttingDown,
    /// The body returned an error.
    BodyError,
    /// The body panicked.
    Panicked,
    /// Targeted an entity an ancestor operation is executing on.
    Reentrant,
    /// The body changed the entity's id.
    IdentityChanged,
    /// The store failed.
    StoreError,
    /// The caller dropped the call before it ended.
    Cancelled,
    /// The call could not finish by its deadline (`scope().deadline(..)` / `.timeout(..)`).
    DeadlineExceeded,
    /// Named one entity twice, or a handle of another runtime, among its entities.
    InvalidTargets,
    /// A nested call composed into its parent's commit, which did not happen: the parent
    /// failed, or its body ran again (and called it again, as a new operation).
    RolledBack,
}

impl OutcomeKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 15] = [
        Self::Committed,
        Self::Rejected,
        Self::Preempted,
        Self::RetriesExhausted,
        Self::Overloaded,
        Self::ShuttingDown,
        Self::BodyError,
        Self::Panicked,
        Self::Reentrant,
        Self::IdentityChanged,
        Self::StoreError,
        Self::Cancelled,
        Self::DeadlineExceeded,
        Self::InvalidTargets,
        Self::RolledBack,
    ];

    /// The snake-case label used in metrics and reports.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::Rejected => "rejected",
            Self::Preempted => "preempted",
            Self::RetriesExhausted => "retries_exhausted",
            Self::Overloaded => "overloaded",
            Self::ShuttingDown => "shutting_down",
            Self::BodyError => "body_error",
            Self::Panicked => "panicked",
            Self::Reentrant => "reentrant",
            Self::IdentityChanged => "identity_changed",
            Self::StoreError => "store_error",
            Self::Cancelled => "cancelled",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::InvalidTargets => "invalid_targets",
            Self::RolledBack => "rolled_back",
        }
    }

    /// The index of this kind in [`OutcomeKind::ALL`].
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The record status an operation with this outcome ends in.
    #[must_use]
    pub const fn status(self) -> crate::OperationStatus {
        use crate::OperationStatus as S;
        match self {
            Self::Committed => S::Succeeded,
            Self::Rejected | Self::Preempted | Self::Overloaded => S::Rejected,
            Self::ShuttingDown | Self::Cancelled | Self::RolledBack => S::Cancelled,
            Self::RetriesExhausted
            | Self::BodyError
            | Self::Panicked
            | Self::Reentrant
            | Self::IdentityChanged
            | Self::StoreError
            | Self::DeadlineExceeded
            | Self::InvalidTargets => S::Failed,
        }
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call of an annotated function did not commit. `E` is the body's own error type
/// (`Infallible` for bodies that return a plain value).
///
/// Every call ends with exactly one `Ok(Committed)` or one of these; none is ever dropped
/// silently.
///
/// ```
/// use conflict_core::{ConflictError, OpId, OutcomeKind};
///
/// let e: ConflictError<std::io::Error> = ConflictError::ShuttingDown { op_id: OpId::from_parts(1, 2) };
/// assert_eq!(e.kind(), OutcomeKind::ShuttingDown);
/// assert!(e.to_string().contains("shutting down"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConflictError<E = std::convert::Infallible> {
    /// Lost its staging group: another operation on the same target ranked higher.
    Rejected {
        /// This operation.
        op_id: OpId,
        /// The entity whose staging group it lost (for a call over several entities, the one
        /// it lost on).
        target: EntityKey,
        /// The operation that won.
        winner_op_id: OpId,
        /// This operation's effective priority.
        priority: OperationPriority,
        /// The winner's effective priority.
        winner_priority: OperationPriority,
        /// Why.
        reason: RejectReason,
    },
    /// Was executing past its grace period when an operation of strictly higher effective
    /// priority arrived; its commit was refused.
    Preempted {
        /// This operation.
        op_id: OpId,
        /// The entity it was preempted on.
        target: EntityKey,
        /// The operation that preempted it.
        by_op_id: OpId,
        /// This operation's effective priority.
        priority: OperationPriority,
        /// The preempting operation's effective priority.
        by_priority: OperationPriority,
    },
    /// Every attempt met a newer version at commit.
    RetriesExhausted {
        /// This operation.
        op_id: OpId,
        /// How many times the body ran.
        attempts: u32,
        /// The contended entity.
        target: EntityKey,
    },
    /// Refused at admission (or displaced by a higher-priority arrival) because staging is full.
    Overloaded {
        /// This operation.
        op_id: OpId,
        /// The bound that was hit.
        capacity: usize,
        /// Which bound.
        scope: OverloadScope,
    },
    /// The runtime is shutting down (or shut down) and did not run this operation to the end.
    ShuttingDown {
        /// This operation.
        op_id: OpId,
    },
    /// The call could not finish by the deadline its caller set (`scope().deadline(..)` or
    /// `.timeout(..)`): it was stopped while staged, in its body, or before a commit or a
    /// retry, and nothing was committed.
    DeadlineExceeded {
        /// This operation.
        op_id: OpId,
        /// The deadline, as time after submission.
        after: std::time::Duration,
    },
    /// The body returned `Err`; nothing was committed and the body was not retried.
    Body(E),
    /// The body panicked; nothing was committed. The runtime is unaffected.
    Panicked {
        /// This operation.
        op_id: OpId,
        /// The panic message.
        message: String,
    },
    /// The same entity appears twice among the call's entity parameters (any mix of `&mut`
    /// and `#[read]`): refused before the body ran, nothing committed. Pass each entity once.
    DuplicateTarget {
        /// This operation.
        op_id: OpId,
        /// The entity named twice.
        target: EntityKey,
    },
    /// A nested call composed into its root operation's commit, which did not happen — or
    /// could not join it: the root's body had already ended (a call from a task it spawned
    /// and did not await), or an entity the root's attempt had read changed meanwhile (the
    /// root runs its body again). Nothing of this call was committed.
    RolledBack {
        /// This operation.
        op_id: OpId,
        /// The root operation it composed into.
        root_op_id: OpId,
    },
    /// One of the call's handles belongs to another runtime than the first one's: a call
    /// commits in one store. Nothing ran.
    ForeignHandle {
        /// This operation.
        op_id: OpId,
        /// The entity whose handle is another runtime's.
        target: EntityKey,
    },
    /// Called from the body of an operation that is changing the same entity (or, for a call
    /// that writes it, reading it): the nested call would work on a copy its ancestor's body
    /// overwrites, or wait for its own ancestor. Change the entity in the ancestor's body
    /// instead.
    Reentrant {
        /// This operation.
        op_id: OpId,
        /// The shared target.
        target: EntityKey,
        /// The ancestor executing on it.
        ancestor_op_id: OpId,
    },
    /// Waiting in `target`'s staging area would close a cycle of waits: each operation in
    /// `cycle` (starting with this one) waits for the next, and the last for this one — through
    /// staging (an operation waiting for an entity another one executes on) and through
    /// detached calls made inside bodies (a body is taken to wait for the detached calls it
    /// makes). This call ends instead of waiting, so the others can go on; nothing was
    /// committed. Calling again once they have finished may succeed.
    WaitCycle {
        /// This operation.
        op_id: OpId,
        /// The entity it would have waited for.
        target: EntityKey,
        /// The operations in the cycle, starting with this one.
        cycle: Vec<OpId>,
    },
    /// The body changed the entity's id field; the change was not committed.
    IdentityChanged {
        /// This operation.
        op_id: OpId,
        /// The id the entity had.
        expected: EntityId,
        /// The id the body left.
        found: EntityId,
    },
    /// The store failed.
    Store(StoreError),
}

impl<E: fmt::Display> fmt::Display for ConflictError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected {
                op_id,
                target,
                winner_op_id,
                priority,
                winner_priority,
                reason,
            } => write!(
                f,
                "operation {op_id} (priority {priority}) was rejected on {target}: {reason}; winner {winner_op_id} (priority {winner_priority}). Retry later, raise the priority, or use on_lose = \"requeue\""
            ),
            Self::Preempted {
                op_id,
                target,
                by_op_id,
                priority,
                by_priority,
            } => write!(
                f,
                "operation {op_id} (priority {priority}) was preempted on {target} by {by_op_id} (priority {by_priority}) after its grace period; nothing was committed"
            ),
            Self::RetriesExhausted {
                op_id,
                attempts,
                target,
            } => write!(
                f,
                "operation {op_id} gave up after {attempts} attempts: {target} changed under every attempt. Raise max_retries or reduce contention"
            ),
            Self::Overloaded {
                op_id,
                capacity,
                scope,
            } => write!(
                f,
                "operation {op_id} was refused: {scope} staging capacity of {capacity} is full. Retry later or raise the capacity"
            ),
            Self::ShuttingDown { op_id } => write!(
                f,
                "operation {op_id} did not run: the runtime is shutting down"
            ),
            Self::DeadlineExceeded { op_id, after } => write!(
                f,
                "operation {op_id} could not finish by its deadline ({after:?} after it was submitted); nothing was committed"
            ),
            Self::Body(e) => write!(f, "the operation's body returned an error: {e}"),
            Self::Panicked { op_id, message } => {
                write!(f, "operation {op_id}'s body panicked: {message}")
            }
            Self::Reentrant {
                op_id,
                target,
                ancestor_op_id,
            } => write!(
                f,
                "operation {op_id} targets {target}, which its ancestor {ancestor_op_id} is executing on: a nested operation cannot target its ancestor's entity"
            ),
            Self::WaitCycle {
                op_id,
                target,
                cycle,
            } => {
                write!(
                    f,
                    "operation {op_id} would wait for {target} in a cycle of waits ("
                )?;
                for id in cycle {
                    write!(f, "{id} -> ")?;
                }
                write!(
                    f,
                    "{op_id}): it ended instead, committing nothing, so the others can go on"
                )
            }
            Self::IdentityChanged {
                op_id,
                expected,
                found,
            } => write!(
                f,
                "operation {op_id}'s body changed the entity id from {expected} to {found}; ids are immutable"
            ),
            Self::DuplicateTarget { op_id, target } => write!(
                f,
                "operation {op_id} names {target} twice among its entities; nothing ran: pass each entity once"
            ),
            Self::RolledBack { op_id, root_op_id } => write!(
                f,
                "operation {op_id} composed into operation {root_op_id}'s commit, which did not happen (it failed, ran its body again, or had already ended): nothing of it was committed"
            ),
            Self::ForeignHandle { op_id, target } => write!(
                f,
                "operation {op_id}: the handle of {target} belongs to another runtime than its first entity's; nothing ran: a call commits in one store"
            ),
            Self::Store(e) => fmt::Display::fmt(e, f),
        }
    }
}

/// An error whenever the body's error can be displayed, so `?` reaches `Box<dyn Error>` and
/// `anyhow::Error` also for bodies that fail with `anyhow::Error` or `String`. The body's error
/// is in the message, and available as [`ConflictError::body`]; it is not the `source()`,
/// since `E` need not be an `Error` itself. A store failure's source is.
impl<E: fmt::Debug + fmt::Display> std::error::Error for ConflictError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(e) => std::error::Error::source(e),
            _ => None,
        }
    }
}

impl<E> From<StoreError> for ConflictError<E> {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl<E> ConflictError<E> {
    /// The outcome label of this error.
    #[must_use]
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Self::Rejected { .. } => OutcomeKind::Rejected,
            Self::Preempted { .. } => OutcomeKind::Preempted,
            Self::RetriesExhausted { .. } => OutcomeKind::RetriesExhausted,
            Self::Overloaded { .. } => OutcomeKind::Overloaded,
            Self::ShuttingDown { .. } => OutcomeKind::ShuttingDown,
            Self::DeadlineExceeded { .. } => OutcomeKind::DeadlineExceeded,
            Self::Body(_) => OutcomeKind::BodyError,
            Self::Panicked { .. } => OutcomeKind::Panicked,
            Self::Reentrant { .. } | Self::WaitCycle { .. } => OutcomeKind::Reentrant,
            Self::IdentityChanged { .. } => OutcomeKind::IdentityChanged,
            Self::DuplicateTarget { .. } | Self::ForeignHandle { .. } => {
                OutcomeKind::InvalidTargets
            }
            Self::RolledBack { .. } => OutcomeKind::RolledBack,
            Self::Store(_) => OutcomeKind::StoreError,
        }
    }

    /// The operation's id, where the error carries one.
    #[must_use]
    pub fn op_id(&self) -> Option<OpId> {
        match self {
            Self::Rejected { op_id, .. }
            | Self::Preempted { op_id, .. }
            | Self::RetriesExhausted { op_id, .. }
            | Self::Overloaded { op_id, .. }
            | Self::ShuttingDown { op_id }
            | Self::DeadlineExceeded { op_id, .. }
            | Self::Panicked { op_id, .. }
            | Self::Reentrant { op_id, .. }
            | Self::WaitCycle { op_id, .. }
            | Self::IdentityChanged { op_id, .. }
            | Self::DuplicateTarget { op_id, .. }
            | Self::ForeignHandle { op_id, .. }
            | Self::RolledBack { op_id, .. }
            | Self::Store(StoreError::OutcomeUnknown { op_id, .. }) => Some(*op_id),
            Self::Body(_) | Self::Store(_) => None,
        }
    }

    /// Whether calling again later may succeed (lost to contention or load, not a fault).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Rejected { .. }
                | Self::Preempted { .. }
                | Self::RetriesExhausted { .. }
                | Self::Overloaded { .. }
                | Self::WaitCycle { .. }
        )
    }

    /// The same error with the body error replaced by its message ([`BodyFailed`]), so it can
    /// be stored and shown whatever the body's error type is.
    #[must_use]
    pub fn erase_body(&self) -> ConflictError<BodyFailed>
    where
        E: fmt::Display,
    {
        self.clone_with_body(|e| BodyFailed {
            message: e.to_string(),
        })
    }

    /// The body's own error, if the body failed.
    #[must_use]
    pub fn body(&self) -> Option<&E> {
        match self {
            Self::Body(e) => Some(e),
            _ => None,
        }
    }

    /// The body's own error, if the body failed; otherwise the error itself.
    ///
    /// # Errors
    ///
    /// `self`, unchanged, when it is any variant other than [`ConflictError::Body`].
    pub fn into_body(self) -> Result<E, Self> {
        match self {
            Self::Body(e) => Ok(e),
            other => Err(other),
        }
    }

    /// Converts the body error with `f`, keeping every other variant.
    pub fn map_body<F, E2>(self, f: F) -> ConflictError<E2>
    where
        F: FnOnce(E) -> E2,
    {
        match self {
            Self::Body(e) => ConflictError::Body(f(e)),
            // Proven invariant: `Body` is matched above, so the closure is never called.
            other => other.clone_with_body(|_| unreachable!("Body is handled by the arm above")),
        }
    }

    /// A copy with the body error converted by `body`; every other field is cloned.
    fn clone_with_body<E2>(&self, body: impl FnOnce(&E) -> E2) -> ConflictError<E2> {
        match self {
            Self::Body(e) => ConflictError::Body(body(e)),
            Self::Store(e) => ConflictError::Store(e.clone()),
            Self::Rejected {
                op_id,
                target,
                winner_op_id,
                priority,
                winner_priority,
                reason,
            } => ConflictError::Rejected {
                op_id: *op_id,
                target: target.clone(),
                winner_op_id: *winner_op_id,
                priority: *priority,
                winner_priority: *winner_priority,
                reason: *reason,
            },
            Self::Preempted {
                op_id,
                target,
                by_op_id,
                priority,
                by_priority,
            } => ConflictError::Preempted {
                op_id: *op_id,
                target: target.clone(),
                by_op_id: *by_op_id,
                priority: *priority,
                by_priority: *by_priority,
            },
            Self::RetriesExhausted {
                op_id,
                attempts,
                target,
            } => ConflictError::RetriesExhausted {
                op_id: *op_id,
                attempts: *attempts,
                target: target.clone(),
            },
            Self::Overloaded {
                op_id,
                capacity,
                scope,
            } => ConflictError::Overloaded {
                op_id: *op_id,
                capacity: *capacity,
                scope: *scope,
            },
            Self::ShuttingDown { op_id } => ConflictError::ShuttingDown { op_id: *op_id },
            Self::DeadlineExceeded { op_id, after } => ConflictError::DeadlineExceeded {
                op_id: *op_id,
                after: *after,
            },
            Self::Panicked { op_id, message } => ConflictError::Panicked {
                op_id: *op_id,
                message: message.clone(),
            },
            Self::Reentrant {
                op_id,
                target,
                ancestor_op_id,
            } => ConflictError::Reentrant {
                op_id: *op_id,
                target: target.clone(),
                ancestor_op_id: *ancestor_op_id,
            },
            Self::WaitCycle {
                op_id,
                target,
                cycle,
            } => ConflictError::WaitCycle {
                op_id: *op_id,
                target: target.clone(),
                cycle: cycle.clone(),
            },
            Self::IdentityChanged {
                op_id,
                expected,
                found,
            } => ConflictError::IdentityChanged {
                op_id: *op_id,
                expected: *expected,
                found: *found,
            },
            Self::DuplicateTarget { op_id, target } => ConflictError::DuplicateTarget {
                op_id: *op_id,
                target: target.clone(),
            },
            Self::ForeignHandle { op_id, target } => ConflictError::ForeignHandle {
                op_id: *op_id,
                target: target.clone(),
            },
            Self::RolledBack { op_id, root_op_id } => ConflictError::RolledBack {
                op_id: *op_id,
                root_op_id: *root_op_id,
            },
        }
    }
}

/// A body error by its message, in [`ConflictError::erase_body`] (what records and events keep).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BodyFailed {
    /// The body error's `Display`.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("insufficient funds")]
    struct Insufficient;

    #[test]
    fn body_error_is_in_the_message_and_reachable() {
        let e: ConflictError<Insufficient> = ConflictError::Body(Insufficient);
        assert_eq!(e.kind(), OutcomeKind::BodyError);
        assert!(e.to_string().ends_with("insufficient funds"), "{e}");
        assert_eq!(
            e.body().map(ToString::to_string).as_deref(),
            Some("insufficient funds")
        );
        assert_eq!(e.erase_body().to_string(), e.to_string());
        let mapped = e.map_body(|_| "x");
        assert!(matches!(mapped, ConflictError::Body("x")));
    }

    /// `?` reaches `Box<dyn Error>` (and so `anyhow`) for bodies failing with a `String`, which
    /// is not an `Error`.
    #[test]
    fn a_string_body_error_converts_into_box_dyn_error() {
        fn call() -> Result<(), ConflictError<String>> {
            Err(ConflictError::Body("no stock".to_string()))
        }
        fn caller() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            call()?;
            Ok(())
        }
        assert!(caller().unwrap_err().to_string().contains("no stock"));
    }

    #[test]
    fn every_outcome_kind_has_a_distinct_label_and_index() {
        let labels: std::collections::HashSet<_> =
            OutcomeKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), OutcomeKind::ALL.len());
        for (i, k) in OutcomeKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }

    #[test]
    fn messages_say_what_to_do() {
        let e: ConflictError<Insufficient> = ConflictError::Overloaded {
            op_id: OpId::from_parts(1, 1),
            capacity: 8,
            scope: OverloadScope::Target,
        };
        let msg = e.to_string();
        assert!(msg.contains("per-target staging capacity of 8"), "{msg}");
        assert!(e.is_transient());
    }
}
