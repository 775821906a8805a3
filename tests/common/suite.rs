//! The backend suite: one contract, run on every store by [`backend_suite!`](crate::backend_suite).
//!
//! Every `pub async fn` here checks one invariant on a fresh runtime or a fresh, empty store
//! of any backend: the runtime cases take a [`Runtime`]; the `store_*` cases call the
//! [`EntityStore`] trait directly (`&dyn EntityStore`, or an `Arc` of one to share between
//! tasks). A backend is a [`Backend`] (how to make those two, and how hard to push);
//! `backend_suite!(module, Backend)` turns every case into a `#[tokio::test]` named after it
//! in `module`, so a case added to the macro runs on every backend:
//!
//! ```text
//! conflict_tests::backend_suite!(memory, conflict_tests::suite::Memory);  // tests/occ.rs
//! conflict_tests::backend_suite!(postgres, conflict_tests::pg::Postgres); // tests/pg.rs
//! ```
//!
//! A case added here but not to the macro fails `every_case_is_instantiated_by_backend_suite`
//! (this crate's unit tests), so no backend can miss it.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use conflict_runtime::prelude::*;
use conflict_runtime::store::{
    Commit, CommitOutcome, Delete, EntityCodec, EntityStore, MemoryStore, Read, StoredValue, Write,
};
use conflict_runtime::{entity::EntityKey, operation::OutcomeKind, store::StoreError};

use crate::Counter;

/// How hard one contention case pushes.
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

/// The sizes of a backend's contention cases: the in-memory store takes the full sizes; a
/// database backend, where every attempt is a few round trips, fewer tasks or calls.
#[derive(Debug, Clone, Copy)]
pub struct Scales {
    /// [`no_lost_update_one_entity`].
    pub one_entity: Scale,
    /// [`no_lost_update_three_entities_mixed_priorities`].
    pub mixed_priorities: Scale,
    /// [`store_concurrent_commit_many_conserves_the_total`].
    pub transfers: Scale,
    /// Transfers per task of [`bank_transfers_conserve_money_and_match_what_callers_were_told`].
    pub bank_transfers: usize,
}

/// A backend the suite runs on: what [`backend_suite!`](crate::backend_suite) needs to instantiate every case.
pub trait Backend {
    /// How hard the contention cases push on this backend.
    const SCALES: Scales;
    /// Whether time-dependent cases run on tokio's paused clock. Not for a database driver,
    /// whose network timeouts would fire while the paused clock jumps ahead; there they run on
    /// the real clock (their delays are a few milliseconds).
    const PAUSED_CLOCK: bool;
    /// A runtime on a fresh, empty store of this backend. `case` names the test (e.g. for a
    /// schema name).
    fn runtime(case: &'static str) -> impl Future<Output = Runtime>;
    /// A fresh, empty store of this backend, used through the trait only.
    fn store(case: &'static str) -> impl Future<Output = Arc<dyn EntityStore>>;
}

/// The embedded in-memory store: [`Runtime::in_memory`], and a [`MemoryStore`] through the
/// trait.
#[derive(Debug)]
pub struct Memory;

impl Backend for Memory {
    const SCALES: Scales = Scales {
        one_entity: Scale::FULL,
        mixed_priorities: Scale {
            tasks: 64,
            calls: 100,
        },
        transfers: Scale::FULL,
        bank_transfers: 150,
    };
    const PAUSED_CLOCK: bool = true;

    async fn runtime(_case: &'static str) -> Runtime {
        Runtime::in_memory()
    }

    async fn store(_case: &'static str) -> Arc<dyn EntityStore> {
        Arc::new(MemoryStore::new())
    }
}

/// Instantiates every case of the suite (`conflict_tests::suite`) on one backend: a module
/// `$module` holding one `#[tokio::test]` per case, named after the case, on a fresh runtime
/// or store of `$backend` (a [`suite::Backend`](crate::suite::Backend)).
///
/// Adding a case means adding its line here; then it runs on every backend. Cases with many
/// tasks run on a multi-thread runtime (2 workers); the time-dependent case on a current-thread
/// runtime, whose clock is paused if the backend allows it.
///
/// The expansion names `tokio` directly: use it in a crate that depends on tokio with the
/// `macros`, `rt-multi-thread` and `test-util` features (the test binaries of this crate).
#[macro_export]
macro_rules! backend_suite {
    ($module:ident, $backend:ty) => {
        #[doc = concat!("The backend suite (`conflict_tests::suite`) on `", stringify!($backend), "`.")]
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            // Runtime cases.
            $crate::__suite_case!(runtime $backend, no_lost_update_one_entity,
                <$backend as $crate::suite::Backend>::SCALES.one_entity);
            $crate::__suite_case!(runtime $backend, no_lost_update_three_entities_mixed_priorities,
                <$backend as $crate::suite::Backend>::SCALES.mixed_priorities);
            $crate::__suite_case!(runtime $backend, a_body_error_commits_nothing_and_is_not_retried);
            $crate::__suite_case!(runtime $backend, retries_exhausted_after_max_retries_plus_one_attempts);
            $crate::__suite_case!(clock $backend, backoff_delays_stay_within_their_ceiling);
            $crate::__suite_case!(runtime $backend, a_body_that_changes_the_id_is_refused);
            $crate::__suite_case!(runtime $backend, a_missing_entity_is_a_store_error);
            $crate::__suite_case!(runtime $backend, versions_start_at_one_and_grow_by_one);
            $crate::__suite_case!(runtime $backend, mode_none_compares_but_does_not_retry);

            $crate::__suite_case!(runtime $backend, bank_transfers_conserve_money_and_match_what_callers_were_told,
                <$backend as $crate::suite::Backend>::SCALES.bank_transfers);
            $crate::__suite_case!(runtime $backend, nested_calls_commit_with_their_parent_and_only_once);
            $crate::__suite_case!(runtime $backend, cross_nested_calls_never_hang);
            $crate::__suite_case!(runtime $backend, nested_calls_read_their_siblings_writes);
            $crate::__suite_case!(runtime $backend, a_call_creates_and_deletes_entities_all_or_nothing);
            $crate::__suite_case!(runtime $backend, a_delete_racing_with_writers_loses_nothing_and_resurrects_nothing);

            // Store cases, through `&dyn EntityStore`.
            $crate::__suite_case!(store $backend, store_insert_then_load_returns_version_one);
            $crate::__suite_case!(store $backend, store_commit_at_the_expected_version_bumps_it_by_one);
            $crate::__suite_case!(store $backend, store_commit_with_a_stale_version_is_a_conflict_and_changes_nothing);
            $crate::__suite_case!(store $backend, store_commit_many_is_all_or_nothing);
            $crate::__suite_case!(store $backend, store_commit_many_with_no_writes_changes_nothing);
            $crate::__suite_case!(store $backend, store_commit_many_refuses_a_key_written_twice);
            $crate::__suite_case!(store $backend, store_refuses_a_value_under_another_key);
            $crate::__suite_case!(store $backend, store_refuses_a_multi_write_with_one_mismatched_write);
            $crate::__suite_case!(store $backend, store_refuses_an_insert_under_another_key);
            $crate::__suite_case!(store $backend, store_commit_with_a_stale_read_is_a_conflict_and_applies_nothing);
            $crate::__suite_case!(store $backend, store_read_only_commit_validates_its_reads_and_bumps_nothing);
            $crate::__suite_case!(store $backend, store_refuses_a_key_both_written_and_read);
            $crate::__suite_case!(store $backend, store_load_many_returns_the_keys_in_order_and_none_for_a_missing_one);
            $crate::__suite_case!(store $backend, store_delete_leaves_a_tombstone_that_keeps_counting_versions);
            $crate::__suite_case!(store $backend, store_creates_and_deletes_are_all_or_nothing);
            // Through an `Arc<dyn EntityStore>` shared by many tasks.
            $crate::__suite_case!(shared_store $backend, store_concurrent_commit_many_conserves_the_total,
                <$backend as $crate::suite::Backend>::SCALES.transfers);
            $crate::__suite_case!(shared_store $backend, store_write_skew_is_impossible);
            $crate::__suite_case!(shared_store $backend, store_load_many_is_consistent_under_concurrent_transfers);
            $crate::__suite_case!(shared_store $backend, store_concurrent_creates_of_one_key_let_exactly_one_win);
        }
    };
}

/// Not public API. Used by [`backend_suite!`](crate::backend_suite): one test of one case on one backend.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_case {
    (runtime $backend:ty, $case:ident $(, $arg:expr)*) => {
        #[doc = concat!("[`conflict_tests::suite::", stringify!($case), "`] on a fresh runtime.")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let rt = <$backend as $crate::suite::Backend>::runtime(stringify!($case)).await;
            $crate::suite::$case(rt $(, $arg)*).await;
        }
    };
    (clock $backend:ty, $case:ident) => {
        #[doc = concat!("[`conflict_tests::suite::", stringify!($case), "`] on a fresh runtime, paused clock where the backend allows.")]
        // Current-thread: the only flavour whose clock can be paused.
        #[tokio::test]
        async fn $case() {
            if <$backend as $crate::suite::Backend>::PAUSED_CLOCK {
                tokio::time::pause();
            }
            let rt = <$backend as $crate::suite::Backend>::runtime(stringify!($case)).await;
            $crate::suite::$case(rt).await;
        }
    };
    (store $backend:ty, $case:ident) => {
        #[doc = concat!("[`conflict_tests::suite::", stringify!($case), "`] on a fresh store.")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let store = <$backend as $crate::suite::Backend>::store(stringify!($case)).await;
            $crate::suite::$case(&*store).await;
        }
    };
    (shared_store $backend:ty, $case:ident $(, $arg:expr)*) => {
        #[doc = concat!("[`conflict_tests::suite::", stringify!($case), "`] on a fresh store.")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let store = <$backend as $crate::suite::Backend>::store(stringify!($case)).await;
            $crate::suite::$case(store $(, $arg)*).await;
        }
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

