//! The naive optimistic baseline: a versioned slot per entity and a compare-and-swap loop that
//! retries at once on a version mismatch — no staging, no backoff, no bound on retries.
//!
//! A call snapshots `(version, Arc<Item>)` under a short `std::sync::Mutex` critical section,
//! runs the body on a private clone (awaiting with no lock held), then commits under the same
//! lock only if the version is unchanged; otherwise it starts over. Every start over is a
//! wasted attempt.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::harness::{Call, Workload};
use crate::{AMOUNT, Body, Item, rmw};

struct Slot {
    cell: Mutex<(u64, Arc<Item>)>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, (u64, Arc<Item>)> {
        // The critical sections only copy or assign whole fields and cannot panic halfway.
        self.cell.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `n` entities in versioned slots.
pub struct NaiveOcc {
    slots: Vec<Slot>,
}

impl NaiveOcc {
    /// `n` fresh entities at version 1.
    #[must_use]
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n)
                .map(|_| Slot {
                    cell: Mutex::new((1, Arc::new(Item::new()))),
                })
                .collect(),
        }
    }
}

impl Workload for NaiveOcc {
    async fn call(&self, entity: usize, body: Body) -> Call {
        let slot = &self.slots[entity];
        let mut runs = 0;
        loop {
            runs += 1;
            let (version, snapshot) = {
                let cell = slot.lock();
                (cell.0, cell.1.clone())
            };
            let mut item = (*snapshot).clone();
            drop(snapshot);
            rmw(&mut item, body, AMOUNT).await;
            let new = Arc::new(item);
            let mut cell = slot.lock();
            if cell.0 == version {
                cell.0 = version + 1;
                let old = std::mem::replace(&mut cell.1, new);
                drop(cell);
                drop(old);
                return Call {
                    committed: true,
                    body_runs: runs,
                    refused: false,
                };
            }
        }
    }

    async fn totals(&self) -> (u64, u64) {
        let mut sums = (0, 0);
        for slot in &self.slots {
            let cell = slot.lock();
            sums.0 += cell.1.counter;
            sums.1 += cell.1.total;
        }
        sums
    }
}
