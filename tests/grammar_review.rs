//! An independent review of #14 (grammar, error type, per-call overrides). Tests named
//! `fixed_*` reproduced a problem the review found (and failed before its fix); tests named
//! `holds_*` check what held up. (Its generic-return case is now the compile error of UI case
//! `return_type_param`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conflict_runtime::prelude::*;
use conflict_runtime::store::MemoryStore;
use conflict_tests::Counter;
use conflict_tests::faults::SlowCommits;

// ---------------------------------------------------------------------------------------------
// Deadlines.

#[with_conflict_resolution]
async fn bump(c: &mut Counter, runs: Arc<AtomicU64>) -> u64 {
    runs.fetch_add(1, Ordering::SeqCst);
    c.value += 1;
    c.value
}

/// BUG: `Instant + Duration` overflows in `Operation::begin` (occ.rs, `submitted + after`):
/// `timeout(Duration::MAX)` — a common spelling of "no timeout" — panics inside the call.
/// (`tokio::time::timeout` saturates to a far-future instant instead.)
#[tokio::test]
async fn fixed_timeout_duration_max_panics() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let joined = tokio::spawn(async move {
        scope()
            .timeout(Duration::MAX)
            .run(bump(&h, runs))
            .await
            .map(|c| c.value)
            .map_err(|e| e.kind())
    })
    .await;
    assert!(
        matches!(joined, Ok(Ok(1))),
        "timeout(Duration::MAX) should behave as no deadline: {joined:?}"
    );
}

#[with_conflict_resolution(pre_ecs = false)]
async fn child_bump(c: &mut Counter) -> u64 {
    c.value += 1;
    c.value
}

#[with_conflict_resolution]
async fn parent_with_child(c: &mut Counter, other: Handle<Counter>, runs: Arc<AtomicU64>) -> u64 {
    runs.fetch_add(1, Ordering::SeqCst);
    child_bump(&other).await.unwrap();
    c.value += 1;
    c.value
}

/// BUG (cheap to avoid): a deadline that has already passed when the call is submitted is not
/// checked before the body; an idle target admits the call at once (`timeout_at` polls the
/// inner future first), the body runs to the end, its child operation commits, and only then
/// the call ends with `DeadlineExceeded` ("nothing was committed"). The same holds with
/// `pre_ecs = false`, where no check precedes the body at all.
#[tokio::test]
async fn fixed_deadline_already_passed_at_submission_still_runs_the_body() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let other = rt.insert(Counter::new()).await.unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let past = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let r = scope()
        .deadline(past)
        .run(parent_with_child(&h, other.clone(), runs.clone()))
        .await;
    assert!(
        matches!(r, Err(ConflictError::DeadlineExceeded { .. })),
        "{r:?}"
    );
    let child_committed = other.load().await.unwrap().value.value;
    assert_eq!(
        (runs.load(Ordering::SeqCst), child_committed),
        (0, 0),
        "the body ran {} time(s) past its deadline and its child committed {} write(s)",
        runs.load(Ordering::SeqCst),
        child_committed
    );
}

#[with_conflict_resolution(pre_ecs = false)]
async fn slow_body(c: &mut Counter, ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    c.value += 1;
    c.value
}

