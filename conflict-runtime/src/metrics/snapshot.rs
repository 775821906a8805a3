//! The public, serde-serialisable copy of a runtime's metrics.

use std::collections::BTreeMap;

use conflict_core::OutcomeKind;
use serde::{Deserialize, Serialize};

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
    /// Preemptions: a target taken from its executing operation by a higher-ranked one. Counted
    /// per target: an operation over several entities preempted on two of them counts twice.
    /// The operations that ended preempted are the `preempted` outcome.
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

    /// The snapshot in the [OpenMetrics text format](https://openmetrics.io/), for a Prometheus
    /// scrape endpoint.
    ///
    /// Rendered with [`prometheus_client`]; the output ends with `# EOF`. Serve it with the
    /// content type `application/openmetrics-text; version=1.0.0; charset=utf-8`. Every
    /// counter and gauge of the snapshot is exported (per-type `ended`/`committed`/`failed` as
    /// the outcome samples they sum):
    ///
    /// | metric (sample names) | type | labels | from |
    /// |---|---|---|---|
    /// | `conflict_operations_submitted_total` | counter | | `submitted` |
    /// | `conflict_operations_ended_total` | counter | | `ended` |
    /// | `conflict_operations_in_flight` | gauge | | `in_flight` |
    /// | `conflict_operations_total` | counter | `outcome` | `outcomes` |
    /// | `conflict_attempts_total`, `conflict_occ_conflicts_total`, `conflict_occ_retries_total` | counter | | `attempts`, `occ_conflicts`, `occ_retries` |
    /// | `conflict_staged_total`, `conflict_staging_groups_total`, `conflict_staging_contended_groups_total`, `conflict_staging_losers_total`, `conflict_requeued_total`, `conflict_preemptions_total`, `conflict_displaced_total` | counter | | the staging fields of the same names |
    /// | `conflict_events_published_total`, `conflict_events_delivered_total`, `conflict_events_missed_total` | counter | | `events_*` |
    /// | `conflict_op_type_total` | counter | `op`, `module`, `outcome` | `op_types[].outcomes` |
    /// | `conflict_op_type_attempts_total`, `conflict_op_type_conflicts_total`, `conflict_op_type_retries_total` | counter | `op`, `module` | `op_types[].attempts`, `.conflicts`, `.retries` |
    /// | `conflict_op_type_retries_per_success_{bucket,sum,count}` | histogram | `op`, `module` (+ `le` = `0.0` … `31.0`, `+Inf`) | `op_types[].retries_per_success.distribution` (32 or more only in `+Inf`) |
    /// | `conflict_op_type_retries_per_success_max` | gauge | `op`, `module` | `.retries_per_success.max` |
    /// | `conflict_cleanup_cleaned_total` | counter | `strategy` (`none`, `immediate`, `deferred`, `lazy`, `custom`, `per_target_cap`) | `cleanup.cleaned` |
    /// | `conflict_cleanup_triggered_total` | counter | `trigger` (`memory_pressure`, `force_threshold`) | `cleanup.memory_pressure_triggered`, `.force_triggered` |
    /// | `conflict_cleanup_failures_total`, `conflict_cleanup_handler_runs_total` | counter | | `cleanup.failures`, `.handler_runs` |
    /// | `conflict_operation_latency_seconds_{sum,count,bucket}` | histogram (only `le="+Inf"`) | | `latency` |
    /// | `conflict_operation_latency_quantile_seconds` | gauge | `quantile` (`0.5`, `0.95`, `0.99`, `1`) | `latency` |
    /// | `conflict_cleanup_handler_latency_seconds_{sum,count,bucket}`, `conflict_cleanup_handler_latency_quantile_seconds` | as the two above | | `cleanup.handler_latency` |
    /// | `conflict_staging_group_size_{sum,count,bucket}` | histogram (only `le="+Inf"`) | | `staging_group_size` |
    /// | `conflict_staging_group_size_quantile` | gauge | `quantile` (`0.5`, `0.99`, `1`) | `staging_group_size` |
    ///
    /// Distributions: the snapshot keeps quantiles rather than bucket counts, and
    /// `prometheus-client` has no summary type, so each is a histogram with only the `+Inf`
    /// bucket (`_sum` is mean × count, so `rate(_sum) / rate(_count)` is the mean over a window)
    /// plus a `_quantile` gauge family. The quantiles are computed since the runtime started,
    /// and are upper bounds within 6.25%. Label values are escaped as the format requires.
    ///
    /// ```
    /// let rt = conflict_runtime::Runtime::in_memory();
    /// let text = rt.metrics().to_prometheus();
    /// assert!(text.contains("\nconflict_operations_submitted_total 0\n"));
    /// assert!(text.ends_with("# EOF\n"));
    /// ```
    #[must_use]
    pub fn to_prometheus(&self) -> String {
        super::prometheus::render(self)
    }
}