/// Invariant: with OCC alone, `scale.tasks` × `scale.calls` increments on one entity lose nothing — the final
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

/// Invariant: `scale.tasks` tasks on 3 entities with mixed priorities (default mode: staging + OCC): per
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

/// The error of `refuse`.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub u64);

#[with_conflict_resolution(occ(max_retries = 5), pre_ecs = false)]
async fn refuse(c: &mut Counter, limit: u64, runs: Arc<AtomicU64>) -> Result<u64, Refused> {
    runs.fetch_add(1, Ordering::SeqCst);
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
    let runs = Arc::new(AtomicU64::new(0));
    assert_eq!(refuse(&h, 1, runs.clone()).await.unwrap().value, 1);
    runs.store(0, Ordering::SeqCst);
    match refuse(&h, 1, runs.clone()).await {
        Err(ConflictError::Body(e)) => assert_eq!(e, Refused(2)),
        other => panic!("expected Body, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "not retried");
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
            conflict_runtime::store::StoreError::NotFound { .. }
        ))
    ));
    assert!(matches!(
        ghost.load().await,
        Err(conflict_runtime::store::StoreError::NotFound { .. })
    ));
    let h = rt.insert(Counter::new()).await.unwrap();
    let dup = Counter {
        id: h.id(),
        ..Counter::new()
    };
    assert!(matches!(
        rt.insert(dup).await,
        Err(conflict_runtime::store::StoreError::AlreadyExists { .. })
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
        deletes: Vec::new(),
        reads: Vec::new(),
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

/// A commit of `writes` that also validates `reads`.
fn commit_with(writes: Vec<Write>, reads: Vec<Read>) -> Commit {
    Commit {
        reads,
        ..commit_of(writes)
    }
}

fn read(id: EntityId, version: u64) -> Read {
    Read {
        key: counter_key(id),
        version,
    }
}

fn write(id: EntityId, expected_version: u64, value: u64) -> Write {
    Write {
        key: counter_key(id),
        expected_version,
        value: counter(id, value),
    }
}

/// Inserts one counter per value; their ids, in the same order.
async fn insert_counters(store: &dyn EntityStore, values: &[u64]) -> Vec<EntityId> {
    let mut ids = Vec::with_capacity(values.len());
    for &value in values {
        let id = EntityId::new();
        store
            .insert(counter_key(id), counter(id, value))
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// The counters' `(value, version)`, in the order of `ids`.
async fn load_all(store: &dyn EntityStore, ids: &[EntityId]) -> Vec<(u64, u64)> {
    let mut found = Vec::with_capacity(ids.len());
    for &id in ids {
        found.push(load_counter(store, id).await);
    }
    found
}

/// The new versions of a commit that must have applied.
fn committed_versions(outcome: Result<CommitOutcome, StoreError>) -> (Vec<u64>, SystemTime) {
    match outcome {
        Ok(CommitOutcome::Committed {
            versions,
            last_modified,
        }) => (versions, last_modified),
        other => panic!("expected the commit to apply, got {other:?}"),
    }
}

/// The conflict of a commit that must have been refused: `(key, expected, actual)`.
fn conflict(outcome: Result<CommitOutcome, StoreError>) -> (EntityKey, u64, Option<u64>) {
    match outcome {
        Ok(CommitOutcome::Conflict {
            key,
            expected,
            actual,
        }) => (key, expected, actual),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Invariant: `insert` stores a new entity at version 1, and `load` returns exactly that value
/// and metadata; a missing key loads as `None`; inserting a taken key is `AlreadyExists` and
/// leaves the stored entity as it was.
pub async fn store_insert_then_load_returns_version_one(store: &dyn EntityStore) {
    let codec = EntityCodec::of::<Counter>();
    let id = EntityId::new();
    assert!(
        store.load(&counter_key(id), codec).await.unwrap().is_none(),
        "nothing stored yet"
    );
    let value = Counter {
        id,
        value: 42,
        log: vec![7, 8],
    };
    let inserted = store
        .insert(counter_key(id), Arc::new(value.clone()))
        .await
        .unwrap();
    assert_eq!(inserted.version, 1, "a new entity starts at version 1");
    assert_eq!(
        inserted.value.as_any().downcast_ref::<Counter>(),
        Some(&value)
    );

    let loaded = store.load(&counter_key(id), codec).await.unwrap().unwrap();
    assert_eq!(
        loaded.value.as_any().downcast_ref::<Counter>(),
        Some(&value)
    );
    assert_eq!(loaded.version, 1);
    assert_eq!(
        loaded.last_modified, inserted.last_modified,
        "load reports the metadata insert recorded"
    );

    match store.insert(counter_key(id), counter(id, 0)).await {
        Err(StoreError::AlreadyExists { key }) => assert_eq!(key, counter_key(id)),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        load_counter(store, id).await,
        (42, 1),
        "the first insert stands"
    );

    // Another id is another entity.
    let other = EntityId::new();
    store
        .insert(counter_key(other), counter(other, 5))
        .await
        .unwrap();
    assert_eq!(load_counter(store, other).await, (5, 1));
    assert_eq!(load_counter(store, id).await, (42, 1));
}

/// Invariant: a single-write commit at the current version applies, bumps the version by
/// exactly one and reports that version; `load` then returns the written value with the
/// reported version and last-modified, which never goes backwards.
pub async fn store_commit_at_the_expected_version_bumps_it_by_one(store: &dyn EntityStore) {
    let ids = insert_counters(store, &[0, 100]).await;
    let (id, bystander) = (ids[0], ids[1]);
    let mut last = store
        .load(&counter_key(id), EntityCodec::of::<Counter>())
        .await
        .unwrap()
        .unwrap()
        .last_modified;
    for version in 1..=10u64 {
        let outcome = store
            .commit(commit_of(vec![write(id, version, version * 10)]))
            .await;
        let (versions, last_modified) = committed_versions(outcome);
        assert_eq!(versions, [version + 1], "one commit, one version");
        assert!(last_modified >= last, "last-modified never goes back");
        last = last_modified;
        let snap = store
            .load(&counter_key(id), EntityCodec::of::<Counter>())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(snap.version, version + 1);
        assert_eq!(
            snap.last_modified, last_modified,
            "the reported commit time"
        );
        assert_eq!(load_counter(store, id).await, (version * 10, version + 1));
    }
    assert_eq!(
        load_counter(store, bystander).await,
        (100, 1),
        "a commit touches only its own key"
    );
}

/// Invariant: a commit whose expected version is not current — behind, ahead, or of a key
/// that does not exist — is a `Conflict` naming the key, the version expected and the one
/// found, and changes nothing (a missing key is not created); the entity then still commits at
/// its real version.
pub async fn store_commit_with_a_stale_version_is_a_conflict_and_changes_nothing(
    store: &dyn EntityStore,
) {
    let id = insert_counters(store, &[1]).await[0];
    committed_versions(store.commit(commit_of(vec![write(id, 1, 2)])).await);
    assert_eq!(load_counter(store, id).await, (2, 2));

    for stale in [1, 3, 7] {
        let found = conflict(store.commit(commit_of(vec![write(id, stale, 99)])).await);
        assert_eq!(found, (counter_key(id), stale, Some(2)), "expected {stale}");
        assert_eq!(load_counter(store, id).await, (2, 2), "nothing changed");
    }

    let ghost = EntityId::new();
    let found = conflict(store.commit(commit_of(vec![write(ghost, 1, 5)])).await);
    assert_eq!(found, (counter_key(ghost), 1, None), "no version found");
    assert_never_created(store, ghost).await;

    let (versions, _) = committed_versions(store.commit(commit_of(vec![write(id, 2, 3)])).await);
    assert_eq!(versions, [3], "the refusals bumped nothing");
    assert_eq!(load_counter(store, id).await, (3, 3));
}

/// A refused commit to a missing key did not create it.
async fn assert_never_created(store: &dyn EntityStore, id: EntityId) {
    let found = store
        .load(&counter_key(id), EntityCodec::of::<Counter>())
        .await
        .unwrap();
    assert!(
        found.is_none(),
        "a write expecting a version never creates an entity"
    );
}

/// Invariant: a multi-write commit is all or nothing. With one stale write among several —
/// whichever of them, so first, in between or last in the store's lock order — it is a
/// `Conflict` naming that write's key, expected and found versions, and no write applies; with
/// a write to a missing key likewise (and the key is not created). With every write current,
/// every write applies and each version grows by exactly one, reported in the order of the
/// writes.
pub async fn store_commit_many_is_all_or_nothing(store: &dyn EntityStore) {
    let ids = insert_counters(store, &[10, 20, 30, 40]).await;
    let mut state = load_all(store, &ids).await;
    assert_eq!(state, [(10, 1), (20, 1), (30, 1), (40, 1)]);

    for stale in 0..ids.len() {
        // Make `stale`'s read out of date: another writer commits it first.
        let (value, version) = state[stale];
        committed_versions(
            store
                .commit(commit_of(vec![write(ids[stale], version, value + 1)]))
                .await,
        );
        state[stale] = (value + 1, version + 1);
        // Everyone else's read is current; `stale`'s is the one before that commit.
        let writes = (0..ids.len())
            .map(|i| {
                let read = if i == stale { version } else { state[i].1 };
                write(ids[i], read, 1_000 + i as u64)
            })
            .collect();
        let found = conflict(store.commit(commit_of(writes)).await);
        assert_eq!(
            found,
            (counter_key(ids[stale]), version, Some(version + 1)),
            "the stale write is the one named"
        );
        assert_eq!(load_all(store, &ids).await, state, "no write applied");
    }

    let ghost = EntityId::new();
    let writes = vec![
        write(ids[0], state[0].1, 0),
        write(ghost, 1, 0),
        write(ids[2], state[2].1, 0),
    ];
    let found = conflict(store.commit(commit_of(writes)).await);
    assert_eq!(found, (counter_key(ghost), 1, None));
    assert_eq!(load_all(store, &ids).await, state, "no write applied");
    assert_never_created(store, ghost).await;

    // Entity i takes i more commits, so that the versions differ and their order shows.
    for (i, &id) in ids.iter().enumerate() {
        for _ in 0..i {
            let (value, version) = state[i];
            committed_versions(
                store
                    .commit(commit_of(vec![write(id, version, value)]))
                    .await,
            );
            state[i].1 += 1;
        }
    }
    assert_eq!(load_all(store, &ids).await, state);

    // All current, in an order other than the ids' (and so, likely, than the lock order).
    let order = [3, 0, 2, 1];
    let writes = order
        .iter()
        .map(|&i| write(ids[i], state[i].1, 500 + i as u64))
        .collect();
    let (versions, _) = committed_versions(store.commit(commit_of(writes)).await);
    let expected: Vec<u64> = order.iter().map(|&i| state[i].1 + 1).collect();
    assert_eq!(versions, expected, "each +1, in the order of the writes");
    for (i, s) in state.iter_mut().enumerate() {
        *s = (500 + i as u64, s.1 + 1);
    }
    assert_eq!(load_all(store, &ids).await, state, "every write applied");

    // The reported versions are the ones to commit on next.
    let writes = (0..ids.len())
        .map(|i| write(ids[i], state[i].1, 0))
        .collect();
    let (versions, _) = committed_versions(store.commit(commit_of(writes)).await);
    assert_eq!(versions, state.iter().map(|s| s.1 + 1).collect::<Vec<_>>());
}

/// Invariant: a commit with no writes applies (there is nothing to be stale) with no versions,
/// and changes no entity.
pub async fn store_commit_many_with_no_writes_changes_nothing(store: &dyn EntityStore) {
    let ids = insert_counters(store, &[3, 4]).await;
    let (versions, _) = committed_versions(store.commit(commit_of(Vec::new())).await);
    assert!(versions.is_empty(), "{versions:?}");
    assert_eq!(load_all(store, &ids).await, [(3, 1), (4, 1)]);
    // And the entities commit as before.
    let (versions, _) =
        committed_versions(store.commit(commit_of(vec![write(ids[0], 1, 5)])).await);
    assert_eq!(versions, [2]);
}

/// Invariant: a commit that writes the same key twice is refused as a whole — whether the two
/// writes expect the same version or the second expects the first's result, and along with
/// the commit's other, valid writes — with `StoreError::DuplicateWrite` naming that key, before
/// anything is applied (not a `Conflict`: a caller that retries conflicts would retry it for
/// ever). Nothing applies, and the entities stay writable. Both backends give exactly this
/// outcome, so code written against one behaves the same on the other.
pub async fn store_commit_many_refuses_a_key_written_twice(store: &dyn EntityStore) {
    let ids = insert_counters(store, &[1, 2]).await;
    let (a, b) = (ids[0], ids[1]);
    let cases: [Vec<Write>; 4] = [
        vec![write(a, 1, 10), write(a, 1, 11)],
        vec![write(a, 1, 10), write(a, 2, 11)],
        vec![write(b, 1, 20), write(a, 1, 10), write(a, 1, 11)],
        vec![write(a, 1, 10), write(b, 1, 20), write(a, 1, 11)],
    ];
    for (i, writes) in cases.into_iter().enumerate() {
        match store.commit(commit_of(writes)).await {
            Err(StoreError::DuplicateWrite { key }) => {
                assert_eq!(
                    key,
                    counter_key(a),
                    "case {i}: the key written twice is named"
                );
            }
            other => panic!("case {i}: expected DuplicateWrite, got {other:?}"),
        }
        assert_eq!(
            load_all(store, &ids).await,
            [(1, 1), (2, 1)],
            "case {i}: nothing applied"
        );
    }
    let (versions, _) = committed_versions(
        store
            .commit(commit_of(vec![write(a, 1, 10), write(b, 1, 20)]))
            .await,
    );
    assert_eq!(
        versions,
        [2, 2],
        "the refused commits left nothing locked or bumped"
    );
}

/// Invariant (conservation): many tasks run transfers between a few counters, each one
/// `commit_many` of 2 or 3 overlapping keys in a random order (read, yield, commit; a conflict
/// is counted, not retried). Every call is either committed or a conflict naming one of its
/// own keys, never an error; the total of the counters never changes; each counter's final
/// version is 1 + the number of committed transfers that wrote it; and its log lists exactly
/// the tags of those transfers, each once — every successful commit is reflected exactly once
/// and no refused one at all.
pub async fn store_concurrent_commit_many_conserves_the_total(
    store: Arc<dyn EntityStore>,
    scale: Scale,
) {
    const COUNTERS: usize = 5;
    const START: u64 = 1_000;
    let ids = insert_counters(&*store, &[START; COUNTERS]).await;
    let mut tasks = Vec::new();
    for t in 0..scale.tasks {
        let (store, ids) = (store.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t);
            // (tag, indices written) of each committed transfer; the number of conflicts.
            let mut committed: Vec<(u64, Vec<usize>)> = Vec::new();
            let mut conflicts = 0u64;
            for call in 0..scale.calls {
                let tag = t * 1_000_000 + call;
                let mut picked: Vec<usize> = (0..COUNTERS).collect();
                rng.shuffle(&mut picked);
                picked.truncate(rng.usize(2..=3));
                let mut read = Vec::with_capacity(picked.len());
                for &i in &picked {
                    let snap = store
                        .load(&counter_key(ids[i]), EntityCodec::of::<Counter>())
                        .await
                        .unwrap()
                        .unwrap();
                    let c = snap.value.as_any().downcast_ref::<Counter>().unwrap();
                    read.push((c.clone(), snap.version));
                }
                // Let other tasks commit between this read and this commit.
                tokio::task::yield_now().await;
                let receivers = picked.len() as u64 - 1;
                let amount = rng.u64(0..=10).min(read[0].0.value / receivers);
                let writes: Vec<Write> = read
                    .iter()
                    .enumerate()
                    .map(|(j, (c, version))| {
                        let mut c = c.clone();
                        if j == 0 {
                            c.value -= amount * receivers;
                        } else {
                            c.value += amount;
                        }
                        c.log.push(tag);
                        Write {
                            key: counter_key(c.id),
                            expected_version: *version,
                            value: Arc::new(c),
                        }
                    })
                    .collect();
                match store.commit(commit_of(writes)).await {
                    Ok(CommitOutcome::Committed { versions, .. }) => {
                        let expected: Vec<u64> = read.iter().map(|(_, v)| v + 1).collect();
                        assert_eq!(versions, expected, "each written version +1");
                        committed.push((tag, picked));
                    }
                    Ok(CommitOutcome::Conflict {
                        key,
                        expected,
                        actual,
                    }) => {
                        let j = picked
                            .iter()
                            .position(|&i| counter_key(ids[i]) == key)
                            .unwrap_or_else(|| panic!("conflict on {key}, not written"));
                        assert_eq!(expected, read[j].1, "the version this call read");
                        assert_ne!(actual, Some(expected), "a conflict found a newer version");
                        conflicts += 1;
                    }
                    Err(e) => panic!("transfer {tag}: unexpected error: {e}"),
                }
            }
            (committed, conflicts)
        }));
    }
    let mut tags_of: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let (mut committed, mut conflicts) = (0, 0);
    for task in tasks {
        let (done, refused) = task.await.unwrap();
        committed += done.len() as u64;
        conflicts += refused;
        for (tag, picked) in done {
            for i in picked {
                tags_of.entry(i).or_default().push(tag);
            }
        }
    }
    assert_eq!(
        committed + conflicts,
        scale.tasks * scale.calls,
        "every call ended"
    );
    assert!(committed > 0, "some transfers committed");
    assert!(
        conflicts > 0,
        "the tasks contended (else this checks little)"
    );

    let mut total = 0;
    for (i, &id) in ids.iter().enumerate() {
        let snap = store
            .load(&counter_key(id), EntityCodec::of::<Counter>())
            .await
            .unwrap()
            .unwrap();
        let c = snap.value.as_any().downcast_ref::<Counter>().unwrap();
        total += c.value;
        let mut expected = tags_of.remove(&i).unwrap_or_default();
        expected.sort_unstable();
        let mut log = c.log.clone();
        log.sort_unstable();
        assert_eq!(
            snap.version,
            1 + expected.len() as u64,
            "counter {i}: version = 1 + committed writes"
        );
        let distinct: HashSet<u64> = log.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            log.len(),
            "counter {i}: no transfer applied twice"
        );
        assert_eq!(
            log, expected,
            "counter {i}: exactly the committed transfers"
        );
    }
    assert_eq!(
        total,
        START * COUNTERS as u64,
        "transfers conserve the total"
    );
}

/// Invariant: a commit whose read entity is no longer at the version read — whichever of its
/// keys that is in the store's lock order — is a `Conflict` naming that key, the version read
/// and the one found, and applies none of its writes, although they are all current; a read of
/// a key that does not exist likewise (and the key is not created). With every read current,
/// the commit applies: the written entities each grow by one version, reported in the order of
/// the writes, and the read ones keep theirs.
pub async fn store_commit_with_a_stale_read_is_a_conflict_and_applies_nothing(
    store: &dyn EntityStore,
) {
    let ids = insert_counters(store, &[10, 20, 30, 40]).await;
    let mut state = load_all(store, &ids).await;

    for stale in 0..ids.len() {
        // Another writer commits `stale` after this commit read it.
        let (value, version) = state[stale];
        committed_versions(
            store
                .commit(commit_of(vec![write(ids[stale], version, value + 1)]))
                .await,
        );
        state[stale] = (value + 1, version + 1);
        // Every other entity is written at its current version; `stale` is read at the old one.
        let writes = (0..ids.len())
            .filter(|&i| i != stale)
            .map(|i| write(ids[i], state[i].1, 1_000 + i as u64))
            .collect();
        let reads = vec![read(ids[stale], version)];
        let found = conflict(store.commit(commit_with(writes, reads)).await);
        assert_eq!(
            found,
            (counter_key(ids[stale]), version, Some(version + 1)),
            "the stale read is the one named"
        );
        assert_eq!(load_all(store, &ids).await, state, "no write applied");
    }

    // One stale read among current ones, with a current write.
    let reads = vec![
        read(ids[1], state[1].1),
        read(ids[2], state[2].1 - 1),
        read(ids[3], state[3].1),
    ];
    let found = conflict(
        store
            .commit(commit_with(vec![write(ids[0], state[0].1, 0)], reads))
            .await,
    );
    assert_eq!(
        found,
        (counter_key(ids[2]), state[2].1 - 1, Some(state[2].1))
    );
    assert_eq!(load_all(store, &ids).await, state, "no write applied");

    let ghost = EntityId::new();
    let found = conflict(
        store
            .commit(commit_with(
                vec![write(ids[0], state[0].1, 0), write(ids[1], state[1].1, 0)],
                vec![read(ghost, 1)],
            ))
            .await,
    );
    assert_eq!(found, (counter_key(ghost), 1, None), "no version found");
    assert_eq!(load_all(store, &ids).await, state, "no write applied");
    assert_never_created(store, ghost).await;

    // All current: the writes apply, the reads only validate.
    let writes = vec![write(ids[2], state[2].1, 7), write(ids[0], state[0].1, 5)];
    let reads = vec![read(ids[3], state[3].1), read(ids[1], state[1].1)];
    let (versions, _) = committed_versions(store.commit(commit_with(writes, reads)).await);
    assert_eq!(
        versions,
        [state[2].1 + 1, state[0].1 + 1],
        "the writes' new versions, in the order of the writes"
    );
    state[0] = (5, state[0].1 + 1);
    state[2] = (7, state[2].1 + 1);
    assert_eq!(
        load_all(store, &ids).await,
        state,
        "the written entities +1, the read ones unchanged"
    );
    // The validated reads left nothing locked: the read entities commit as before.
    let (versions, _) = committed_versions(
        store
            .commit(commit_of(vec![
                write(ids[1], state[1].1, 1),
                write(ids[3], state[3].1, 3),
            ]))
            .await,
    );
    assert_eq!(versions, [state[1].1 + 1, state[3].1 + 1]);
}

/// Invariant: a commit with reads and no writes applies when every read is current — with no
/// versions, bumping nothing — and is a `Conflict` naming the stale read (behind or ahead of
/// the entity, or of a missing key) with the version read and the one found when one is not;
/// after another writer commits a read entity, the same reads are stale.
pub async fn store_read_only_commit_validates_its_reads_and_bumps_nothing(store: &dyn EntityStore) {
    let ids = insert_counters(store, &[1, 2, 3]).await;
    committed_versions(store.commit(commit_of(vec![write(ids[1], 1, 20)])).await);
    let state = load_all(store, &ids).await;
    assert_eq!(state, [(1, 1), (20, 2), (3, 1)]);
    let current: Vec<Read> = ids
        .iter()
        .zip(&state)
        .map(|(&id, &(_, version))| read(id, version))
        .collect();

    for reads in [current.clone(), current.clone(), vec![read(ids[1], 2)]] {
        let (versions, _) = committed_versions(store.commit(commit_with(vec![], reads)).await);
        assert!(versions.is_empty(), "nothing written: {versions:?}");
    }
    assert_eq!(
        load_all(store, &ids).await,
        state,
        "validating bumps nothing"
    );

    for (i, stale) in [(1, 1), (1, 3), (0, 2), (2, 0)] {
        let mut reads = current.clone();
        reads[i].version = stale;
        let found = conflict(store.commit(commit_with(vec![], reads)).await);
        assert_eq!(
            found,
            (counter_key(ids[i]), stale, Some(state[i].1)),
            "read {i} at {stale}"
        );
    }
    let ghost = EntityId::new();
    let mut reads = current.clone();
    reads.push(read(ghost, 1));
    let found = conflict(store.commit(commit_with(vec![], reads)).await);
    assert_eq!(found, (counter_key(ghost), 1, None), "no version found");
    assert_never_created(store, ghost).await;
    assert_eq!(
        load_all(store, &ids).await,
        state,
        "the refusals bump nothing"
    );

    committed_versions(store.commit(commit_of(vec![write(ids[2], 1, 30)])).await);
    let found = conflict(store.commit(commit_with(vec![], current)).await);
    assert_eq!(found, (counter_key(ids[2]), 1, Some(2)), "now stale");
}

/// Invariant: a commit that names a key twice across its writes and reads — written and read,
/// or read twice, with or without other writes — is refused as a whole with
/// `StoreError::DuplicateWrite` naming that key, before anything is applied; the entities stay
/// writable.
pub async fn store_refuses_a_key_both_written_and_read(store: &dyn EntityStore) {
    let ids = insert_counters(store, &[1, 2]).await;
    let (a, b) = (ids[0], ids[1]);
    let cases: [(Vec<Write>, Vec<Read>); 5] = [
        (vec![write(a, 1, 10)], vec![read(a, 1)]),
        (vec![write(a, 1, 10)], vec![read(b, 1), read(a, 1)]),
        (vec![write(b, 1, 20), write(a, 1, 10)], vec![read(a, 1)]),
        (vec![write(b, 1, 20)], vec![read(a, 1), read(a, 1)]),
        (vec![], vec![read(a, 1), read(b, 1), read(a, 1)]),
    ];
    for (i, (writes, reads)) in cases.into_iter().enumerate() {
        match store.commit(commit_with(writes, reads)).await {
            Err(StoreError::DuplicateWrite { key }) => {
                assert_eq!(key, counter_key(a), "case {i}: the key named twice");
            }
            other => panic!("case {i}: expected DuplicateWrite, got {other:?}"),
        }
        assert_eq!(
            load_all(store, &ids).await,
            [(1, 1), (2, 1)],
            "case {i}: nothing applied"
        );
    }
    let (versions, _) = committed_versions(
        store
            .commit(commit_with(vec![write(a, 1, 10)], vec![read(b, 1)]))
            .await,
    );
    assert_eq!(versions, [2], "the refused commits left nothing locked");
    assert_eq!(load_all(store, &ids).await, [(10, 2), (2, 1)]);
}

/// Invariant (no write skew): two commits from the same versions, one reading A and writing B,
/// the other reading B and writing A, started together: exactly one applies; the other is a
/// `Conflict` on the key it read (the one the first wrote). Classic on-call rule: each takes
/// the other off duty only while it sees itself on duty, so one always stays on duty.
pub async fn store_write_skew_is_impossible(store: Arc<dyn EntityStore>) {
    const ROUNDS: usize = 20;
    let ids = insert_counters(&*store, &[1, 1]).await;
    for round in 0..ROUNDS {
        let on_call = load_all(&*store, &ids).await;
        assert_eq!(on_call.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 1]);
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        // Task `me` reads itself (on duty) and takes the other off duty.
        let tasks: Vec<_> = [(0, 1), (1, 0)]
            .into_iter()
            .map(|(me, other)| {
                let (store, barrier) = (store.clone(), barrier.clone());
                let (reads, writes) = (
                    vec![read(ids[me], on_call[me].1)],
                    vec![write(ids[other], on_call[other].1, 0)],
                );
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.commit(commit_with(writes, reads)).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        let winner = match (&outcomes[0], &outcomes[1]) {
            (Ok(CommitOutcome::Committed { .. }), Ok(CommitOutcome::Conflict { .. })) => 0,
            (Ok(CommitOutcome::Conflict { .. }), Ok(CommitOutcome::Committed { .. })) => 1,
            other => panic!("round {round}: expected exactly one to apply, got {other:?}"),
        };
        let loser = 1 - winner;
        // The loser read itself, which the winner took off duty.
        let found = conflict(outcomes.swap_remove(loser));
        assert_eq!(
            found,
            (
                counter_key(ids[loser]),
                on_call[loser].1,
                Some(on_call[loser].1 + 1)
            ),
            "round {round}: the loser's read is stale"
        );
        let now = load_all(&*store, &ids).await;
        assert_eq!(now[winner], on_call[winner], "round {round}: untouched");
        assert_eq!(now[loser], (0, on_call[loser].1 + 1), "round {round}");
        // Back on duty, for the next round.
        committed_versions(
            store
                .commit(commit_of(vec![write(ids[loser], now[loser].1, 1)]))
                .await,
        );
    }
}

/// Invariant: `load_many` returns one snapshot per key, in the order given, each what `load`
/// returns for it (value, version, last-modified), `None` for a key that does not exist and the
/// same snapshot for a key named twice; no keys, no snapshots.
pub async fn store_load_many_returns_the_keys_in_order_and_none_for_a_missing_one(
    store: &dyn EntityStore,
) {
    let codec = EntityCodec::of::<Counter>();
    assert!(store.load_many(&[]).await.unwrap().is_empty());
    let ids = insert_counters(store, &[10, 20, 30]).await;
    committed_versions(store.commit(commit_of(vec![write(ids[1], 1, 21)])).await);
    committed_versions(
        store
            .commit(commit_of(vec![write(ids[2], 1, 31), write(ids[1], 2, 22)]))
            .await,
    );
    committed_versions(store.commit(commit_of(vec![write(ids[2], 2, 32)])).await);
    assert_eq!(load_all(store, &ids).await, [(10, 1), (22, 3), (32, 3)]);

    let ghost = EntityId::new();
    let order = [Some(2), None, Some(0), Some(1), Some(2)];
    let keys: Vec<(EntityKey, EntityCodec)> = order
        .iter()
        .map(|o| (counter_key(o.map_or(ghost, |i| ids[i])), codec))
        .collect();
    let snaps = store.load_many(&keys).await.unwrap();
    assert_eq!(snaps.len(), keys.len(), "one answer per key");
    for (j, (o, snap)) in order.iter().zip(&snaps).enumerate() {
        match (o, snap) {
            (None, None) => {}
            (Some(i), Some(snap)) => {
                let c = snap.value.as_any().downcast_ref::<Counter>().unwrap();
                let one = store.load(&keys[j].0, codec).await.unwrap().unwrap();
                let expected = one.value.as_any().downcast_ref::<Counter>().unwrap();
                assert_eq!(c, expected, "key {j}: entity {i}'s value");
                assert_eq!(
                    (snap.version, snap.last_modified),
                    (one.version, one.last_modified),
                    "key {j}: entity {i}'s metadata"
                );
            }
            other => panic!("key {j}: expected {o:?}, got {other:?}"),
        }
    }
    let ghosts = [
        (counter_key(ghost), codec),
        (counter_key(EntityId::new()), codec),
    ];
    let snaps = store.load_many(&ghosts).await.unwrap();
    assert!(
        snaps.len() == 2 && snaps.iter().all(Option::is_none),
        "{snaps:?}"
    );
}

/// Invariant: `load_many` sees one instant. One task commits transfers between three counters
/// (multi-write commits of two or three of them, each moving a non-zero amount), while another
/// reads all three with `load_many` as often as it can: every snapshot's total is the starting
/// total (a torn read, one counter before a transfer and another after, would be off), every
/// version only grows from one snapshot to the next, and the last snapshot, taken after the
/// last transfer, is the final state.
pub async fn store_load_many_is_consistent_under_concurrent_transfers(store: Arc<dyn EntityStore>) {
    const COUNTERS: usize = 3;
    const START: u64 = 1_000;
    const TRANSFERS: u64 = 150;
    let ids = insert_counters(&*store, &[START; COUNTERS]).await;
    let keys: Vec<(EntityKey, EntityCodec)> = ids
        .iter()
        .map(|&id| (counter_key(id), EntityCodec::of::<Counter>()))
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut started_tx = Some(started_tx);
            let mut last = vec![(START, 1); COUNTERS];
            let mut snapshots = 0u64;
            loop {
                // Read before the snapshot: the last round starts after the last transfer.
                let finished = done.load(Ordering::SeqCst);
                let snaps = store.load_many(&keys).await.unwrap();
                let now: Vec<(u64, u64)> = snaps
                    .iter()
                    .zip(&keys)
                    .map(|(snap, (key, _))| {
                        let snap = snap.as_ref().expect("every counter exists");
                        let c = snap.value.as_any().downcast_ref::<Counter>().unwrap();
                        assert_eq!(&counter_key(c.id), key, "in the order of the keys");
                        (c.value, snap.version)
                    })
                    .collect();
                assert_eq!(
                    now.iter().map(|s| s.0).sum::<u64>(),
                    START * COUNTERS as u64,
                    "snapshot {snapshots} is torn: {now:?}"
                );
                for (before, after) in last.iter().zip(&now) {
                    assert!(
                        after.1 >= before.1,
                        "versions only grow: {last:?} then {now:?}"
                    );
                }
                last = now;
                snapshots += 1;
                if let Some(tx) = started_tx.take() {
                    let _ = tx.send(());
                }
                if finished {
                    return (snapshots, last);
                }
            }
        })
    };
    started.await.unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut state = vec![(START, 1u64); COUNTERS];
    for _ in 0..TRANSFERS {
        let mut picked: Vec<usize> = (0..COUNTERS).collect();
        rng.shuffle(&mut picked);
        picked.truncate(rng.usize(2..=COUNTERS));
        // From the richest of the picked to the others: never below zero.
        picked.sort_by_key(|&i| std::cmp::Reverse(state[i].0));
        let receivers = picked.len() as u64 - 1;
        let amount = rng.u64(1..=5);
        let mut next = state.clone();
        for (j, &i) in picked.iter().enumerate() {
            if j == 0 {
                next[i].0 -= amount * receivers;
            } else {
                next[i].0 += amount;
            }
            next[i].1 += 1;
        }
        let writes = picked
            .iter()
            .map(|&i| write(ids[i], state[i].1, next[i].0))
            .collect();
        // The only writer: every transfer applies.
        committed_versions(store.commit(commit_of(writes)).await);
        state = next;
        tokio::task::yield_now().await;
    }
    done.store(true, Ordering::SeqCst);
    let (snapshots, last) = reader.await.unwrap();
    assert!(snapshots >= 2, "read before and after the transfers");
    assert_eq!(last, state, "the last snapshot is the final state");
    assert_eq!(load_all(&*store, &ids).await, state);
}

