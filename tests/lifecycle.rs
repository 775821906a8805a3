//! Every operation ends exactly once: panics, cancellation, shutdown, nesting, events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conflict_runtime::prelude::*;
use conflict_runtime::{events::Event, events::Received, operation::OutcomeKind};
use conflict_tests::Counter;
use tokio::sync::Notify;

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 0), occ = false)]
async fn bump(c: &mut Counter, tag: u64) -> u64 {
    c.value += 1;
    c.log.push(tag);
    c.value
}

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 0, on_lose = "requeue"), occ = false)]
async fn bump_queued(c: &mut Counter, tag: u64) -> u64 {
    c.value += 1;
    c.log.push(tag);
    c.value
}

#[with_conflict_resolution]
async fn explode(c: &mut Counter, when: bool) -> u64 {
    c.value += 1000;
    tokio::task::yield_now().await;
    if when {
        panic!("boom in the body");
    }
    c.value
}

/// Changes the entity, tells the test it is running, then waits for `gate` forever (or until
/// dropped).
#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 0), occ = false)]
async fn stuck(c: &mut Counter, started: Arc<Notify>, gate: Arc<Notify>) -> u64 {
    c.value += 1;
    started.notify_one();
    gate.notified().await;
    c.value
}

#[with_conflict_resolution(occ(max_retries = 0), pre_ecs = false)]
async fn stuck_occ(c: &mut Counter, started: Arc<Notify>, gate: Arc<Notify>) -> u64 {
    c.value += 1;
    started.notify_one();
    gate.notified().await;
    c.value
}

type Held =
    tokio::task::JoinHandle<Result<Committed<u64>, ConflictError<std::convert::Infallible>>>;

/// Starts a `stuck` call on `h` and returns once its body runs: the target is busy until the
/// returned gate is notified.
async fn hold(h: &Handle<Counter>) -> (Held, Arc<Notify>) {
    let (started, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let holder = {
        let (h, s, g) = (h.clone(), started.clone(), gate.clone());
        tokio::spawn(async move { stuck(&h, s, g).await })
    };
    started.notified().await;
    (holder, gate)
}

/// Waits until at least `n` operations wait in staging areas.
async fn until_staged(rt: &Runtime, n: usize) {
    while rt.staging_status().total_staged < n {
        tokio::task::yield_now().await;
    }
}

/// Invariant: a panicking body is reported as `Panicked`, commits nothing, and leaves the target
/// usable (the staging slot is released).
#[tokio::test]
async fn a_panicking_body_commits_nothing_and_releases_the_target() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    match explode(&h, true).await {
        Err(ConflictError::Panicked { message, .. }) => assert_eq!(message, "boom in the body"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    let now = h.load().await.unwrap();
    assert_eq!((now.value.value, now.version), (0, 1));
    assert_eq!(explode(&h, false).await.unwrap().value, 1000);
    let m = rt.metrics();
    assert_eq!(m.outcome(OutcomeKind::Panicked), 1);
    assert_eq!(m.in_flight, 0);
    assert!(rt.staging_status().targets.is_empty());
}

/// Invariant: dropping the caller's future while the body runs commits nothing, counts the
/// operation once as cancelled, and hands the target to the next caller.
#[tokio::test]
async fn a_caller_dropped_mid_body_commits_nothing_and_leaks_nothing() {
    for staged in [true, false] {
        let rt = Runtime::in_memory();
        let h = rt.insert(Counter::new()).await.unwrap();
        let (started, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let task = {
            let (h, s, g) = (h.clone(), started.clone(), gate.clone());
            tokio::spawn(async move {
                if staged {
                    stuck(&h, s, g).await
                } else {
                    stuck_occ(&h, s, g).await
                }
            })
        };
        started.notified().await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        let now = h.load().await.unwrap();
        assert_eq!((now.value.value, now.version), (0, 1), "staged={staged}");
        let m = rt.metrics();
        assert_eq!(m.outcome(OutcomeKind::Cancelled), 1);
        assert_eq!(m.in_flight, 0);
        assert!(
            rt.staging_status().targets.is_empty(),
            "executing slot released"
        );
        // The target is free: the next call runs at once.
        assert_eq!(bump(&h, 1).await.unwrap().value, 1);
    }
}

/// Invariant: dropping a caller while its op waits in a staging area withdraws it: the permit
/// returns, it is counted once as cancelled, and the others proceed.
#[tokio::test]
async fn a_caller_dropped_while_staged_is_withdrawn() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let (holder, gate) = hold(&h).await;
    let waiting: Vec<_> = (0..3)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move { bump_queued(&h, i).await })
        })
        .collect();
    until_staged(&rt, 3).await;
    waiting[1].abort();
    while rt.staging_status().total_staged != 2 {
        tokio::task::yield_now().await;
    }
    gate.notify_one();
    holder.await.unwrap().unwrap();
    let mut results = Vec::new();
    for w in waiting {
        results.push(w.await);
    }
    assert!(results[1].as_ref().unwrap_err().is_cancelled());
    assert!(results[0].as_ref().unwrap().is_ok() && results[2].as_ref().unwrap().is_ok());
    let m = rt.metrics();
    assert_eq!(m.outcome(OutcomeKind::Cancelled), 1);
    assert_eq!(m.outcome(OutcomeKind::Committed), 3);
    assert_eq!(m.in_flight, 0);
    assert_eq!(rt.staging_status().total_staged, 0);
}

