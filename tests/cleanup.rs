//! Cleanup of the records of operations that did not succeed, and the operation registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conflict_runtime::cleanup::MemoryPressure;
use conflict_runtime::prelude::*;
use conflict_runtime::{
    cleanup::CleanupAction, cleanup::CleanupError, cleanup::CleanupStrategy, cleanup::HealthStatus,
    operation::OperationRecord, operation::OperationStatus, operation::OutcomeKind,
};
use conflict_tests::Counter;

/// Every runtime of this test binary must register the in-code handler `in_code`, which
/// `with_code_handler` names: start-up validation covers every function linked into the binary.
fn builder() -> conflict_runtime::RuntimeBuilder {
    Runtime::builder().cleanup_handler("in_code", |_r| async { Ok::<(), CleanupError>(()) })
}

fn runtime() -> Runtime {
    builder().build().unwrap()
}

static AUDITED: AtomicU64 = AtomicU64::new(0);

#[cleanup_handler("financial_audit")]
async fn audit(op: &OperationRecord) -> Result<(), CleanupError> {
    assert_eq!(op.status, OperationStatus::Rejected);
    AUDITED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[with_conflict_resolution(
    pre_ecs(staging_timeout_ms = 50),
    cleanup(strategy = "custom", custom_cleanup_handler = "financial_audit"),
    occ = false
)]
async fn audited(c: &mut Counter) -> u64 {
    c.value += 1;
    c.value
}

/// Spawns `n` calls of `f` on `h` at once and returns their results in spawn order.
async fn burst<F, Fut, T>(h: &Handle<Counter>, n: usize, f: F) -> Vec<T>
where
    F: Fn(Handle<Counter>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(f(h.clone()))).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Invariant (the design's integration test): five concurrent calls on one entity with a custom
/// handler → one success, four rejections, exactly four handler invocations, records removed.
#[tokio::test(start_paused = true)]
async fn custom_handler_runs_once_per_rejected_op() {
    let rt = runtime();
    let h = rt.insert(Counter::new()).await.unwrap();
    let results = burst(&h, 5, |h| async move { audited(&h).await }).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(
        results
            .iter()
            .filter(|r| matches!(r, Err(ConflictError::Rejected { .. })))
            .count(),
        4
    );
    assert!(rt.cleanup_idle(Duration::from_secs(5)).await);
    assert_eq!(AUDITED.load(Ordering::SeqCst), 4);
    let m = rt.metrics();
    assert_eq!(m.cleanup.cleaned["custom"], 4);
    assert_eq!(m.cleanup.handler_runs, 4);
    assert_eq!(rt.operations().zombie_count(), 0);
    assert_eq!(rt.health().status, HealthStatus::Healthy);
}

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 50), cleanup(strategy = "immediate", immediate_cleanup_priorities = [], debug_retention_priorities = []), occ = false)]
async fn immediate(c: &mut Counter) {
    c.value += 1;
}

/// Invariant: "immediate" keeps no record of a rejected op; succeeded ones are kept.
#[tokio::test(start_paused = true)]
async fn immediate_keeps_no_zombie() {
    let rt = runtime();
    let h = rt.insert(Counter::new()).await.unwrap();
    let results = burst(&h, 5, |h| async move { immediate(&h).await }).await;
    let ok = results.iter().find_map(|r| r.as_ref().ok()).unwrap();
    assert_eq!(rt.operations().zombie_count(), 0);
    assert_eq!(rt.metrics().cleanup.cleaned["immediate"], 4);
    let kept = rt.operations().by_target(h.key());
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].op_id, ok.op_id);
    assert_eq!(kept[0].status, OperationStatus::Succeeded);
}

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 50), cleanup(strategy = "deferred", retention_minutes = 1, cleanup_check_interval_seconds = 10, immediate_cleanup_priorities = [], debug_retention_priorities = []), occ = false)]
async fn deferred(c: &mut Counter) {
    c.value += 1;
}