#[cfg(test)]
mod tests {
    /// Invariant: every case of this file (each `pub async fn`) has its line in
    /// `backend_suite!`, so a new case runs on every backend or the build's tests fail.
    #[test]
    fn every_case_is_instantiated_by_backend_suite() {
        let source = include_str!("suite.rs");
        let (_, rest) = source
            .split_once("macro_rules! backend_suite {")
            .expect("the macro is defined here");
        let (body, _) = rest.split_once("\n}\n").expect("the macro ends");
        let cases: Vec<&str> = source
            .lines()
            .filter_map(|line| line.strip_prefix("pub async fn "))
            .filter_map(|line| line.split(['(', '<']).next())
            .collect();
        assert!(cases.len() >= 19, "found the cases: {cases:?}");
        let missing: Vec<&&str> = cases
            .iter()
            .filter(|case| !body.contains(&format!("$backend, {case}")))
            .collect();
        assert!(
            missing.is_empty(),
            "cases not instantiated by backend_suite!: {missing:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Calls over several entities, and nested calls that compose (issue #10), on every backend.

/// An account of the bank cases.
#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "suite::BankAccount")]
pub struct BankAccount {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

/// A transfer that would overdraw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdraw;

impl std::fmt::Display for Overdraw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("would overdraw")
    }
}

#[with_conflict_resolution(
    pre_ecs(on_lose = "requeue", staging_timeout_ms = 0),
    occ(max_retries = 100, base_delay_ms = 0, max_delay_ms = 2)
)]
async fn bank_transfer(
    from: &mut BankAccount,
    to: &mut BankAccount,
    amount: i64,
) -> Result<(), Overdraw> {
    if from.balance < amount {
        return Err(Overdraw);
    }
    from.balance -= amount;
    // An await between the two halves: another task runs here.
    tokio::task::yield_now().await;
    to.balance += amount;
    Ok(())
}

