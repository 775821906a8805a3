//! shuttle scenarios: whole async calls through the public API (staging, preemption, requeue and
//! reject, OCC-only calls, cancellation by a dropped caller future, nested calls, two-entity
//! transfers, shutdown), a few tasks each, under shuttle's random and PCT schedulers. With
//! `--cfg shuttle` the runtime's sync primitives are shuttle's (`conflict-runtime/src/sync.rs`),
//! so the scheduler decides every switch between tasks at every lock and atomic the runtime's
//! protocols use.
//!
//! Each scenario checks, in every schedule, the laws of the contract: every call ends exactly
//! once; committed state is the serial application of the committed calls (versions count the
//! commits, values their sum); a call over several entities commits on all or none; no permit,
//! target or in-flight operation is left behind; nothing hangs (shuttle fails a schedule in which
//! every task is blocked).
//!
//! ```sh
//! scripts/shuttle                         # RUSTFLAGS="--cfg shuttle" ... cargo test --test shuttle
//! SHUTTLE_ITERATIONS=10000 scripts/shuttle # more schedules per scheduler (default 1000)
//! SHUTTLE_REPLAY='<schedule>' scripts/shuttle <scenario> --exact  # replay a failure's schedule
//! ```
//!
//! No timer fires under shuttle: staging windows are off, grace periods and retry delays are
//! zero, and no call has a deadline, so every step is driven by the tasks themselves. A tokio
//! context (paused clock, never driven) is entered only so that shutdown can create the timeout
//! it never reaches.
#![cfg(shuttle)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::Poll;
use std::time::Duration;

use conflict_runtime::operation::OutcomeKind;
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "shuttle::Counter")]
struct Counter {
    #[entity(id)]
    id: EntityId,
    value: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused")
    }
}

/// Read, yield (another task may run), write: a lost update shows as a wrong sum.
async fn bump(c: &mut Counter, n: i64) -> i64 {
    let v = c.value;
    shuttle::future::yield_now().await;
    c.value = v + n;
    c.value
}

#[with_conflict_resolution(
    priority = LOW,
    pre_ecs(on_lose = "requeue", grace_period_ms = 0),
    occ(max_retries = 1000, base_delay_ms = 0)
)]
async fn add_low(c: &mut Counter, n: i64) -> i64 {
    bump(c, n).await
}

#[with_conflict_resolution(
    priority = NORMAL,
    pre_ecs(on_lose = "requeue", grace_period_ms = 0),
    occ(max_retries = 1000, base_delay_ms = 0)
)]
async fn add_normal(c: &mut Counter, n: i64) -> i64 {
    bump(c, n).await
}

#[with_conflict_resolution(
    priority = CRITICAL,
    pre_ecs(on_lose = "requeue", grace_period_ms = 0),
    occ(max_retries = 1000, base_delay_ms = 0)
)]
async fn add_critical(c: &mut Counter, n: i64) -> i64 {
    bump(c, n).await
}

#[with_conflict_resolution(
    priority = NORMAL,
    pre_ecs(on_lose = "reject", grace_period_ms = 0),
    occ(max_retries = 1000, base_delay_ms = 0)
)]
async fn add_or_lose(c: &mut Counter, n: i64) -> i64 {
    bump(c, n).await
}

/// OCC only: no staging, conflicts and retries.
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 1000, base_delay_ms = 0))]
async fn add_occ(c: &mut Counter, n: i64) -> i64 {
    bump(c, n).await
}

/// Moves `n` from `a` to `b` unless `a` would go below zero: one call, two entities.
#[with_conflict_resolution(
    pre_ecs(on_lose = "requeue", grace_period_ms = 0),
    occ(max_retries = 1000, base_delay_ms = 0)
)]
async fn transfer(a: &mut Counter, b: &mut Counter, n: i64) -> Result<(), Refused> {
    if a.value < n {
        return Err(Refused);
    }
    a.value -= n;
    shuttle::future::yield_now().await;
    b.value += n;
    Ok(())
}

/// The same transfer without staging: OCC only, so two of them commit concurrently on the same
/// pair (the store's multi-slot commit must lock in one order).
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 1000, base_delay_ms = 0))]
async fn transfer_occ(a: &mut Counter, b: &mut Counter, n: i64) -> Result<(), Refused> {
    if a.value < n {
        return Err(Refused);
    }
    a.value -= n;
    shuttle::future::yield_now().await;
    b.value += n;
    Ok(())
}

