//! The framework under test: `#[with_conflict_resolution]` functions in four configurations.
//!
//! | [`Config`] | attribute | what differs |
//! |---|---|---|
//! | `Default` | none (both stages, `staging_timeout_ms = 0`, `on_lose = "reject"`) | — |
//! | `Requeue` | `mode = "both", pre_ecs(on_lose = "requeue")` | losers stay staged |
//! | `OccOnly` | `occ(max_retries = 1000, base_delay_ms = 0, max_delay_ms = 0), pre_ecs = false` | no staging; retry at once |
//! | `Windowed` | `mode = "both", pre_ecs(staging_timeout_ms = 1)` | an idle target collects arrivals for 1 ms |
//!
//! `Requeue` and `Windowed` also spell out `mode = "both"`, the default (naming `pre_ecs(..)`
//! only configures staging; both stages run unless one is switched off), so that each visibly
//! differs from `Default` in one setting. Every function has the default priority, so no call
//! ever preempts another.

use std::convert::Infallible;

use conflict_runtime::prelude::*;
use conflict_runtime::{metrics::MetricsSnapshot, operation::OutcomeKind};

use crate::harness::{Call, Workload};
use crate::{AMOUNT, Body, Item, rmw_await, rmw_cpu};

/// A framework configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Config {
    /// Both stages, `staging_timeout_ms = 0`, `on_lose = "reject"`.
    Default,
    /// Both stages, `on_lose = "requeue"`.
    Requeue,
    /// OCC only, up to 1000 immediate retries.
    OccOnly,
    /// Both stages, `staging_timeout_ms = 1`.
    Windowed,
}

impl Config {
    /// Short id: `default`, `requeue`, `occ-only`, `window-1ms`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Requeue => "requeue",
            Self::OccOnly => "occ-only",
            Self::Windowed => "window-1ms",
        }
    }
}

#[with_conflict_resolution]
async fn default_cpu(item: &mut Item, amount: u64) -> u64 {
    rmw_cpu(item, amount)
}

#[with_conflict_resolution]
async fn default_await(item: &mut Item, amount: u64) -> u64 {
    rmw_await(item, amount).await
}

#[with_conflict_resolution(mode = "both", pre_ecs(on_lose = "requeue"))]
async fn requeue_cpu(item: &mut Item, amount: u64) -> u64 {
    rmw_cpu(item, amount)
}

#[with_conflict_resolution(mode = "both", pre_ecs(on_lose = "requeue"))]
async fn requeue_await(item: &mut Item, amount: u64) -> u64 {
    rmw_await(item, amount).await
}

#[with_conflict_resolution(
    occ(max_retries = 1000, base_delay_ms = 0, max_delay_ms = 0),
    pre_ecs = false
)]
async fn occ_only_cpu(item: &mut Item, amount: u64) -> u64 {
    rmw_cpu(item, amount)
}

#[with_conflict_resolution(
    occ(max_retries = 1000, base_delay_ms = 0, max_delay_ms = 0),
    pre_ecs = false
)]
async fn occ_only_await(item: &mut Item, amount: u64) -> u64 {
    rmw_await(item, amount).await
}

#[with_conflict_resolution(mode = "both", pre_ecs(staging_timeout_ms = 1))]
async fn windowed_cpu(item: &mut Item, amount: u64) -> u64 {
    rmw_cpu(item, amount)
}

#[with_conflict_resolution(mode = "both", pre_ecs(staging_timeout_ms = 1))]
async fn windowed_await(item: &mut Item, amount: u64) -> u64 {
    rmw_await(item, amount).await
}

/// The framework's counters that the wasted-attempt formula needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Body runs (`MetricsSnapshot::attempts`).
    pub attempts: u64,
    /// `committed` outcomes.
    pub committed: u64,
    /// Calls that ended without running their body: `rejected` and `overloaded` outcomes.
    pub bodiless_failures: u64,
    /// `body_error` outcomes (the transfer rows' refusals).
    pub body_errors: u64,
}

impl Counts {
    /// The counters in a metrics snapshot.
    #[must_use]
    pub fn of(m: &MetricsSnapshot) -> Self {
        Self {
            attempts: m.attempts,
            committed: m.outcome(OutcomeKind::Committed),
            bodiless_failures: m.outcome(OutcomeKind::Rejected)
                + m.outcome(OutcomeKind::Overloaded),
            body_errors: m.outcome(OutcomeKind::BodyError),
        }
    }

    /// What changed since `earlier`.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            attempts: self.attempts - earlier.attempts,
            committed: self.committed - earlier.committed,
            bodiless_failures: self.bodiless_failures - earlier.bodiless_failures,
            body_errors: self.body_errors - earlier.body_errors,
        }
    }
}

/// A framework runtime on the in-memory store with `n` entities, called through one
/// configuration's functions.
pub struct Framework {
    rt: Runtime,
    handles: Vec<Handle<Item>>,
    config: Config,
}

impl Framework {
    /// Inserts `n` fresh entities into a new in-memory runtime.
    ///
    /// # Panics
    /// If the store refuses an insert (it cannot: every id is fresh).
    pub async fn new(config: Config, n: usize) -> Self {
        let rt = Runtime::in_memory();
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            match rt.insert(Item::new()).await {
                Ok(h) => handles.push(h),
                Err(e) => panic!("cannot insert a benchmark entity: {e}"),
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
/// are expected; anything else means the benchmark is broken.
fn classify(r: Result<Committed<u64>, ConflictError<Infallible>>) -> Call {
    match r {
        Ok(c) => Call {
            committed: true,
            body_runs: c.attempts,
            refused: false,
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

impl Workload for Framework {
    async fn call(&self, entity: usize, body: Body) -> Call {
        let h = &self.handles[entity];
        let r = match (self.config, body) {
            (Config::Default, Body::Cpu) => default_cpu(h, AMOUNT).await,
            (Config::Default, Body::Await) => default_await(h, AMOUNT).await,
            (Config::Requeue, Body::Cpu) => requeue_cpu(h, AMOUNT).await,
            (Config::Requeue, Body::Await) => requeue_await(h, AMOUNT).await,
            (Config::OccOnly, Body::Cpu) => occ_only_cpu(h, AMOUNT).await,
            (Config::OccOnly, Body::Await) => occ_only_await(h, AMOUNT).await,
            (Config::Windowed, Body::Cpu) => windowed_cpu(h, AMOUNT).await,
            (Config::Windowed, Body::Await) => windowed_await(h, AMOUNT).await,
        };
        classify(r)
    }

    async fn totals(&self) -> (u64, u64) {
        let mut sums = (0, 0);
        for h in &self.handles {
            match h.load().await {
                Ok(v) => {
                    sums.0 += v.value.counter;
                    sums.1 += v.value.total;
                }
                Err(e) => panic!("cannot load a benchmark entity: {e}"),
            }
        }
        sums
    }
}
