//! Per-operation-type counters, in a fixed lock-free table keyed by the address of each
//! annotated function's static [`OperationSpec`].
//!
//! No crate fits here: the key is a `&'static` address known to be unique, the table is sized
//! once from the link-time registry, and the hot path must be a couple of atomic loads with no
//! epoch guard (which `papaya`, used for the overflow, would need on every lookup).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use conflict_core::OutcomeKind;

use super::Ending;
use super::counters::{N_OUTCOMES, SHARDS, zeroed};
use super::snapshot::{OpTypeSnapshot, RetryStats};
use crate::registry::OperationSpec;
use crate::sync::AtomicUsize;

// Per-operation-type counters, by index; the outcome counters come first (at `kind.index()`).
const OP_CONFLICTS: usize = N_OUTCOMES;
const OP_RETRIES: usize = N_OUTCOMES + 1;
const OP_ATTEMPTS: usize = N_OUTCOMES + 2;
const OP_SUCCESS_RETRY_SUM: usize = N_OUTCOMES + 3;
const OP_SUCCESS_RETRY_MAX: usize = N_OUTCOMES + 4;
const OP_RETRY_HIST: usize = N_OUTCOMES + 5;
/// Retries per success are counted exactly up to this many; more land in the last bucket.
pub(super) const RETRY_HIST_EXACT: usize = 32;
const OP_N: usize = OP_RETRY_HIST + RETRY_HIST_EXACT + 1;

#[repr(align(128))]
struct OpShard([AtomicU64; OP_N]);

/// What the runtime counts per annotated function.
pub(super) struct OpStats {
    name: &'static str,
    module: &'static str,
    shards: Box<[OpShard]>,
}

impl OpStats {
    fn new(spec: &OperationSpec) -> Self {
        Self {
            name: spec.name,
            module: spec.module,
            shards: (0..SHARDS).map(|_| OpShard(zeroed())).collect(),
        }
    }

    /// Counts one ended operation of this type on shard `shard`.
    #[inline]
    pub(super) fn record(&self, shard: usize, e: &Ending) {
        let c = &self.shards[shard].0;
        c[e.kind.index()].fetch_add(1, Ordering::Relaxed);
        let retries = e.attempts.saturating_sub(1);
        // Zero adds are skipped: most operations commit at the first attempt.
        if e.attempts > 0 {
            c[OP_ATTEMPTS].fetch_add(u64::from(e.attempts), Ordering::Relaxed);
        }
        if retries > 0 {
            c[OP_RETRIES].fetch_add(u64::from(retries), Ordering::Relaxed);
        }
        if e.conflicts > 0 {
            c[OP_CONFLICTS].fetch_add(u64::from(e.conflicts), Ordering::Relaxed);
        }
        if e.kind == OutcomeKind::Committed {
            if retries > 0 {
                c[OP_SUCCESS_RETRY_SUM].fetch_add(u64::from(retries), Ordering::Relaxed);
                c[OP_SUCCESS_RETRY_MAX].fetch_max(u64::from(retries), Ordering::Relaxed);
            }
            c[OP_RETRY_HIST + (retries as usize).min(RETRY_HIST_EXACT)]
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sum(&self, i: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0[i].load(Ordering::Relaxed))
            .sum()
    }

    fn snapshot(&self) -> OpTypeSnapshot {
        let outcomes: BTreeMap<String, u64> = OutcomeKind::ALL
            .iter()
            .map(|k| (k.as_str().to_string(), self.sum(k.index())))
            .collect();
        // From the same reads as `ended`: a second read could see an operation that ended in
        // between and make `committed` exceed `ended`.
        let committed = outcomes
            .get(OutcomeKind::Committed.as_str())
            .copied()
            .unwrap_or(0);
        let ended: u64 = outcomes.values().sum();
        let distribution: BTreeMap<u32, u64> = (0..=RETRY_HIST_EXACT)
            .filter_map(|r| {
                let n = self.sum(OP_RETRY_HIST + r);
                #[allow(
                    clippy::cast_possible_truncation,
                    reason = "r <= RETRY_HIST_EXACT, which is 32"
                )]
                let r = r as u32;
                (n > 0).then_some((r, n))
            })
            .collect();
        OpTypeSnapshot {
            name: self.name.to_string(),
            module: self.module.to_string(),
            ended,
            committed,
            failed: ended - committed,
            outcomes,
            attempts: self.sum(OP_ATTEMPTS),
            conflicts: self.sum(OP_CONFLICTS),
            retries: self.sum(OP_RETRIES),
            retries_per_success: RetryStats {
                avg: if committed == 0 {
                    0.0
                } else {
                    self.sum(OP_SUCCESS_RETRY_SUM) as f64 / committed as f64
                },
                max: self
                    .shards
                    .iter()
                    .map(|s| s.0[OP_SUCCESS_RETRY_MAX].load(Ordering::Relaxed))
                    .max()
                    .unwrap_or(0),
                first_try: self.sum(OP_RETRY_HIST),
                distribution,
            },
        }
    }
}

