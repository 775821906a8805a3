//! Metrics that count every operation exactly once, without locks on the hot path.
//!
//! Every submitted operation adds one to `submitted` when it starts and one to exactly one
//! outcome counter when it ends (a dropped call counts as `cancelled`), so
//! `submitted = Σ outcomes + in_flight` at every point where no operation is between the two.
//! Nothing is sampled or dropped.
//!
//! One concern per submodule:
//! - `counters`: the global counters, sharded per thread (cache-line-aligned shards, relaxed
//!   atomic adds, summed on read);
//! - `latency`: lock-free log-linear buckets (at most 6.25% wide), loaded into an
//!   [`hdrhistogram`] histogram on read for the mean and quantiles;
//! - `op_table`: the per-operation-type counters, in a lock-free table keyed by the function's
//!   static spec;
//! - `snapshot`: the public serde structs ([`MetricsSnapshot`] and its parts);
//! - `prometheus`: the [OpenMetrics](https://openmetrics.io/) export
//!   ([`MetricsSnapshot::to_prometheus`]), rendered with `prometheus-client`, which is used for
//!   export only: the hot path stays on the atomics above.
//!
//! `Metrics` is the facade the rest of the crate records through.
#![allow(
    clippy::cast_precision_loss,
    reason = "counts and nanoseconds become f64 for ratios, seconds and the export (exact to 2^53)"
)]

mod counters;
mod latency;
mod op_table;
mod prometheus;
mod snapshot;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conflict_core::{CleanupStrategy, OutcomeKind};

pub(crate) use counters::{Counter, shard_index};
use counters::{N_COUNTERS, N_PLAIN, SHARDS, zeroed};
use latency::{Buckets, summarize};
use op_table::OpTable;
pub use snapshot::{
    CleanupMetrics, GroupSizeSnapshot, HistogramSnapshot, MetricsSnapshot, OpTypeSnapshot,
    RetryStats,
};

use crate::registry::OperationSpec;

/// One thread group's share of the global counters and of the operation latency histogram.
#[repr(align(128))]
struct Shard {
    counters: [AtomicU64; N_COUNTERS],
    latency: Buckets,
}

/// How one operation ended, as the metrics record it.
pub(crate) struct Ending {
    pub(crate) kind: OutcomeKind,
    pub(crate) latency: Duration,
    pub(crate) attempts: u32,
    pub(crate) conflicts: u32,
}

