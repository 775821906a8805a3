//! Regression tests for the reliability defects of issue #9: each names the invariant it checks
//! and failed on the code before the fix.
//!
//! Time-dependent cases run on tokio's paused clock; the concurrency cases on a multi-thread
//! runtime with conservation checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use conflict_runtime::prelude::*;
use conflict_runtime::store::{EntityStore, MemoryStore};
use conflict_runtime::{operation::OperationStatus, operation::OutcomeKind};
use conflict_tests::faults::SlowCommits;
use conflict_tests::probe::{Overlap, outside_write, wait_in_flight_zero};
use conflict_tests::{Counter, multi_thread, pg};

// ---------------------------------------------------------------------------------------------
// 1. Concurrent eviction never lets two staged calls execute on one target.

/// Staging only (no OCC retry): exclusivity comes from staging alone, so two executing calls on
/// one target would show as overlapping bodies and as failed commits.
#[with_conflict_resolution(mode = "pre_ecs", pre_ecs(on_lose = "requeue"))]
async fn exclusive_bump(c: &mut Counter, overlap: Arc<Overlap>) -> u64 {
    let _in = overlap.enter();
    tokio::task::yield_now().await;
    c.value += 1;
    c.value
}

/// Invariant: at most one staged operation executes per target, whatever runs beside it — here
/// two tasks evicting idle targets in a loop beside 12 callers on 3 targets, which pause between
/// calls so that targets go idle (and are evicted) all the time; half of the callers use a fresh
/// handle per call. Every call commits and each counter equals the calls made on it.
#[test]
fn concurrent_evictors_never_let_two_staged_calls_execute_on_one_target() {
    multi_thread(4, async {
        let rt = Runtime::in_memory();
        let mut targets = Vec::new();
        for _ in 0..3 {
            let h = rt.insert(Counter::new()).await.unwrap();
            targets.push((h, Arc::new(Overlap::default())));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let evictors: Vec<_> = (0..2)
            .map(|_| {
                let (rt, stop) = (rt.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut evicted = 0;
                    while !stop.load(Ordering::Relaxed) {
                        evicted += rt.evict_idle_targets();
                        tokio::task::yield_now().await;
                    }
                    evicted
                })
            })
            .collect();
        const CALLERS: usize = 12;
        const CALLS: u64 = 1_000;
        let callers: Vec<_> = (0..CALLERS)
            .map(|i| {
                let (rt, (kept, overlap)) = (rt.clone(), targets[i % 3].clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    for n in 0..CALLS {
                        let r = if i % 2 == 0 {
                            exclusive_bump(&kept, overlap.clone()).await
                        } else {
                            exclusive_bump(&rt.handle::<Counter>(kept.id()), overlap.clone()).await
                        };
                        outcomes.push(r.map(|c| c.value).map_err(|e| e.kind()));
                        for _ in 0..(n % 4) {
                            tokio::task::yield_now().await;
                        }
                    }
                    outcomes
                })
            })
            .collect();
        let mut committed = 0;
        let mut failed = Vec::new();
        for c in callers {
            for r in c.await.unwrap() {
                match r {
                    Ok(_) => committed += 1,
                    Err(kind) => failed.push(kind),
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for e in evictors {
            e.await.unwrap();
        }
        for (_, overlap) in &targets {
            assert_eq!(
                overlap.most(),
                1,
                "two staged calls executed at once on one target"
            );
        }
        assert!(
            failed.is_empty(),
            "{} staged calls failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert_eq!(committed, CALLERS as u64 * CALLS);
        let mut total = 0;
        for (h, _) in &targets {
            let v = h.load().await.unwrap();
            assert_eq!(v.version, v.value.value + 1, "one version per commit");
            total += v.value.value;
        }
        assert_eq!(total, committed, "the counters add up to the calls");
    });
}

// ---------------------------------------------------------------------------------------------
// 2. Idle staging state is freed without the application's help.

#[with_conflict_resolution]
async fn touch(c: &mut Counter) -> u64 {
    c.value += 1;
    c.value
}

/// Invariant: staging memory follows the live handles: a target's staging state is kept while a
/// handle that called it lives (and its clones), and is gone once the last one is dropped,
/// with no `evict_idle_targets()` call.
#[tokio::test]
async fn idle_targets_are_evicted_when_their_last_handle_goes() {
    let rt = Runtime::in_memory();
    const N: usize = 2_000;
    // Handles dropped right after their one call: nothing is kept.
    for _ in 0..N {
        let h = rt.insert(Counter::new()).await.unwrap();
        touch(&h).await.unwrap();
    }
    assert_eq!(rt.staging_status().tracked_targets, 0);

    // Handles kept: their targets are kept, and freed with them.
    let mut kept = Vec::new();
    for _ in 0..N {
        let h = rt.insert(Counter::new()).await.unwrap();
        touch(&h).await.unwrap();
        kept.push(h);
    }
    assert_eq!(rt.staging_status().tracked_targets, N);
    let clones: Vec<_> = kept.iter().take(10).cloned().collect();
    drop(kept);
    assert_eq!(rt.staging_status().tracked_targets, 10, "clones still hold");

    // A clone keeps the live cell: calls through it and through a new handle of the same
    // target share one staging state (one target tracked), and the cell goes with the last.
    let again = rt.handle::<Counter>(clones[0].id());
    touch(&again).await.unwrap();
    touch(&clones[0]).await.unwrap();
    assert_eq!(rt.staging_status().tracked_targets, 10);
    drop(clones);
    assert_eq!(rt.staging_status().tracked_targets, 1);
    drop(again);
    assert_eq!(rt.staging_status().tracked_targets, 0);
}

/// Resident memory of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Invariant: calling many distinct targets once each leaves no staging state behind. Prints
/// the process's resident memory before and after the calls (`--nocapture`); the number of
/// targets is `CONFLICT_RSS_TARGETS` (default 100,000; the figure is for 1,000,000,
/// run with `--release`).
#[test]
fn many_distinct_targets_leave_no_staging_state() {
    let n: usize = std::env::var("CONFLICT_RSS_TARGETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    multi_thread(2, async move {
        let rt = Runtime::in_memory();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(rt.insert(Counter::new()).await.unwrap().id());
        }
        let before = rss_kib();
        for id in &ids {
            touch(&rt.handle::<Counter>(*id)).await.unwrap();
        }
        let after = rss_kib();
        let status = rt.staging_status();
        println!(
            "{n} distinct targets called once each: RSS {before} KiB after the inserts, {after} KiB \
             after the calls ({:+} KiB, {:.1} B per target); staging tracks {} targets",
            after as i64 - before as i64,
            (after as f64 - before as f64) * 1024.0 / n as f64,
            status.tracked_targets
        );
        assert_eq!(status.tracked_targets, 0);
        assert_eq!(rt.metrics().outcome(OutcomeKind::Committed), n as u64);
    });
}

// ---------------------------------------------------------------------------------------------
// 3. A higher-priority call takes over at the grace end even after a conflicting commit.

/// A low-priority body: quick on its first attempt, 1 s on every retry (paused clock).
#[with_conflict_resolution(
    priority = 2,
    pre_ecs(grace_period_ms = 100, on_lose = "requeue"),
    occ(max_retries = 3, base_delay_ms = 0, max_delay_ms = 0)
)]
async fn long_retry(c: &mut Counter, runs: Arc<AtomicU64>) -> u64 {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    let ms = if run == 1 { 5 } else { 1_000 };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    c.value += 1;
    c.value
}

