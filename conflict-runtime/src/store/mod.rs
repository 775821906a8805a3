//! Where entities live: the [`EntityStore`] contract and its backends.
//!
//! A store keeps, per [`EntityKey`], a value and its OCC metadata (version, last-modified), and
//! offers one write primitive: an atomic compare-and-commit of one or more
//! `(key, expected version, new value)` writes and `(key, expected version)` deletes. A commit
//! applies all of them or none, and only when every expected version is still current; each
//! applied write or delete bumps its entity's version by exactly one. There is no unconditional
//! write.
//!
//! **Creating and deleting.** A write that expects version `0` creates the entity: it applies
//! only if the key holds no entity. A [`Delete`] leaves a *tombstone*: the key keeps its
//! version (bumped by the delete), loads find nothing (`None`, so handles get
//! [`StoreError::NotFound`]), every write or read that expected a live version conflicts, and a
//! later create continues the count (tombstone version + 1). So versions of one key never
//! repeat, and a call that read an entity before it was deleted and re-created can never commit
//! over the new one (no ABA). Tombstones are kept: a deleted key costs its key and version.
//!
//! A value is only ever stored under its own key: a write or insert whose value's
//! [`entity_key`](ErasedEntity::entity_key) differs from the key it is written under (another
//! entity type or another id) is refused with [`StoreError::KeyMismatch`], and then nothing of
//! that call is applied — for a multi-write commit, none of the writes. Otherwise every later
//! `load` of that key would fail to decode. Likewise a commit writes each key at most once: a
//! key written twice is refused with [`StoreError::DuplicateWrite`] before anything is applied
//! (not a conflict: a retry could never succeed).
//!
//! Values cross the trait type-erased ([`StoredValue`]): the in-memory store keeps them as they
//! are (no serialization on the hot path); a database store serializes them with serde through
//! [`ErasedEntity::to_json`] and decodes with the [`EntityCodec`] passed to `load`.

pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use conflict_core::{Entity, OpId, OperationPriority};

use conflict_core::EntityKey;
pub use conflict_core::StoreError;
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PgStore;

/// A boxed future returned by [`EntityStore`] methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A type-erased entity value, shared between readers.
pub type StoredValue = Arc<dyn ErasedEntity>;

/// An entity with its type erased: what stores hold.
pub trait ErasedEntity: Any + Send + Sync {
    /// The value as JSON (for stores that persist).
    ///
    /// # Errors
    ///
    /// The `serde_json` error when the entity's `Serialize` implementation fails or produces
    /// what JSON cannot hold (e.g. a map whose keys are neither strings nor numbers).
    fn to_json(&self) -> Result<serde_json::Value, serde_json::Error>;
    /// The value as `Any`, to downcast back to its type.
    fn as_any(&self) -> &dyn Any;
    /// The entity's key.
    fn entity_key(&self) -> EntityKey;
    /// The shared value as `Any`, to downcast back to an `Arc` of its type.
    fn into_any_arc(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<E: Entity> ErasedEntity for E {
    fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn entity_key(&self) -> EntityKey {
        self.key()
    }
    fn into_any_arc(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

impl fmt::Debug for dyn ErasedEntity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErasedEntity({})", self.entity_key())
    }
}

/// How to turn stored JSON back into a typed value: passed to [`EntityStore::load`] so stores
/// that serialize can decode without knowing the Rust type.
#[derive(Copy, Clone)]
pub struct EntityCodec {
    /// The entity type name.
    pub type_name: &'static str,
    /// Decodes a value of this type.
    pub decode: fn(serde_json::Value) -> Result<StoredValue, serde_json::Error>,
}

impl EntityCodec {
    /// The codec of `E`.
    #[must_use]
    pub fn of<E: Entity>() -> Self {
        fn decode<E: Entity>(v: serde_json::Value) -> Result<StoredValue, serde_json::Error> {
            Ok(Arc::new(serde_json::from_value::<E>(v)?))
        }
        Self {
            type_name: E::TYPE_NAME,
            decode: decode::<E>,
        }
    }
}

impl fmt::Debug for EntityCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityCodec({})", self.type_name)
    }
}

