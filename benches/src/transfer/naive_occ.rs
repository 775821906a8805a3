//! The naive optimistic baseline on transfers: a versioned slot per account and a two-key
//! compare-and-swap loop that starts over at once on a mismatch — no staging, no backoff, no
//! bound on retries.
//!
//! An attempt snapshots `(version, Arc<Account>)` of the source, then of the destination, each
//! under its own short `std::sync::Mutex` critical section; runs the body on private clones
//! (awaiting with no lock held); then locks both slots in index order (one global order, so no
//! deadlock), and only if both versions are unchanged swaps in both new values and bumps both
//! versions before unlocking. Two unchanged versions mean the two snapshots are the current
//! values at the commit, so the transfer is serializable even though they were taken one after
//! the other. Any mismatch discards the attempt (a wasted attempt) and starts over.
//!
//! A refusal (the source's snapshot is short of the amount) is returned without validation:
//! it commits nothing, and the balances are far too large for one to happen here.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::Body;
use crate::harness::{Call, Workload};
use crate::transfer::{AMOUNT, Account, Pair, transfer};

struct Slot {
    cell: Mutex<(u64, Arc<Account>)>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, (u64, Arc<Account>)> {
        // The critical sections only copy or assign whole fields and cannot panic halfway.
        self.cell.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self) -> (u64, Account) {
        let (version, value) = {
            let cell = self.lock();
            (cell.0, cell.1.clone())
        };
        (version, (*value).clone())
    }
}

/// `n` accounts in versioned slots.
pub struct NaiveOccBank {
    slots: Vec<Slot>,
}

impl NaiveOccBank {
    /// `n` fresh accounts at version 1.
    #[must_use]
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n)
                .map(|_| Slot {
                    cell: Mutex::new((1, Arc::new(Account::new()))),
                })
                .collect(),
        }
    }
}

impl Workload<Pair> for NaiveOccBank {
    async fn call(&self, pair: Pair, body: Body) -> Call {
        let (src, dst) = (&self.slots[pair.from], &self.slots[pair.to]);
        let mut runs = 0;
        loop {
            runs += 1;
            let (v_from, mut from) = src.snapshot();
            let (v_to, mut to) = dst.snapshot();
            if transfer(&mut from, &mut to, body, AMOUNT).await.is_err() {
                return Call {
                    committed: false,
                    body_runs: runs,
                    refused: true,
                };
            }
            let (new_from, new_to) = (Arc::new(from), Arc::new(to));
            // Lock both in index order; each guard is then matched back to its role.
            let (mut g_from, mut g_to) = if pair.from < pair.to {
                let a = src.lock();
                (a, dst.lock())
            } else {
                let b = dst.lock();
                (src.lock(), b)
            };
            if g_from.0 == v_from && g_to.0 == v_to {
                g_from.0 = v_from + 1;
                g_to.0 = v_to + 1;
                let old_from = std::mem::replace(&mut g_from.1, new_from);
                let old_to = std::mem::replace(&mut g_to.1, new_to);
                drop((g_from, g_to));
                drop((old_from, old_to));
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
            sums.0 += cell.1.transfers;
            sums.1 += cell.1.balance;
        }
        sums
    }
}
