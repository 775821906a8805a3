//! Bank accounts: transfers between two accounts, deposits, withdrawals and interest, all at
//! once.
//!
//! Four accounts open with 1,000 each, then:
//!
//! 1. **one transfer**: ada pays bob 300, one call over two accounts, committed on both at once;
//! 2. **a refused transfer**: cy tries to pay dee more than cy has; the transfer refuses to
//!    overdraw and neither account changes;
//! 3. **rush hour**: 12 tasks transfer money over every pair of accounts, in both directions at
//!    the same time (opposite-order transfers, which must neither deadlock nor lose money),
//!    while an auditor reads all four balances as one snapshot (`#[read]` parameters): every
//!    snapshot must add up to the same total, never showing money halfway through a transfer;
//! 4. **a busy day**: 32 tasks mix deposits, withdrawals (which refuse to overdraw), an
//!    OCC-only interest job that competes with them, and transfers.
//!
//! At the end the program checks that no account went negative, that each balance equals its
//! opening balance plus what callers were told committed (deposits, interest and transfers in,
//! minus withdrawals and transfers out), and that money was conserved: the audited total is the
//! opening total plus deposits and interest minus withdrawals, since transfers only move money.
//! It prints the balances and the conflict statistics, and exits non-zero if any check fails.
//!
//! `cargo run -p conflict-examples --bin bank`

// Pedantic lints are enforced (CI denies warnings); single sites are allowed where they stand.
#![warn(clippy::pedantic)]

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

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

