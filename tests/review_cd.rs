//! Adversarial review of "entities are created and deleted inside calls" (issue #10, create &
//! delete). Tests named `fixed_*` reproduce defects the review found in the first version (they
//! failed on it, and pass since the fixes); the `holds_*` tests are attacks it withstood.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use conflict_runtime::entity::EntityKey;
use conflict_runtime::error::DeleteError;
use conflict_runtime::operation::{self, OutcomeKind};
use conflict_runtime::prelude::*;
use conflict_runtime::store::{
    Commit, CommitOutcome, Delete, EntityCodec, EntityStore, MemoryStore, StoreError, StoredValue,
    Write,
};

// ---------------------------------------------------------------------------------------------
// Entities and helpers.

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "review_cd::Acct")]
struct Acct {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "review_cd::Note")]
struct Note {
    #[entity(id)]
    id: EntityId,
    text: u64,
}

const LIMIT: Duration = Duration::from_secs(20);

async fn acct(rt: &Runtime, balance: i64) -> Handle<Acct> {
    rt.insert(Acct {
        id: EntityId::new(),
        balance,
    })
    .await
    .unwrap()
}

fn note_key(id: EntityId) -> EntityKey {
    EntityKey::new(Note::TYPE_NAME, id)
}

fn acct_key(id: EntityId) -> EntityKey {
    EntityKey::new(Acct::TYPE_NAME, id)
}

fn gone<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::NotFound { .. }))
}

async fn state(h: &Handle<Acct>) -> Option<(i64, u64)> {
    match h.load().await {
        Ok(v) => Some((v.value.balance, v.version)),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => panic!("load: {e}"),
    }
}

/// Every submitted call ended with exactly one outcome, and none is in flight.
fn books_balance(rt: &Runtime) {
    let m = rt.metrics();
    let sum: u64 = OutcomeKind::ALL.iter().map(|k| m.outcome(*k)).sum();
    assert_eq!(m.submitted, sum, "submitted = Σ outcomes: {m:?}");
    assert_eq!(m.in_flight, 0, "nothing in flight: {m:?}");
}

fn commit(writes: Vec<Write>, deletes: Vec<Delete>) -> Commit {
    Commit {
        op_id: OpId::from_parts(fastrand::u64(..), fastrand::u64(..)),
        op_type: "review_cd",
        priority: OperationPriority::NORMAL,
        attempt: 1,
        writes,
        deletes,
        reads: Vec::new(),
    }
}

fn acct_value(id: EntityId, balance: i64) -> StoredValue {
    Arc::new(Acct { id, balance })
}

async fn store_version(store: &dyn EntityStore, key: &EntityKey) -> Option<u64> {
    store
        .load(key, EntityCodec::of::<Acct>())
        .await
        .unwrap()
        .map(|s| s.version)
}

// ---------------------------------------------------------------------------------------------
// Store level: deletes that expect version 0.

/// A delete expecting version 0 names no live entity (versions start at 1): on a tombstone it
/// must be a conflict with no version found, as it is on PostgreSQL (`AND value IS NOT NULL`)
/// and as a delete at any other version is. The memory store's `Cell::admits` lets
/// `(None, 0)` through for deletes as well as creates, so the "delete" of a deleted entity
/// commits and bumps the tombstone's version.
#[tokio::test]
async fn fixed_memory_delete_expecting_zero_on_a_tombstone_conflicts() {
    let store = MemoryStore::new();
    let id = EntityId::new();
    let key = acct_key(id);
    store.insert(key.clone(), acct_value(id, 1)).await.unwrap();
    let done = store
        .commit(commit(
            vec![],
            vec![Delete {
                key: key.clone(),
                expected_version: 1,
            }],
        ))
        .await
        .unwrap();
    assert!(matches!(done, CommitOutcome::Committed { .. }), "{done:?}");
    let again = store
        .commit(commit(
            vec![],
            vec![Delete {
                key: key.clone(),
                expected_version: 0,
            }],
        ))
        .await
        .unwrap();
    let reinserted = store.insert(key.clone(), acct_value(id, 2)).await.unwrap();
    assert!(
        matches!(again, CommitOutcome::Conflict { actual: None, .. }),
        "deleting a deleted entity must conflict (no entity), got {again:?}"
    );
    assert_eq!(
        reinserted.version, 3,
        "insert, tombstone 2, then 3: the refused delete bumped nothing"
    );
}

/// The same through the public API: `Handle::delete(0)` of a deleted entity.
#[tokio::test]
async fn fixed_handle_delete_zero_of_a_deleted_entity_conflicts() {
    let rt = Runtime::in_memory();
    let a = acct(&rt, 5).await;
    assert!(matches!(
        a.delete(1).await.unwrap(),
        CommitOutcome::Committed { .. }
    ));
    let twice = a.delete(0).await.unwrap();
    assert!(
        matches!(twice, CommitOutcome::Conflict { actual: None, .. }),
        "a second delete of a deleted entity must conflict, got {twice:?}"
    );
}

/// A delete expecting 0 of a key never seen, and of a live entity, conflict (no slot, or a
/// live version): those paths hold.
#[tokio::test]
async fn holds_delete_expecting_zero_of_a_missing_or_live_entity_conflicts() {
    let rt = Runtime::in_memory();
    let never = rt.handle::<Acct>(EntityId::new());
    assert!(matches!(
        never.delete(0).await.unwrap(),
        CommitOutcome::Conflict { actual: None, .. }
    ));
    let live = acct(&rt, 1).await;
    assert!(matches!(
        live.delete(0).await.unwrap(),
        CommitOutcome::Conflict {
            actual: Some(1),
            ..
        }
    ));
    assert_eq!(state(&live).await, Some((1, 1)));
    assert!(gone(never.load().await));
}

// ---------------------------------------------------------------------------------------------
// Memory store bookkeeping: `len`, `keys_kept`.

/// `len` counts live entities only; `is_empty` follows it; tombstones stay in `keys_kept`.
#[tokio::test]
async fn holds_memory_len_counts_live_entities_only() {
    let store = Arc::new(MemoryStore::new());
    let rt = Runtime::builder()
        .shared_store(store.clone())
        .build()
        .unwrap();
    let (a, b) = (acct(&rt, 1).await, acct(&rt, 2).await);
    assert_eq!((store.len(), store.keys_kept()), (2, 2));
    assert!(matches!(
        a.delete(1).await.unwrap(),
        CommitOutcome::Committed { .. }
    ));
    assert_eq!((store.len(), store.keys_kept()), (1, 2));
    assert!(!store.is_empty());
    assert!(matches!(
        b.delete(1).await.unwrap(),
        CommitOutcome::Committed { .. }
    ));
    assert!(store.is_empty(), "only tombstones left");
    assert_eq!(store.keys_kept(), 2);
    // Re-created over its tombstone: the same key, no new one.
    rt.insert(Acct {
        id: a.entity_id(),
        balance: 3,
    })
    .await
    .unwrap();
    assert_eq!((store.len(), store.keys_kept()), (1, 2));
    assert_eq!(state(&a).await, Some((3, 3)));
}