/// Invariant: shutdown under load accounts for every operation (committed + each error kind =
/// submitted), refuses new calls, and stops executing bodies after the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_accounts_for_every_op() {
    let rt = Runtime::in_memory();
    let targets: Vec<_> = futures_util::future::join_all((0..3).map(|_| rt.insert(Counter::new())))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let gate = Arc::new(Notify::new());
    let returned = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // One op per target that never finishes by itself, so shutdown must stop it.
    for h in &targets {
        let (h, g) = (h.clone(), gate.clone());
        let started = Arc::new(Notify::new());
        let s = started.clone();
        let returned = returned.clone();
        tasks.push(tokio::spawn(async move {
            let r = stuck(&h, s, g).await.map(|c| c.value);
            returned.fetch_add(1, Ordering::Relaxed);
            r.map_err(|e| e.kind())
        }));
        started.notified().await;
    }
    // Plenty more that queue up behind them or run on their own.
    for i in 0..300u64 {
        let h = targets[(i % 3) as usize].clone();
        let returned = returned.clone();
        tasks.push(tokio::spawn(async move {
            let r = bump_queued(&h, i).await.map(|c| c.value);
            returned.fetch_add(1, Ordering::Relaxed);
            r.map_err(|e| e.kind())
        }));
    }
    while rt.staging_status().total_staged < 300 {
        tokio::task::yield_now().await;
    }
    let report = rt.shutdown(Duration::from_millis(200)).await;
    assert!(report.timed_out, "the stuck ops had to be stopped");
    assert_eq!(report.still_running, 0);
    assert_eq!(report.submitted, 303);
    assert_eq!(report.ended(), report.submitted);
    assert_eq!(report.staged_ended_by_shutdown, 300);
    assert_eq!(report.outcome(OutcomeKind::ShuttingDown), 303);
    let mut kinds = Vec::new();
    for t in tasks {
        kinds.push(t.await.unwrap());
    }
    assert_eq!(
        returned.load(Ordering::Relaxed),
        303,
        "every caller got an answer"
    );
    assert!(kinds.iter().all(|k| *k == Err(OutcomeKind::ShuttingDown)));
    // Nothing was committed by the stopped bodies.
    for h in &targets {
        assert_eq!(h.load().await.unwrap().version, 1);
    }
    // New calls are refused.
    assert!(matches!(
        bump(&targets[0], 9).await,
        Err(ConflictError::ShuttingDown { .. })
    ));
    assert_eq!(rt.staging_status().total_staged, 0);
}

/// Invariant: shutdown lets executing ops that finish within the timeout commit.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_executing_ops_within_the_timeout() {
    #[with_conflict_resolution(pre_ecs(staging_timeout_ms = 0), occ = false)]
    async fn slow(c: &mut Counter) -> u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.value += 1;
        c.value
    }
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let op = {
        let h = h.clone();
        tokio::spawn(async move { slow(&h).await })
    };
    tokio::task::yield_now().await;
    let report = rt.shutdown(Duration::from_secs(1)).await;
    assert!(!report.timed_out);
    assert_eq!(report.outcome(OutcomeKind::Committed), 1);
    assert_eq!(op.await.unwrap().unwrap().value, 1);
}

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 0), occ = false)]
async fn nested_same(c: &mut Counter, same: Handle<Counter>) -> bool {
    c.value += 1;
    matches!(bump(&same, 1).await, Err(ConflictError::Reentrant { .. }))
}

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 0), occ = false)]
async fn nested_other(c: &mut Counter, other: Handle<Counter>) -> (OpId, Option<OpId>) {
    c.value += 1;
    let me = conflict_runtime::operation::current_operation().unwrap();
    let child = bump(&other, 1).await.unwrap();
    (child.op_id, Some(me.op_id()))
}

