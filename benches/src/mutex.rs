//! The pessimistic baseline: one `tokio::sync::Mutex` per entity, locked for the whole
//! read-modify-write — across the await in [`Body::Await`], which is what a user who needs the
//! update to be atomic would write. It never wastes an attempt; waiting callers queue (tokio's
//! mutex is fair, first in first out).

use std::sync::Arc;

use tokio::sync::Mutex;

use crate::harness::{Call, Workload};
use crate::{AMOUNT, Body, Item, rmw};

/// `n` entities, each behind its own async mutex.
pub struct MutexPerEntity {
    slots: Vec<Arc<Mutex<Item>>>,
}

impl MutexPerEntity {
    /// `n` fresh entities.
    #[must_use]
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n).map(|_| Arc::new(Mutex::new(Item::new()))).collect(),
        }
    }
}

impl Workload for MutexPerEntity {
    async fn call(&self, entity: usize, body: Body) -> Call {
        let mut item = self.slots[entity].lock().await;
        rmw(&mut item, body, AMOUNT).await;
        Call::FIRST_TRY
    }

    async fn totals(&self) -> (u64, u64) {
        let mut sums = (0, 0);
        for slot in &self.slots {
            let item = slot.lock().await;
            sums.0 += item.counter;
            sums.1 += item.total;
        }
        sums
    }
}
