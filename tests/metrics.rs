//! Metrics lose nothing: under contention every submitted operation is counted exactly once,
//! and the Prometheus export carries every counter of the snapshot with its exact value.

use std::collections::BTreeMap;

use conflict_runtime::prelude::*;
use conflict_runtime::{metrics::MetricsSnapshot, operation::OutcomeKind};
use conflict_tests::{Counter, multi_thread};

#[with_conflict_resolution]
async fn plain(c: &mut Counter) -> u64 {
    c.value += 1;
    tokio::task::yield_now().await;
    c.value
}

#[with_conflict_resolution(pre_ecs(on_lose = "requeue"), occ = false)]
async fn queued(c: &mut Counter) -> u64 {
    c.value += 1;
    c.value
}

#[with_conflict_resolution(
    occ(max_retries = 3, base_delay_ms = 0, max_delay_ms = 0),
    pre_ecs = false
)]
async fn optimistic(c: &mut Counter) -> u64 {
    c.value += 1;
    tokio::task::yield_now().await;
    c.value
}

/// Invariant: with 64 tasks on 3 targets mixing three operation types, the outcome counters
/// add up to the submissions (globally and per type), match what the callers saw, and the
/// committed counts match the stored values.
#[test]
fn outcome_counters_add_up_to_submissions_under_contention() {
    multi_thread(2, async {
        let rt = Runtime::in_memory();
        let mut hs = Vec::new();
        for _ in 0..3 {
            hs.push(rt.insert(Counter::new()).await.unwrap());
        }
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                let hs = hs.clone();
                tokio::spawn(async move {
                    let mut seen = std::collections::BTreeMap::<OutcomeKind, u64>::new();
                    for i in 0..150u64 {
                        let h = &hs[((t + i) % 3) as usize];
                        let kind = match (t + i) % 3 {
                            0 => plain(h).await.map(|_| ()).map_err(|e| e.kind()),
                            1 => queued(h).await.map(|_| ()).map_err(|e| e.kind()),
                            _ => optimistic(h).await.map(|_| ()).map_err(|e| e.kind()),
                        };
                        *seen
                            .entry(kind.err().unwrap_or(OutcomeKind::Committed))
                            .or_default() += 1;
                    }
                    seen
                })
            })
            .collect();
        let mut seen = std::collections::BTreeMap::<OutcomeKind, u64>::new();
        for t in tasks {
            for (k, v) in t.await.unwrap() {
                *seen.entry(k).or_default() += v;
            }
        }
        let m = rt.metrics();
        assert_eq!(m.submitted, 64 * 150);
        assert_eq!(m.ended, m.submitted);
        assert_eq!(m.in_flight, 0);
        for kind in OutcomeKind::ALL {
            assert_eq!(
                m.outcome(kind),
                seen.get(&kind).copied().unwrap_or(0),
                "{kind}"
            );
        }
        let per_type: u64 = m.op_types.iter().map(|t| t.ended).sum();
        assert_eq!(per_type, m.submitted);
        for name in ["plain", "queued", "optimistic"] {
            let t = m.op_type(name).unwrap();
            assert_eq!(t.committed + t.failed, t.ended);
            assert_eq!(
                t.retries_per_success.distribution.values().sum::<u64>(),
                t.committed
            );
            assert_eq!(
                t.attempts,
                t.retries
                    + t.outcomes
                        .iter()
                        .filter(|(k, _)| *k != "rejected" && *k != "overloaded")
                        .map(|(_, v)| v)
                        .sum::<u64>()
            );
        }
        let stored: u64 = {
            let mut s = 0;
            for h in &hs {
                s += h.load().await.unwrap().value.value;
            }
            s
        };
        assert_eq!(stored, m.outcome(OutcomeKind::Committed));
        assert_eq!(m.latency.count, m.ended);
        assert!(m.latency.p50_ns <= m.latency.p99_ns && m.latency.p99_ns <= m.latency.max_ns);
        assert_exposition_carries(&m);
        // The same snapshot with an operation type whose name needs every escape.
        let mut weird = m.op_type("optimistic").unwrap().clone();
        weird.name = "we\"ird\\op\nname".to_string();
        weird.module = "m\\\"x".to_string();
        let mut m = m;
        m.op_types.push(weird);
        assert_exposition_carries(&m);
    });
}

