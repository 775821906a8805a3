//! The OCC suite, generic over the store: every function takes a fresh runtime (on whatever
//! backend) and checks one invariant. `tests/occ.rs` runs it on the in-memory store; the
//! PostgreSQL tests run the same functions on `PgStore`. The `store_*` functions call the
//! [`EntityStore`] trait directly (a fresh, empty store of any backend).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use conflict_runtime::prelude::*;
use conflict_runtime::store::{
    Commit, CommitOutcome, EntityCodec, EntityStore, StoredValue, Write,
};
use conflict_runtime::{entity::EntityKey, error::StoreError, operation::OutcomeKind};

use crate::Counter;

/// How hard the contention tests push: the in-memory store takes the full sizes; a
/// database backend may use fewer tasks or calls per task.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Concurrent tasks.
    pub tasks: u64,
    /// Calls per task.
    pub calls: u64,
}

impl Scale {
    /// 64 tasks × 200 calls.
    pub const FULL: Self = Self {
        tasks: 64,
        calls: 200,
    };
}

#[with_conflict_resolution(
    priority = 5,
    occ(
        max_retries = 1000,
        base_delay_ms = 0,
        backoff_factor = 1.5,
        max_delay_ms = 1
    ),
    pre_ecs = false
)]
async fn increment(c: &mut Counter, tag: u64) -> u64 {
    c.value += 1;
    c.log.push(tag);
    tokio::task::yield_now().await;
    c.value
}