#[with_conflict_resolution(occ(max_retries = 100, base_delay_ms = 0, max_delay_ms = 2))]
async fn bank_total(
    #[read] a: &BankAccount,
    #[read] b: &BankAccount,
    #[read] c: &BankAccount,
) -> i64 {
    a.balance + b.balance + c.balance
}

/// Invariant (a Jepsen-style bank): 10 accounts, 8 tasks with mixed priorities making random
/// transfers that refuse to overdraw, with an await in the body, over both orders of every
/// pair. Money is conserved, no account goes negative, every call ends with one outcome, and
/// each account ends at its initial balance plus exactly the transfers its callers were told
/// committed; concurrent three-account reads always see a state some serial order produced
/// (their sum never exceeds the total and is never negative).
pub async fn bank_transfers_conserve_money_and_match_what_callers_were_told(
    rt: Runtime,
    transfers_per_task: usize,
) {
    const ACCOUNTS: usize = 10;
    const INITIAL: i64 = 100;
    let mut hs = Vec::new();
    for _ in 0..ACCOUNTS {
        hs.push(
            rt.insert(BankAccount {
                id: EntityId::new(),
                balance: INITIAL,
            })
            .await
            .unwrap(),
        );
    }
    let hs = Arc::new(hs);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let hs = hs.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t);
            let priority = [
                OperationPriority::LOW,
                OperationPriority::NORMAL,
                OperationPriority::HIGH,
            ][t as usize % 3];
            let mut delta = vec![0i64; ACCOUNTS];
            let (mut committed, mut refused, mut preempted) = (0u64, 0u64, 0u64);
            for _ in 0..transfers_per_task {
                let from = rng.usize(..ACCOUNTS);
                let to = (from + 1 + rng.usize(..ACCOUNTS - 1)) % ACCOUNTS;
                let amount = rng.i64(1..=40);
                let r = conflict_runtime::operation::scope()
                    .priority(priority)
                    .run(bank_transfer(&hs[from], &hs[to], amount))
                    .await;
                match r {
                    Ok(done) => {
                        assert_eq!(done.versions.len(), 2);
                        delta[from] -= amount;
                        delta[to] += amount;
                        committed += 1;
                    }
                    Err(ConflictError::Body(Overdraw)) => refused += 1,
                    // A LOW transfer past its grace period when a higher one arrives; nothing
                    // of it was committed.
                    Err(ConflictError::Preempted { .. }) => preempted += 1,
                    Err(e) => panic!("a transfer ended {e}"),
                }
            }
            (delta, committed, refused, preempted)
        }));
    }
    let reader = {
        let hs = hs.clone();
        tokio::spawn(async move {
            let mut reads = 0u64;
            for i in 0..200usize {
                let (a, b, c) = (i % ACCOUNTS, (i + 3) % ACCOUNTS, (i + 7) % ACCOUNTS);
                let sum = bank_total(&hs[a], &hs[b], &hs[c]).await.unwrap().value;
                assert!(
                    (0..=INITIAL * ACCOUNTS as i64).contains(&sum),
                    "a torn read: {sum}"
                );
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        })
    };
    let mut delta = vec![0i64; ACCOUNTS];
    let (mut committed, mut refused, mut preempted) = (0u64, 0u64, 0u64);
    for t in tasks {
        let (d, c, r, p) = t.await.unwrap();
        preempted += p;
        for (total, x) in delta.iter_mut().zip(d) {
            *total += x;
        }
        committed += c;
        refused += r;
    }
    assert_eq!(reader.await.unwrap(), 200);
    let mut sum = 0;
    for (h, d) in hs.iter().zip(&delta) {
        let now = h.load().await.unwrap().value.balance;
        assert!(now >= 0, "an account went negative: {now}");
        assert_eq!(
            now,
            INITIAL + d,
            "an account differs from what its callers were told"
        );
        sum += now;
    }
    assert_eq!(sum, INITIAL * ACCOUNTS as i64, "money is conserved");
    let m = rt.metrics();
    assert_eq!(
        committed + refused + preempted,
        8 * transfers_per_task as u64
    );
    assert_eq!(m.outcome(OutcomeKind::Preempted), preempted);
    assert_eq!(m.outcome(OutcomeKind::Committed), committed + 200);
    assert_eq!(m.outcome(OutcomeKind::BodyError), refused);
    assert_eq!(
        m.submitted,
        committed + refused + preempted + 200,
        "every call ended exactly once"
    );
    assert!(
        committed > 0 && refused > 0,
        "both outcomes exercised: {committed} {refused}"
    );
}

