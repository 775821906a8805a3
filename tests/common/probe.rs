//! Small instruments the reliability tests share: how many bodies overlap on one target, a
//! write from outside the runtime, waiting for every operation to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conflict_runtime::entity::EntityKey;
use conflict_runtime::prelude::*;
use conflict_runtime::store::{Commit, Write};

use crate::Counter;

/// Counts the bodies running on one target and the most ever seen at once.
#[derive(Default, Debug)]
pub struct Overlap {
    inside: AtomicU64,
    most: AtomicU64,
}

impl Overlap {
    /// Marks a body as running until the guard drops (so a cancelled body counts out too).
    pub fn enter(&self) -> Inside<'_> {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        Inside(self)
    }

    /// The most bodies seen running at once.
    pub fn most(&self) -> u64 {
        self.most.load(Ordering::SeqCst)
    }
}

/// A running body, from [`Overlap::enter`].
pub struct Inside<'a>(&'a Overlap);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A commit of `value` on `key` at version `expected`, as another process would write it.
#[must_use]
pub fn outside_write(key: EntityKey, expected: u64, value: Counter) -> Commit {
    Commit {
        op_id: OpId::from_parts(0xdead, expected),
        op_type: "outside",
        priority: OperationPriority::NORMAL,
        attempt: 1,
        writes: vec![Write {
            key,
            expected_version: expected,
            value: Arc::new(value),
        }],
        deletes: Vec::new(),
        reads: Vec::new(),
    }
}

/// Waits (polling every millisecond, at most 10,000 times) until no operation is in flight.
///
/// # Panics
/// If operations are still in flight then.
pub async fn wait_in_flight_zero(rt: &Runtime) {
    for _ in 0..10_000 {
        if rt.metrics().in_flight == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("operations still in flight: {:?}", rt.metrics().in_flight);
}