/// Adds to `a` and, through a nested call, to `b`; fails afterwards when `fail`: the nested
/// write then goes with it.
#[with_conflict_resolution(
    pre_ecs(on_lose = "requeue", grace_period_ms = 0),
    occ(max_retries = 1000, base_delay_ms = 0)
)]
async fn add_both(a: &mut Counter, b: Handle<Counter>, n: i64, fail: bool) -> Result<(), Refused> {
    a.value += n;
    add_normal(&b, n).await.map_err(|_| Refused)?;
    if fail {
        return Err(Refused);
    }
    Ok(())
}

/// Runs `scenario` under shuttle: a replay if `SHUTTLE_REPLAY` holds a schedule, else
/// `SHUTTLE_ITERATIONS` (1000) random schedules and as many PCT schedules (depth 3).
fn explore<F, Fut>(scenario: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let run = move || {
        let tokio_rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a tokio context for timers that are created, never reached");
        let _context = tokio_rt.enter();
        shuttle::future::block_on(scenario());
    };
    if let Ok(schedule) = std::env::var("SHUTTLE_REPLAY") {
        shuttle::replay(run, &schedule);
        return;
    }
    let iterations = std::env::var("SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let run = Arc::new(run);
    let random = Arc::clone(&run);
    shuttle::check_random(move || random(), iterations);
    shuttle::check_pct(move || run(), iterations, 3);
}

/// Counter `n` of the scenario (ids fixed, not random: the key order decides the lock and
/// staging order of a call over two entities, so a replayed schedule must meet the same ids).
async fn counter(rt: &Runtime, n: u128, value: i64) -> Handle<Counter> {
    rt.insert(Counter {
        id: EntityId::from_uuid(uuid::Uuid::from_u128(n)),
        value,
    })
    .await
    .expect("insert")
}

/// After every call has ended: nothing in flight, nothing staged, no target held, and every
/// call counted once.
fn assert_settled(rt: &Runtime, calls: u64) {
    let m = rt.metrics();
    assert_eq!(m.in_flight, 0, "an operation is still in flight");
    assert_eq!(m.ended, calls, "calls made and calls ended differ: {m:?}");
    let s = rt.staging_status();
    assert_eq!(s.total_staged, 0, "a staged call or permit leaked");
    assert_eq!(s.executing, 0, "a target is still held");
}

/// Three priorities and an OCC-only call on one counter: the critical and the OCC-only call
/// always commit; the low and normal ones commit or end `Preempted` (grace 0: the critical one
/// may take their target); the counter holds exactly the committed calls' sum, at one version
/// per commit.
#[test]
fn shuttle_mixed_priorities_and_occ_only_keep_every_update() {
    explore(|| async {
        let rt = Runtime::in_memory();
        let c = counter(&rt, 1, 0).await;
        let tasks = [
            shuttle::future::spawn({
                let c = c.clone();
                async move { (1, add_low(&c, 1).await.map(|k| k.version)) }
            }),
            shuttle::future::spawn({
                let c = c.clone();
                async move { (10, add_normal(&c, 10).await.map(|k| k.version)) }
            }),
            shuttle::future::spawn({
                let c = c.clone();
                async move { (100, add_critical(&c, 100).await.map(|k| k.version)) }
            }),
            shuttle::future::spawn({
                let c = c.clone();
                async move { (1000, add_occ(&c, 1000).await.map(|k| k.version)) }
            }),
        ];
        let (mut versions, mut sum) = (Vec::new(), 0);
        for t in tasks {
            match t.await.expect("task") {
                (n, Ok(v)) => {
                    versions.push(v);
                    sum += n;
                }
                (n, Err(ConflictError::Preempted { .. })) if n < 100 => {}
                (n, Err(e)) => panic!("the call adding {n} ended with {e}"),
            }
        }
        versions.sort_unstable();
        let expect: Vec<u64> = (2..2 + versions.len() as u64).collect();
        assert_eq!(versions, expect, "one version per commit, none twice");
        let end = c.load().await.unwrap();
        assert_eq!(
            (end.value.value, end.version),
            (sum, 1 + versions.len() as u64),
            "an update was lost or doubled"
        );
        assert_settled(&rt, 4);
    });
}

/// `reject` losers: each call commits or is rejected (never both, never neither); the counter
/// holds exactly the committed calls' sum.
#[test]
fn shuttle_reject_losers_end_once() {
    explore(|| async {
        let rt = Runtime::in_memory();
        let c = counter(&rt, 1, 0).await;
        let amounts = [1_i64, 10, 100];
        let tasks: Vec<_> = amounts
            .iter()
            .map(|&n| {
                let c = c.clone();
                shuttle::future::spawn(async move { (n, add_or_lose(&c, n).await) })
            })
            .collect();
        let mut sum = 0;
        let mut commits = 0;
        for t in tasks {
            match t.await.expect("task") {
                (n, Ok(_)) => {
                    sum += n;
                    commits += 1;
                }
                (_, Err(ConflictError::Rejected { .. })) => {}
                (_, Err(e)) => panic!("neither committed nor rejected: {e}"),
            }
        }
        assert!(commits >= 1, "somebody wins every group");
        let end = c.load().await.unwrap();
        assert_eq!((end.value.value, end.version), (sum, 1 + commits));
        assert_settled(&rt, 3);
    });
}

/// A low call preempted (grace 0) by a critical one: the critical one commits at its first
/// attempt (a preempted call never commits, and a committing one is waited for, so the
/// critical call never meets an OCC conflict); the low one commits (it began its commit phase
/// first, or ran after) or ends `Preempted`; never both applied from one snapshot.
#[test]
fn shuttle_preemption_loses_no_update() {
    explore(|| async {
        let rt = Runtime::in_memory();
        let c = counter(&rt, 1, 0).await;
        let low = shuttle::future::spawn({
            let c = c.clone();
            async move { add_low(&c, 1).await }
        });
        let high = shuttle::future::spawn({
            let c = c.clone();
            async move { add_critical(&c, 100).await }
        });
        let high = high.await.expect("task").expect("critical commits");
        assert_eq!(
            high.attempts, 1,
            "the critical call met a conflict: a preempted call committed"
        );
        assert_eq!(rt.metrics().occ_conflicts, 0);
        let low_committed = match low.await.expect("task") {
            Ok(_) => true,
            Err(ConflictError::Preempted { .. }) => false,
            Err(e) => panic!("low ended neither committed nor preempted: {e}"),
        };
        let end = c.load().await.unwrap();
        let expect = 100 + i64::from(low_committed);
        assert_eq!(end.value.value, expect, "an update was lost or doubled");
        assert_eq!(end.version, 2 + u64::from(low_committed));
        assert_settled(&rt, 2);
    });
}

/// A caller drops its call after one poll while two others run: the dropped call commits
/// wholly or not at all (its version and amount appear together or not), the others commit,
/// and the dropped call is counted once.
#[test]
fn shuttle_a_dropped_call_ends_once_and_leaks_nothing() {
    explore(|| async {
        let rt = Runtime::in_memory();
        let c = counter(&rt, 1, 0).await;
        let others: Vec<_> = [1_i64, 10]
            .into_iter()
            .map(|n| {
                let c = c.clone();
                shuttle::future::spawn(async move { add_normal(&c, n).await })
            })
            .collect();
        let dropped = shuttle::future::spawn({
            let c = c.clone();
            async move {
                let mut call = pin!(add_normal(&c, 100));
                // `Some(committed)` if the first poll already ended it; then it is dropped.
                std::future::poll_fn(|cx| {
                    Poll::Ready(match call.as_mut().poll(cx) {
                        Poll::Ready(r) => Some(r.is_ok()),
                        Poll::Pending => None,
                    })
                })
                .await
            }
        });
        let finished_first_poll = dropped.await.expect("task");
        for t in others {
            t.await.expect("task").expect("requeue commits");
        }
        let end = c.load().await.unwrap();
        let dropped_applied = end.value.value == 111;
        assert!(
            end.value.value == 11 || dropped_applied,
            "a partial or doubled update: {}",
            end.value.value
        );
        assert_eq!(end.version, 3 + u64::from(dropped_applied));
        if let Some(committed) = finished_first_poll {
            assert_eq!(
                committed, dropped_applied,
                "a call's answer and its effect differ"
            );
        }
        assert_settled(&rt, 3);
    });
}

/// Two opposite transfers and a third on the same pair, one of them OCC-only (so it commits
/// beside a staged one): money is conserved, each transfer applies on both entities or on
/// neither, and none deadlocks.
#[test]
fn shuttle_opposite_transfers_conserve_money() {
    explore(|| async {
        let rt = Runtime::in_memory();
        let (a, b) = (counter(&rt, 1, 5).await, counter(&rt, 2, 5).await);
        let moves = [(true, 3_i64, false), (false, 4, true), (true, 2, false)];
        let tasks: Vec<_> = moves
            .iter()
            .map(|&(forth, n, occ)| {
                let (a, b) = (a.clone(), b.clone());
                shuttle::future::spawn(async move {
                    let (from, to) = if forth { (&a, &b) } else { (&b, &a) };
                    let r = if occ {
                        transfer_occ(from, to, n).await
                    } else {
                        transfer(from, to, n).await
                    };
                    (forth, n, r)
                })
            })
            .collect();
        let mut delta_a = 0;
        let mut commits = 0;
        for t in tasks {
            match t.await.expect("task") {
                (forth, n, Ok(_)) => {
                    delta_a += if forth { -n } else { n };
                    commits += 1;
                }
                (_, _, Err(ConflictError::Body(Refused))) => {}
                (_, _, Err(e)) => panic!("a transfer ended with {e}"),
            }
        }
        let (ea, eb) = (a.load().await.unwrap(), b.load().await.unwrap());
        assert_eq!(
            ea.value.value + eb.value.value,
            10,
            "money was made or lost"
        );
        assert_eq!(
            ea.value.value,
            5 + delta_a,
            "a transfer applied on one side"
        );
        assert_eq!((ea.version, eb.version), (1 + commits, 1 + commits));
        assert_settled(&rt, 3);
    });
}

/// Nested calls commit with their parent: a parent that fails after its nested call takes the
/// nested write with it, so both counters always move together.
#[test]
fn shuttle_nested_calls_commit_with_their_parent() {
    explore(|| async {
        let rt = Runtime::in_memory();
        let (a, b) = (counter(&rt, 1, 0).await, counter(&rt, 2, 0).await);
        let tasks: Vec<_> = [(1_i64, false), (10, true), (100, false)]
            .into_iter()
            .map(|(n, fail)| {
                let (a, b) = (a.clone(), b.clone());
                shuttle::future::spawn(async move { (n, add_both(&a, b, n, fail).await) })
            })
            .collect();
        let mut sum = 0;
        for t in tasks {
            match t.await.expect("task") {
                (n, Ok(_)) => sum += n,
                (_, Err(ConflictError::Body(Refused))) => {}
                (_, Err(e)) => panic!("a parent ended with {e}"),
            }
        }
        assert_eq!(sum, 101, "both parents that do not fail commit");
        let (ea, eb) = (a.load().await.unwrap(), b.load().await.unwrap());
        assert_eq!((ea.value.value, eb.value.value), (101, 101));
        assert_eq!((ea.version, eb.version), (3, 3));
        let m = rt.metrics();
        assert_eq!(m.in_flight, 0);
        assert_eq!(rt.staging_status().total_staged, 0);
    });
}

/// Shutdown while calls run: every call ends once, committed (and counted in the counter) or
/// `ShuttingDown` or `Preempted` (and not), and the metrics agree with what the callers were
/// told.
#[test]
fn shuttle_shutdown_ends_every_call_once() {
    explore(|| async {
        let rt = Runtime::in_memory();
        let c = counter(&rt, 1, 0).await;
        let committed_sum = Arc::new(AtomicI64::new(0));
        let tasks: Vec<_> = [1_i64, 10, 100]
            .into_iter()
            .map(|n| {
                let (c, committed_sum) = (c.clone(), committed_sum.clone());
                shuttle::future::spawn(async move {
                    let r = if n == 100 {
                        add_critical(&c, n).await
                    } else {
                        add_low(&c, n).await
                    };
                    match r {
                        Ok(_) => {
                            committed_sum.fetch_add(n, Ordering::SeqCst);
                            true
                        }
                        Err(ConflictError::ShuttingDown { .. }) => false,
                        Err(ConflictError::Preempted { .. }) if n < 100 => false,
                        Err(e) => panic!("a call ended with {e}"),
                    }
                })
            })
            .collect();
        let report = rt.shutdown(Duration::from_secs(3600)).await;
        let mut commits = 0;
        for t in tasks {
            commits += u64::from(t.await.expect("task"));
        }
        let end = c.load().await.unwrap();
        assert_eq!(end.value.value, committed_sum.load(Ordering::SeqCst));
        assert_eq!(end.version, 1 + commits);
        assert!(!report.timed_out, "nothing outlived the drain: {report:?}");
        let m = rt.metrics();
        assert_eq!(m.in_flight, 0);
        assert_eq!(m.outcome(OutcomeKind::Committed), commits);
        assert_eq!(m.ended, m.submitted);
    });
}
