//! Metrics that count every operation exactly once, without locks on the hot path.
//!
//! Counters are sharded: each thread adds to its own cache-line-aligned shard with a relaxed
//! atomic add, and a snapshot sums the shards. Nothing is sampled or dropped: every submitted
//! operation adds one to `submitted` when it starts and one to exactly one outcome counter when
//! it ends (a dropped call counts as `cancelled`), so `submitted = Σ outcomes + in_flight` holds
//! at every quiescent point.
//!
//! Latencies go into a lock-free log-linear histogram (16 sub-buckets per power of two, so any
//! reported quantile is within 6.25% of the true value).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use conflict_core::OutcomeKind;
use serde::{Deserialize, Serialize};

const SHARDS: usize = 16;

/// The counters, by index into a shard.
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
}

const N_PLAIN: usize = Counter::EventsMissed as usize + 1;
const N_COUNTERS: usize = N_PLAIN + OutcomeKind::ALL.len();

#[repr(align(128))]
struct Shard([AtomicU64; N_COUNTERS]);

impl Shard {
    fn new() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// Log-linear histogram of durations in nanoseconds, lock-free.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
    sum: AtomicU64,
}

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
const N_BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

impl Histogram {
    pub(crate) fn new() -> Self {
        Self {
            buckets: (0..N_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB_BITS;
        let sub = (v >> shift) & (SUB - 1);
        ((shift + 1) as u64 * SUB + sub) as usize
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

    pub(crate) fn record(&self, v: u64) {
        self.buckets[Self::index(v)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let q = |quantile: f64| -> u64 {
            if count == 0 {
                return 0;
            }
            let rank = ((quantile * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    // Report the bucket's upper edge (capped at the true max): never optimistic.
                    let upper = if i + 1 < N_BUCKETS {
                        Self::lower(i + 1).saturating_sub(1)
                    } else {
                        u64::MAX
                    };
                    return upper.min(max);
                }
            }
            max
        };
        HistogramSnapshot {
            count,
            mean_ns: self
                .sum
                .load(Ordering::Relaxed)
                .checked_div(count)
                .unwrap_or(0),
            p50_ns: q(0.50),
            p95_ns: q(0.95),
            p99_ns: q(0.99),
            max_ns: max,
        }
    }
}

/// Quantiles of a latency histogram, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean_ns: u64,
    /// Median (upper bound of its bucket).
    pub p50_ns: u64,
    /// 95th percentile (upper bound of its bucket).
    pub p95_ns: u64,
    /// 99th percentile (upper bound of its bucket).
    pub p99_ns: u64,
    /// Largest sample, exact.
    pub max_ns: u64,
}

/// Per-runtime metrics.
pub(crate) struct Metrics {
    shards: Box<[Shard]>,
    latency: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::new()).collect(),
            latency: Histogram::new(),
        }
    }

    #[inline]
    pub(crate) fn add(&self, c: Counter, n: u64) {
        self.shards[shard_index()].0[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a new operation. Sequentially consistent so that shutdown, which flips its flag
    /// and then sums `submitted`, cannot miss an operation that saw the runtime running.
    #[inline]
    pub(crate) fn submitted(&self) {
        self.shards[shard_index()].0[Counter::Submitted as usize].fetch_add(1, Ordering::SeqCst);
    }

    #[inline]
    pub(crate) fn outcome(&self, kind: OutcomeKind, latency: Duration) {
        self.shards[shard_index()].0[N_PLAIN + kind.index()].fetch_add(1, Ordering::SeqCst);
        self.latency
            .record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    pub(crate) fn get(&self, c: Counter) -> u64 {
        self.sum(c as usize)
    }

    fn sum(&self, i: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0[i].load(Ordering::SeqCst))
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
        // Read outcomes first: an operation that ends between the two reads is then counted as
        // still in flight (never as negative).
        let ended: u64 = self.outcomes().values().sum();
        self.get(Counter::Submitted).saturating_sub(ended)
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let outcomes = self.outcomes();
        let ended: u64 = outcomes.values().sum();
        let submitted = self.get(Counter::Submitted);
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
            latency: self.latency.snapshot(),
        }
    }
}

/// A point-in-time copy of a runtime's metrics (from [`Runtime::metrics`](crate::Runtime::metrics)).
///
/// `submitted == ended + in_flight`, and `ended` is the sum of `outcomes`.
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
    /// Compare-and-commits that found a newer version.
    pub occ_conflicts: u64,
    /// Retries started after a conflict.
    pub occ_retries: u64,
    /// Operations that waited in a staging area.
    pub staged: u64,
    /// Staging groups resolved.
    pub staging_groups: u64,
    /// Staging groups with more than one member (a pre-ECS conflict).
    pub staging_contended_groups: u64,
    /// Members that lost a staging group (rejected or requeued).
    pub staging_losers: u64,
    /// Losers that stayed staged (`on_lose = "requeue"`).
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
}

impl MetricsSnapshot {
    /// The count of one outcome.
    #[must_use]
    pub fn outcome(&self, kind: OutcomeKind) -> u64 {
        self.outcomes.get(kind.as_str()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_tight() {
        let mut prev = 0;
        for i in 1..N_BUCKETS {
            let lo = Histogram::lower(i);
            assert!(lo > prev, "bucket {i}");
            assert_eq!(Histogram::index(lo), i);
            assert_eq!(Histogram::index(lo - 1), i - 1);
            prev = lo;
        }
        for v in [0, 1, 15, 16, 17, 1000, 123_456_789, u64::MAX] {
            let i = Histogram::index(v);
            let lo = Histogram::lower(i);
            assert!(lo <= v);
            if v >= 16 {
                assert!((v - lo) as f64 / v as f64 <= 1.0 / 16.0);
            }
        }
    }

    #[test]
    fn quantiles_bound_the_truth() {
        let h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 10_000);
        assert_eq!(s.max_ns, 10_000_000);
        for (q, got) in [(0.5, s.p50_ns), (0.95, s.p95_ns), (0.99, s.p99_ns)] {
            let truth = (q * 10_000.0) * 1000.0;
            assert!(got as f64 >= truth, "q{q}: {got} < {truth}");
            assert!(
                got as f64 <= truth * 1.07,
                "q{q}: {got} too far above {truth}"
            );
        }
    }

    #[test]
    fn sharded_counters_lose_nothing_across_threads() {
        let m = std::sync::Arc::new(Metrics::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        m.submitted();
                        m.outcome(OutcomeKind::Committed, Duration::from_micros(3));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = m.snapshot();
        assert_eq!(s.submitted, 80_000);
        assert_eq!(s.outcome(OutcomeKind::Committed), 80_000);
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.latency.count, 80_000);
    }
}
