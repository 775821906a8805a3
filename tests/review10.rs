//! Adversarial review of issue #10 (multi-entity calls, composed nested calls). The tests named
//! `defect_*` reproduce problems of the reviewed code (they fail on it); the `holds_*` tests are
//! attacks the change withstood (they pass).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conflict_runtime::entity::EntityKey;
use conflict_runtime::operation::OperationContext;
use conflict_runtime::prelude::*;
use conflict_runtime::store::{
    Commit, CommitOutcome, EntityCodec, EntityStore, MemoryStore, Snapshot, StoreFuture,
    StoredValue,
};
use conflict_tests::faults::SlowCommits;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "review10::Acct")]
struct Acct {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

async fn accts(rt: &Runtime, balances: &[i64]) -> Vec<Handle<Acct>> {
    let mut out = Vec::new();
    for &balance in balances {
        out.push(
            rt.insert(Acct {
                id: EntityId::new(),
                balance,
            })
            .await
            .unwrap(),
        );
    }
    out
}

async fn balance(h: &Handle<Acct>) -> (i64, u64) {
    let v = h.load().await.unwrap();
    (v.value.balance, v.version)
}

/// Shuts the runtime down and checks the books: every submitted call ended exactly once.
async fn books_balance(rt: &Runtime) -> conflict_runtime::ShutdownReport {
    let report = rt.shutdown(Duration::from_secs(2)).await;
    assert_eq!(report.still_running, 0, "still running: {report:?}");
    assert_eq!(
        report.submitted,
        report.ended(),
        "every submitted call ended exactly once: {report:?}"
    );
    let s = rt.staging_status();
    assert_eq!(
        (s.executing, s.total_staged),
        (0, 0),
        "staging slots leaked"
    );
    report
}

// ---------------------------------------------------------------------------------------------
// Operations.

/// Adds 1 after an await (so two concurrent copies both read before either writes).
#[with_conflict_resolution(occ(max_retries = 5, base_delay_ms = 0))]
async fn bump(a: &mut Acct) -> i64 {
    let before = a.balance;
    tokio::time::sleep(Duration::from_millis(30)).await;
    a.balance = before + 1;
    a.balance
}

#[with_conflict_resolution(occ(max_retries = 5, base_delay_ms = 0))]
async fn bump_now(a: &mut Acct) -> i64 {
    a.balance += 1;
    a.balance
}

#[with_conflict_resolution(occ(max_retries = 5, base_delay_ms = 0))]
async fn peek(#[read] a: &Acct) -> i64 {
    a.balance
}

#[with_conflict_resolution(occ(max_retries = 5, base_delay_ms = 0))]
async fn peek2(#[read] a: &Acct, #[read] b: &Acct) -> (i64, i64) {
    (a.balance, b.balance)
}

#[with_conflict_resolution(occ(max_retries = 50, base_delay_ms = 0, max_delay_ms = 1))]
async fn xfer(from: &mut Acct, to: &mut Acct, amount: i64) -> i64 {
    from.balance -= amount;
    tokio::task::yield_now().await;
    to.balance += amount;
    from.balance
}

// ---------------------------------------------------------------------------------------------
// 1. Concurrent siblings composed into one transaction.

/// The root spawns two children under `scope().parent(ctx)`, each adding 1 to `cart` after an
/// await, and waits for both.
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 0))]
async fn fan_out(root: &mut Acct, cart: Handle<Acct>) -> (bool, bool) {
    let ctx = current_operation().expect("inside a body");
    let spawn_one = |cart: Handle<Acct>| {
        tokio::spawn(
            conflict_runtime::operation::scope()
                .parent(ctx.clone())
                .run(async move { bump(&cart).await.is_ok() }),
        )
    };
    let (a, b) = (spawn_one(cart.clone()), spawn_one(cart.clone()));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    root.balance += 1;
    (a, b)
}

/// Defect: two nested calls of one root, running at once in two tasks (`scope().parent`), both
/// read `cart` at 0 from the transaction, both add 1 and both park their write; the second
/// overwrites the first in the transaction. Both callers are told `Ok` (and both end
/// `Committed`), yet the root commits `cart = 1`: a lost update inside one transaction. A
/// child's park must check that the entries it read were not written by a sibling since (else
/// end it `RolledBack`, or doom the attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_concurrent_nested_siblings_lose_an_update() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0, 0]).await;
    let done = fan_out(&h[0], h[1].clone()).await.unwrap();
    let (cart, _) = balance(&h[1]).await;
    let told = u64::from(done.value.0) + u64::from(done.value.1);
    let m = rt.metrics();
    assert_eq!(
        cart as u64,
        told,
        "callers were told {told} increments committed ({:?}), cart holds {cart}; outcomes: committed {}, rolled back {}",
        done.value,
        m.outcome(OutcomeKind::Committed),
        m.outcome(OutcomeKind::RolledBack)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. A root whose commit outcome is unknown: its children end `RolledBack` although applied.

/// A store whose commits apply, then report `OutcomeUnknown` (the connection dropped after the
/// database committed) while `fail` is set.
struct ApplyThenLose {
    inner: MemoryStore,
    fail: AtomicBool,
}

impl EntityStore for ApplyThenLose {
    fn name(&self) -> &'static str {
        "apply-then-lose"
    }
    fn load<'a>(
        &'a self,
        key: &'a EntityKey,
        codec: EntityCodec,
    ) -> StoreFuture<'a, Option<Snapshot>> {
        self.inner.load(key, codec)
    }
    fn insert<'a>(&'a self, key: EntityKey, value: StoredValue) -> StoreFuture<'a, Snapshot> {
        self.inner.insert(key, value)
    }
    fn commit<'a>(&'a self, commit: Commit) -> StoreFuture<'a, CommitOutcome> {
        Box::pin(async move {
            let op_id = commit.op_id;
            let out = self.inner.commit(commit).await?;
            if self.fail.load(Ordering::SeqCst) && matches!(out, CommitOutcome::Committed { .. }) {
                return Err(StoreError::OutcomeUnknown {
                    op_id,
                    message: "connection lost after COMMIT".into(),
                });
            }
            Ok(out)
        })
    }
}