/// One sample: its name and labels (unescaped).
type Key = (String, BTreeMap<String, String>);

/// Parses an OpenMetrics text exposition as `to_prometheus` writes it, checking its form on
/// the way: every family opens with `# HELP` then `# TYPE` (then `# UNIT` if it has one),
/// each sample belongs to the family above it (counters as `<family>_total`, histograms as
/// `_sum`/`_count`/`_bucket{le}`), no sample appears twice, and `# EOF` ends the text.
/// Returns the samples with their raw values.
fn parse_exposition(text: &str) -> Result<BTreeMap<Key, String>, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("the exposition does not end with `# EOF`")?;
    let mut samples = BTreeMap::new();
    let mut families = std::collections::BTreeSet::new();
    let mut help: Option<&str> = None;
    let mut family: Option<(&str, &str)> = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').ok_or(format!("bad HELP: {line}"))?;
            if text.is_empty() || !families.insert(name) {
                return Err(format!("empty or repeated HELP: {line}"));
            }
            help = Some(name);
            family = None;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
            if help != Some(name) {
                return Err(format!("TYPE without its HELP: {line}"));
            }
            if !["counter", "gauge", "histogram"].contains(&kind) {
                return Err(format!("unexpected type: {line}"));
            }
            family = Some((name, kind));
        } else if let Some(rest) = line.strip_prefix("# UNIT ") {
            let (name, unit) = rest.split_once(' ').ok_or(format!("bad UNIT: {line}"))?;
            if family.map(|f| f.0) != Some(name) || !name.ends_with(&format!("_{unit}")) {
                return Err(format!("UNIT out of place: {line}"));
            }
        } else if line.starts_with('#') {
            return Err(format!("unexpected comment: {line}"));
        } else {
            let (fam, kind) = family.ok_or(format!("sample before TYPE: {line}"))?;
            let (name, labels, value) = parse_sample(line)?;
            let belongs = match kind {
                "counter" => name == format!("{fam}_total"),
                "gauge" => name == fam,
                _ => {
                    name == format!("{fam}_sum")
                        || name == format!("{fam}_count")
                        || (name == format!("{fam}_bucket") && labels.contains_key("le"))
                }
            };
            if !belongs {
                return Err(format!("{name} is not a {kind} sample of {fam}"));
            }
            value
                .parse::<f64>()
                .map_err(|_| format!("bad value: {line}"))?;
            if samples.insert((name, labels), value).is_some() {
                return Err(format!("repeated sample: {line}"));
            }
        }
    }
    Ok(samples)
}