/// Invariant: "deferred" keeps zombies for the retention window and the sweeper removes them
/// at its next pass after that — not before, and nothing else.
#[tokio::test(start_paused = true)]
async fn deferred_removes_after_retention_at_the_check_interval() {
    let rt = runtime();
    let h = rt.insert(Counter::new()).await.unwrap();
    burst(&h, 5, |h| async move { deferred(&h).await }).await;
    assert_eq!(rt.operations().zombie_count(), 4);
    tokio::time::sleep(Duration::from_secs(55)).await;
    assert_eq!(
        rt.operations().zombie_count(),
        4,
        "still inside the retention window"
    );
    // Expired at 60 s; the sweeper runs every 10 s from the first zombie (t≈0): at 60 or 70 s.
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(rt.operations().zombie_count(), 0);
    assert_eq!(rt.metrics().cleanup.cleaned["deferred"], 4);
    assert_eq!(
        rt.operations().counts().succeeded,
        1,
        "succeeded records are not zombies"
    );
}

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 50), cleanup(strategy = "lazy", retention_minutes = 1, immediate_cleanup_priorities = [], debug_retention_priorities = []), occ = false)]
async fn lazy(c: &mut Counter) {
    c.value += 1;
}

/// Invariant: "lazy" zombies outlive their window until a query or a new operation on the same
/// target meets them; the sweeper leaves them alone; other targets' zombies stay.
#[tokio::test(start_paused = true)]
async fn lazy_removes_only_when_met() {
    let rt = runtime();
    let a = rt.insert(Counter::new()).await.unwrap();
    let b = rt.insert(Counter::new()).await.unwrap();
    burst(&a, 3, |h| async move { lazy(&h).await }).await;
    burst(&b, 3, |h| async move { lazy(&b_clone(&h)).await }).await;
    assert_eq!(rt.operations().zombie_count(), 4);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        rt.sweep_expired(),
        0,
        "the sweeper does not touch lazy records"
    );
    assert_eq!(rt.operations().zombie_count(), 4, "expired but not met yet");
    // A new operation on `a` meets a's expired zombies, not b's.
    lazy(&a).await.unwrap();
    assert_eq!(rt.operations().zombie_count(), 2);
    // A query meets the rest.
    assert!(
        rt.operations()
            .by_status(OperationStatus::Rejected)
            .is_empty()
    );
    assert_eq!(rt.operations().zombie_count(), 0);
    assert_eq!(rt.metrics().cleanup.cleaned["lazy"], 4);
}

fn b_clone(h: &Handle<Counter>) -> Handle<Counter> {
    h.clone()
}

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 50), cleanup = false, occ = false)]
async fn never_cleaned(c: &mut Counter) {
    c.value += 1;
}

/// Invariant: "none" keeps zombies past any window and still counts them.
#[tokio::test(start_paused = true)]
async fn none_keeps_and_counts() {
    let rt = runtime();
    let h = rt.insert(Counter::new()).await.unwrap();
    burst(&h, 4, |h| async move { never_cleaned(&h).await }).await;
    tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
    rt.sweep_expired();
    assert_eq!(rt.operations().zombie_count(), 3);
    let health = rt.health();
    assert_eq!(health.total_zombie_operations, 3);
    assert_eq!(health.zombie_counts_by_target[&h.key().to_string()], 3);
    let recs = rt.operations().by_status(OperationStatus::Rejected);
    assert_eq!(recs.len(), 3);
    assert!(recs.iter().all(|r| {
        r.outcome == Some(OutcomeKind::Rejected)
            && r.error_message
                .as_deref()
                .unwrap_or("")
                .contains("rejected")
    }));
}

#[with_conflict_resolution(
    pre_ecs(staging_timeout_ms = 50, max_staged_per_target = 1000),
    cleanup(strategy = "none", max_zombie_count_per_target = 3),
    occ = false
)]
async fn capped(c: &mut Counter) {
    c.value += 1;
}

/// Invariant: `max_zombie_count_per_target` is enforced always; the oldest go first.
#[tokio::test(start_paused = true)]
async fn per_target_cap_keeps_the_newest() {
    let rt = runtime();
    let h = rt.insert(Counter::new()).await.unwrap();
    let results = burst(&h, 10, |h| async move { capped(&h).await }).await;
    let mut rejected: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err().and_then(ConflictError::op_id))
        .collect();
    rejected.sort();
    let kept: Vec<_> = rt
        .operations()
        .by_status(OperationStatus::Rejected)
        .iter()
        .map(|r| r.op_id)
        .collect();
    assert_eq!(kept.len(), 3);
    assert_eq!(rt.metrics().cleanup.cleaned["per_target_cap"], 6);
    // Records arrive in rejection order (op id order within one group).
    assert_eq!(kept, rejected[6..].to_vec());
}

