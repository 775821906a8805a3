//! The OpenMetrics export of a [`MetricsSnapshot`], rendered with `prometheus-client`.
//!
//! The crate is used for export only: recording stays on the sharded atomics of the sibling
//! modules, and a render builds a [`Registry`] holding one [`Collector`] over a snapshot, whose
//! values are written as const metrics. The names and labels are listed in
//! [`MetricsSnapshot::to_prometheus`]'s documentation (and in `docs/operations.md`).
//!
//! Distributions: `prometheus-client` has no summary type, and a snapshot holds quantiles, not
//! bucket counts (its serde shape is public), so a bucketed histogram cannot be built from it
//! without inventing counts. Each distribution is therefore two families:
//! - a histogram whose only bucket is `+Inf`, carrying `_count` and `_sum` (so
//!   `rate(x_sum) / rate(x_count)` gives the mean over any window; these are the sample names
//!   the former hand-written summary had);
//! - a gauge family `<name>_quantile{quantile="..."}` with the snapshot's quantiles, which are
//!   computed since the runtime started (not over a sliding window), hence gauges.
//!
//! The retries needed per committed operation are the exception: their exact per-count
//! distribution is in the snapshot, so they are a real histogram with buckets `le="0"` to
//! `le="31"` and `+Inf`.
#![allow(
    clippy::doc_markdown,
    reason = "the OpenMetrics export names OpenMetrics throughout; it is a name, not code"
)]

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::op_table::RETRY_HIST_EXACT;
use super::snapshot::{HistogramSnapshot, MetricsSnapshot, OpTypeSnapshot};

/// Renders `s` in the OpenMetrics text format (ending with `# EOF`).
pub(super) fn render(s: &MetricsSnapshot) -> String {
    let mut registry = Registry::default();
    // A registry owns its collectors (`'static`); a snapshot is small next to its rendering.
    registry.register_collector(Box::new(SnapshotCollector(s.clone())));
    let mut out = String::new();
    // Proven infallible: the text encoder fails only when its writer does (a `String` never
    // does) or for native-only histograms, which are not used here.
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("encoding into a String cannot fail");
    out
}

/// Writes one snapshot's values as const metrics, on the registry's single scrape.
#[derive(Debug)]
struct SnapshotCollector(MetricsSnapshot);