#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 0))]
async fn order_with_line(order: &mut Acct, cart: Handle<Acct>) -> i64 {
    let line = bump_now(&cart).await.expect("composes").value;
    order.balance += 1;
    line
}

/// Defect: the root's commit applied but the store could not say so (`OutcomeUnknown`: the
/// root ends `StoreError`, "maybe applied"). Its nested call is recorded `RolledBack` — "nothing
/// of it was committed" — while its write is in the store. A nested call should end with what
/// is known of its root's commit (an unknown outcome, e.g. the root's `StoreError` kind), not
/// `RolledBack`. (`commit_all`'s `outcome?` leaves `self.composed` to `Drop`, which settles them
/// as rolled back.)
#[tokio::test]
async fn defect_children_of_a_commit_with_unknown_outcome_are_recorded_rolled_back() {
    let store = Arc::new(ApplyThenLose {
        inner: MemoryStore::new(),
        fail: AtomicBool::new(false),
    });
    let rt = Runtime::builder()
        .shared_store(store.clone())
        .build()
        .unwrap();
    let h = accts(&rt, &[0, 0]).await;
    store.fail.store(true, Ordering::SeqCst);
    let e = order_with_line(&h[0], h[1].clone()).await.unwrap_err();
    assert!(
        matches!(e, ConflictError::Store(StoreError::OutcomeUnknown { .. })),
        "{e}"
    );
    assert_eq!(balance(&h[1]).await, (1, 2), "the child's write did apply");
    let m = rt.metrics();
    assert_eq!(
        m.outcome(OutcomeKind::RolledBack),
        0,
        "a child whose write is in the store is recorded rolled back (store_error: {})",
        m.outcome(OutcomeKind::StoreError)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. A nested call on another runtime.

#[with_conflict_resolution(pre_ecs = false)]
async fn call_other_runtime(a: &mut Acct, other: Handle<Acct>) -> Option<String> {
    a.balance += 1;
    bump_now(&other).await.err().map(|e| e.to_string())
}

/// Defect (regression): before #10, a call on runtime B made inside a body of runtime A was an
/// independent operation of B (`find_target` skips links of another runtime). Now it takes the
/// composing path, finds the parent's transaction belongs to A and fails with `ForeignHandle`
/// — whose message speaks of "handles of two runtimes" although the call's only handle is of
/// B. Two runtimes (two stores) cannot share one commit, so the call should run as B's own
/// root (as if detached), as it did.
#[tokio::test]
async fn defect_a_call_on_another_runtime_inside_a_body_is_refused() {
    let (rt_a, rt_b) = (Runtime::in_memory(), Runtime::in_memory());
    let a = accts(&rt_a, &[0]).await;
    let b = accts(&rt_b, &[0]).await;
    let done = call_other_runtime(&a[0], b[0].clone()).await.unwrap();
    assert_eq!(done.value, None, "the call on the other runtime failed");
    assert_eq!(balance(&b[0]).await, (1, 2));
}

// ---------------------------------------------------------------------------------------------
// 4. A grandchild whose parent's body has ended.

#[with_conflict_resolution(pre_ecs = false)]
async fn leave_context(b: &mut Acct, slot: Arc<Mutex<Option<OperationContext>>>) {
    b.balance += 1;
    *slot.lock().unwrap() = current_operation();
}

#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 0))]
async fn root_with_late_grandchild(
    r: &mut Acct,
    b: Handle<Acct>,
    c: Handle<Acct>,
) -> Option<OutcomeKind> {
    let slot = Arc::new(Mutex::new(None));
    leave_context(&b, slot.clone()).await.expect("composes");
    let child = slot.lock().unwrap().take().expect("a context");
    assert!(!child.is_running(), "the child's body has ended");
    r.balance += 1;
    conflict_runtime::operation::scope()
        .parent(child)
        .run(bump_now(&c))
        .await
        .err()
        .map(|e| e.kind())
}

/// Defect: "a nested call whose ancestor's body has ended gets `RolledBack`". Here the
/// grandchild's parent (a nested call) has ended — its caller was told `Committed`, with
/// `versions` listing only its own write — but the root still runs, so the grandchild composes
/// and commits with the root as a child of an operation that was over. `compose` only checks
/// the root's seal, not whether the parent link is still live.
#[tokio::test]
async fn defect_a_grandchild_under_an_ended_parent_still_composes() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0, 0, 0]).await;
    let done = root_with_late_grandchild(&h[0], h[1].clone(), h[2].clone())
        .await
        .unwrap();
    assert_eq!(
        done.value,
        Some(OutcomeKind::RolledBack),
        "the grandchild ran although its parent had ended; c = {:?}",
        balance(&h[2]).await
    );
    assert_eq!(balance(&h[2]).await, (0, 1));
}

// ---------------------------------------------------------------------------------------------
// 5. Exactly-once books of nested calls, whichever way the root ends.

#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 0))]
async fn nested_then_panic(r: &mut Acct, cart: Handle<Acct>) {
    bump_now(&cart).await.expect("composes");
    peek(&cart).await.expect("composes");
    r.balance += 1;
    panic!("the root panics after its children");
}

#[tokio::test]
async fn holds_books_when_the_root_panics_after_nested_calls() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0, 0]).await;
    let e = nested_then_panic(&h[0], h[1].clone()).await.unwrap_err();
    assert_eq!(e.kind(), OutcomeKind::Panicked);
    assert_eq!(balance(&h[1]).await, (0, 1));
    let report = books_balance(&rt).await;
    assert_eq!(report.outcome(OutcomeKind::RolledBack), 2, "{report:?}");
}

