//! Generated workloads through the runtime, each history checked by `conflict-check`.
//!
//! Every case runs on tokio's paused clock (one thread, time advancing only when every task
//! waits), so a case's timing is its own: calls start at generated instants, with generated
//! priorities and `on_lose`, some bodies panic, some callers drop their call after a generated
//! delay (cancellation), commits may be slow (so that a dropped call's commit is in flight),
//! and the runtime may be shut down at a generated instant. The recorded history must pass
//! every check of `conflict_check::check`.
//!
//! A failing case prints its workload, and proptest saves its seed in
//! `tests/proptest-regressions/history.txt` (replayed first on the next run); a whole run can
//! be replayed with `PROPTEST_RNG_SEED=<seed>`, and `PROPTEST_CASES=<n>` runs more cases.
//!
//! The last tests feed the checker histories from a store whose compare is broken, and show
//! that it reports them.

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use conflict_check::{Effect, History, Report, Stats, Violation};
use conflict_runtime::entity::EntityKey;
use conflict_runtime::operation::scope;
use conflict_runtime::prelude::*;
use conflict_runtime::store::{
    Commit, CommitOutcome, EntityCodec, EntityStore, MemoryStore, Snapshot, StoreFuture,
    StoredValue, Write,
};
use conflict_tests::faults::SlowCommits;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

/// A register holding a counter: every committed call adds one, and returns what it read.
#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "history::Reg")]
struct Reg {
    #[entity(id)]
    id: EntityId,
    n: u64,
}

/// What a body does before it writes: wait (so that calls overlap, and can be preempted or
/// cancelled mid-body), then maybe panic.
#[derive(Debug, Clone, Copy)]
struct Work {
    ms: u64,
    panic: bool,
}

const PANIC_MARK: &str = "history: generated panic";

async fn work(w: Work) {
    if w.ms > 0 {
        tokio::time::sleep(Duration::from_millis(w.ms)).await;
    }
    assert!(!w.panic, "{PANIC_MARK}");
}

/// Staged: a short window collects a group; a short grace lets higher priorities preempt.
#[with_conflict_resolution(
    pre_ecs(staging_timeout_ms = 2, grace_period_ms = 3),
    occ(max_retries = 3, base_delay_ms = 1, max_delay_ms = 4)
)]
async fn bump(r: &mut Reg, w: Work) -> u64 {
    let before = r.n;
    work(w).await;
    r.n = before + 1;
    before
}

/// Not staged: overlapping bodies meet at the compare-and-commit and retry.
#[with_conflict_resolution(
    pre_ecs = false,
    occ(max_retries = 2, base_delay_ms = 1, max_delay_ms = 4)
)]
async fn bump_occ(r: &mut Reg, w: Work) -> u64 {
    let before = r.n;
    work(w).await;
    r.n = before + 1;
    before
}

/// Two entities in one commit, staged on both.
#[with_conflict_resolution(
    pre_ecs(staging_timeout_ms = 2, grace_period_ms = 3),
    occ(max_retries = 3, base_delay_ms = 1, max_delay_ms = 4)
)]
async fn bump_two(a: &mut Reg, b: &mut Reg, w: Work) -> (u64, u64) {
    let before = (a.n, b.n);
    work(w).await;
    a.n = before.0 + 1;
    b.n = before.1 + 1;
    before
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Staged,
    Occ,
    /// On both entities, `first` first.
    Two,
}