/// BUG: `scope()` starts from empty overrides (context.rs `scope()`: `Overrides::default()`),
/// not from the enclosing scope's, so an inner `scope().priority(..)` silently drops an outer
/// `.timeout(..)`: the call runs 50 ms past its 10 ms deadline and commits. The rustdoc says
/// the overrides apply to "operations started directly in the future", which this call is.
#[tokio::test(start_paused = true)]
async fn fixed_nested_scope_drops_the_outer_deadline() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let r = scope()
        .timeout(Duration::from_millis(10))
        .run(async {
            scope()
                .priority(OperationPriority::HIGH)
                .run(slow_body(&h, 50))
                .await
        })
        .await;
    assert!(
        matches!(r, Err(ConflictError::DeadlineExceeded { .. })),
        "the outer deadline was lost: {r:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// What held up.

/// A commit already sent to a slow store when the deadline passes is not cut short; the call
/// ends with the commit's outcome (documented on `Scope::deadline`).
#[tokio::test(start_paused = true)]
async fn holds_deadline_during_a_slow_detached_commit_ends_with_the_commit() {
    let store = SlowCommits::new(Arc::new(MemoryStore::new()));
    store.delay_before(Duration::from_millis(100));
    let rt = Runtime::builder()
        .shared_store(store.clone())
        .build()
        .unwrap();
    let h = rt.insert(Counter::new()).await.unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let r = scope()
        .timeout(Duration::from_millis(10))
        .run(bump(&h, runs.clone()))
        .await;
    assert!(matches!(&r, Ok(c) if c.value == 1), "{r:?}");
    assert_eq!(store.commits_applied(), 1);
    // A second call, staged behind a slow commit with a short deadline, ends at its deadline
    // and the slot is handed on correctly.
    let h2 = h.clone();
    let runs2 = runs.clone();
    let first = tokio::spawn(async move { bump(&h2, runs2).await.map(|c| c.value) });
    tokio::task::yield_now().await;
    let late = scope()
        .timeout(Duration::from_millis(10))
        .run(bump(&h, runs.clone()))
        .await;
    assert!(
        matches!(late, Err(ConflictError::DeadlineExceeded { .. })),
        "{late:?}"
    );
    assert_eq!(first.await.unwrap().unwrap(), 2);
    assert_eq!(bump(&h, runs).await.unwrap().value, 3);
}

#[with_conflict_resolution(mode = "pre_ecs")]
async fn staged_only(c: &mut Counter, same: Handle<Counter>) -> u64 {
    scope().detached().run(child_bump(&same)).await.unwrap();
    c.value += 1;
    c.value
}

/// `max_retries` does not turn OCC retries on for a staging-only function (documented).
#[tokio::test]
async fn holds_max_retries_override_with_mode_pre_ecs_does_not_retry() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let r = scope()
        .max_retries(10)
        .run(staged_only(&h, h.clone()))
        .await;
    assert!(
        matches!(r, Err(ConflictError::RetriesExhausted { attempts: 1, .. })),
        "{r:?}"
    );
}

#[with_conflict_resolution(
    pre_ecs = false,
    occ(max_retries = 3, base_delay_ms = 0, max_delay_ms = 0)
)]
async fn flaky_child(c: &mut Counter, same: Handle<Counter>) -> u64 {
    if c.value == 0 {
        scope().detached().run(child_bump(&same)).await.unwrap();
    }
    c.value += 1;
    c.value
}

#[with_conflict_resolution]
async fn parent_of_flaky(c: &mut Counter, child: Handle<Counter>) -> u32 {
    c.value += 1;
    // Detached: a composed child has no retries of its own (its parent's attempt re-runs it).
    scope()
        .detached()
        .run(flaky_child(&child, child.clone()))
        .await
        .unwrap()
        .attempts
}

/// A parent's `max_retries(0)` does not leak into a detached child (which needs one retry).
#[tokio::test]
async fn holds_overrides_do_not_leak_into_children() {
    let rt = Runtime::in_memory();
    let p = rt.insert(Counter::new()).await.unwrap();
    let c = rt.insert(Counter::new()).await.unwrap();
    let r = scope()
        .max_retries(0)
        .run(parent_of_flaky(&p, c.clone()))
        .await
        .unwrap();
    assert_eq!(r.value, 2, "the child retried once");
}

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 20))]
async fn windowed(c: &mut Counter, tag: u64) -> u64 {
    c.log.push(tag);
    c.value += 1;
    c.value
}