#[with_conflict_resolution(priority = 9, pre_ecs(on_lose = "requeue"), occ = false)]
async fn urgent(c: &mut Counter) -> u64 {
    c.value += 100;
    c.value
}

/// Invariant: a staged call that outranks the executing one takes over when the executing
/// one's grace period ends — also when it arrived while that one was committing and the commit
/// then conflicted (the executing one is retrying). Before the fix it waited for the whole
/// retry (here 1 s, and forever with a stalled retry).
#[tokio::test(start_paused = true)]
async fn a_higher_priority_call_preempts_at_the_grace_end_after_a_conflicting_commit() {
    let memory: Arc<dyn EntityStore> = Arc::new(MemoryStore::new());
    let store = SlowCommits::new(memory.clone());
    store.delay_before(Duration::from_millis(50));
    let rt = Runtime::builder()
        .shared_store(store.clone())
        .build()
        .unwrap();
    let h = rt.insert(Counter::new()).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let runs = Arc::new(AtomicU64::new(0));
    let low = {
        let (h, runs) = (h.clone(), runs.clone());
        tokio::spawn(async move { long_retry(&h, runs).await })
    };
    // t = 5 ms: the low call's body is done and its commit waits 50 ms before it applies.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let high = {
        let h = h.clone();
        tokio::spawn(async move {
            let r = urgent(&h).await;
            (r, tokio::time::Instant::now())
        })
    };
    // Meanwhile another writer moves the entity on, so the low call's commit conflicts (t = 55).
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut moved = h.load().await.unwrap().value;
    moved.value = 1_000;
    let out = memory
        .commit(outside_write(h.key().clone(), 1, moved))
        .await
        .unwrap();
    assert!(matches!(
        out,
        conflict_runtime::store::CommitOutcome::Committed { .. }
    ));

    let (high, high_done) = high.await.unwrap();
    let high = high.expect("the high-priority call commits");
    let low = low.await.unwrap();
    let took = high_done - t0;
    assert!(
        matches!(low, Err(ConflictError::Preempted { .. })),
        "the retrying low call is preempted at its grace end: {low:?}"
    );
    // Grace end at t = 100 ms, then the high call's body and its 50 ms commit.
    assert!(
        took <= Duration::from_millis(200),
        "the high-priority call waited {took:?}, past the grace end"
    );
    assert_eq!(high.attempts, 1, "it ran once, on a fresh snapshot");
    assert_eq!(h.load().await.unwrap().value.value, 1_100);
}