static FRESH_RUNS: AtomicU64 = AtomicU64::new(0);

/// Bumps `a` and creates a note under a fresh id on every attempt; on its first `conflicts`
/// attempts an outside writer moves `a` on, so the attempt conflicts and runs again.
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 20, base_delay_ms = 0))]
async fn bump_with_fresh_note(
    a: &mut Acct,
    rt: Runtime,
    me: Handle<Acct>,
    conflicts: Arc<AtomicU32>,
) -> Result<EntityId, StoreError> {
    FRESH_RUNS.fetch_add(1, Ordering::SeqCst);
    let id = EntityId::new();
    rt.insert(Note { id, text: 1 }).await?;
    if conflicts
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        operation::scope()
            .detached()
            .run(bump(&me))
            .await
            .expect("a detached bump commits");
    }
    a.balance += 1;
    Ok(id)
}

#[with_conflict_resolution(occ(max_retries = 50, base_delay_ms = 0))]
async fn bump(a: &mut Acct) -> i64 {
    a.balance += 1;
    a.balance
}

/// A create that does not commit leaves nothing behind: a body that creates a note under a
/// fresh id and conflicts 10 times creates exactly one note, and the store keeps exactly the
/// keys of its live entities (nothing was deleted, so there is no tombstone). The memory
/// store's `commit_many` adds an empty slot for every create *before* it checks the commit,
/// so each conflicting attempt leaks a key forever (`keys_kept` grows with every conflict:
/// unbounded memory under contention, for entities that never existed).
#[tokio::test]
async fn fixed_memory_failed_creates_leave_no_keys() {
    let store = Arc::new(MemoryStore::new());
    let rt = Runtime::builder()
        .shared_store(store.clone())
        .build()
        .unwrap();
    let a = acct(&rt, 0).await;
    let done = bump_with_fresh_note(&a, rt.clone(), a.clone(), Arc::new(AtomicU32::new(10)))
        .await
        .unwrap();
    assert_eq!(done.attempts, 11);
    assert_eq!(
        rt.handle::<Note>(done.value).load().await.unwrap().version,
        1
    );
    assert_eq!(
        state(&a).await,
        Some((11, 12)),
        "10 outside bumps, then ours"
    );
    assert_eq!(store.len(), 2, "the account and one note");
    assert_eq!(
        store.keys_kept(),
        2,
        "no tombstone was made: only live keys are kept"
    );
    books_balance(&rt);
}

// ---------------------------------------------------------------------------------------------
// Concurrent creates of one key through calls.

