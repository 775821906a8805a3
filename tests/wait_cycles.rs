//! Cycles of waits that detached calls made inside bodies can close (issue #10: "such a cycle
//! must be broken within bounded time"): the call whose wait would close the cycle ends
//! `WaitCycle` at once, naming the cycle, and every other call goes on. Each case would hang
//! forever without the detection; `tokio::time::timeout` turns a hang into a failure.

use std::sync::Arc;
use std::time::Duration;

use conflict_runtime::entity::EntityKey;
use conflict_runtime::operation::{self, OutcomeKind};
use conflict_runtime::prelude::*;
use tokio::sync::Barrier;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "wait_cycles::Slot")]
struct Slot {
    #[entity(id)]
    id: EntityId,
    n: i64,
}

#[with_conflict_resolution]
async fn bump(s: &mut Slot) -> i64 {
    s.n += 1;
    s.n
}

/// Holds `mine`, meets the other caller at `barrier` (both hold their entity then), and makes
/// a detached call on `theirs`.
#[with_conflict_resolution]
async fn reach_out(mine: &mut Slot, theirs: Handle<Slot>, barrier: Arc<Barrier>) -> Reached {
    barrier.wait().await;
    mine.n += 10;
    Reached(operation::scope().detached().run(bump(&theirs)).await)
}

async fn slot(rt: &Runtime) -> Handle<Slot> {
    rt.insert(Slot {
        id: EntityId::new(),
        n: 0,
    })
    .await
    .unwrap()
}

/// What a detached call ended with, as the body's value (a `Result` return type would make
/// the call fail with it).
#[derive(Debug)]
struct Reached(Result<Committed<i64>, ConflictError>);

const BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bodies_whose_detached_calls_wait_for_each_other_never_hang() {
    for _ in 0..20 {
        let rt = Runtime::in_memory();
        let (x, y) = (slot(&rt).await, slot(&rt).await);
        let barrier = Arc::new(Barrier::new(2));
        let a = tokio::spawn(reach_out_owned(x.clone(), y.clone(), barrier.clone()));
        let b = tokio::spawn(reach_out_owned(y.clone(), x.clone(), barrier));
        let (a, b) = tokio::time::timeout(BOUND, async { (a.await, b.await) })
            .await
            .expect("a cycle of detached waits must not hang");
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        // Both roots commit; exactly one detached call was refused, naming the cycle.
        let cycles: Vec<_> = [&a.value.0, &b.value.0]
            .into_iter()
            .filter_map(|r| match r {
                Err(ConflictError::WaitCycle { op_id, cycle, .. }) => Some((*op_id, cycle.clone())),
                Ok(_) => None,
                Err(e) => panic!("a detached call: {e}"),
            })
            .collect();
        assert_eq!(cycles.len(), 1, "exactly one wait closes the cycle");
        let (op_id, cycle) = &cycles[0];
        assert_eq!(
            cycle.first(),
            Some(op_id),
            "the cycle starts with the refused call"
        );
        assert!(
            cycle.contains(&a.op_id) || cycle.contains(&b.op_id),
            "{cycle:?}"
        );
        assert_eq!(
            cycle.len(),
            4,
            "detached -> root -> detached -> root: {cycle:?}"
        );
        // 10 from each root, 1 from the detached call that ran.
        let total = x.load().await.unwrap().value.n + y.load().await.unwrap().value.n;
        assert_eq!(total, 21);
        let m = rt.metrics();
        assert_eq!(m.submitted, 4);
        assert_eq!(m.outcome(OutcomeKind::Committed), 3);
        assert_eq!(
            m.outcome(OutcomeKind::Reentrant),
            1,
            "WaitCycle counts as reentrant"
        );
    }
}

async fn reach_out_owned(
    mine: Handle<Slot>,
    theirs: Handle<Slot>,
    barrier: Arc<Barrier>,
) -> Result<Committed<Reached>, ConflictError> {
    reach_out(&mine, theirs, barrier).await
}

#[with_conflict_resolution(occ(max_retries = 5, base_delay_ms = 0))]
async fn pair(a: &mut Slot, b: &mut Slot) {
    a.n += 100;
    b.n += 100;
}

/// Holds `held`; once `pair` is staged on it (holding the other entity), makes a detached call
/// on the entity `pair` holds.
#[with_conflict_resolution]
async fn hold_then_reach(held: &mut Slot, other: Handle<Slot>, rt: Runtime) -> Reached {
    let key = EntityKey::new(Slot::TYPE_NAME, held.id);
    // Wait until a call is staged on this entity (the pair, holding the other one).
    while !rt
        .staging_status()
        .targets
        .iter()
        .any(|t| t.target == key && t.staged > 0)
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    held.n += 1;
    Reached(operation::scope().detached().run(bump(&other)).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_call_waiting_for_a_multi_entity_call_that_waits_for_its_caller_never_hangs() {
    let rt = Runtime::in_memory();
    let (p, q) = (slot(&rt).await, slot(&rt).await);
    // The pair takes the smaller key first, then waits for the larger one, held by the root.
    let (small, large) = if p.key() < q.key() { (p, q) } else { (q, p) };
    let root = {
        let (large, small, rt) = (large.clone(), small.clone(), rt.clone());
        tokio::spawn(async move { hold_then_reach(&large, small, rt).await })
    };
    // Let the root take the large entity first.
    while rt.staging_status().executing == 0 {
        tokio::task::yield_now().await;
    }
    let both = {
        let (small, large) = (small.clone(), large.clone());
        tokio::spawn(async move { pair(&small, &large).await })
    };
    let (root, both) = tokio::time::timeout(BOUND, async { (root.await, both.await) })
        .await
        .expect("a cycle through a multi-entity call must not hang");
    let root = root.unwrap().unwrap();
    both.unwrap().unwrap();
    match root.value.0 {
        Err(ConflictError::WaitCycle { target, cycle, .. }) => {
            assert_eq!(
                &target,
                small.key(),
                "the detached call would wait for the pair"
            );
            assert_eq!(cycle.len(), 3, "detached -> pair -> root: {cycle:?}");
            assert!(cycle.contains(&root.op_id));
        }
        other => panic!("the detached call closes the cycle: {other:?}"),
    }
    assert_eq!(small.load().await.unwrap().value.n, 100);
    assert_eq!(large.load().await.unwrap().value.n, 101);
}

#[with_conflict_resolution]
async fn wait_for_release(mine: &mut Slot, other: Handle<Slot>) -> i64 {
    mine.n += 1;
    operation::scope()
        .detached()
        .run(bump(&other))
        .await
        .expect("a plain wait is no cycle")
        .value
}

#[with_conflict_resolution]
async fn hold_briefly(s: &mut Slot) {
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.n += 1;
}

/// A detached call that waits for an entity another call holds, with no cycle, just waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_call_that_closes_no_cycle_waits_as_usual() {
    let rt = Runtime::in_memory();
    let (x, y) = (slot(&rt).await, slot(&rt).await);
    let holder = {
        let y = y.clone();
        tokio::spawn(async move { hold_briefly(&y).await })
    };
    while rt.staging_status().executing == 0 {
        tokio::task::yield_now().await;
    }
    let done = tokio::time::timeout(BOUND, wait_for_release(&x, y.clone()))
        .await
        .unwrap()
        .unwrap();
    holder.await.unwrap().unwrap();
    assert_eq!(done.value, 2, "after the holder's commit");
    assert_eq!(rt.metrics().outcome(OutcomeKind::Reentrant), 0);
}