/// Moves `amount` from `from` to `to`, never overdrawing `from`; returns `from`'s new balance.
///
/// The generated `transfer(&Handle<Account>, &Handle<Account>, i64)` stages on both accounts
/// (in key order, so two transfers in opposite directions cannot deadlock), reads both as one
/// snapshot, and commits both or neither.
#[with_conflict_resolution(
    priority = "high",
    pre_ecs(on_lose = "requeue"),
    occ(
        max_retries = 20,
        base_delay_ms = 0,
        backoff_factor = 1.5,
        max_delay_ms = 5
    )
)]
async fn transfer(from: &mut Account, to: &mut Account, amount: i64) -> Result<i64, Insufficient> {
    if from.balance < amount {
        return Err(Insufficient {
            balance: from.balance,
            requested: amount,
        });
    }
    from.balance -= amount;
    // Other calls run here, while the money has left `from` but not reached `to`: none of them
    // can see that, because nothing is written until both halves commit together.
    tokio::task::yield_now().await;
    to.balance += amount;
    Ok(from.balance)
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

/// The auditor: reads the four accounts as one consistent snapshot and writes nothing (the
/// `#[read]` parameters are validated at commit: if one changed meanwhile, the audit runs again).
#[with_conflict_resolution(occ(max_retries = 100, base_delay_ms = 0, max_delay_ms = 2))]
async fn audit(
    #[read] a: &Account,
    #[read] b: &Account,
    #[read] c: &Account,
    #[read] d: &Account,
) -> [i64; 4] {
    [a.balance, b.balance, c.balance, d.balance]
}

const OPENING: i64 = 1_000;
const OWNERS: [&str; 4] = ["ada", "bob", "cy", "dee"];

/// What callers were told committed, per account.
#[derive(Default)]
struct Ledger {
    deposits: AtomicI64,
    withdrawals: AtomicI64,
    interest: AtomicI64,
    sent: AtomicI64,
    received: AtomicI64,
    /// Withdrawals and outgoing transfers refused because they would overdraw.
    refused: AtomicU64,
}

impl Ledger {
    fn get(counter: &AtomicI64) -> i64 {
        counter.load(Ordering::Relaxed)
    }

    /// The balance the committed operations give.
    fn expected(&self) -> i64 {
        OPENING + Self::get(&self.deposits) - Self::get(&self.withdrawals)
            + Self::get(&self.interest)
            + Self::get(&self.received)
            - Self::get(&self.sent)
    }
}

struct Bank {
    accounts: Vec<Handle<Account>>,
    ledgers: Vec<Ledger>,
    /// Calls that gave up under contention (nothing written).
    gave_up: AtomicU64,
    /// Transfers committed, and refused because they would overdraw.
    transfers: AtomicU64,
    transfers_refused: AtomicU64,
    /// What went wrong, for the verdict.
    failures: std::sync::Mutex<Vec<String>>,
}

impl Bank {
    fn fail(&self, why: String) {
        eprintln!("FAIL: {why}");
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(why);
    }

    async fn snapshot(&self) -> Result<[i64; 4], ConflictError<std::convert::Infallible>> {
        let [a, b, c, d] = &self.accounts[..] else {
            unreachable!("the bank has four accounts")
        };
        audit(a, b, c, d).await.map(|done| done.value)
    }

    /// A transfer, booked in the ledgers when it commits.
    async fn transfer(&self, from: usize, to: usize, amount: i64) {
        match transfer(&self.accounts[from], &self.accounts[to], amount).await {
            Ok(done) => {
                if done.versions.len() != 2 {
                    self.fail(format!(
                        "a transfer committed {} accounts, not 2",
                        done.versions.len()
                    ));
                }
                self.ledgers[from].sent.fetch_add(amount, Ordering::Relaxed);
                self.ledgers[to]
                    .received
                    .fetch_add(amount, Ordering::Relaxed);
                self.transfers.fetch_add(1, Ordering::Relaxed);
            }
            Err(ConflictError::Body(_)) => {
                self.ledgers[from].refused.fetch_add(1, Ordering::Relaxed);
                self.transfers_refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.gave_up.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Steps 1 and 2: one transfer that commits, one that is refused.
async fn walkthrough(bank: &Bank) {
    let (ada, bob) = (&bank.accounts[0], &bank.accounts[1]);
    println!("1. ada pays bob 300: one call over two accounts");
    match transfer(ada, bob, 300).await {
        Ok(done) => {
            bank.ledgers[0].sent.fetch_add(300, Ordering::Relaxed);
            bank.ledgers[1].received.fetch_add(300, Ordering::Relaxed);
            bank.transfers.fetch_add(1, Ordering::Relaxed);
            let bob_now = bob.load().await.expect("load").value.balance;
            println!(
                "   committed on both at once (attempts: {}): ada {OPENING} -> {} (version {}), \
                 bob {OPENING} -> {bob_now} (version {})",
                done.attempts,
                done.value,
                done.version_of(ada.key()).unwrap_or_default(),
                done.version_of(bob.key()).unwrap_or_default(),
            );
            if done.versions.len() != 2 || done.value != OPENING - 300 {
                bank.fail(format!("the first transfer reported {done:?}"));
            }
        }
        Err(e) => bank.fail(format!("the first transfer failed: {e}")),
    }

    let (cy, dee) = (&bank.accounts[2], &bank.accounts[3]);
    println!("2. cy tries to pay dee 5000, more than cy has");
    match transfer(cy, dee, 5_000).await {
        Err(ConflictError::Body(why)) => {
            bank.ledgers[2].refused.fetch_add(1, Ordering::Relaxed);
            bank.transfers_refused.fetch_add(1, Ordering::Relaxed);
            let (c, d) = (
                cy.load().await.expect("load"),
                dee.load().await.expect("load"),
            );
            println!(
                "   refused ({why}):\n   nothing written, cy still {} (version {}), dee still {} \
                 (version {})",
                c.value.balance, c.version, d.value.balance, d.version
            );
            if (c.version, d.version) != (1, 1) {
                bank.fail("the refused transfer changed an account".to_string());
            }
        }
        other => bank.fail(format!(
            "the overdrawing transfer was not refused: {other:?}"
        )),
    }
}

/// Step 3: transfers in both directions over every pair while the auditor checks the total.
async fn rush_hour(bank: &Arc<Bank>) {
    const TASKS: usize = 12;
    const TRANSFERS: usize = 100;
    const PAIRS: [(usize, usize); 6] = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)];
    println!(
        "3. rush hour: {TASKS} tasks x {TRANSFERS} transfers over every pair of accounts, each pair\n   \
         in both directions at once, while an auditor reads all four balances as one snapshot"
    );
    let before = (
        bank.transfers.load(Ordering::Relaxed),
        bank.transfers_refused.load(Ordering::Relaxed),
    );
    let total = match bank.snapshot().await {
        Ok(balances) => balances.iter().sum::<i64>(),
        Err(e) => return bank.fail(format!("the audit failed: {e}")),
    };
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let bank = bank.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t as u64);
            let (a, b) = PAIRS[t % PAIRS.len()];
            for i in 0..TRANSFERS {
                // Tasks t and t + 6 share a pair and always go opposite ways.
                let (from, to) = if (t / PAIRS.len() + i) % 2 == 1 {
                    (b, a)
                } else {
                    (a, b)
                };
                bank.transfer(from, to, rng.i64(1..=100)).await;
            }
        }));
    }
    let auditor = {
        let bank = bank.clone();
        tokio::spawn(async move {
            let (mut audits, mut torn) = (0u64, 0u64);
            while audits < 300 {
                match bank.snapshot().await {
                    Ok(balances) if balances.iter().sum::<i64>() == total => {}
                    Ok(balances) => {
                        torn += 1;
                        if torn == 1 {
                            bank.fail(format!("an audit saw {balances:?}, not a total of {total}"));
                        }
                    }
                    Err(e) => bank.fail(format!("an audit failed: {e}")),
                }
                audits += 1;
                tokio::task::yield_now().await;
            }
            (audits, torn)
        })
    };
    let all = join_all(tasks);
    if tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .is_err()
    {
        return bank.fail("rush hour did not finish in 30 s: a deadlock?".to_string());
    }
    let (audits, torn) = auditor.await.expect("the auditor panicked");
    let committed = bank.transfers.load(Ordering::Relaxed) - before.0;
    let refused = bank.transfers_refused.load(Ordering::Relaxed) - before.1;
    println!(
        "   no deadlock: {committed} transfers committed, {refused} refused (would overdraw); \
         {} of {audits} audits totalled {total}",
        audits - torn
    );
}

