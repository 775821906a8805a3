//! Creating and deleting entities inside calls (issue #10): an insert in a body joins the
//! call's commit, a delete replaces a written parameter's write, and both follow the call's
//! outcome at every depth of nesting.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use conflict_runtime::entity::EntityKey;
use conflict_runtime::error::DeleteError;
use conflict_runtime::operation::{self, OutcomeKind};
use conflict_runtime::prelude::*;
use conflict_runtime::store::StoreError;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "create_delete::Order")]
struct Order {
    #[entity(id)]
    id: EntityId,
    lines: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "create_delete::Reservation")]
struct Reservation {
    #[entity(id)]
    id: EntityId,
    qty: u32,
}

async fn order(rt: &Runtime) -> Handle<Order> {
    rt.insert(Order {
        id: EntityId::new(),
        lines: Vec::new(),
    })
    .await
    .unwrap()
}

fn gone<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::NotFound { .. }))
}

static RUNS: AtomicU64 = AtomicU64::new(0);

/// Reserves (creating the reservation) and, on its first attempt, lets an outside writer move
/// the order on so that the attempt conflicts and runs again.
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 3, base_delay_ms = 0))]
async fn reserve(
    o: &mut Order,
    rt: Runtime,
    res: EntityId,
    me: Handle<Order>,
    conflict_once: Arc<AtomicBool>,
) -> Result<(), StoreError> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    rt.insert(Reservation { id: res, qty: 2 }).await?;
    if conflict_once.swap(false, Ordering::SeqCst) {
        operation::scope()
            .detached()
            .run(add_line(&me, 9))
            .await
            .expect("a detached call commits on its own");
    }
    o.lines.push(1);
    Ok(())
}

#[with_conflict_resolution(occ(max_retries = 3, base_delay_ms = 0))]
async fn add_line(o: &mut Order, line: u32) {
    o.lines.push(line);
}

#[tokio::test]
async fn an_insert_in_a_body_that_runs_again_creates_the_entity_once() {
    let rt = Runtime::in_memory();
    let o = order(&rt).await;
    let res = EntityId::new();
    let before = RUNS.load(Ordering::SeqCst);
    let done = reserve(
        &o,
        rt.clone(),
        res,
        o.clone(),
        Arc::new(AtomicBool::new(true)),
    )
    .await
    .unwrap();
    assert_eq!(done.attempts, 2);
    assert_eq!(
        RUNS.load(Ordering::SeqCst) - before,
        2,
        "the body ran twice"
    );
    let r = rt.handle::<Reservation>(res).load().await.unwrap();
    assert_eq!(
        (r.value.qty, r.version),
        (2, 1),
        "created once, by the commit"
    );
    assert_eq!(
        done.version_of(&EntityKey::new(Reservation::TYPE_NAME, res)),
        Some(1)
    );
    assert_eq!(o.load().await.unwrap().value.lines, [9, 1]);
    // A second call under the same id finds it: the body's `?` ends the call.
    let e = reserve(
        &o,
        rt.clone(),
        res,
        o.clone(),
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, ConflictError::Body(StoreError::AlreadyExists { .. })),
        "{e}"
    );
    assert_eq!(
        o.load().await.unwrap().value.lines,
        [9, 1],
        "nothing applied"
    );
}

#[with_conflict_resolution(occ(max_retries = 3, base_delay_ms = 0))]
async fn make_reservation(
    o: &mut Order,
    rt: Runtime,
    res: EntityId,
    fail: bool,
) -> Result<(), String> {
    rt.insert(Reservation { id: res, qty: 1 })
        .await
        .map_err(|e| e.to_string())?;
    o.lines.push(5);
    if fail { Err("no".into()) } else { Ok(()) }
}