#[with_conflict_resolution(occ(max_retries = 5, base_delay_ms = 0))]
async fn add_line(cart: &mut BankAccount, line: i64) -> i64 {
    cart.balance = cart.balance * 10 + line;
    cart.balance
}

/// The parent: adds two lines to `cart` through nested calls, then fails if `fail`; its first
/// attempt conflicts (an outside writer moves `order` on) when `conflict_once` is set.
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 3, base_delay_ms = 0))]
async fn checkout(
    order: &mut BankAccount,
    cart: Handle<BankAccount>,
    myself: Handle<BankAccount>,
    fail: bool,
    conflict_once: Arc<std::sync::atomic::AtomicBool>,
) -> Result<i64, Overdraw> {
    add_line(&cart, 2).await.expect("composes");
    add_line(&cart, 3).await.expect("composes");
    if conflict_once.swap(false, Ordering::SeqCst) {
        // Another writer commits on this call's own entity, so this attempt conflicts.
        conflict_runtime::operation::scope()
            .detached()
            .run(add_line(&myself, 9))
            .await
            .expect("a detached call commits on its own");
    }
    order.balance += 1;
    if fail {
        return Err(Overdraw);
    }
    Ok(order.balance)
}

/// Invariant: nested calls commit with their parent, all or nothing. A parent that fails after
/// its children leaves nothing of them; a parent whose attempt conflicts and runs again applies
/// its children once, on its fresh snapshot (cart `23`, not `2323`); each nested call ends once:
/// `RolledBack` for the attempts that did not commit, `Committed` for the one that did.
pub async fn nested_calls_commit_with_their_parent_and_only_once(rt: Runtime) {
    let order = rt
        .insert(BankAccount {
            id: EntityId::new(),
            balance: 0,
        })
        .await
        .unwrap();
    let cart = rt
        .insert(BankAccount {
            id: EntityId::new(),
            balance: 0,
        })
        .await
        .unwrap();
    let never = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let e = checkout(&order, cart.clone(), order.clone(), true, never.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, ConflictError::Body(Overdraw)), "{e}");
    let c = cart.load().await.unwrap();
    assert_eq!(
        (c.value.balance, c.version),
        (0, 1),
        "the failed parent's children left nothing"
    );
    assert_eq!(rt.metrics().outcome(OutcomeKind::RolledBack), 2);

    let once = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let done = checkout(&order, cart.clone(), order.clone(), false, once)
        .await
        .unwrap();
    assert_eq!(done.attempts, 2, "the first attempt conflicted");
    let c = cart.load().await.unwrap();
    assert_eq!(
        (c.value.balance, c.version),
        (23, 2),
        "children applied once, one version"
    );
    assert_eq!(done.version_of(cart.key()), Some(2));
    let o = order.load().await.unwrap();
    assert_eq!(
        (o.value.balance, o.version),
        (10, 3),
        "the detached write (9), then the parent (+1)"
    );
    let m = rt.metrics();
    // 2 rolled back by the failed parent, 2 by the conflicting attempt, 2 committed, plus the
    // detached call.
    assert_eq!(m.outcome(OutcomeKind::RolledBack), 4);
    assert_eq!(m.outcome(OutcomeKind::Committed), 1 + 2 + 1);
    assert_eq!(m.outcome(OutcomeKind::BodyError), 1);
    assert_eq!(m.submitted, 4 + 4 + 1);
}

