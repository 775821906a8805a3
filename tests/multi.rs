//! Calls over several entities: all or nothing, serializable reads, one consistent snapshot,
//! ordered staging without deadlock, and the typed refusals (the same entity twice).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "multi::Account")]
struct Account {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "multi::Ledger")]
struct Ledger {
    #[entity(id)]
    id: EntityId,
    entries: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Insufficient;

impl std::fmt::Display for Insufficient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("insufficient funds")
    }
}

static BODY_RUNS: AtomicU64 = AtomicU64::new(0);

#[with_conflict_resolution(occ(max_retries = 50, base_delay_ms = 0))]
async fn transfer(from: &mut Account, to: &mut Account, amount: i64) -> Result<i64, Insufficient> {
    BODY_RUNS.fetch_add(1, Ordering::Relaxed);
    if from.balance < amount {
        return Err(Insufficient);
    }
    from.balance -= amount;
    tokio::task::yield_now().await;
    to.balance += amount;
    Ok(from.balance)
}

/// Mixed entity types, a read, and a plain argument between them.
#[with_conflict_resolution(occ(max_retries = 50, base_delay_ms = 0))]
async fn post(
    account: &mut Account,
    amount: i64,
    ledger: &mut Ledger,
    #[read] limit: &Account,
) -> usize {
    account.balance += amount.min(limit.balance);
    ledger.entries.push(amount);
    ledger.entries.len()
}

#[with_conflict_resolution(occ(max_retries = 5))]
async fn total(#[read] a: &Account, #[read] b: &Account) -> i64 {
    a.balance + b.balance
}

/// Withdraws from `from` only if the pair's total stays non-negative (the write-skew case).
#[with_conflict_resolution(pre_ecs = false, occ(max_retries = 50, base_delay_ms = 0))]
async fn withdraw_keeping_total(
    from: &mut Account,
    #[read] other: &Account,
    amount: i64,
) -> Result<(), Insufficient> {
    let total = from.balance + other.balance;
    tokio::time::sleep(Duration::from_millis(2)).await;
    if total - amount < 0 {
        return Err(Insufficient);
    }
    from.balance -= amount;
    Ok(())
}

#[with_conflict_resolution(occ(max_retries = 0))]
async fn slow_pair(a: &mut Account, b: &mut Account) {
    a.balance += 1;
    b.balance += 1;
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

async fn accounts(rt: &Runtime, balances: &[i64]) -> Vec<Handle<Account>> {
    let mut out = Vec::new();
    for &balance in balances {
        out.push(
            rt.insert(Account {
                id: EntityId::new(),
                balance,
            })
            .await
            .unwrap(),
        );
    }
    out
}

#[tokio::test]
async fn a_transfer_commits_both_entities_with_one_version_each() {
    let rt = Runtime::in_memory();
    let acc = accounts(&rt, &[100, 5]).await;
    let done = transfer(&acc[0], &acc[1], 30).await.unwrap();
    assert_eq!(done.value, 70);
    assert_eq!(done.version, 2, "the first written entity's new version");
    assert_eq!(done.versions.len(), 2);
    assert_eq!(done.version_of(acc[0].key()), Some(2));
    assert_eq!(done.version_of(acc[1].key()), Some(2));
    let (a, b) = (acc[0].load().await.unwrap(), acc[1].load().await.unwrap());
    assert_eq!(
        (a.value.balance, a.version, b.value.balance, b.version),
        (70, 2, 35, 2)
    );
}

#[tokio::test]
async fn a_body_error_commits_nothing_on_any_entity() {
    let rt = Runtime::in_memory();
    let acc = accounts(&rt, &[10, 0]).await;
    let e = transfer(&acc[0], &acc[1], 30).await.unwrap_err();
    assert!(matches!(e, ConflictError::Body(Insufficient)), "{e}");
    for h in &acc {
        assert_eq!(h.load().await.unwrap().version, 1);
    }
}

#[tokio::test]
async fn mixed_types_reads_and_plain_arguments() {
    let rt = Runtime::in_memory();
    let acc = accounts(&rt, &[0, 7]).await;
    let ledger = rt
        .insert(Ledger {
            id: EntityId::new(),
            entries: vec![],
        })
        .await
        .unwrap();
    let done = post(&acc[0], 10, &ledger, &acc[1]).await.unwrap();
    assert_eq!(done.value, 1);
    assert_eq!(done.versions.len(), 2, "the read entity is not written");
    assert_eq!(acc[0].load().await.unwrap().value.balance, 7);
    assert_eq!(
        acc[1].load().await.unwrap().version,
        1,
        "a read bumps no version"
    );
    assert_eq!(ledger.load().await.unwrap().value.entries, vec![10]);
}

#[tokio::test]
async fn a_read_only_call_writes_nothing_and_bumps_no_version() {
    let rt = Runtime::in_memory();
    let acc = accounts(&rt, &[3, 4]).await;
    let done = total(&acc[0], &acc[1]).await.unwrap();
    assert_eq!((done.value, done.version, done.versions.len()), (7, 0, 0));
    for h in &acc {
        assert_eq!(h.load().await.unwrap().version, 1);
    }
}

#[tokio::test]
async fn the_same_entity_twice_is_refused_before_the_body_runs() {
    let rt = Runtime::in_memory();
    let acc = accounts(&rt, &[50]).await;
    let before = BODY_RUNS.load(Ordering::Relaxed);
    let again = rt.handle::<Account>(acc[0].id());
    let e = transfer(&acc[0], &again, 1).await.unwrap_err();
    assert!(
        matches!(&e, ConflictError::DuplicateTarget { target, .. } if target == acc[0].key()),
        "{e}"
    );
    assert_eq!(e.kind(), OutcomeKind::InvalidTargets);
    // Mixed `&mut` and `#[read]` too.
    let e = post(
        &acc[0],
        1,
        &rt.insert(Ledger {
            id: EntityId::new(),
            entries: vec![],
        })
        .await
        .unwrap(),
        &acc[0],
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ConflictError::DuplicateTarget { .. }), "{e}");
    assert_eq!(BODY_RUNS.load(Ordering::Relaxed), before, "no body ran");
    assert_eq!(acc[0].load().await.unwrap().version, 1);
}