/// Creates note `id` (text `tag`) and moves `a` on; on the first attempt it waits (bounded)
/// until `arrived` says both callers have inserted, so both loaded "no such note".
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 5, base_delay_ms = 0))]
async fn claim(
    a: &mut Acct,
    rt: Runtime,
    id: EntityId,
    tag: u64,
    arrived: Arc<AtomicU32>,
    first: Arc<AtomicBool>,
) -> Result<u64, StoreError> {
    rt.insert(Note { id, text: tag }).await?;
    if first.swap(false, Ordering::SeqCst) {
        arrived.fetch_add(1, Ordering::SeqCst);
        for _ in 0..2000 {
            if arrived.load(Ordering::SeqCst) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    a.balance += i64::try_from(tag).unwrap();
    Ok(tag)
}

/// Two roots (on different accounts, so they never wait for each other) insert one note id in
/// their bodies, both after seeing it absent: exactly one commits; the other runs again, gets
/// `AlreadyExists` and ends with it, its account unchanged; the note holds the winner's value
/// at version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_two_roots_creating_one_key_let_exactly_one_commit() {
    for _ in 0..20 {
        let rt = Runtime::in_memory();
        let (a, b) = (acct(&rt, 0).await, acct(&rt, 0).await);
        let id = EntityId::new();
        let arrived = Arc::new(AtomicU32::new(0));
        let spawn = |h: Handle<Acct>, tag: u64| {
            let (rt, arrived) = (rt.clone(), arrived.clone());
            tokio::spawn(async move {
                let first = Arc::new(AtomicBool::new(true));
                tokio::time::timeout(LIMIT, claim(&h, rt, id, tag, arrived, first))
                    .await
                    .expect("no hang")
            })
        };
        let (ra, rb) = (spawn(a.clone(), 1), spawn(b.clone(), 2));
        let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
        let winner = match (&ra, &rb) {
            (Ok(w), Err(ConflictError::Body(StoreError::AlreadyExists { .. }))) => {
                assert_eq!(w.attempts, 1);
                w.value
            }
            (Err(ConflictError::Body(StoreError::AlreadyExists { .. })), Ok(w)) => {
                assert_eq!(w.attempts, 1);
                w.value
            }
            other => panic!("exactly one create must commit: {other:?}"),
        };
        let n = rt.handle::<Note>(id).load().await.unwrap();
        assert_eq!((n.value.text, n.version), (winner, 1));
        assert!(
            rt.metrics().occ_conflicts >= 1,
            "the loser's create conflicted"
        );
        let (sa, sb) = (state(&a).await.unwrap(), state(&b).await.unwrap());
        if winner == 1 {
            assert_eq!((sa, sb), ((1, 2), (0, 1)), "only the winner's write");
        } else {
            assert_eq!((sa, sb), ((0, 1), (2, 2)), "only the winner's write");
        }
        books_balance(&rt);
    }
}

// ---------------------------------------------------------------------------------------------
// Deletes racing with readers and stale callers.

/// Copies what it reads of `src` into `log`; waits (bounded) on its first attempt until `go`
/// is set, so that `src` can be deleted (or replaced) while it holds the old copy.
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 5, base_delay_ms = 0))]
async fn copy_from(
    log: &mut Acct,
    #[read] src: &Acct,
    go: Arc<AtomicBool>,
    waited: Arc<AtomicBool>,
) -> i64 {
    if !waited.swap(true, Ordering::SeqCst) {
        for _ in 0..2000 {
            if go.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    log.balance = src.balance;
    src.balance
}

/// Creates a note from what it reads of `src` (a reader that only creates).
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 5, base_delay_ms = 0))]
async fn note_from(
    #[read] src: &Acct,
    rt: Runtime,
    id: EntityId,
    go: Arc<AtomicBool>,
    waited: Arc<AtomicBool>,
) -> Result<i64, StoreError> {
    rt.insert(Note {
        id,
        text: u64::try_from(src.balance).unwrap(),
    })
    .await?;
    if !waited.swap(true, Ordering::SeqCst) {
        for _ in 0..2000 {
            if go.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(src.balance)
}

/// No reader commits over a deleted entity: a call that read `src` (as `#[read]`) and writes
/// `log` (or only creates a note) while `src` is deleted cannot commit what it computed from
/// the deleted value; it runs again and ends `NotFound`, writing and creating nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_a_reader_never_commits_over_a_deleted_entity() {
    let rt = Runtime::in_memory();
    let (log, src) = (acct(&rt, 0).await, acct(&rt, 7).await);
    let go = Arc::new(AtomicBool::new(false));
    let call = {
        let (log, src, go) = (log.clone(), src.clone(), go.clone());
        tokio::spawn(async move {
            let waited = Arc::new(AtomicBool::new(false));
            tokio::time::timeout(LIMIT, copy_from(&log, &src, go, waited))
                .await
                .expect("no hang")
        })
    };
    let note = EntityId::new();
    let creator = {
        let (src, go, rt) = (src.clone(), go.clone(), rt.clone());
        tokio::spawn(async move {
            let waited = Arc::new(AtomicBool::new(false));
            tokio::time::timeout(LIMIT, note_from(&src, rt, note, go, waited))
                .await
                .expect("no hang")
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(matches!(
        src.delete(1).await.unwrap(),
        CommitOutcome::Committed { .. }
    ));
    go.store(true, Ordering::SeqCst);
    let copied = call.await.unwrap();
    assert!(
        matches!(copied, Err(ConflictError::Store(StoreError::NotFound { ref key })) if key == src.key()),
        "{copied:?}"
    );
    let created = creator.await.unwrap();
    assert!(
        matches!(
            created,
            Err(ConflictError::Store(StoreError::NotFound { .. }))
        ),
        "{created:?}"
    );
    assert_eq!(state(&log).await, Some((0, 1)), "nothing written");
    assert!(
        gone(rt.handle::<Note>(note).load().await),
        "nothing created"
    );
    books_balance(&rt);
}

/// Delete, re-insert, then a stale caller: a call that read `src` before it was deleted and
/// created again (same id, new value) cannot commit the old value (no ABA: the versions
/// continue); it runs again and copies the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_delete_then_reinsert_then_a_stale_reader() {
    let rt = Runtime::in_memory();
    let (log, src) = (acct(&rt, 0).await, acct(&rt, 7).await);
    let go = Arc::new(AtomicBool::new(false));
    let call = {
        let (log, src, go) = (log.clone(), src.clone(), go.clone());
        tokio::spawn(async move {
            let waited = Arc::new(AtomicBool::new(false));
            tokio::time::timeout(LIMIT, copy_from(&log, &src, go, waited))
                .await
                .expect("no hang")
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(matches!(
        src.delete(1).await.unwrap(),
        CommitOutcome::Committed { .. }
    ));
    rt.insert(Acct {
        id: src.entity_id(),
        balance: 40,
    })
    .await
    .unwrap();
    go.store(true, Ordering::SeqCst);
    let done = call.await.unwrap().unwrap();
    assert_eq!(
        (done.value, done.attempts),
        (40, 2),
        "ran again on the new entity"
    );
    assert_eq!(state(&log).await, Some((40, 2)));
    assert_eq!(state(&src).await, Some((40, 3)));
    books_balance(&rt);
}

/// Adds 1 to `a` after a bounded wait on its first attempt (a writer holding an old copy).
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 5, base_delay_ms = 0))]
async fn slow_add(a: &mut Acct, go: Arc<AtomicBool>, waited: Arc<AtomicBool>) -> i64 {
    if !waited.swap(true, Ordering::SeqCst) {
        for _ in 0..2000 {
            if go.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    a.balance += 1;
    a.balance
}

/// No write resurrects a deleted entity: a writer that loaded it before the delete, and one
/// that loaded it before a delete and re-create, both end as if serial (NotFound; or the
/// increment applied to the new entity), never writing the old value back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_a_stale_writer_never_resurrects_a_deleted_entity() {
    let rt = Runtime::in_memory();
    let a = acct(&rt, 10).await;
    let go = Arc::new(AtomicBool::new(false));
    let spawn_add = |a: &Handle<Acct>| {
        let (a, go) = (a.clone(), go.clone());
        tokio::spawn(async move {
            let waited = Arc::new(AtomicBool::new(false));
            tokio::time::timeout(LIMIT, slow_add(&a, go, waited))
                .await
                .expect("no hang")
        })
    };
    let writer = spawn_add(&a);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(matches!(
        a.delete(1).await.unwrap(),
        CommitOutcome::Committed { .. }
    ));
    go.store(true, Ordering::SeqCst);
    assert!(matches!(
        writer.await.unwrap(),
        Err(ConflictError::Store(StoreError::NotFound { .. }))
    ));
    assert!(gone(a.load().await), "not resurrected");

    let b = acct(&rt, 10).await;
    go.store(false, Ordering::SeqCst);
    let writer = spawn_add(&b);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(matches!(
        b.delete(1).await.unwrap(),
        CommitOutcome::Committed { .. }
    ));
    rt.insert(Acct {
        id: b.entity_id(),
        balance: 100,
    })
    .await
    .unwrap();
    go.store(true, Ordering::SeqCst);
    let done = writer.await.unwrap().unwrap();
    assert_eq!((done.value, done.version, done.attempts), (101, 4, 2));
    assert_eq!(state(&b).await, Some((101, 4)));
    books_balance(&rt);
}

// ---------------------------------------------------------------------------------------------
// Inserts in nested calls at several depths, with failures, panics and cancellation.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Ok,
    Fail,
    Panic,
    Hang,
}

/// Bumps `a`, creates note `id`, then ends as `end` says.
#[with_conflict_resolution(occ(max_retries = 3, base_delay_ms = 0))]
async fn leaf(a: &mut Acct, rt: Runtime, id: EntityId, end: End) -> Result<(), String> {
    a.balance += 1;
    rt.insert(Note { id, text: 3 })
        .await
        .map_err(|e| e.to_string())?;
    match end {
        End::Ok => Ok(()),
        End::Fail => Err("leaf failed".into()),
        End::Panic => panic!("leaf panics after its insert"),
        End::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    }
}

/// Bumps `a`, creates note `id`, calls `leaf` on `child` (which must commit), then ends as
/// `end` says.
#[with_conflict_resolution(occ(max_retries = 3, base_delay_ms = 0))]
async fn middle(
    a: &mut Acct,
    child: Handle<Acct>,
    rt: Runtime,
    id: EntityId,
    leaf_id: EntityId,
    end: End,
) -> Result<(), String> {
    a.balance += 10;
    rt.insert(Note { id, text: 2 })
        .await
        .map_err(|e| e.to_string())?;
    leaf(&child, rt.clone(), leaf_id, End::Ok)
        .await
        .map_err(|e| e.to_string())?;
    if end == End::Fail {
        return Err("middle failed".into());
    }
    Ok(())
}

/// Notes created (or not) by [`tree`].
#[derive(Debug, Clone, Copy)]
struct TreeIds {
    kept_top: EntityId,
    kept_mid: EntityId,
    kept_leaf: EntityId,
    failed_mid: EntityId,
    failed_leaf: EntityId,
    panicked: EntityId,
    dropped: EntityId,
    failed_direct: EntityId,
}

impl TreeIds {
    fn new() -> Self {
        Self {
            kept_top: EntityId::new(),
            kept_mid: EntityId::new(),
            kept_leaf: EntityId::new(),
            failed_mid: EntityId::new(),
            failed_leaf: EntityId::new(),
            panicked: EntityId::new(),
            dropped: EntityId::new(),
            failed_direct: EntityId::new(),
        }
    }
}

/// A root that creates a note itself and through nested calls at depths 1 to 3; some of them
/// fail, panic or are dropped after creating theirs. Returns what each nested call returned.
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 3, base_delay_ms = 0))]
async fn tree(root: &mut Acct, accts: Vec<Handle<Acct>>, rt: Runtime, ids: TreeIds) -> Vec<String> {
    let mut seen = Vec::new();
    rt.insert(Note {
        id: ids.kept_top,
        text: 1,
    })
    .await
    .unwrap();
    // Depth 2 and 3, committed.
    let r = middle(
        &accts[0],
        accts[1].clone(),
        rt.clone(),
        ids.kept_mid,
        ids.kept_leaf,
        End::Ok,
    )
    .await;
    seen.push(format!("{:?}", r.map(|c| c.value)));
    // Depth 2 fails after its depth-3 call parked: both inserts undone.
    let r = middle(
        &accts[2],
        accts[3].clone(),
        rt.clone(),
        ids.failed_mid,
        ids.failed_leaf,
        End::Fail,
    )
    .await;
    seen.push(format!("{:?}", r.map(|c| c.value)));
    // Depth 2 panics after its insert.
    let r = leaf(&accts[4], rt.clone(), ids.panicked, End::Panic).await;
    seen.push(format!("{:?}", r.map(|c| c.value)));
    // Depth 2 dropped after its insert (its body is pending).
    let hang = leaf(&accts[5], rt.clone(), ids.dropped, End::Hang);
    tokio::select! {
        biased;
        _ = hang => seen.push("the hanging call ended".into()),
        () = tokio::task::yield_now() => seen.push("dropped".into()),
    }
    // Depth 2 fails after its insert.
    let r = leaf(&accts[6], rt.clone(), ids.failed_direct, End::Fail).await;
    seen.push(format!("{:?}", r.map(|c| c.value)));
    root.balance += 100;
    seen
}

