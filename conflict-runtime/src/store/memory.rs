//! The embedded in-memory store: the default backend.
//!
//! A lock-free concurrent map ([`papaya`], through `crate::sync`) from key to slot; each slot guards its value and
//! version with a short critical section that never spans an `.await`. Loads clone an `Arc`;
//! commits compare the version and swap the `Arc`. Multi-write commits lock the slots they touch
//! in key order, so they are atomic and cannot deadlock with each other.
//!
//! A slot is never removed: a deleted entity's slot stays as its tombstone (no value, its
//! version kept), and a create over it continues its versions. A create of a key never seen
//! adds a slot for it only when it applies.

use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use conflict_core::{EntityKey, StoreError};

use super::{
    Cas, Commit, CommitOutcome, EntityCodec, EntityStore, Snapshot, StoreFuture, StoredValue,
    check_writes,
};
use crate::sync::{ConcurrentMap, Mutex, MutexGuard};

type Map = ConcurrentMap<EntityKey, Arc<Slot>>;

/// The embedded store. Cheap to share (`Arc`), safe from any number of tasks.
///
/// ```
/// use conflict_runtime::store::{MemoryStore, EntityStore};
/// let store = MemoryStore::new();
/// assert_eq!(store.name(), "memory");
/// assert_eq!(store.len(), 0);
/// ```
pub struct MemoryStore {
    map: Map,
}

/// One stored entity (or its tombstone). Handles keep an `Arc` to it, so the hot path skips the
/// map.
pub(crate) struct Slot {
    cell: Mutex<Cell>,
}

/// A slot's content: `value` is `None` for a tombstone (a deleted entity, or the empty slot a
/// create of a new key starts from, at version 0).
struct Cell {
    value: Option<StoredValue>,
    version: u64,
    last_modified: SystemTime,
}

impl Cell {
    fn snapshot(&self) -> Option<Snapshot> {
        Some(Snapshot {
            value: self.value.clone()?,
            version: self.version,
            last_modified: self.last_modified,
        })
    }

    /// Whether a write or delete expecting `expected` applies: the entity is live at that
    /// version, or (a write expecting `0`: a create) there is none. The version found
    /// otherwise (`None`: no entity).
    fn admits(&self, expected: u64, write: bool) -> Result<(), Option<u64>> {
        match (&self.value, expected) {
            (None, 0) if write => Ok(()),
            (None, _) => Err(None),
            (Some(_), e) if e == self.version => Ok(()),
            (Some(_), _) => Err(Some(self.version)),
        }
    }

    /// Sets the next version (`value` `None`: deletes), returning what it held.
    fn apply(&mut self, value: Option<StoredValue>, now: SystemTime) -> Option<StoredValue> {
        self.version += 1;
        self.last_modified = now;
        std::mem::replace(&mut self.value, value)
    }
}

impl Slot {
    /// A slot holding no entity, at version 0 (what a create of a new key fills).
    fn empty() -> Self {
        Self {
            cell: Mutex::new(Cell {
                value: None,
                version: 0,
                last_modified: SystemTime::UNIX_EPOCH,
            }),
        }
    }

    /// The current value and metadata; `None` if the entity is deleted.
    pub(crate) fn snapshot(&self) -> Option<Snapshot> {
        self.lock().snapshot()
    }

    /// Compare-and-set: the new version, or the version found (`None`: no entity).
    pub(crate) fn cas(
        &self,
        expected: u64,
        value: StoredValue,
        now: SystemTime,
    ) -> Result<u64, Option<u64>> {
        let mut cell = self.lock();
        cell.admits(expected, true)?;
        let old = cell.apply(Some(value), now);
        let version = cell.version;
        drop(cell);
        // The previous value may be the last reference to a large entity: free it outside the
        // critical section.
        drop(old);
        Ok(version)
    }

