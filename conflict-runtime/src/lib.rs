// Pedantic lints are enforced (CI denies warnings). Allowed crate-wide only where the lint does
// not fit this crate; single sites are allowed at the item with a reason.
#![warn(clippy::pedantic)]
// A two-armed `match` on an `Option` names both cases side by side (`Some(v) => .., None => ..`);
// `if let .. else` would hide the `None` case in an `else`.
#![allow(clippy::single_match_else)]

//! Change shared entities from many async tasks at once, without locks and without losing an
//! update.
//!
//! Annotate an `async fn` that mutates an entity with [`with_conflict_resolution`]. Every call
//! then goes through two stages:
//!
//! 1. **Staging** ("pre-ECS" in the attribute, `pre_ecs(...)`: conflicts are settled *before
//!    execution*): calls competing for the same entity are resolved by priority
//!    *before* any of them runs. The winner executes; losers are rejected (or requeued) at once,
//!    so contention does not burn CPU on doomed attempts.
//! 2. **Optimistic concurrency control**: the winner reads a snapshot (value + version), runs the
//!    body on a private copy, and commits only if the version is unchanged (compare-and-commit).
//!    On a conflict — another process, a direct write, an OCC-only function — it backs off
//!    (exponential, full jitter, capped) and runs again on a fresh snapshot.
//!
//! Every call ends with exactly one definite outcome: `Ok(`[`Committed`]`)` with the new version,
//! or a [`ConflictError`] saying why (rejected, preempted, retries exhausted, overloaded, shutting
//! down, body error, body panicked, ...). Never a silent drop, never a hang.
//!
//! # Quick start
//!
//! ```
//! use conflict_runtime::prelude::*;
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
//! struct Account {
//!     #[entity(id)]
//!     id: EntityId,
//!     balance: i64,
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("insufficient funds")]
//! struct Insufficient;
//!
//! #[with_conflict_resolution(priority = 5, occ(max_retries = 10, base_delay_ms = 1, backoff_factor = 1.5, max_delay_ms = 50))]
//! async fn withdraw(account: &mut Account, amount: i64) -> Result<i64, Insufficient> {
//!     if account.balance < amount {
//!         return Err(Insufficient); // nothing is committed
//!     }
//!     account.balance -= amount;
//!     Ok(account.balance)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = Runtime::in_memory();
//! let acct: Handle<Account> = rt.insert(Account { id: EntityId::new(), balance: 100 }).await?;
//! let done: Committed<i64> = withdraw(&acct, 30).await?;
//! assert_eq!((done.value, done.version), (70, 2));
//! assert!(matches!(withdraw(&acct, 500).await, Err(ConflictError::Body(Insufficient))));
//! assert_eq!(acct.load().await?.value.balance, 70);
//! # Ok(()) }
//! ```
//!
//! # What the macro generates
//!
//! The annotated function keeps its name, visibility and other arguments. Its first parameter
//! must be the entity, `&mut E` with `E: Entity`; in the generated function it becomes
//! `&Handle<E>`. The return type becomes `Result<Committed<T>, ConflictError<Err>>`:
//!
//! * If the declared return type is a path whose last segment is `Result` (`Result<T, E>`,
//!   `std::result::Result<T, E>`, `io::Result<T>`, `anyhow::Result<T>`, ...), the body is
//!   *fallible*: `Ok(v)` commits and returns `v`; `Err(e)` commits nothing, is not retried, and
//!   returns `ConflictError::Body(e)`. The type must be `core::result::Result` (an alias of it is
//!   fine).
//! * Anything else (including no return type) is an *infallible* body returning `T`; the error
//!   type is `ConflictError<Infallible>`.
//!
//! The macro decides by the last path segment's name, and the generated code has the compiler
//! check the rest: a return type that is a `Result` under another name (`type Outcome<T> =
//! Result<T, Nope>`) does not compile (the error points at the return type), so an `Err` can
//! never be committed as a plain value. Name such aliases `...Result` or spell the type out.
//!
//! # Methods
//!
//! On a method with `&mut self` the entity is `self`; it is generated as an associated function
//! taking `this: &Handle<Self>`:
//!
//! ```
//! use conflict_runtime::prelude::*;
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
//! struct Pallet { #[entity(id)] id: EntityId, units: u32 }
//!
//! impl Pallet {
//!     #[with_conflict_resolution(pre_ecs(on_lose = "requeue"))]
//!     async fn take(&mut self, n: u32) -> u32 {
//!         self.units = self.units.saturating_sub(n);
//!         self.units
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let rt = Runtime::in_memory();
//! let pallet = rt.insert(Pallet { id: EntityId::new(), units: 5 }).await.unwrap();
//! assert_eq!(Pallet::take(&pallet, 2).await.unwrap().value, 3);
//! # }
//! ```
//!
//! An associated function without a receiver works like a free function (its first parameter
//! is the entity), and so does a generic function (`async fn bump<E: Entity + Counter>(e: &mut
//! E)`), each instantiation sharing one operation type. Two limits: an associated function
//! *without* a receiver in a generic `impl<T> ..` block cannot use `T` in its signature (the
//! generated code nests the body in a function of its own, which cannot see the impl's
//! parameters; the compiler says "can't use generic parameters from outer item"): write it as
//! a `&mut self` method or a free generic function instead. And the operation type is
//! `module::name`, so two same-named methods in `impl` blocks of one module would share it:
//! the runtime refuses to start then ([`ConfigError::DuplicateOperation`](config::ConfigError)),
//! and `name = "..."` on one of them gives it its own.
//!
//! # Which stages run
//!
//! Both, unless a stage is switched off: `pre_ecs = false`, `occ = false`, or `mode = "..."`.
//! Naming a stage's options (`pre_ecs(...)`, `occ(...)`) only configures that stage, so the
//! quick start's `withdraw` is staged by its priority *and* retries conflicts.
//!
//! # The body may run more than once
//!
//! Under OCC a body runs once per attempt, each time on a fresh clone of the stored entity and
//! a fresh clone of the other arguments (which must therefore be `Clone`). Only the entity
//! changes of the attempt that commits are kept. Side effects outside the entity (I/O, sending
//! messages) happen once per attempt: make them idempotent or do them after the call returns.
//! A body may also be stopped at an `.await` (preemption, shutdown, a dropped caller); nothing
//! is committed then.
//!
//! # Nested operations
//!
//! An annotated function called inside another's body becomes its child: it records
//! `parent_op_id` and inherits the parent's effective priority. A child that targets an entity
//! one of its ancestors is executing on returns [`ConflictError::Reentrant`] at once (it would
//! otherwise wait for its own ancestor); change that entity in the ancestor's body instead.
//! Tasks spawned from a body do not inherit the context: use [`scope`](operation::scope)`().parent(..)` with
//! [`current_operation`](operation::current_operation) to pass it on.