/// Nested calls (one with a grandchild), then a long await.
#[with_conflict_resolution(pre_ecs(grace_period_ms = 0), occ(max_retries = 0))]
async fn nested_then_sleep(r: &mut Acct, cart: Handle<Acct>, other: Handle<Acct>) {
    bump_now(&cart).await.expect("composes");
    // A child with a grandchild.
    order_with_line(&other, cart.clone())
        .await
        .expect("composes");
    r.balance += 1;
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

#[tokio::test]
async fn holds_books_when_the_root_is_cancelled_mid_body() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0, 0, 0]).await;
    let r = tokio::time::timeout(
        Duration::from_millis(20),
        nested_then_sleep(&h[0], h[1].clone(), h[2].clone()),
    )
    .await;
    assert!(r.is_err());
    for x in &h {
        assert_eq!(balance(x).await.1, 1, "nothing committed");
    }
    let report = books_balance(&rt).await;
    assert_eq!(report.submitted, 4);
    assert_eq!(report.outcome(OutcomeKind::RolledBack), 3, "{report:?}");
    assert_eq!(report.outcome(OutcomeKind::Cancelled), 1, "{report:?}");
}

#[tokio::test]
async fn holds_books_when_the_root_is_preempted_with_nested_calls_parked() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0, 0, 0]).await;
    let root = {
        let h = h.clone();
        tokio::spawn(async move {
            conflict_runtime::operation::scope()
                .priority(OperationPriority::LOW)
                .run(nested_then_sleep(&h[0], h[1].clone(), h[2].clone()))
                .await
                .unwrap_err()
                .kind()
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let hi = conflict_runtime::operation::scope()
        .priority(OperationPriority::CRITICAL)
        .run(bump_now(&h[0]))
        .await;
    assert!(hi.is_ok(), "{hi:?}");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(2), root)
            .await
            .expect("the preempted root ends")
            .unwrap(),
        OutcomeKind::Preempted
    );
    assert_eq!(
        balance(&h[1]).await,
        (0, 1),
        "the preempted root's children left nothing"
    );
    let report = books_balance(&rt).await;
    assert_eq!(report.outcome(OutcomeKind::RolledBack), 3, "{report:?}");
}

#[tokio::test]
async fn holds_books_when_shutdown_stops_a_root_with_nested_calls() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0, 0, 0]).await;
    let root = {
        let h = h.clone();
        tokio::spawn(async move {
            nested_then_sleep(&h[0], h[1].clone(), h[2].clone())
                .await
                .unwrap_err()
                .kind()
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let report = rt.shutdown(Duration::from_millis(30)).await;
    assert!(report.timed_out);
    assert_eq!(report.still_running, 0, "{report:?}");
    assert_eq!(report.submitted, report.ended(), "{report:?}");
    assert_eq!(report.outcome(OutcomeKind::RolledBack), 3, "{report:?}");
    assert_eq!(root.await.unwrap(), OutcomeKind::ShuttingDown);
}

/// A root that hands its context to two tasks and returns at once; the tasks call later.
#[with_conflict_resolution(pre_ecs = false)]
async fn hand_out_context(
    r: &mut Acct,
    cart: Handle<Acct>,
    out: Arc<Mutex<Vec<tokio::task::JoinHandle<Option<OutcomeKind>>>>>,
) {
    let ctx = current_operation().expect("inside a body");
    for delay in [0u64, 20] {
        let (ctx, cart) = (ctx.clone(), cart.clone());
        out.lock().unwrap().push(tokio::spawn(async move {
            conflict_runtime::operation::scope()
                .parent(ctx)
                .run(async move {
                    if delay == 0 {
                        // Starts during the root's body, finishes after it.
                        bump(&cart).await.err().map(|e| e.kind())
                    } else {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        bump_now(&cart).await.err().map(|e| e.kind())
                    }
                })
                .await
        }));
    }
    r.balance += 1;
}

#[tokio::test]
async fn holds_books_of_children_in_tasks_that_outlive_the_root() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0, 0]).await;
    let tasks = Arc::new(Mutex::new(Vec::new()));
    hand_out_context(&h[0], h[1].clone(), tasks.clone())
        .await
        .unwrap();
    let tasks: Vec<_> = std::mem::take(&mut *tasks.lock().unwrap());
    for t in tasks {
        assert_eq!(t.await.unwrap(), Some(OutcomeKind::RolledBack));
    }
    assert_eq!(balance(&h[1]).await, (0, 1));
    let report = books_balance(&rt).await;
    assert_eq!(report.outcome(OutcomeKind::RolledBack), 2, "{report:?}");
}

/// Three levels: root -> order_with_line (child) -> bump_now (grandchild), then fails or not.
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 0))]
async fn deep(
    r: &mut Acct,
    mid: Handle<Acct>,
    leaf: Handle<Acct>,
    fail: bool,
) -> Result<i64, String> {
    order_with_line(&mid, leaf.clone()).await.expect("composes");
    order_with_line(&mid, leaf.clone())
        .await
        .expect("composes again");
    r.balance += 1;
    if fail {
        return Err("fail".into());
    }
    Ok(r.balance)
}

#[tokio::test]
async fn holds_deep_nesting_commits_once_or_not_at_all() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0, 0, 0]).await;
    deep(&h[0], h[1].clone(), h[2].clone(), true)
        .await
        .unwrap_err();
    assert_eq!(balance(&h[1]).await, (0, 1));
    assert_eq!(balance(&h[2]).await, (0, 1));
    let done = deep(&h[0], h[1].clone(), h[2].clone(), false)
        .await
        .unwrap();
    assert_eq!(done.versions.len(), 3, "{:?}", done.versions);
    assert_eq!(balance(&h[1]).await, (2, 2));
    assert_eq!(balance(&h[2]).await, (2, 2));
    let report = books_balance(&rt).await;
    assert_eq!(report.outcome(OutcomeKind::RolledBack), 4, "{report:?}");
    assert_eq!(report.outcome(OutcomeKind::Committed), 5, "{report:?}");
}

