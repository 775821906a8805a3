//! Metrics that count every operation exactly once, without locks on the hot path.
//!
//! Counters and histograms are sharded: each thread adds to its own cache-line-aligned shard
//! with relaxed atomic adds, and a snapshot sums the shards. Nothing is sampled or dropped:
//! every submitted operation adds one to `submitted` when it starts and one to exactly one
//! outcome counter when it ends (a dropped call counts as `cancelled`), so
//! `submitted = Σ outcomes + in_flight` at every point where no operation is between the two.
//!
//! Latencies go into lock-free log-linear buckets (16 sub-buckets per power of two, so each
//! bucket spans at most 6.25% of its values); on read the buckets are loaded into an
//! [`hdrhistogram`] histogram, which computes the quantiles.
//!
//! Export: [`MetricsSnapshot`] is a serde struct; [`MetricsSnapshot::to_prometheus`] renders the
//! Prometheus text exposition format; the runtime's `tracing` spans and events carry the same
//! facts per operation.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use conflict_core::{CleanupStrategy, OutcomeKind};
use serde::{Deserialize, Serialize};

use crate::registry::OperationSpec;

const SHARDS: usize = 8;

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

const N_PLAIN: usize = Counter::CleanedCustom as usize + 1;
const N_OUTCOMES: usize = OutcomeKind::ALL.len();
const N_COUNTERS: usize = N_PLAIN + N_OUTCOMES;

/// This thread's shard (threads are spread round-robin over the shards once, on first use).
pub(crate) fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

fn zeroed<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
const N_BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// Lock-free log-linear histogram buckets (one atomic add per sample).
struct Buckets {
    counts: Box<[AtomicU64]>,
}