/// Each nested insert follows its own call's outcome and those above it: the root's own
/// insert, and those of the committed chain (depths 2 and 3), are created with the root's
/// commit; those of a call that failed (and of the call below it that had parked), panicked or
/// was dropped are not; the nested writes follow the same rule; every call ends once.
#[tokio::test]
async fn holds_nested_inserts_follow_their_calls_at_every_depth() {
    let rt = Runtime::in_memory();
    let root = acct(&rt, 0).await;
    let mut accts = Vec::new();
    for _ in 0..7 {
        accts.push(acct(&rt, 0).await);
    }
    let ids = TreeIds::new();
    let done = tokio::time::timeout(LIMIT, tree(&root, accts.clone(), rt.clone(), ids))
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(done.value[0], "Ok(())");
    assert!(done.value[1].contains("middle failed"), "{:?}", done.value);
    assert_eq!(done.value[3], "dropped");
    assert!(done.value[4].contains("leaf failed"), "{:?}", done.value);
    for (id, what) in [
        (ids.kept_top, "root's"),
        (ids.kept_mid, "depth 2"),
        (ids.kept_leaf, "depth 3"),
    ] {
        let n = rt.handle::<Note>(id).load().await;
        assert_eq!(n.map(|n| n.version).ok(), Some(1), "{what} note created");
        assert_eq!(
            done.version_of(&note_key(id)),
            Some(1),
            "{what} in versions"
        );
    }
    for (id, what) in [
        (ids.failed_mid, "failed middle"),
        (ids.failed_leaf, "leaf under the failed middle"),
        (ids.panicked, "panicked"),
        (ids.dropped, "dropped"),
        (ids.failed_direct, "failed"),
    ] {
        assert!(
            gone(rt.handle::<Note>(id).load().await),
            "{what}: not created"
        );
        assert_eq!(done.version_of(&note_key(id)), None, "{what}");
    }
    assert_eq!(state(&root).await, Some((100, 2)));
    assert_eq!(state(&accts[0]).await, Some((10, 2)));
    assert_eq!(state(&accts[1]).await, Some((1, 2)));
    for (i, a) in accts.iter().enumerate().skip(2) {
        assert_eq!(state(a).await, Some((0, 1)), "account {i} unchanged");
    }
    assert_eq!(done.versions.len(), 6, "root, two accounts, three notes");
    books_balance(&rt);
    let m = rt.metrics();
    assert_eq!(m.submitted, 8, "the root and seven nested calls");
}

// ---------------------------------------------------------------------------------------------
// Nested deletes, siblings, and insert/delete/insert in one attempt.

#[with_conflict_resolution(occ(max_retries = 3, base_delay_ms = 0))]
async fn drop_acct(a: &mut Acct) -> Result<i64, DeleteError> {
    tokio::task::yield_now().await;
    operation::delete(a)?;
    Ok(a.balance)
}

#[with_conflict_resolution(occ(max_retries = 3, base_delay_ms = 0))]
async fn add_after_yield(a: &mut Acct, n: i64) -> i64 {
    tokio::task::yield_now().await;
    a.balance += n;
    a.balance
}

#[with_conflict_resolution(occ(max_retries = 3, base_delay_ms = 0))]
async fn drop_note(n: &mut Note) -> Result<u64, DeleteError> {
    operation::delete(n)?;
    Ok(n.text)
}

/// How a nested call ended, as its caller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Ok(i64),
    RolledBack,
    NotFound,
    Other(String),
}

fn seen<T: Into<i64>, E: std::fmt::Display>(r: Result<Committed<T>, ConflictError<E>>) -> Seen {
    match r {
        Ok(c) => Seen::Ok(c.value.into()),
        Err(ConflictError::RolledBack { .. }) => Seen::RolledBack,
        Err(ConflictError::Store(StoreError::NotFound { .. })) => Seen::NotFound,
        Err(e) => Seen::Other(e.to_string()),
    }
}

/// Two sibling nested calls run at once on one account: one deletes it, one adds to it.
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 3, base_delay_ms = 0))]
async fn race_siblings(root: &mut Acct, x: Handle<Acct>) -> (Seen, Seen, Seen) {
    let (del, add) = tokio::join!(drop_acct(&x), add_after_yield(&x, 5));
    // A later sibling on the entity: as the transaction has it now.
    let after = add_after_yield(&x, 1).await;
    root.balance += 1;
    (seen(del), seen(add), seen(after))
}