// ---------------------------------------------------------------------------------------------
// 4. What a dropped call's commit did is what is counted.

#[with_conflict_resolution(occ(max_retries = 0), pre_ecs = false)]
async fn plain_bump(c: &mut Counter) -> u64 {
    c.value += 1;
    c.value
}

/// Runs `calls` calls that their callers drop while the commit is in flight, on `store` (whose
/// reply, or whose write, is delayed past the callers' patience), and returns the metrics.
async fn drop_mid_commit(rt: &Runtime, calls: usize, patience: Duration) {
    let h = rt.insert(Counter::new()).await.unwrap();
    for _ in 0..calls {
        let r = tokio::time::timeout(patience, plain_bump(&h)).await;
        assert!(r.is_err(), "the caller gave up before the reply");
        wait_in_flight_zero(rt).await;
    }
}

/// Invariant: a caller that drops a call after its write was sent does not change what the
/// write did: an applied commit is counted and recorded `committed` (not `cancelled`, and no
/// cancelled zombie a cleanup handler would compensate), one that did not apply is not.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_mid_commit_is_counted_by_what_its_commit_did() {
    let (rt, store) = SlowCommits::memory_runtime();

    // The write applies, the reply comes after the caller has left.
    store.delay_after(Duration::from_millis(50));
    drop_mid_commit(&rt, 100, Duration::from_millis(10)).await;
    let m = rt.metrics();
    assert_eq!(store.commits_applied(), 100);
    assert_eq!(m.outcome(OutcomeKind::Committed), 100, "{:?}", m.outcomes);
    assert_eq!(m.outcome(OutcomeKind::Cancelled), 0);
    assert_eq!(
        rt.operations().by_status(OperationStatus::Cancelled).len(),
        0
    );
    assert_eq!(
        rt.operations().by_status(OperationStatus::Succeeded).len(),
        100
    );

    // The caller leaves before the write is even sent on: nothing applies, it is cancelled.
    store.delay_after(Duration::ZERO);
    store.delay_before(Duration::from_millis(50));
    let h = rt.insert(Counter::new()).await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(10), plain_bump(&h)).await;
    assert!(r.is_err());
    // Another writer gets there first, so the abandoned commit conflicts.
    let out = store
        .inner()
        .commit(outside_write(
            h.key().clone(),
            1,
            Counter {
                id: h.id(),
                ..Counter::new()
            },
        ))
        .await
        .unwrap();
    assert!(matches!(
        out,
        conflict_runtime::store::CommitOutcome::Committed { .. }
    ));
    wait_in_flight_zero(&rt).await;
    let m = rt.metrics();
    assert_eq!(m.outcome(OutcomeKind::Committed), 100);
    assert_eq!(m.outcome(OutcomeKind::Cancelled), 1);
    assert_eq!(m.submitted, m.ended);
}