#![warn(missing_docs)]

pub mod __private;
pub mod cleanup;
mod context;
pub mod events;
mod handle;
mod lifecycle;
pub mod metrics;
mod occ;
pub mod prelude;
mod registry;
mod runtime;
pub mod staging;
pub mod store;
mod sync;
mod txn;
mod waits;

pub use conflict_core::{Committed, ConflictError, Entity, EntityId, policy};
pub use conflict_macros::{Entity, cleanup_handler, with_conflict_resolution};
pub use handle::Handle;
pub use runtime::{Runtime, RuntimeBuilder, ShutdownReport};

// Each public type has one home: the root or one of these modules (and the prelude).

/// What configures an annotated function: the attribute's values as types, their validation
/// (the macro checks literals at compile time with the same code), and [`ConfigError`](crate::config::ConfigError), what
/// start-up and the builder refuse.
pub mod config {
    pub use conflict_core::{
        CleanupConfig, CleanupConfigBuilder, ConfigError, OccConfig, OnLose, OpClass,
        OperationConfig, OperationPriority, PreEcsConfig, PriorityError, PrioritySet,
        ResolutionMode,
    };
}

/// The types [`ConflictError`]'s variants carry (besides
/// [`StoreError`](crate::store::StoreError), in `store`, and
/// [`OutcomeKind`](crate::operation::OutcomeKind), in `operation`).
pub mod error {
    pub use conflict_core::{BodyFailed, DeleteError, OverloadScope, RejectReason};
}

