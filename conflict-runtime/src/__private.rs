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

pub use crate::store::{Snapshot, StoreError, StoredValue};

/// One entity parameter of a call over several entities (or of a nested call).
pub struct Target<'h>(crate::occ::Target<'h>);

/// A `&mut E` parameter: written.
#[inline]
#[must_use]
pub fn write<E: Entity>(handle: &Handle<E>) -> Target<'_> {
    Target(crate::occ::Target::write(handle))
}

/// A `#[read] &E` parameter: read in the call's snapshot and validated at commit.
#[inline]
#[must_use]
pub fn read<E: Entity>(handle: &Handle<E>) -> Target<'_> {
    Target(crate::occ::Target::read(handle))
}

/// Runs one call of a function over several entities (or with a `#[read]` parameter). The
/// body gets the snapshots of `targets`, in order, and returns the new values of the written
/// ones, in order.
pub async fn execute_many<const N: usize, F, Fut, T, Err>(
    spec: &'static OperationSpec,
    targets: [Target<'_>; N],
    body: F,
) -> Result<Committed<T>, ConflictError<Err>>
where
    F: FnMut(&[Snapshot]) -> Result<Fut, StoreError>,
    Fut: Future<Output = (Vec<StoredValue>, Result<T, Err>)>,
    Err: BodyError,
{
    let targets = targets.map(|t| t.0);
    crate::occ::execute_many(spec, &targets, body).await
}

/// A private copy of the entity at `index` (for a `&mut` parameter).
///
/// # Errors
/// [`StoreError::Codec`] if the snapshot holds another type (a store returning the wrong
/// value).
#[inline]
pub fn entity_mut<E: Entity>(snaps: &[Snapshot], index: usize) -> Result<E, StoreError> {
    let snap = &snaps[index];
    crate::occ::copy_of::<E>(&snap.value.entity_key(), snap)
}

/// The shared entity at `index` (for a `#[read]` parameter: not copied).
///
/// # Errors
/// [`StoreError::Codec`] if the snapshot holds another type.
#[inline]
pub fn entity_ref<E: Entity>(
    snaps: &[Snapshot],
    index: usize,
) -> Result<std::sync::Arc<E>, StoreError> {
    let value = snaps[index].value.clone();
    let key = value.entity_key();
    value
        .into_any_arc()
        .downcast::<E>()
        .map_err(|_| StoreError::Codec {
            key,
            message: format!(
                "the store returned a value that is not a `{}`",
                std::any::type_name::<E>()
            ),
        })
}

/// A written parameter's new value, type-erased for the commit.
#[inline]
pub fn erase<E: Entity>(entity: E) -> StoredValue {
    std::sync::Arc::new(entity)
}

/// What the generated code does with an entity parameter's type, through one trait: a type
/// that is not an entity fails once, with this message, at the parameter's type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an entity: a `&mut` (or `#[read] &`) parameter of a #[with_conflict_resolution] function must be an entity type",
    label = "not an `Entity`",
    note = "derive it (`#[derive(Entity)]` with an `#[entity(id)]` field), or pass the value by value or by plain `&`"
)]
pub trait EntityParam: Sized {
    /// [`execute`] for a single-entity call on this type.
    fn execute<F, Fut, T, Err>(
        spec: &'static OperationSpec,
        handle: &Handle<Self>,
        body: F,
    ) -> impl Future<Output = Result<Committed<T>, ConflictError<Err>>>
    where
        F: FnMut(Self) -> Fut,
        Fut: Future<Output = (Self, Result<T, Err>)>,
        Err: BodyError;

    /// [`write`].
    fn write(handle: &Handle<Self>) -> Target<'_>;

    /// [`read`].
    fn read(handle: &Handle<Self>) -> Target<'_>;

    /// [`entity_mut`].
    ///
    /// # Errors
    /// As [`entity_mut`].
    fn copy_at(snaps: &[Snapshot], index: usize) -> Result<Self, StoreError>;

    /// [`entity_ref`].
    ///
    /// # Errors
    /// As [`entity_ref`].
    fn share_at(snaps: &[Snapshot], index: usize) -> Result<std::sync::Arc<Self>, StoreError>;

    /// [`erase`].
    fn erase(self) -> StoredValue;
}

impl<E: Entity> EntityParam for E {
    #[inline]
    fn execute<F, Fut, T, Err>(
        spec: &'static OperationSpec,
        handle: &Handle<Self>,
        body: F,
    ) -> impl Future<Output = Result<Committed<T>, ConflictError<Err>>>
    where
        F: FnMut(Self) -> Fut,
        Fut: Future<Output = (Self, Result<T, Err>)>,
        Err: BodyError,
    {
        crate::occ::execute(spec, handle, body)
    }

    #[inline]
    fn write(handle: &Handle<Self>) -> Target<'_> {
        write(handle)
    }

    #[inline]
    fn read(handle: &Handle<Self>) -> Target<'_> {
        read(handle)
    }

    #[inline]
    fn copy_at(snaps: &[Snapshot], index: usize) -> Result<Self, StoreError> {
        entity_mut::<Self>(snaps, index)
    }

    #[inline]
    fn share_at(snaps: &[Snapshot], index: usize) -> Result<std::sync::Arc<Self>, StoreError> {
        entity_ref::<Self>(snaps, index)
    }

    #[inline]
    fn erase(self) -> StoredValue {
        erase(self)
    }
}

/// Tells at compile time whether an argument's type is an entity (see [`EntityArg::not_an_entity`]).
pub struct EntityProbe<T: ?Sized>(core::marker::PhantomData<T>);

impl<T: ?Sized> EntityProbe<T> {
    /// A probe for `T`.
    #[must_use]
    pub const fn new() -> Self {
        Self(core::marker::PhantomData)
    }
}

impl<T: ?Sized> Default for EntityProbe<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Picked for entity types (through auto-ref, before [`NotAnEntityArg`]).
pub trait EntityArg {
    /// Fails to compile: an entity was passed by value (or by unmarked shared reference).
    fn not_an_entity(&self)
    where
        Self: EntityPassedByValue,
    {
    }
}

impl<E: Entity> EntityArg for EntityProbe<E> {}

/// Picked for every other type.
pub trait NotAnEntityArg {
    /// Compiles: a plain argument.
    fn not_an_entity(&self) {}
}

impl<T: ?Sized> NotAnEntityArg for &EntityProbe<T> {}

/// Never implemented: what an entity passed by value or by unmarked `&` runs into.
#[diagnostic::on_unimplemented(
    message = "an entity is passed as a plain argument of a #[with_conflict_resolution] function",
    label = "an entity type",
    note = "take it as `&mut E` to change it in this call's commit, or as `#[read] name: &E` to read it in the call's consistent snapshot (validated at commit); to pass a value that is not meant as an entity, wrap or convert it"
)]
pub trait EntityPassedByValue {}

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
