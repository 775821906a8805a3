//! The global counters: one cache-line-aligned array per shard, threads spread over the shards.
//!
//! An increment is one relaxed (or, for the accounting counters, sequentially consistent) atomic
//! add on the calling thread's shard; a read sums the shards. Nothing is sampled or dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use conflict_core::OutcomeKind;

/// How many shards every sharded metric has.
pub(crate) const SHARDS: usize = 8;

/// The global counters, by index into a shard.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Counter {
    Submitted,
    Attempts,
    OccConflicts,
    OccRetries,
    Staged,
    StagingGroups,
    StagingContended,
    StagingLosers,
    Requeued,
    Preemptions,
    Displaced,
    EventsPublished,
    EventsDelivered,
    EventsMissed,
    CleanupMemoryPressure,
    CleanupForced,
    CleanupFailures,
    CleanedByCap,
    HandlerRuns,
    CleanedNone,
    CleanedImmediate,
    CleanedDeferred,
    CleanedLazy,
    CleanedCustom,
}

/// Counters that are not outcomes; the outcome counters follow them in a shard.
pub(super) const N_PLAIN: usize = Counter::CleanedCustom as usize + 1;
/// Outcome kinds, each with its own counter.
pub(super) const N_OUTCOMES: usize = OutcomeKind::ALL.len();
/// Counters per shard: the plain ones, then one per outcome kind (at `N_PLAIN + kind.index()`).
pub(super) const N_COUNTERS: usize = N_PLAIN + N_OUTCOMES;

/// This thread's shard (threads are spread round-robin over the shards once, on first use).
pub(crate) fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// An array of zeroed atomics.
pub(super) fn zeroed<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}