/// Concurrent siblings, one deleting and one writing the same entity: at most one of them
/// keeps its change (the other is rolled back, it read a state the first one changed), and the
/// committed state is the one that was kept (deleted, or written); a later sibling sees that
/// state. Never both a delete and a write of one key in one commit, never a lost update.
#[tokio::test]
async fn holds_sibling_delete_and_write_of_one_entity() {
    let rt = Runtime::in_memory();
    let (root, x) = (acct(&rt, 0).await, acct(&rt, 3).await);
    let done = tokio::time::timeout(LIMIT, race_siblings(&root, x.clone()))
        .await
        .expect("no hang")
        .unwrap();
    let (del, add, after) = done.value.clone();
    let rolled = |r: bool| u32::from(r);
    let del_rolled = del == Seen::RolledBack;
    let add_rolled = add == Seen::RolledBack;
    assert_eq!(
        rolled(del_rolled) + rolled(add_rolled),
        1,
        "exactly one sibling is rolled back: {del:?} / {add:?}"
    );
    if add_rolled {
        assert_eq!(del, Seen::Ok(3));
        assert_eq!(after, Seen::NotFound);
        assert!(gone(x.load().await));
        assert_eq!(done.version_of(x.key()), Some(2), "the tombstone");
    } else {
        assert_eq!(add, Seen::Ok(8));
        assert_eq!(after, Seen::Ok(9));
        assert_eq!(state(&x).await, Some((9, 2)));
    }
    assert_eq!(state(&root).await, Some((1, 2)));
    books_balance(&rt);
}

/// Creates a note, deletes it through a nested call, creates it again with another value, and
/// deletes a stored note and creates it again, all in one attempt.
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 3, base_delay_ms = 0))]
async fn churn(
    root: &mut Acct,
    rt: Runtime,
    fresh: EntityId,
    stored: EntityId,
) -> Result<(Option<u64>, Option<u64>), String> {
    let h = rt
        .insert(Note { id: fresh, text: 1 })
        .await
        .map_err(|e| e.to_string())?;
    let first = drop_note(&h).await.map_err(|e| e.to_string())?;
    let v_fresh = first.versions.get(&note_key(fresh));
    rt.insert(Note { id: fresh, text: 2 })
        .await
        .map_err(|e| e.to_string())?;
    let s = rt.handle::<Note>(stored);
    let second = drop_note(&s).await.map_err(|e| e.to_string())?;
    let v_stored = second.versions.get(&note_key(stored));
    rt.insert(Note {
        id: stored,
        text: 20,
    })
    .await
    .map_err(|e| e.to_string())?;
    root.balance += 1;
    Ok((v_fresh, v_stored))
}

/// Insert, delete, insert again in one attempt (of a new key and of a stored one): the commit
/// leaves each note with the last value, created once; nothing is deleted that is live at the
/// end; the nested delete of the stored note reports its tombstone (2).
#[tokio::test]
async fn holds_insert_delete_insert_in_one_attempt() {
    let rt = Runtime::in_memory();
    let root = acct(&rt, 0).await;
    let stored = EntityId::new();
    rt.insert(Note {
        id: stored,
        text: 10,
    })
    .await
    .unwrap();
    let fresh = EntityId::new();
    let done = churn(&root, rt.clone(), fresh, stored).await.unwrap();
    let (_, v_stored) = done.value;
    assert_eq!(v_stored, Some(2), "the nested delete's tombstone");
    let f = rt.handle::<Note>(fresh).load().await.unwrap();
    assert_eq!(
        (f.value.text, f.version),
        (2, 1),
        "created once, last value"
    );
    let s = rt.handle::<Note>(stored).load().await.unwrap();
    assert_eq!(s.value.text, 20, "the stored note holds the new value");
    assert!(s.version >= 2, "its versions went on: {}", s.version);
    assert_eq!(done.version_of(&note_key(fresh)), Some(1));
    assert_eq!(done.version_of(&note_key(stored)), Some(s.version));
    books_balance(&rt);
}

/// A nested call that deletes an entity created earlier in the same attempt reports a version
/// for it in its `Committed` (it writes `read_version + 1` = 1 for every deleted parameter),
/// though the entity is never stored at any version and the root's `Committed` (rightly) has
/// no version for it. A deleted entity that was never stored has no version.
#[tokio::test]
async fn fixed_nested_delete_of_an_entity_created_in_the_attempt_reports_no_version() {
    let rt = Runtime::in_memory();
    let root = acct(&rt, 0).await;
    let stored = EntityId::new();
    rt.insert(Note {
        id: stored,
        text: 10,
    })
    .await
    .unwrap();
    let fresh = EntityId::new();
    let done = churn(&root, rt.clone(), fresh, stored).await.unwrap();
    let (v_fresh, _) = done.value;
    assert_eq!(
        v_fresh, None,
        "the nested call deleted an entity that never existed: no version"
    );
}

// ---------------------------------------------------------------------------------------------
// Multi-entity deletes, failures after a delete, deletes in one attempt only.

#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 3, base_delay_ms = 0))]
async fn close_three(
    a: &mut Acct,
    b: &mut Acct,
    c: &mut Acct,
    #[read] r: &Acct,
    end: End,
) -> Result<i64, String> {
    operation::delete(a).map_err(|e| e.to_string())?;
    operation::delete(a).map_err(|e| e.to_string())?; // twice: still one delete
    operation::delete(c).map_err(|e| e.to_string())?;
    b.balance += a.balance + c.balance + r.balance;
    match end {
        End::Ok => Ok(b.balance),
        End::Fail => Err("refused".into()),
        End::Panic => panic!("panics after deleting"),
        End::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(0)
        }
    }
}

/// A multi-entity call deleting two of its parameters (one of them twice) and writing the
/// third: a body error, a panic, or a dropped call deletes nothing and writes nothing; a
/// committed one deletes both and writes the third in one commit, and its `Committed.versions`
/// has both tombstones and the write (and not the `#[read]` entity).
#[tokio::test]
async fn holds_a_multi_entity_call_deleting_several_params() {
    let rt = Runtime::in_memory();
    let (a, b, c, r) = (
        acct(&rt, 1).await,
        acct(&rt, 10).await,
        acct(&rt, 100).await,
        acct(&rt, 1000).await,
    );
    let unchanged = async || {
        assert_eq!(state(&a).await, Some((1, 1)));
        assert_eq!(state(&b).await, Some((10, 1)));
        assert_eq!(state(&c).await, Some((100, 1)));
    };
    let e = close_three(&a, &b, &c, &r, End::Fail).await.unwrap_err();
    assert!(matches!(e, ConflictError::Body(_)), "{e}");
    unchanged().await;
    let e = close_three(&a, &b, &c, &r, End::Panic).await.unwrap_err();
    assert!(!matches!(e, ConflictError::Body(_)), "a panic: {e}");
    unchanged().await;
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        close_three(&a, &b, &c, &r, End::Hang),
    )
    .await;
    assert!(dropped.is_err(), "cut short");
    unchanged().await;
    let done = close_three(&a, &b, &c, &r, End::Ok).await.unwrap();
    assert_eq!(done.value, 1111);
    assert_eq!(done.version_of(a.key()), Some(2));
    assert_eq!(done.version_of(b.key()), Some(2));
    assert_eq!(done.version_of(c.key()), Some(2));
    assert_eq!(done.version_of(r.key()), None, "a read has no new version");
    assert_eq!(done.versions.len(), 3);
    assert!(gone(a.load().await) && gone(c.load().await));
    assert_eq!(state(&b).await, Some((1111, 2)));
    assert_eq!(state(&r).await, Some((1000, 1)));
    books_balance(&rt);
    let m = rt.metrics();
    assert_eq!(m.outcome(OutcomeKind::Committed), 1, "{m:?}");
}