#[with_conflict_resolution(
    pre_ecs(on_lose = "reject"),
    occ(max_retries = 20, base_delay_ms = 0, max_delay_ms = 1)
)]
async fn reach_reject(mine: &mut BankAccount, other: Handle<BankAccount>) -> i64 {
    tokio::task::yield_now().await;
    add_line(&other, 1).await.map(|c| c.value).unwrap_or(-1);
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    mine.balance += 1;
    mine.balance
}

#[with_conflict_resolution(
    pre_ecs(on_lose = "requeue"),
    occ(max_retries = 20, base_delay_ms = 0, max_delay_ms = 1)
)]
async fn reach_requeue(mine: &mut BankAccount, other: Handle<BankAccount>) -> i64 {
    tokio::task::yield_now().await;
    add_line(&other, 1).await.map(|c| c.value).unwrap_or(-1);
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    mine.balance += 1;
    mine.balance
}

/// Invariant: two parents that reach for each other's entity through nested calls (product ->
/// cart beside cart -> product), each holding its own and awaiting, never hang, in `reject` and
/// `requeue` alike: nested calls never wait, and the version compare lets one commit and makes
/// the other run again. Every call ends; what committed is exactly what callers were told.
pub async fn cross_nested_calls_never_hang(rt: Runtime) {
    for requeue in [false, true] {
        let x = rt
            .insert(BankAccount {
                id: EntityId::new(),
                balance: 0,
            })
            .await
            .unwrap();
        let y = rt
            .insert(BankAccount {
                id: EntityId::new(),
                balance: 0,
            })
            .await
            .unwrap();
        let mut calls = Vec::new();
        for i in 0..6 {
            let (mine, other) = if i % 2 == 0 {
                (x.clone(), y.clone())
            } else {
                (y.clone(), x.clone())
            };
            calls.push(tokio::spawn(async move {
                if requeue {
                    reach_requeue(&mine, other).await.is_ok()
                } else {
                    reach_reject(&mine, other).await.is_ok()
                }
            }));
        }
        let ok = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            futures_util::future::join_all(calls),
        )
        .await
        .expect("cross-nested calls hung")
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count() as i64;
        assert!(ok >= 1);
        // Each committed parent added 1 to its own entity and one nested line (a digit 1) to
        // the other's: balances are 10^k-style sums whose digit count equals the commits.
        let (vx, vy) = (x.load().await.unwrap(), y.load().await.unwrap());
        assert_eq!(
            vx.version - 1 + vy.version - 1,
            2 * ok as u64,
            "each commit wrote two entities once"
        );
    }
}

