//! Metrics lose nothing: under contention every submitted operation is counted exactly once.

use conflict_runtime::OutcomeKind;
use conflict_runtime::prelude::*;
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
        let text = m.to_prometheus();
        assert!(text.contains(&format!(
            "conflict_operations_submitted_total {}",
            m.submitted
        )));
    });
}