/// A stored value with its OCC metadata.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The value.
    pub value: StoredValue,
    /// Its version (1 after insert, +1 per commit).
    pub version: u64,
    /// When that version was written.
    pub last_modified: SystemTime,
}

/// One write of a commit.
#[derive(Debug, Clone)]
pub struct Write {
    /// The entity to write.
    pub key: EntityKey,
    /// The version the writer read; the write applies only if it is still current.
    pub expected_version: u64,
    /// The new value.
    pub value: StoredValue,
}

/// One delete of a commit: the entity must still be at `expected_version` (and exist); it then
/// becomes a tombstone at `expected_version + 1` (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The entity to delete.
    pub key: EntityKey,
    /// The version the deleter read; the delete applies only if it is still current.
    pub expected_version: u64,
}

/// One read of a commit: not written, but validated with the writes. The commit applies only
/// if the entity is still at `version` (so a call that read it cannot commit over a newer
/// state: no write skew).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The entity read.
    pub key: EntityKey,
    /// The version read.
    pub version: u64,
}

/// An atomic compare-and-commit of one or more writes on behalf of one operation.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The operation committing (stores with a ledger record it in the same transaction).
    pub op_id: OpId,
    /// The operation's type (its function name).
    pub op_type: &'static str,
    /// The operation's effective priority (for ledgers).
    pub priority: OperationPriority,
    /// Which attempt of the operation this commit is (1 for the first).
    pub attempt: u32,
    /// The writes, all or nothing. A write expecting version `0` creates its entity.
    pub writes: Vec<Write>,
    /// The deletes, with the writes: all or nothing.
    pub deletes: Vec<Delete>,
    /// Entities read but not written: each must still be at the version read, or nothing is
    /// applied ([`CommitOutcome::Conflict`] names it). A key appears at most once across
    /// `writes`, `deletes` and `reads`.
    pub reads: Vec<Read>,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Every write and delete applied; the new versions, in the order of the writes (a
    /// delete's tombstone is at its expected version + 1).
    Committed {
        /// New version per write.
        versions: Vec<u64>,
        /// The commit time recorded as last-modified.
        last_modified: SystemTime,
    },
    /// Nothing applied: this key (written or read) was not at its expected version.
    Conflict {
        /// The first key found stale.
        key: EntityKey,
        /// The version the writer expected (or the reader read).
        expected: u64,
        /// The version found, if the store reports it.
        actual: Option<u64>,
    },
}

/// Checks that `value` is the entity `key` names: [`StoreError::KeyMismatch`] if its type or
/// id differ. What every [`EntityStore::insert`] and, per write, [`EntityStore::commit`] checks
/// before writing anything.
///
/// # Errors
///
/// [`StoreError::KeyMismatch`] with both keys when `value.entity_key()` is not `key`.
///
/// ```
/// use std::sync::Arc;
/// use conflict_runtime::prelude::*;
/// use conflict_runtime::store::{check_key, StoredValue};
/// use conflict_runtime::{entity::EntityKey, store::StoreError};
///
/// // (Doctests are linked into one program, where entity type names must be unique.)
/// #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
/// struct Parcel {
///     #[entity(id)]
///     id: EntityId,
/// }
///
/// let a = Parcel { id: EntityId::new() };
/// let value: StoredValue = Arc::new(a.clone());
/// assert!(check_key(&a.key(), &value).is_ok());
/// let elsewhere = EntityKey::new(Parcel::TYPE_NAME, EntityId::new());
/// assert!(matches!(check_key(&elsewhere, &value), Err(StoreError::KeyMismatch { .. })));
/// ```
pub fn check_key(key: &EntityKey, value: &StoredValue) -> Result<(), StoreError> {
    let found = value.entity_key();
    if found == *key {
        Ok(())
    } else {
        Err(StoreError::KeyMismatch {
            key: key.clone(),
            found,
        })
    }
}