/// Equal priorities in one window: the loser's reason is `SubmittedLater`, and `on_lose`
/// overrides mix with the attribute's within one group.
#[tokio::test(start_paused = true)]
async fn holds_reject_reason_and_on_lose_override_in_a_window() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let (a, b, c) = (h.clone(), h.clone(), h.clone());
    let first = tokio::spawn(async move { windowed(&a, 1).await.map(|c| c.value) });
    tokio::task::yield_now().await;
    let second = tokio::spawn(async move {
        scope()
            .on_lose(OnLose::Requeue)
            .run(windowed(&b, 2))
            .await
            .map(|c| c.value)
    });
    tokio::task::yield_now().await;
    let third = tokio::spawn(async move { windowed(&c, 3).await.map(|c| c.value) });
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(second.await.unwrap().unwrap(), 2);
    match third.await.unwrap() {
        Err(ConflictError::Rejected { reason, .. }) => {
            assert_eq!(
                reason,
                conflict_runtime::error::RejectReason::SubmittedLater
            );
        }
        other => panic!("{other:?}"),
    }
}

#[with_conflict_resolution]
async fn refuse(c: &mut Counter) -> Result<u64, String> {
    c.value += 1;
    Err("no stock".to_string())
}

async fn through_box(h: &Handle<Counter>) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    Ok(refuse(h).await?.value)
}

/// `?` reaches `Box<dyn Error + Send + Sync>` from a `String` body error and from an
/// infallible body's `ConflictError`, with the body's message.
#[tokio::test]
async fn holds_question_mark_into_box_dyn_error() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let e = through_box(&h).await.unwrap_err();
    assert!(e.to_string().contains("no stock"), "{e}");
    assert_eq!(h.load().await.unwrap().value.value, 0);
    let runs = Arc::new(AtomicU64::new(0));
    let ok: Result<u64, Box<dyn std::error::Error + Send + Sync>> =
        async { Ok(bump(&h, runs).await?.value) }.await;
    assert_eq!(ok.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// A slow load is not bounded by the deadline.

/// Loads wait `ms` before reaching the inner store (inserts and commits pass through).
struct SlowLoads {
    inner: Arc<dyn conflict_runtime::store::EntityStore>,
    ms: u64,
}

impl conflict_runtime::store::EntityStore for SlowLoads {
    fn name(&self) -> &'static str {
        "slow-loads"
    }
    fn load<'a>(
        &'a self,
        key: &'a conflict_runtime::entity::EntityKey,
        codec: conflict_runtime::store::EntityCodec,
    ) -> conflict_runtime::store::StoreFuture<'a, Option<conflict_runtime::store::Snapshot>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(self.ms)).await;
            self.inner.load(key, codec).await
        })
    }
    fn insert<'a>(
        &'a self,
        key: conflict_runtime::entity::EntityKey,
        value: conflict_runtime::store::StoredValue,
    ) -> conflict_runtime::store::StoreFuture<'a, conflict_runtime::store::Snapshot> {
        self.inner.insert(key, value)
    }
    fn commit<'a>(
        &'a self,
        commit: conflict_runtime::store::Commit,
    ) -> conflict_runtime::store::StoreFuture<'a, conflict_runtime::store::CommitOutcome> {
        self.inner.commit(commit)
    }
}

/// BUG: the snapshot load before each attempt (occ.rs, `rt.backend.load(..).await?` in `run`)
/// is outside `interruptible(.., op.deadline, ..)`, so a call with a 10 ms timeout on a store
/// whose load takes 500 ms returns only after 500 ms — the guide promises "a round trip past
/// the deadline at most" only for a commit in flight.
#[tokio::test(start_paused = true)]
async fn fixed_deadline_does_not_bound_a_slow_load() {
    let rt = Runtime::builder()
        .shared_store(Arc::new(SlowLoads {
            inner: Arc::new(MemoryStore::new()),
            ms: 500,
        }))
        .build()
        .unwrap();
    let h = rt.insert(Counter::new()).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let r = scope()
        .timeout(Duration::from_millis(10))
        .run(bump(&h, Arc::new(AtomicU64::new(0))))
        .await;
    let took = t0.elapsed();
    assert!(
        matches!(r, Err(ConflictError::DeadlineExceeded { .. })),
        "{r:?}"
    );
    assert!(
        took <= Duration::from_millis(20),
        "DeadlineExceeded came {took:?} after submission (deadline 10 ms)"
    );
}
