//! Entities and operations shared by the integration tests.

use conflict_runtime::prelude::*;

pub mod faults;
pub mod pg;
pub mod probe;
pub mod suite;

/// A counter entity: `value` counts committed increments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
pub struct Counter {
    /// Identity.
    #[entity(id)]
    pub id: EntityId,
    /// Committed increments.
    pub value: u64,
    /// Op ids of the committed increments, in commit order (to check exactly-once).
    pub log: Vec<u64>,
}

impl Counter {
    /// A fresh counter at zero.
    #[must_use]
    pub fn new() -> Self {
        Self {
            id: EntityId::new(),
            value: 0,
            log: Vec::new(),
        }
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `f` on a multi-thread tokio runtime with `workers` workers.
pub fn multi_thread<F: std::future::Future>(workers: usize, f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}