/// [`check_key`] for every write of a commit, in order (the first mismatch), and no key twice
/// across writes, deletes and reads ([`StoreError::DuplicateWrite`]: a commit names an entity
/// once only).
pub(crate) fn check_writes(commit: &Commit) -> Result<(), StoreError> {
    let (writes, deletes, reads) = (&commit.writes, &commit.deletes, &commit.reads);
    writes
        .iter()
        .try_for_each(|w| check_key(&w.key, &w.value))?;
    if writes.len() + deletes.len() + reads.len() > 1 {
        let mut keys: Vec<&EntityKey> = writes
            .iter()
            .map(|w| &w.key)
            .chain(deletes.iter().map(|d| &d.key))
            .chain(reads.iter().map(|r| &r.key))
            .collect();
        keys.sort_unstable();
        if let Some(pair) = keys.windows(2).find(|p| p[0] == p[1]) {
            return Err(StoreError::DuplicateWrite {
                key: pair[0].clone(),
            });
        }
    }
    Ok(())
}

/// The contract every backend implements. See the [module docs](self) for the guarantees.
///
/// Implementations must be safe to call from many tasks at once and must never hold an entity
/// in an intermediate state visible to `load`. They must refuse a value stored under another
/// entity's key ([`check_key`]) before any I/O, applying nothing.
pub trait EntityStore: Send + Sync + 'static {
    /// A short name for diagnostics (`"memory"`, `"postgres"`).
    fn name(&self) -> &'static str;

    /// Reads the current value and metadata of `key`; `Ok(None)` if it does not exist (never
    /// did, or was deleted).
    fn load<'a>(
        &'a self,
        key: &'a EntityKey,
        codec: EntityCodec,
    ) -> StoreFuture<'a, Option<Snapshot>>;

    /// Reads several entities as one consistent snapshot: the values and versions they all had
    /// at one instant (a commit of several of them is seen whole or not at all). `None` for a
    /// key that does not exist; results in the order of `keys`.
    ///
    /// The provided implementation reads the keys one by one until two rounds in a row find
    /// the same versions (versions only grow, so each key held its version in between: a
    /// consistent instant), at most 64 rounds, then fails with [`StoreError::Backend`].
    /// Backends that can read atomically override it (both built-in ones do).
    fn load_many<'a>(
        &'a self,
        keys: &'a [(EntityKey, EntityCodec)],
    ) -> StoreFuture<'a, Vec<Option<Snapshot>>> {
        Box::pin(async move {
            let mut last: Option<Vec<Option<Snapshot>>> = None;
            for _ in 0..64 {
                let mut round = Vec::with_capacity(keys.len());
                for (key, codec) in keys {
                    round.push(self.load(key, *codec).await?);
                }
                if let Some(prev) = &last {
                    let same = prev.iter().zip(&round).all(|(a, b)| {
                        a.as_ref().map(|s| s.version) == b.as_ref().map(|s| s.version)
                    });
                    if same {
                        return Ok(round);
                    }
                }
                last = Some(round);
            }
            Err(StoreError::Backend {
                message: format!(
                    "store `{}` changed under 64 rounds of reading {} entities: no consistent \
                     snapshot",
                    self.name(),
                    keys.len()
                ),
                source: None,
            })
        })
    }

    /// Stores a new entity at version 1 (or, over a deleted entity's tombstone, at the
    /// tombstone's version + 1); [`StoreError::AlreadyExists`] if the key holds an entity.
    ///
    /// [`StoreError::KeyMismatch`], storing nothing, if `value` is not the entity `key` names
    /// (`value.entity_key() != key`).
    fn insert(&self, key: EntityKey, value: StoredValue) -> StoreFuture<'_, Snapshot>;

    /// Applies all writes and deletes atomically if every expected version is current (`0`:
    /// the key holds no entity) and every read entity is still at the version read. A commit
    /// without writes or deletes only validates its reads (and records nothing).
    ///
    /// [`StoreError::KeyMismatch`] for the first write (in the order given) whose value is not
    /// the entity its key names, and [`StoreError::DuplicateWrite`] if a key appears twice
    /// (across writes, deletes and reads); then nothing is applied, whatever the versions.
    fn commit(&self, commit: Commit) -> StoreFuture<'_, CommitOutcome>;
}