/// Per-runtime metrics.
pub(crate) struct Metrics {
    shards: Box<[Shard]>,
    group_sizes: Buckets,
    handler_latency: Buckets,
    op_types: OpTable,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    counters: zeroed(),
                    latency: Buckets::new(),
                })
                .collect(),
            group_sizes: Buckets::new(),
            handler_latency: Buckets::new(),
            op_types: OpTable::new(2 * crate::registry::linked_operations().count()),
        }
    }

    #[inline]
    pub(crate) fn add(&self, c: Counter, n: u64) {
        self.shards[shard_index()].counters[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a new operation. Sequentially consistent so that shutdown, which flips its flag
    /// and then sums `submitted`, cannot miss an operation that saw the runtime running.
    #[inline]
    pub(crate) fn submitted(&self) {
        self.shards[shard_index()].counters[Counter::Submitted as usize]
            .fetch_add(1, Ordering::SeqCst);
    }

    /// Records how an operation ended: its outcome (exactly once), latency, and its
    /// operation type's counters.
    pub(crate) fn ended(&self, spec: &'static OperationSpec, e: &Ending) {
        let i = shard_index();
        let shard = &self.shards[i];
        shard.counters[N_PLAIN + e.kind.index()].fetch_add(1, Ordering::SeqCst);
        shard.latency.record_duration(e.latency);

        self.op_types.with(spec, |stats| stats.record(i, e));
    }

    /// Counts records removed by a cleanup strategy.
    pub(crate) fn cleaned(&self, strategy: CleanupStrategy, n: u64) {
        let c = match strategy {
            CleanupStrategy::None => Counter::CleanedNone,
            CleanupStrategy::Immediate => Counter::CleanedImmediate,
            CleanupStrategy::Deferred => Counter::CleanedDeferred,
            CleanupStrategy::Lazy => Counter::CleanedLazy,
            CleanupStrategy::Custom => Counter::CleanedCustom,
        };
        self.add(c, n);
    }

    /// Records one cleanup handler run (all its attempts).
    pub(crate) fn handler_ran(&self, took: Duration) {
        self.add(Counter::HandlerRuns, 1);
        self.handler_latency.record_duration(took);
    }

    /// Records the size of a resolved staging group.
    pub(crate) fn group_size(&self, n: usize) {
        self.group_sizes.record(n as u64);
    }

    pub(crate) fn get(&self, c: Counter) -> u64 {
        self.sum(c as usize)
    }

    fn sum(&self, i: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.counters[i].load(Ordering::SeqCst))
            .sum()
    }

    pub(crate) fn outcomes(&self) -> BTreeMap<OutcomeKind, u64> {
        OutcomeKind::ALL
            .iter()
            .map(|k| (*k, self.sum(N_PLAIN + k.index())))
            .collect()
    }

    /// Operations started and not yet ended.
    pub(crate) fn in_flight(&self) -> u64 {
        // Outcomes are read first: an operation that ends between the two reads is then
        // counted as still in flight, never as a negative.
        let ended: u64 = self.outcomes().values().sum();
        self.get(Counter::Submitted).saturating_sub(ended)
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let outcomes = self.outcomes();
        let ended: u64 = outcomes.values().sum();
        let submitted = self.get(Counter::Submitted);
        let op_types = self.op_types.snapshots();
        let sizes = summarize([&self.group_sizes]);
        MetricsSnapshot {
            submitted,
            ended,
            in_flight: submitted.saturating_sub(ended),
            outcomes: outcomes
                .into_iter()
                .map(|(k, v)| (k.as_str().to_string(), v))
                .collect(),
            attempts: self.get(Counter::Attempts),
            occ_conflicts: self.get(Counter::OccConflicts),
            occ_retries: self.get(Counter::OccRetries),
            staged: self.get(Counter::Staged),
            staging_groups: self.get(Counter::StagingGroups),
            staging_contended_groups: self.get(Counter::StagingContended),
            staging_losers: self.get(Counter::StagingLosers),
            requeued: self.get(Counter::Requeued),
            preemptions: self.get(Counter::Preemptions),
            displaced: self.get(Counter::Displaced),
            events_published: self.get(Counter::EventsPublished),
            events_delivered: self.get(Counter::EventsDelivered),
            events_missed: self.get(Counter::EventsMissed),
            latency: summarize(self.shards.iter().map(|s| &s.latency)),
            staging_group_size: GroupSizeSnapshot {
                groups: sizes.count,
                mean: sizes.mean_ns,
                p50: sizes.p50_ns,
                p99: sizes.p99_ns,
                max: sizes.max_ns,
            },
            op_types,
            cleanup: CleanupMetrics {
                cleaned: [
                    ("none", Counter::CleanedNone),
                    ("immediate", Counter::CleanedImmediate),
                    ("deferred", Counter::CleanedDeferred),
                    ("lazy", Counter::CleanedLazy),
                    ("custom", Counter::CleanedCustom),
                    ("per_target_cap", Counter::CleanedByCap),
                ]
                .into_iter()
                .map(|(k, c)| (k.to_string(), self.get(c)))
                .collect(),
                failures: self.get(Counter::CleanupFailures),
                memory_pressure_triggered: self.get(Counter::CleanupMemoryPressure),
                force_triggered: self.get(Counter::CleanupForced),
                handler_runs: self.get(Counter::HandlerRuns),
                handler_latency: summarize([&self.handler_latency]),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SPEC: OperationSpec = OperationSpec {
        name: "t",
        module: "m",
        config: conflict_core::OperationConfig::DEFAULT,
    };

    #[test]
    fn sharded_counters_lose_nothing_across_threads() {
        let m = std::sync::Arc::new(Metrics::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        m.submitted();
                        m.ended(
                            &SPEC,
                            &Ending {
                                kind: if (i + t) % 4 == 0 {
                                    OutcomeKind::Rejected
                                } else {
                                    OutcomeKind::Committed
                                },
                                latency: Duration::from_micros(3),
                                attempts: 1 + i % 3,
                                conflicts: i % 3,
                            },
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = m.snapshot();
        assert_eq!(s.submitted, 80_000);
        assert_eq!(s.ended, 80_000);
        assert_eq!(s.outcome(OutcomeKind::Committed), 60_000);
        assert_eq!(s.outcome(OutcomeKind::Rejected), 20_000);
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.latency.count, 80_000);
        let t = s.op_type("t").unwrap();
        assert_eq!((t.ended, t.committed, t.failed), (80_000, 60_000, 20_000));
        let dist_total: u64 = t.retries_per_success.distribution.values().sum();
        assert_eq!(dist_total, t.committed);
        assert_eq!(t.retries_per_success.max, 2);
        assert!(
            s.to_prometheus().contains(
                "conflict_op_type_total{op=\"t\",module=\"m\",outcome=\"committed\"} 60000"
            )
        );
    }
}