#[with_conflict_resolution(
    pre_ecs(staging_timeout_ms = 50, max_staged_per_target = 1000),
    cleanup(
        strategy = "none",
        max_zombie_count_per_target = 10000,
        force_cleanup_threshold = 100
    ),
    occ = false
)]
async fn forced(c: &mut Counter) {
    c.value += 1;
}

/// Invariant: above `force_cleanup_threshold` zombies, new ones are cleaned at once whatever
/// the strategy, so the total stays at the threshold.
#[tokio::test(start_paused = true)]
async fn force_threshold_bounds_the_total() {
    let rt = runtime();
    let h = rt.insert(Counter::new()).await.unwrap();
    burst(&h, 300, |h| async move { forced(&h).await }).await;
    let m = rt.metrics();
    assert_eq!(m.outcome(OutcomeKind::Rejected), 299);
    assert_eq!(rt.operations().zombie_count(), 101);
    assert_eq!(m.cleanup.force_triggered, 198);
    assert_eq!(m.cleanup.cleaned["immediate"], 198);
}

struct Fixed(f64);

impl MemoryPressure for Fixed {
    fn current(&self) -> f64 {
        self.0
    }
}

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 50), cleanup(strategy = "none", memory_pressure_threshold = 0.8, debug_retention_priorities = [NORMAL]), occ = false)]
async fn pressured(c: &mut Counter) {
    c.value += 1;
}

/// Invariant: with memory pressure above the threshold, records are cleaned at once (even
/// debug-retained priorities); below it, the configured strategy applies.
#[tokio::test(start_paused = true)]
async fn memory_pressure_switches_to_immediate() {
    let high = builder().memory_pressure(Fixed(0.95)).build().unwrap();
    let h = high.insert(Counter::new()).await.unwrap();
    burst(&h, 5, |h| async move { pressured(&h).await }).await;
    assert_eq!(high.operations().zombie_count(), 0);
    assert_eq!(high.metrics().cleanup.memory_pressure_triggered, 4);
    let health = high.health();
    assert_eq!(health.status, HealthStatus::Degraded);
    assert!(health.issues.iter().any(|i| i.contains("memory pressure")));

    let low = builder().memory_pressure(Fixed(0.5)).build().unwrap();
    let h = low.insert(Counter::new()).await.unwrap();
    burst(&h, 5, |h| async move { pressured(&h).await }).await;
    assert_eq!(low.operations().zombie_count(), 4);
    assert_eq!(low.metrics().cleanup.memory_pressure_triggered, 0);
}

#[with_conflict_resolution(priority = LOW, pre_ecs(staging_timeout_ms = 50), cleanup(strategy = "immediate", retention_minutes = 5, cleanup_check_interval_seconds = 10, debug_retention_priorities = [LOW]), occ = false)]
async fn debug_kept(c: &mut Counter) {
    c.value += 1;
}

/// Invariant: priorities in `debug_retention_priorities` are kept for the retention window even
/// under "immediate", then swept.
#[tokio::test(start_paused = true)]
async fn debug_retention_keeps_low_priority_records_for_the_window() {
    let rt = runtime();
    let h = rt.insert(Counter::new()).await.unwrap();
    burst(&h, 3, |h| async move { debug_kept(&h).await }).await;
    assert_eq!(rt.operations().zombie_count(), 2);
    tokio::time::sleep(Duration::from_secs(4 * 60)).await;
    assert_eq!(rt.operations().zombie_count(), 2);
    tokio::time::sleep(Duration::from_secs(61 + 10)).await;
    assert_eq!(rt.operations().zombie_count(), 0);
}

static FLAKY_RUNS: AtomicU64 = AtomicU64::new(0);

#[cleanup_handler("always_fails")]
async fn always_fails(_op: &OperationRecord) -> Result<(), CleanupError> {
    FLAKY_RUNS.fetch_add(1, Ordering::SeqCst);
    Err(CleanupError::new("audit log unreachable"))
}

static PANIC_RUNS: AtomicU64 = AtomicU64::new(0);