    fn lock(&self) -> MutexGuard<'_, Cell> {
        // A panic while holding the lock cannot leave the snapshot half-written: every critical
        // section below assigns whole fields after all fallible work, so the poison flag carries
        // no information and is ignored.
        self.cell.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entities", &self.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self { map: Map::new() }
    }

    /// How many entities are stored (deleted ones not counted). Walks the whole map.
    #[must_use]
    pub fn len(&self) -> usize {
        let mut live = 0;
        self.map.for_each(|_, slot| {
            if slot.lock().value.is_some() {
                live += 1;
            }
        });
        live
    }

    /// Whether the store holds no entity.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many keys the store keeps, tombstones of deleted entities included.
    #[must_use]
    pub fn keys_kept(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn get(&self, key: &EntityKey) -> Option<Snapshot> {
        self.slot(key)?.snapshot()
    }

    /// The slot of `key`, adding an empty one (a tombstone at version 0) if the key was never
    /// seen: what a create locks.
    fn slot_or_empty(&self, key: &EntityKey) -> Arc<Slot> {
        if let Some(slot) = self.slot(key) {
            return slot;
        }
        let empty = Arc::new(Slot::empty());
        match self.map.try_insert(key.clone(), empty.clone()) {
            Ok(()) => empty,
            Err(taken) => taken,
        }
    }

    /// The slot of `key`, to keep and use without further lookups.
    pub(crate) fn slot(&self, key: &EntityKey) -> Option<Arc<Slot>> {
        self.map.get(key)
    }

    /// Stores a new entity (over a tombstone: at its version + 1); `AlreadyExists` if the key
    /// holds one. Refuses a value of another key ([`super::check_key`]) first.
    pub(crate) fn put_new(
        &self,
        key: EntityKey,
        value: StoredValue,
        now: SystemTime,
    ) -> Result<(Snapshot, Arc<Slot>), StoreError> {
        super::check_key(&key, &value)?;
        let slot = self.slot_or_empty(&key);
        let version = slot
            .cas(0, value.clone(), now)
            .map_err(|_| StoreError::AlreadyExists { key })?;
        let snap = Snapshot {
            value,
            version,
            last_modified: now,
        };
        Ok((snap, slot))
    }

    pub(crate) fn compare_and_set(
        &self,
        key: &EntityKey,
        expected: u64,
        value: StoredValue,
    ) -> Cas {
        match self.cas(key, expected, value) {
            Ok((version, _)) => Cas::Committed(version),
            Err(actual) => Cas::Conflict(actual),
        }
    }

    /// The single-write commit: the new version and its time, or the version found.
    fn cas(
        &self,
        key: &EntityKey,
        expected: u64,
        value: StoredValue,
    ) -> Result<(u64, SystemTime), Option<u64>> {
        let now = SystemTime::now();
        if expected == 0 {
            // A create: of a key never seen, too.
            return self.slot_or_empty(key).cas(0, value, now).map(|v| (v, now));
        }
        let Some(slot) = self.map.get(key) else {
            return Err(None);
        };
        slot.cas(expected, value, now).map(|v| (v, now))
    }

    /// Several entities as of one instant: their slots are locked together (in key order,
    /// like a multi-write commit, so a commit is seen whole or not at all), then copied.
    pub(crate) fn snapshot_many(
        &self,
        targets: &[(&EntityKey, super::EntityCodec, &super::SlotCache)],
    ) -> Vec<Option<Snapshot>> {
        let slots: Vec<Option<Arc<Slot>>> = targets
            .iter()
            .map(|(key, _, cache)| match cache.get() {
                Some(slot) => Some(slot.clone()),
                None => self
                    .slot(key)
                    .map(|slot| cache.get_or_init(|| slot).clone()),
            })
            .collect();
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.sort_by(|&a, &b| targets[a].0.cmp(targets[b].0));
        // A key named twice is locked once (its slot's mutex is not reentrant).
        order.dedup_by(|b, a| targets[*a].0 == targets[*b].0);
        let locked: Vec<(usize, MutexGuard<'_, Cell>)> = order
            .iter()
            .filter_map(|&i| Some((i, slots[i].as_ref()?.lock())))
            .collect();
        let mut out = vec![None; targets.len()];
        for (i, cell) in &locked {
            out[*i] = cell.snapshot();
        }
        drop(locked);
        for i in 0..targets.len() {
            if out[i].is_none() && slots[i].is_some() {
                // A repeated key: the copy taken under the locks.
                let first = (0..i).find(|&j| targets[j].0 == targets[i].0);
                out[i] = first.and_then(|j| out[j].clone());
            }
        }
        out
    }

    fn commit_many(&self, commit: &Commit) -> CommitOutcome {
        loop {
            if let Some(outcome) = self.try_commit_many(commit) {
                return outcome;
            }
        }
    }

    /// One try of [`commit_many`](Self::commit_many); `None` if a create met a slot added for
    /// its key meanwhile (nothing was applied: try again, it is in the map now).
    fn try_commit_many(&self, commit: &Commit) -> Option<CommitOutcome> {
        // Writes, deletes, then reads, as one list of (key, expected version, what to do, its
        // slot). Each key's slot is looked up once, here (slots are never removed, so it stays
        // the key's). A create of a key without a slot gets a fresh one (`true`), added to the
        // map only once everything else is checked (so a commit that conflicts on a checked key
        // adds no slot): made here, locked, and added while locked. Nobody can hold it before,
        // so taking it out of key order never waits; if another commit adds a slot for that key
        // first, this one starts over. (A commit creating several new keys that loses that race
        // on a later one has already added the earlier ones' fresh slots: empty, at version 0,
        // exactly what a key never seen looks like to every reader and to a later create; only
        // `keys_kept` counts them. They cannot be removed: slots are cached by handles.)
        let lookup = |key: &EntityKey, expected: u64, change: Change<'_>| match self.map.get(key) {
            Some(slot) => Some((slot, false)),
            None => (expected == 0 && matches!(change, Change::Write(_)))
                .then(|| (Arc::new(Slot::empty()), true)),
        };
        let all: Vec<Entry<'_>> = commit
            .writes
            .iter()
            .map(|w| (&w.key, w.expected_version, Change::Write(&w.value)))
            .chain(
                commit
                    .deletes
                    .iter()
                    .map(|d| (&d.key, d.expected_version, Change::Delete)),
            )
            .chain(
                commit
                    .reads
                    .iter()
                    .map(|r| (&r.key, r.version, Change::Read)),
            )
            .map(|(key, expected, change)| (key, expected, change, lookup(key, expected, change)))
            .collect();
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.sort_by(|&a, &b| all[a].0.cmp(all[b].0));
        // Lock every slot in key order (a global order, so two multi-writes never deadlock).
        // No key appears twice: `commit` refused that (`DuplicateWrite`), so no slot is
        // locked twice.
        debug_assert!(order.windows(2).all(|p| all[p[0]].0 != all[p[1]].0));
        let mut locked = Vec::with_capacity(order.len());
        let mut pending = Vec::new();
        for &i in &order {
            let (key, expected, change, ref slot) = all[i];
            let slot = match slot {
                Some((_, true)) => {
                    pending.push(i);
                    continue;
                }
                Some((slot, false)) => slot,
                None => {
                    return Some(CommitOutcome::Conflict {
                        key: key.clone(),
                        expected,
                        actual: None,
                    });
                }
            };
            let cell = slot.lock();
            // A read must find its entity live at the version read (never a tombstone).
            let ok = match change {
                Change::Read => cell.value.is_some() && cell.version == expected,
                Change::Write(_) => cell.admits(expected, true).is_ok(),
                Change::Delete => cell.admits(expected, false).is_ok(),
            };
            if !ok {
                return Some(CommitOutcome::Conflict {
                    key: key.clone(),
                    expected,
                    actual: cell.value.as_ref().map(|_| cell.version),
                });
            }
            locked.push((i, cell));
        }
        for i in pending {
            let Some((slot, _)) = &all[i].3 else {
                continue;
            };
            let cell = slot.lock();
            if self
                .map
                .try_insert(all[i].0.clone(), Arc::clone(slot))
                .is_err()
            {
                return None;
            }
            locked.push((i, cell));
        }
        let now = SystemTime::now();
        let mut versions = vec![0; commit.writes.len()];
        for (i, cell) in &mut locked {
            let value = match all[*i].2 {
                Change::Read => continue,
                Change::Write(value) => Some(value.clone()),
                Change::Delete => None,
            };
            // (The value replaced is freed here, under the locks: collecting it to free later
            // would cost every multi-commit an allocation.)
            drop(cell.apply(value, now));
            if let Some(v) = versions.get_mut(*i) {
                *v = cell.version;
            }
        }
        drop(locked);
        Some(CommitOutcome::Committed {
            versions,
            last_modified: now,
        })
    }
}

