//! Adversarial review of the issue #9 fixes. The tests named `review_defect_*` reproduce
//! problems that remain (they fail on the reviewed code); the `review_holds_*` tests are attacks
//! that the fixes withstood (they pass).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conflict_runtime::prelude::*;
use conflict_runtime::store::{CommitOutcome, EntityStore, MemoryStore};
use conflict_runtime::{operation::OperationContext, operation::OutcomeKind};
use conflict_tests::faults::SlowCommits;
use conflict_tests::probe::{Overlap, outside_write, wait_in_flight_zero};
use conflict_tests::{Counter, multi_thread};

// ---------------------------------------------------------------------------------------------
// A. A dropped call's detached commit no longer holds its target: the next staged call executes
//    beside the write that is still in flight.

/// Staging only: exclusivity comes from staging alone (no OCC retry).
#[with_conflict_resolution(mode = "pre_ecs", pre_ecs(on_lose = "requeue"))]
async fn staged_only(c: &mut Counter) -> u64 {
    c.value += 1;
    c.value
}

/// Invariant (#9.1 and #9.4 together): at most one staged operation executes per target, so
/// on a target only staged calls write, a staged call never meets a conflict. Here the first
/// caller gives up 10 ms into its 50 ms commit (the write is not yet applied); the commit goes
/// on in its own task (#9.4) and applies at t = 50 ms. The second call, staged behind the first,
/// must not execute until that write has settled; on the reviewed code it is handed the target
/// at t = 10 ms, loads version 1, and its commit then conflicts with the detached one:
/// `RetriesExhausted` for a staging-only call.
#[tokio::test(start_paused = true)]
async fn review_defect_a_dropped_calls_in_flight_commit_still_holds_its_target() {
    let (rt, store) = SlowCommits::memory_runtime();
    let h = rt.insert(Counter::new()).await.unwrap();
    store.delay_before(Duration::from_millis(50));

    let first = {
        let h = h.clone();
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(10), staged_only(&h))
                .await
                .is_err()
        })
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    let second = {
        let h = h.clone();
        tokio::spawn(async move { staged_only(&h).await.map(|c| c.value).map_err(|e| e.kind()) })
    };
    // Just after the first caller left: who executes on the target while its write is in flight?
    tokio::time::sleep(Duration::from_millis(15)).await;
    let during = rt.staging_status();
    assert!(first.await.unwrap(), "the first caller gave up mid-commit");
    let second = second.await.unwrap();
    wait_in_flight_zero(&rt).await;

    let m = rt.metrics();
    assert_eq!(
        m.outcome(OutcomeKind::Committed),
        2,
        "the dropped call's commit applied and is counted, and so is the second call: {:?}",
        m.outcomes
    );
    assert_eq!(m.outcome(OutcomeKind::Cancelled), 0);
    assert_eq!(
        during.executing, 1,
        "the first call's commit still holds the target"
    );
    assert_eq!(
        during.targets[0].staged, 1,
        "the second call waits: {during:?}"
    );
    assert_eq!(
        second,
        Ok(2),
        "the staged call executed beside the first call's in-flight commit (staging at t=16ms: \
         {during:?}) and conflicted with it"
    );
}

// ---------------------------------------------------------------------------------------------
// B. Liveness is per body run, not per operation: a context taken in attempt 1 is "ended" in
//    attempt 2 although its operation still executes on the target, so a nested call under it
//    is not refused as Reentrant and waits for its own ancestor: a deadlock.

#[with_conflict_resolution]
async fn review_touch(c: &mut Counter) -> u64 {
    c.value += 1;
    c.value
}

/// Attempt 1 keeps its context and makes its own commit conflict (another writer moves the
/// entity on); attempt 2 calls `review_touch` on the same entity under that context and reports
/// how it ended.
#[with_conflict_resolution(
    pre_ecs(on_lose = "requeue"),
    occ(max_retries = 3, base_delay_ms = 0, max_delay_ms = 0)
)]
async fn keeps_context_across_attempts(
    c: &mut Counter,
    kept: Arc<Mutex<Option<OperationContext>>>,
    outside: Arc<dyn EntityStore>,
    h: Handle<Counter>,
) -> String {
    c.value += 1;
    let earlier = kept.lock().unwrap().take();
    match earlier {
        None => {
            // Attempt 1: keep the context, and move the entity on behind this attempt's back.
            let ctx = conflict_runtime::operation::current_operation();
            assert!(ctx.is_some(), "a body sees its operation");
            *kept.lock().unwrap() = ctx;
            let moved = Counter {
                id: c.id,
                value: 1_000,
                log: Vec::new(),
            };
            let out = outside
                .commit(outside_write(h.key().clone(), 1, moved))
                .await
                .unwrap();
            assert!(matches!(out, CommitOutcome::Committed { .. }), "{out:?}");
            "attempt 1".into()
        }
        Some(ctx) => {
            // Attempt 2: the operation still executes on `h` (it holds the staging slot).
            let executing = h.runtime().staging_status().executing;
            assert_eq!(executing, 1, "the parent still executes on its target");
            let child = tokio::time::timeout(
                Duration::from_secs(5),
                conflict_runtime::operation::scope()
                    .parent(ctx)
                    .run(review_touch(&h)),
            )
            .await;
            match child {
                Err(_) => "deadlocked: the child waited for its own ancestor".into(),
                Ok(Ok(_)) => "the child committed".into(),
                Ok(Err(e)) => e.kind().as_str().to_string(),
            }
        }
    }
}