/// Invariant (PostgreSQL): as above on a real database: every applied commit of a dropped call
/// is counted `committed`, has its ledger row, and none is counted `cancelled`.
#[test]
fn on_postgres_a_call_dropped_mid_commit_is_counted_committed() {
    multi_thread(2, async {
        let pg_store = pg::store("dropped_mid_commit").await;
        let store = SlowCommits::new(Arc::new(pg_store.clone()));
        store.delay_after(Duration::from_millis(150));
        let rt = Runtime::builder()
            .shared_store(store.clone())
            .build()
            .unwrap();
        let h = rt.insert(Counter::new()).await.unwrap();
        const CALLS: u64 = 20;
        for _ in 0..CALLS {
            let r = tokio::time::timeout(Duration::from_millis(60), plain_bump(&h)).await;
            assert!(r.is_err(), "the caller gave up before the reply");
            wait_in_flight_zero(&rt).await;
        }
        let m = rt.metrics();
        assert_eq!(store.commits_applied(), CALLS);
        assert_eq!(m.outcome(OutcomeKind::Committed), CALLS, "{:?}", m.outcomes);
        assert_eq!(m.outcome(OutcomeKind::Cancelled), 0);
        let ledger = pg_store.ledger_for(h.key()).await.unwrap();
        assert_eq!(
            ledger.len() as u64,
            CALLS,
            "one ledger row per applied commit"
        );
        let v = h.load().await.unwrap();
        assert_eq!((v.value.value, v.version), (CALLS, CALLS + 1));
    });
}

// ---------------------------------------------------------------------------------------------
// 5. A call cancelled in its staging window does not leave the target collecting.

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 50), occ = false)]
async fn windowed(c: &mut Counter) -> u64 {
    c.value += 1;
    c.value
}

/// Invariant: when the last member of a collecting group leaves (its caller dropped it), the
/// window closes: the target is idle again (not shown busy) and its state is freed with its
/// handle.
#[tokio::test(start_paused = true)]
async fn a_call_cancelled_in_its_window_leaves_the_target_idle() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(10), windowed(&h)).await;
    assert!(r.is_err(), "dropped inside the 50 ms window");
    let status = rt.staging_status();
    assert!(status.targets.is_empty(), "target still busy: {status:?}");
    assert_eq!(status.total_staged, 0);
    // Long after the window: still idle, and a new call runs normally.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rt.staging_status().targets.is_empty());
    assert_eq!(windowed(&h).await.unwrap().value, 1);
    drop(h);
    assert_eq!(rt.staging_status().tracked_targets, 0);
    let m = rt.metrics();
    assert_eq!(m.outcome(OutcomeKind::Cancelled), 1);
    assert_eq!(m.outcome(OutcomeKind::Committed), 1);
}