impl Collector for SnapshotCollector {
    #[allow(
        clippy::too_many_lines,
        reason = "one family after another, in the order of the exposition; no logic to split out"
    )]
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let c = &s.cleanup;
        for (name, help, value) in [
            (
                "conflict_operations_submitted",
                "Operations started.",
                s.submitted,
            ),
            (
                "conflict_operations_ended",
                "Operations ended (the sum of conflict_operations_total).",
                s.ended,
            ),
            ("conflict_attempts", "Body runs.", s.attempts),
            (
                "conflict_occ_conflicts",
                "Compare-and-commits that found a newer version.",
                s.occ_conflicts,
            ),
            (
                "conflict_occ_retries",
                "Retries started after a conflict.",
                s.occ_retries,
            ),
            (
                "conflict_staged",
                "Operations that waited in a staging area.",
                s.staged,
            ),
            (
                "conflict_staging_groups",
                "Staging groups resolved.",
                s.staging_groups,
            ),
            (
                "conflict_staging_contended_groups",
                "Staging groups with more than one member.",
                s.staging_contended_groups,
            ),
            (
                "conflict_staging_losers",
                "Members not chosen in a group resolution (rejected or requeued).",
                s.staging_losers,
            ),
            (
                "conflict_requeued",
                "Lost rounds after which the loser stayed staged.",
                s.requeued,
            ),
            (
                "conflict_preemptions",
                "Targets taken from their executing operation by preemption (per target).",
                s.preemptions,
            ),
            (
                "conflict_displaced",
                "Staged operations displaced by a higher-priority arrival.",
                s.displaced,
            ),
            (
                "conflict_events_published",
                "Events published to at least one subscriber.",
                s.events_published,
            ),
            (
                "conflict_events_delivered",
                "Events received by subscribers.",
                s.events_delivered,
            ),
            (
                "conflict_events_missed",
                "Events subscribers missed because they fell behind.",
                s.events_missed,
            ),
            (
                "conflict_cleanup_failures",
                "Cleanup handler runs that failed for good.",
                c.failures,
            ),
            (
                "conflict_cleanup_handler_runs",
                "Custom cleanup handler runs (each including its retries).",
                c.handler_runs,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(enc.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }

        let gauge = ConstGauge::new(s.in_flight);
        gauge.encode(enc.encode_descriptor(
            "conflict_operations_in_flight",
            "Operations started and not ended.",
            None,
            gauge.metric_type(),
        )?)?;

        counter_family(
            &mut enc,
            "conflict_operations",
            "Ended operations by outcome.",
            s.outcomes
                .iter()
                .map(|(k, v)| ([("outcome", k.as_str())], *v)),
        )?;
        counter_family(
            &mut enc,
            "conflict_op_type",
            "Ended operations by function and outcome.",
            s.op_types.iter().flat_map(|t| {
                t.outcomes.iter().map(|(k, v)| {
                    (
                        [
                            ("op", t.name.as_str()),
                            ("module", t.module.as_str()),
                            ("outcome", k.as_str()),
                        ],
                        *v,
                    )
                })
            }),
        )?;
        counter_family(
            &mut enc,
            "conflict_op_type_attempts",
            "Body runs by function.",
            s.op_types.iter().map(|t| (op_labels(t), t.attempts)),
        )?;
        counter_family(
            &mut enc,
            "conflict_op_type_conflicts",
            "OCC conflicts by function.",
            s.op_types.iter().map(|t| (op_labels(t), t.conflicts)),
        )?;
        counter_family(
            &mut enc,
            "conflict_op_type_retries",
            "Attempts after the first, by function.",
            s.op_types.iter().map(|t| (op_labels(t), t.retries)),
        )?;

        let mut m = enc.encode_descriptor(
            "conflict_op_type_retries_per_success",
            "Retries needed by committed operations, by function (the last bucket is 32 or more).",
            None,
            MetricType::Histogram,
        )?;
        for t in &s.op_types {
            let r = &t.retries_per_success;
            #[allow(clippy::cast_possible_truncation, reason = "RETRY_HIST_EXACT is 32")]
            let buckets: Vec<(f64, u64)> = (0..=RETRY_HIST_EXACT as u32)
                .map(|n| {
                    let le = if n as usize == RETRY_HIST_EXACT {
                        f64::INFINITY
                    } else {
                        f64::from(n)
                    };
                    (le, r.distribution.get(&n).copied().unwrap_or(0))
                })
                .collect();
            // The count is the buckets' own total, so `+Inf` equals `_count` even when the
            // snapshot read `committed` a moment apart from the distribution.
            let count = buckets.iter().map(|(_, n)| n).sum();
            let sum = (r.avg * t.committed as f64).round();
            let labels = op_labels(t);
            m.encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        let mut m = enc.encode_descriptor(
            "conflict_op_type_retries_per_success_max",
            "Most retries any committed operation of the function needed.",
            None,
            MetricType::Gauge,
        )?;
        for t in &s.op_types {
            let labels = op_labels(t);
            ConstGauge::new(t.retries_per_success.max).encode(m.encode_family(&labels)?)?;
        }

        counter_family(
            &mut enc,
            "conflict_cleanup_cleaned",
            "Zombie records removed, by strategy (or by the per-target cap).",
            c.cleaned
                .iter()
                .map(|(k, v)| ([("strategy", k.as_str())], *v)),
        )?;
        counter_family(
            &mut enc,
            "conflict_cleanup_triggered",
            "Immediate cleanups forced by memory pressure or the zombie threshold.",
            [
                (
                    [("trigger", "memory_pressure")],
                    c.memory_pressure_triggered,
                ),
                ([("trigger", "force_threshold")], c.force_triggered),
            ],
        )?;

        latency(
            &mut enc,
            "conflict_operation_latency",
            "Submission-to-end latency of ended operations",
            &s.latency,
        )?;
        latency(
            &mut enc,
            "conflict_cleanup_handler_latency",
            "How long cleanup handler runs took",
            &c.handler_latency,
        )?;
        let g = &s.staging_group_size;
        // Sizes are counts: no unit, no scaling.
        distribution(
            &mut enc,
            "conflict_staging_group_size",
            "Members of resolved staging groups (a call that ran at once on an idle target is \
             not one)",
            None,
            g.groups,
            g.mean as f64,
            &[
                ("0.5", g.p50 as f64),
                ("0.99", g.p99 as f64),
                ("1", g.max as f64),
            ],
        )?;
        Ok(())
    }
}

/// The `op` and `module` labels of one operation type.
fn op_labels(t: &OpTypeSnapshot) -> [(&'static str, &str); 2] {
    [("op", t.name.as_str()), ("module", t.module.as_str())]
}

/// One counter family: a `# HELP`/`# TYPE` header, then a sample per label set.
fn counter_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A latency histogram snapshot (nanoseconds) as a distribution in seconds.
fn latency(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> fmt::Result {
    let secs = |ns: u64| ns as f64 / 1e9;
    distribution(
        enc,
        name,
        help,
        Some(&Unit::Seconds),
        h.count,
        secs(h.mean_ns),
        &[
            ("0.5", secs(h.p50_ns)),
            ("0.95", secs(h.p95_ns)),
            ("0.99", secs(h.p99_ns)),
            ("1", secs(h.max_ns)),
        ],
    )
}

/// A distribution from its snapshot: a histogram with only the `+Inf` bucket (`_count`, and
/// `_sum` as mean × count) and the gauge family `<name>_quantile{quantile}`.
fn distribution(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    count: u64,
    mean: f64,
    quantiles: &[(&str, f64)],
) -> fmt::Result {
    enc.encode_descriptor(name, &format!("{help}."), unit, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(
            mean * count as f64,
            count,
            &[(f64::INFINITY, count)],
            None,
        )?;

    let quantile_name = format!("{name}_quantile");
    let mut m = enc.encode_descriptor(
        &quantile_name,
        &format!("{help}: quantiles since the runtime started (upper bounds within 6.25%)."),
        unit,
        MetricType::Gauge,
    )?;
    for (q, v) in quantiles {
        ConstGauge::new(*v).encode(m.encode_family(&[("quantile", *q)])?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metrics::RetryStats;

    /// A snapshot whose every figure differs, so a value written under the wrong name shows.
    fn snapshot() -> MetricsSnapshot {
        let mut s = crate::metrics::Metrics::new().snapshot();
        s.latency = HistogramSnapshot {
            count: 4,
            mean_ns: 1_500,
            p50_ns: 1_000,
            p95_ns: 2_000,
            p99_ns: 3_000,
            max_ns: 250_000_000,
        };
        s.op_types.push(OpTypeSnapshot {
            name: "we\"ird\\op\nname".into(),
            module: "m::x".into(),
            ended: 10,
            committed: 7,
            failed: 3,
            outcomes: BTreeMap::from([("committed".into(), 7), ("rejected".into(), 3)]),
            attempts: 11,
            conflicts: 5,
            retries: 4,
            retries_per_success: RetryStats {
                avg: 4.0 / 7.0,
                max: 33,
                first_try: 5,
                distribution: BTreeMap::from([(0, 5), (2, 1), (32, 1)]),
            },
        });
        s
    }

    /// Invariant: label values are escaped as the text format requires (`\\`, `\"`, `\n`), so
    /// an operation name cannot break a sample line or forge a label.
    #[test]
    fn label_values_are_escaped() {
        let text = render(&snapshot());
        for line in [
            r#"conflict_op_type_total{op="we\"ird\\op\nname",module="m::x",outcome="committed"} 7"#,
            r#"conflict_op_type_attempts_total{op="we\"ird\\op\nname",module="m::x"} 11"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("op\nname"), "raw newline in a label");
    }

    /// Invariant: a distribution is a histogram whose `+Inf` bucket and `_count` are the
    /// sample count and whose `_sum` is mean × count, plus quantile gauges, all in seconds.
    #[test]
    fn latency_is_a_histogram_in_seconds_with_quantile_gauges() {
        let text = render(&snapshot());
        for line in [
            "# TYPE conflict_operation_latency_seconds histogram",
            "# UNIT conflict_operation_latency_seconds seconds",
            "conflict_operation_latency_seconds_sum 0.000006",
            "conflict_operation_latency_seconds_count 4",
            r#"conflict_operation_latency_seconds_bucket{le="+Inf"} 4"#,
            "# TYPE conflict_operation_latency_quantile_seconds gauge",
            r#"conflict_operation_latency_quantile_seconds{quantile="0.5"} 0.000001"#,
            r#"conflict_operation_latency_quantile_seconds{quantile="0.95"} 0.000002"#,
            r#"conflict_operation_latency_quantile_seconds{quantile="0.99"} 0.000003"#,
            r#"conflict_operation_latency_quantile_seconds{quantile="1"} 0.25"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    /// Invariant: the retries-per-success histogram is cumulative over the exact distribution,
    /// with 32-or-more in `+Inf` only, and its sum is the retries of committed operations.
    #[test]
    fn retries_per_success_buckets_are_cumulative() {
        let text = render(&snapshot());
        let labels = r#"op="we\"ird\\op\nname",module="m::x""#;
        let bucket = |le: &str| {
            let prefix =
                format!("conflict_op_type_retries_per_success_bucket{{le=\"{le}\",{labels}}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket le={le} in\n{text}"))
                .to_string()
        };
        assert_eq!(bucket("0.0"), "5");
        assert_eq!(bucket("1.0"), "5");
        assert_eq!(bucket("2.0"), "6");
        assert_eq!(bucket("31.0"), "6");
        assert_eq!(bucket("+Inf"), "7");
        assert!(text.contains(&format!(
            "conflict_op_type_retries_per_success_sum{{{labels}}} 4.0\n"
        )));
        assert!(text.contains(&format!(
            "conflict_op_type_retries_per_success_count{{{labels}}} 7\n"
        )));
        assert!(text.contains(&format!(
            "conflict_op_type_retries_per_success_max{{{labels}}} 33\n"
        )));
    }

    /// Invariant: the output is one OpenMetrics exposition: every family is introduced by
    /// `# HELP` and `# TYPE`, counter samples end in `_total`, and `# EOF` ends it, once.
    #[test]
    fn output_is_one_openmetrics_exposition() {
        let text = render(&snapshot());
        assert!(text.ends_with("\n# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
        let mut family: Option<(String, String)> = None;
        let mut help: Option<String> = None;
        for line in text.lines().filter(|l| *l != "# EOF") {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                help = Some(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(help.as_deref(), Some(name), "TYPE without HELP: {line}");
                family = Some((name.to_string(), kind.to_string()));
            } else if line.starts_with("# UNIT ") {
            } else {
                let (name, kind) = family.as_ref().expect("sample before any TYPE");
                let sample = line.split(['{', ' ']).next().unwrap();
                let ok = match kind.as_str() {
                    "counter" => sample == format!("{name}_total"),
                    "gauge" => sample == name,
                    "histogram" => ["_sum", "_count", "_bucket"]
                        .iter()
                        .any(|s| sample == format!("{name}{s}")),
                    other => panic!("unexpected type {other}"),
                };
                assert!(ok, "{sample} is not a {kind} sample of {name}");
            }
        }
    }
}
