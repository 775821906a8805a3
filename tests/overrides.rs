//! Per-call overrides through `scope()`: on losing, retry budget, deadline. Paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conflict_runtime::prelude::*;
use conflict_tests::Counter;

/// A windowed staging area whose attribute rejects the losers.
#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 20))]
async fn grab(c: &mut Counter, tag: u64) -> u64 {
    c.value += 1;
    c.log.push(tag);
    c.value
}

/// Invariant: `scope().on_lose(Requeue)` makes a call that would be rejected stay staged and
/// run in the next round; calls without the override are still rejected.
#[tokio::test(start_paused = true)]
async fn on_lose_override_requeues_a_call_the_attribute_would_reject() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let spawn = |tag: u64, prio: OperationPriority, requeue: bool| {
        let h = h.clone();
        tokio::spawn(async move {
            let s = scope().priority(prio);
            let s = if requeue {
                s.on_lose(OnLose::Requeue)
            } else {
                s
            };
            s.run(grab(&h, tag))
                .await
                .map(|c| c.value)
                .map_err(|e| e.kind())
        })
    };
    let winner = spawn(1, OperationPriority::CRITICAL, false);
    let requeued = spawn(2, OperationPriority::LOW, true);
    let rejected = spawn(3, OperationPriority::LOW, false);
    assert!(winner.await.unwrap().is_ok());
    assert_eq!(requeued.await.unwrap(), Ok(2), "ran in the next round");
    assert_eq!(rejected.await.unwrap(), Err(OutcomeKind::Rejected));
    assert_eq!(h.load().await.unwrap().value.log, vec![1, 2]);
}

/// Each attempt commits a conflicting write through a detached call first, so an attempt
/// conflicts until `rounds` writes have happened.
#[with_conflict_resolution(
    pre_ecs = false,
    occ(max_retries = 0, base_delay_ms = 0, max_delay_ms = 0)
)]
async fn stubborn(c: &mut Counter, same: Handle<Counter>, rounds: u64) -> u64 {
    if c.value < rounds {
        scope().detached().run(sneak(&same)).await.unwrap();
    }
    c.value += 1;
    c.value
}

#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 0))]
async fn sneak(c: &mut Counter) -> u64 {
    c.value += 1;
    c.value
}

/// Invariant: `scope().max_retries(n)` replaces the attribute's retry budget: a call whose
/// attribute allows no retry commits after 3 conflicts with a budget of 5, and ends with
/// `RetriesExhausted` after exactly 3 attempts with a budget of 2.
#[tokio::test(start_paused = true)]
async fn max_retries_override_replaces_the_retry_budget() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let done = scope()
        .max_retries(5)
        .run(stubborn(&h, h.clone(), 3))
        .await
        .expect("commits within the larger budget");
    assert_eq!(done.attempts, 4);

    let h2 = rt.insert(Counter::new()).await.unwrap();
    match scope()
        .max_retries(2)
        .run(stubborn(&h2, h2.clone(), 10))
        .await
    {
        Err(ConflictError::RetriesExhausted { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    // Without the override, the attribute's budget (no retry) applies.
    let h3 = rt.insert(Counter::new()).await.unwrap();
    assert!(matches!(
        stubborn(&h3, h3.clone(), 1).await,
        Err(ConflictError::RetriesExhausted { attempts: 1, .. })
    ));
}

#[with_conflict_resolution(pre_ecs(on_lose = "requeue", grace_period_ms = 10_000))]
async fn slow(c: &mut Counter, ms: u64, runs: Arc<AtomicU64>) -> u64 {
    runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    c.value += 1;
    c.value
}

/// Invariant: a call that cannot finish by its deadline ends with `DeadlineExceeded` at the
/// deadline, having committed nothing — while staged (behind a long call), and while its body
/// runs — and leaves nothing behind (the next call runs normally).
#[tokio::test(start_paused = true)]
async fn a_deadline_ends_a_staged_or_running_call_and_commits_nothing() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let t0 = tokio::time::Instant::now();

    // Staged behind a 1 s body: gives up at 50 ms.
    let long = {
        let (h, runs) = (h.clone(), runs.clone());
        tokio::spawn(async move { slow(&h, 1_000, runs).await })
    };
    tokio::task::yield_now().await;
    let staged = scope()
        .timeout(Duration::from_millis(50))
        .run(slow(&h, 1, runs.clone()))
        .await;
    match staged {
        Err(ConflictError::DeadlineExceeded { after, .. }) => {
            assert_eq!(after, Duration::from_millis(50));
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    assert_eq!(
        t0.elapsed(),
        Duration::from_millis(50),
        "ended at the deadline"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "its body never ran");
    assert_eq!(
        rt.staging_status().total_staged,
        0,
        "it left the staging area"
    );
    assert_eq!(long.await.unwrap().unwrap().value, 1);

    // Its own body is too slow: stopped at the deadline, nothing committed.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
    let running = scope()
        .deadline(deadline)
        .run(slow(&h, 1_000, runs.clone()))
        .await;
    assert!(matches!(
        running,
        Err(ConflictError::DeadlineExceeded { .. })
    ));
    assert_eq!(tokio::time::Instant::now(), deadline);
    assert_eq!(h.load().await.unwrap().version, 2, "nothing committed");

    // The target is free again and a call in time commits.
    let ok = scope()
        .timeout(Duration::from_secs(5))
        .run(slow(&h, 10, runs.clone()))
        .await
        .unwrap();
    assert_eq!(ok.value, 2);
    let m = rt.metrics();
    assert_eq!(m.outcome(OutcomeKind::DeadlineExceeded), 2);
    assert_eq!(m.in_flight, 0);
}

#[with_conflict_resolution(
    pre_ecs = false,
    occ(
        max_retries = 10,
        base_delay_ms = 200,
        backoff_factor = 1.0,
        max_delay_ms = 200
    )
)]
async fn slow_retry(c: &mut Counter, same: Handle<Counter>) -> u64 {
    scope().detached().run(sneak(&same)).await.unwrap();
    c.value += 1;
    c.value
}

/// Invariant: a call whose next retry could not start before its deadline ends with
/// `DeadlineExceeded` at once instead of waiting out its backoff.
#[tokio::test(start_paused = true)]
async fn a_deadline_stops_retrying_when_the_backoff_would_pass_it() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let t0 = tokio::time::Instant::now();
    // Every attempt conflicts; backoff ceilings of 200 ms; a deadline of 150 ms. Full jitter can
    // draw a short wait, so a retry or two may start in time, but none after the deadline.
    let r = scope()
        .timeout(Duration::from_millis(150))
        .run(slow_retry(&h, h.clone()))
        .await;
    assert!(
        matches!(r, Err(ConflictError::DeadlineExceeded { .. })),
        "{r:?}"
    );
    assert!(
        t0.elapsed() <= Duration::from_millis(150),
        "{:?}",
        t0.elapsed()
    );
}