#[derive(Debug, Clone)]
struct Spec {
    kind: Kind,
    /// The entity (the first one for `Two`).
    first: usize,
    priority: u8,
    requeue: bool,
    start_ms: u64,
    work: Work,
    /// Drop the call this long after invoking it.
    cancel_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Workload {
    calls: Vec<Spec>,
    /// Shut the runtime down at this instant (with a short drain timeout).
    shutdown_ms: Option<u64>,
    /// Commits wait this long before and after applying.
    slow_commit_ms: u64,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop_oneof![Just(Kind::Staged), Just(Kind::Occ), Just(Kind::Two)],
        0..2_usize,
        1..=10_u8,
        any::<bool>(),
        0..12_u64,
        (0..6_u64, prop::bool::weighted(0.1)),
        prop::option::weighted(0.25, 0..10_u64),
    )
        .prop_map(
            |(kind, first, priority, requeue, start_ms, (ms, panic), cancel_ms)| Spec {
                kind,
                first,
                priority,
                requeue,
                start_ms,
                work: Work { ms, panic },
                cancel_ms,
            },
        )
}

fn workload() -> impl Strategy<Value = Workload> {
    (
        prop::collection::vec(spec(), 1..10),
        prop::option::weighted(0.3, 0..25_u64),
        prop_oneof![Just(0_u64), 1..3_u64],
    )
        .prop_map(|(calls, shutdown_ms, slow_commit_ms)| Workload {
            calls,
            shutdown_ms,
            slow_commit_ms,
        })
}

/// Keeps the generated panics out of the test output (the runtime catches them; they are
/// part of the workload), and every other panic as it was.
fn quiet_generated_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let generated = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|s| s.contains(PANIC_MARK));
            if !generated {
                default(info);
            }
        }));
    });
}

fn paused<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// `fut`'s output, or `None` if `cancel_ms` passes first (the future is dropped then).
async fn within<F: std::future::Future>(cancel_ms: Option<u64>, fut: F) -> Option<F::Output> {
    match cancel_ms {
        Some(ms) => tokio::time::timeout(Duration::from_millis(ms), fut)
            .await
            .ok(),
        None => Some(fut.await),
    }
}

/// Runs one call and records it (the guard records `Dropped` if the timeout drops the call).
async fn run_call(history: History, h: [Handle<Reg>; 2], s: Spec) {
    tokio::time::sleep(Duration::from_millis(s.start_ms)).await;
    let a = h[s.first].clone();
    let b = h[1 - s.first].clone();
    let p = OperationPriority::new(s.priority).expect("1..=10 is a priority");
    let on_lose = if s.requeue {
        OnLose::Requeue
    } else {
        OnLose::Reject
    };
    match s.kind {
        Kind::Staged | Kind::Occ => {
            let name = if matches!(s.kind, Kind::Staged) {
                "bump"
            } else {
                "bump_occ"
            };
            let call = history.invoke(name, [a.key().clone()]);
            let fut = async {
                let scoped = scope().priority(p).on_lose(on_lose);
                if matches!(s.kind, Kind::Staged) {
                    scoped.run(bump(&a, s.work)).await
                } else {
                    scoped.run(bump_occ(&a, s.work)).await
                }
            };
            match within(s.cancel_ms, fut).await {
                Some(Ok(c)) => {
                    let read = c.value;
                    call.committed(
                        &c,
                        [Effect::write(a.key().clone(), c.version, read, read + 1)],
                    );
                }
                Some(Err(e)) => call.failed(&e),
                None => drop(call),
            }
        }
        Kind::Two => {
            let call = history.invoke("bump_two", [a.key().clone(), b.key().clone()]);
            let fut = scope()
                .priority(p)
                .on_lose(on_lose)
                .run(bump_two(&a, &b, s.work));
            match within(s.cancel_ms, fut).await {
                Some(Ok(c)) => {
                    let (ra, rb) = c.value;
                    let va = c.version_of(a.key()).expect("a two-entity commit wrote a");
                    let vb = c.version_of(b.key()).expect("a two-entity commit wrote b");
                    call.committed(
                        &c,
                        [
                            Effect::write(a.key().clone(), va, ra, ra + 1),
                            Effect::write(b.key().clone(), vb, rb, rb + 1),
                        ],
                    );
                }
                Some(Err(e)) => call.failed(&e),
                None => drop(call),
            }
        }
    }
}

