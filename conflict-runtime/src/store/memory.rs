//! The embedded in-memory store: the default backend.
//!
//! A lock-free concurrent map ([`papaya`]) from key to slot; each slot guards its value and
//! version with a short critical section that never spans an `.await`. Loads clone an `Arc`;
//! commits compare the version and swap the `Arc`. Multi-write commits lock the slots they touch
//! in key order, so they are atomic and cannot deadlock with each other.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use conflict_core::{EntityKey, StoreError};

use super::{
    Cas, Commit, CommitOutcome, EntityCodec, EntityStore, Snapshot, StoreFuture, StoredValue,
    check_key, check_writes,
};

type Map = papaya::HashMap<EntityKey, Arc<Slot>, foldhash::fast::RandomState>;

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

/// One stored entity. Handles keep an `Arc` to it, so the hot path skips the map.
pub(crate) struct Slot {
    cell: Mutex<Snapshot>,
}

impl Slot {
    /// The current value and metadata.
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    /// Compare-and-set: the new version, or the version found.
    pub(crate) fn cas(
        &self,
        expected: u64,
        value: StoredValue,
        now: SystemTime,
    ) -> Result<u64, Option<u64>> {
        let mut cell = self.lock();
        if cell.version != expected {
            return Err(Some(cell.version));
        }
        let version = expected + 1;
        let old = std::mem::replace(
            &mut *cell,
            Snapshot {
                value,
                version,
                last_modified: now,
            },
        );
        drop(cell);
        // The previous value may be the last reference to a large entity: free it outside the
        // critical section.
        drop(old);
        Ok(version)
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
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
        Self {
            map: Map::with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// How many entities are stored.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn get(&self, key: &EntityKey) -> Option<Snapshot> {
        self.slot(key).map(|s| s.snapshot())
    }

    /// The slot of `key`, to keep and use without further lookups.
    pub(crate) fn slot(&self, key: &EntityKey) -> Option<Arc<Slot>> {
        let guard = self.map.guard();
        self.map.get(key, &guard).cloned()
    }

    pub(crate) fn put_new(
        &self,
        key: EntityKey,
        value: StoredValue,
        now: SystemTime,
    ) -> Result<(Snapshot, Arc<Slot>), StoreError> {
        let snap = Snapshot {
            value,
            version: 1,
            last_modified: now,
        };
        let guard = self.map.guard();
        let slot = Arc::new(Slot {
            cell: Mutex::new(snap.clone()),
        });
        match self.map.try_insert(key.clone(), slot.clone(), &guard) {
            Ok(_) => Ok((snap, slot)),
            Err(_) => Err(StoreError::AlreadyExists { key }),
        }
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
        let guard = self.map.guard();
        let Some(slot) = self.map.get(key, &guard) else {
            return Err(None);
        };
        let now = SystemTime::now();
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
        let locked: Vec<(usize, MutexGuard<'_, Snapshot>)> = order
            .iter()
            .filter_map(|&i| Some((i, slots[i].as_ref()?.lock())))
            .collect();
        let mut out = vec![None; targets.len()];
        for (i, cell) in &locked {
            out[*i] = Some((**cell).clone());
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
        let guard = self.map.guard();
        // Writes first, then reads, as one list of (key, expected version, value to write).
        let all: Vec<(&EntityKey, u64, Option<&StoredValue>)> = commit
            .writes
            .iter()
            .map(|w| (&w.key, w.expected_version, Some(&w.value)))
            .chain(commit.reads.iter().map(|r| (&r.key, r.version, None)))
            .collect();
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.sort_by(|&a, &b| all[a].0.cmp(all[b].0));
        // Lock every slot in key order (a global order, so two multi-writes never deadlock).
        // No key appears twice: `commit` refused that (`DuplicateWrite`), so no slot is
        // locked twice.
        debug_assert!(order.windows(2).all(|p| all[p[0]].0 != all[p[1]].0));
        let mut locked = Vec::with_capacity(order.len());
        for &i in &order {
            let (key, expected, _) = all[i];
            let Some(slot) = self.map.get(key, &guard) else {
                return CommitOutcome::Conflict {
                    key: key.clone(),
                    expected,
                    actual: None,
                };
            };
            let cell = slot.lock();
            if cell.version != expected {
                return CommitOutcome::Conflict {
                    key: key.clone(),
                    expected,
                    actual: Some(cell.version),
                };
            }
            locked.push((i, cell));
        }
        let now = SystemTime::now();
        let mut versions = vec![0; commit.writes.len()];
        for (i, cell) in &mut locked {
            let (_, expected, value) = all[*i];
            let Some(value) = value else { continue };
            cell.version = expected + 1;
            cell.value = value.clone();
            cell.last_modified = now;
            versions[*i] = cell.version;
        }
        CommitOutcome::Committed {
            versions,
            last_modified: now,
        }
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
        let r = check_key(&key, &value).and_then(|()| {
            self.put_new(key, value, SystemTime::now())
                .map(|(snap, _)| snap)
        });
        Box::pin(async move { r })
    }

    fn commit(&self, mut commit: Commit) -> StoreFuture<'_, CommitOutcome> {
        // Checked here, at the public entry point, and not in `cas`/`commit_many`: the runtime's
        // own fast path (`Backend::commit_one`) writes only values whose type and id it has
        // already checked (`IdentityChanged`).
        if let Err(e) = check_writes(&commit.writes, &commit.reads) {
            return Box::pin(async move { Err(e) });
        }
        let r = if commit.writes.len() == 1 && commit.reads.is_empty() {
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
        } else if commit.writes.is_empty() && commit.reads.is_empty() {
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