/// Invariant: with OCC alone, 64 tasks × 200 increments on one entity lose nothing — the final
/// value and the final version both equal the number of committed calls, and every call ended
/// with Ok or a typed error.
pub async fn no_lost_update_one_entity(rt: Runtime, scale: Scale) {
    {
        let h = rt.insert(Counter::new()).await.unwrap();
        let committed = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for t in 0..scale.tasks {
            let h = h.clone();
            let committed = committed.clone();
            tasks.push(tokio::spawn(async move {
                let mut errors = 0;
                for i in 0..scale.calls {
                    match increment(&h, t * 1000 + i).await {
                        Ok(_) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(ConflictError::RetriesExhausted { .. }) => errors += 1,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                errors
            }));
        }
        let mut exhausted = 0;
        for t in tasks {
            exhausted += t.await.unwrap();
        }
        let committed = committed.load(Ordering::Relaxed);
        assert_eq!(committed + exhausted, scale.tasks * scale.calls);
        let now = h.load().await.unwrap();
        assert_eq!(now.value.value, committed);
        assert_eq!(now.version, committed + 1, "version = 1 + commits");
        let mut log = now.value.log.clone();
        log.sort_unstable();
        log.dedup();
        assert_eq!(
            log.len() as u64,
            committed,
            "each committed call applied exactly once"
        );
        let m = rt.metrics();
        assert_eq!(m.submitted, scale.tasks * scale.calls);
        assert_eq!(m.outcome(OutcomeKind::Committed), committed);
        assert_eq!(m.in_flight, 0);
    }
}

#[with_conflict_resolution]
async fn bump_default(c: &mut Counter, tag: u64) -> u64 {
    c.value += 1;
    c.log.push(tag);
    tokio::task::yield_now().await;
    c.value
}

/// Invariant: 64 tasks on 3 entities with mixed priorities (default mode: staging + OCC): per
/// entity, value = version - 1 = committed calls on it, each applied once; every call ended
/// with Ok or a typed error and the outcome counters add up to the submissions.
pub async fn no_lost_update_three_entities_mixed_priorities(rt: Runtime, scale: Scale) {
    {
        let mut hs = Vec::new();
        for _ in 0..3 {
            hs.push(rt.insert(Counter::new()).await.unwrap());
        }
        let committed: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
        let mut tasks = Vec::new();
        for t in 0..scale.tasks {
            let hs = hs.clone();
            let committed = committed.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(t);
                for i in 0..scale.calls {
                    let k = rng.usize(..3);
                    let p = [
                        OperationPriority::LOW,
                        OperationPriority::NORMAL,
                        OperationPriority::HIGH,
                        OperationPriority::CRITICAL,
                    ][rng.usize(..4)];
                    let r = conflict_runtime::operation::scope()
                        .priority(p)
                        .run(bump_default(&hs[k], t * 1000 + i))
                        .await;
                    match r {
                        Ok(_) => {
                            committed[k].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(
                            ConflictError::Rejected { .. } | ConflictError::RetriesExhausted { .. },
                        ) => {}
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut total = 0;
        for (k, h) in hs.iter().enumerate() {
            let c = committed[k].load(Ordering::Relaxed);
            let now = h.load().await.unwrap();
            assert_eq!(now.value.value, c);
            assert_eq!(now.version, c + 1);
            let mut log = now.value.log.clone();
            log.sort_unstable();
            log.dedup();
            assert_eq!(log.len() as u64, c);
            total += c;
        }
        let m = rt.metrics();
        assert_eq!(m.submitted, scale.tasks * scale.calls);
        assert_eq!(m.ended, m.submitted);
        assert_eq!(m.outcome(OutcomeKind::Committed), total);
        assert_eq!(rt.staging_status().total_staged, 0);
    }
}

static BODY_RUNS: AtomicU64 = AtomicU64::new(0);

/// The error of `refuse`.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub u64);

#[with_conflict_resolution(occ(max_retries = 5), pre_ecs = false)]
async fn refuse(c: &mut Counter, limit: u64) -> Result<u64, Refused> {
    BODY_RUNS.fetch_add(1, Ordering::SeqCst);
    c.value += 1;
    if c.value > limit {
        return Err(Refused(c.value));
    }
    Ok(c.value)
}

/// Invariant: a body error commits nothing, is returned as `Body(e)`, and the body is not
/// retried.
pub async fn a_body_error_commits_nothing_and_is_not_retried(rt: Runtime) {
    let h = rt.insert(Counter::new()).await.unwrap();
    assert_eq!(refuse(&h, 1).await.unwrap().value, 1);
    BODY_RUNS.store(0, Ordering::SeqCst);
    match refuse(&h, 1).await {
        Err(ConflictError::Body(e)) => assert_eq!(e, Refused(2)),
        other => panic!("expected Body, got {other:?}"),
    }
    assert_eq!(BODY_RUNS.load(Ordering::SeqCst), 1, "not retried");
    let now = h.load().await.unwrap();
    assert_eq!((now.value.value, now.version), (1, 2), "nothing committed");
    assert_eq!(rt.metrics().outcome(OutcomeKind::BodyError), 1);
}

#[with_conflict_resolution(occ(max_retries = 0), pre_ecs = false)]
async fn sneak(c: &mut Counter) -> u64 {
    c.value += 100;
    c.value
}

/// Each attempt commits a conflicting write through a detached nested call before its own
/// commit, so every attempt of this operation meets a newer version.
#[with_conflict_resolution(
    occ(max_retries = 2, base_delay_ms = 0, max_delay_ms = 0),
    pre_ecs = false
)]
async fn always_conflicts(c: &mut Counter, same: Handle<Counter>) -> u64 {
    conflict_runtime::operation::scope()
        .detached()
        .run(sneak(&same))
        .await
        .unwrap();
    c.value += 1;
    c.value
}

/// Invariant: an operation whose every attempt conflicts gives up after `max_retries + 1`
/// attempts with `RetriesExhausted`, committing nothing itself; the conflicting writes stand.
pub async fn retries_exhausted_after_max_retries_plus_one_attempts(rt: Runtime) {
    let h = rt.insert(Counter::new()).await.unwrap();
    let mut events = rt.subscribe();
    match always_conflicts(&h, h.clone()).await {
        Err(ConflictError::RetriesExhausted {
            attempts, target, ..
        }) => {
            assert_eq!(attempts, 3);
            assert_eq!(&target, h.key());
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    let now = h.load().await.unwrap();
    assert_eq!(now.value.value, 300, "only the three sneaked writes");
    assert_eq!(now.version, 4);
    let m = rt.metrics();
    assert_eq!(m.occ_conflicts, 3);
    assert_eq!(m.occ_retries, 2);
    let mut conflicts = 0;
    while let Some(conflict_runtime::events::Received::Event(e)) = events.try_recv() {
        if let conflict_runtime::events::Event::OperationConflict {
            expected_version,
            actual_version,
            ..
        } = e
        {
            conflicts += 1;
            assert_eq!(actual_version, Some(expected_version + 1));
        }
    }
    assert_eq!(conflicts, 3);
}

#[with_conflict_resolution(
    pre_ecs = false,
    occ(
        max_retries = 30,
        base_delay_ms = 2,
        backoff_factor = 2.0,
        max_delay_ms = 16
    )
)]
async fn contended(c: &mut Counter, same: Handle<Counter>, rounds: u64) -> u64 {
    if c.value < rounds {
        conflict_runtime::operation::scope()
            .detached()
            .run(sneak(&same))
            .await
            .unwrap();
    }
    c.value += 1;
    c.value
}

/// Invariant: each retry waits a jittered delay within `[0, min(max_delay, base × factor^n)]`.
pub async fn backoff_delays_stay_within_their_ceiling(rt: Runtime) {
    let h = rt.insert(Counter::new()).await.unwrap();
    let mut events = rt.subscribe();
    // `sneak` adds 100, so the body stops conflicting once value >= 1000: 10 conflicts.
    contended(&h, h.clone(), 1000).await.unwrap();
    let occ = conflict_runtime::config::OccConfig {
        max_retries: 30,
        base_delay_ms: 2,
        backoff_factor: 2.0,
        max_delay_ms: 16,
    };
    let mut retries = 0;
    while let Some(conflict_runtime::events::Received::Event(e)) = events.try_recv() {
        if let conflict_runtime::events::Event::OperationRetry { attempt, delay, .. } = e {
            retries += 1;
            let ceiling = occ.backoff_ceiling(attempt - 1);
            assert!(
                delay <= ceiling,
                "attempt {attempt}: {delay:?} > {ceiling:?}"
            );
            assert!(ceiling <= std::time::Duration::from_millis(16));
        }
    }
    assert_eq!(retries, 10);
}

#[with_conflict_resolution(occ(max_retries = 3), pre_ecs = false)]
async fn rename(c: &mut Counter) {
    c.id = EntityId::new();
}

/// Invariant: a body cannot change the entity's identity; the attempt is refused, nothing is
/// committed.
pub async fn a_body_that_changes_the_id_is_refused(rt: Runtime) {
    let h = rt.insert(Counter::new()).await.unwrap();
    assert!(matches!(
        rename(&h).await,
        Err(ConflictError::IdentityChanged { expected, .. }) if expected == h.id()
    ));
    assert_eq!(h.load().await.unwrap().version, 1);
}

/// Invariant: a call on a missing entity fails with `Store(NotFound)`, never a panic.
pub async fn a_missing_entity_is_a_store_error(rt: Runtime) {
    let ghost: Handle<Counter> = rt.handle(EntityId::new());
    assert!(matches!(
        bump_default(&ghost, 1).await,
        Err(ConflictError::Store(
            conflict_runtime::error::StoreError::NotFound { .. }
        ))
    ));
    assert!(matches!(
        ghost.load().await,
        Err(conflict_runtime::error::StoreError::NotFound { .. })
    ));
    let h = rt.insert(Counter::new()).await.unwrap();
    let dup = Counter {
        id: h.id(),
        ..Counter::new()
    };
    assert!(matches!(
        rt.insert(dup).await,
        Err(conflict_runtime::error::StoreError::AlreadyExists { .. })
    ));
    assert_eq!(rt.metrics().outcome(OutcomeKind::StoreError), 1);
}

/// Invariant: versions start at 1 on insert and grow by exactly 1 per commit; last-modified
/// never goes backwards; `Committed` reports the version it wrote.
pub async fn versions_start_at_one_and_grow_by_one(rt: Runtime) {
    let h = rt.insert(Counter::new()).await.unwrap();
    let first = h.load().await.unwrap();
    assert_eq!(first.version, 1);
    let mut last = first.last_modified;
    for i in 0..20u64 {
        let c = bump_default(&h, i).await.unwrap();
        assert_eq!(c.version, i + 2);
        assert_eq!(c.attempts, 1);
        let now = h.load().await.unwrap();
        assert_eq!(now.version, c.version);
        assert!(now.last_modified >= last);
        last = now.last_modified;
    }
}

#[with_conflict_resolution(mode = "none")]
async fn once_only(c: &mut Counter, same: Handle<Counter>) -> u64 {
    conflict_runtime::operation::scope()
        .detached()
        .run(sneak(&same))
        .await
        .unwrap();
    c.value += 1;
    c.value
}

/// Invariant: `mode = "none"` still compares versions at commit; a conflict is not retried.
pub async fn mode_none_compares_but_does_not_retry(rt: Runtime) {
    let h = rt.insert(Counter::new()).await.unwrap();
    assert!(matches!(
        once_only(&h, h.clone()).await,
        Err(ConflictError::RetriesExhausted { attempts: 1, .. })
    ));
    assert_eq!(h.load().await.unwrap().value.value, 100);
}

/// A second entity type, to write under a `Counter`'s key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
pub struct Label {
    /// Identity.
    #[entity(id)]
    pub id: EntityId,
    /// Anything.
    pub text: String,
}

fn counter_key(id: EntityId) -> EntityKey {
    EntityKey::new(Counter::TYPE_NAME, id)
}

fn counter(id: EntityId, value: u64) -> StoredValue {
    Arc::new(Counter {
        id,
        value,
        log: Vec::new(),
    })
}

fn commit_of(writes: Vec<Write>) -> Commit {
    Commit {
        op_id: OpId::from_parts(fastrand::u64(..), fastrand::u64(..)),
        op_type: "suite_commit",
        priority: OperationPriority::NORMAL,
        attempt: 1,
        writes,
    }
}

/// The counter at `id` and its version, which must exist and decode.
async fn load_counter(store: &dyn EntityStore, id: EntityId) -> (u64, u64) {
    let snap = store
        .load(&counter_key(id), EntityCodec::of::<Counter>())
        .await
        .expect("the entity still loads")
        .expect("the entity still exists");
    let c = snap
        .value
        .as_any()
        .downcast_ref::<Counter>()
        .expect("the stored value is still a Counter");
    assert_eq!(c.id, id);
    (c.value, snap.version)
}

fn assert_mismatch<T: std::fmt::Debug>(
    r: Result<T, StoreError>,
    key: &EntityKey,
    found: &EntityKey,
) {
    match r {
        Err(StoreError::KeyMismatch { key: k, found: f }) => {
            assert_eq!((&k, &f), (key, found));
        }
        other => panic!("expected KeyMismatch under {key} for {found}, got {other:?}"),
    }
}

/// Invariant (issue #9, defect 10): a commit whose value is another entity type than its key
/// names, or the same type with another id, is refused with `KeyMismatch` and changes nothing:
/// the entity still loads, at its old value and version, and the other id is not created.
pub async fn store_refuses_a_value_under_another_key(store: &dyn EntityStore) {
    let a = EntityId::new();
    store.insert(counter_key(a), counter(a, 7)).await.unwrap();

    let label: StoredValue = Arc::new(Label {
        id: a,
        text: "not a counter".into(),
    });
    let other_type = store
        .commit(commit_of(vec![Write {
            key: counter_key(a),
            expected_version: 1,
            value: label,
        }]))
        .await;
    assert_mismatch(
        other_type,
        &counter_key(a),
        &EntityKey::new(Label::TYPE_NAME, a),
    );
    assert_eq!(load_counter(store, a).await, (7, 1), "nothing changed");

    let b = EntityId::new();
    let other_id = store
        .commit(commit_of(vec![Write {
            key: counter_key(a),
            expected_version: 1,
            value: counter(b, 8),
        }]))
        .await;
    assert_mismatch(other_id, &counter_key(a), &counter_key(b));
    assert_eq!(load_counter(store, a).await, (7, 1), "nothing changed");
    let ghost = store
        .load(&counter_key(b), EntityCodec::of::<Counter>())
        .await
        .unwrap();
    assert!(ghost.is_none(), "the value's own id was not created either");

    // The refusals left the entity writable as before.
    let ok = store
        .commit(commit_of(vec![Write {
            key: counter_key(a),
            expected_version: 1,
            value: counter(a, 9),
        }]))
        .await
        .unwrap();
    assert!(matches!(ok, CommitOutcome::Committed { ref versions, .. } if versions == &[2]));
    assert_eq!(load_counter(store, a).await, (9, 2));
}

/// Invariant (defect 10): a two-write commit whose second write is mismatched applies
/// neither write, although the first is valid and at its expected version.
pub async fn store_refuses_a_multi_write_with_one_mismatched_write(store: &dyn EntityStore) {
    let (a, b) = (EntityId::new(), EntityId::new());
    store.insert(counter_key(a), counter(a, 1)).await.unwrap();
    store.insert(counter_key(b), counter(b, 2)).await.unwrap();
    let r = store
        .commit(commit_of(vec![
            Write {
                key: counter_key(a),
                expected_version: 1,
                value: counter(a, 10),
            },
            Write {
                key: counter_key(b),
                expected_version: 1,
                value: counter(a, 20),
            },
        ]))
        .await;
    assert_mismatch(r, &counter_key(b), &counter_key(a));
    assert_eq!(
        load_counter(store, a).await,
        (1, 1),
        "first write not applied"
    );
    assert_eq!(
        load_counter(store, b).await,
        (2, 1),
        "second write not applied"
    );
}

/// Invariant (defect 10): an insert whose value is another entity than its key is refused
/// with `KeyMismatch` and stores nothing, under either key.
pub async fn store_refuses_an_insert_under_another_key(store: &dyn EntityStore) {
    let (key_id, value_id) = (EntityId::new(), EntityId::new());
    let r = store
        .insert(counter_key(key_id), counter(value_id, 1))
        .await;
    assert_mismatch(r, &counter_key(key_id), &counter_key(value_id));
    let label: StoredValue = Arc::new(Label {
        id: key_id,
        text: "not a counter".into(),
    });
    let r = store.insert(counter_key(key_id), label).await;
    assert_mismatch(
        r,
        &counter_key(key_id),
        &EntityKey::new(Label::TYPE_NAME, key_id),
    );
    for id in [key_id, value_id] {
        let found = store
            .load(&counter_key(id), EntityCodec::of::<Counter>())
            .await
            .unwrap();
        assert!(found.is_none(), "nothing stored under {id}");
    }
    // The key is still free for its own value.
    store
        .insert(counter_key(key_id), counter(key_id, 3))
        .await
        .unwrap();
    assert_eq!(load_counter(store, key_id).await, (3, 1));
}