#[with_conflict_resolution(occ(max_retries = 5, base_delay_ms = 0))]
async fn read_line(#[read] cart: &BankAccount) -> i64 {
    cart.balance
}

#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 3, base_delay_ms = 0))]
async fn write_then_read(order: &mut BankAccount, cart: Handle<BankAccount>) -> (i64, i64) {
    let written = add_line(&cart, 4).await.unwrap().value;
    let seen = read_line(&cart).await.unwrap().value;
    // The parent's own entity is off limits to its children.
    order.balance += 1;
    (written, seen)
}

/// Invariant: a nested call sees what an earlier nested call of the same attempt wrote (read
/// your writes), and a nested read of it is validated with the parent's commit.
pub async fn nested_calls_read_their_siblings_writes(rt: Runtime) {
    let order = rt
        .insert(BankAccount {
            id: EntityId::new(),
            balance: 0,
        })
        .await
        .unwrap();
    let cart = rt
        .insert(BankAccount {
            id: EntityId::new(),
            balance: 5,
        })
        .await
        .unwrap();
    let done = write_then_read(&order, cart.clone()).await.unwrap();
    assert_eq!(done.value, (54, 54));
    assert_eq!(cart.load().await.unwrap().version, 2, "written once");
}

// ---------------------------------------------------------------------------------------------
// Creating and deleting entities (issue #10), on every backend.

fn delete_of(id: EntityId, expected_version: u64) -> Delete {
    Delete {
        key: counter_key(id),
        expected_version,
    }
}

fn commit_changes(writes: Vec<Write>, deletes: Vec<Delete>, reads: Vec<Read>) -> Commit {
    Commit {
        deletes,
        reads,
        ..commit_of(writes)
    }
}

/// Whether `id` holds no entity (never stored, or deleted).
async fn is_gone(store: &dyn EntityStore, id: EntityId) -> bool {
    store
        .load(&counter_key(id), EntityCodec::of::<Counter>())
        .await
        .unwrap()
        .is_none()
}