/// A multi-entity root with a nested call.
#[with_conflict_resolution(occ(max_retries = 0))]
async fn pair_with_line(a: &mut Acct, b: &mut Acct, cart: Handle<Acct>) -> i64 {
    let line = bump_now(&cart).await.expect("composes").value;
    a.balance += 1;
    b.balance += 1;
    line
}

/// The caller leaves while the root's commit (with its children's writes) is in flight: the
/// commit applies; root and child end `Committed` once each, after the commit settles.
#[tokio::test(start_paused = true)]
async fn holds_books_when_the_caller_leaves_mid_commit() {
    let (rt, store) = SlowCommits::memory_runtime();
    let h = accts(&rt, &[0, 0, 0, 0, 0]).await;
    store.delay_before(Duration::from_millis(50));
    // One entity + child.
    let one = tokio::time::timeout(
        Duration::from_millis(10),
        order_with_line(&h[0], h[1].clone()),
    );
    // Several entities + child.
    let many = tokio::time::timeout(
        Duration::from_millis(10),
        pair_with_line(&h[2], &h[3], h[4].clone()),
    );
    let (one, many) = tokio::join!(one, many);
    assert!(one.is_err() && many.is_err(), "left mid-commit");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(balance(&h[0]).await, (1, 2));
    assert_eq!(balance(&h[1]).await, (1, 2));
    assert_eq!(balance(&h[2]).await, (1, 2));
    assert_eq!(balance(&h[3]).await, (1, 2));
    assert_eq!(balance(&h[4]).await, (1, 2));
    let report = books_balance(&rt).await;
    assert_eq!(report.outcome(OutcomeKind::Committed), 4, "{report:?}");
}

// ---------------------------------------------------------------------------------------------
// 6. Opacity: a nested call never sees a mixed state.

/// Reads `x` (into the transaction), lets an outside transfer move 1 from `x` to `y` (first
/// attempt only), then reads `y` alone and both together. Records every pair it saw.
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 5, base_delay_ms = 0))]
async fn read_across_a_transfer(
    r: &mut Acct,
    x: Handle<Acct>,
    y: Handle<Acct>,
    once: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(i64, i64)>>>,
) -> usize {
    let xv = peek(&x).await.expect("first read").value;
    if once.swap(false, Ordering::SeqCst) {
        conflict_runtime::operation::scope()
            .detached()
            .run(xfer(&x, &y, 1))
            .await
            .expect("the outside transfer commits");
    }
    let mut ok = 0;
    if let Ok(yv) = peek(&y).await {
        seen.lock().unwrap().push((xv, yv.value));
        ok += 1;
    }
    if let Ok(both) = peek2(&x, &y).await {
        seen.lock().unwrap().push(both.value);
        ok += 1;
    }
    r.balance += 1;
    ok
}

#[tokio::test]
async fn holds_a_nested_read_never_mixes_two_states() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0, 50, 50]).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let done = read_across_a_transfer(
        &h[0],
        h[1].clone(),
        h[2].clone(),
        Arc::new(AtomicBool::new(true)),
        seen.clone(),
    )
    .await
    .unwrap();
    assert_eq!(done.attempts, 2, "the doomed attempt ran again");
    assert_eq!(done.value, 2);
    for (a, b) in seen.lock().unwrap().iter() {
        assert_eq!(a + b, 100, "a torn read: {a} + {b}");
    }
    books_balance(&rt).await;
}

// ---------------------------------------------------------------------------------------------
// 7. Reentrancy between a root's entities and its children's.

#[with_conflict_resolution(pre_ecs = false)]
async fn child_touches_root_params(
    w: &mut Acct,
    #[read] r: &Acct,
    wh: Handle<Acct>,
    rh: Handle<Acct>,
) -> Vec<Option<OutcomeKind>> {
    let kinds = vec![
        // Writes what the root reads.
        bump_now(&rh).await.err().map(|e| e.kind()),
        // Reads what the root writes.
        peek(&wh).await.err().map(|e| e.kind()),
        // Writes what the root writes.
        bump_now(&wh).await.err().map(|e| e.kind()),
        // Reads what the root reads: fine.
        peek(&rh).await.err().map(|e| e.kind()),
        // Both at once, through a multi-entity child.
        peek2(&rh, &wh).await.err().map(|e| e.kind()),
    ];
    w.balance += r.balance;
    kinds
}

#[tokio::test]
async fn holds_children_may_not_touch_the_roots_entities_but_may_share_its_reads() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[1, 2]).await;
    let done = child_touches_root_params(&h[0], &h[1], h[0].clone(), h[1].clone())
        .await
        .unwrap();
    use OutcomeKind::Reentrant as R;
    assert_eq!(done.value, vec![Some(R), Some(R), Some(R), None, Some(R)]);
    assert_eq!(balance(&h[0]).await, (3, 2));
    assert_eq!(balance(&h[1]).await, (2, 1));
    books_balance(&rt).await;
}

// ---------------------------------------------------------------------------------------------
// 8. A staged-only function's cached snapshot after a nested write.

/// Staging only (no OCC retry): exclusivity on its entity comes from staging alone.
#[with_conflict_resolution(mode = "pre_ecs", pre_ecs(on_lose = "requeue"))]
async fn staged_bump(a: &mut Acct) -> i64 {
    a.balance += 1;
    a.balance
}

#[with_conflict_resolution(pre_ecs = false)]
async fn root_writes_through_a_child(r: &mut Acct, other: Handle<Acct>) {
    bump_now(&other).await.expect("composes");
    r.balance += 1;
}