#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 3, base_delay_ms = 0))]
async fn parent_of_reservations(
    root: &mut Order,
    child: Handle<Order>,
    rt: Runtime,
    kept: EntityId,
    undone: EntityId,
    fail_root: bool,
) -> Result<(), String> {
    make_reservation(&child, rt.clone(), kept, false)
        .await
        .map_err(|e| e.to_string())?;
    // This nested call fails after its insert: its insert is undone, the root goes on.
    let failed = make_reservation(&child, rt.clone(), undone, true).await;
    assert!(matches!(failed, Err(ConflictError::Body(_))));
    root.lines.push(7);
    if fail_root {
        Err("root failed".into())
    } else {
        Ok(())
    }
}

#[tokio::test]
async fn inserts_in_nested_calls_follow_their_callers_outcome() {
    let rt = Runtime::in_memory();
    let (root, child) = (order(&rt).await, order(&rt).await);
    let (kept, undone) = (EntityId::new(), EntityId::new());
    let e = parent_of_reservations(&root, child.clone(), rt.clone(), kept, undone, true)
        .await
        .unwrap_err();
    assert!(matches!(e, ConflictError::Body(_)), "{e}");
    assert!(
        gone(rt.handle::<Reservation>(kept).load().await),
        "the root failed"
    );
    assert!(gone(rt.handle::<Reservation>(undone).load().await));
    assert_eq!(child.load().await.unwrap().version, 1);

    let done = parent_of_reservations(&root, child.clone(), rt.clone(), kept, undone, false)
        .await
        .unwrap();
    assert_eq!(
        rt.handle::<Reservation>(kept).load().await.unwrap().version,
        1
    );
    assert!(
        gone(rt.handle::<Reservation>(undone).load().await),
        "the failed nested call's insert was undone"
    );
    assert_eq!(
        child.load().await.unwrap().value.lines,
        [5],
        "one nested write"
    );
    assert_eq!(root.load().await.unwrap().value.lines, [7]);
    assert_eq!(done.versions.len(), 3, "root, child, reservation");
}

#[with_conflict_resolution(occ(max_retries = 3, base_delay_ms = 0))]
async fn fill(r: &mut Reservation, qty: u32) -> u32 {
    r.qty += qty;
    r.qty
}

#[with_conflict_resolution(occ(max_retries = 3, base_delay_ms = 0))]
async fn cancel(r: &mut Reservation) -> Result<(), DeleteError> {
    operation::delete(r)
}

#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 3, base_delay_ms = 0))]
async fn create_fill_and_maybe_cancel(
    o: &mut Order,
    rt: Runtime,
    res: EntityId,
    cancel_it: bool,
) -> (u32, bool) {
    let h = rt.insert(Reservation { id: res, qty: 1 }).await.unwrap();
    // A nested call reads the entity created earlier in this attempt and writes it.
    let filled = fill(&h, 2).await.unwrap().value;
    if cancel_it {
        cancel(&h).await.unwrap();
    }
    // After a nested delete, the entity is gone for the rest of the attempt.
    let after = fill(&h, 1).await;
    o.lines.push(filled);
    (
        filled,
        matches!(
            after,
            Err(ConflictError::Store(StoreError::NotFound { .. }))
        ),
    )
}

#[tokio::test]
async fn nested_calls_read_write_and_delete_entities_created_in_the_same_attempt() {
    let rt = Runtime::in_memory();
    let o = order(&rt).await;
    let res = EntityId::new();
    let done = create_fill_and_maybe_cancel(&o, rt.clone(), res, false)
        .await
        .unwrap();
    assert_eq!(done.value, (3, false));
    let r = rt.handle::<Reservation>(res).load().await.unwrap();
    assert_eq!(
        (r.value.qty, r.version),
        (4, 1),
        "created with every nested write, once"
    );

    // Created, written, then deleted in one attempt: nothing is created.
    let res2 = EntityId::new();
    let done = create_fill_and_maybe_cancel(&o, rt.clone(), res2, true)
        .await
        .unwrap();
    assert_eq!(done.value, (3, true));
    assert!(gone(rt.handle::<Reservation>(res2).load().await));
    assert_eq!(
        done.version_of(&EntityKey::new(Reservation::TYPE_NAME, res2)),
        None
    );
    // A nested delete of a stored entity is committed by the root.
    let done = nested_cancel(&o, rt.handle::<Reservation>(res))
        .await
        .unwrap();
    assert_eq!(
        done.version_of(&EntityKey::new(Reservation::TYPE_NAME, res)),
        Some(2),
        "the tombstone"
    );
    assert!(gone(rt.handle::<Reservation>(res).load().await));
    // Every nested call ended with its root's commit (the one on the deleted entity `NotFound`).
    let m = rt.metrics();
    assert_eq!(m.outcome(OutcomeKind::RolledBack), 0);
    assert_eq!(m.outcome(OutcomeKind::StoreError), 1);
}