// ---------------------------------------------------------------------------------------------
// 6. Only live ancestors make a call reentrant.

#[with_conflict_resolution]
async fn grab_context(c: &mut Counter) -> Option<conflict_runtime::operation::OperationContext> {
    c.value += 1;
    conflict_runtime::operation::current_operation()
}

/// Invariant: a call made under `scope().parent(ctx)` after `ctx`'s operation has ended is not
/// `Reentrant` on that operation's entity (it holds nothing any more) and does not wait: there
/// is no commit left to compose into, so it ends `RolledBack` at once, committing nothing, and
/// records `ctx`'s operation as its parent. While the operation runs, the same call is
/// `Reentrant`.
#[tokio::test]
async fn a_context_whose_operation_ended_does_not_make_its_target_reentrant() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let parent = grab_context(&h).await.unwrap();
    let ctx = parent.value.expect("a body sees its operation");
    assert!(!ctx.is_running());
    let child = conflict_runtime::operation::scope()
        .parent(ctx.clone())
        .run(touch(&h))
        .await
        .expect_err("an ended ancestor has no commit to join");
    assert!(
        matches!(child, ConflictError::RolledBack { root_op_id, .. } if root_op_id == parent.op_id),
        "{child}"
    );
    assert_eq!(h.load().await.unwrap().version, 2, "nothing committed");
    let rec = rt.operations().get(child.op_id().unwrap()).unwrap();
    assert_eq!(rec.parent_op_id, Some(parent.op_id));
    assert_eq!(rec.outcome, Some(OutcomeKind::RolledBack));

    // A live ancestor still counts, also through a spawned task.
    #[with_conflict_resolution]
    async fn nested_in_task(c: &mut Counter, h: Handle<Counter>) -> bool {
        c.value += 1;
        let ctx = conflict_runtime::operation::current_operation().unwrap();
        assert!(ctx.is_running());
        let child = tokio::spawn(async move {
            conflict_runtime::operation::scope()
                .parent(ctx)
                .run(touch(&h))
                .await
                .map(|c| c.value)
                .map_err(|e| e.kind())
        });
        matches!(child.await.unwrap(), Err(OutcomeKind::Reentrant))
    }
    assert!(nested_in_task(&h, h.clone()).await.unwrap().value);
}

// ---------------------------------------------------------------------------------------------
// 9. A panic in `Clone` ends the call as `Panicked`.

static FRAGILE: AtomicBool = AtomicBool::new(false);

/// An entity whose `Clone` panics while `FRAGILE` is set.
#[derive(Debug, Serialize, Deserialize, Entity)]
struct Brittle {
    #[entity(id)]
    id: EntityId,
    n: u64,
}

impl Clone for Brittle {
    fn clone(&self) -> Self {
        assert!(!FRAGILE.load(Ordering::SeqCst), "Brittle::clone panicked");
        Self {
            id: self.id,
            n: self.n,
        }
    }
}

/// An argument whose `Clone` always panics.
#[derive(Debug)]
struct BadArg;

impl Clone for BadArg {
    fn clone(&self) -> Self {
        panic!("BadArg::clone panicked")
    }
}

#[with_conflict_resolution]
async fn grow(b: &mut Brittle) -> u64 {
    b.n += 1;
    b.n
}

#[with_conflict_resolution]
async fn with_bad_arg(c: &mut Counter, _arg: BadArg) -> u64 {
    c.value += 1;
    c.value
}