/// Deletes its account on the first attempt only; an outside writer then moves it on, so the
/// attempt conflicts; the second attempt writes instead.
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 3, base_delay_ms = 0))]
async fn delete_first_time(a: &mut Acct, me: Handle<Acct>, first: Arc<AtomicBool>) -> i64 {
    if first.swap(false, Ordering::SeqCst) {
        operation::delete(a).unwrap();
        operation::scope()
            .detached()
            .run(bump(&me))
            .await
            .expect("a detached bump commits");
    } else {
        a.balance += 100;
    }
    a.balance
}

/// A delete asked for in an attempt that does not commit does not carry over to the next
/// attempt: the second attempt's write is what commits, and the entity stays.
#[tokio::test]
async fn holds_a_delete_of_an_attempt_that_conflicts_is_forgotten() {
    let rt = Runtime::in_memory();
    let a = acct(&rt, 0).await;
    let done = delete_first_time(&a, a.clone(), Arc::new(AtomicBool::new(true)))
        .await
        .unwrap();
    assert_eq!((done.value, done.attempts, done.version), (101, 2, 3));
    assert_eq!(state(&a).await, Some((101, 3)));
    books_balance(&rt);
}

/// A single-entity root that deletes its entity and is refused (its body fails after the
/// delete, or it panics) deletes nothing; one that commits reports the tombstone's version.
#[with_conflict_resolution(occ(max_retries = 3, base_delay_ms = 0))]
async fn close_one(a: &mut Acct, end: End) -> Result<i64, String> {
    operation::delete(a).map_err(|e| e.to_string())?;
    match end {
        End::Ok => Ok(a.balance),
        End::Fail => Err("no".into()),
        End::Panic => panic!("panics after deleting"),
        End::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(0)
        }
    }
}

#[tokio::test]
async fn holds_a_single_entity_delete_follows_the_outcome() {
    let rt = Runtime::in_memory();
    let a = acct(&rt, 4).await;
    assert!(close_one(&a, End::Fail).await.is_err());
    assert!(close_one(&a, End::Panic).await.is_err());
    assert!(
        tokio::time::timeout(Duration::from_millis(50), close_one(&a, End::Hang))
            .await
            .is_err()
    );
    assert_eq!(state(&a).await, Some((4, 1)));
    let done = close_one(&a, End::Ok).await.unwrap();
    assert_eq!((done.value, done.version), (4, 2));
    assert_eq!(done.versions.len(), 1);
    assert!(gone(a.load().await));
    // Calls on the deleted entity end NotFound without running.
    assert!(matches!(
        close_one(&a, End::Panic).await,
        Err(ConflictError::Store(StoreError::NotFound { .. }))
    ));
    books_balance(&rt);
}

// ---------------------------------------------------------------------------------------------
// Staged calls waiting on an entity that is deleted.

#[with_conflict_resolution(
    pre_ecs(on_lose = "requeue", staging_timeout_ms = 0),
    occ(max_retries = 50, base_delay_ms = 0, max_delay_ms = 1)
)]
async fn staged_bump_or_close(a: &mut Acct, close: bool) -> i64 {
    tokio::time::sleep(Duration::from_millis(1)).await;
    if close {
        operation::delete(a).unwrap();
    } else {
        a.balance += 1;
    }
    a.balance
}

/// Many staged calls queued on one entity while one of them deletes it: none hangs; each
/// increment committed before the delete (the delete saw them all) or ended `NotFound`; the
/// staging areas are empty afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_staged_calls_on_a_deleted_entity_end_not_found() {
    let rt = Runtime::in_memory();
    let a = acct(&rt, 0).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(LIMIT, staged_bump_or_close(&a, i == 12))
                .await
                .expect("no hang");
            (i, r)
        }));
    }
    let (mut ok, mut missed, mut closed) = (0, 0, None);
    for t in tasks {
        match t.await.unwrap() {
            (12, r) => closed = Some(r.unwrap()),
            (_, Ok(_)) => ok += 1,
            (_, Err(ConflictError::Store(StoreError::NotFound { .. }))) => missed += 1,
            (i, Err(e)) => panic!("call {i}: {e}"),
        }
    }
    let closed = closed.unwrap();
    assert_eq!(ok + missed, 23);
    assert_eq!(closed.value, ok, "the delete saw every committed increment");
    assert_eq!(closed.version, u64::try_from(ok).unwrap() + 2);
    assert!(gone(a.load().await));
    let s = rt.staging_status();
    assert_eq!((s.executing, s.total_staged), (0, 0), "{s:?}");
    books_balance(&rt);
}

// ---------------------------------------------------------------------------------------------
// Under contention: checkouts deleting carts and creating orders while items are added.

#[with_conflict_resolution(
    pre_ecs = false,
    occ(max_retries = 1000, base_delay_ms = 0, max_delay_ms = 1)
)]
async fn add_item(cart: &mut Acct) -> i64 {
    tokio::task::yield_now().await;
    cart.balance += 1;
    cart.balance
}

/// Deletes the cart, creates its order (a note holding the item count) and adds the count to
/// the till, in one commit.
#[with_conflict_resolution(
    pre_ecs = false,
    occ(max_retries = 1000, base_delay_ms = 0, max_delay_ms = 1)
)]
async fn check_out(
    till: &mut Acct,
    cart: &mut Acct,
    rt: Runtime,
    order: EntityId,
) -> Result<i64, StoreError> {
    let items = cart.balance;
    // A doomed attempt runs again whatever the body returns, so `?` on `RolledBack` is fine
    // (see `fixed_an_insert_in_a_doomed_attempt_runs_the_body_again`).
    rt.insert(Note {
        id: order,
        text: u64::try_from(items).unwrap(),
    })
    .await?;
    tokio::task::yield_now().await;
    operation::delete(cart).map_err(|e| StoreError::Backend {
        message: e.to_string(),
        source: None,
    })?;
    till.balance += items;
    Ok(items)
}