/// The store the runtime uses: the embedded store is called directly (no boxing on the hot
/// path), any other through the trait.
#[derive(Clone)]
pub(crate) enum Backend {
    Memory(Arc<MemoryStore>),
    Dyn(Arc<dyn EntityStore>),
}

impl Backend {
    /// Whether loads cross a network (worth caching around).
    pub(crate) fn is_remote(&self) -> bool {
        matches!(self, Self::Dyn(_))
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Memory(m) => m.name(),
            Self::Dyn(d) => d.name(),
        }
    }

    /// Reads `key`; with the embedded store, through (and into) the handle's slot cache.
    pub(crate) async fn load(
        &self,
        key: &EntityKey,
        codec: EntityCodec,
        cache: &SlotCache,
    ) -> Result<Option<Snapshot>, StoreError> {
        match self {
            Self::Memory(m) => Ok(match cache.get() {
                Some(slot) => slot.snapshot(),
                None => m
                    .slot(key)
                    .and_then(|slot| cache.get_or_init(|| slot).snapshot()),
            }),
            Self::Dyn(d) => d.load(key, codec).await,
        }
    }

    /// Reads several entities as one consistent snapshot (see [`EntityStore::load_many`]);
    /// with the embedded store, through (and into) the handles' slot caches.
    pub(crate) async fn load_many(
        &self,
        targets: &[(&EntityKey, EntityCodec, &SlotCache)],
    ) -> Result<Vec<Option<Snapshot>>, StoreError> {
        match self {
            Self::Memory(m) => Ok(m.snapshot_many(targets)),
            Self::Dyn(d) => {
                let keys: Vec<(EntityKey, EntityCodec)> = targets
                    .iter()
                    .map(|(k, codec, _)| ((*k).clone(), *codec))
                    .collect();
                let got = d.load_many(&keys).await?;
                if got.len() == keys.len() {
                    Ok(got)
                } else {
                    Err(StoreError::Backend {
                        message: format!(
                            "store `{}` answered {} of {} entities read together",
                            d.name(),
                            got.len(),
                            keys.len()
                        ),
                        source: None,
                    })
                }
            }
        }
    }

    /// Commits several writes and deletes and validates reads, all or nothing.
    pub(crate) async fn commit_many(
        &self,
        op: CommitInfo,
        writes: Vec<Write>,
        deletes: Vec<Delete>,
        reads: Vec<Read>,
    ) -> Result<CommitOutcome, StoreError> {
        let commit = Commit {
            op_id: op.op_id,
            op_type: op.op_type,
            priority: op.priority,
            attempt: op.attempt,
            writes,
            deletes,
            reads,
        };
        match self {
            Self::Memory(m) => m.commit(commit).await,
            Self::Dyn(d) => d.commit(commit).await,
        }
    }

    /// [`commit_many`](Self::commit_many) as a future that owns what it needs (to run in a
    /// task of its own); `None` for the embedded store, whose commit never awaits.
    pub(crate) fn commit_many_task(
        &self,
        op: CommitInfo,
        writes: &[Write],
        deletes: &[Delete],
        reads: &[Read],
    ) -> Option<impl Future<Output = Result<CommitOutcome, StoreError>> + Send + 'static> {
        match self {
            Self::Memory(_) => None,
            Self::Dyn(d) => {
                let d = d.clone();
                let commit = Commit {
                    op_id: op.op_id,
                    op_type: op.op_type,
                    priority: op.priority,
                    attempt: op.attempt,
                    writes: writes.to_vec(),
                    deletes: deletes.to_vec(),
                    reads: reads.to_vec(),
                };
                Some(async move { d.commit(commit).await })
            }
        }
    }

    /// Stores a new entity; with the embedded store, also returns its slot for the handle.
    pub(crate) async fn insert(
        &self,
        key: EntityKey,
        value: StoredValue,
        now: SystemTime,
    ) -> Result<(Snapshot, SlotCache), StoreError> {
        match self {
            Self::Memory(m) => {
                let (snap, slot) = m.put_new(key, value, now)?;
                Ok((snap, SlotCache::from(slot)))
            }
            Self::Dyn(d) => Ok((d.insert(key, value).await?, SlotCache::new())),
        }
    }

    /// Commits one write; the fast path of every single-entity operation. `now` is the commit
    /// time the embedded store records as last-modified (a database uses its own clock).
    pub(crate) async fn commit_one(
        &self,
        op: CommitInfo,
        write: Write,
        cache: &SlotCache,
        now: SystemTime,
    ) -> Result<Cas, StoreError> {
        match self {
            Self::Memory(m) => Ok(match cache.get() {
                Some(slot) => match slot.cas(write.expected_version, write.value, now) {
                    Ok(v) => Cas::Committed(v),
                    Err(actual) => Cas::Conflict(actual),
                },
                None => m.compare_and_set(&write.key, write.expected_version, write.value),
            }),
            // Boxed: its state (the commit it builds) would make every call's future larger,
            // embedded store included.
            Self::Dyn(d) => Box::pin(commit_dyn(d, op, write)).await,
        }
    }

    /// For a store whose commit awaits: the single-write commit as a future that owns what it
    /// needs, to run in a task of its own, so that the commit settles (and its outcome is
    /// known) even if the caller stops waiting. `None` for the embedded store, whose commit
    /// never awaits; then [`commit_one`](Self::commit_one) commits in place.
    pub(crate) fn commit_task(
        &self,
        op: CommitInfo,
        write: &Write,
    ) -> Option<impl Future<Output = Result<Cas, StoreError>> + Send + 'static> {
        match self {
            Self::Memory(_) => None,
            Self::Dyn(d) => {
                let (d, write) = (d.clone(), write.clone());
                Some(async move { commit_dyn(&d, op, write).await })
            }
        }
    }
}