/// Per-type stats, found by the address of the function's static spec: a fixed open-addressing
/// table claimed with one compare-and-swap per type, read with plain atomic loads (no lock, no
/// epoch guard on the hot path). Sized at twice the functions linked into the program; types
/// beyond it (none in practice) go to an ordinary concurrent map.
pub(super) struct OpTable {
    slots: Box<[OpSlot]>,
    overflow: papaya::HashMap<usize, OpStats, foldhash::fast::RandomState>,
}

struct OpSlot {
    /// The spec's address once claimed, 0 while free; never changes after the claim.
    key: AtomicUsize,
    stats: OnceLock<OpStats>,
}

impl OpTable {
    pub(super) fn new(capacity: usize) -> Self {
        Self::with_slots(capacity.max(16).next_power_of_two())
    }

    /// A table of exactly `slots` slots (a power of two: the probe masks with `slots - 1`).
    fn with_slots(slots: usize) -> Self {
        debug_assert!(slots.is_power_of_two());
        Self {
            slots: (0..slots)
                .map(|_| OpSlot {
                    key: AtomicUsize::new(0),
                    stats: OnceLock::new(),
                })
                .collect(),
            overflow: papaya::HashMap::with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// Calls `f` with the stats of `spec`, creating them on first use.
    #[inline]
    pub(super) fn with<R>(&self, spec: &'static OperationSpec, f: impl FnOnce(&OpStats) -> R) -> R {
        let key = std::ptr::from_ref(spec) as usize;
        let mask = self.slots.len() - 1;
        // Fibonacci hashing of the address (statics are 8-aligned, so shift the low bits out).
        let start = ((key >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) & mask;
        for i in 0..self.slots.len() {
            let slot = &self.slots[(start + i) & mask];
            let k = slot.key.load(Ordering::Acquire);
            let mine = k == key
                || (k == 0
                    && match slot
                        .key
                        .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => true,
                        Err(other) => other == key,
                    });
            if mine {
                return f(slot.stats.get_or_init(|| OpStats::new(spec)));
            }
        }
        let guard = self.overflow.guard();
        f(self
            .overflow
            .get_or_insert_with(key, || OpStats::new(spec), &guard))
    }

    /// Every type seen so far, sorted by module and name.
    pub(super) fn snapshots(&self) -> Vec<OpTypeSnapshot> {
        let mut out: Vec<OpTypeSnapshot> = self
            .slots
            .iter()
            .filter_map(|s| s.stats.get().map(OpStats::snapshot))
            .collect();
        let guard = self.overflow.guard();
        out.extend(self.overflow.iter(&guard).map(|(_, s)| s.snapshot()));
        out.sort_by(|a, b| (&a.module, &a.name).cmp(&(&b.module, &b.name)));
        out
    }
}

#[cfg(all(test, loom))]
mod loom_models;