/// Checkouts racing with item adds and with each other (two checkouts per cart, one order id
/// per cart): every add either made it into the cart's order or ended `NotFound`; each cart is
/// checked out exactly once (the other checkout ends `NotFound`, or `AlreadyExists` for the
/// order); the till holds the sum of the orders; no add was lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_checkouts_racing_with_adds_lose_and_double_nothing() {
    let rt = Runtime::in_memory();
    let till = acct(&rt, 0).await;
    let mut carts = Vec::new();
    for _ in 0..4 {
        carts.push((acct(&rt, 0).await, EntityId::new()));
    }
    let added = Arc::new(AtomicU64::new(0));
    let mut adders = Vec::new();
    for (cart, _) in &carts {
        for _ in 0..3 {
            let (cart, added) = (cart.clone(), added.clone());
            adders.push(tokio::spawn(async move {
                let mut ok = 0u64;
                for _ in 0..2000 {
                    match add_item(&cart).await {
                        Ok(_) => {
                            ok += 1;
                            added.fetch_add(1, Ordering::SeqCst);
                        }
                        // Checked out: every later add ends the same way.
                        Err(ConflictError::Store(StoreError::NotFound { .. })) => break,
                        Err(e) => panic!("add: {e}"),
                    }
                }
                (cart.key().clone(), ok)
            }));
        }
    }
    while added.load(Ordering::SeqCst) < 60 {
        tokio::task::yield_now().await;
    }
    let mut checkouts = Vec::new();
    for (cart, order) in &carts {
        for _ in 0..2 {
            let (till, cart, rt, order) = (till.clone(), cart.clone(), rt.clone(), *order);
            checkouts.push(tokio::spawn(async move {
                tokio::time::timeout(LIMIT, check_out(&till, &cart, rt, order))
                    .await
                    .expect("no hang")
            }));
        }
    }
    let mut per_cart: std::collections::HashMap<EntityKey, u64> = Default::default();
    for a in adders {
        let (k, ok) = a.await.unwrap();
        *per_cart.entry(k).or_default() += ok;
    }
    let mut checked_out = 0;
    for c in checkouts {
        match c.await.unwrap() {
            Ok(_) => checked_out += 1,
            Err(ConflictError::Store(StoreError::NotFound { .. })) => {}
            Err(ConflictError::Body(StoreError::AlreadyExists { .. })) => {}
            Err(e) => panic!("checkout: {e}"),
        }
    }
    assert_eq!(checked_out, 4, "each cart checked out exactly once");
    let mut total = 0;
    for (cart, order) in &carts {
        assert!(gone(cart.load().await), "the cart is deleted");
        let o = rt.handle::<Note>(*order).load().await.unwrap();
        assert_eq!(o.version, 1);
        let adds = per_cart.get(cart.key()).copied().unwrap_or(0);
        assert_eq!(o.value.text, adds, "the order holds every committed add");
        total += adds;
    }
    assert_eq!(total, added.load(Ordering::SeqCst));
    let t = till.load().await.unwrap();
    assert_eq!(t.value.balance, i64::try_from(total).unwrap());
    assert_eq!(t.version, 5, "four checkouts wrote the till");
    books_balance(&rt);
}

/// Many roots bump one counter (through OCC conflicts) and each creates its own receipt in the
/// body, which runs many times: each committed call created its receipt exactly once (at
/// version 1), none of the failed attempts left one, and the counter equals the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_inserts_in_heavily_retried_bodies_create_once() {
    let store = Arc::new(MemoryStore::new());
    let rt = Runtime::builder()
        .shared_store(store.clone())
        .build()
        .unwrap();
    let counter = acct(&rt, 0).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (counter, rt) = (counter.clone(), rt.clone());
        tasks.push(tokio::spawn(async move {
            let id = EntityId::new();
            let r = tokio::time::timeout(LIMIT, receipt_bump(&counter, rt, id))
                .await
                .expect("no hang")
                .unwrap();
            (id, r.attempts)
        }));
    }
    let mut attempts = 0;
    let mut ids = Vec::new();
    for t in tasks {
        let (id, a) = t.await.unwrap();
        attempts += a;
        ids.push(id);
    }
    assert!(attempts > 16, "the bodies ran again: {attempts}");
    for id in ids {
        let r = rt.handle::<Note>(id).load().await.unwrap();
        assert_eq!(r.version, 1);
    }
    assert_eq!(state(&counter).await, Some((16, 17)));
    assert_eq!(store.len(), 17, "the counter and sixteen receipts");
    books_balance(&rt);
}

