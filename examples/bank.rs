//! Bank accounts under concurrent deposits and withdrawals.
//!
//! 32 tasks hammer 4 accounts with random deposits, withdrawals (which refuse to overdraw) and
//! an OCC-only interest job that competes with them. At the end the program checks that no
//! account went negative and that each balance equals its opening balance plus the committed
//! deposits and interest minus the committed withdrawals, prints the balances and the conflict
//! statistics, and exits non-zero if any check fails.
//!
//! `cargo run --release -p conflict-examples --bin bank`

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use conflict_runtime::operation::OutcomeKind;
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
    owner: String,
    balance: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("insufficient funds: balance {balance}, requested {requested}")]
struct Insufficient {
    balance: i64,
    requested: i64,
}

/// Deposits wait their turn (requeue) rather than being rejected.
#[with_conflict_resolution(
    priority = "normal",
    pre_ecs(on_lose = "requeue"),
    occ(
        max_retries = 10,
        base_delay_ms = 1,
        backoff_factor = 1.5,
        max_delay_ms = 50
    )
)]
async fn deposit(account: &mut Account, amount: i64) -> i64 {
    account.balance += amount;
    account.balance
}

/// Withdrawals outrank deposits and never overdraw.
#[with_conflict_resolution(
    priority = "high",
    pre_ecs(on_lose = "requeue"),
    occ(
        max_retries = 10,
        base_delay_ms = 1,
        backoff_factor = 1.5,
        max_delay_ms = 50
    )
)]
async fn withdraw(account: &mut Account, amount: i64) -> Result<i64, Insufficient> {
    if account.balance < amount {
        return Err(Insufficient {
            balance: account.balance,
            requested: amount,
        });
    }
    // Stands for a fraud check that waits on I/O while other calls arrive.
    tokio::task::yield_now().await;
    account.balance -= amount;
    Ok(account.balance)
}

/// A batch job without staging: it only has OCC, so it meets conflicts and retries.
#[with_conflict_resolution(
    op_class = "low_priority",
    occ(
        max_retries = 50,
        base_delay_ms = 0,
        backoff_factor = 1.5,
        max_delay_ms = 5
    ),
    pre_ecs = false
)]
async fn add_interest(account: &mut Account) -> i64 {
    let interest = account.balance / 1000;
    tokio::task::yield_now().await;
    account.balance += interest;
    interest
}

struct Ledger {
    deposits: AtomicI64,
    withdrawals: AtomicI64,
    interest: AtomicI64,
    refused: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    const OPENING: i64 = 1_000;
    let rt = Runtime::in_memory();
    let mut accounts = Vec::new();
    for owner in ["ada", "bob", "cy", "dee"] {
        let acct = rt
            .insert(Account {
                id: EntityId::new(),
                owner: owner.to_string(),
                balance: OPENING,
            })
            .await
            .expect("insert");
        accounts.push((
            acct,
            Arc::new(Ledger {
                deposits: AtomicI64::new(0),
                withdrawals: AtomicI64::new(0),
                interest: AtomicI64::new(0),
                refused: AtomicU64::new(0),
            }),
        ));
    }
    let accounts = Arc::new(accounts);

    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let accounts = accounts.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t);
            for _ in 0..500 {
                let (acct, ledger) = &accounts[rng.usize(..accounts.len())];
                let amount = rng.i64(1..=200);
                match rng.u8(..10) {
                    0..=4 => {
                        if deposit(acct, amount).await.is_ok() {
                            ledger.deposits.fetch_add(amount, Ordering::Relaxed);
                        }
                    }
                    5..=8 => match withdraw(acct, amount).await {
                        Ok(_) => {
                            ledger.withdrawals.fetch_add(amount, Ordering::Relaxed);
                        }
                        Err(ConflictError::Body(_)) => {
                            ledger.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {}
                    },
                    _ => {
                        if let Ok(done) = add_interest(acct).await {
                            ledger.interest.fetch_add(done.value, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task panicked");
    }

    let mut ok = true;
    println!(
        "{:<6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "owner", "balance", "deposits", "withdrawn", "interest", "refused", "version"
    );
    for (acct, ledger) in accounts.iter() {
        let now = acct.load().await.expect("load");
        let expected = OPENING + ledger.deposits.load(Ordering::Relaxed)
            - ledger.withdrawals.load(Ordering::Relaxed)
            + ledger.interest.load(Ordering::Relaxed);
        println!(
            "{:<6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
            now.value.owner,
            now.value.balance,
            ledger.deposits.load(Ordering::Relaxed),
            ledger.withdrawals.load(Ordering::Relaxed),
            ledger.interest.load(Ordering::Relaxed),
            ledger.refused.load(Ordering::Relaxed),
            now.version,
        );
        if now.value.balance < 0 {
            eprintln!("FAIL: {} is overdrawn", now.value.owner);
            ok = false;
        }
        if now.value.balance != expected {
            eprintln!(
                "FAIL: {} holds {} but the committed operations give {expected}",
                now.value.owner, now.value.balance
            );
            ok = false;
        }
    }
    let m = rt.metrics();
    println!();
    println!("operations submitted:   {}", m.submitted);
    for kind in OutcomeKind::ALL {
        let n = m.outcome(kind);
        if n > 0 {
            println!("  {:<22}{n}", kind.as_str());
        }
    }
    println!(
        "pre-ECS contended groups: {} (losers requeued: {})",
        m.staging_contended_groups, m.requeued
    );
    println!("OCC conflicts:          {}", m.occ_conflicts);
    println!("OCC retries:            {}", m.occ_retries);
    if m.submitted != m.ended {
        eprintln!("FAIL: {} operations did not end", m.submitted - m.ended);
        ok = false;
    }
    if ok {
        println!("verdict: OK (no overdraft, balances match the committed operations)");
        ExitCode::SUCCESS
    } else {
        println!("verdict: FAILED");
        ExitCode::FAILURE
    }
}
