//! The floor: the least work an uncontended call of a staging-then-OCC design must do, written
//! out by hand so that its cost is measured in the same run as everything else.
//!
//! Entities are found by key at run time, so a call needs one lookup in a concurrent hash map
//! (the framework's own map type, `papaya`, keyed by its own [`EntityKey`]). Then:
//!
//! 1. staging: lock the target's state, check it is idle, mark it executing, unlock;
//! 2. snapshot: lock the slot, copy the version and clone the `Arc` of the value, unlock;
//! 3. clone the entity and run the body on the copy;
//! 4. commit: allocate the new `Arc`, lock the slot, compare the version, swap, unlock, free the
//!    old value;
//! 5. leave staging: lock, clear the executing mark, unlock;
//! 6. count the call and its outcome (two relaxed adds).
//!
//! That is one hash lookup, three uncontended lock/unlock pairs, one allocation and one free, and
//! a handful of reference-count updates and per-thread counter adds. It has no priorities, no waiting room, no
//! events, no tracing, no cancellation safety: it is a lower bound, not an alternative. A call
//! that finds its target busy is refused at once, so it only applies to the uncontended
//! scenarios (a contended one would need a waiting room).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use conflict_runtime::{Entity, entity::EntityKey};

use crate::harness::{Call, Workload};
use crate::{AMOUNT, Body, Item, rmw};

struct Slot {
    executing: Mutex<bool>,
    value: Mutex<(u64, Arc<Item>)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here assigns whole values and cannot panic halfway.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Map = papaya::HashMap<EntityKey, Arc<Slot>, foldhash::fast::RandomState>;

const SHARDS: usize = 16;

/// Per-thread counters (calls, commits), as the framework's metrics keep them.
#[repr(align(128))]
#[derive(Default)]
struct Shard([AtomicU64; 2]);

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// `n` entities in a concurrent map, updated through the minimal staging-then-OCC path.
pub struct Floor {
    map: Map,
    keys: Vec<EntityKey>,
    counters: Box<[Shard]>,
}

impl Floor {
    /// `n` fresh entities.
    #[must_use]
    pub fn new(n: usize) -> Self {
        let map = Map::with_hasher(foldhash::fast::RandomState::default());
        let mut keys = Vec::with_capacity(n);
        {
            let guard = map.guard();
            for _ in 0..n {
                let item = Item::new();
                let key = item.key();
                map.insert(
                    key.clone(),
                    Arc::new(Slot {
                        executing: Mutex::new(false),
                        value: Mutex::new((1, Arc::new(item))),
                    }),
                    &guard,
                );
                keys.push(key);
            }
        }
        Self {
            map,
            keys,
            counters: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

impl Workload for Floor {
    async fn call(&self, entity: usize, body: Body) -> Call {
        self.counters[shard_index()].0[0].fetch_add(1, Ordering::Relaxed);
        let slot = {
            let guard = self.map.guard();
            match self.map.get(&self.keys[entity], &guard) {
                Some(slot) => slot.clone(),
                None => panic!("a floor entity is missing from its map"),
            }
        };
        {
            let mut ex = lock(&slot.executing);
            if *ex {
                // Busy (two tasks of the spread scenario met on one entity, which is rare):
                // refuse, and the caller tries again.
                return Call {
                    committed: false,
                    body_runs: 0,
                    refused: false,
                };
            }
            *ex = true;
        }
        let (version, snapshot) = {
            let cell = lock(&slot.value);
            (cell.0, cell.1.clone())
        };
        let mut item = (*snapshot).clone();
        drop(snapshot);
        rmw(&mut item, body, AMOUNT).await;
        let new = Arc::new(item);
        let old = {
            let mut cell = lock(&slot.value);
            assert_eq!(cell.0, version, "nothing else writes while staged");
            cell.0 = version + 1;
            std::mem::replace(&mut cell.1, new)
        };
        drop(old);
        *lock(&slot.executing) = false;
        self.counters[shard_index()].0[1].fetch_add(1, Ordering::Relaxed);
        Call::FIRST_TRY
    }

    async fn totals(&self) -> (u64, u64) {
        let guard = self.map.guard();
        let mut sums = (0, 0);
        for key in &self.keys {
            if let Some(slot) = self.map.get(key, &guard) {
                let cell = lock(&slot.value);
                sums.0 += cell.1.counter;
                sums.1 += cell.1.total;
            }
        }
        sums
    }
}