#[tokio::test]
async fn handles_of_two_runtimes_are_refused() {
    let (rt1, rt2) = (Runtime::in_memory(), Runtime::in_memory());
    let a = accounts(&rt1, &[5]).await;
    let b = accounts(&rt2, &[5]).await;
    let e = transfer(&a[0], &b[0], 1).await.unwrap_err();
    assert!(matches!(e, ConflictError::ForeignHandle { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_skew_between_two_withdrawals_checking_the_total() {
    for _ in 0..20 {
        let rt = Runtime::in_memory();
        let acc = accounts(&rt, &[50, 50]).await;
        // Each alone keeps the total at 0 or above; both together would make it -50.
        let (x, y) = tokio::join!(
            withdraw_keeping_total(&acc[0], &acc[1], 100),
            withdraw_keeping_total(&acc[1], &acc[0], 100),
        );
        let ok = [x.is_ok(), y.is_ok()].iter().filter(|o| **o).count();
        assert_eq!(ok, 1, "exactly one of the two may commit: {x:?} {y:?}");
        let sum =
            acc[0].load().await.unwrap().value.balance + acc[1].load().await.unwrap().value.balance;
        assert_eq!(sum, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_order_transfers_neither_deadlock_nor_lose_money() {
    let rt = Runtime::in_memory();
    let acc = Arc::new(accounts(&rt, &[1_000, 1_000]).await);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let acc = acc.clone();
        tasks.push(tokio::spawn(async move {
            let mut committed = 0i64;
            for i in 0..50u64 {
                let (from, to) = if (t + i) % 2 == 0 { (0, 1) } else { (1, 0) };
                let sign = if from == 0 { 1 } else { -1 };
                match conflict_runtime::operation::scope()
                    .on_lose(OnLose::Requeue)
                    .run(transfer(&acc[from], &acc[to], 1))
                    .await
                {
                    Ok(_) => committed += sign,
                    Err(ConflictError::Body(_)) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            committed
        }));
    }
    let moved: i64 = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(tasks),
    )
    .await
    .expect("no deadlock")
    .into_iter()
    .map(Result::unwrap)
    .sum();
    let a = acc[0].load().await.unwrap().value.balance;
    let b = acc[1].load().await.unwrap().value.balance;
    assert_eq!(a + b, 2_000, "money is conserved");
    assert_eq!(
        a,
        1_000 - moved,
        "each account moved by exactly what callers were told"
    );
}

#[tokio::test]
async fn a_cancelled_multi_entity_call_commits_nothing_and_ends_once() {
    let rt = Runtime::in_memory();
    let acc = accounts(&rt, &[1, 1]).await;
    let call = slow_pair(&acc[0], &acc[1]);
    assert!(
        tokio::time::timeout(Duration::from_millis(20), call)
            .await
            .is_err()
    );
    for h in &acc {
        let v = h.load().await.unwrap();
        assert_eq!((v.value.balance, v.version), (1, 1));
    }
    let m = rt.metrics();
    assert_eq!(m.submitted, 1);
    assert_eq!(m.outcome(OutcomeKind::Cancelled), 1);
    assert_eq!(rt.staging_status().executing, 0, "both targets released");
    // Both targets are free again.
    transfer(&acc[0], &acc[1], 1).await.unwrap();
}

#[tokio::test]
async fn a_torn_state_is_never_seen_by_a_read_only_call() {
    let rt = Runtime::in_memory();
    let acc = Arc::new(accounts(&rt, &[500, 500]).await);
    let writer = {
        let acc = acc.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                let (f, t) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
                let _ = transfer(&acc[f], &acc[t], 7).await;
            }
        })
    };
    for _ in 0..300 {
        assert_eq!(total(&acc[0], &acc[1]).await.unwrap().value, 1_000);
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
}

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 20), occ(max_retries = 0))]
async fn pair_windowed(a: &mut Account, b: &mut Account) {
    a.balance += 1;
    b.balance += 1;
}

#[with_conflict_resolution(
    pre_ecs(staging_timeout_ms = 0, grace_period_ms = 10),
    occ(max_retries = 0)
)]
async fn pair_slow(a: &mut Account, b: &mut Account) {
    a.balance += 1;
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.balance += 1;
}