/// Invariant: a nested call on the entity its parent executes on returns `Reentrant` at once
/// (no deadlock); on another entity it runs as a child that records its parent.
#[tokio::test]
async fn nested_calls_detect_reentrancy_and_record_parents() {
    let rt = Runtime::in_memory();
    let a = rt.insert(Counter::new()).await.unwrap();
    let b = rt.insert(Counter::new()).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(5), nested_same(&a, a.clone()))
        .await
        .expect("a nested call on the same target must not deadlock")
        .unwrap();
    assert!(done.value, "the nested call got Reentrant");
    assert_eq!(
        a.load().await.unwrap().value.value,
        1,
        "the parent still committed"
    );

    let mut events = rt.subscribe();
    let parent = nested_other(&a, b.clone()).await.unwrap();
    let (child_id, parent_seen) = parent.value;
    assert_eq!(parent_seen, Some(parent.op_id));
    let mut child_parent = None;
    while let Some(Received::Event(e)) = events.try_recv() {
        if e.op().op_id == child_id {
            child_parent = e.op().parent_op_id;
        }
    }
    assert_eq!(child_parent, Some(parent.op_id));
    // A child is always created after its parent: ids grow along every chain, so no chain can
    // loop back to an ancestor.
    assert!(child_id > parent.op_id);
}

/// Invariant: parent links only ever point at operations created earlier, even when a parent
/// is passed explicitly with `scope().parent(..)` into a spawned task; so the parent relation
/// has no cycle. (Each link is made inside the previous one's running body, into whose commit
/// it composes.)
#[tokio::test]
async fn parent_chains_cannot_form_a_cycle() {
    use conflict_runtime::operation::OperationContext;
    use futures_util::future::BoxFuture;

    #[with_conflict_resolution(pre_ecs(staging_timeout_ms = 0), occ = false)]
    async fn link(c: &mut Counter, rest: Vec<Handle<Counter>>) -> Vec<OperationContext> {
        c.value += 1;
        let me = conflict_runtime::operation::current_operation().unwrap();
        let mut chain = vec![me.clone()];
        if !rest.is_empty() {
            // The next link, in a task of its own, made a child of this one explicitly.
            let next = tokio::spawn(
                conflict_runtime::operation::scope()
                    .parent(me)
                    .run(chain_of(rest)),
            );
            chain.extend(next.await.unwrap());
        }
        chain
    }
    fn chain_of(mut hs: Vec<Handle<Counter>>) -> BoxFuture<'static, Vec<OperationContext>> {
        Box::pin(async move {
            let first = hs.remove(0);
            link(&first, hs).await.unwrap().value
        })
    }
    let rt = Runtime::in_memory();
    let mut hs = Vec::new();
    for _ in 0..6 {
        hs.push(rt.insert(Counter::new()).await.unwrap());
    }
    let chain = chain_of(hs.clone()).await;
    assert_eq!(chain.len(), 6);
    for h in &hs {
        assert_eq!(
            h.load().await.unwrap().version,
            2,
            "every link committed with the root"
        );
    }
    assert!(chain[0].ancestors().is_empty());
    for (depth, w) in chain.windows(2).enumerate() {
        assert_eq!(w[1].ancestors().first(), Some(&w[0].op_id()));
        assert_eq!(w[1].ancestors().len(), depth + 1);
        assert!(
            w[1].op_id() > w[0].op_id(),
            "a child's id is always newer than its parent's"
        );
        // Every ancestor is strictly older, so following parents always terminates.
        assert!(w[1].ancestors().iter().all(|a| *a < w[1].op_id()));
    }
}

/// Invariant: each call produces one `OperationCompleted` as its last event; losers also get
/// `OperationRejected`; a slow subscriber is told how many it missed and metrics count them.
#[tokio::test]
async fn events_report_every_op_and_missed_events_are_counted() {
    let rt = Runtime::builder().event_capacity(4).build().unwrap();
    let h = rt.insert(Counter::new()).await.unwrap();
    let mut events = rt.subscribe();
    for i in 0..10 {
        bump(&h, i).await.unwrap();
    }
    let mut missed = 0;
    let mut seen = 0;
    while let Some(r) = events.try_recv() {
        match r {
            Received::Missed(n) => missed += n,
            Received::Event(_) => seen += 1,
        }
    }
    // 10 ops × (Started + Completed) = 20 events through a ring of 4.
    assert_eq!(missed + seen, 20);
    assert!(missed >= 16);
    let m = rt.metrics();
    assert_eq!(m.events_missed, missed);
    assert_eq!(m.events_delivered, seen);
    assert_eq!(m.events_published, 20);

    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let mut events = rt.subscribe();
    let (holder, gate) = hold(&h).await;
    let losers: Vec<_> = (0..3)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move { bump(&h, i).await })
        })
        .collect();
    until_staged(&rt, 3).await;
    gate.notify_one();
    holder.await.unwrap().unwrap();
    let outcomes: Vec<_> = futures_util::future::join_all(losers).await;
    let rejected = outcomes
        .iter()
        .filter(|r| r.as_ref().unwrap().is_err())
        .count();
    assert_eq!(rejected, 2, "of the three staged, one wins the next group");
    let mut completed = 0;
    let mut rejected_events = 0;
    while let Some(Received::Event(e)) = events.try_recv() {
        match e {
            Event::OperationCompleted { duration, .. } => {
                completed += 1;
                assert!(duration > Duration::ZERO);
            }
            Event::OperationRejected { .. } => rejected_events += 1,
            _ => {}
        }
    }
    assert_eq!(completed, 4);
    assert_eq!(rejected_events, 2);
}