/// Awaits every task, panicking if one panicked.
async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        t.await.expect("task panicked");
    }
}

/// Step 4: deposits, withdrawals, interest and transfers, all at once.
async fn busy_day(bank: &Arc<Bank>) {
    const TASKS: u64 = 32;
    const OPS: usize = 200;
    println!(
        "4. a busy day: {TASKS} tasks x {OPS} random deposits, withdrawals, interest payments \
         and transfers"
    );
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let bank = bank.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(1_000 + t);
            let n = bank.accounts.len();
            for _ in 0..OPS {
                let i = rng.usize(..n);
                let (acct, ledger) = (&bank.accounts[i], &bank.ledgers[i]);
                let amount = rng.i64(1..=200);
                match rng.u8(..10) {
                    0..=3 => match deposit(acct, amount).await {
                        Ok(_) => {
                            ledger.deposits.fetch_add(amount, Ordering::Relaxed);
                        }
                        Err(_) => {
                            bank.gave_up.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    4..=6 => match withdraw(acct, amount).await {
                        Ok(_) => {
                            ledger.withdrawals.fetch_add(amount, Ordering::Relaxed);
                        }
                        Err(ConflictError::Body(_)) => {
                            ledger.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            bank.gave_up.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    7 => match add_interest(acct).await {
                        Ok(done) => {
                            ledger.interest.fetch_add(done.value, Ordering::Relaxed);
                        }
                        Err(_) => {
                            bank.gave_up.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    _ => {
                        let to = (i + 1 + rng.usize(..n - 1)) % n;
                        bank.transfer(i, to, amount).await;
                    }
                }
            }
        }));
    }
    join_all(tasks).await;
}

/// The balances, the statistics and the checks; `true` if every check passed.
async fn report(bank: &Bank, rt: &Runtime) -> bool {
    println!();
    println!(
        "{:<6} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "owner",
        "balance",
        "deposits",
        "withdrawn",
        "interest",
        "sent",
        "received",
        "refused",
        "version"
    );
    let mut balances = Vec::new();
    for (acct, ledger) in bank.accounts.iter().zip(&bank.ledgers) {
        let now = acct.load().await.expect("load");
        println!(
            "{:<6} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7}",
            now.value.owner,
            now.value.balance,
            Ledger::get(&ledger.deposits),
            Ledger::get(&ledger.withdrawals),
            Ledger::get(&ledger.interest),
            Ledger::get(&ledger.sent),
            Ledger::get(&ledger.received),
            ledger.refused.load(Ordering::Relaxed),
            now.version,
        );
        if now.value.balance < 0 {
            bank.fail(format!("{} is overdrawn", now.value.owner));
        }
        if now.value.balance != ledger.expected() {
            bank.fail(format!(
                "{} holds {} but the committed operations give {}",
                now.value.owner,
                now.value.balance,
                ledger.expected()
            ));
        }
        balances.push(now.value.balance);
    }
    println!("(refused: withdrawals and outgoing transfers that would have overdrawn the account)");

    let m = rt.metrics();
    println!();
    println!("operations submitted:   {}", m.submitted);
    for kind in OutcomeKind::ALL {
        let n = m.outcome(kind);
        if n > 0 {
            let note = match kind {
                OutcomeKind::BodyError => "  (withdrawals and transfers refused: would overdraw)",
                _ => "",
            };
            println!("  {:<22}{n}{note}", kind.as_str());
        }
    }
    println!(
        "gave up under contention (nothing written): {}",
        bank.gave_up.load(Ordering::Relaxed)
    );
    println!(
        "pre-ECS contended groups: {} (losers requeued: {})",
        m.staging_contended_groups, m.requeued
    );
    println!("OCC conflicts:          {}", m.occ_conflicts);
    println!("OCC retries:            {}", m.occ_retries);
    if m.submitted != m.ended {
        bank.fail(format!("{} operations did not end", m.submitted - m.ended));
    }
    check_money(bank, &balances).await;
    bank.failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_empty()
}

/// Conservation: transfers only move money, so the total changes only by deposits, interest
/// and withdrawals; the auditor's snapshot must agree with the ledgers and the accounts.
async fn check_money(bank: &Bank, balances: &[i64]) {
    let sum = |f: fn(&Ledger) -> &AtomicI64| bank.ledgers.iter().map(|l| Ledger::get(f(l))).sum();
    let (deposits, withdrawals, interest): (i64, i64, i64) = (
        sum(|l| &l.deposits),
        sum(|l| &l.withdrawals),
        sum(|l| &l.interest),
    );
    let (sent, received): (i64, i64) = (sum(|l| &l.sent), sum(|l| &l.received));
    let opening: i64 = bank.ledgers.iter().map(|_| OPENING).sum();
    let expected = opening + deposits - withdrawals + interest;
    match bank.snapshot().await {
        Ok(snapshot) => {
            let audited: i64 = snapshot.iter().sum();
            println!();
            println!("money: the final audit (one snapshot of all four accounts) totals {audited}");
            println!(
                "       = opening {opening} + deposits {deposits} - withdrawals {withdrawals} \
                 + interest {interest} = {expected}"
            );
            let transfers = bank.transfers.load(Ordering::Relaxed);
            if audited == expected && sent == received {
                println!(
                    "       the {transfers} transfers moved {sent} between accounts and created \
                     none (sent {sent}, received {received})"
                );
            } else {
                println!(
                    "       but the accounts hold {audited}: {:+} unexplained (the {transfers} \
                     transfers sent {sent} and received {received})",
                    audited - expected
                );
            }
            if audited != expected || sent != received {
                bank.fail(format!(
                    "money not conserved: audited {audited}, expected {expected}, sent {sent}, \
                     received {received}"
                ));
            }
            if snapshot[..] != balances[..] {
                bank.fail(format!(
                    "the final audit saw {snapshot:?} but the accounts hold {balances:?}"
                ));
            }
        }
        Err(e) => bank.fail(format!("the final audit failed: {e}")),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let rt = Runtime::in_memory();
    let mut accounts = Vec::new();
    for owner in OWNERS {
        let acct = rt
            .insert(Account {
                id: EntityId::new(),
                owner: owner.to_string(),
                balance: OPENING,
            })
            .await
            .expect("insert");
        accounts.push(acct);
    }
    println!(
        "bank: {} accounts ({}) open with {OPENING} each",
        OWNERS.len(),
        OWNERS.join(", ")
    );
    let bank = Arc::new(Bank {
        ledgers: accounts.iter().map(|_| Ledger::default()).collect(),
        accounts,
        gave_up: AtomicU64::new(0),
        transfers: AtomicU64::new(0),
        transfers_refused: AtomicU64::new(0),
        failures: std::sync::Mutex::new(Vec::new()),
    });

    walkthrough(&bank).await;
    rush_hour(&bank).await;
    busy_day(&bank).await;

    if report(&bank, &rt).await {
        println!(
            "verdict: OK (no overdraft, balances match the committed operations, money conserved)"
        );
        ExitCode::SUCCESS
    } else {
        println!("verdict: FAILED");
        ExitCode::FAILURE
    }
}