/// `name{k="v",...} value`, with the label values unescaped (`\\`, `\"`, `\n`).
fn parse_sample(line: &str) -> Result<(String, BTreeMap<String, String>, String), String> {
    let bad = || format!("bad sample: {line:?}");
    let end = line.find(['{', ' ']).ok_or_else(bad)?;
    let name = &line[..end];
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if !is_name(name) {
        return Err(bad());
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            let (key, after) = inner.split_once("=\"").ok_or_else(bad)?;
            if !is_name(key) {
                return Err(bad());
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let close = loop {
                match chars.next().ok_or_else(bad)? {
                    (_, '\\') => match chars.next().ok_or_else(bad)?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        _ => return Err(bad()),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            if labels.insert(key.to_string(), value).is_some() {
                return Err(bad());
            }
            let tail = &after[close + 1..];
            if let Some(next) = tail.strip_prefix(',') {
                inner = next;
            } else if let Some(next) = tail.strip_prefix('}') {
                rest = next;
                break;
            } else {
                return Err(bad());
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or_else(bad)?;
    if value.is_empty() || value.contains(' ') {
        return Err(bad());
    }
    Ok((name.to_string(), labels, value.to_string()))
}

/// Asserts that `m.to_prometheus()` is a well-formed exposition carrying every counter and
/// gauge of `m` with its exact value, and nothing else.
fn assert_exposition_carries(m: &MetricsSnapshot) {
    let text = m.to_prometheus();
    let mut samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e} in\n{text}"));
    let mut take = |name: &str, labels: &[(&str, &str)]| -> String {
        let key = (
            name.to_string(),
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        samples
            .remove(&key)
            .unwrap_or_else(|| panic!("no sample {key:?} in\n{text}"))
    };
    let int = |s: String| {
        s.parse::<u64>()
            .unwrap_or_else(|_| panic!("{s} is not an integer"))
    };
    let float = |s: String| s.parse::<f64>().unwrap();

    for (name, value) in [
        ("conflict_operations_submitted_total", m.submitted),
        ("conflict_operations_ended_total", m.ended),
        ("conflict_attempts_total", m.attempts),
        ("conflict_occ_conflicts_total", m.occ_conflicts),
        ("conflict_occ_retries_total", m.occ_retries),
        ("conflict_staged_total", m.staged),
        ("conflict_staging_groups_total", m.staging_groups),
        (
            "conflict_staging_contended_groups_total",
            m.staging_contended_groups,
        ),
        ("conflict_staging_losers_total", m.staging_losers),
        ("conflict_requeued_total", m.requeued),
        ("conflict_preemptions_total", m.preemptions),
        ("conflict_displaced_total", m.displaced),
        ("conflict_events_published_total", m.events_published),
        ("conflict_events_delivered_total", m.events_delivered),
        ("conflict_events_missed_total", m.events_missed),
        ("conflict_cleanup_failures_total", m.cleanup.failures),
        (
            "conflict_cleanup_handler_runs_total",
            m.cleanup.handler_runs,
        ),
        ("conflict_operations_in_flight", m.in_flight),
    ] {
        assert_eq!(int(take(name, &[])), value, "{name}");
    }
    for (k, v) in &m.outcomes {
        assert_eq!(
            int(take("conflict_operations_total", &[("outcome", k)])),
            *v
        );
    }
    for t in &m.op_types {
        let op = [("op", t.name.as_str()), ("module", t.module.as_str())];
        for (k, v) in &t.outcomes {
            let labels = [op[0], op[1], ("outcome", k.as_str())];
            assert_eq!(int(take("conflict_op_type_total", &labels)), *v);
        }
        for (name, value) in [
            ("conflict_op_type_attempts_total", t.attempts),
            ("conflict_op_type_conflicts_total", t.conflicts),
            ("conflict_op_type_retries_total", t.retries),
            (
                "conflict_op_type_retries_per_success_max",
                t.retries_per_success.max,
            ),
        ] {
            assert_eq!(int(take(name, &op)), value, "{name} {op:?}");
        }
        let r = &t.retries_per_success;
        let mut cumulative = 0;
        for n in 0..32u32 {
            cumulative += r.distribution.get(&n).copied().unwrap_or(0);
            let le = format!("{n}.0");
            let labels = [("le", le.as_str()), op[0], op[1]];
            let got = int(take("conflict_op_type_retries_per_success_bucket", &labels));
            assert_eq!(got, cumulative, "retries ≤ {n} for {op:?}");
        }
        assert_eq!(
            cumulative,
            r.first_try + (1..32).filter_map(|n| r.distribution.get(&n)).sum::<u64>()
        );
        let labels = [("le", "+Inf"), op[0], op[1]];
        let all = int(take("conflict_op_type_retries_per_success_bucket", &labels));
        assert_eq!(all, t.committed);
        assert_eq!(
            int(take("conflict_op_type_retries_per_success_count", &op)),
            t.committed
        );
        let sum = float(take("conflict_op_type_retries_per_success_sum", &op));
        assert_eq!(sum, (r.avg * t.committed as f64).round());
    }
    for (k, v) in &m.cleanup.cleaned {
        assert_eq!(
            int(take("conflict_cleanup_cleaned_total", &[("strategy", k)])),
            *v
        );
    }
    for (trigger, v) in [
        ("memory_pressure", m.cleanup.memory_pressure_triggered),
        ("force_threshold", m.cleanup.force_triggered),
    ] {
        let labels = [("trigger", trigger)];
        assert_eq!(int(take("conflict_cleanup_triggered_total", &labels)), v);
    }
    for (name, h) in [
        ("conflict_operation_latency", &m.latency),
        (
            "conflict_cleanup_handler_latency",
            &m.cleanup.handler_latency,
        ),
    ] {
        let secs = |ns: u64| ns as f64 / 1e9;
        let count = int(take(&format!("{name}_seconds_count"), &[]));
        assert_eq!(count, h.count, "{name}");
        let inf = int(take(&format!("{name}_seconds_bucket"), &[("le", "+Inf")]));
        assert_eq!(inf, h.count, "{name}");
        let sum = float(take(&format!("{name}_seconds_sum"), &[]));
        assert_eq!(sum, secs(h.mean_ns) * h.count as f64, "{name}");
        for (q, v) in [
            ("0.5", h.p50_ns),
            ("0.95", h.p95_ns),
            ("0.99", h.p99_ns),
            ("1", h.max_ns),
        ] {
            let got = float(take(
                &format!("{name}_quantile_seconds"),
                &[("quantile", q)],
            ));
            assert_eq!(got, secs(v), "{name} q{q}");
        }
    }
    let g = &m.staging_group_size;
    assert_eq!(
        int(take("conflict_staging_group_size_count", &[])),
        g.groups
    );
    assert_eq!(
        int(take(
            "conflict_staging_group_size_bucket",
            &[("le", "+Inf")]
        )),
        g.groups
    );
    let sum = float(take("conflict_staging_group_size_sum", &[]));
    assert_eq!(sum, (g.mean * g.groups) as f64);
    for (q, v) in [("0.5", g.p50), ("0.99", g.p99), ("1", g.max)] {
        let got = float(take(
            "conflict_staging_group_size_quantile",
            &[("quantile", q)],
        ));
        assert_eq!(got, v as f64, "group size q{q}");
    }
    assert!(samples.is_empty(), "samples not accounted for: {samples:?}");
}

/// Invariant: the checker above rejects what a Prometheus scrape would (so its passing means
/// something): a missing `# EOF`, a counter sample without `_total`, a sample without its
/// family header, an unescaped quote in a label value, a repeated sample.
#[test]
fn the_exposition_checker_rejects_malformed_text() {
    let ok = "# HELP a_b A.\n# TYPE a_b counter\na_b_total{x=\"q\\\"\\\\\\n\"} 1\n# EOF\n";
    let samples = parse_exposition(ok).unwrap();
    let key = (
        "a_b_total".to_string(),
        BTreeMap::from([("x".to_string(), "q\"\\\n".to_string())]),
    );
    assert_eq!(samples.get(&key).map(String::as_str), Some("1"));
    for bad in [
        "# HELP a_b A.\n# TYPE a_b counter\na_b_total 1\n",
        "# HELP a_b A.\n# TYPE a_b counter\na_b 1\n# EOF\n",
        "a_b_total 1\n# EOF\n",
        "# HELP a_b A.\n# TYPE a_b counter\na_b_total{x=\"q\"\"} 1\n# EOF\n",
        "# HELP a_b A.\n# TYPE a_b counter\na_b_total 1\na_b_total 2\n# EOF\n",
        "# TYPE a_b counter\na_b_total 1\n# EOF\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

/// Invariant: an idle runtime's exposition is already complete and well-formed (every family
/// present, at zero), so a scrape before the first call does not miss series.
#[test]
fn an_idle_runtime_exports_every_family_at_zero() {
    let rt = Runtime::in_memory();
    let m = rt.metrics();
    assert_eq!(m.submitted, 0);
    assert_exposition_carries(&m);
}