/// Invariant: `staging_status` shows the executing op and the staged count of a busy target.
#[tokio::test]
async fn staging_status_shows_executing_and_staged() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let (holder, gate) = hold(&h).await;
    let waiters: Vec<_> = (0..2)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move { bump_queued(&h, i).await })
        })
        .collect();
    until_staged(&rt, 2).await;
    let status = rt.staging_status();
    assert_eq!(status.targets.len(), 1);
    assert_eq!(status.targets[0].target, *h.key());
    assert_eq!(status.targets[0].staged, 2);
    assert!(status.targets[0].executing.is_some());
    assert_eq!(status.executing, 1);
    gate.notify_one();
    holder.await.unwrap().unwrap();
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    assert!(rt.staging_status().targets.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Methods.

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Shelf {
    #[entity(id)]
    id: EntityId,
    units: u32,
    reserved: Vec<u64>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("only {0} left")]
struct ShortBy(u32);

impl Shelf {
    #[with_conflict_resolution(pre_ecs(on_lose = "requeue"))]
    async fn reserve(&mut self, n: u32, who: u64) -> Result<u32, ShortBy> {
        if self.units < n {
            return Err(ShortBy(self.units));
        }
        tokio::task::yield_now().await;
        self.units -= n;
        self.reserved.push(who);
        Ok(self.units)
    }
}

/// Invariant: a `&mut self` method is an operation like a free function (generated as
/// `Shelf::reserve(&handle, ..)`): concurrent calls lose no update, an `Err` commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_operation_commits_like_a_free_function() {
    let rt = Runtime::in_memory();
    let h = rt
        .insert(Shelf {
            id: EntityId::new(),
            units: 10,
            reserved: Vec::new(),
        })
        .await
        .unwrap();
    let tasks: Vec<_> = (0..12u64)
        .map(|who| {
            let h = h.clone();
            tokio::spawn(async move { Shelf::reserve(&h, 1, who).await })
        })
        .collect();
    let (mut ok, mut short) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ConflictError::Body(ShortBy(0))) => short += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((ok, short), (10, 2));
    let v = h.load().await.unwrap();
    assert_eq!(
        (v.value.units, v.value.reserved.len(), v.version),
        (0, 10, 11)
    );
}

// ---------------------------------------------------------------------------------------------
// Typed ids.

conflict_runtime::typed_id!(
    /// A shelf's id in the typed-id test.
    pub CrateId
);

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Crate {
    #[entity(id)]
    id: CrateId,
    items: u32,
}

#[with_conflict_resolution]
async fn pack(c: &mut Crate, n: u32) -> u32 {
    c.items += n;
    c.items
}

/// Invariant: an entity keyed by a typed id works like any other: handles from the typed id,
/// `Handle::id()` returns it, the store keys by the raw UUID, and serde sees a bare UUID.
#[tokio::test]
async fn an_entity_with_a_typed_id_round_trips() {
    use conflict_runtime::entity::EntityIdType;
    let rt = Runtime::in_memory();
    let id = CrateId::new();
    let h = rt.insert(Crate { id, items: 0 }).await.unwrap();
    assert_eq!(h.id(), id);
    assert_eq!(h.entity_id(), id.entity_id());
    assert_eq!(h.key().id, id.0);
    let again: Handle<Crate> = rt.handle(id);
    assert_eq!(pack(&again, 3).await.unwrap().value, 3);
    assert_eq!(h.load().await.unwrap().value.items, 3);
    let json = serde_json::to_value(Crate { id, items: 1 }).unwrap();
    assert_eq!(json["id"], serde_json::json!(id.0.to_string()));
    let back: Crate = serde_json::from_value(json).unwrap();
    assert_eq!(back.id, id);
}
