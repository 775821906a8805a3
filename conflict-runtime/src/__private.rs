//! What the macros expand to. Not a public API: names and signatures here change without notice.
#![doc(hidden)]

use std::convert::Infallible;
use std::future::Future;

pub use conflict_core::{
    CleanupAction, CleanupConfig, CleanupError, CleanupStrategy, Committed, ConflictError, Entity,
    EntityId, EntityIdType, OccConfig, OnLose, OpClass, OperationConfig, OperationPriority,
    OperationRecord, PreEcsConfig, PrioritySet, ResolutionMode,
};
pub use inventory;
pub use std::borrow::Cow;

pub use crate::cleanup::{CleanupHandlerRegistration, HandlerFuture};
pub use crate::handle::Handle;
pub use crate::registry::{EntityRegistration, OperationRegistration, OperationSpec};

/// Runs one call of an annotated function. (Returns the executor's future itself: an `async fn`
/// here would add a layer that the whole call's state is moved through.)
pub fn execute<E, F, Fut, T, Err>(
    spec: &'static OperationSpec,
    handle: &Handle<E>,
    body: F,
) -> impl Future<Output = Result<Committed<T>, ConflictError<Err>>>
where
    E: Entity,
    F: FnMut(E) -> Fut,
    Fut: Future<Output = (E, Result<T, Err>)>,
    Err: BodyError,
{
    crate::occ::execute(spec, handle, body)
}

/// Checked for a fallible body's error type: its message is kept in the operation's record and
/// in the `ConflictError` the caller gets.
#[diagnostic::on_unimplemented(
    message = "the body's error type `{Self}` must implement `Display`",
    label = "not `Display`",
    note = "a failed operation's record and its ConflictError carry the body error's message; derive it with `thiserror` or implement `std::fmt::Display`"
)]
pub trait BodyError: std::fmt::Display {}

impl<T: std::fmt::Display + ?Sized> BodyError for T {}

/// Normalises what a cleanup handler returns.
pub fn cleanup_result<T: Into<CleanupAction>>(
    r: Result<T, CleanupError>,
) -> Result<CleanupAction, CleanupError> {
    r.map(Into::into)
}

/// Wraps the value of a body that cannot fail.
#[inline]
pub fn infallible<T>(value: T) -> Result<T, Infallible> {
    Ok(value)
}

/// The `Ok` and `Err` types of a body's `Result` return type (also through aliases such as
/// `io::Result<T>`).
pub trait BodyResult {
    /// What the body returns on success.
    type Ok;
    /// What it returns on failure.
    type Err;
}

impl<T, E> BodyResult for Result<T, E> {
    type Ok = T;
    type Err = E;
}

/// Tells at compile time whether a concrete type is a `Result` (through any alias): the inherent
/// constant below applies only to `ResultProbe<Result<T, E>>`, every other type gets the trait's.
/// (In a generic context the trait's applies, so a generic return type is taken as a value.)
pub struct ResultProbe<T: ?Sized>(core::marker::PhantomData<T>);

/// The fallback of [`ResultProbe`]: not a `Result`.
pub trait NotAResult {
    /// Whether the probed type is a `Result`.
    const IS_RESULT: bool = false;
}

impl<T: ?Sized> NotAResult for ResultProbe<T> {}

impl<T, E> ResultProbe<Result<T, E>> {
    /// A `Result`.
    pub const IS_RESULT: bool = true;
}

/// Checked for every non-entity argument: the body may run more than once, each time on a clone.
#[diagnostic::on_unimplemented(
    message = "`{Self}` must implement `Clone` to be an argument of a #[with_conflict_resolution] function",
    label = "not `Clone`",
    note = "the body may run more than once (once per OCC attempt), each time with a clone of its arguments; pass a reference or an `Arc` to share a value that cannot be cloned"
)]
pub trait ArgClone: Clone {}

impl<T: Clone> ArgClone for T {}

/// Clones an argument for one attempt; fails to compile with the message above when the
/// argument is not `Clone`.
#[inline]
pub fn clone_arg<T: ArgClone>(value: &T) -> T {
    value.clone()
}

pub use serde;

/// The raw id of an entity's `#[entity(id)]` field. Generic over the entity, so that the id
/// type's bound is the trait's (checked once, at `type Id`): a wrong field type gives one error.
#[inline]
pub fn raw_id<E: crate::Entity>(id: &E::Id) -> EntityId {
    conflict_core::EntityIdType::entity_id(id)
}

/// A priority checked at compile time (the macro already validated the literal).
#[must_use]
pub const fn priority(value: u8) -> OperationPriority {
    match OperationPriority::new(value) {
        Ok(p) => p,
        Err(_) => panic!("priority must be 1..=10"),
    }
}