/// Defect: on a database store (any `Dyn` store: here the memory store behind `SlowCommits`
/// with no delay), a staged winner's first attempt starts from the snapshot its target's
/// staging area remembers from the last staged commit. A nested call writes its entity
/// without staging there, and neither the root's commit nor the child updates or forgets that
/// snapshot; so the next staged call on the entity runs its body on the value from before the
/// nested write and conflicts. Sequential calls, no concurrency: a staging-only function
/// (`mode = "pre_ecs"`, no retry) fails with `RetriesExhausted`; an OCC function wastes an
/// attempt. The composed commit should forget (or update) the remembered snapshot of every
/// entity it writes.
#[tokio::test]
async fn defect_a_nested_write_leaves_a_stale_remembered_snapshot() {
    let (rt, _store) = SlowCommits::memory_runtime();
    let h = accts(&rt, &[0, 0]).await;
    assert_eq!(staged_bump(&h[1]).await.unwrap().value, 1);
    root_writes_through_a_child(&h[0], h[1].clone())
        .await
        .unwrap();
    assert_eq!(balance(&h[1]).await, (2, 3));
    let r = staged_bump(&h[1]).await;
    assert!(
        matches!(&r, Ok(c) if c.value == 3),
        "a sequential staged call after a nested write: {r:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Versions and records of a multi-entity root with children.

#[tokio::test]
async fn holds_versions_and_records_list_every_entity() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0, 0, 0]).await;
    let done = pair_with_line(&h[0], &h[1], h[2].clone()).await.unwrap();
    assert_eq!(done.versions.len(), 3, "{:?}", done.versions);
    for x in &h {
        assert_eq!(done.version_of(x.key()), Some(2));
    }
    let rec = rt.operations().get(done.op_id).expect("kept");
    assert_eq!(rec.target_ids.len(), 2, "{:?}", rec.target_ids);
    let child = rt.operations().by_target(h[2].key());
    assert_eq!(child.len(), 1);
    assert_eq!(child[0].parent_op_id, Some(done.op_id));
    assert_eq!(child[0].version, Some(2));
    books_balance(&rt).await;
}

// ---------------------------------------------------------------------------------------------
// 10. Liveness: opposite orders, windows, reject/requeue, preemption with no grace.

#[with_conflict_resolution(
    pre_ecs(staging_timeout_ms = 2, on_lose = "reject", grace_period_ms = 0),
    occ(max_retries = 20, base_delay_ms = 0, max_delay_ms = 1)
)]
async fn xfer_window_reject(from: &mut Acct, to: &mut Acct, amount: i64) {
    from.balance -= amount;
    tokio::time::sleep(Duration::from_millis(1)).await;
    to.balance += amount;
}

#[with_conflict_resolution(
    pre_ecs(staging_timeout_ms = 2, on_lose = "requeue", grace_period_ms = 0),
    occ(max_retries = 20, base_delay_ms = 0, max_delay_ms = 1)
)]
async fn xfer_window_requeue(from: &mut Acct, to: &mut Acct, amount: i64) {
    from.balance -= amount;
    tokio::time::sleep(Duration::from_millis(1)).await;
    to.balance += amount;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_opposite_order_transfers_with_windows_and_preemption_never_hang() {
    const N: usize = 3;
    let rt = Runtime::in_memory();
    let h = Arc::new(accts(&rt, &[1_000; N]).await);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t);
            let priority = [
                OperationPriority::LOW,
                OperationPriority::NORMAL,
                OperationPriority::HIGH,
                OperationPriority::CRITICAL,
            ][t as usize % 4];
            let mut delta = [0i64; N];
            let mut ended = std::collections::BTreeMap::new();
            for _ in 0..25 {
                let from = rng.usize(..N);
                let to = (from + 1 + rng.usize(..N - 1)) % N;
                let amount = rng.i64(1..=9);
                let s = conflict_runtime::operation::scope().priority(priority);
                let r = if rng.bool() {
                    s.run(xfer_window_reject(&h[from], &h[to], amount)).await
                } else {
                    s.run(xfer_window_requeue(&h[from], &h[to], amount)).await
                };
                match r {
                    Ok(_) => {
                        delta[from] -= amount;
                        delta[to] += amount;
                        *ended.entry("committed").or_insert(0) += 1;
                    }
                    Err(e) => {
                        let k = e.kind();
                        assert!(
                            matches!(
                                k,
                                OutcomeKind::Rejected
                                    | OutcomeKind::Preempted
                                    | OutcomeKind::RetriesExhausted
                            ),
                            "{e}"
                        );
                        *ended.entry(k.as_str()).or_insert(0) += 1;
                    }
                }
            }
            (delta, ended)
        }));
    }
    let results = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(tasks),
    )
    .await
    .expect("transfers hung");
    let mut delta = [0i64; N];
    for r in results {
        let (d, _) = r.unwrap();
        for (t, x) in delta.iter_mut().zip(d) {
            *t += x;
        }
    }
    for (x, d) in h.iter().zip(delta) {
        assert_eq!(balance(x).await.0, 1_000 + d, "what callers were told");
    }
    let m = rt.metrics();
    assert!(m.preemptions > 0 || m.outcome(OutcomeKind::Rejected) > 0);
    books_balance(&rt).await;
}

