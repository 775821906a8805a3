//! Adversarial review of wait-cycle detection (`conflict-runtime/src/waits.rs`, #10) and of "a
//! body error in a doomed attempt runs again". Tests named `holds_*` are attacks the change
//! withstood; tests named `fixed_*` showed a defect of the reviewed version (a hang) and pass
//! since the wait graph became one per process and calls across runtimes register.
//!
//! Every test bounds its waits with `tokio::time::timeout`, so a hang is a failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use conflict_runtime::entity::EntityKey;
use conflict_runtime::operation::{self, OutcomeKind};
use conflict_runtime::prelude::*;
use tokio::sync::{Barrier, Notify};

// ---------------------------------------------------------------------------------------------
// Entities, operations and helpers.

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "review_wc::Slot")]
struct Slot {
    #[entity(id)]
    id: EntityId,
    n: i64,
}

const BOUND: Duration = Duration::from_secs(10);

async fn slot(rt: &Runtime) -> Handle<Slot> {
    rt.insert(Slot {
        id: EntityId::new(),
        n: 0,
    })
    .await
    .unwrap()
}

/// `n` slots, sorted by key (multi-entity calls take their entities in key order).
async fn sorted_slots(rt: &Runtime, n: usize) -> Vec<Handle<Slot>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(slot(rt).await);
    }
    v.sort_by(|a, b| a.key().cmp(b.key()));
    v
}

async fn value(h: &Handle<Slot>) -> i64 {
    h.load().await.unwrap().value.n
}

fn key_of(h: &Handle<Slot>) -> EntityKey {
    h.key().clone()
}

/// Every call ended with exactly one outcome.
fn assert_balanced(rt: &Runtime) {
    let m = rt.metrics();
    let sum: u64 = OutcomeKind::ALL.iter().map(|k| m.outcome(*k)).sum();
    assert_eq!(
        m.submitted,
        sum,
        "submitted = sum of outcomes: {:?}",
        OutcomeKind::ALL
            .iter()
            .map(|k| (*k, m.outcome(*k)))
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>()
    );
}