impl EntityStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn load<'a>(
        &'a self,
        key: &'a EntityKey,
        _codec: EntityCodec,
    ) -> StoreFuture<'a, Option<Snapshot>> {
        let r = self.get(key);
        Box::pin(async move { Ok(r) })
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [(EntityKey, EntityCodec)],
    ) -> StoreFuture<'a, Vec<Option<Snapshot>>> {
        let caches: Vec<super::SlotCache> = keys.iter().map(|_| super::SlotCache::new()).collect();
        let targets: Vec<(&EntityKey, EntityCodec, &super::SlotCache)> = keys
            .iter()
            .zip(&caches)
            .map(|((k, codec), cache)| (k, *codec, cache))
            .collect();
        let r = self.snapshot_many(&targets);
        Box::pin(async move { Ok(r) })
    }

    fn insert(&self, key: EntityKey, value: StoredValue) -> StoreFuture<'_, Snapshot> {
        let r = self
            .put_new(key, value, SystemTime::now())
            .map(|(snap, _)| snap);
        Box::pin(async move { r })
    }

    fn commit(&self, mut commit: Commit) -> StoreFuture<'_, CommitOutcome> {
        // Checked here, at the public entry point, and not in `cas`/`commit_many`: the runtime's
        // own fast path (`Backend::commit_one`) writes only values whose type and id it has
        // already checked (`IdentityChanged`).
        if let Err(e) = check_writes(&commit) {
            return Box::pin(async move { Err(e) });
        }
        let r = if commit.writes.len() == 1 && commit.reads.is_empty() && commit.deletes.is_empty()
        {
            let w = commit.writes.swap_remove(0);
            match self.cas(&w.key, w.expected_version, w.value) {
                Ok((v, last_modified)) => CommitOutcome::Committed {
                    versions: vec![v],
                    last_modified,
                },
                Err(actual) => CommitOutcome::Conflict {
                    key: w.key,
                    expected: w.expected_version,
                    actual,
                },
            }
        } else if commit.writes.is_empty() && commit.reads.is_empty() && commit.deletes.is_empty() {
            CommitOutcome::Committed {
                versions: Vec::new(),
                last_modified: SystemTime::now(),
            }
        } else {
            self.commit_many(&commit)
        };
        Box::pin(async move { Ok(r) })
    }
}

/// One key of a multi-commit: the key, its expected (or read) version, what to do, and its slot
/// (`true`: a fresh one for a create, not yet in the map; `None`: no slot and not a create).
type Entry<'c> = (&'c EntityKey, u64, Change<'c>, Option<(Arc<Slot>, bool)>);

/// What a multi-commit does to one key.
#[derive(Clone, Copy)]
enum Change<'c> {
    Write(&'c StoredValue),
    Delete,
    Read,
}

#[cfg(all(test, loom))]
mod loom_models;
