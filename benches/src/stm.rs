//! The peer: `async-stm`'s `TVar`s and `atomically`.
//!
//! An `async-stm` transaction is a synchronous closure: it cannot await. In the
//! [`Body::Await`] case the yield therefore happens *before* the transaction, and the
//! read-modify-write itself has no await inside. That row does less than the others — nothing is
//! held or re-validated across the await — so it is reported but not compared against the
//! targets. Wasted attempts are counted by the closure itself (each run of it is one attempt;
//! `atomically` reruns it after a conflict).

use std::sync::atomic::{AtomicU32, Ordering};

use async_stm::{TVar, atomically};

use crate::harness::{Call, Workload};
use crate::{AMOUNT, Body, Item, rmw_cpu};

/// `n` entities, one `TVar` each.
pub struct StmVars {
    vars: Vec<TVar<Item>>,
}

impl StmVars {
    /// `n` fresh entities.
    #[must_use]
    pub fn new(n: usize) -> Self {
        Self {
            vars: (0..n).map(|_| TVar::new(Item::new())).collect(),
        }
    }
}

impl Workload for StmVars {
    async fn call(&self, entity: usize, body: Body) -> Call {
        if body == Body::Await {
            tokio::task::yield_now().await;
        }
        let var = &self.vars[entity];
        let runs = AtomicU32::new(0);
        atomically(|| {
            runs.fetch_add(1, Ordering::Relaxed);
            let mut item = var.read_clone()?;
            rmw_cpu(&mut item, AMOUNT);
            var.write(item)
        })
        .await;
        Call {
            committed: true,
            body_runs: runs.into_inner(),
            refused: false,
        }
    }

    async fn totals(&self) -> (u64, u64) {
        let mut sums = (0, 0);
        for var in &self.vars {
            let item = atomically(|| var.read_clone()).await;
            sums.0 += item.counter;
            sums.1 += item.total;
        }
        sums
    }
}
