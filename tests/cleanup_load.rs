//! Load (not timed): a million rejected operations keep the registry bounded under both the
//! "immediate" and the "deferred" strategy. Prints the peak memory of the process.

use std::time::Duration;

use conflict_runtime::prelude::*;
use conflict_runtime::{operation::OperationStatus, operation::OutcomeKind};
use conflict_tests::Counter;

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 1, max_staged_per_target = 20000), cleanup(strategy = "immediate", immediate_cleanup_priorities = [], debug_retention_priorities = []), occ = false)]
async fn immediate(c: &mut Counter) {
    c.value += 1;
}

#[with_conflict_resolution(
    pre_ecs(staging_timeout_ms = 1, max_staged_per_target = 20000),
    cleanup(strategy = "deferred", retention_minutes = 30),
    occ = false
)]
async fn deferred(c: &mut Counter) {
    c.value += 1;
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

const BATCH: usize = 10_000;
const BATCHES: usize = 100;
const TARGETS: usize = 50;

async fn load(strategy_deferred: bool) -> (u64, u64) {
    let rt = Runtime::in_memory();
    let mut hs = Vec::new();
    for _ in 0..TARGETS {
        hs.push(rt.insert(Counter::new()).await.unwrap());
    }
    let mut max_zombies = 0;
    for b in 0..BATCHES {
        let h = hs[b % TARGETS].clone();
        let tasks: Vec<_> = (0..BATCH)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move {
                    if strategy_deferred {
                        deferred(&h).await.map(|_| ())
                    } else {
                        immediate(&h).await.map(|_| ())
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await.unwrap();
        }
        max_zombies = max_zombies.max(rt.operations().zombie_count());
    }
    let m = rt.metrics();
    assert_eq!(m.submitted, (BATCH * BATCHES) as u64);
    assert_eq!(
        m.outcome(OutcomeKind::Rejected),
        ((BATCH - 1) * BATCHES) as u64
    );
    assert_eq!(m.in_flight, 0);
    let counts = rt.operations().counts();
    assert_eq!(counts.zombies, rt.operations().zombie_count());
    assert_eq!(
        rt.operations().by_status(OperationStatus::Rejected).len() as u64,
        counts.zombies
    );
    (max_zombies, m.outcome(OutcomeKind::Rejected))
}

/// Invariant: 999,900 rejected ops (100 batches of 10,000, one winner each) leave at most `force_cleanup_threshold + 1` zombies under
/// "deferred" (30-minute retention, so only the threshold stops growth) and none under
/// "immediate".
#[test]
fn a_million_rejections_keep_the_registry_bounded() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let before = peak_rss_kib();
    let (imm_max, imm_rejected) = rt.block_on(load(false));
    let after_immediate = peak_rss_kib();
    let (def_max, def_rejected) = rt.block_on(load(true));
    let after_deferred = peak_rss_kib();
    println!(
        "immediate: {imm_rejected} rejected, max zombies {imm_max}; deferred: {def_rejected} rejected, max zombies {def_max}; peak RSS KiB: start {before}, after immediate {after_immediate}, after deferred {after_deferred}"
    );
    assert_eq!(imm_max, 0);
    // Default force threshold 1000: zombies stop growing once the total exceeds it.
    assert!(def_max <= 1001, "{def_max}");
    assert!(
        def_max >= 1000,
        "deferred keeps records up to the threshold: {def_max}"
    );
    // Bounded memory: far below what a million records would take (~200 MB).
    assert!(after_deferred < 200 * 1024, "peak RSS {after_deferred} KiB");
    let _ = Duration::ZERO;
}