/// Entities: the trait, ids and keys, versioned values, and the entity types linked into the
/// program.
pub mod entity {
    pub use crate::registry::{EntityRegistration, linked_entities};
    pub use conflict_core::{EntityIdType, EntityKey, ParseIdError, Versioned};
}

/// Operations: ids, records, outcomes, the context a body runs in (and per-call overrides with
/// [`scope`](operation::scope)), and the annotated functions linked into the program.
pub mod operation {
    pub use crate::context::{OperationContext, Scope, current_operation, delete, scope};
    pub use crate::registry::{OperationSpec, linked_operations};
    pub use conflict_core::{OpId, OperationRecord, OperationStatus, OutcomeKind};
}

/// Declares a typed id: a newtype around [`EntityId`] for one entity type, so that an id of one
/// entity cannot be used for another (`rt.handle::<Product>(cart_id)` does not compile).
///
/// The type is `Copy`, `Eq`, `Ord`, `Hash`, `Debug`, `Display` (the UUID), serializes as the bare
/// UUID, and implements [`EntityIdType`](entity::EntityIdType); `ProductId::new()` makes a fresh one.
///
/// ```
/// use conflict_runtime::prelude::*;
///
/// conflict_runtime::typed_id!(
///     /// Identifies a product.
///     pub ProductId
/// );
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
/// struct Product { #[entity(id)] id: ProductId, stock: u32 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let rt = Runtime::in_memory();
/// let id = ProductId::new();
/// rt.insert(Product { id, stock: 3 }).await.unwrap();
/// let again: Handle<Product> = rt.handle(id);
/// assert_eq!(again.id(), id);
/// assert_eq!(again.load().await.unwrap().value.stock, 3);
/// # }
/// ```
#[macro_export]
macro_rules! typed_id {
    ($(#[$meta:meta])* $vis:vis $name:ident) => {
        $(#[$meta])*
        #[derive(
            ::core::marker::Copy,
            ::core::clone::Clone,
            ::core::fmt::Debug,
            ::core::cmp::PartialEq,
            ::core::cmp::Eq,
            ::core::cmp::PartialOrd,
            ::core::cmp::Ord,
            ::core::hash::Hash,
        )]
        $vis struct $name(pub $crate::EntityId);

        // As the bare UUID (what `#[serde(transparent)]` would write; spelled out so that the
        // user's crate needs no `serde` path of its own).
        impl $crate::__private::serde::Serialize for $name {
            fn serialize<S: $crate::__private::serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::core::result::Result<S::Ok, S::Error> {
                $crate::__private::serde::Serialize::serialize(&self.0, serializer)
            }
        }

        impl<'de> $crate::__private::serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__private::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::core::result::Result<Self, D::Error> {
                <$crate::EntityId as $crate::__private::serde::Deserialize<'de>>::deserialize(
                    deserializer,
                )
                .map(Self)
            }
        }

        impl $name {
            /// A fresh, random id.
            #[must_use]
            #[allow(clippy::new_without_default)]
            $vis fn new() -> Self {
                Self($crate::EntityId::new())
            }
        }

        impl $crate::entity::EntityIdType for $name {
            #[inline]
            fn from_entity_id(id: $crate::EntityId) -> Self {
                Self(id)
            }
            #[inline]
            fn entity_id(&self) -> $crate::EntityId {
                self.0
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// The guide's code blocks (`docs/guide.md`), compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guide.md")]
struct GuideDoctests;

/// The attribute reference's code blocks (`docs/attributes.md`), compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/attributes.md")]
struct AttributesDoctests;

/// The PostgreSQL page's code blocks (`docs/postgres.md`), compiled but not run (they need a
/// server); only with the `postgres` feature, which `cargo test --workspace` enables through
/// `conflict-tests`.
#[cfg(all(doctest, feature = "postgres"))]
#[doc = include_str!("../../docs/postgres.md")]
struct PostgresDoctests;