/// Invariant: a panic in the entity's `Clone` (taken per attempt) or in an argument's `Clone`
/// ends the call with `Panicked` carrying the message, counted `panicked` (not `cancelled`),
/// commits nothing, and does not unwind into the caller's task.
#[tokio::test]
async fn a_panic_in_clone_ends_the_call_as_panicked() {
    let rt = Runtime::in_memory();
    let b = rt
        .insert(Brittle {
            id: EntityId::new(),
            n: 0,
        })
        .await
        .unwrap();
    FRAGILE.store(true, Ordering::SeqCst);
    let r = grow(&b).await;
    FRAGILE.store(false, Ordering::SeqCst);
    match r {
        Err(ConflictError::Panicked { message, .. }) => {
            assert!(message.contains("Brittle::clone"), "{message}");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(b.load().await.unwrap().version, 1, "nothing committed");

    let c = rt.insert(Counter::new()).await.unwrap();
    match with_bad_arg(&c, BadArg).await {
        Err(ConflictError::Panicked { message, .. }) => {
            assert!(message.contains("BadArg::clone"), "{message}");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(c.load().await.unwrap().version, 1, "nothing committed");
    let m = rt.metrics();
    assert_eq!(m.outcome(OutcomeKind::Panicked), 2);
    assert_eq!(m.outcome(OutcomeKind::Cancelled), 0);
    assert_eq!(m.in_flight, 0);
}

// ---------------------------------------------------------------------------------------------
// A storm of cancellations, panics, evictions and a shutdown: every operation is conserved.

#[with_conflict_resolution(
    pre_ecs(on_lose = "requeue", grace_period_ms = 1),
    occ(max_retries = 50, base_delay_ms = 0, max_delay_ms = 0)
)]
async fn storm_requeue(c: &mut Counter, panic: bool, work_us: u64) -> u64 {
    storm_body(c, panic, work_us).await
}

#[with_conflict_resolution(
    pre_ecs(grace_period_ms = 1),
    occ(max_retries = 50, base_delay_ms = 0, max_delay_ms = 0)
)]
async fn storm_reject(c: &mut Counter, panic: bool, work_us: u64) -> u64 {
    storm_body(c, panic, work_us).await
}

/// Keeps the storm's deliberate panics out of the test output (thousands of backtraces); every
/// other panic is reported as usual.
fn quiet_deliberate_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !msg.contains("on purpose") {
                default(info);
            }
        }));
    });
}

async fn storm_body(c: &mut Counter, panic: bool, work_us: u64) -> u64 {
    if work_us > 0 {
        tokio::time::sleep(Duration::from_micros(work_us)).await;
    } else {
        tokio::task::yield_now().await;
    }
    assert!(!panic, "storm body panicked on purpose");
    c.value += 1;
    c.value
}

/// What the callers of a storm were told.
#[derive(Default, Debug)]
struct Told {
    committed: u64,
    panicked: u64,
    dropped: u64,
    shutting_down: u64,
    other: std::collections::BTreeMap<&'static str, u64>,
}