#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 3, base_delay_ms = 0))]
async fn nested_cancel(o: &mut Order, r: Handle<Reservation>) {
    cancel(&r).await.unwrap();
    o.lines.push(0);
}

#[with_conflict_resolution]
async fn delete_the_wrong_things(
    o: &mut Order,
    #[read] r: &Reservation,
    other: EntityId,
) -> (Result<(), DeleteError>, Result<(), DeleteError>) {
    let _ = o;
    let other = Order {
        id: other,
        lines: Vec::new(),
    };
    (operation::delete(r), operation::delete(&other))
}

#[with_conflict_resolution]
async fn keep_context(o: &mut Order) -> Option<operation::OperationContext> {
    let _ = o;
    operation::current_operation()
}

#[tokio::test]
async fn delete_refuses_what_the_running_call_does_not_write() {
    let rt = Runtime::in_memory();
    let o = order(&rt).await;
    let r = rt
        .insert(Reservation {
            id: EntityId::new(),
            qty: 1,
        })
        .await
        .unwrap();
    let done = delete_the_wrong_things(&o, &r, EntityId::new())
        .await
        .unwrap();
    let (read, unrelated) = done.value;
    assert!(
        matches!(read, Err(DeleteError::NotWritten { ref target, .. }) if target == r.key()),
        "{read:?}"
    );
    assert!(matches!(unrelated, Err(DeleteError::NotWritten { .. })));
    assert_eq!(
        o.load().await.unwrap().version,
        2,
        "the call still wrote its order"
    );
    assert_eq!(r.load().await.unwrap().version, 1);

    let mine = o.load().await.unwrap().value;
    assert!(matches!(
        operation::delete(&mine),
        Err(DeleteError::OutsideCall)
    ));
    assert!(matches!(
        operation::scope()
            .detached()
            .run(async { operation::delete(&mine) })
            .await,
        Err(DeleteError::OutsideCall)
    ));
    // Under a kept context whose body has ended.
    let ctx = keep_context(&o).await.unwrap().value.unwrap();
    let late = operation::scope()
        .parent(ctx.clone())
        .run(async { operation::delete(&mine) })
        .await;
    assert!(
        matches!(late, Err(DeleteError::Ended { op_id }) if op_id == ctx.op_id()),
        "{late:?}"
    );
    assert_eq!(o.load().await.unwrap().version, 3, "nothing deleted");
    // An insert under it is rolled back, not committed on its own.
    let id = EntityId::new();
    let late = operation::scope()
        .parent(ctx)
        .run(rt.insert(Reservation { id, qty: 1 }))
        .await;
    assert!(
        matches!(late, Err(StoreError::RolledBack { .. })),
        "{late:?}"
    );
    assert!(gone(rt.handle::<Reservation>(id).load().await));
}

#[with_conflict_resolution]
async fn insert_twice(
    o: &mut Order,
    rt: Runtime,
    id: EntityId,
    existing: EntityId,
) -> (bool, bool, bool) {
    let _ = o;
    let first = rt.insert(Reservation { id, qty: 1 }).await.is_ok();
    let again = rt.insert(Reservation { id, qty: 2 }).await;
    let stored = rt
        .insert(Reservation {
            id: existing,
            qty: 2,
        })
        .await;
    (
        first,
        matches!(again, Err(StoreError::AlreadyExists { .. })),
        matches!(stored, Err(StoreError::AlreadyExists { .. })),
    )
}