#[with_conflict_resolution(priority = CRITICAL, pre_ecs(staging_timeout_ms = 0), occ(max_retries = 0))]
async fn urgent(a: &mut Account) {
    a.balance += 100;
}

/// Invariant: a call over several entities that loses a staging group, or is preempted, is told
/// on which entity and by whom; nothing of it is committed on any entity.
#[tokio::test(start_paused = true)]
async fn rejection_and_preemption_name_the_entity_and_the_winner() {
    let rt = Runtime::in_memory();
    let mut acc = accounts(&rt, &[0, 0, 0]).await;
    // The shared entity first in key order, so both pair calls stage on it first and meet in
    // one staging group (with random ids, the order of the windows each waits through before it
    // varied, and the lower call sometimes arrived after the group: flaky, about 1 run in 10).
    acc.sort_by(|a, b| b.key().cmp(a.key()));
    let shared = acc[2].clone();
    let (a0, a1, s1, s2) = (
        acc[0].clone(),
        acc[1].clone(),
        shared.clone(),
        shared.clone(),
    );
    let high = tokio::spawn(async move {
        conflict_runtime::operation::scope()
            .priority(OperationPriority::HIGH)
            .run(pair_windowed(&a0, &s1))
            .await
    });
    tokio::task::yield_now().await;
    let low = tokio::spawn(async move {
        conflict_runtime::operation::scope()
            .priority(OperationPriority::LOW)
            .run(pair_windowed(&a1, &s2))
            .await
    });
    let high = high.await.unwrap().unwrap();
    match low.await.unwrap() {
        Err(ConflictError::Rejected {
            target,
            winner_op_id,
            ..
        }) => {
            assert_eq!(&target, shared.key());
            assert_eq!(winner_op_id, high.op_id);
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(
        acc[1].load().await.unwrap().version,
        1,
        "the loser wrote nothing"
    );

    let (b0, b1) = (acc[0].clone(), acc[1].clone());
    let slow = tokio::spawn(async move { pair_slow(&b0, &b1).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let by = urgent(&acc[1]).await.unwrap();
    match slow.await.unwrap() {
        Err(ConflictError::Preempted {
            target, by_op_id, ..
        }) => {
            assert_eq!(&target, acc[1].key());
            assert_eq!(by_op_id, by.op_id);
        }
        other => panic!("expected Preempted, got {other:?}"),
    }
    assert_eq!(
        acc[0].load().await.unwrap().version,
        2,
        "only the first pair call wrote it"
    );
    assert_eq!(rt.staging_status().executing, 0);
}

#[with_conflict_resolution(occ(max_retries = 5, base_delay_ms = 0))]
async fn grandchild_write(l: &mut Ledger, entry: i64) {
    l.entries.push(entry);
}

/// A middle call that writes through its own nested call, then fails.
#[with_conflict_resolution(occ(max_retries = 5, base_delay_ms = 0))]
async fn middle_then_fail(a: &mut Account, ledger: Handle<Ledger>) -> Result<(), Insufficient> {
    grandchild_write(&ledger, 7).await.expect("composes");
    a.balance += 1;
    Err(Insufficient)
}

#[with_conflict_resolution(occ(max_retries = 5, base_delay_ms = 0))]
async fn root_survives_a_failed_child(
    r: &mut Account,
    a: Handle<Account>,
    ledger: Handle<Ledger>,
) -> bool {
    r.balance += 1;
    middle_then_fail(&a, ledger).await.is_err()
}

/// Invariant: a nested call's writes are kept only if its parent's are: a middle call that
/// fails after its own nested call wrote takes that write with it, although the root goes on
/// and commits.
#[tokio::test]
async fn a_failed_middle_call_takes_its_nested_writes_with_it() {
    let rt = Runtime::in_memory();
    let acc = accounts(&rt, &[0, 0]).await;
    let ledger = rt
        .insert(Ledger {
            id: EntityId::new(),
            entries: vec![],
        })
        .await
        .unwrap();
    let done = root_survives_a_failed_child(&acc[0], acc[1].clone(), ledger.clone())
        .await
        .unwrap();
    assert!(done.value, "the middle call failed");
    assert_eq!(
        acc[0].load().await.unwrap().version,
        2,
        "the root committed"
    );
    let l = ledger.load().await.unwrap();
    assert_eq!(
        (l.value.entries.len(), l.version),
        (0, 1),
        "the failed middle call's nested write was kept"
    );
    let m = rt.metrics();
    assert_eq!(
        m.outcome(OutcomeKind::RolledBack),
        1,
        "the grandchild is rolled back"
    );
}

#[with_conflict_resolution(occ(max_retries = 5, base_delay_ms = 0))]
async fn middle_then_hang(a: &mut Account, ledger: Handle<Ledger>) {
    grandchild_write(&ledger, 8).await.expect("composes");
    a.balance += 1;
    std::future::pending::<()>().await;
}

#[with_conflict_resolution(occ(max_retries = 5, base_delay_ms = 0))]
async fn root_gives_up_on_a_child(r: &mut Account, a: Handle<Account>, ledger: Handle<Ledger>) {
    r.balance += 1;
    let gave_up =
        tokio::time::timeout(Duration::from_millis(10), middle_then_hang(&a, ledger)).await;
    assert!(gave_up.is_err());
}

/// Invariant: a nested call dropped mid-body (its caller gave up on it) takes what its own
/// nested calls wrote with it; the root still commits.
#[tokio::test]
async fn a_dropped_middle_call_takes_its_nested_writes_with_it() {
    let rt = Runtime::in_memory();
    let acc = accounts(&rt, &[0, 0]).await;
    let ledger = rt
        .insert(Ledger {
            id: EntityId::new(),
            entries: vec![],
        })
        .await
        .unwrap();
    root_gives_up_on_a_child(&acc[0], acc[1].clone(), ledger.clone())
        .await
        .unwrap();
    assert_eq!(
        acc[0].load().await.unwrap().version,
        2,
        "the root committed"
    );
    assert_eq!(acc[1].load().await.unwrap().version, 1);
    assert_eq!(
        ledger.load().await.unwrap().version,
        1,
        "the grandchild's write was undone"
    );
    let m = rt.metrics();
    assert_eq!(m.outcome(OutcomeKind::RolledBack), 1);
    assert_eq!(m.outcome(OutcomeKind::Cancelled), 1);
    assert_eq!(m.submitted, 3);
}