/// Waits (bounded) until at least `n` calls are staged on `key`.
async fn staged_on(rt: &Runtime, key: &EntityKey, n: usize) {
    tokio::time::timeout(BOUND, async {
        while !rt
            .staging_status()
            .targets
            .iter()
            .any(|t| t.target == *key && t.staged >= n)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("a call was staged");
}

/// Waits (bounded) until something executes on `key`.
async fn executing_on(rt: &Runtime, key: &EntityKey) {
    tokio::time::timeout(BOUND, async {
        while !rt
            .staging_status()
            .targets
            .iter()
            .any(|t| t.target == *key && t.executing.is_some())
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("a call executes");
}

/// What a detached call ended with, as a body's value.
#[derive(Debug)]
struct Reached(Result<Committed<i64>, ConflictError>);

impl Reached {
    fn cycle(&self) -> Option<Vec<OpId>> {
        match &self.0 {
            Err(ConflictError::WaitCycle { op_id, cycle, .. }) => {
                assert_eq!(
                    cycle.first(),
                    Some(op_id),
                    "the cycle starts with the refused call"
                );
                Some(cycle.clone())
            }
            _ => None,
        }
    }
    fn committed(&self) -> bool {
        self.0.is_ok()
    }
}

#[with_conflict_resolution]
async fn bump(s: &mut Slot) -> i64 {
    s.n += 1;
    s.n
}

/// Holds `mine`; after `barrier`, a detached call on `theirs`.
#[with_conflict_resolution]
async fn reach_out(mine: &mut Slot, theirs: Handle<Slot>, barrier: Arc<Barrier>) -> Reached {
    barrier.wait().await;
    mine.n += 10;
    Reached(operation::scope().detached().run(bump(&theirs)).await)
}

async fn reach_out_owned(
    mine: Handle<Slot>,
    theirs: Handle<Slot>,
    barrier: Arc<Barrier>,
) -> Result<Committed<Reached>, ConflictError> {
    reach_out(&mine, theirs, barrier).await
}

#[with_conflict_resolution]
async fn hold_until(s: &mut Slot, release: Arc<Notify>) {
    release.notified().await;
    s.n += 1;
}

#[with_conflict_resolution(occ(max_retries = 5, base_delay_ms = 0))]
async fn pair(a: &mut Slot, b: &mut Slot) {
    a.n += 100;
    b.n += 100;
}

// ---------------------------------------------------------------------------------------------
// 1. Three-party cycle of detached calls.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_three_party_detached_cycle_is_broken_exactly_once() {
    for round in 0..50 {
        let rt = Runtime::in_memory();
        let s = [slot(&rt).await, slot(&rt).await, slot(&rt).await];
        let barrier = Arc::new(Barrier::new(3));
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                tokio::spawn(reach_out_owned(
                    s[i].clone(),
                    s[(i + 1) % 3].clone(),
                    barrier.clone(),
                ))
            })
            .collect();
        let done = tokio::time::timeout(BOUND, futures_util::future::join_all(tasks))
            .await
            .unwrap_or_else(|_| panic!("round {round}: a three-party cycle hung"));
        let done: Vec<_> = done.into_iter().map(|r| r.unwrap().unwrap()).collect();
        let cycles: Vec<_> = done.iter().filter_map(|d| d.value.cycle()).collect();
        assert_eq!(cycles.len(), 1, "round {round}: {done:?}");
        assert_eq!(cycles[0].len(), 6, "3 detached + 3 roots: {:?}", cycles[0]);
        for d in &done {
            assert!(d.value.committed() || d.value.cycle().is_some(), "{d:?}");
            assert!(cycles[0].contains(&d.op_id), "every root is on the cycle");
        }
        let total: i64 = value(&s[0]).await + value(&s[1]).await + value(&s[2]).await;
        assert_eq!(total, 30 + 2, "three roots, two detached calls");
        let m = rt.metrics();
        assert_eq!(m.submitted, 6);
        assert_eq!(m.outcome(OutcomeKind::Committed), 5);
        assert_eq!(m.outcome(OutcomeKind::Reentrant), 1);
        assert_balanced(&rt);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A cycle through a multi-entity call and two roots.

/// Holds `mine`; once a call is staged on it, a detached call on `theirs`.
#[with_conflict_resolution]
async fn reach_when_staged(mine: &mut Slot, theirs: Handle<Slot>, rt: Runtime) -> Reached {
    let key = EntityKey::new(Slot::TYPE_NAME, mine.id);
    staged_on(&rt, &key, 1).await;
    mine.n += 10;
    Reached(operation::scope().detached().run(bump(&theirs)).await)
}

/// k0 < k1 < k2. `pair(k0, k2)` takes k0 and waits for k2 (held by A); A waits for the pair to
/// be staged and reaches for k1 (held by B); B waits for A's detached call and reaches for k0,
/// which the pair holds: Bd -> pair -> A -> Ad -> B -> Bd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_cycle_through_a_multi_entity_call_and_two_roots() {
    for _ in 0..10 {
        let rt = Runtime::in_memory();
        let k = sorted_slots(&rt, 3).await;
        let b = {
            let (k1, k0, rt) = (k[1].clone(), k[0].clone(), rt.clone());
            tokio::spawn(async move { reach_when_staged(&k1, k0, rt).await })
        };
        executing_on(&rt, &key_of(&k[1])).await;
        let a = {
            let (k2, k1, rt) = (k[2].clone(), k[1].clone(), rt.clone());
            tokio::spawn(async move { reach_when_staged(&k2, k1, rt).await })
        };
        executing_on(&rt, &key_of(&k[2])).await;
        let p = {
            let (k0, k2) = (k[0].clone(), k[2].clone());
            tokio::spawn(async move { pair(&k0, &k2).await })
        };
        let (a, b, p) = tokio::time::timeout(BOUND, async { (a.await, b.await, p.await) })
            .await
            .expect("a cycle through a multi-entity call must not hang");
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        p.unwrap().unwrap();
        let cycle = b.value.cycle().expect("B's detached call closes the cycle");
        assert_eq!(cycle.len(), 5, "Bd, pair, A, Ad, B: {cycle:?}");
        assert!(cycle.contains(&a.op_id) && cycle.contains(&b.op_id));
        assert!(a.value.committed(), "{a:?}");
        assert_eq!(value(&k[0]).await, 100);
        assert_eq!(value(&k[1]).await, 11);
        assert_eq!(value(&k[2]).await, 110);
        assert_balanced(&rt);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A detached call made from a nested (composed) call.

#[with_conflict_resolution]
async fn nested_reach(n: &mut Slot, theirs: Handle<Slot>) -> Reached {
    n.n += 1000;
    Reached(operation::scope().detached().run(bump(&theirs)).await)
}

#[derive(Debug)]
struct Nested(Result<Committed<Reached>, ConflictError>);

#[with_conflict_resolution]
async fn reach_via_nested(
    mine: &mut Slot,
    via: Handle<Slot>,
    theirs: Handle<Slot>,
    barrier: Arc<Barrier>,
) -> Nested {
    barrier.wait().await;
    mine.n += 10;
    Nested(nested_reach(&via, theirs).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_detached_call_from_a_nested_call_closes_the_cycle() {
    for _ in 0..20 {
        let rt = Runtime::in_memory();
        let (x, y, via) = (slot(&rt).await, slot(&rt).await, slot(&rt).await);
        let barrier = Arc::new(Barrier::new(2));
        let a = {
            let (x, y, via, b) = (x.clone(), y.clone(), via.clone(), barrier.clone());
            tokio::spawn(async move { reach_via_nested(&x, via, y, b).await })
        };
        let b = tokio::spawn(reach_out_owned(y.clone(), x.clone(), barrier));
        let (a, b) = tokio::time::timeout(BOUND, async { (a.await, b.await) })
            .await
            .expect("a cycle through a nested call's detached call must not hang");
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        let nested = a.value.0.as_ref().expect("the nested call composes");
        let cycles: Vec<_> = [nested.value.cycle(), b.value.cycle()]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(cycles.len(), 1, "{a:?} {b:?}");
        assert_eq!(cycles[0].len(), 4, "{:?}", cycles[0]);
        assert!(
            cycles[0].contains(&a.op_id),
            "the nested call's root is on the cycle"
        );
        assert_eq!(value(&via).await, 1000);
        assert_eq!(value(&x).await + value(&y).await, 21);
        assert_balanced(&rt);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Detached calls inside detached calls.

/// A detached call whose body makes a detached call on `far`.
#[with_conflict_resolution]
async fn relay(mid: &mut Slot, far: Handle<Slot>) -> Reached {
    mid.n += 100;
    Reached(operation::scope().detached().run(bump(&far)).await)
}

#[derive(Debug)]
struct Relayed(Result<Committed<Reached>, ConflictError>);

#[with_conflict_resolution]
async fn reach_via_relay(
    mine: &mut Slot,
    mid: Handle<Slot>,
    far: Handle<Slot>,
    barrier: Arc<Barrier>,
) -> Relayed {
    barrier.wait().await;
    mine.n += 10;
    Relayed(operation::scope().detached().run(relay(&mid, far)).await)
}

/// A's detached call's detached call targets A's own entity: D2 -> A -> D1 -> D2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_detached_in_detached_on_the_roots_own_entity_is_refused_not_hung() {
    let rt = Runtime::in_memory();
    let (a, mid) = (slot(&rt).await, slot(&rt).await);
    let done = tokio::time::timeout(
        BOUND,
        reach_via_relay(&a, mid.clone(), a.clone(), Arc::new(Barrier::new(1))),
    )
    .await
    .expect("must not hang")
    .unwrap();
    let relayed = done.value.0.as_ref().expect("the relay commits");
    match &relayed.value.0 {
        Err(e @ ConflictError::WaitCycle { cycle, .. }) => {
            assert_eq!(cycle.len(), 3, "{cycle:?}");
            assert!(cycle.contains(&done.op_id));
            assert_eq!(e.kind(), OutcomeKind::Reentrant);
        }
        Err(e @ ConflictError::Reentrant { .. }) => assert_eq!(e.kind(), OutcomeKind::Reentrant),
        other => panic!("the inner detached call would wait for its own root: {other:?}"),
    }
    assert_eq!(value(&a).await, 10);
    assert_eq!(value(&mid).await, 100);
    assert_balanced(&rt);
}

/// A -> D1 (on a free entity) -> D2 on B's entity; B -> Bd on A's entity: a five-op cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_cycle_through_detached_in_detached_is_broken_once() {
    for _ in 0..20 {
        let rt = Runtime::in_memory();
        let (x, y, mid) = (slot(&rt).await, slot(&rt).await, slot(&rt).await);
        let barrier = Arc::new(Barrier::new(2));
        let a = {
            let (x, y, mid, b) = (x.clone(), y.clone(), mid.clone(), barrier.clone());
            tokio::spawn(async move { reach_via_relay(&x, mid, y, b).await })
        };
        let b = tokio::spawn(reach_out_owned(y.clone(), x.clone(), barrier));
        let (a, b) = tokio::time::timeout(BOUND, async { (a.await, b.await) })
            .await
            .expect("a cycle through a detached call's detached call must not hang");
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        let relayed = a.value.0.as_ref().expect("the relay commits");
        let cycles: Vec<_> = [relayed.value.cycle(), b.value.cycle()]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(cycles.len(), 1, "{a:?} {b:?}");
        assert_eq!(cycles[0].len(), 5, "{:?}", cycles[0]);
        assert_eq!(value(&mid).await, 100);
        assert_eq!(value(&x).await + value(&y).await, 21);
        assert_balanced(&rt);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. A cycle that forms while an entity changes hands.

#[with_conflict_resolution(priority = "critical", occ(max_retries = 5, base_delay_ms = 0))]
async fn pair_urgent(a: &mut Slot, b: &mut Slot) {
    a.n += 100;
    b.n += 100;
}

/// Holds `mine` and makes a low-priority detached call on `busy` that stays staged when it
/// loses a group (`requeue`).
#[with_conflict_resolution]
async fn reach_busy(mine: &mut Slot, busy: Handle<Slot>) -> Reached {
    mine.n += 10;
    Reached(
        operation::scope()
            .priority(OperationPriority::LOW)
            .on_lose(OnLose::Requeue)
            .detached()
            .run(bump(&busy))
            .await,
    )
}

/// k0 < k1. H holds k0; A holds k1 and its detached call Ad waits for k0. The urgent pair
/// (k0, k1) also waits for k0 (holding nothing, unregistered). H ends: k0 goes to the pair
/// (higher priority), which now holds k0 and waits for k1 (A's), which waits for Ad, which
/// waits for the pair — the edge Ad -> pair appeared by a hand-over, and the pair's own
/// registration must see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_cycle_formed_by_a_hand_over_is_seen_by_the_new_holder() {
    for _ in 0..10 {
        let rt = Runtime::in_memory();
        let k = sorted_slots(&rt, 2).await;
        let release = Arc::new(Notify::new());
        let h = {
            let (k0, r) = (k[0].clone(), release.clone());
            tokio::spawn(async move { hold_until(&k0, r).await })
        };
        executing_on(&rt, &key_of(&k[0])).await;
        let a = {
            let (k1, k0) = (k[1].clone(), k[0].clone());
            tokio::spawn(async move { reach_busy(&k1, k0).await })
        };
        staged_on(&rt, &key_of(&k[0]), 1).await;
        let p = {
            let (k0, k1) = (k[0].clone(), k[1].clone());
            tokio::spawn(async move {
                operation::scope()
                    .on_lose(OnLose::Requeue)
                    .run(pair_urgent(&k0, &k1))
                    .await
            })
        };
        staged_on(&rt, &key_of(&k[0]), 2).await;
        release.notify_one();
        let (h, a, p) = tokio::time::timeout(BOUND, async { (h.await, a.await, p.await) })
            .await
            .expect("a cycle closed by a hand-over must not hang");
        h.unwrap().unwrap();
        let a = a.unwrap().unwrap();
        let p = p.unwrap();
        match &p {
            Err(ConflictError::WaitCycle { cycle, .. }) => {
                assert_eq!(cycle.len(), 3, "pair, A, Ad: {cycle:?}");
                assert!(a.value.committed(), "{a:?}");
                assert_eq!(value(&k[0]).await, 2);
                assert_eq!(value(&k[1]).await, 10);
            }
            Ok(_) => {
                // k0 went to Ad first (no cycle): everything commits.
                assert!(a.value.committed(), "{a:?}");
                assert_eq!(value(&k[0]).await, 102);
                assert_eq!(value(&k[1]).await, 110);
            }
            Err(e) => panic!("the pair: {e}"),
        }
        assert_balanced(&rt);
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Many rounds without a barrier: never a hang, never both refused.

#[with_conflict_resolution]
async fn reach_jittered(mine: &mut Slot, theirs: Handle<Slot>, spins: u32) -> Reached {
    for _ in 0..spins {
        tokio::task::yield_now().await;
    }
    mine.n += 10;
    Reached(operation::scope().detached().run(bump(&theirs)).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_two_party_cycles_in_200_jittered_rounds() {
    let rt = Runtime::in_memory();
    let (x, y) = (slot(&rt).await, slot(&rt).await);
    let (mut refused, mut expected) = (0, 0i64);
    for round in 0..200u32 {
        let (sa, sb) = (fastrand::u32(0..4), fastrand::u32(0..4));
        let a = {
            let (x, y) = (x.clone(), y.clone());
            tokio::spawn(async move { reach_jittered(&x, y, sa).await })
        };
        let b = {
            let (x, y) = (x.clone(), y.clone());
            tokio::spawn(async move { reach_jittered(&y, x, sb).await })
        };
        let (a, b) = tokio::time::timeout(BOUND, async { (a.await, b.await) })
            .await
            .unwrap_or_else(|_| panic!("round {round} hung"));
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut cycles = 0;
        for r in [&a, &b] {
            match r {
                Ok(c) => {
                    expected += 10;
                    match &c.value.0 {
                        Ok(_) => expected += 1,
                        Err(ConflictError::WaitCycle { .. }) => cycles += 1,
                        // It lost its group on the other root's entity (reject).
                        Err(ConflictError::Rejected { .. }) => {}
                        Err(e) => panic!("round {round}: a detached call: {e}"),
                    }
                }
                // A root may lose its group to the other's detached call (reject).
                Err(ConflictError::Rejected { .. }) => {}
                Err(e) => panic!("round {round}: a root: {e}"),
            }
        }
        assert!(cycles <= 1, "round {round}: both refused: {a:?} {b:?}");
        refused += cycles;
    }
    assert_balanced(&rt);
    assert_eq!(
        value(&x).await + value(&y).await,
        expected,
        "no lost or doubled update"
    );
    eprintln!("refused {refused} of 200 rounds");
}

// ---------------------------------------------------------------------------------------------
// 7. Cancellation leaves no stale edge.

#[with_conflict_resolution]
async fn reach_plain(mine: &mut Slot, theirs: Handle<Slot>) -> Reached {
    mine.n += 10;
    Reached(operation::scope().detached().run(bump(&theirs)).await)
}

/// A root whose detached call waits is dropped (and, separately, a detached call alone is
/// dropped); afterwards the same entities carry a crossing pattern (exactly one refusal) and a
/// plain wait (none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_cancelled_waits_leave_no_false_cycles() {
    let rt = Runtime::in_memory();
    let (x, y) = (slot(&rt).await, slot(&rt).await);
    for _ in 0..20 {
        let release = Arc::new(Notify::new());
        let holder = {
            let (y, r) = (y.clone(), release.clone());
            tokio::spawn(async move { hold_until(&y, r).await })
        };
        executing_on(&rt, &key_of(&y)).await;
        // The root, waiting for its detached call, is dropped.
        let dropped = {
            let (x, y) = (x.clone(), y.clone());
            tokio::spawn(async move { reach_plain(&x, y).await })
        };
        staged_on(&rt, &key_of(&y), 1).await;
        dropped.abort();
        assert!(dropped.await.unwrap_err().is_cancelled());
        // A detached call dropped while it waits, from inside a body that goes on.
        let partial = {
            let (x, y) = (x.clone(), y.clone());
            tokio::spawn(async move { drop_a_waiting_detached(&x, y).await })
        };
        let partial = tokio::time::timeout(BOUND, partial)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(partial.value);
        release.notify_one();
        holder.await.unwrap().unwrap();
    }
    // The crossing pattern on the same entities: exactly one refusal, as on a fresh runtime.
    for _ in 0..10 {
        let barrier = Arc::new(Barrier::new(2));
        let a = tokio::spawn(reach_out_owned(x.clone(), y.clone(), barrier.clone()));
        let b = tokio::spawn(reach_out_owned(y.clone(), x.clone(), barrier));
        let (a, b) = tokio::time::timeout(BOUND, async { (a.await, b.await) })
            .await
            .expect("no hang");
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        let n = [&a.value, &b.value]
            .iter()
            .filter(|r| r.cycle().is_some())
            .count();
        assert_eq!(n, 1, "{a:?} {b:?}");
    }
    // A plain wait on a busy entity: no refusal.
    let before = rt.metrics().outcome(OutcomeKind::Reentrant);
    for _ in 0..10 {
        let release = Arc::new(Notify::new());
        let holder = {
            let (y, r) = (y.clone(), release.clone());
            tokio::spawn(async move { hold_until(&y, r).await })
        };
        executing_on(&rt, &key_of(&y)).await;
        let w = {
            let (x, y) = (x.clone(), y.clone());
            tokio::spawn(async move { reach_plain(&x, y).await })
        };
        staged_on(&rt, &key_of(&y), 1).await;
        release.notify_one();
        let w = tokio::time::timeout(BOUND, w)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(w.value.committed(), "{w:?}");
        holder.await.unwrap().unwrap();
    }
    assert_eq!(rt.metrics().outcome(OutcomeKind::Reentrant), before);
    assert_balanced(&rt);
    assert!(rt.metrics().outcome(OutcomeKind::Cancelled) >= 40);
}

/// Starts a detached call on `busy` and drops it after a moment (it waits in staging).
#[with_conflict_resolution]
async fn drop_a_waiting_detached(mine: &mut Slot, busy: Handle<Slot>) -> bool {
    mine.n += 1;
    let r = tokio::time::timeout(
        Duration::from_millis(20),
        operation::scope().detached().run(bump(&busy)),
    )
    .await;
    r.is_err()
}

// ---------------------------------------------------------------------------------------------
// 8. Legitimate patterns are not refused.

#[with_conflict_resolution]
async fn reach_requeue(mine: &mut Slot, theirs: Handle<Slot>) -> Reached {
    mine.n += 10;
    Reached(
        operation::scope()
            .on_lose(OnLose::Requeue)
            .detached()
            .run(bump(&theirs))
            .await,
    )
}

/// Many roots, each on its own entity, make detached calls on one shared busy entity: a queue,
/// no cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_many_detached_calls_queueing_on_one_entity_are_never_refused() {
    let rt = Runtime::in_memory();
    let shared = slot(&rt).await;
    let mut own = Vec::new();
    for _ in 0..16 {
        own.push(slot(&rt).await);
    }
    for _ in 0..5 {
        let tasks: Vec<_> = own
            .iter()
            .map(|o| {
                let (o, s) = (o.clone(), shared.clone());
                tokio::spawn(async move { reach_requeue(&o, s).await })
            })
            .collect();
        let done = tokio::time::timeout(BOUND, futures_util::future::join_all(tasks))
            .await
            .expect("no hang");
        for d in done {
            let d = d.unwrap().unwrap();
            assert!(d.value.committed(), "{d:?}");
        }
    }
    assert_eq!(value(&shared).await, 16 * 5);
    assert_eq!(rt.metrics().outcome(OutcomeKind::Reentrant), 0);
    assert_balanced(&rt);
}

/// A chain of detached waits that does not close (A -> B's entity, B -> C's, C -> free).
#[with_conflict_resolution]
async fn reach_after(mine: &mut Slot, theirs: Handle<Slot>, barrier: Arc<Barrier>) -> Reached {
    barrier.wait().await;
    mine.n += 10;
    Reached(operation::scope().detached().run(bump(&theirs)).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_an_open_chain_of_detached_waits_is_not_a_cycle() {
    for _ in 0..20 {
        let rt = Runtime::in_memory();
        let s = [
            slot(&rt).await,
            slot(&rt).await,
            slot(&rt).await,
            slot(&rt).await,
        ];
        let barrier = Arc::new(Barrier::new(3));
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                let (m, t, b) = (s[i].clone(), s[i + 1].clone(), barrier.clone());
                tokio::spawn(async move { reach_after(&m, t, b).await })
            })
            .collect();
        let done = tokio::time::timeout(BOUND, futures_util::future::join_all(tasks))
            .await
            .expect("no hang");
        for d in done {
            let d = d.unwrap().unwrap();
            assert!(d.value.committed(), "{d:?}");
        }
        assert_eq!(rt.metrics().outcome(OutcomeKind::Reentrant), 0);
        assert_balanced(&rt);
    }
}

/// Two concurrent detached calls from one body (joined), each waiting on a different busy
/// entity whose holder makes a detached call on the other: no cycle.
#[with_conflict_resolution]
async fn fan_out(mine: &mut Slot, p: Handle<Slot>, q: Handle<Slot>) -> (Reached, Reached) {
    mine.n += 10;
    let (a, b) = tokio::join!(
        operation::scope().detached().run(bump(&p)),
        operation::scope().detached().run(bump(&q)),
    );
    (Reached(a), Reached(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_a_body_joining_two_detached_calls_is_not_refused() {
    for _ in 0..20 {
        let rt = Runtime::in_memory();
        let (r, p, q) = (slot(&rt).await, slot(&rt).await, slot(&rt).await);
        let release = Arc::new(Notify::new());
        let hp = {
            let (p, rel) = (p.clone(), release.clone());
            tokio::spawn(async move { hold_until(&p, rel).await })
        };
        executing_on(&rt, &key_of(&p)).await;
        let f = {
            let (r, p, q) = (r.clone(), p.clone(), q.clone());
            tokio::spawn(async move { fan_out(&r, p, q).await })
        };
        staged_on(&rt, &key_of(&p), 1).await;
        release.notify_one();
        let (hp, f) = tokio::time::timeout(BOUND, async { (hp.await, f.await) })
            .await
            .expect("no hang");
        hp.unwrap().unwrap();
        let f = f.unwrap().unwrap();
        assert!(f.value.0.committed() && f.value.1.committed(), "{f:?}");
        assert_eq!(rt.metrics().outcome(OutcomeKind::Reentrant), 0);
        assert_balanced(&rt);
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Spawned-but-not-awaited detached calls.

#[with_conflict_resolution]
async fn spawn_and_leave(
    mine: &mut Slot,
    busy: Handle<Slot>,
    out: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<Reached>>>>,
) {
    mine.n += 10;
    let fut = operation::scope()
        .detached()
        .run(async move { Reached(bump(&busy).await) });
    *out.lock().unwrap() = Some(tokio::spawn(fut));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_a_spawned_detached_call_left_running_ends() {
    for _ in 0..10 {
        let rt = Runtime::in_memory();
        let (x, y) = (slot(&rt).await, slot(&rt).await);
        let release = Arc::new(Notify::new());
        let holder = {
            let (y, r) = (y.clone(), release.clone());
            tokio::spawn(async move { hold_until(&y, r).await })
        };
        executing_on(&rt, &key_of(&y)).await;
        let out = Arc::new(std::sync::Mutex::new(None));
        tokio::time::timeout(BOUND, spawn_and_leave(&x, y.clone(), out.clone()))
            .await
            .expect("the root does not wait for it")
            .unwrap();
        release.notify_one();
        let spawned = out.lock().unwrap().take().unwrap();
        let spawned = tokio::time::timeout(BOUND, spawned)
            .await
            .expect("the spawned call ends")
            .unwrap();
        assert!(spawned.committed(), "{spawned:?}");
        holder.await.unwrap().unwrap();
        // Later, a crossing pattern on the same entities: still exactly one refusal.
        let barrier = Arc::new(Barrier::new(2));
        let a = tokio::spawn(reach_out_owned(x.clone(), y.clone(), barrier.clone()));
        let b = tokio::spawn(reach_out_owned(y.clone(), x.clone(), barrier));
        let (a, b) = tokio::time::timeout(BOUND, async { (a.await, b.await) })
            .await
            .expect("no hang");
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        let n = [&a.value, &b.value]
            .iter()
            .filter(|r| r.cycle().is_some())
            .count();
        assert_eq!(n, 1, "{a:?} {b:?}");
        assert_eq!(value(&x).await + value(&y).await, 10 + 1 + 1 + 21);
        assert_balanced(&rt);
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Priority and preemption.

#[with_conflict_resolution(priority = "low", pre_ecs(grace_period_ms = 0))]
async fn low_reach(mine: &mut Slot, theirs: Handle<Slot>, barrier: Arc<Barrier>) -> Reached {
    barrier.wait().await;
    mine.n += 10;
    Reached(operation::scope().detached().run(bump(&theirs)).await)
}

/// L (low priority, no grace) holds x and reaches for y; H holds y and reaches for x with a
/// critical detached call (which outranks L and may preempt it). Whatever wins, everything
/// ends, at most one call is refused for a cycle, and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_cycle_with_a_preemptible_holder() {
    for _ in 0..20 {
        let rt = Runtime::in_memory();
        let (x, y) = (slot(&rt).await, slot(&rt).await);
        let barrier = Arc::new(Barrier::new(2));
        let l = {
            let (x, y, b) = (x.clone(), y.clone(), barrier.clone());
            tokio::spawn(async move { low_reach(&x, y, b).await })
        };
        let h = {
            let (x, y, b) = (x.clone(), y.clone(), barrier);
            tokio::spawn(async move { urgent_reach(&y, x, b).await })
        };
        let (l, h) = tokio::time::timeout(BOUND, async { (l.await, h.await) })
            .await
            .expect("no hang");
        let (l, h) = (l.unwrap(), h.unwrap().unwrap());
        let lv = match &l {
            Ok(c) => Some(&c.value),
            Err(e) => {
                assert_eq!(e.kind(), OutcomeKind::Preempted, "{e}");
                None
            }
        };
        let refused = lv.iter().filter(|v| v.cycle().is_some()).count()
            + usize::from(h.value.cycle().is_some());
        assert!(refused <= 1, "{l:?} {h:?}");
        if l.is_err() {
            assert!(h.value.committed(), "the preemptor commits: {h:?}");
        } else {
            assert_eq!(
                refused, 1,
                "no preemption: the cycle was broken: {l:?} {h:?}"
            );
        }
        assert_balanced(&rt);
    }
}

#[with_conflict_resolution]
async fn urgent_reach(mine: &mut Slot, theirs: Handle<Slot>, barrier: Arc<Barrier>) -> Reached {
    barrier.wait().await;
    mine.n += 10;
    Reached(
        operation::scope()
            .priority(OperationPriority::CRITICAL)
            .detached()
            .run(bump(&theirs))
            .await,
    )
}

// ---------------------------------------------------------------------------------------------
// 11. Requeue and reject with a staging window.

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 15))]
async fn bump_windowed(s: &mut Slot) -> i64 {
    s.n += 1;
    s.n
}

#[with_conflict_resolution]
async fn reach_windowed(mine: &mut Slot, theirs: Handle<Slot>, on_lose: OnLose) -> Reached {
    mine.n += 10;
    Reached(
        operation::scope()
            .on_lose(on_lose)
            .detached()
            .run(bump_windowed(&theirs))
            .await,
    )
}

/// Holds `mine`; once `n` calls are staged on it, a detached call on `theirs`.
#[with_conflict_resolution]
async fn reach_when_staged_n(
    mine: &mut Slot,
    theirs: Handle<Slot>,
    rt: Runtime,
    n: usize,
) -> Reached {
    let key = EntityKey::new(Slot::TYPE_NAME, mine.id);
    staged_on(&rt, &key, n).await;
    mine.n += 10;
    Reached(operation::scope().detached().run(bump(&theirs)).await)
}

/// Two roots (on x1, x2) send windowed detached calls to y, held by B, whose body reaches for
/// x1 once both are staged: B's detached call closes a cycle through A1 (exactly one refusal),
/// and y's next group has two members. Every call ends; with `reject`, a loser of y's group ends `Rejected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_cycles_with_windowed_groups_in_requeue_and_reject() {
    for on_lose in [OnLose::Requeue, OnLose::Reject] {
        for _ in 0..10 {
            let rt = Runtime::in_memory();
            let (x1, x2, y) = (slot(&rt).await, slot(&rt).await, slot(&rt).await);
            let b = {
                let (y, x1, rt) = (y.clone(), x1.clone(), rt.clone());
                tokio::spawn(async move { reach_when_staged_n(&y, x1, rt, 2).await })
            };
            executing_on(&rt, &key_of(&y)).await;
            let a1 = {
                let (x1, y) = (x1.clone(), y.clone());
                tokio::spawn(async move { reach_windowed(&x1, y, on_lose).await })
            };
            // A1 holds x1 and its detached call waits on y before A2 comes.
            staged_on(&rt, &key_of(&y), 1).await;
            let a2 = {
                let (x2, y) = (x2.clone(), y.clone());
                tokio::spawn(async move { reach_windowed(&x2, y, on_lose).await })
            };
            let (b, a1, a2) = tokio::time::timeout(BOUND, async { (b.await, a1.await, a2.await) })
                .await
                .expect("no hang");
            let (b, a1, a2) = (
                b.unwrap().unwrap(),
                a1.unwrap().unwrap(),
                a2.unwrap().unwrap(),
            );
            let refused = [&b.value, &a1.value, &a2.value]
                .iter()
                .filter(|v| v.cycle().is_some())
                .count();
            assert_eq!(refused, 1, "{b:?} {a1:?} {a2:?}");
            for v in [&a1.value, &a2.value] {
                match &v.0 {
                    Ok(_) | Err(ConflictError::WaitCycle { .. }) => {}
                    Err(ConflictError::Rejected { .. }) if on_lose == OnLose::Reject => {}
                    Err(e) => panic!("{on_lose:?}: {e}"),
                }
            }
            assert_balanced(&rt);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 12. Shutdown while detached calls wait.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_shutdown_ends_waiting_detached_calls_and_their_roots() {
    let rt = Runtime::in_memory();
    let (x, y) = (slot(&rt).await, slot(&rt).await);
    let never = Arc::new(Notify::new());
    let holder = {
        let (y, n) = (y.clone(), never.clone());
        tokio::spawn(async move { hold_until(&y, n).await })
    };
    executing_on(&rt, &key_of(&y)).await;
    let root = {
        let (x, y) = (x.clone(), y.clone());
        tokio::spawn(async move { reach_plain(&x, y).await })
    };
    staged_on(&rt, &key_of(&y), 1).await;
    let report = tokio::time::timeout(BOUND, rt.shutdown(Duration::from_millis(100)))
        .await
        .expect("shutdown ends");
    let (holder, root) = tokio::time::timeout(BOUND, async { (holder.await, root.await) })
        .await
        .expect("the calls end");
    let holder = holder.unwrap();
    assert_eq!(
        holder.as_ref().unwrap_err().kind(),
        OutcomeKind::ShuttingDown,
        "{holder:?}"
    );
    match root.unwrap() {
        Ok(c) => assert!(
            matches!(c.value.0, Err(ConflictError::ShuttingDown { .. })),
            "{c:?}"
        ),
        Err(e) => assert_eq!(e.kind(), OutcomeKind::ShuttingDown, "{e}"),
    }
    assert!(report.staged_ended_by_shutdown >= 1, "{report:?}");
    assert_balanced(&rt);
    // After shutdown, a detached pattern is refused at once, not hung.
    let late = tokio::time::timeout(BOUND, reach_plain(&x, y.clone()))
        .await
        .expect("no hang");
    assert!(
        matches!(late, Err(ConflictError::ShuttingDown { .. })),
        "{late:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 13. A body error in a doomed attempt.

/// Nested write of `n`, then (on the first attempt only, or every attempt) a detached call
/// that moves `n` on, then a nested call on `m` (which re-reads `n`: the attempt is doomed and
/// that call ends `RolledBack`), then the body fails regardless.
#[with_conflict_resolution(occ(max_retries = 3, base_delay_ms = 0))]
async fn doomed_root(
    mine: &mut Slot,
    n: Handle<Slot>,
    m: Handle<Slot>,
    every: bool,
    runs: Arc<AtomicU32>,
) -> Result<i64, String> {
    let run = runs.fetch_add(1, Ordering::SeqCst);
    mine.n += 1;
    bump(&n).await.map_err(|e| format!("first nested: {e}"))?;
    if every || run == 0 {
        operation::scope()
            .detached()
            .run(bump(&n))
            .await
            .map_err(|e| format!("detached: {e}"))?;
    }
    let second = bump(&m).await;
    Err(format!(
        "always fails (second nested: {:?})",
        second.map(|c| c.value)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_doomed_once_then_the_real_body_error_surfaces() {
    let rt = Runtime::in_memory();
    let (r, n, m) = (slot(&rt).await, slot(&rt).await, slot(&rt).await);
    let runs = Arc::new(AtomicU32::new(0));
    let e = tokio::time::timeout(
        BOUND,
        doomed_root(&r, n.clone(), m.clone(), false, runs.clone()),
    )
    .await
    .expect("no hang")
    .unwrap_err();
    match &e {
        ConflictError::Body(msg) => assert!(msg.starts_with("always fails"), "{msg}"),
        other => panic!("the real body error: {other}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one doomed run, one real");
    assert_eq!(value(&r).await, 0);
    assert_eq!(value(&n).await, 1, "only the detached call committed");
    assert_eq!(value(&m).await, 0);
    assert_balanced(&rt);
    assert_eq!(rt.metrics().outcome(OutcomeKind::BodyError), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_doomed_every_attempt_ends_within_max_retries() {
    let rt = Runtime::in_memory();
    let (r, n, m) = (slot(&rt).await, slot(&rt).await, slot(&rt).await);
    let runs = Arc::new(AtomicU32::new(0));
    let e = tokio::time::timeout(
        BOUND,
        doomed_root(&r, n.clone(), m.clone(), true, runs.clone()),
    )
    .await
    .expect("a body doomed every time must not loop forever")
    .unwrap_err();
    assert!(
        matches!(e, ConflictError::RetriesExhausted { attempts: 4, .. }),
        "{e}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 4, "max_retries = 3");
    assert_eq!(value(&r).await, 0);
    assert_eq!(value(&n).await, 4, "one detached commit per attempt");
    assert_eq!(value(&m).await, 0);
    assert_balanced(&rt);
    let m = rt.metrics();
    assert_eq!(m.outcome(OutcomeKind::RetriesExhausted), 1);
    assert_eq!(m.outcome(OutcomeKind::Committed), 4);
    assert_eq!(
        m.outcome(OutcomeKind::RolledBack),
        8,
        "two nested calls per attempt"
    );
}

/// The same on the multi-entity path.
#[with_conflict_resolution(occ(max_retries = 2, base_delay_ms = 0))]
async fn doomed_pair(
    a: &mut Slot,
    b: &mut Slot,
    n: Handle<Slot>,
    m: Handle<Slot>,
    runs: Arc<AtomicU32>,
) -> Result<(), String> {
    runs.fetch_add(1, Ordering::SeqCst);
    a.n += 1;
    b.n += 1;
    bump(&n).await.map_err(|e| e.to_string())?;
    operation::scope()
        .detached()
        .run(bump(&n))
        .await
        .map_err(|e| e.to_string())?;
    bump(&m).await.map_err(|e| e.to_string())?;
    Err("unreachable in a doomed attempt".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_doomed_every_attempt_on_the_multi_entity_path_ends() {
    let rt = Runtime::in_memory();
    let (a, b, n, m) = (
        slot(&rt).await,
        slot(&rt).await,
        slot(&rt).await,
        slot(&rt).await,
    );
    let runs = Arc::new(AtomicU32::new(0));
    let e = tokio::time::timeout(
        BOUND,
        doomed_pair(&a, &b, n.clone(), m.clone(), runs.clone()),
    )
    .await
    .expect("no endless loop")
    .unwrap_err();
    assert!(
        matches!(e, ConflictError::RetriesExhausted { attempts: 3, .. }),
        "{e}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(value(&n).await, 3);
    assert_eq!(
        (value(&a).await, value(&b).await, value(&m).await),
        (0, 0, 0)
    );
    assert_balanced(&rt);
}

// ---------------------------------------------------------------------------------------------
// 14. Cycles across two runtimes.

/// A call made inside a body on another runtime's entity: a root of that runtime (it stages
/// there), awaited by the body, so it registers like a detached call.
#[with_conflict_resolution]
async fn reach_plain_call(mine: &mut Slot, theirs: Handle<Slot>, barrier: Arc<Barrier>) -> Reached {
    barrier.wait().await;
    mine.n += 10;
    Reached(bump(&theirs).await)
}

/// A on runtime 1 holds x and calls `bump(y)` on runtime 2; B on runtime 2 holds y and calls
/// `bump(x)` on runtime 1. Each inner call is a root of its own runtime that stages — the same
/// wait as a detached call — and each body awaits it: a cycle. (The reviewed version hung: such
/// a call did not register, and each runtime had a graph of its own that saw half the cycle.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_a_cycle_of_calls_across_two_runtimes_never_hangs() {
    let (rt1, rt2) = (Runtime::in_memory(), Runtime::in_memory());
    let (x, y) = (slot(&rt1).await, slot(&rt2).await);
    let barrier = Arc::new(Barrier::new(2));
    let a = {
        let (x, y, b) = (x.clone(), y.clone(), barrier.clone());
        tokio::spawn(async move { reach_plain_call(&x, y, b).await })
    };
    let b = {
        let (x, y, b) = (x.clone(), y.clone(), barrier);
        tokio::spawn(async move { reach_plain_call(&y, x, b).await })
    };
    let done = tokio::time::timeout(Duration::from_secs(3), async { (a.await, b.await) }).await;
    assert!(
        done.is_ok(),
        "a cycle of waits through calls on another runtime made inside bodies hung \
         (staged on x: {:?}, on y: {:?})",
        rt1.staging_status().total_staged,
        rt2.staging_status().total_staged
    );
    let Ok((a, b)) = done else { unreachable!() };
    assert_one_refused_across_runtimes(
        &a.unwrap().unwrap().value,
        &b.unwrap().unwrap().value,
        &x,
        &y,
    )
    .await;
}

/// Exactly one of two crossing inner calls was refused with `WaitCycle` (a four-party cycle
/// across both runtimes); the roots added 10 each and the inner call that ran added 1.
async fn assert_one_refused_across_runtimes(
    a: &Reached,
    b: &Reached,
    x: &Handle<Slot>,
    y: &Handle<Slot>,
) {
    let refused: Vec<&Vec<OpId>> = [&a.0, &b.0]
        .into_iter()
        .filter_map(|r| match r {
            Err(ConflictError::WaitCycle { cycle, .. }) => Some(cycle),
            Ok(_) => None,
            Err(e) => panic!("an inner call: {e}"),
        })
        .collect();
    assert_eq!(refused.len(), 1, "exactly one wait closes the cycle");
    assert_eq!(refused[0].len(), 4, "{:?}", refused[0]);
    let total = x.load().await.unwrap().value.n + y.load().await.unwrap().value.n;
    assert_eq!(total, 21);
}

/// The same with `scope().detached()`. (The reviewed version hung: each detached call
/// registered in its own runtime's graph, so neither graph held the whole cycle.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_a_cycle_of_detached_calls_across_two_runtimes_never_hangs() {
    let (rt1, rt2) = (Runtime::in_memory(), Runtime::in_memory());
    let (x, y) = (slot(&rt1).await, slot(&rt2).await);
    let barrier = Arc::new(Barrier::new(2));
    let a = tokio::spawn(reach_out_owned(x.clone(), y.clone(), barrier.clone()));
    let b = tokio::spawn(reach_out_owned(y.clone(), x.clone(), barrier));
    let done = tokio::time::timeout(Duration::from_secs(3), async { (a.await, b.await) }).await;
    assert!(
        done.is_ok(),
        "a cycle of detached waits across two runtimes hung (staged: {}, {})",
        rt1.staging_status().total_staged,
        rt2.staging_status().total_staged
    );
    let Ok((a, b)) = done else { unreachable!() };
    assert_one_refused_across_runtimes(
        &a.unwrap().unwrap().value,
        &b.unwrap().unwrap().value,
        &x,
        &y,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 15. Plain calls never get `WaitCycle`, under a mixed load.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_plain_calls_never_get_wait_cycle_under_mixed_load() {
    let rt = Runtime::in_memory();
    let k = sorted_slots(&rt, 2).await;
    let (x, y) = (k[0].clone(), k[1].clone());
    let mut expected = 0i64;
    let mut refused = 0;
    for round in 0..100u32 {
        let j = || fastrand::u32(0..3);
        let a = {
            let (x, y, s) = (x.clone(), y.clone(), j());
            tokio::spawn(async move { reach_jittered(&x, y, s).await })
        };
        let b = {
            let (x, y, s) = (x.clone(), y.clone(), j());
            tokio::spawn(async move { reach_jittered(&y, x, s).await })
        };
        let p1 = {
            let x = x.clone();
            tokio::spawn(async move { bump(&x).await })
        };
        let p2 = {
            let y = y.clone();
            tokio::spawn(async move { bump(&y).await })
        };
        let m = {
            let (x, y) = (x.clone(), y.clone());
            tokio::spawn(async move { pair(&x, &y).await })
        };
        let (a, b, p1, p2, m) = tokio::time::timeout(BOUND, async {
            (a.await, b.await, p1.await, p2.await, m.await)
        })
        .await
        .unwrap_or_else(|_| panic!("round {round} hung"));
        for r in [a.unwrap(), b.unwrap()] {
            match r {
                Ok(c) => {
                    expected += 10;
                    match &c.value.0 {
                        Ok(_) => expected += 1,
                        Err(ConflictError::WaitCycle { .. }) => refused += 1,
                        Err(ConflictError::Rejected { .. }) => {}
                        Err(e) => panic!("round {round}: a detached call: {e}"),
                    }
                }
                Err(ConflictError::Rejected { .. }) => {}
                Err(e) => panic!("round {round}: a root: {e}"),
            }
        }
        for p in [p1.unwrap(), p2.unwrap()] {
            match p {
                Ok(_) => expected += 1,
                Err(ConflictError::Rejected { .. }) => {}
                Err(e) => panic!("round {round}: a plain call must never get {e}"),
            }
        }
        match m.unwrap() {
            Ok(_) => expected += 200,
            Err(ConflictError::Rejected { .. }) => {}
            Err(ConflictError::WaitCycle { .. }) => refused += 1,
            Err(e) => panic!("round {round}: the pair: {e}"),
        }
        // Ended.
        assert_committed_wrote(&rt, &x, &y, expected).await;
    }
    assert_balanced(&rt);
    eprintln!("refused {refused} waits in 100 rounds");
}

async fn assert_committed_wrote(rt: &Runtime, x: &Handle<Slot>, y: &Handle<Slot>, expected: i64) {
    assert_eq!(
        value(x).await + value(y).await,
        expected,
        "no lost or doubled update"
    );
    assert_eq!(rt.staging_status().total_staged, 0, "nothing left staged");
}

// ---------------------------------------------------------------------------------------------
// 16. The documented false positive (a spawned detached call left running) at least ends.

#[with_conflict_resolution]
async fn spawn_then_linger(
    mine: &mut Slot,
    busy: Handle<Slot>,
    out: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<Reached>>>>,
) {
    mine.n += 10;
    let fut = operation::scope()
        .detached()
        .run(async move { Reached(bump(&busy).await) });
    *out.lock().unwrap() = Some(tokio::spawn(fut));
    // Linger a while (long enough for Q to react to D), then end without awaiting D.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// R (on x) spawns a detached call D on y (held by Q) and lingers without awaiting it; Q's
/// body, once D is staged on y, makes a detached call on x. The graph says Qd -> R -> D -> Q
/// -> Qd although R never waits for D: Qd may be refused (documented). Everything ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_the_spawned_detached_false_positive_still_ends() {
    let rt = Runtime::in_memory();
    let (x, y) = (slot(&rt).await, slot(&rt).await);
    let q = {
        let (y, x, rt) = (y.clone(), x.clone(), rt.clone());
        tokio::spawn(async move { reach_when_staged(&y, x, rt).await })
    };
    executing_on(&rt, &key_of(&y)).await;
    let out = Arc::new(std::sync::Mutex::new(None));
    let r = {
        let (x, y, out) = (x.clone(), y.clone(), out.clone());
        tokio::spawn(async move { spawn_then_linger(&x, y, out).await })
    };
    let (q, r) = tokio::time::timeout(BOUND, async { (q.await, r.await) })
        .await
        .expect("no hang");
    let (q, r) = (q.unwrap().unwrap(), r.unwrap().unwrap());
    let d = out.lock().unwrap().take().unwrap();
    let d = tokio::time::timeout(BOUND, d)
        .await
        .expect("D ends")
        .unwrap();
    assert!(d.committed(), "{d:?}");
    let _ = r;
    let refused = q.value.cycle().is_some();
    eprintln!("Q's detached call refused (the documented false positive): {refused}");
    let expected = 10 + 10 + 1 + i64::from(!refused);
    assert_eq!(value(&x).await + value(&y).await, expected);
    assert_balanced(&rt);
}