#[with_conflict_resolution]
async fn detached_insert_then_fail(o: &mut Order, rt: Runtime, id: EntityId) -> Result<(), String> {
    let _ = o;
    operation::scope()
        .detached()
        .run(rt.insert(Reservation { id, qty: 9 }))
        .await
        .map_err(|e| e.to_string())?;
    Err("fails after its detached insert".into())
}

#[tokio::test]
async fn an_entity_is_created_at_most_once_per_attempt_and_detached_inserts_commit_alone() {
    let rt = Runtime::in_memory();
    let o = order(&rt).await;
    let existing = rt
        .insert(Reservation {
            id: EntityId::new(),
            qty: 1,
        })
        .await
        .unwrap();
    let id = EntityId::new();
    let done = insert_twice(&o, rt.clone(), id, existing.entity_id())
        .await
        .unwrap();
    assert_eq!(done.value, (true, true, true));
    let r = rt.handle::<Reservation>(id).load().await.unwrap();
    assert_eq!((r.value.qty, r.version), (1, 1), "the first insert's value");

    let id = EntityId::new();
    detached_insert_then_fail(&o, rt.clone(), id)
        .await
        .unwrap_err();
    let r = rt.handle::<Reservation>(id).load().await.unwrap();
    assert_eq!(
        (r.value.qty, r.version),
        (9, 1),
        "a detached insert commits on its own"
    );
}

#[with_conflict_resolution(occ(max_retries = 3, base_delay_ms = 0))]
async fn close_both(a: &mut Order, b: &mut Order, fail: bool) -> Result<(), String> {
    operation::delete(a).map_err(|e| e.to_string())?;
    b.lines.push(3);
    tokio::task::yield_now().await;
    if fail { Err("no".into()) } else { Ok(()) }
}

#[tokio::test]
async fn a_multi_entity_call_deletes_one_entity_and_writes_the_other_atomically() {
    let rt = Runtime::in_memory();
    let (a, b) = (order(&rt).await, order(&rt).await);
    close_both(&a, &b, true).await.unwrap_err();
    assert_eq!(a.load().await.unwrap().version, 1);
    assert_eq!(b.load().await.unwrap().version, 1);
    let done = close_both(&a, &b, false).await.unwrap();
    assert_eq!(done.version_of(a.key()), Some(2));
    assert_eq!(done.version_of(b.key()), Some(2));
    assert!(gone(a.load().await));
    assert_eq!(b.load().await.unwrap().value.lines, [3]);
    // A cancelled call (its future dropped mid-body) deletes nothing.
    let c = order(&rt).await;
    let mut call = Box::pin(close_both(&c, &b, false));
    assert!(futures_poll_once(call.as_mut()).await.is_none());
    drop(call);
    assert_eq!(
        c.load().await.unwrap().version,
        1,
        "the dropped call deleted nothing"
    );
    assert_eq!(b.load().await.unwrap().version, 2);
    // The tombstone's handle: calls end NotFound, outside deletes conflict, an insert
    // continues the versions.
    assert!(matches!(
        close_both(&a, &b, false).await,
        Err(ConflictError::Store(StoreError::NotFound { .. }))
    ));
    assert!(matches!(
        a.delete(2).await.unwrap(),
        conflict_runtime::store::CommitOutcome::Conflict { actual: None, .. }
    ));
    let back = rt
        .insert(Order {
            id: a.entity_id(),
            lines: vec![1],
        })
        .await
        .unwrap();
    assert_eq!(back.load().await.unwrap().version, 3);
    assert_eq!(
        a.load().await.unwrap().value.lines,
        [1],
        "the old handle sees it again"
    );
}

/// Polls `fut` once (it yields in its body, so it is pending there).
async fn futures_poll_once<F: std::future::Future + Unpin>(fut: F) -> Option<F::Output> {
    let mut fut = fut;
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(
            match std::future::Future::poll(std::pin::Pin::new(&mut fut), cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            },
        )
    })
    .await
}