/// Invariant: a delete goes through the version compare and leaves a tombstone that keeps the
/// key's versions counting. A stale delete changes nothing; after the delete, loads (single and
/// together) find nothing, and every write, delete or read that expects a live version
/// conflicts with no version found; a create (a write expecting 0, or an insert) fills the
/// tombstone at its version + 1, and a create over a live entity conflicts.
pub async fn store_delete_leaves_a_tombstone_that_keeps_counting_versions(store: &dyn EntityStore) {
    let id = insert_counters(store, &[1]).await[0];
    committed_versions(store.commit(commit_of(vec![write(id, 1, 2)])).await);
    let stale = conflict(
        store
            .commit(commit_changes(vec![], vec![delete_of(id, 1)], vec![]))
            .await,
    );
    assert_eq!(stale, (counter_key(id), 1, Some(2)), "a stale delete");
    assert_eq!(load_counter(store, id).await, (2, 2), "nothing deleted");

    let (versions, _) = committed_versions(
        store
            .commit(commit_changes(vec![], vec![delete_of(id, 2)], vec![]))
            .await,
    );
    assert!(versions.is_empty(), "versions are per write: {versions:?}");
    assert!(is_gone(store, id).await, "deleted");
    let together = store
        .load_many(&[(counter_key(id), EntityCodec::of::<Counter>())])
        .await
        .unwrap();
    assert!(together[0].is_none(), "load_many finds no tombstone");

    // Nothing expecting a live version applies to the tombstone (at version 3).
    for expected in [2, 3] {
        let found = conflict(store.commit(commit_of(vec![write(id, expected, 9)])).await);
        assert_eq!(
            found,
            (counter_key(id), expected, None),
            "write at {expected}"
        );
        let found = conflict(
            store
                .commit(commit_changes(
                    vec![],
                    vec![delete_of(id, expected)],
                    vec![],
                ))
                .await,
        );
        assert_eq!(
            found,
            (counter_key(id), expected, None),
            "delete at {expected}"
        );
        let read = Read {
            key: counter_key(id),
            version: expected,
        };
        let other = insert_counters(store, &[0]).await[0];
        let found = conflict(
            store
                .commit(commit_changes(vec![write(other, 1, 1)], vec![], vec![read]))
                .await,
        );
        assert_eq!(
            found,
            (counter_key(id), expected, None),
            "read at {expected}"
        );
        assert_eq!(load_counter(store, other).await, (0, 1), "nothing applied");
    }
    assert!(is_gone(store, id).await, "still deleted");

    // A create continues the versions: 1, 2, tombstone 3, then 4.
    let (versions, _) = committed_versions(store.commit(commit_of(vec![write(id, 0, 40)])).await);
    assert_eq!(versions, [4], "created over the tombstone");
    assert_eq!(load_counter(store, id).await, (40, 4));
    let found = conflict(store.commit(commit_of(vec![write(id, 0, 41)])).await);
    assert_eq!(
        found,
        (counter_key(id), 0, Some(4)),
        "a create over a live entity"
    );
    assert!(matches!(
        store.insert(counter_key(id), counter(id, 42)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    // An insert over a tombstone continues the versions too.
    committed_versions(
        store
            .commit(commit_changes(vec![], vec![delete_of(id, 4)], vec![]))
            .await,
    );
    let again = store
        .insert(counter_key(id), counter(id, 50))
        .await
        .unwrap();
    assert_eq!(again.version, 6, "tombstone 5, then 6");
    assert_eq!(load_counter(store, id).await, (50, 6));

    // A key never seen is created at version 1.
    let fresh = EntityId::new();
    let (versions, _) = committed_versions(store.commit(commit_of(vec![write(fresh, 0, 7)])).await);
    assert_eq!(versions, [1]);
    assert_eq!(load_counter(store, fresh).await, (7, 1));
}

/// Invariant: creates and deletes are all or nothing with a commit's writes and reads. One
/// stale part (a write, a read, a create of a key that holds an entity, a delete of a moved
/// entity) applies nothing: the created key stays empty, the deleted entity stays; with every
/// part current, all of them apply at once.
pub async fn store_creates_and_deletes_are_all_or_nothing(store: &dyn EntityStore) {
    let ids = insert_counters(store, &[10, 20, 30, 40]).await;
    let (a, doomed, read, taken) = (ids[0], ids[1], ids[2], ids[3]);
    let new = EntityId::new();
    let good_read = || Read {
        key: counter_key(read),
        version: 1,
    };
    let attempts: Vec<(&str, Commit)> = vec![
        (
            "a stale write",
            commit_changes(
                vec![write(a, 7, 11), write(new, 0, 1)],
                vec![delete_of(doomed, 1)],
                vec![good_read()],
            ),
        ),
        (
            "a stale read",
            commit_changes(
                vec![write(a, 1, 11), write(new, 0, 1)],
                vec![delete_of(doomed, 1)],
                vec![Read {
                    key: counter_key(read),
                    version: 5,
                }],
            ),
        ),
        (
            "a create of a live key",
            commit_changes(
                vec![write(a, 1, 11), write(new, 0, 1), write(taken, 0, 1)],
                vec![delete_of(doomed, 1)],
                vec![good_read()],
            ),
        ),
        (
            "a stale delete",
            commit_changes(
                vec![write(a, 1, 11), write(new, 0, 1)],
                vec![delete_of(doomed, 3)],
                vec![good_read()],
            ),
        ),
    ];
    for (what, commit) in attempts {
        conflict(
            store
                .commit(commit)
                .await
                .map_err(|e| panic!("{what}: {e}")),
        );
        assert_eq!(load_counter(store, a).await, (10, 1), "{what}: a unchanged");
        assert_eq!(
            load_counter(store, doomed).await,
            (20, 1),
            "{what}: not deleted"
        );
        assert!(is_gone(store, new).await, "{what}: not created");
        assert_eq!(load_counter(store, taken).await, (40, 1), "{what}");
    }
    let (versions, _) = committed_versions(
        store
            .commit(commit_changes(
                vec![write(a, 1, 11), write(new, 0, 1)],
                vec![delete_of(doomed, 1)],
                vec![good_read()],
            ))
            .await,
    );
    assert_eq!(versions, [2, 1], "per write, in order");
    assert_eq!(load_counter(store, a).await, (11, 2));
    assert_eq!(load_counter(store, new).await, (1, 1));
    assert!(is_gone(store, doomed).await);
    assert_eq!(
        load_counter(store, read).await,
        (30, 1),
        "a read bumps nothing"
    );
    // A key both created and deleted in one commit is refused before anything applies.
    let twice = commit_changes(vec![write(new, 0, 2)], vec![delete_of(new, 1)], vec![]);
    assert!(matches!(
        store.commit(twice).await,
        Err(StoreError::DuplicateWrite { .. })
    ));
    assert_eq!(load_counter(store, new).await, (1, 1));
}

/// Invariant: of many concurrent creates of one new key, exactly one applies (at version 1);
/// every other one is a conflict, and the entity holds the winner's value.
pub async fn store_concurrent_creates_of_one_key_let_exactly_one_win(store: Arc<dyn EntityStore>) {
    let id = EntityId::new();
    let tasks: Vec<_> = (1..=8u64)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { (n, store.commit(commit_of(vec![write(id, 0, n)])).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (n, Ok(CommitOutcome::Committed { versions, .. })) => {
                assert_eq!(versions, [1]);
                winners.push(n);
            }
            (_, Ok(CommitOutcome::Conflict { expected: 0, .. })) => {}
            (n, other) => panic!("create {n}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create applies: {winners:?}");
    assert_eq!(load_counter(&*store, id).await, (winners[0], 1));
}

/// What a checkout creates.
#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "suite::Receipt")]
pub struct Receipt {
    #[entity(id)]
    id: EntityId,
    amount: i64,
}

#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 5, base_delay_ms = 0))]
async fn pay_and_close(
    till: &mut BankAccount,
    cart: &mut BankAccount,
    rt: Runtime,
    receipt: EntityId,
    fail: bool,
) -> Result<Handle<Receipt>, String> {
    let made = rt
        .insert(Receipt {
            id: receipt,
            amount: cart.balance,
        })
        .await
        .map_err(|e| e.to_string())?;
    till.balance += cart.balance;
    conflict_runtime::operation::delete(cart).map_err(|e| e.to_string())?;
    if fail {
        return Err("declined".into());
    }
    Ok(made)
}

/// Invariant: a call creates and deletes entities atomically with its writes. A call that
/// fails after creating a receipt and deleting the cart leaves all three entities as they
/// were; one that commits does all three in one commit (the till's new version, the cart's
/// tombstone and the receipt are in `Committed.versions`), after which the cart's handle gets
/// `NotFound`, a call on it ends `NotFound` without running, and creating the receipt again is
/// `AlreadyExists`.
pub async fn a_call_creates_and_deletes_entities_all_or_nothing(rt: Runtime) {
    let till = rt
        .insert(BankAccount {
            id: EntityId::new(),
            balance: 100,
        })
        .await
        .unwrap();
    let cart = rt
        .insert(BankAccount {
            id: EntityId::new(),
            balance: 7,
        })
        .await
        .unwrap();
    let receipt = EntityId::new();
    let receipt_key = EntityKey::new(Receipt::TYPE_NAME, receipt);
    let e = pay_and_close(&till, &cart, rt.clone(), receipt, true)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConflictError::Body(ref m) if m == "declined"),
        "{e}"
    );
    assert_eq!(till.load().await.unwrap().version, 1, "the till unchanged");
    assert_eq!(
        cart.load().await.unwrap().version,
        1,
        "the cart not deleted"
    );
    assert!(matches!(
        rt.handle::<Receipt>(receipt).load().await,
        Err(StoreError::NotFound { .. })
    ));

    let done = pay_and_close(&till, &cart, rt.clone(), receipt, false)
        .await
        .unwrap();
    assert_eq!(done.version_of(till.key()), Some(2));
    assert_eq!(done.version_of(cart.key()), Some(2), "the cart's tombstone");
    assert_eq!(
        done.version_of(&receipt_key),
        Some(1),
        "the receipt, created"
    );
    assert_eq!(done.versions.len(), 3);
    let r = done.value.load().await.unwrap();
    assert_eq!((r.value.amount, r.version), (7, 1));
    assert_eq!(till.load().await.unwrap().value.balance, 107);
    assert!(matches!(
        cart.load().await,
        Err(StoreError::NotFound { .. })
    ));

    let before = rt.metrics().submitted;
    match pay_and_close(&till, &cart, rt.clone(), EntityId::new(), false).await {
        Err(ConflictError::Store(StoreError::NotFound { key })) => assert_eq!(&key, cart.key()),
        other => panic!("a call on a deleted entity: {other:?}"),
    }
    assert_eq!(rt.metrics().submitted, before + 1);
    let again = BankAccount {
        id: EntityId::new(),
        balance: 1,
    };
    let other_cart = rt.insert(again).await.unwrap();
    match pay_and_close(&till, &other_cart, rt.clone(), receipt, false).await {
        Err(ConflictError::Body(m)) => assert!(m.contains("already exists"), "{m}"),
        other => panic!("a second receipt under one id: {other:?}"),
    }
    assert_eq!(
        till.load().await.unwrap().value.balance,
        107,
        "nothing applied"
    );
    assert_eq!(other_cart.load().await.unwrap().version, 1);
}

#[with_conflict_resolution(
    pre_ecs(on_lose = "requeue", staging_timeout_ms = 0),
    occ(max_retries = 1000, base_delay_ms = 0, max_delay_ms = 1)
)]
async fn bump_or_close(c: &mut BankAccount, close: bool) -> i64 {
    tokio::task::yield_now().await;
    if close {
        conflict_runtime::operation::delete(c).expect("a written parameter");
    } else {
        c.balance += 1;
    }
    c.balance
}

/// Invariant: a delete racing with writers loses no update and resurrects nothing. Tasks
/// increment an account while one task deletes it part-way: every increment either committed
/// before the delete (so the tombstone's version is 1 + the increments committed + 1, and the
/// deleting call saw exactly that many) or ended `NotFound`; afterwards every call ends
/// `NotFound` and the entity stays deleted.
pub async fn a_delete_racing_with_writers_loses_nothing_and_resurrects_nothing(rt: Runtime) {
    let acct = rt
        .insert(BankAccount {
            id: EntityId::new(),
            balance: 0,
        })
        .await
        .unwrap();
    let committed = Arc::new(AtomicU64::new(0));
    let gone = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (acct, committed, gone) = (acct.clone(), committed.clone(), gone.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                match bump_or_close(&acct, false).await {
                    Ok(_) => {
                        committed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(ConflictError::Store(StoreError::NotFound { .. })) => {
                        gone.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("an increment: {e}"),
                }
            }
        }));
    }
    while committed.load(Ordering::SeqCst) < 20 {
        tokio::task::yield_now().await;
    }
    let closed = bump_or_close(&acct, true).await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let (n, missed) = (
        committed.load(Ordering::SeqCst),
        gone.load(Ordering::SeqCst),
    );
    assert_eq!(n + missed, 4 * 40, "every call ended once");
    assert_eq!(
        i64::try_from(n).unwrap(),
        closed.value,
        "the delete saw every increment committed"
    );
    assert_eq!(
        closed.version,
        n + 2,
        "insert, the increments, the tombstone"
    );
    assert!(matches!(
        acct.load().await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        bump_or_close(&acct, false).await,
        Err(ConflictError::Store(StoreError::NotFound { .. }))
    ));
}