/// Runs `w` on a fresh runtime over `store` and returns the checked history.
fn run(w: &Workload, store: Arc<dyn EntityStore>) -> Report {
    // Far above what a case publishes, so that no event is lost before the drain.
    run_with_events(w, store, 1 << 16)
}

/// [`run`] with an event ring of `event_capacity`.
fn run_with_events(w: &Workload, store: Arc<dyn EntityStore>, event_capacity: usize) -> Report {
    paused(async {
        let rt = Runtime::builder()
            .shared_store(store)
            .event_capacity(event_capacity)
            .build()
            .expect("runtime configuration");
        let mut events = rt.subscribe();
        let history = History::new();
        let mut handles = Vec::new();
        for _ in 0..2 {
            let h = rt
                .insert(Reg {
                    id: EntityId::new(),
                    n: 0,
                })
                .await
                .expect("insert");
            history.initial(h.key().clone(), 1, Some(0));
            handles.push(h);
        }
        let handles: [Handle<Reg>; 2] = [handles[0].clone(), handles[1].clone()];
        let mut tasks = tokio::task::JoinSet::new();
        for s in &w.calls {
            tasks.spawn(run_call(history.clone(), handles.clone(), s.clone()));
        }
        if let Some(ms) = w.shutdown_ms {
            let rt = rt.clone();
            tasks.spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                rt.shutdown(Duration::from_millis(3)).await;
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("a workload task does not panic (bodies' panics are caught)");
        }
        // Ends what is still in flight (the commits of dropped calls settle before it returns).
        let report = rt.shutdown(Duration::from_secs(1)).await;
        assert_eq!(report.still_running, 0, "{report:?}");
        for h in &handles {
            let call = history.invoke("load", [h.key().clone()]);
            let last = h.load().await.expect("load");
            let n = last.value.n;
            call.loaded(h.key().clone(), &last, n);
        }
        history.drain(&mut events);
        history.check()
    })
}

fn memory() -> Arc<dyn EntityStore> {
    Arc::new(MemoryStore::new())
}

fn slow(ms: u64) -> Arc<dyn EntityStore> {
    let store = SlowCommits::new(memory());
    store.delay_before(Duration::from_millis(ms));
    store.delay_after(Duration::from_millis(ms));
    store
}

fn add(total: &mut Stats, s: &Stats) {
    total.calls += s.calls;
    total.committed_calls += s.committed_calls;
    total.dropped_calls += s.dropped_calls;
    total.operations += s.operations;
    total.event_only_commits += s.event_only_commits;
    total.entities += s.entities;
    total.writes += s.writes;
    total.reads += s.reads;
    total.values_checked += s.values_checked;
    total.multi_entity_commits += s.multi_entity_commits;
    total.staging_decisions += s.staging_decisions;
    total.preemptions += s.preemptions;
}