/// Invariant (#9.6): only ancestors that have ended hold nothing; an operation between two
/// attempts still executes on its target, so a call on that target under its context must be
/// refused `Reentrant` (as before the fix), not wait for it.
#[tokio::test(start_paused = true)]
async fn review_defect_a_context_from_an_earlier_attempt_of_a_running_parent_is_reentrant() {
    let memory: Arc<dyn EntityStore> = Arc::new(MemoryStore::new());
    let rt = Runtime::builder()
        .shared_store(memory.clone())
        .build()
        .unwrap();
    let h = rt.insert(Counter::new()).await.unwrap();
    let kept = Arc::new(Mutex::new(None));
    let done = keeps_context_across_attempts(&h, kept, memory, h.clone())
        .await
        .unwrap();
    assert_eq!(
        done.attempts, 2,
        "attempt 1 conflicted, attempt 2 committed"
    );
    assert_eq!(
        done.value, "reentrant",
        "a nested call on the running parent's entity was not refused"
    );
}

// ---------------------------------------------------------------------------------------------
// Attacks that held up.

#[with_conflict_resolution(mode = "pre_ecs", pre_ecs(on_lose = "requeue", staging_timeout_ms = 1))]
async fn churn_window(c: &mut Counter, overlap: Arc<Overlap>, sleep_us: u64) -> u64 {
    let _in = overlap.enter();
    tokio::time::sleep(Duration::from_micros(sleep_us)).await;
    c.value += 1;
    c.value
}

#[with_conflict_resolution(mode = "pre_ecs", pre_ecs(on_lose = "reject"))]
async fn churn_now(c: &mut Counter, overlap: Arc<Overlap>) -> u64 {
    let _in = overlap.enter();
    tokio::task::yield_now().await;
    c.value += 1;
    c.value
}

/// Hold counting under churn: per-call handles, clones made and dropped mid-call, cancelled
/// calls (in windows, staged, executing), rejections, windows and an evictor. No two
/// bodies overlap on a target, every ended call is accounted for, and once every handle is
/// gone no staging state is left (nothing stuck at zero holders).
#[test]
fn review_holds_hold_counting_under_cancellation_clones_and_windows() {
    multi_thread(2, async {
        let rt = Runtime::in_memory();
        let mut targets = Vec::new();
        for _ in 0..2 {
            let h = rt.insert(Counter::new()).await.unwrap();
            targets.push((h.id(), Arc::new(Overlap::default())));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let evictor = {
            let (rt, stop) = (rt.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    rt.evict_idle_targets();
                    tokio::task::yield_now().await;
                }
            })
        };
        let callers: Vec<_> = (0..8u64)
            .map(|i| {
                let (rt, (id, overlap)) = (rt.clone(), targets[(i % 2) as usize].clone());
                tokio::spawn(async move {
                    for n in 0..150u64 {
                        let h = rt.handle::<Counter>(id);
                        let extra = if n % 3 == 0 { Some(h.clone()) } else { None };
                        let patience = Duration::from_micros(50 + (n * 37 + i * 11) % 400);
                        let fut = async {
                            if (n + i) % 3 == 0 {
                                churn_now(&h, overlap.clone()).await.map(|_| ())
                            } else {
                                churn_window(&h, overlap.clone(), (n % 5) * 20)
                                    .await
                                    .map(|_| ())
                            }
                        };
                        let _ = tokio::time::timeout(patience, fut).await;
                        drop(extra);
                        drop(h);
                    }
                })
            })
            .collect();
        for c in callers {
            c.await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        evictor.await.unwrap();
        for (_, overlap) in &targets {
            assert_eq!(overlap.most(), 1, "two bodies overlapped");
        }
        let status = rt.staging_status();
        assert_eq!(status.total_staged, 0);
        assert!(status.targets.is_empty(), "{status:?}");
        assert_eq!(
            status.tracked_targets, 0,
            "a cell outlived every handle: {status:?}"
        );
        let m = rt.metrics();
        assert_eq!(m.in_flight, 0);
        assert_eq!(m.submitted, m.ended);
    });
}

/// Shutdown while a dropped call's commit is in flight waits for it and counts it committed.
#[tokio::test(start_paused = true)]
async fn review_holds_shutdown_waits_for_a_detached_commit_and_counts_it() {
    let (rt, store) = SlowCommits::memory_runtime();
    let h = rt.insert(Counter::new()).await.unwrap();
    store.delay_after(Duration::from_millis(200));
    let r = tokio::time::timeout(Duration::from_millis(10), review_touch(&h)).await;
    assert!(r.is_err());
    let report = rt.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.still_running, 0, "{report:?}");
    assert_eq!(report.outcome(OutcomeKind::Committed), 1, "{report:?}");
    assert_eq!(report.outcome(OutcomeKind::Cancelled), 0, "{report:?}");
    assert_eq!(store.commits_applied(), 1);
}