#[cleanup_handler("panics")]
async fn panics(_op: &OperationRecord) -> Result<(), CleanupError> {
    PANIC_RUNS.fetch_add(1, Ordering::SeqCst);
    panic!("handler bug");
}

#[cleanup_handler("keeps")]
async fn keeps(_op: &OperationRecord) -> Result<CleanupAction, CleanupError> {
    Ok(CleanupAction::Keep)
}

#[with_conflict_resolution(
    pre_ecs(staging_timeout_ms = 50),
    cleanup(strategy = "custom", custom_cleanup_handler = "always_fails"),
    occ = false
)]
async fn with_failing_handler(c: &mut Counter) {
    c.value += 1;
}

#[with_conflict_resolution(
    pre_ecs(staging_timeout_ms = 50),
    cleanup(strategy = "custom", custom_cleanup_handler = "panics"),
    occ = false
)]
async fn with_panicking_handler(c: &mut Counter) {
    c.value += 1;
}

#[with_conflict_resolution(
    pre_ecs(staging_timeout_ms = 50),
    cleanup(strategy = "custom", custom_cleanup_handler = "keeps"),
    occ = false
)]
async fn with_keeping_handler(c: &mut Counter) {
    c.value += 1;
}

/// Invariant: a failing or panicking handler is retried a bounded number of times, then its
/// record is kept (never lost silently) and the runtime reports itself unhealthy; a handler
/// that asks to keep its record gets it kept.
#[tokio::test(start_paused = true)]
async fn failing_handlers_keep_the_record_and_make_health_unhealthy() {
    let rt = runtime();
    let h = rt.insert(Counter::new()).await.unwrap();
    burst(&h, 2, |h| async move { with_failing_handler(&h).await }).await;
    burst(&h, 2, |h| async move { with_panicking_handler(&h).await }).await;
    burst(&h, 2, |h| async move { with_keeping_handler(&h).await }).await;
    assert!(rt.cleanup_idle(Duration::from_secs(5)).await);
    assert_eq!(
        FLAKY_RUNS.load(Ordering::SeqCst),
        3,
        "three attempts, then give up"
    );
    assert_eq!(PANIC_RUNS.load(Ordering::SeqCst), 3);
    assert_eq!(rt.operations().zombie_count(), 3, "all three records kept");
    let health = rt.health();
    assert_eq!(health.status, HealthStatus::Unhealthy);
    assert_eq!(health.failed_cleanup_handlers.len(), 2);
    let failed: Vec<_> = health
        .failed_cleanup_handlers
        .iter()
        .map(|f| f.handler.as_str())
        .collect();
    assert!(failed.contains(&"always_fails") && failed.contains(&"panics"));
    assert!(
        health
            .failed_cleanup_handlers
            .iter()
            .any(|f| f.error.contains("panicked: handler bug"))
    );
    assert_eq!(rt.metrics().cleanup.failures, 2);
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(json["status"], "unhealthy");
}

#[with_conflict_resolution(
    pre_ecs(staging_timeout_ms = 50),
    cleanup(strategy = "custom", custom_cleanup_handler = "in_code"),
    occ = false
)]
async fn with_code_handler(c: &mut Counter) {
    c.value += 1;
}

/// Invariant: a handler registered on the builder serves functions that name it, and the
/// callable registry lists every annotated function with its configuration.
#[tokio::test(start_paused = true)]
async fn builder_handlers_and_the_callable_registry() {
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    // `in_code` is registered here only; building without it would fail (see the start-up
    // tests), so every runtime of this binary registers it.
    let rt = Runtime::builder()
        .cleanup_handler("in_code", move |_rec| {
            let s = s.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                Ok::<(), CleanupError>(())
            }
        })
        .build()
        .unwrap();
    let h = rt.insert(Counter::new()).await.unwrap();
    burst(&h, 3, |h| async move { with_code_handler(&h).await }).await;
    assert!(rt.cleanup_idle(Duration::from_secs(5)).await);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    let ops = rt.registered_operations();
    let names: Vec<_> = ops.iter().map(|o| o.name).collect();
    for f in [
        "audited",
        "immediate",
        "deferred",
        "lazy",
        "with_code_handler",
    ] {
        assert!(names.contains(&f), "{f} missing from {names:?}");
    }
    let d = ops.iter().find(|o| o.name == "deferred").unwrap();
    assert_eq!(d.config.cleanup.strategy, CleanupStrategy::Deferred);
    assert_eq!(d.config.cleanup.retention_minutes, 1);
    assert!(d.module.ends_with("cleanup"));
    let handlers = rt.cleanup_handlers();
    for n in [
        "financial_audit",
        "always_fails",
        "panics",
        "keeps",
        "in_code",
    ] {
        assert!(handlers.contains(&n.to_string()));
    }
}