/// Invariant: every generated history passes every check (exactly-once endings, gap-free
/// versions, per-entity linearizability, serializable two-entity commits, top-ranked staging
/// decisions). And the cases, taken together, exercised each check: a run whose workloads
/// never dropped a call, never lost a staging group or never wrote two entities at once would
/// pass vacuously.
#[test]
fn generated_workloads_have_valid_histories() {
    quiet_generated_panics();
    let mut runner = TestRunner::new(Config {
        // `PROPTEST_CASES` explores further (e.g. 5000); the default keeps the file at seconds.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(128),
        max_shrink_iters: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/history.txt",
        ))),
        ..Config::default()
    });
    let total = Mutex::new(Stats::default());
    let result = runner.run(&workload(), |w| {
        let store = if w.slow_commit_ms == 0 {
            memory()
        } else {
            slow(w.slow_commit_ms)
        };
        let report = run(&w, store);
        prop_assert!(report.is_ok(), "{report}\nworkload: {w:#?}");
        // Every call and both final loads were recorded, and every call's operation was seen.
        prop_assert_eq!(report.stats.calls, w.calls.len() + 2);
        prop_assert!(report.stats.operations <= w.calls.len());
        add(
            &mut total
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            &report.stats,
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let total = total
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert!(total.committed_calls > 0, "{total:?}");
    assert!(total.dropped_calls > 0, "{total:?}");
    assert!(total.multi_entity_commits > 0, "{total:?}");
    assert!(total.staging_decisions > 0, "{total:?}");
    assert!(total.values_checked > 0, "{total:?}");
    assert!(total.reads > 0, "{total:?}");
    assert!(total.preemptions > 0, "{total:?}");
    assert!(total.event_only_commits > 0, "{total:?}");
}

/// One hand-picked workload with every feature at once (so that a change that makes the
/// generator miss one still has it checked): a preemption, a rejection, a requeue, a panic,
/// a cancellation during a slow commit, and a two-entity call.
#[test]
fn a_workload_with_every_feature_has_a_valid_history() {
    quiet_generated_panics();
    let s = |kind, first, priority, requeue, start_ms, ms, panic, cancel_ms| Spec {
        kind,
        first,
        priority,
        requeue,
        start_ms,
        work: Work { ms, panic },
        cancel_ms,
    };
    let w = Workload {
        calls: vec![
            // A long LOW body, preempted by the CRITICAL one arriving after its grace.
            s(Kind::Staged, 0, 2, false, 0, 8, false, None),
            s(Kind::Staged, 0, 10, false, 5, 1, false, None),
            // A group on entity 1: HIGH wins, NORMAL is rejected, LOW requeued.
            s(Kind::Staged, 1, 8, false, 0, 1, false, None),
            s(Kind::Staged, 1, 5, false, 0, 1, false, None),
            s(Kind::Staged, 1, 2, true, 0, 1, false, None),
            // A panic, a cancellation mid-commit, a two-entity call.
            s(Kind::Occ, 1, 5, false, 9, 0, true, None),
            s(Kind::Occ, 0, 5, false, 20, 0, false, Some(1)),
            s(Kind::Two, 1, 5, true, 12, 1, false, None),
        ],
        shutdown_ms: None,
        slow_commit_ms: 2,
    };
    let report = run(&w, slow(w.slow_commit_ms));
    assert!(report.is_ok(), "{report}");
    let st = &report.stats;
    assert!(st.preemptions >= 1, "{report}");
    assert!(st.staging_decisions >= 1, "{report}");
    assert!(st.multi_entity_commits >= 1, "{report}");
    assert!(st.dropped_calls >= 1, "{report}");
}

// ---------------------------------------------------------------------------------------------
// The checker catches real defects.

/// A store with a broken compare: a commit that conflicts is applied anyway (its expected
/// versions are replaced by the current ones), so concurrent read-modify-writes overwrite each
/// other. With `claim_expected`, it also reports the version the commit expected + 1 as
/// written, instead of the one it wrote.
struct BlindStore {
    inner: MemoryStore,
    claim_expected: bool,
}

impl EntityStore for BlindStore {
    fn name(&self) -> &'static str {
        "blind"
    }

    fn load<'a>(
        &'a self,
        key: &'a EntityKey,
        codec: EntityCodec,
    ) -> StoreFuture<'a, Option<Snapshot>> {
        self.inner.load(key, codec)
    }

    fn insert(&self, key: EntityKey, value: StoredValue) -> StoreFuture<'_, Snapshot> {
        self.inner.insert(key, value)
    }

    fn commit(&self, commit: Commit) -> StoreFuture<'_, CommitOutcome> {
        Box::pin(async move {
            let claimed: Vec<u64> = commit
                .writes
                .iter()
                .map(|w| w.expected_version + 1)
                .collect();
            let mut commit = commit;
            loop {
                match self.inner.commit(commit.clone()).await? {
                    CommitOutcome::Committed {
                        versions,
                        last_modified,
                    } => {
                        let versions = if self.claim_expected {
                            claimed
                        } else {
                            versions
                        };
                        return Ok(CommitOutcome::Committed {
                            versions,
                            last_modified,
                        });
                    }
                    CommitOutcome::Conflict { .. } => {
                        // The defect: take whatever is there now as what was expected.
                        let codec = EntityCodec::of::<Reg>();
                        let mut writes = Vec::new();
                        for w in &commit.writes {
                            let now = self.inner.load(&w.key, codec).await?;
                            writes.push(Write {
                                expected_version: now.map_or(0, |s| s.version),
                                ..w.clone()
                            });
                        }
                        commit.writes = writes;
                    }
                }
            }
        })
    }
}

