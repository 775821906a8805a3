//! The framework under test on transfers: one `#[with_conflict_resolution]` function with two
//! `&mut Account` parameters, in two configurations.
//!
//! | [`Config`] | attribute |
//! |---|---|
//! | `Default` | none (both stages, `staging_timeout_ms = 0`, `on_lose = "reject"`) |
//! | `Requeue` | `mode = "both", pre_ecs(on_lose = "requeue")` |
//!
//! The generated function takes `(&Handle<Account>, &Handle<Account>, u64)`: it stages on both
//! accounts (in key order), runs the body on one consistent snapshot of both and commits both
//! writes at once. Only these two configurations apply to the transfer scenarios
//! ([`Impl::applies`](crate::Impl::applies)).

use conflict_runtime::prelude::*;

use crate::Body;
use crate::framework::{Config, Counts};
use crate::harness::{Call, Workload};
use crate::transfer::{AMOUNT, Account, Insufficient, Pair, transfer_await, transfer_cpu};

#[with_conflict_resolution]
async fn default_cpu(
    from: &mut Account,
    to: &mut Account,
    amount: u64,
) -> Result<u64, Insufficient> {
    transfer_cpu(from, to, amount)
}

#[with_conflict_resolution]
async fn default_await(
    from: &mut Account,
    to: &mut Account,
    amount: u64,
) -> Result<u64, Insufficient> {
    transfer_await(from, to, amount).await
}

#[with_conflict_resolution(mode = "both", pre_ecs(on_lose = "requeue"))]
async fn requeue_cpu(
    from: &mut Account,
    to: &mut Account,
    amount: u64,
) -> Result<u64, Insufficient> {
    transfer_cpu(from, to, amount)
}

#[with_conflict_resolution(mode = "both", pre_ecs(on_lose = "requeue"))]
async fn requeue_await(
    from: &mut Account,
    to: &mut Account,
    amount: u64,
) -> Result<u64, Insufficient> {
    transfer_await(from, to, amount).await
}

/// A framework runtime on the in-memory store with `n` accounts, called through one
/// configuration's transfer function.
pub struct FrameworkBank {
    rt: Runtime,
    handles: Vec<Handle<Account>>,
    config: Config,
}

impl FrameworkBank {
    /// Inserts `n` fresh accounts into a new in-memory runtime.
    ///
    /// # Panics
    /// If the store refuses an insert (it cannot: every id is fresh), or `config` is not one of
    /// the two transfer configurations.
    pub async fn new(config: Config, n: usize) -> Self {
        assert!(
            matches!(config, Config::Default | Config::Requeue),
            "no transfer function for configuration {}",
            config.name()
        );
        let rt = Runtime::in_memory();
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            match rt.insert(Account::new()).await {
                Ok(h) => handles.push(h),
                Err(e) => panic!("cannot insert a benchmark account: {e}"),
            }
        }
        Self {
            rt,
            handles,
            config,
        }
    }

    /// The runtime (for its metrics).
    #[must_use]
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// The counters the wasted-attempt formula uses, now.
    #[must_use]
    pub fn counts(&self) -> Counts {
        Counts::of(&self.rt.metrics())
    }
}

/// Maps an outcome to the harness's view. Only the outcomes these configurations can produce
/// are expected; anything else (e.g. `DuplicateTarget`: the pair is always two accounts) means
/// the benchmark is broken.
fn classify(r: Result<Committed<u64>, ConflictError<Insufficient>>) -> Call {
    match r {
        Ok(c) => {
            debug_assert_eq!(c.versions.len(), 2, "a transfer writes both accounts");
            Call {
                committed: true,
                body_runs: c.attempts,
                refused: false,
            }
        }
        // The error does not say how many times the body ran; a refusal after a conflict
        // would count one run too few, which `Bench::run` tolerates when refusals occurred.
        Err(ConflictError::Body(Insufficient)) => Call {
            committed: false,
            body_runs: 1,
            refused: true,
        },
        Err(ConflictError::RetriesExhausted { attempts, .. }) => Call {
            committed: false,
            body_runs: attempts,
            refused: false,
        },
        Err(ConflictError::Rejected { .. } | ConflictError::Overloaded { .. }) => Call {
            committed: false,
            body_runs: 0,
            refused: false,
        },
        Err(e) => panic!("unexpected outcome in a benchmark: {e}"),
    }
}

impl Workload<Pair> for FrameworkBank {
    async fn call(&self, pair: Pair, body: Body) -> Call {
        let (from, to) = (&self.handles[pair.from], &self.handles[pair.to]);
        let r = match (self.config, body) {
            (Config::Default, Body::Cpu) => default_cpu(from, to, AMOUNT).await,
            (Config::Default, Body::Await) => default_await(from, to, AMOUNT).await,
            (Config::Requeue, Body::Cpu) => requeue_cpu(from, to, AMOUNT).await,
            (Config::Requeue, Body::Await) => requeue_await(from, to, AMOUNT).await,
            (c, _) => unreachable!("checked in FrameworkBank::new: {}", c.name()),
        };
        classify(r)
    }

    async fn totals(&self) -> (u64, u64) {
        let mut sums = (0, 0);
        for h in &self.handles {
            match h.load().await {
                Ok(v) => {
                    sums.0 += v.value.transfers;
                    sums.1 += v.value.balance;
                }
                Err(e) => panic!("cannot load a benchmark account: {e}"),
            }
        }
        sums
    }
}