#[with_conflict_resolution]
async fn plain(c: &mut Counter) -> u64 {
    c.value += 1;
    c.value
}

/// Invariant: the registry keeps the most recent succeeded records within its window only, and
/// answers by id, target and status.
#[tokio::test]
async fn succeeded_records_are_bounded_and_queryable() {
    let rt = builder()
        .keep_succeeded(16, Duration::from_secs(600))
        .build()
        .unwrap();
    let a = rt.insert(Counter::new()).await.unwrap();
    let b = rt.insert(Counter::new()).await.unwrap();
    let mut last = None;
    for _ in 0..200 {
        last = Some(plain(&a).await.unwrap());
    }
    let on_b = plain(&b).await.unwrap();
    let counts = rt.operations().counts();
    assert!(counts.succeeded <= 16, "{counts:?}");
    assert_eq!(counts.zombies, 0);
    let rec = rt.operations().get(on_b.op_id).unwrap();
    assert_eq!(
        (rec.status, rec.version, rec.target_ids.clone()),
        (OperationStatus::Succeeded, Some(2), vec![b.key().clone()])
    );
    assert_eq!(rt.operations().by_target(b.key()).len(), 1);
    let last = last.unwrap();
    assert_eq!(rt.operations().get(last.op_id).unwrap().version, Some(201));
    assert!(rt.operations().by_status(OperationStatus::Succeeded).len() as u64 == counts.succeeded);
}

/// The error of the failing bodies below.
#[derive(Debug, thiserror::Error)]
#[error("refused by the test")]
struct Refused;

#[with_conflict_resolution(
    priority = LOW,
    cleanup(
        strategy = "deferred",
        retention_minutes = 30,
        max_zombie_count_per_target = 10000,
        force_cleanup_threshold = 100
    )
)]
async fn failing_low_deferred(_c: &mut Counter) -> Result<(), Refused> {
    Err(Refused)
}

#[with_conflict_resolution(
    priority = LOW,
    cleanup(
        strategy = "immediate",
        retention_minutes = 30,
        debug_retention_priorities = [LOW],
        max_zombie_count_per_target = 10000,
        force_cleanup_threshold = 100
    )
)]
async fn failing_low_debug_kept(_c: &mut Counter) -> Result<(), Refused> {
    Err(Refused)
}