/// Four overlapping read-modify-writes on one entity, no staging: on a sound store one
/// commits per round and the others retry on a fresh snapshot.
fn overlapping_bumps() -> Workload {
    let one = |start_ms| Spec {
        kind: Kind::Occ,
        first: 0,
        priority: 5,
        requeue: false,
        start_ms,
        work: Work {
            ms: 2,
            panic: false,
        },
        cancel_ms: None,
    };
    Workload {
        calls: vec![one(0), one(0), one(0), one(1)],
        shutdown_ms: None,
        slow_commit_ms: 0,
    }
}

/// The same workload on the sound store passes (so what the broken stores fail is theirs).
#[test]
fn overlapping_bumps_on_the_memory_store_pass() {
    let report = run(&overlapping_bumps(), memory());
    assert!(report.is_ok(), "{report}");
    assert!(report.stats.values_checked >= 4, "{report}");
}

/// Defect: lost updates, with honest versions. Versions stay gap-free and in real-time
/// order; only the register model sees that a commit read a state older than its
/// predecessor's.
#[test]
fn a_store_that_ignores_conflicts_loses_updates_and_the_checker_says_so() {
    let report = run(
        &overlapping_bumps(),
        Arc::new(BlindStore {
            inner: MemoryStore::new(),
            claim_expected: false,
        }),
    );
    assert!(!report.is_ok(), "{report}");
    assert!(
        report
            .violations
            .iter()
            .all(|v| matches!(v, Violation::StaleValue { .. })),
        "{report}"
    );
    // The three calls that overwrote the first read its predecessor's state (0), not 1.
    let stale: Vec<_> = report
        .violations
        .iter()
        .filter_map(|v| match v {
            Violation::StaleValue {
                found, expected, ..
            } => Some((*found, *expected)),
            _ => None,
        })
        .collect();
    assert!(!stale.is_empty(), "{report}");
    assert!(
        stale.iter().all(|(found, expected)| found < expected),
        "{report}"
    );
}

/// Defect: lost updates reported as one version. The checker sees the duplicate and the
/// versions nobody accounts for.
#[test]
fn a_store_that_reports_the_expected_version_duplicates_versions_and_the_checker_says_so() {
    let report = run(
        &overlapping_bumps(),
        Arc::new(BlindStore {
            inner: MemoryStore::new(),
            claim_expected: true,
        }),
    );
    let duplicate = report
        .violations
        .iter()
        .any(|v| matches!(v, Violation::DuplicateVersion { version: 2, .. }));
    let gap = report
        .violations
        .iter()
        .any(|v| matches!(v, Violation::VersionGap { .. }));
    assert!(duplicate && gap, "{report}");
}

/// A subscription that fell behind lost events: the checker says so instead of passing a
/// history with holes.
#[test]
fn a_history_with_lost_events_is_reported_not_trusted() {
    let report = run_with_events(&overlapping_bumps(), memory(), 4);
    assert!(
        report
            .violations
            .iter()
            .any(|v| matches!(v, Violation::EventsMissed { count } if *count > 0)),
        "{report}"
    );
}