#[with_conflict_resolution(
    pre_ecs = false,
    occ(max_retries = 1000, base_delay_ms = 0, max_delay_ms = 1)
)]
async fn receipt_bump(c: &mut Acct, rt: Runtime, id: EntityId) -> Result<(), StoreError> {
    // Under this contention the attempt is now and then doomed before the insert: the `?`
    // then ends the body, and the call runs again (see
    // `fixed_an_insert_in_a_doomed_attempt_runs_the_body_again`).
    rt.insert(Note { id, text: 0 }).await?;
    tokio::task::yield_now().await;
    c.balance += 1;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// An insert in an attempt that another writer has already doomed.

#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 3, base_delay_ms = 0))]
async fn moved_then_insert(
    a: &mut Acct,
    rt: Runtime,
    me: Handle<Acct>,
    id: EntityId,
    first: Arc<AtomicBool>,
) -> Result<(), StoreError> {
    if first.swap(false, Ordering::SeqCst) {
        // Another writer moves the account on while this attempt holds its old copy.
        operation::scope()
            .detached()
            .run(bump(&me))
            .await
            .expect("a detached bump commits");
    }
    rt.insert(Note { id, text: 1 }).await?;
    a.balance += 10;
    Ok(())
}

/// An ordinary write-write conflict must re-run the body (the OCC contract), whether the other
/// writer commits before or after the body's insert. Here it commits just before: the insert
/// (which loads every entity of the attempt to check it) finds the account moved, dooms the
/// attempt and returns `StoreError::RolledBack`, documented as "nothing was stored, and the
/// root operation runs its body again if it can". A body that propagates it with `?` (as the
/// `Runtime::insert` doc example does) ends the call with `ConflictError::Body(RolledBack)`
/// after one attempt: the conflict becomes a terminal failure. Had the writer committed just
/// after the insert, the same call would have conflicted at commit and run again. The runtime
/// returns the body's error (`run_body_on`/`run_body`: `out.map_err(ConflictError::Body)?`)
/// without looking at the doom it recorded for this attempt.
#[tokio::test]
async fn fixed_an_insert_in_a_doomed_attempt_runs_the_body_again() {
    let rt = Runtime::in_memory();
    let a = acct(&rt, 0).await;
    let id = EntityId::new();
    let r = moved_then_insert(
        &a,
        rt.clone(),
        a.clone(),
        id,
        Arc::new(AtomicBool::new(true)),
    )
    .await;
    let outcome = match &r {
        Ok(c) => format!("committed after {} attempts", c.attempts),
        Err(e) => format!("{e}"),
    };
    assert!(
        matches!(r, Ok(Committed { attempts: 2, .. })),
        "the conflict must re-run the body, got: {outcome}"
    );
    assert_eq!(state(&a).await, Some((11, 3)));
    assert_eq!(rt.handle::<Note>(id).load().await.unwrap().version, 1);
}

#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 3, base_delay_ms = 0))]
async fn insert_then_moved(
    a: &mut Acct,
    rt: Runtime,
    me: Handle<Acct>,
    id: EntityId,
    first: Arc<AtomicBool>,
) -> Result<(), StoreError> {
    rt.insert(Note { id, text: 1 }).await?;
    if first.swap(false, Ordering::SeqCst) {
        operation::scope()
            .detached()
            .run(bump(&me))
            .await
            .expect("a detached bump commits");
    }
    a.balance += 10;
    Ok(())
}

/// The control case of the defect above: the other writer commits just after the insert; the
/// commit conflicts and the body runs again, creating the note once.
#[tokio::test]
async fn holds_an_insert_before_a_conflicting_write_retries() {
    let rt = Runtime::in_memory();
    let a = acct(&rt, 0).await;
    let id = EntityId::new();
    let done = insert_then_moved(
        &a,
        rt.clone(),
        a.clone(),
        id,
        Arc::new(AtomicBool::new(true)),
    )
    .await
    .unwrap();
    assert_eq!(done.attempts, 2);
    assert_eq!(state(&a).await, Some((11, 3)));
    assert_eq!(rt.handle::<Note>(id).load().await.unwrap().version, 1);
    books_balance(&rt);
}

// ---------------------------------------------------------------------------------------------
// The staging snapshot cache (a store behind `dyn EntityStore` counts as remote: staging
// remembers the last snapshot a staged commit wrote) after deletes.

#[with_conflict_resolution(occ(max_retries = 3, base_delay_ms = 0))]
async fn staged_add(a: &mut Acct, n: i64) -> i64 {
    a.balance += n;
    a.balance
}

/// After a staged commit, the entity is deleted and created again behind the runtime's back
/// (directly in the shared store, as another process would); then deleted through a call, and
/// through `Handle::delete`. The next staged call never commits from the remembered snapshot:
/// it conflicts and runs on the new entity, or ends `NotFound`.
#[tokio::test]
async fn holds_the_staging_snapshot_cache_after_deletes() {
    let store = Arc::new(MemoryStore::new());
    let rt = Runtime::builder()
        .shared_store(store.clone())
        .build()
        .unwrap();
    let a = acct(&rt, 0).await;
    assert_eq!(staged_add(&a, 1).await.unwrap().value, 1);
    // Behind the runtime's back: delete at 2, re-create at 4 with 50.
    let key = a.key().clone();
    let outside = store
        .commit(commit(
            vec![],
            vec![Delete {
                key: key.clone(),
                expected_version: 2,
            }],
        ))
        .await
        .unwrap();
    assert!(matches!(outside, CommitOutcome::Committed { .. }));
    store
        .insert(key.clone(), acct_value(a.entity_id(), 50))
        .await
        .unwrap();
    let done = staged_add(&a, 1).await.unwrap();
    assert_eq!((done.value, done.version), (51, 5), "ran on the new entity");
    // Deleted through a call, then a staged call.
    close_one(&a, End::Ok).await.unwrap();
    assert!(matches!(
        staged_add(&a, 1).await,
        Err(ConflictError::Store(StoreError::NotFound { .. }))
    ));
    // Re-created, written through staging, deleted with `Handle::delete`, then a staged call.
    rt.insert(Acct {
        id: a.entity_id(),
        balance: 7,
    })
    .await
    .unwrap();
    let done = staged_add(&a, 1).await.unwrap();
    assert_eq!((done.value, done.version), (8, 8));
    assert!(matches!(
        a.delete(8).await.unwrap(),
        CommitOutcome::Committed { .. }
    ));
    assert!(matches!(
        staged_add(&a, 1).await,
        Err(ConflictError::Store(StoreError::NotFound { .. }))
    ));
    assert_eq!(store_version(&*store, &key).await, None);
    assert_eq!(store.len(), 0);
    books_balance(&rt);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL (the shared throwaway cluster of `conflict_tests::pg`, a fresh schema per test).

/// On PostgreSQL a delete expecting 0 of a tombstone conflicts with no version found (its
/// delete statement requires `value IS NOT NULL`), and the tombstone keeps its version: the
/// behaviour the memory store should match (see
/// `fixed_memory_delete_expecting_zero_on_a_tombstone_conflicts`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_pg_delete_expecting_zero_on_a_tombstone_conflicts() {
    let store = conflict_tests::pg::store("review_cd_del0").await;
    let id = EntityId::new();
    let key = acct_key(id);
    store.insert(key.clone(), acct_value(id, 1)).await.unwrap();
    let del = |v| {
        commit(
            vec![],
            vec![Delete {
                key: key.clone(),
                expected_version: v,
            }],
        )
    };
    assert!(matches!(
        store.commit(del(1)).await.unwrap(),
        CommitOutcome::Committed { .. }
    ));
    let again = store.commit(del(0)).await.unwrap();
    assert!(
        matches!(again, CommitOutcome::Conflict { actual: None, .. }),
        "{again:?}"
    );
    let back = store.insert(key.clone(), acct_value(id, 2)).await.unwrap();
    assert_eq!(back.version, 3, "insert, tombstone 2, then 3");
}

/// The doomed-insert defect on PostgreSQL too: the conflict ends the call instead of running
/// the body again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_pg_an_insert_in_a_doomed_attempt_runs_the_body_again() {
    let (rt, _store) = conflict_tests::pg::runtime("review_cd_doomed").await;
    let a = acct(&rt, 0).await;
    let id = EntityId::new();
    let r = moved_then_insert(
        &a,
        rt.clone(),
        a.clone(),
        id,
        Arc::new(AtomicBool::new(true)),
    )
    .await;
    let outcome = match &r {
        Ok(c) => format!("committed after {} attempts", c.attempts),
        Err(e) => format!("{e}"),
    };
    assert!(
        matches!(r, Ok(Committed { attempts: 2, .. })),
        "the conflict must re-run the body, got: {outcome}"
    );
    assert_eq!(state(&a).await, Some((11, 3)));
}

/// Two roots creating one key on PostgreSQL: exactly one commits, the other ends
/// `AlreadyExists` after running again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_pg_two_roots_creating_one_key_let_exactly_one_commit() {
    let (rt, _store) = conflict_tests::pg::runtime("review_cd_create2").await;
    let (a, b) = (acct(&rt, 0).await, acct(&rt, 0).await);
    let id = EntityId::new();
    let arrived = Arc::new(AtomicU32::new(0));
    let spawn = |h: Handle<Acct>, tag: u64| {
        let (rt, arrived) = (rt.clone(), arrived.clone());
        tokio::spawn(async move {
            let first = Arc::new(AtomicBool::new(true));
            tokio::time::timeout(LIMIT, claim(&h, rt, id, tag, arrived, first))
                .await
                .expect("no hang")
        })
    };
    let (ra, rb) = (spawn(a.clone(), 1), spawn(b.clone(), 2));
    let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
    let exists = |r: &Result<Committed<u64>, ConflictError<StoreError>>| {
        matches!(
            r,
            Err(ConflictError::Body(StoreError::AlreadyExists { .. }))
        )
    };
    assert!(
        (ra.is_ok() && exists(&rb)) || (rb.is_ok() && exists(&ra)),
        "{ra:?} / {rb:?}"
    );
    let winner = ra.as_ref().or(rb.as_ref()).unwrap().value;
    let n = rt.handle::<Note>(id).load().await.unwrap();
    assert_eq!((n.value.text, n.version), (winner, 1));
    books_balance(&rt);
}
