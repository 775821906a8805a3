//! The pessimistic baseline on transfers: one `tokio::sync::Mutex` per account; a transfer
//! locks both accounts, the lower index first, and holds both for the whole body — across the
//! await in [`Body::Await`]. Every transfer takes its two locks in the same global order, so
//! two transfers in opposite directions cannot deadlock. It never wastes an attempt.

use std::sync::Arc;

use tokio::sync::Mutex;

use crate::Body;
use crate::harness::{Call, Workload};
use crate::transfer::{AMOUNT, Account, Pair, transfer};

/// `n` accounts, each behind its own async mutex.
pub struct MutexBank {
    slots: Vec<Arc<Mutex<Account>>>,
}

impl MutexBank {
    /// `n` fresh accounts.
    #[must_use]
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n)
                .map(|_| Arc::new(Mutex::new(Account::new())))
                .collect(),
        }
    }
}

impl Workload<Pair> for MutexBank {
    async fn call(&self, pair: Pair, body: Body) -> Call {
        let (first, second) = (pair.from.min(pair.to), pair.from.max(pair.to));
        let mut a = self.slots[first].lock().await;
        let mut b = self.slots[second].lock().await;
        let (from, to) = if pair.from == first {
            (&mut *a, &mut *b)
        } else {
            (&mut *b, &mut *a)
        };
        let refused = transfer(from, to, body, AMOUNT).await.is_err();
        Call {
            committed: !refused,
            body_runs: 1,
            refused,
        }
    }

    async fn totals(&self) -> (u64, u64) {
        let mut sums = (0, 0);
        for slot in &self.slots {
            let account = slot.lock().await;
            sums.0 += account.transfers;
            sums.1 += account.balance;
        }
        sums
    }
}