/// Runs `tasks` tasks of random calls (priorities, reject/requeue, panicking bodies, callers
/// that give up after a random time, fresh or kept handles) on `targets` counters, with two
/// evictors beside them, then shuts the runtime down while they still submit. Returns what the
/// callers were told, per target the commits they were told of, and the shutdown report.
async fn storm(
    rt: &Runtime,
    targets: usize,
    tasks: usize,
    run_for: Duration,
    work_us: u64,
    shutdown_timeout: Duration,
) -> (Told, Vec<Handle<Counter>>, conflict_runtime::ShutdownReport) {
    quiet_deliberate_panics();
    let mut hs = Vec::new();
    for _ in 0..targets {
        hs.push(rt.insert(Counter::new()).await.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let evictors: Vec<_> = (0..2)
        .map(|_| {
            let (rt, stop) = (rt.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    rt.evict_idle_targets();
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            })
        })
        .collect();
    let workers: Vec<_> = (0..tasks)
        .map(|seed| {
            let (rt, hs) = (rt.clone(), hs.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed as u64);
                let mut told = Told::default();
                loop {
                    let h = &hs[rng.usize(..hs.len())];
                    let fresh;
                    let h = if rng.bool() {
                        fresh = rt.handle::<Counter>(h.id());
                        &fresh
                    } else {
                        h
                    };
                    let panic = rng.u8(..20) == 0;
                    let priority = OperationPriority::new(rng.u8(1..=10)).unwrap();
                    let work = if work_us == 0 { 0 } else { rng.u64(..=work_us) };
                    let requeue = rng.bool();
                    let call = async {
                        if requeue {
                            storm_requeue(h, panic, work).await
                        } else {
                            storm_reject(h, panic, work).await
                        }
                    };
                    let call = conflict_runtime::operation::scope()
                        .priority(priority)
                        .run(call);
                    let patience = Duration::from_micros(rng.u64(50..5_000));
                    let r = if rng.u8(..4) == 0 {
                        tokio::time::timeout(patience, call).await
                    } else {
                        Ok(call.await)
                    };
                    match r {
                        Err(_) => told.dropped += 1,
                        Ok(Ok(_)) => told.committed += 1,
                        Ok(Err(e)) => match e.kind() {
                            OutcomeKind::Panicked => told.panicked += 1,
                            OutcomeKind::ShuttingDown => {
                                told.shutting_down += 1;
                                if rt.is_shutting_down() {
                                    return told;
                                }
                            }
                            k => *told.other.entry(k.as_str()).or_default() += 1,
                        },
                    }
                }
            })
        })
        .collect();
    // An aborting shutdown must meet a body that is still running: one that runs for 10 s on a
    // target of its own, started just before.
    let sentinel = if shutdown_timeout.is_zero() {
        let h = rt.insert(Counter::new()).await.unwrap();
        hs.push(h.clone());
        Some(tokio::spawn(async move {
            storm_reject(&h, false, 10_000_000)
                .await
                .map_err(|e| e.kind())
        }))
    } else {
        None
    };
    tokio::time::sleep(run_for).await;
    let report = rt.shutdown(shutdown_timeout).await;
    let mut told = Told::default();
    if let Some(s) = sentinel {
        assert_eq!(s.await.unwrap(), Err(OutcomeKind::ShuttingDown), "aborted");
        told.shutting_down += 1;
    }
    for w in workers {
        let t = w.await.unwrap();
        told.committed += t.committed;
        told.panicked += t.panicked;
        told.dropped += t.dropped;
        told.shutting_down += t.shutting_down;
        for (k, v) in t.other {
            *told.other.entry(k).or_default() += v;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for e in evictors {
        e.await.unwrap();
    }
    (told, hs, report)
}

/// Checks the conservation laws of a storm; `dropped_but_committed` is how many calls whose
/// callers gave up still committed (only a store whose commit awaits has any).
async fn check_storm(
    rt: &Runtime,
    told: &Told,
    hs: Vec<Handle<Counter>>,
    report: &conflict_runtime::ShutdownReport,
) -> u64 {
    let m = rt.metrics();
    // Every submitted operation ended exactly once. (The report adds up exactly; it may count a
    // late caller that was being refused at that instant as still running.)
    assert_eq!(
        report.submitted,
        report.ended() + report.still_running,
        "{report:?}"
    );
    assert!(report.still_running <= 32, "{report:?}");
    assert_eq!(m.in_flight, 0);
    assert_eq!(m.submitted, m.ended);
    let told_total = told.committed
        + told.panicked
        + told.dropped
        + told.shutting_down
        + told.other.values().sum::<u64>();
    assert_eq!(m.submitted, told_total, "one outcome per call: {told:?}");
    // Each outcome the callers saw is the one counted; dropped calls are cancelled unless their
    // commit applied.
    assert_eq!(m.outcome(OutcomeKind::Panicked), told.panicked);
    assert_eq!(m.outcome(OutcomeKind::ShuttingDown), told.shutting_down);
    let dropped_committed = m.outcome(OutcomeKind::Committed) - told.committed;
    assert_eq!(
        m.outcome(OutcomeKind::Cancelled) + dropped_committed,
        told.dropped,
        "{told:?} / {:?}",
        m.outcomes
    );
    // No lost or doubled update: the counters hold exactly the commits, versions gap-free.
    let mut sum = 0;
    for h in &hs {
        let v = h.load().await.unwrap();
        assert_eq!(v.version, v.value.value + 1, "one version per commit");
        sum += v.value.value;
    }
    assert_eq!(sum, m.outcome(OutcomeKind::Committed));
    // Nothing leaked in staging: no permit, no executing slot, and no state once the handles go.
    let status = rt.staging_status();
    assert_eq!(
        (status.total_staged, status.executing),
        (0, 0),
        "{status:?}"
    );
    drop(hs);
    assert_eq!(rt.staging_status().tracked_targets, 0);
    dropped_committed
}

/// Invariant: under a storm of cancellations (a quarter of the callers give up after 50 µs to
/// 5 ms), panicking bodies (1 in 20), concurrent evictions, mixed priorities, reject and
/// requeue, and a shutdown while callers still submit — once graceful, once with no time left so
/// that running bodies are aborted — every submitted operation ends exactly once with the
/// outcome its caller saw, the counters equal the commits (gap-free versions), and staging leaks
/// nothing.
#[test]
fn a_storm_of_cancellations_panics_and_a_shutdown_conserves_every_operation() {
    for (label, work_us, shutdown) in [
        ("graceful shutdown", 200, Duration::from_millis(200)),
        ("aborting shutdown", 3_000, Duration::ZERO),
    ] {
        multi_thread(4, async {
            let rt = Runtime::in_memory();
            let started = std::time::Instant::now();
            let (told, hs, report) =
                storm(&rt, 4, 32, Duration::from_millis(600), work_us, shutdown).await;
            let dropped_committed = check_storm(&rt, &told, hs, &report).await;
            assert_eq!(
                dropped_committed, 0,
                "an in-memory commit never outlives its caller"
            );
            if shutdown.is_zero() {
                assert!(
                    report.timed_out,
                    "bodies were still running at the shutdown"
                );
            }
            println!(
                "memory storm, {label}: {} calls in {:.2} s, outcomes {:?}, shutdown took {:?} \
                 (timed out: {})",
                report.submitted,
                started.elapsed().as_secs_f64(),
                report.outcomes,
                report.elapsed,
                report.timed_out
            );
        });
    }
}

/// Invariant (PostgreSQL, commits that reply late): as above, and a caller that gave up while
/// its commit was in flight is counted by what the commit did; the ledger has one row per
/// counted commit.
#[test]
fn on_postgres_a_storm_of_cancellations_and_a_shutdown_conserves_every_operation() {
    multi_thread(4, async {
        let pg_store = pg::store("storm").await;
        let store = SlowCommits::new(Arc::new(pg_store.clone()));
        store.delay_after(Duration::from_millis(2));
        let rt = Runtime::builder()
            .shared_store(store.clone())
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let (told, hs, report) = storm(
            &rt,
            4,
            16,
            Duration::from_millis(1500),
            0,
            Duration::from_millis(500),
        )
        .await;
        let keys: Vec<_> = hs.iter().map(|h| h.key().clone()).collect();
        let dropped_committed = check_storm(&rt, &told, hs, &report).await;
        let m = rt.metrics();
        assert_eq!(store.commits_applied(), m.outcome(OutcomeKind::Committed));
        let mut ledger = 0;
        for k in &keys {
            ledger += pg_store.ledger_for(k).await.unwrap().len() as u64;
        }
        assert_eq!(
            ledger,
            m.outcome(OutcomeKind::Committed),
            "one ledger row per commit"
        );
        println!(
            "postgres storm: {} calls in {:.2} s, outcomes {:?}, told {told:?}, {dropped_committed} \
             dropped calls committed, shutdown {:?} (timed out: {})",
            report.submitted,
            started.elapsed().as_secs_f64(),
            report.outcomes,
            report.elapsed,
            report.timed_out
        );
    });
}