impl Buckets {
    fn new() -> Self {
        Self {
            counts: (0..N_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB_BITS;
        let sub = (v >> shift) & (SUB - 1);
        ((u64::from(shift) + 1) * SUB + sub) as usize
    }

    /// The smallest value of bucket `i`.
    fn lower(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = i / SUB - 1;
        let sub = i % SUB;
        (SUB + sub) << shift
    }

    /// The largest value of bucket `i`.
    fn upper(i: usize) -> u64 {
        if i + 1 < N_BUCKETS {
            Self::lower(i + 1) - 1
        } else {
            u64::MAX
        }
    }

    #[inline]
    fn record(&self, v: u64) {
        self.counts[Self::index(v)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Merges bucket sets and summarises them through an HDR histogram.
fn summarize<'a>(parts: impl IntoIterator<Item = &'a Buckets>) -> HistogramSnapshot {
    let mut counts = vec![0u64; N_BUCKETS];
    for b in parts {
        for (c, a) in counts.iter_mut().zip(b.counts.iter()) {
            *c += a.load(Ordering::Relaxed);
        }
    }
    let count: u64 = counts.iter().sum();
    let Some(top) = counts.iter().rposition(|c| *c > 0) else {
        return HistogramSnapshot::default();
    };
    // Each bucket is recorded at its upper edge, so every reported figure is an upper bound of
    // the true one, within the bucket's width (6.25%).
    let max = Buckets::upper(top);
    let mut h = hdrhistogram::Histogram::<u64>::new_with_max(max.max(2), 3)
        .or_else(|_| hdrhistogram::Histogram::<u64>::new(3));
    let Ok(h) = h.as_mut() else {
        return HistogramSnapshot {
            count,
            max_ns: max,
            ..HistogramSnapshot::default()
        };
    };
    for (i, c) in counts.iter().enumerate() {
        if *c > 0 {
            // `saturating_record_n` clamps into the histogram's range instead of failing.
            h.saturating_record_n(Buckets::upper(i).max(1), *c);
        }
    }
    HistogramSnapshot {
        count,
        mean_ns: h.mean() as u64,
        p50_ns: h.value_at_quantile(0.50),
        p95_ns: h.value_at_quantile(0.95),
        p99_ns: h.value_at_quantile(0.99),
        max_ns: max,
    }
}

#[repr(align(128))]
struct Shard {
    counters: [AtomicU64; N_COUNTERS],
    latency: Buckets,
}

// Per-operation-type counters, by index.
const OP_CONFLICTS: usize = N_OUTCOMES;
const OP_RETRIES: usize = N_OUTCOMES + 1;
const OP_ATTEMPTS: usize = N_OUTCOMES + 2;
const OP_SUCCESS_RETRY_SUM: usize = N_OUTCOMES + 3;
const OP_SUCCESS_RETRY_MAX: usize = N_OUTCOMES + 4;
const OP_RETRY_HIST: usize = N_OUTCOMES + 5;
/// Retries per success are counted exactly up to this many; more land in the last bucket.
const RETRY_HIST_EXACT: usize = 32;
const OP_N: usize = OP_RETRY_HIST + RETRY_HIST_EXACT + 1;

#[repr(align(128))]
struct OpShard([AtomicU64; OP_N]);

/// What the runtime counts per annotated function.
pub(crate) struct OpStats {
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
                (n > 0).then_some((r as u32, n))
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
struct OpTable {
    slots: Box<[OpSlot]>,
    overflow: papaya::HashMap<usize, OpStats, foldhash::fast::RandomState>,
}

struct OpSlot {
    key: AtomicUsize,
    stats: OnceLock<OpStats>,
}

impl OpTable {
    fn new(capacity: usize) -> Self {
        let cap = capacity.max(16).next_power_of_two();
        Self {
            slots: (0..cap)
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
    fn with<R>(&self, spec: &'static OperationSpec, f: impl FnOnce(&OpStats) -> R) -> R {
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

    fn snapshots(&self) -> Vec<OpTypeSnapshot> {
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
        shard
            .latency
            .record(u64::try_from(e.latency.as_nanos()).unwrap_or(u64::MAX));

        self.op_types.with(spec, |stats| {
            let c = &stats.shards[i].0;
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
        });
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
        self.handler_latency
            .record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
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

/// What cleanup did (part of [`MetricsSnapshot`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CleanupMetrics {
    /// Zombie records removed, by strategy (`none`, `immediate`, `deferred`, `lazy`, `custom`)
    /// and by the per-target cap (`per_target_cap`).
    pub cleaned: BTreeMap<String, u64>,
    /// Handler runs that failed for good (the record was kept).
    pub failures: u64,
    /// Records cleaned at once because memory pressure was above the threshold.
    pub memory_pressure_triggered: u64,
    /// Records cleaned at once because there were more zombies than `force_cleanup_threshold`.
    pub force_triggered: u64,
    /// Custom handler runs (each including its retries).
    pub handler_runs: u64,
    /// How long handler runs took.
    pub handler_latency: HistogramSnapshot,
}

/// Quantiles of a latency histogram, in nanoseconds.
///
/// Every figure is an upper bound: samples are counted in buckets at most 6.25% wide and
/// reported at their bucket's upper edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 95th percentile.
    pub p95_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Largest sample (its bucket's upper edge).
    pub max_ns: u64,
}

/// Sizes of the staging groups resolved in a round (operations that competed for one target).
/// A call that ran at once on an idle target is a group of one counted in
/// `staging_groups` but not here, which keeps the uncontended path free of this histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GroupSizeSnapshot {
    /// Groups resolved.
    pub groups: u64,
    /// Mean size.
    pub mean: u64,
    /// Median size.
    pub p50: u64,
    /// 99th percentile size.
    pub p99: u64,
    /// Largest group.
    pub max: u64,
}

/// Retries needed by the operations that committed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RetryStats {
    /// Mean retries per committed operation.
    pub avg: f64,
    /// Most retries any committed operation needed.
    pub max: u64,
    /// Committed operations that needed no retry.
    pub first_try: u64,
    /// Committed operations by retries needed (32 means 32 or more); zero counts omitted.
    pub distribution: BTreeMap<u32, u64>,
}

/// What one annotated function's operations did.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OpTypeSnapshot {
    /// The function's name.
    pub name: String,
    /// Its module.
    pub module: String,
    /// Operations of this type that ended.
    pub ended: u64,
    /// Of which committed.
    pub committed: u64,
    /// Of which did not commit (`ended - committed`).
    pub failed: u64,
    /// Ended operations by outcome label.
    pub outcomes: BTreeMap<String, u64>,
    /// Body runs.
    pub attempts: u64,
    /// Compare-and-commits that met a newer version.
    pub conflicts: u64,
    /// Attempts after the first.
    pub retries: u64,
    /// Retries per committed operation.
    pub retries_per_success: RetryStats,
}

/// A point-in-time copy of a runtime's metrics (from [`Runtime::metrics`](crate::Runtime::metrics)).
///
/// `submitted == ended + in_flight`, `ended` is the sum of `outcomes`, and the per-type
/// `ended` counts add up to `ended`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Operations started.
    pub submitted: u64,
    /// Operations ended (sum of `outcomes`).
    pub ended: u64,
    /// Operations started and not ended.
    pub in_flight: u64,
    /// Ended operations by outcome label (`committed`, `rejected`, ...; every label present).
    pub outcomes: BTreeMap<String, u64>,
    /// Body runs.
    pub attempts: u64,
    /// Compare-and-commits that found a newer version (OCC conflicts).
    pub occ_conflicts: u64,
    /// Retries started after a conflict.
    pub occ_retries: u64,
    /// Operations that waited in a staging area.
    pub staged: u64,
    /// Staging groups resolved (a call that ran at once on an idle target is a group of one).
    pub staging_groups: u64,
    /// Staging groups with more than one member: pre-ECS conflicts detected and resolved.
    pub staging_contended_groups: u64,
    /// Lost rounds: a member not chosen in a group resolution (rejected, or requeued for the
    /// next round; a requeued operation can lose several rounds).
    pub staging_losers: u64,
    /// Lost rounds after which the loser stayed staged (`on_lose = "requeue"`).
    pub requeued: u64,
    /// Executing operations preempted.
    pub preemptions: u64,
    /// Staged operations displaced by a higher-priority arrival.
    pub displaced: u64,
    /// Events published to at least one subscriber.
    pub events_published: u64,
    /// Events received by subscribers.
    pub events_delivered: u64,
    /// Events subscribers missed because they fell behind.
    pub events_missed: u64,
    /// Submission-to-end latency of ended operations.
    pub latency: HistogramSnapshot,
    /// Sizes of resolved staging groups.
    pub staging_group_size: GroupSizeSnapshot,
    /// Per annotated function, sorted by module and name.
    pub op_types: Vec<OpTypeSnapshot>,
    /// What cleanup did.
    pub cleanup: CleanupMetrics,
}

impl MetricsSnapshot {
    /// The count of one outcome.
    #[must_use]
    pub fn outcome(&self, kind: OutcomeKind) -> u64 {
        self.outcomes.get(kind.as_str()).copied().unwrap_or(0)
    }

    /// The metrics of one annotated function, by name.
    #[must_use]
    pub fn op_type(&self, name: &str) -> Option<&OpTypeSnapshot> {
        self.op_types.iter().find(|o| o.name == name)
    }

    /// The snapshot in the Prometheus text exposition format (version 0.0.4).
    ///
    /// ```
    /// let rt = conflict_runtime::Runtime::in_memory();
    /// let text = rt.metrics().to_prometheus();
    /// assert!(text.contains("conflict_operations_submitted_total 0"));
    /// ```
    #[must_use]
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "conflict_operations_submitted_total",
            "Operations started.",
            self.submitted,
        );
        counter("conflict_attempts_total", "Body runs.", self.attempts);
        counter(
            "conflict_occ_conflicts_total",
            "Compare-and-commits that found a newer version.",
            self.occ_conflicts,
        );
        counter(
            "conflict_occ_retries_total",
            "Retries after a conflict.",
            self.occ_retries,
        );
        counter(
            "conflict_staging_groups_total",
            "Staging groups resolved.",
            self.staging_groups,
        );
        counter(
            "conflict_staging_contended_groups_total",
            "Staging groups with more than one member.",
            self.staging_contended_groups,
        );
        counter(
            "conflict_preemptions_total",
            "Executing operations preempted.",
            self.preemptions,
        );
        counter(
            "conflict_displaced_total",
            "Staged operations displaced by a higher-priority arrival.",
            self.displaced,
        );
        counter(
            "conflict_events_missed_total",
            "Events subscribers missed.",
            self.events_missed,
        );
        let _ = writeln!(
            out,
            "# HELP conflict_operations_in_flight Operations started and not ended.\n# TYPE conflict_operations_in_flight gauge\nconflict_operations_in_flight {}",
            self.in_flight
        );
        let _ = writeln!(
            out,
            "# HELP conflict_operations_total Ended operations by outcome.\n# TYPE conflict_operations_total counter"
        );
        for (k, v) in &self.outcomes {
            let _ = writeln!(out, "conflict_operations_total{{outcome=\"{k}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP conflict_op_type_total Ended operations by function and outcome.\n# TYPE conflict_op_type_total counter"
        );
        for t in &self.op_types {
            for (k, v) in &t.outcomes {
                let _ = writeln!(
                    out,
                    "conflict_op_type_total{{op=\"{}\",module=\"{}\",outcome=\"{k}\"}} {v}",
                    escape(&t.name),
                    escape(&t.module)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP conflict_op_type_conflicts_total OCC conflicts by function.\n# TYPE conflict_op_type_conflicts_total counter"
        );
        for t in &self.op_types {
            let _ = writeln!(
                out,
                "conflict_op_type_conflicts_total{{op=\"{}\",module=\"{}\"}} {}",
                escape(&t.name),
                escape(&t.module),
                t.conflicts
            );
        }
        let _ = writeln!(
            out,
            "# HELP conflict_cleanup_cleaned_total Zombie records removed, by strategy.\n# TYPE conflict_cleanup_cleaned_total counter"
        );
        for (k, v) in &self.cleanup.cleaned {
            let _ = writeln!(
                out,
                "conflict_cleanup_cleaned_total{{strategy=\"{k}\"}} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP conflict_cleanup_failures_total Cleanup handler runs that failed for good.\n# TYPE conflict_cleanup_failures_total counter\nconflict_cleanup_failures_total {}",
            self.cleanup.failures
        );
        let _ = writeln!(
            out,
            "# HELP conflict_cleanup_triggered_total Immediate cleanups forced by memory pressure or the zombie threshold.\n# TYPE conflict_cleanup_triggered_total counter\nconflict_cleanup_triggered_total{{trigger=\"memory_pressure\"}} {}\nconflict_cleanup_triggered_total{{trigger=\"force_threshold\"}} {}",
            self.cleanup.memory_pressure_triggered, self.cleanup.force_triggered
        );
        let l = &self.latency;
        let _ = writeln!(
            out,
            "# HELP conflict_operation_latency_seconds Submission-to-end latency.\n# TYPE conflict_operation_latency_seconds summary"
        );
        for (q, v) in [
            ("0.5", l.p50_ns),
            ("0.95", l.p95_ns),
            ("0.99", l.p99_ns),
            ("1", l.max_ns),
        ] {
            let _ = writeln!(
                out,
                "conflict_operation_latency_seconds{{quantile=\"{q}\"}} {}",
                v as f64 / 1e9
            );
        }
        let _ = writeln!(
            out,
            "conflict_operation_latency_seconds_sum {}\nconflict_operation_latency_seconds_count {}",
            (l.mean_ns as f64 * l.count as f64) / 1e9,
            l.count
        );
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut prev = 0;
        for i in 1..N_BUCKETS {
            let lo = Buckets::lower(i);
            assert!(lo > prev, "bucket {i}");
            assert_eq!(Buckets::index(lo), i);
            assert_eq!(Buckets::index(lo - 1), i - 1);
            assert_eq!(Buckets::upper(i - 1), lo - 1);
            prev = lo;
        }
        for v in [0, 1, 15, 16, 17, 1000, 123_456_789, u64::MAX] {
            let i = Buckets::index(v);
            let lo = Buckets::lower(i);
            assert!(lo <= v && v <= Buckets::upper(i));
            if v >= 16 {
                assert!((v - lo) as f64 / v as f64 <= 1.0 / 16.0);
            }
        }
    }

    #[test]
    fn quantiles_bound_the_truth_within_the_bucket_width() {
        let b = Buckets::new();
        for v in 1..=10_000u64 {
            b.record(v * 1000);
        }
        let s = summarize([&b]);
        assert_eq!(s.count, 10_000);
        assert!(
            (10_000_000..=10_625_000).contains(&s.max_ns),
            "{}",
            s.max_ns
        );
        assert!(
            (5_000_500..=5_320_000).contains(&s.mean_ns),
            "{}",
            s.mean_ns
        );
        for (q, got) in [
            (0.5, s.p50_ns),
            (0.95, s.p95_ns),
            (0.99, s.p99_ns),
            (1.0, s.max_ns),
        ] {
            let truth = (q * 10_000.0) * 1000.0;
            assert!(got as f64 >= truth * 0.999, "q{q}: {got} < {truth}");
            assert!(
                got as f64 <= truth * 1.07,
                "q{q}: {got} too far above {truth}"
            );
        }
        assert_eq!(summarize([&Buckets::new()]), HistogramSnapshot::default());
    }

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