/// Ends 5,000 failing operations of `f` (threshold 100) from 20 tasks (one entity each, so
/// every call runs its body and fails) while a watcher samples the zombie count, and checks
/// that the count never exceeded the threshold + 1 and ends there.
async fn end_failing<F, Fut>(what: &str, rt: &Runtime, f: F)
where
    F: Fn(Handle<Counter>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    const TASKS: u64 = 20;
    const CALLS: u64 = 250;
    let max = Arc::new(AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (rt, max, done) = (rt.clone(), max.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                max.fetch_max(rt.operations().zombie_count(), Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let h = rt.insert(Counter::new()).await.unwrap();
        let (rt, f, max) = (rt.clone(), f.clone(), max.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..CALLS {
                assert!(f(h.clone()).await, "the body must fail");
                max.fetch_max(rt.operations().zombie_count(), Ordering::SeqCst);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    let max = max.load(Ordering::SeqCst);
    assert!(max <= 101, "{what}: {max} zombies kept at once");
    let m = rt.metrics();
    assert_eq!(m.outcome(OutcomeKind::BodyError), TASKS * CALLS);
    assert_eq!(m.in_flight, 0);
    // Kept = at most threshold + 1; the rest were forced out at once.
    let kept = rt.operations().zombie_count();
    assert_eq!(kept, 101, "below the threshold the strategy keeps records");
    assert_eq!(m.cleanup.force_triggered, TASKS * CALLS - kept);
    assert_eq!(rt.operations().counts().zombies, kept);
    assert_eq!(
        m.cleanup.cleaned.get("immediate"),
        Some(&(TASKS * CALLS - kept))
    );
}

/// Invariant (issue #9, defect 7): thousands of failing LOW-priority operations, ending on
/// many threads at once, never make the registry keep more than `force_cleanup_threshold + 1`
/// zombies — under "deferred" and under "immediate" with LOW debug-retained alike (debug
/// retention used to keep every one of them for the whole window).
#[test]
fn failing_low_priority_operations_stay_under_the_force_threshold() {
    conflict_tests::multi_thread(2, async {
        let rt = builder().memory_pressure(Fixed(0.0)).build().unwrap();
        end_failing("deferred", &rt, |h| async move {
            matches!(failing_low_deferred(&h).await, Err(ConflictError::Body(_)))
        })
        .await;
        let rt = builder().memory_pressure(Fixed(0.0)).build().unwrap();
        end_failing("debug-retained immediate", &rt, |h| async move {
            matches!(
                failing_low_debug_kept(&h).await,
                Err(ConflictError::Body(_))
            )
        })
        .await;
    });
}

#[cleanup_handler("never_succeeds")]
async fn never_succeeds(_op: &OperationRecord) -> Result<(), CleanupError> {
    Err(CleanupError::new("archive unreachable"))
}

#[with_conflict_resolution(cleanup(
    strategy = "custom",
    custom_cleanup_handler = "never_succeeds",
    max_zombie_count_per_target = 1
))]
async fn failing_with_failing_handler(_c: &mut Counter) -> Result<(), Refused> {
    Err(Refused)
}

/// Invariant: a handler that always fails, on a target whose cap evicts each record when the
/// next arrives (so the zombie count stays at 1 and never forces cleanup), cannot grow the
/// health report's list of failures past `FAILED_HANDLERS_KEPT`; the metrics count them all
/// and the runtime stays unhealthy.
#[tokio::test(start_paused = true)]
async fn failed_handler_runs_kept_for_the_health_report_are_bounded() {
    use conflict_runtime::cleanup::FAILED_HANDLERS_KEPT;
    let rt = runtime();
    let h = rt.insert(Counter::new()).await.unwrap();
    let n = FAILED_HANDLERS_KEPT + 20;
    for _ in 0..n {
        assert!(matches!(
            failing_with_failing_handler(&h).await,
            Err(ConflictError::Body(_))
        ));
    }
    assert!(rt.cleanup_idle(Duration::from_secs(60)).await);
    assert_eq!(rt.operations().zombie_count(), 1);
    let health = rt.health();
    assert_eq!(health.status, HealthStatus::Unhealthy);
    assert_eq!(health.failed_cleanup_handlers.len(), FAILED_HANDLERS_KEPT);
    assert_eq!(rt.metrics().cleanup.failures, n as u64);
}

#[derive(Debug, thiserror::Error)]
#[error("only {left} left, {wanted} wanted")]
struct NotEnough {
    left: u64,
    wanted: u64,
}

#[with_conflict_resolution(cleanup(strategy = "deferred", immediate_cleanup_priorities = [], debug_retention_priorities = []))]
async fn take_units(c: &mut Counter, wanted: u64) -> Result<u64, NotEnough> {
    if c.value < wanted {
        return Err(NotEnough {
            left: c.value,
            wanted,
        });
    }
    c.value -= wanted;
    Ok(c.value)
}

/// Invariant: a failed operation's record says why in the body's own words, so an audit
/// handler can report it.
#[tokio::test]
async fn a_failed_operations_record_carries_the_body_errors_message() {
    let rt = runtime();
    let h = rt.insert(Counter::new()).await.unwrap();
    let err = take_units(&h, 3).await.unwrap_err();
    let op_id = err.op_id();
    assert!(op_id.is_none(), "a body error carries no op id of its own");
    let recs = rt.operations().by_target(h.key());
    assert_eq!(recs.len(), 1);
    let msg = recs[0].error_message.clone().unwrap_or_default();
    assert!(msg.contains("only 0 left, 3 wanted"), "{msg}");
    assert_eq!(err.body().map(|e| e.wanted), Some(3));
}
