//! Throughput benchmarks of `conflict` against the choices a user would otherwise make.
//!
//! Every implementation performs the same operation — a read-modify-write of a small entity
//! ([`Item`]: an id and two `u64`s) — in one of two [`Body`] kinds:
//!
//! * [`Body::Cpu`]: read, add, write; nothing in between.
//! * [`Body::Await`]: read, `tokio::task::yield_now().await` (standing for I/O), write. This is
//!   the case the framework exists for: whoever holds a lock holds it across the await.
//!
//! The implementations, one module each:
//!
//! * [`framework`]: `#[with_conflict_resolution]` functions in four configurations
//!   ([`framework::Config`]).
//! * [`mutex`]: one `tokio::sync::Mutex` per entity, held across the await (the pessimistic
//!   choice).
//! * [`naive_occ`]: a versioned slot and a compare-and-swap loop that retries at once, with no
//!   staging and no backoff.
//! * [`stm`]: the `async-stm` crate. Its transactions cannot await, so in the [`Body::Await`]
//!   case the yield happens *before* the transaction: that row does not do the same work as the
//!   others (nothing is held or re-validated across the await) and is not comparable.
//! * [`floor`]: the least work an uncontended staging-then-OCC call must do, written out by hand
//!   (uncontended scenarios only): the lower bound for the framework's per-call overhead.
//!
//! [`transfer`] holds the multi-entity rows: a transfer between two accounts chosen at random,
//! by the framework (one function over two `&mut Account`s), two tokio Mutexes taken in index
//! order, and a naive two-key OCC loop ([`Scenario::TRANSFERS`]).
//!
//! [`harness`] drives a fixed number of committed operations from a [`Scenario`]'s tasks on a
//! two-worker tokio runtime and counts the wasted attempts. The `perf_report` binary and the
//! criterion bench (`benches/throughput.rs`) both run on it; `docs/performance.md` holds the
//! results.
//!
//! ```
//! use conflict_benches::{Bench, Body, Impl, Scenario};
//!
//! let bench = Bench::new(Impl::Mutex, Scenario::CONTENDED_3, Body::Await);
//! let sample = bench.run(640);
//! assert_eq!(sample.commits, 640);
//! assert_eq!(sample.wasted, 0); // a lock never wastes an attempt
//! ```

use conflict_runtime::prelude::*;

pub mod floor;
pub mod framework;
pub mod harness;
pub mod mutex;
pub mod naive_occ;
pub mod stm;
pub mod transfer;

pub use harness::{Bench, Call, Impl, Op, Sample, Scenario, Target, Workload};

/// The entity every implementation updates: small, cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Entity)]
pub struct Item {
    /// Identity.
    #[entity(id)]
    pub id: EntityId,
    /// Committed operations on this entity.
    pub counter: u64,
    /// Sum of the amounts added by committed operations.
    pub total: u64,
}

impl Item {
    /// A fresh entity at zero.
    #[must_use]
    pub fn new() -> Self {
        Self {
            id: EntityId::new(),
            counter: 0,
            total: 0,
        }
    }
}

impl Default for Item {
    fn default() -> Self {
        Self::new()
    }
}

/// What each operation adds to [`Item::total`].
pub const AMOUNT: u64 = 3;

/// The two kinds of body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Body {
    /// Read, modify, write; no await.
    Cpu,
    /// Read, `yield_now().await`, write.
    Await,
}

impl Body {
    /// Both kinds.
    pub const ALL: [Self; 2] = [Self::Cpu, Self::Await];

    /// A short label: `cpu` or `await`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Await => "await",
        }
    }
}

/// The CPU-only read-modify-write; returns the new counter.
#[inline]
pub fn rmw_cpu(item: &mut Item, amount: u64) -> u64 {
    item.counter += 1;
    item.total += amount;
    item.counter
}

/// The read-modify-write with an await point between the read and the write; returns the new
/// counter.
pub async fn rmw_await(item: &mut Item, amount: u64) -> u64 {
    let (counter, total) = (item.counter, item.total);
    tokio::task::yield_now().await;
    item.counter = counter + 1;
    item.total = total + amount;
    item.counter
}

/// Runs the read-modify-write of kind `body` on `item`.
pub async fn rmw(item: &mut Item, body: Body, amount: u64) -> u64 {
    match body {
        Body::Cpu => rmw_cpu(item, amount),
        Body::Await => rmw_await(item, amount).await,
    }
}