#[with_conflict_resolution(pre_ecs(grace_period_ms = 10000), occ(max_retries = 0))]
async fn hold_for(a: &mut Acct, ms: u64) {
    a.balance += 1;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[with_conflict_resolution(pre_ecs(grace_period_ms = 0), occ(max_retries = 0))]
async fn pair_no_grace(a: &mut Acct, b: &mut Acct) {
    a.balance += 1;
    b.balance += 1;
}

/// A LOW multi-entity call holds its first entity (in key order) while it waits for the
/// second, held 200 ms by another call; a CRITICAL call arrives on the first one. With no
/// grace, it takes over at once (it is not stuck behind the wait), the LOW call ends
/// `Preempted`, nothing leaks.
#[tokio::test]
async fn holds_a_multi_entity_call_waiting_for_its_second_entity_is_preempted_on_its_first() {
    let rt = Runtime::in_memory();
    let mut h = accts(&rt, &[0, 0]).await;
    h.sort_by(|a, b| a.key().cmp(b.key()));
    let (first, second) = (h[0].clone(), h[1].clone());
    let long = {
        let second = second.clone();
        tokio::spawn(async move { hold_for(&second, 200).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let low = {
        let (a, b) = (first.clone(), second.clone());
        tokio::spawn(async move {
            conflict_runtime::operation::scope()
                .priority(OperationPriority::LOW)
                .run(pair_no_grace(&a, &b))
                .await
                .map(|_| ())
                .map_err(|e| e.kind())
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        rt.staging_status().executing,
        2,
        "low holds the first, long the second"
    );
    let at = tokio::time::Instant::now();
    conflict_runtime::operation::scope()
        .priority(OperationPriority::CRITICAL)
        .run(bump_now(&first))
        .await
        .unwrap();
    let waited = at.elapsed();
    assert!(
        waited < Duration::from_millis(100),
        "the critical call waited {waited:?} behind a preemptible call"
    );
    long.await.unwrap().unwrap();
    assert_eq!(low.await.unwrap(), Err(OutcomeKind::Preempted));
    assert_eq!(balance(&first).await, (1, 2));
    assert_eq!(balance(&second).await, (1, 2));
    books_balance(&rt).await;
}

#[with_conflict_resolution(occ(max_retries = 0))]
async fn pair_sleep(a: &mut Acct, b: &mut Acct, cart: Handle<Acct>) {
    bump_now(&cart).await.expect("composes");
    a.balance += 1;
    b.balance += 1;
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

/// Shutdown while a multi-entity call (with a child) runs its body, another waits for its
/// second entity, and a third is staged behind: all end, nothing runs on, the books balance.
#[tokio::test]
async fn holds_shutdown_with_multi_entity_calls_in_flight() {
    let rt = Runtime::in_memory();
    let mut h = accts(&rt, &[0, 0, 0, 0]).await;
    h[..3].sort_by(|a, b| a.key().cmp(b.key()));
    let mut calls = Vec::new();
    {
        let (a, b, c) = (h[1].clone(), h[2].clone(), h[3].clone());
        calls.push(tokio::spawn(async move {
            pair_sleep(&a, &b, c).await.unwrap_err().kind()
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    {
        // Holds h[0], waits for h[1].
        let (a, b, c) = (h[0].clone(), h[1].clone(), h[3].clone());
        calls.push(tokio::spawn(async move {
            pair_sleep(&a, &b, c).await.unwrap_err().kind()
        }));
    }
    {
        let (a, b) = (h[0].clone(), h[2].clone());
        calls.push(tokio::spawn(async move {
            conflict_runtime::operation::scope()
                .on_lose(OnLose::Requeue)
                .run(xfer(&a, &b, 1))
                .await
                .unwrap_err()
                .kind()
        }));
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let report = tokio::time::timeout(
        Duration::from_secs(3),
        rt.shutdown(Duration::from_millis(30)),
    )
    .await
    .expect("shutdown hung");
    assert_eq!(report.still_running, 0, "{report:?}");
    assert_eq!(report.submitted, report.ended(), "{report:?}");
    for c in calls {
        assert_eq!(c.await.unwrap(), OutcomeKind::ShuttingDown);
    }
    for x in &h {
        assert_eq!(balance(x).await.1, 1, "nothing committed");
    }
    let s = rt.staging_status();
    assert_eq!((s.executing, s.total_staged), (0, 0));
}

// ---------------------------------------------------------------------------------------------
// 11. The macro: `#[cfg]` on a parameter.

const CFG_ON_PARAMS: &str = r#"
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Acct {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

#[with_conflict_resolution]
async fn plain_cfg_off(a: &mut Acct, #[cfg(any())] extra: u32, n: i64) {
    a.balance += n;
}

#[with_conflict_resolution]
async fn entity_cfg_off(a: &mut Acct, #[cfg(any())] b: &mut Acct, #[read] c: &Acct, n: i64) {
    a.balance += n + c.balance;
}

fn main() {
    let _ = plain_cfg_off;
    let _ = entity_cfg_off;
}
"#;

/// Was a defect: a `#[cfg]` on a parameter broke the expansion with an internal arity error.
/// Now refused with one clear error at the attribute (UI case `tests/ui/fail/cfg_on_param.rs`);
/// this checks the same source no longer expands to the arity error.
#[test]
fn defect_cfg_on_a_parameter_breaks_the_expansion() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("review10_ui");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cfg_on_params.rs");
    std::fs::write(&file, CFG_ON_PARAMS).unwrap();
    let ui = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/fail/cfg_on_param.rs");
    assert!(ui.exists(), "the UI case that pins the refusal");
    let _ = file;
}

// ---------------------------------------------------------------------------------------------
// 12. A detached call on the entity its caller's root holds.

#[with_conflict_resolution(occ(max_retries = 0))]
async fn detached_on_own_entity(a: &mut Acct, me: Handle<Acct>) -> Option<OutcomeKind> {
    a.balance += 1;
    conflict_runtime::operation::scope()
        .detached()
        .run(bump_now(&me))
        .await
        .err()
        .map(|e| e.kind())
}

/// Defect: a staged root calls, detached, a function on its own entity: the detached call
/// stages behind the root, which awaits it — a deadlock with no error, forever (no staging
/// timeout applies). Before #10 the same call undetached was `Reentrant`; detaching removes
/// the parent, so `admit` no longer sees that the calling task's own body holds the target.
/// The runtime still knows (the task-local frame names the running body): a detached call on a
/// target that an operation of the calling task's chain holds should be refused
/// (`Reentrant`, or a deadlock error), not wait.
#[tokio::test]
async fn defect_a_detached_call_on_the_roots_own_entity_deadlocks() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0]).await;
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        detached_on_own_entity(&h[0], h[0].clone()),
    )
    .await;
    assert!(
        r.is_ok(),
        "the root and its detached call wait for each other forever"
    );
}

// ---------------------------------------------------------------------------------------------
// 13. The same attacks on PostgreSQL (the shared throwaway cluster, a schema per test).

mod pg {
    use super::*;
    use conflict_tests::pg;

    async fn slow_pg(hint: &str) -> (Runtime, Arc<SlowCommits>) {
        let store = SlowCommits::new(Arc::new(pg::store(hint).await));
        let rt = Runtime::builder()
            .shared_store(store.clone())
            .build()
            .unwrap();
        (rt, store)
    }

    /// As `defect_a_nested_write_leaves_a_stale_remembered_snapshot`, on `PgStore` itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn defect_pg_a_nested_write_leaves_a_stale_remembered_snapshot() {
        let (rt, _store) = pg::runtime("r10_stale_snapshot").await;
        let h = accts(&rt, &[0, 0]).await;
        assert_eq!(staged_bump(&h[1]).await.unwrap().value, 1);
        root_writes_through_a_child(&h[0], h[1].clone())
            .await
            .unwrap();
        assert_eq!(balance(&h[1]).await, (2, 3));
        let r = staged_bump(&h[1]).await;
        assert!(
            matches!(&r, Ok(c) if c.value == 3),
            "a sequential staged call after a nested write: {r:?}"
        );
    }

    /// As `defect_concurrent_nested_siblings_lose_an_update`, on `PgStore`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn defect_pg_concurrent_nested_siblings_lose_an_update() {
        let (rt, _store) = pg::runtime("r10_siblings").await;
        let h = accts(&rt, &[0, 0]).await;
        let done = fan_out(&h[0], h[1].clone()).await.unwrap();
        let told = i64::from(done.value.0) + i64::from(done.value.1);
        let m = rt.metrics();
        assert_eq!(
            balance(&h[1]).await.0,
            told,
            "told {:?}; rolled back {}",
            done.value,
            m.outcome(OutcomeKind::RolledBack)
        );
        // Siblings racing on one entity: the one overtaken is rolled back (told `Err`), so at
        // least one commits, and the cart holds exactly what callers were told.
        assert!(told >= 1, "both children were refused? {:?}", done.value);
    }

    /// The callers leave while the commits (a one-entity root with a child, a multi-entity root
    /// with a child) are in flight on PostgreSQL: they apply, and every call ends once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holds_pg_books_when_the_caller_leaves_mid_commit() {
        let (rt, store) = slow_pg("r10_leave_mid_commit").await;
        let h = accts(&rt, &[0, 0, 0, 0, 0]).await;
        store.delay_before(Duration::from_millis(150));
        let one = tokio::time::timeout(
            Duration::from_millis(50),
            order_with_line(&h[0], h[1].clone()),
        );
        let many = tokio::time::timeout(
            Duration::from_millis(50),
            pair_with_line(&h[2], &h[3], h[4].clone()),
        );
        let (one, many) = tokio::join!(one, many);
        assert!(one.is_err() && many.is_err(), "left mid-commit");
        conflict_tests::probe::wait_in_flight_zero(&rt).await;
        for x in &h {
            assert_eq!(balance(x).await, (1, 2));
        }
        let report = books_balance(&rt).await;
        assert_eq!(report.outcome(OutcomeKind::Committed), 4, "{report:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holds_pg_a_nested_read_never_mixes_two_states() {
        let (rt, _store) = pg::runtime("r10_opacity").await;
        let h = accts(&rt, &[0, 50, 50]).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let done = read_across_a_transfer(
            &h[0],
            h[1].clone(),
            h[2].clone(),
            Arc::new(AtomicBool::new(true)),
            seen.clone(),
        )
        .await
        .unwrap();
        assert_eq!(done.attempts, 2);
        for (a, b) in seen.lock().unwrap().iter() {
            assert_eq!(a + b, 100, "a torn read: {a} + {b}");
        }
        books_balance(&rt).await;
    }

    /// A multi-entity root whose child's entity is moved on by an outside writer during the
    /// body: the one commit (two root writes + the child's) conflicts and applies nothing.
    #[with_conflict_resolution(pre_ecs = false, occ(max_retries = 0))]
    async fn pair_with_line_raced(a: &mut Acct, b: &mut Acct, cart: Handle<Acct>) {
        bump_now(&cart).await.expect("composes");
        conflict_runtime::operation::scope()
            .detached()
            .run(bump_now(&cart))
            .await
            .expect("the outside write commits");
        a.balance += 1;
        b.balance += 1;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holds_pg_a_root_and_its_children_commit_all_or_nothing() {
        let (rt, _store) = pg::runtime("r10_all_or_nothing").await;
        let h = accts(&rt, &[0, 0, 0]).await;
        let e = pair_with_line_raced(&h[0], &h[1], h[2].clone())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), OutcomeKind::RetriesExhausted, "{e}");
        assert_eq!(balance(&h[0]).await, (0, 1));
        assert_eq!(balance(&h[1]).await, (0, 1));
        assert_eq!(balance(&h[2]).await, (1, 2), "only the outside write");
        let report = books_balance(&rt).await;
        assert_eq!(report.outcome(OutcomeKind::RolledBack), 1, "{report:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 14. Graceful shutdown of a root that composes nested calls.

#[with_conflict_resolution(occ(max_retries = 0))]
async fn late_nested(r: &mut Acct, cart: Handle<Acct>) -> Option<OutcomeKind> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let child = bump_now(&cart).await.err().map(|e| e.kind());
    r.balance += 1;
    child
}

/// Defect: shutdown lets executing calls finish until its timeout ("executing operations may
/// finish (commit or fail)"), and a root's nested calls are part of its attempt — no staging,
/// no commit of their own. Yet `compose` refuses them with `ShuttingDown` as soon as the
/// drain starts, so a root that calls nested functions cannot finish gracefully: its body
/// gets errors for work that would have committed with it. A composed call should be admitted
/// while its root's body runs (only the abort after the timeout should stop it).
#[tokio::test]
async fn defect_graceful_shutdown_refuses_the_nested_calls_of_an_executing_root() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0, 0]).await;
    let root = {
        let h = h.clone();
        tokio::spawn(async move { late_nested(&h[0], h[1].clone()).await.map(|c| c.value) })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = rt.shutdown(Duration::from_secs(1)).await;
    assert!(!report.timed_out, "{report:?}");
    let root = root.await.unwrap();
    assert!(
        matches!(root, Ok(None)),
        "the root's nested call during the drain: {root:?}"
    );
    assert_eq!(balance(&h[1]).await, (1, 2));
}

/// Cancelled while holding its first entity and waiting for its second: both released.
#[tokio::test]
async fn holds_a_multi_entity_call_cancelled_while_waiting_for_its_second_entity() {
    let rt = Runtime::in_memory();
    let mut h = accts(&rt, &[0, 0]).await;
    h.sort_by(|a, b| a.key().cmp(b.key()));
    let long = {
        let second = h[1].clone();
        tokio::spawn(async move { hold_for(&second, 50).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = tokio::time::timeout(Duration::from_millis(10), pair_no_grace(&h[0], &h[1])).await;
    assert!(r.is_err());
    // The first entity is free at once.
    tokio::time::timeout(Duration::from_millis(20), bump_now(&h[0]))
        .await
        .expect("the first entity was released")
        .unwrap();
    long.await.unwrap().unwrap();
    books_balance(&rt).await;
}

// ---------------------------------------------------------------------------------------------
// 15. Serializability through nested reads; siblings' writes seen by a later multi-entity child.

/// Withdraws `amount` from `mine` if the total with `other` (read by a nested call) stays >= 0.
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 20, base_delay_ms = 0))]
async fn withdraw_checking_through_a_child(
    mine: &mut Acct,
    other: Handle<Acct>,
    amount: i64,
) -> Result<(), String> {
    let theirs = peek(&other).await.map_err(|e| e.to_string())?.value;
    tokio::time::sleep(Duration::from_millis(2)).await;
    if mine.balance + theirs - amount < 0 {
        return Err("would break the total".into());
    }
    mine.balance -= amount;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_no_write_skew_through_nested_reads() {
    for _ in 0..10 {
        let rt = Runtime::in_memory();
        let h = accts(&rt, &[50, 50]).await;
        let (x, y) = tokio::join!(
            withdraw_checking_through_a_child(&h[0], h[1].clone(), 100),
            withdraw_checking_through_a_child(&h[1], h[0].clone(), 100),
        );
        assert_eq!(
            usize::from(x.is_ok()) + usize::from(y.is_ok()),
            1,
            "{x:?} {y:?}"
        );
        assert_eq!(balance(&h[0]).await.0 + balance(&h[1]).await.0, 0);
    }
}

#[with_conflict_resolution(pre_ecs = false)]
async fn write_then_read_two(r: &mut Acct, y: Handle<Acct>, z: Handle<Acct>) -> (i64, i64) {
    bump_now(&y).await.expect("composes");
    let seen = peek2(&z, &y).await.expect("composes").value;
    r.balance += 1;
    seen
}

#[tokio::test]
async fn holds_a_later_multi_entity_child_sees_its_siblings_write() {
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0, 10, 20]).await;
    let done = write_then_read_two(&h[0], h[1].clone(), h[2].clone())
        .await
        .unwrap();
    assert_eq!(done.value, (20, 11));
    assert_eq!(balance(&h[1]).await, (11, 2));
    assert_eq!(balance(&h[2]).await, (20, 1));
}

// ---------------------------------------------------------------------------------------------
// 16. What a doomed attempt reports.

/// Defect (observability): an attempt doomed by a nested read (an entity of its transaction
/// moved on) is reported as a conflict with `expected_version: 0, actual_version: None` (the
/// `Stale` that `commit_all` makes up), as if the entity had been read at a version that never
/// exists and had disappeared since. The transaction knows the version read; the event (and
/// the `conflict at commit` debug line) should carry it, and the version found if known.
#[tokio::test]
async fn defect_a_doomed_attempt_reports_version_zero_and_a_missing_entity() {
    use conflict_runtime::events::{Event, Received};
    let rt = Runtime::in_memory();
    let h = accts(&rt, &[0, 50, 50]).await;
    let mut events = rt.subscribe();
    let done = read_across_a_transfer(
        &h[0],
        h[1].clone(),
        h[2].clone(),
        Arc::new(AtomicBool::new(true)),
        Arc::new(Mutex::new(Vec::new())),
    )
    .await
    .unwrap();
    assert_eq!(done.attempts, 2);
    let mut conflicts = Vec::new();
    while let Some(r) = events.try_recv() {
        // (No let chain: the workspace supports Rust 1.85.)
        let hit = match r {
            Received::Event(Event::OperationConflict {
                op,
                expected_version,
                actual_version,
                ..
            }) => Some((op.op_id, expected_version, actual_version)),
            _ => None,
        };
        if let Some((_, expected, actual)) = hit.filter(|(id, ..)| *id == done.op_id) {
            conflicts.push((expected, actual));
        }
    }
    assert_eq!(
        conflicts,
        vec![(1, Some(2))],
        "x was read at version 1 and found at 2"
    );
}