async fn commit_dyn(
    d: &Arc<dyn EntityStore>,
    op: CommitInfo,
    write: Write,
) -> Result<Cas, StoreError> {
    let outcome = d
        .commit(Commit {
            op_id: op.op_id,
            op_type: op.op_type,
            priority: op.priority,
            attempt: op.attempt,
            writes: vec![write],
            deletes: Vec::new(),
            reads: Vec::new(),
        })
        .await?;
    match outcome {
        CommitOutcome::Committed { versions, .. } => match versions.first() {
            Some(v) => Ok(Cas::Committed(*v)),
            None => Err(StoreError::Backend {
                message: format!("store `{}` reported a commit without a version", d.name()),
                source: None,
            }),
        },
        CommitOutcome::Conflict { actual, .. } => Ok(Cas::Conflict(actual)),
    }
}

/// A handle's shortcut to its entity's slot in the embedded store (set on first use; the
/// embedded store never removes a slot — a deleted entity's stays as its tombstone — so a
/// cached slot stays valid).
pub(crate) type SlotCache = std::sync::OnceLock<Arc<memory::Slot>>;

/// Who is committing (what a ledger records beside the writes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommitInfo {
    pub(crate) op_id: OpId,
    pub(crate) op_type: &'static str,
    pub(crate) priority: OperationPriority,
    pub(crate) attempt: u32,
}

/// The outcome of a single-write commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cas {
    /// Applied; the new version.
    Committed(u64),
    /// Not applied; the version found, if known.
    Conflict(Option<u64>),
}
