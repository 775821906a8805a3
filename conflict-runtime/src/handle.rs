//! [`Handle`]: a typed reference to one stored entity, and what it caches for the calls made
//! through it.

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use conflict_core::{Entity, EntityId, EntityIdType, EntityKey, StoreError, Versioned};

use crate::runtime::Runtime;
use crate::staging::TargetCell;
use crate::store::{EntityCodec, SlotCache, Snapshot};

/// A typed reference to one stored entity: what annotated functions take in place of `&mut E`.
///
/// Cheap to clone (a runtime `Arc` and a key); `Send + Sync`.
pub struct Handle<E> {
    pub(crate) rt: Runtime,
    pub(crate) key: EntityKey,
    pub(crate) cache: HandleCache,
    _entity: PhantomData<fn() -> E>,
}

/// What a handle remembers so that calls through it skip map lookups: the embedded store's
/// slot of its entity and its target's staging cell. The cell is *held* by the cache (see
/// `staging`'s module docs): it stays in the staging map while a handle caching it lives, and
/// the handle's drop releases it.
#[derive(Default)]
pub(crate) struct HandleCache {
    pub(crate) slot: SlotCache,
    pub(crate) cell: OnceLock<Arc<TargetCell>>,
}

impl<E> Handle<E> {
    pub(crate) fn new(rt: Runtime, key: EntityKey, slot: SlotCache) -> Self {
        Self {
            rt,
            key,
            cache: HandleCache {
                slot,
                cell: OnceLock::new(),
            },
            _entity: PhantomData,
        }
    }
}

impl<E> Clone for Handle<E> {
    fn clone(&self) -> Self {
        let cell = OnceLock::new();
        if let Some(c) = self.cache.cell.get() {
            let _ = cell.set(c.hold_again());
        }
        Self {
            rt: self.rt.clone(),
            key: self.key.clone(),
            cache: HandleCache {
                slot: self.cache.slot.clone(),
                cell,
            },
            _entity: PhantomData,
        }
    }
}

impl<E> Drop for Handle<E> {
    fn drop(&mut self) {
        if let Some(cell) = self.cache.cell.take() {
            // The last hold on an idle target's cell evicts it: staging memory follows the
            // live handles.
            self.rt.inner.staging.release_hold(&self.key, &cell);
        }
    }
}

impl<E> std::fmt::Debug for Handle<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handle({})", self.key)
    }
}

impl<E: Entity> Handle<E> {
    /// The entity's id, of its own id type.
    #[must_use]
    pub fn id(&self) -> E::Id {
        E::Id::from_entity_id(self.key.id)
    }

    /// The entity's raw id (what stores key by), whatever its id type.
    #[must_use]
    pub fn entity_id(&self) -> EntityId {
        self.key.id
    }

    /// The entity's store key.
    #[must_use]
    pub fn key(&self) -> &EntityKey {
        &self.key
    }

    /// The runtime this handle belongs to.
    #[must_use]
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// Reads the current value and version.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] if the entity does not exist (any more), [`StoreError::Codec`]
    /// if the stored value cannot be decoded as `E`, and the store's own failures
    /// ([`StoreError::Backend`] for a persistent store).
    pub async fn load(&self) -> Result<Versioned<E>, StoreError> {
        let snap = self.snapshot().await?;
        Ok(Versioned {
            value: downcast::<E>(&self.key, &snap)?.clone(),
            version: snap.version,
            last_modified: snap.last_modified,
        })
    }

    /// Deletes the entity outside any operation, through the version compare: only if it is
    /// still at `expected_version` (the version a [`load`](Self::load) returned). The entity
    /// becomes a tombstone at `expected_version + 1`: loads and calls through any handle to it
    /// get [`StoreError::NotFound`], a call that read it before cannot commit, and inserting
    /// it again continues its versions. A database store records it in its ledger under a new
    /// op id (op type `"delete"`).
    ///
    /// This is a commit of its own, also inside a body: to delete an entity as part of a call,
    /// use [`operation::delete`](crate::operation::delete) on the call's `&mut` parameter.
    ///
    /// Returns [`CommitOutcome::Committed`](crate::store::CommitOutcome::Committed) (no
    /// versions: the tombstone's is `expected_version + 1`) or
    /// [`CommitOutcome::Conflict`](crate::store::CommitOutcome::Conflict) with the version found
    /// (`None`: there is no entity) and nothing deleted.
    ///
    /// # Errors
    ///
    /// The store's own failures ([`StoreError::Backend`], [`StoreError::OutcomeUnknown`]).
    ///
    /// ```
    /// use conflict_runtime::prelude::*;
    /// use conflict_runtime::store::{CommitOutcome, StoreError};
    ///
    /// #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
    /// struct Ticket {
    ///     #[entity(id)]
    ///     id: EntityId,
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let rt = Runtime::in_memory();
    /// let ticket = rt.insert(Ticket { id: EntityId::new() }).await.unwrap();
    /// let stale = ticket.delete(7).await.unwrap();
    /// assert!(matches!(stale, CommitOutcome::Conflict { actual: Some(1), .. }));
    /// let done = ticket.delete(1).await.unwrap();
    /// assert!(matches!(done, CommitOutcome::Committed { .. }));
    /// assert!(matches!(ticket.load().await, Err(StoreError::NotFound { .. })));
    /// let again = rt.insert(Ticket { id: ticket.entity_id() }).await.unwrap();
    /// assert_eq!(again.load().await.unwrap().version, 3); // after the tombstone's 2
    /// # }
    /// ```
    pub async fn delete(
        &self,
        expected_version: u64,
    ) -> Result<crate::store::CommitOutcome, StoreError> {
        let inner = &self.rt.inner;
        let info = crate::store::CommitInfo {
            op_id: conflict_core::OpId::from_parts(inner.id, inner.next_seq()),
            op_type: "delete",
            priority: conflict_core::OperationPriority::NORMAL,
            attempt: 1,
        };
        let delete = crate::store::Delete {
            key: self.key.clone(),
            expected_version,
        };
        let outcome = inner
            .backend
            .commit_many(info, Vec::new(), vec![delete], Vec::new())
            .await;
        if inner.backend.is_remote() {
            // Whatever happened, a snapshot staging remembers may be stale now.
            inner.staging.forget_last(&self.key);
        }
        outcome
    }

    pub(crate) async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.rt
            .inner
            .backend
            .load(&self.key, EntityCodec::of::<E>(), &self.cache.slot)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                key: self.key.clone(),
            })
    }
}

/// The typed value inside a snapshot.
pub(crate) fn downcast<'s, E: Entity>(
    key: &EntityKey,
    snap: &'s Snapshot,
) -> Result<&'s E, StoreError> {
    snap.value
        .as_any()
        .downcast_ref::<E>()
        .ok_or_else(|| StoreError::Codec {
            key: key.clone(),
            message: format!(
                "the store returned a value that is not a `{}`",
                std::any::type_name::<E>()
            ),
        })
}
