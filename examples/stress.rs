//! The stress run: the design's 30,000-operation workload, with money transfers mixed in, and
//! a verdict that is proven, not asserted.
//!
//! Four single-target operation types hit a few shared targets, and a share of the operations
//! (20% by default, `--transfer-share`) are transfers between two random accounts that refuse
//! to overdraw (one call over two entities, committed on both or neither), all with mixed
//! priorities, in batches (closed loop) or at a fixed rate (open loop). At the end the run
//! checks:
//!
//! * **accounting**: submitted = committed + every error kind; no operation reported twice;
//!   nothing still running;
//! * **state**: per target, the committed operations' versions are exactly `2..=final` (gap-free)
//!   and replaying them in version order from the initial value gives the stored final state;
//! * **money**: the accounts' balances add up to what they opened with (transfers only move
//!   money), and per account, replaying the transfers its callers were told committed, in
//!   version order (gap-free) from the opening balance, gives the stored balance without ever
//!   going below zero.
//!
//! Any mismatch prints what failed and exits with status 1.
//!
//! `cargo run --release -p conflict-examples --bin stress -- --help`

// Pedantic lints are enforced (CI denies warnings); single sites are allowed where they stand.
#![warn(clippy::pedantic)]
// The u64 → f64 casts only format figures (seconds, µs, MiB) for people.
#![allow(clippy::cast_precision_loss)]

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::io::{IsTerminal, Write as _};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use conflict_runtime::prelude::*;
use conflict_runtime::{metrics::MetricsSnapshot, operation::OutcomeKind};
use serde::Serialize;

/// A shared target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Entity)]
#[entity(name = "StressTarget")]
struct Target {
    #[entity(id)]
    id: EntityId,
    name: String,
    hits: u64,
    total: u64,
}

/// The four operation types, as plain data: what the driver submits and what replay applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Op {
    /// hits + 1, total += amount (1..=100).
    Increment { amount: u64 },
    /// total = value (0..=1000).
    Update { value: u64 },
    /// hits + 1, total += amount (1..=1000).
    Accumulate { amount: u64 },
    /// hits + 1.
    Version,
}

impl Op {
    #[allow(dead_code)]
    fn name(self) -> &'static str {
        match self {
            Self::Increment { .. } => "increment",
            Self::Update { .. } => "update",
            Self::Accumulate { .. } => "accumulate",
            Self::Version => "version",
        }
    }

    /// The one definition of what each operation does, used by the bodies and by replay.
    fn apply(self, t: &mut Target) {
        match self {
            Self::Increment { amount } | Self::Accumulate { amount } => {
                t.hits += 1;
                t.total += amount;
            }
            Self::Update { value } => t.total = value,
            Self::Version => t.hits += 1,
        }
    }
}

/// An account the transfers move money between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Entity)]
#[entity(name = "StressAccount")]
struct Account {
    #[entity(id)]
    id: EntityId,
    name: String,
    balance: i64,
}

/// What every account opens with (the `--accounts` help says so: keep them in step).
const OPENING_BALANCE: i64 = 1_000;
/// The largest amount one transfer moves (amounts are drawn from `1..=MAX_TRANSFER`; the
/// `--transfer-share` help says so: keep them in step).
const MAX_TRANSFER: i64 = 100;

/// Why a transfer was refused: the sender would go below zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("would overdraw: balance {balance}, transfer {amount}")]
struct Overdraw {
    balance: i64,
    amount: i64,
}

/// The one definition of a transfer, used by the bodies (on both accounts at once) and by the
/// per-account replay (one side at a time, through [`apply_delta`]).
fn apply_transfer(from: &mut Account, to: &mut Account, amount: i64) -> Result<(), Overdraw> {
    if from.balance < amount {
        return Err(Overdraw {
            balance: from.balance,
            amount,
        });
    }
    apply_delta(from, -amount);
    apply_delta(to, amount);
    Ok(())
}

/// One side of a transfer: `-amount` for the sender, `+amount` for the receiver.
fn apply_delta(account: &mut Account, delta: i64) {
    account.balance += delta;
}

/// Simulated work between reading the snapshot and writing it back.
async fn work(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// One set of the four operations and the transfer per stage selection (the mode is
/// compile-time; what losers do is a per-call override, `scope().on_lose(..)`).
macro_rules! op_set {
    ($module:ident, $($attr:tt)*) => {
        mod $module {
            use super::*;

            #[with_conflict_resolution($($attr)*)]
            pub async fn increment(t: &mut Target, op: Op, work_ms: u64) {
                work(work_ms).await;
                op.apply(t);
            }

            #[with_conflict_resolution($($attr)*)]
            pub async fn update(t: &mut Target, op: Op, work_ms: u64) {
                work(work_ms).await;
                op.apply(t);
            }

            #[with_conflict_resolution($($attr)*)]
            pub async fn accumulate(t: &mut Target, op: Op, work_ms: u64) {
                work(work_ms).await;
                op.apply(t);
            }

            #[with_conflict_resolution($($attr)*)]
            pub async fn version(t: &mut Target, op: Op, work_ms: u64) {
                work(work_ms).await;
                op.apply(t);
            }

            /// Moves `amount` from `from` to `to`, or refuses if `from` would overdraw. Staged
            /// on both accounts (in key order, so opposite-order transfers cannot deadlock),
            /// both read as one snapshot, both committed or neither.
            #[with_conflict_resolution($($attr)*)]
            pub async fn transfer(
                from: &mut Account,
                to: &mut Account,
                amount: i64,
                work_ms: u64,
            ) -> Result<(), Overdraw> {
                work(work_ms).await;
                apply_transfer(from, to, amount)
            }

            pub async fn run(
                h: &Handle<Target>,
                op: Op,
                work_ms: u64,
            ) -> Result<Committed<()>, ConflictError<std::convert::Infallible>> {
                match op {
                    Op::Increment { .. } => increment(h, op, work_ms).await,
                    Op::Update { .. } => update(h, op, work_ms).await,
                    Op::Accumulate { .. } => accumulate(h, op, work_ms).await,
                    Op::Version => version(h, op, work_ms).await,
                }
            }
        }
    };
}

// Both stages run unless one is switched off (`stage = false`, or `mode`).
op_set!(both, occ(max_retries = 15));
op_set!(pre_ecs_only, mode = "pre_ecs");
op_set!(occ_only, mode = "occ", occ(max_retries = 15));

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    /// Staging, then OCC (the framework default).
    Both,
    /// Staging only.
    PreEcs,
    /// OCC only.
    Occ,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum OnLose {
    /// Losers of a staging group are rejected.
    Reject,
    /// Losers wait for the next round.
    Requeue,
}

/// The stress run of the conflict framework (see the module docs).
#[derive(Parser, Debug, Clone, Serialize)]
#[command(version, about)]
struct Args {
    /// Operations to submit.
    #[arg(long, default_value_t = 30_000)]
    ops: u64,
    /// Shared targets of the four single-target operation types (at least 1 unless
    /// --transfer-share is 100).
    #[arg(long, default_value_t = 3)]
    targets: usize,
    /// Share of the operations that are transfers between two random accounts, in percent
    /// (a whole number, 0..=100). Each transfer moves 1..=100 from one account to another and
    /// is refused if the sender would go below zero. 0 gives exactly the workload without
    /// transfers.
    #[arg(
        long,
        value_name = "PERCENT",
        default_value_t = 20,
        value_parser = parse_percent,
        allow_negative_numbers = true
    )]
    transfer_share: u8,
    /// Accounts the transfers move money between, each opening with 1000 (at least 2 unless
    /// --transfer-share is 0).
    #[arg(long, default_value_t = 10)]
    accounts: usize,
    /// Operations per batch (closed loop: a batch is submitted at once, the next when it has
    /// resolved; at least 1).
    #[arg(long, default_value_t = 100, value_parser = parse_positive::<usize>)]
    batch: usize,
    /// Open loop instead: submit at this many operations per second regardless of completion
    /// (at least 1).
    #[arg(long, value_parser = parse_positive::<u64>)]
    rate: Option<u64>,
    /// Simulated work between read and write, in milliseconds (the design used 5).
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// Which stages run.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// What losers of a staging group do (ignored with --mode occ).
    #[arg(long, value_enum, default_value_t = OnLose::Reject)]
    on_lose: OnLose,
    /// Seed of the workload generator (same seed, same workload).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON document instead of the text report.
    #[arg(long)]
    json: bool,
    /// Tokio worker threads (default: one per core; at least 1).
    #[arg(long, value_parser = parse_positive::<usize>)]
    workers: Option<usize>,
    /// Where the entities live: `memory` (the embedded store) or a database URL
    /// (`postgres://user@host:port/db`); the schema is created if missing.
    #[arg(long, default_value = "memory")]
    backend: String,
}

/// `--transfer-share`: a whole percentage, refused (not clamped) outside `0..=100`.
fn parse_percent(s: &str) -> Result<u8, String> {
    let n: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number: give a percentage from 0 to 100"))?;
    u8::try_from(n)
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| format!("{n}% is not a share: give a percentage from 0 to 100"))
}

/// A count that must be at least 1 (refused, not raised to 1, when 0).
fn parse_positive<T>(s: &str) -> Result<T, String>
where
    T: std::str::FromStr + Default + PartialEq,
{
    let n: T = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of at least 1"))?;
    if n == T::default() {
        return Err("must be at least 1".to_string());
    }
    Ok(n)
}

type RunFn = for<'a> fn(
    &'a Handle<Target>,
    Op,
    u64,
) -> Pin<
    Box<
        dyn Future<Output = Result<Committed<()>, ConflictError<std::convert::Infallible>>>
            + Send
            + 'a,
    >,
>;

type TransferFn = for<'a> fn(
    &'a Handle<Account>,
    &'a Handle<Account>,
    i64,
    u64,
) -> Pin<
    Box<dyn Future<Output = Result<Committed<()>, ConflictError<Overdraw>>> + Send + 'a>,
>;

fn runner(mode: Mode) -> RunFn {
    match mode {
        Mode::Both => |h, op, w| Box::pin(both::run(h, op, w)),
        Mode::PreEcs => |h, op, w| Box::pin(pre_ecs_only::run(h, op, w)),
        Mode::Occ => |h, op, w| Box::pin(occ_only::run(h, op, w)),
    }
}

fn transfer_runner(mode: Mode) -> TransferFn {
    match mode {
        Mode::Both => |f, t, amount, w| Box::pin(both::transfer(f, t, amount, w)),
        Mode::PreEcs => |f, t, amount, w| Box::pin(pre_ecs_only::transfer(f, t, amount, w)),
        Mode::Occ => |f, t, amount, w| Box::pin(occ_only::transfer(f, t, amount, w)),
    }
}

/// What one planned operation does.
#[derive(Debug, Clone, Copy)]
enum Work {
    /// One of the four single-target operations on `targets[target]`.
    Target { target: usize, op: Op },
    /// Moves `amount` from `accounts[from]` to `accounts[to]` (two different accounts).
    Transfer { from: usize, to: usize, amount: i64 },
}

/// One submitted operation, as the driver planned it.
#[derive(Debug, Clone, Copy)]
struct Planned {
    work: Work,
    priority: OperationPriority,
}

/// 6 NORMAL : 3 HIGH : 1 CRITICAL, for every operation type alike.
fn draw_priority(rng: &mut fastrand::Rng) -> OperationPriority {
    match rng.u8(..10) {
        0..=5 => OperationPriority::NORMAL,
        6..=8 => OperationPriority::HIGH,
        _ => OperationPriority::CRITICAL,
    }
}

fn plan(args: &Args) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(args.seed);
    (0..args.ops)
        .map(|_| {
            // Drawn only when transfers are on, so `--transfer-share 0` gives exactly the
            // workload of the run without transfers.
            let is_transfer = args.transfer_share > 0 && rng.u8(..100) < args.transfer_share;
            if is_transfer {
                let from = rng.usize(..args.accounts);
                let to = (from + 1 + rng.usize(..args.accounts - 1)) % args.accounts;
                let amount = rng.i64(1..=MAX_TRANSFER);
                return Planned {
                    work: Work::Transfer { from, to, amount },
                    priority: draw_priority(&mut rng),
                };
            }
            let op = match rng.u8(..4) {
                0 => Op::Increment {
                    amount: rng.u64(1..=100),
                },
                1 => Op::Update {
                    value: rng.u64(0..=1000),
                },
                2 => Op::Accumulate {
                    amount: rng.u64(1..=1000),
                },
                _ => Op::Version,
            };
            let priority = draw_priority(&mut rng);
            Planned {
                work: Work::Target {
                    target: rng.usize(..args.targets),
                    op,
                },
                priority,
            }
        })
        .collect()
}

/// What the driver saw come back.
#[derive(Default)]
struct Outcomes {
    /// Per target: (version written, operation) of every commit.
    commits: Vec<Vec<(u64, Op)>>,
    /// Per account: (version written, balance change) of its side of every committed transfer.
    account_commits: Vec<Vec<(u64, i64)>>,
    by_kind: BTreeMap<OutcomeKind, u64>,
    /// The transfers alone, by outcome.
    transfers_by_kind: BTreeMap<OutcomeKind, u64>,
    op_ids: Vec<OpId>,
    untagged_errors: u64,
    /// Committed transfers that did not report exactly one new version per account.
    bad_transfer_versions: Vec<String>,
}

impl Outcomes {
    fn record_commit(&mut self, op_id: OpId) {
        *self.by_kind.entry(OutcomeKind::Committed).or_default() += 1;
        self.op_ids.push(op_id);
    }

    fn record_error<E>(&mut self, e: &ConflictError<E>) {
        *self.by_kind.entry(e.kind()).or_default() += 1;
        match e.op_id() {
            Some(id) => self.op_ids.push(id),
            // The body's own error (a refused transfer) is the caller's value: it carries no id.
            None if matches!(e, ConflictError::Body(_)) => {}
            None => self.untagged_errors += 1,
        }
    }
}

#[derive(Serialize)]
struct TargetReport {
    name: String,
    hits: u64,
    total: u64,
    version: u64,
    commits: u64,
}

#[derive(Serialize)]
struct AccountReport {
    name: String,
    opening: i64,
    balance: i64,
    /// Money this account sent in committed transfers.
    sent: i64,
    /// Money this account received in committed transfers.
    received: i64,
    version: u64,
    /// Committed transfers this account took part in.
    commits: u64,
}

#[derive(Serialize)]
struct TransferReport {
    share_percent: u8,
    submitted: u64,
    committed: u64,
    /// The body refused: the sender would have gone below zero (nothing written).
    refused_overdraw: u64,
    /// Ended without a commit for another reason (lost to contention, ...), by outcome.
    not_committed: BTreeMap<String, u64>,
    /// The sum of the amounts of the committed transfers.
    money_moved: i64,
    opening_total: i64,
    final_total: i64,
}

/// One flag per check, as the JSON report shows them.
#[derive(Serialize)]
#[allow(clippy::struct_excessive_bools)]
struct Verdict {
    ok: bool,
    accounting_ok: bool,
    state_ok: bool,
    money_ok: bool,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    args: Args,
    backend: &'static str,
    wall_seconds: f64,
    throughput_ops_per_sec: f64,
    submitted: u64,
    committed: u64,
    rejected: u64,
    /// Transfers the body refused (they would overdraw).
    refused: u64,
    failed: u64,
    still_running: u64,
    outcomes: BTreeMap<String, u64>,
    targets: Vec<TargetReport>,
    transfers: TransferReport,
    accounts: Vec<AccountReport>,
    peak_rss_bytes: Option<u64>,
    zombies_after_cleanup: u64,
    health: conflict_runtime::cleanup::HealthReport,
    metrics: MetricsSnapshot,
    verdict: Verdict,
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn lock(outcomes: &Mutex<Outcomes>) -> std::sync::MutexGuard<'_, Outcomes> {
    outcomes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What every submitted operation shares: which functions run it, how, and where its outcome
/// goes.
#[derive(Clone)]
struct Submitter {
    run: RunFn,
    transfer: TransferFn,
    on_lose: conflict_runtime::config::OnLose,
    work_ms: u64,
    outcomes: Arc<Mutex<Outcomes>>,
    progress: indicatif::ProgressBar,
}

impl Submitter {
    fn spawn(
        &self,
        p: Planned,
        targets: &[Handle<Target>],
        accounts: &[Handle<Account>],
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        match p.work {
            Work::Target { target, op } => {
                let h = targets[target].clone();
                tokio::spawn(async move { this.target_op(p.priority, target, &h, op).await })
            }
            Work::Transfer { from, to, amount } => {
                let (hf, ht) = (accounts[from].clone(), accounts[to].clone());
                tokio::spawn(async move {
                    this.transfer_op(p.priority, (from, &hf), (to, &ht), amount)
                        .await;
                })
            }
        }
    }

    fn scope(&self, priority: OperationPriority) -> conflict_runtime::operation::Scope {
        conflict_runtime::operation::scope()
            .priority(priority)
            .on_lose(self.on_lose)
    }

    async fn target_op(
        &self,
        priority: OperationPriority,
        target: usize,
        handle: &Handle<Target>,
        op: Op,
    ) {
        let result = self
            .scope(priority)
            .run((self.run)(handle, op, self.work_ms))
            .await;
        // The driver's own bookkeeping: one short critical section per operation.
        let mut o = lock(&self.outcomes);
        match result {
            Ok(c) => {
                o.commits[target].push((c.version, op));
                o.record_commit(c.op_id);
            }
            Err(e) => o.record_error(&e),
        }
        drop(o);
        self.progress.inc(1);
    }

    async fn transfer_op(
        &self,
        priority: OperationPriority,
        (from, hf): (usize, &Handle<Account>),
        (to, ht): (usize, &Handle<Account>),
        amount: i64,
    ) {
        let r = self
            .scope(priority)
            .run((self.transfer)(hf, ht, amount, self.work_ms))
            .await;
        let mut o = lock(&self.outcomes);
        let kind = r
            .as_ref()
            .map_or_else(ConflictError::kind, |_| OutcomeKind::Committed);
        *o.transfers_by_kind.entry(kind).or_default() += 1;
        match r {
            Ok(c) => {
                let (vf, vt) = (c.version_of(hf.key()), c.version_of(ht.key()));
                if let (Some(vf), Some(vt), 2) = (vf, vt, c.versions.len()) {
                    o.account_commits[from].push((vf, -amount));
                    o.account_commits[to].push((vt, amount));
                } else {
                    o.bad_transfer_versions.push(format!(
                        "a committed transfer account-{from} -> account-{to} reported the \
                         versions {:?}, not one per account",
                        c.versions
                    ));
                }
                o.record_commit(c.op_id);
            }
            Err(e) => o.record_error(&e),
        }
        drop(o);
        self.progress.inc(1);
    }
}

async fn drive(
    args: &Args,
    targets: &[Handle<Target>],
    accounts: &[Handle<Account>],
    planned: Vec<Planned>,
) -> Outcomes {
    let outcomes = Arc::new(Mutex::new(Outcomes {
        commits: vec![Vec::new(); targets.len()],
        account_commits: vec![Vec::new(); accounts.len()],
        ..Outcomes::default()
    }));
    let progress = if std::io::stderr().is_terminal() && !args.json {
        indicatif::ProgressBar::new(args.ops)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let submitter = Submitter {
        run: runner(args.mode),
        transfer: transfer_runner(args.mode),
        on_lose: match args.on_lose {
            OnLose::Reject => conflict_runtime::config::OnLose::Reject,
            OnLose::Requeue => conflict_runtime::config::OnLose::Requeue,
        },
        work_ms: args.work_ms,
        outcomes: outcomes.clone(),
        progress: progress.clone(),
    };
    match args.rate {
        None => {
            for chunk in planned.chunks(args.batch) {
                let tasks: Vec<_> = chunk
                    .iter()
                    .map(|p| submitter.spawn(*p, targets, accounts))
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            }
        }
        Some(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = Vec::with_capacity(planned.len());
            for p in planned {
                ticker.tick().await;
                tasks.push(submitter.spawn(p, targets, accounts));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }
    progress.finish_and_clear();
    drop(submitter);
    match Arc::try_unwrap(outcomes) {
        Ok(m) => m
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        Err(shared) => std::mem::take(&mut *lock(&shared)),
    }
}

/// What the run started from, and what the store holds at the end.
struct States<'a> {
    initial_targets: &'a [Target],
    final_targets: &'a [Versioned<Target>],
    initial_accounts: &'a [Account],
    final_accounts: &'a [Versioned<Account>],
}

/// Sorts `commits` by version and says whether they are exactly `2..=len + 1`.
fn gap_free<T>(commits: &mut [(u64, T)]) -> bool {
    commits.sort_by_key(|(v, _)| *v);
    commits
        .iter()
        .zip(2u64..)
        .all(|((v, _), expected)| *v == expected)
}

fn verify(args: &Args, outcomes: &Outcomes, states: &States<'_>, m: &MetricsSnapshot) -> Verdict {
    let mut problems = check_accounting(args, outcomes, m);
    let state = check_state(outcomes, states);
    let money = check_money(outcomes, states);
    let (accounting_ok, state_ok, money_ok) =
        (problems.is_empty(), state.is_empty(), money.is_empty());
    problems.extend(state);
    problems.extend(money);
    Verdict {
        ok: accounting_ok && state_ok && money_ok,
        accounting_ok,
        state_ok,
        money_ok,
        problems,
    }
}

/// Accounting: every submission has exactly one outcome, on both sides of the API.
fn check_accounting(args: &Args, outcomes: &Outcomes, m: &MetricsSnapshot) -> Vec<String> {
    let mut accounting = Vec::new();
    let reported: u64 = outcomes.by_kind.values().sum();
    if reported != args.ops {
        accounting.push(format!(
            "{} operations submitted but {reported} outcomes returned",
            args.ops
        ));
    }
    if m.submitted != args.ops || m.ended != m.submitted || m.in_flight != 0 {
        accounting.push(format!(
            "runtime counted submitted={} ended={} in_flight={} for {} submissions",
            m.submitted, m.ended, m.in_flight, args.ops
        ));
    }
    for kind in OutcomeKind::ALL {
        let driver = outcomes.by_kind.get(&kind).copied().unwrap_or(0);
        if m.outcome(kind) != driver {
            accounting.push(format!(
                "{kind}: runtime counted {} but callers saw {driver}",
                m.outcome(kind)
            ));
        }
    }
    let unique: HashSet<_> = outcomes.op_ids.iter().collect();
    if unique.len() != outcomes.op_ids.len() {
        accounting.push(format!(
            "{} operation ids reported more than once",
            outcomes.op_ids.len() - unique.len()
        ));
    }
    if outcomes.untagged_errors > 0 {
        accounting.push(format!(
            "{} errors carried no operation id",
            outcomes.untagged_errors
        ));
    }
    accounting
}

/// State: per target, replay the commits in version order from the initial value.
fn check_state(outcomes: &Outcomes, states: &States<'_>) -> Vec<String> {
    let mut state = Vec::new();
    for (i, commits) in outcomes.commits.iter().enumerate() {
        let mut commits = commits.clone();
        if !gap_free(&mut commits) {
            state.push(format!(
                "target {i}: committed versions are not exactly 2..={}",
                commits.len() + 1
            ));
        }
        let mut replayed = states.initial_targets[i].clone();
        for (_, op) in &commits {
            op.apply(&mut replayed);
        }
        let stored = &states.final_targets[i];
        if stored.value != replayed {
            state.push(format!(
                "target {i}: stored (hits {}, total {}) but replay gives (hits {}, total {})",
                stored.value.hits, stored.value.total, replayed.hits, replayed.total
            ));
        }
        if stored.version != commits.len() as u64 + 1 {
            state.push(format!(
                "target {i}: stored version {} but {} commits were reported",
                stored.version,
                commits.len()
            ));
        }
    }
    state
}

/// Money: transfers only move it, and each account is its opening balance plus exactly the
/// transfers its callers were told committed, applied in version order without an overdraft.
fn check_money(outcomes: &Outcomes, states: &States<'_>) -> Vec<String> {
    let mut money = outcomes.bad_transfer_versions.clone();
    let opening: i64 = states.initial_accounts.iter().map(|a| a.balance).sum();
    let now: i64 = states.final_accounts.iter().map(|a| a.value.balance).sum();
    if now != opening {
        money.push(format!(
            "money not conserved: the accounts opened with {opening} in all but hold {now} \
             ({:+})",
            now - opening
        ));
    }
    for (i, sides) in outcomes.account_commits.iter().enumerate() {
        let mut sides = sides.clone();
        let name = &states.initial_accounts[i].name;
        if !gap_free(&mut sides) {
            money.push(format!(
                "{name}: its committed transfers' versions are not exactly 2..={}",
                sides.len() + 1
            ));
        }
        let mut replayed = states.initial_accounts[i].clone();
        let mut lowest = replayed.balance;
        for (_, delta) in &sides {
            apply_delta(&mut replayed, *delta);
            lowest = lowest.min(replayed.balance);
        }
        let stored = &states.final_accounts[i];
        if stored.value != replayed {
            money.push(format!(
                "{name}: holds {} but its opening {} plus the transfers reported committed \
                 ({:+}) gives {}",
                stored.value.balance,
                states.initial_accounts[i].balance,
                replayed.balance - states.initial_accounts[i].balance,
                replayed.balance
            ));
        }
        if lowest < 0 {
            money.push(format!(
                "{name}: replaying its committed transfers in version order goes down to \
                 {lowest}: a transfer overdrew it"
            ));
        }
        if stored.version != sides.len() as u64 + 1 {
            money.push(format!(
                "{name}: stored version {} but {} committed transfers touched it",
                stored.version,
                sides.len()
            ));
        }
    }
    money
}

/// Appends one line to the report (writing into a `String` cannot fail).
macro_rules! say {
    ($out:expr) => {
        $out.push('\n')
    };
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Writes the report to stdout. A reader that stopped reading (`stress | head`) is no error:
/// the rest is dropped, and the exit code still gives the verdict.
fn emit(text: &str) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot write the report: {e}"))
        }
        _ => Ok(()),
    }
}

fn ok_or_failed(ok: bool) -> &'static str {
    if ok { "OK" } else { "FAILED" }
}

fn print_text(out: &mut String, r: &Report) {
    print_operations(out, r);
    say!(out);
    print_entities(out, r);
    say!(out);
    print_run(out, r);
    say!(out);
    print_verification(out, &r.verdict);
}

/// The workload, the outcomes, the conflict analysis and the per-type figures.
fn print_operations(out: &mut String, r: &Report) {
    let a = &r.args;
    let t = &r.transfers;
    say!(out, "conflict stress run");
    say!(
        out,
        "  {} ops: {} on {} targets, {} transfers ({}%) among {} accounts",
        a.ops,
        a.ops - t.submitted,
        a.targets,
        t.submitted,
        t.share_percent,
        a.accounts
    );
    say!(
        out,
        "  batch {}{}, work {} ms, mode {:?}, on-lose {:?}, seed {}, backend {}",
        a.batch,
        a.rate
            .map(|x| format!(", open loop at {x} ops/s"))
            .unwrap_or_default(),
        a.work_ms,
        a.mode,
        a.on_lose,
        a.seed,
        r.backend
    );
    say!(out);
    say!(out, "OPERATIONS");
    say!(out, "  submitted:        {:>8}", r.submitted);
    say!(out, "  committed:        {:>8}", r.committed);
    say!(
        out,
        "  refused:          {:>8}  (transfers that would overdraw: nothing written)",
        r.refused
    );
    say!(
        out,
        "  rejected:         {:>8}  (lost a staging group, preempted or overloaded)",
        r.rejected
    );
    say!(
        out,
        "  failed:           {:>8}  (out of retries, or another error)",
        r.failed
    );
    say!(out, "  still running:    {:>8}", r.still_running);
    for (k, v) in &r.outcomes {
        if *v > 0 {
            say!(out, "    {k:<20}{v:>8}");
        }
    }
    say!(out);
    print_analysis(out, r);
}

/// The conflict analysis: who waited, won, lost and retried, and why.
fn print_analysis(out: &mut String, r: &Report) {
    let m = &r.metrics;
    say!(out, "CONFLICT RESOLUTION ANALYSIS");
    say!(
        out,
        "  Pre-ECS conflicts detected:     {:>8}  (staging groups with more than one member)",
        m.staging_contended_groups
    );
    say!(
        out,
        "  Pre-ECS conflicts resolved:     {:>8}  (every contended group got exactly one winner)",
        m.staging_contended_groups
    );
    say!(out, "  operations that waited staged:  {:>8}", m.staged);
    say!(
        out,
        "  lost rounds (rejected+requeued):{:>8}  (requeued: {})",
        m.staging_losers,
        m.requeued
    );
    say!(
        out,
        "  preemptions:                    {:>8}",
        m.preemptions
    );
    say!(
        out,
        "  OCC conflicts detected:         {:>8}",
        m.occ_conflicts
    );
    say!(
        out,
        "  OCC retries attempted:          {:>8}",
        m.occ_retries
    );
    say!(
        out,
        "  OCC failures (max retries hit): {:>8}",
        m.outcome(OutcomeKind::RetriesExhausted)
    );
    say!(out);
    say!(out, "PER OPERATION TYPE");
    say!(
        out,
        "  {:<12}{:>9}{:>9}{:>10}{:>9}{:>10}{:>8}{:>11}",
        "type",
        "conflicts",
        "retries",
        "successes",
        "failures",
        "avg retry",
        "max",
        "first-try"
    );
    for t in &m.op_types {
        say!(
            out,
            "  {:<12}{:>9}{:>9}{:>10}{:>9}{:>10.2}{:>8}{:>11}",
            t.name,
            t.conflicts,
            t.retries,
            t.committed,
            t.failed,
            t.retries_per_success.avg,
            t.retries_per_success.max,
            t.retries_per_success.first_try
        );
    }
    say!(
        out,
        "  (a transfer's failures include the ones refused because they would overdraw)"
    );
}

/// The targets, the transfers and the accounts.
fn print_entities(out: &mut String, r: &Report) {
    let t = &r.transfers;
    say!(out, "PER TARGET");
    say!(
        out,
        "  {:<10}{:>8}{:>14}{:>9}{:>9}",
        "target",
        "hits",
        "total",
        "version",
        "commits"
    );
    for t in &r.targets {
        say!(
            out,
            "  {:<10}{:>8}{:>14}{:>9}{:>9}",
            t.name,
            t.hits,
            t.total,
            t.version,
            t.commits
        );
    }
    say!(out);
    say!(
        out,
        "TRANSFERS (move 1..={MAX_TRANSFER} between two random accounts, both written or neither)"
    );
    say!(
        out,
        "  submitted:                  {:>8}  ({}% of the operations)",
        t.submitted,
        t.share_percent
    );
    say!(out, "  committed (money moved):    {:>8}", t.committed);
    say!(
        out,
        "  refused (would overdraw):   {:>8}  (the sender had too little: nothing written)",
        t.refused_overdraw
    );
    let lost: u64 = t.not_committed.values().sum();
    let why: Vec<String> = t
        .not_committed
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    say!(
        out,
        "  ended otherwise:            {:>8}  ({}nothing written)",
        lost,
        if why.is_empty() {
            String::new()
        } else {
            format!("{}: ", why.join(", "))
        }
    );
    say!(
        out,
        "  money moved:                {:>8}  (sum of the committed amounts)",
        t.money_moved
    );
    say!(out);
    say!(out, "PER ACCOUNT (each opened with {OPENING_BALANCE})");
    say!(
        out,
        "  {:<12}{:>9}{:>9}{:>10}{:>9}{:>9}",
        "account",
        "balance",
        "sent",
        "received",
        "version",
        "commits"
    );
    for acc in &r.accounts {
        say!(
            out,
            "  {:<12}{:>9}{:>9}{:>10}{:>9}{:>9}",
            acc.name,
            acc.balance,
            acc.sent,
            acc.received,
            acc.version,
            acc.commits
        );
    }
    say!(
        out,
        "  {:<12}{:>9}  (opened with {} in all)",
        "all",
        t.final_total,
        t.opening_total
    );
}

/// Time, memory and cleanup.
fn print_run(out: &mut String, r: &Report) {
    let m = &r.metrics;
    say!(out, "PERFORMANCE");
    say!(out, "  wall time:   {:.3} s", r.wall_seconds);
    say!(out, "  throughput:  {:.0} ops/s", r.throughput_ops_per_sec);
    let l = &m.latency;
    say!(
        out,
        "  latency:     p50 {:.1} µs, p95 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        l.p50_ns as f64 / 1e3,
        l.p95_ns as f64 / 1e3,
        l.p99_ns as f64 / 1e3,
        l.max_ns as f64 / 1e3
    );
    match r.peak_rss_bytes {
        Some(b) => say!(
            out,
            "  peak RSS:    {:.1} MiB",
            b as f64 / (1024.0 * 1024.0)
        ),
        None => say!(out, "  peak RSS:    unavailable"),
    }
    say!(out);
    say!(out, "CLEANUP");
    let cleaned: Vec<String> = m
        .cleanup
        .cleaned
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    say!(
        out,
        "  cleaned:     {}",
        if cleaned.is_empty() {
            "none".to_string()
        } else {
            cleaned.join(", ")
        }
    );
    say!(
        out,
        "  zombies after cleanup: {} (forced {}, memory-pressure {}); health: {:?}",
        r.zombies_after_cleanup,
        m.cleanup.force_triggered,
        m.cleanup.memory_pressure_triggered,
        r.health.status
    );
}

fn print_verification(out: &mut String, v: &Verdict) {
    say!(out, "VERIFICATION");
    say!(
        out,
        "  accounting (submitted = Σ outcomes, no op twice, none running):     {}",
        ok_or_failed(v.accounting_ok)
    );
    say!(
        out,
        "  state (targets: gap-free versions, replay = stored):                 {}",
        ok_or_failed(v.state_ok)
    );
    say!(
        out,
        "  money (Σ balances = Σ opening; each account = opening + the transfers"
    );
    say!(
        out,
        "         its callers saw commit, gap-free, never below 0):             {}",
        ok_or_failed(v.money_ok)
    );
    for p in &v.problems {
        say!(out, "  - {p}");
    }
    say!(out, "  verdict: {}", if v.ok { "PASS" } else { "FAIL" });
}

/// Combinations of flags that each parse but make no run together.
fn check_args(args: &Args) -> Result<(), String> {
    if args.targets == 0 && args.transfer_share < 100 {
        return Err(format!(
            "--targets must be at least 1: {}% of the operations are single-target ones \
             (only --transfer-share 100 needs no targets)",
            100 - args.transfer_share
        ));
    }
    if args.accounts < 2 && args.transfer_share > 0 {
        return Err(format!(
            "--accounts must be at least 2: a transfer moves money between two different \
             accounts (got {}; --transfer-share 0 runs without transfers)",
            args.accounts
        ));
    }
    Ok(())
}

/// Builds the report from what the run saw and what the store holds.
fn report(
    args: &Args,
    rt: &Runtime,
    wall: Duration,
    outcomes: &Outcomes,
    states: &States<'_>,
) -> Report {
    // Run what cleanup is due now (the sweeper would at its next interval).
    rt.sweep_expired();
    let zombies_after_cleanup = rt.operations().zombie_count();
    let health = rt.health();
    let m = rt.metrics();
    let verdict = verify(args, outcomes, states, &m);
    let committed = m.outcome(OutcomeKind::Committed);
    let rejected = [
        OutcomeKind::Rejected,
        OutcomeKind::Preempted,
        OutcomeKind::Overloaded,
    ]
    .iter()
    .map(|k| m.outcome(*k))
    .sum::<u64>();
    let refused = m.outcome(OutcomeKind::BodyError);
    let by_kind = |kind| outcomes.transfers_by_kind.get(&kind).copied().unwrap_or(0);
    let transfers = TransferReport {
        share_percent: args.transfer_share,
        submitted: outcomes.transfers_by_kind.values().sum(),
        committed: by_kind(OutcomeKind::Committed),
        refused_overdraw: by_kind(OutcomeKind::BodyError),
        not_committed: outcomes
            .transfers_by_kind
            .iter()
            .filter(|(k, _)| !matches!(k, OutcomeKind::Committed | OutcomeKind::BodyError))
            .map(|(k, v)| (k.as_str().to_string(), *v))
            .collect(),
        money_moved: outcomes
            .account_commits
            .iter()
            .flatten()
            .filter(|(_, d)| *d > 0)
            .map(|(_, d)| d)
            .sum(),
        opening_total: states.initial_accounts.iter().map(|a| a.balance).sum(),
        final_total: states.final_accounts.iter().map(|a| a.value.balance).sum(),
    };
    let accounts = states
        .final_accounts
        .iter()
        .zip(states.initial_accounts)
        .zip(&outcomes.account_commits)
        .map(|((f, i), sides)| AccountReport {
            name: f.value.name.clone(),
            opening: i.balance,
            balance: f.value.balance,
            sent: -sides
                .iter()
                .map(|(_, d)| d)
                .filter(|d| **d < 0)
                .sum::<i64>(),
            received: sides.iter().map(|(_, d)| d).filter(|d| **d > 0).sum(),
            version: f.version,
            commits: sides.len() as u64,
        })
        .collect();
    Report {
        backend: rt.store_name(),
        wall_seconds: wall.as_secs_f64(),
        throughput_ops_per_sec: args.ops as f64 / wall.as_secs_f64().max(1e-9),
        submitted: m.submitted,
        committed,
        rejected,
        refused,
        failed: m.ended - committed - rejected - refused,
        still_running: m.in_flight,
        outcomes: m.outcomes.clone(),
        targets: states
            .final_targets
            .iter()
            .zip(&outcomes.commits)
            .map(|(f, c)| TargetReport {
                name: f.value.name.clone(),
                hits: f.value.hits,
                total: f.value.total,
                version: f.version,
                commits: c.len() as u64,
            })
            .collect(),
        transfers,
        accounts,
        peak_rss_bytes: peak_rss_bytes(),
        zombies_after_cleanup,
        health,
        metrics: m,
        verdict,
        args: args.clone(),
    }
}

async fn connect(backend: &str) -> Result<Runtime, String> {
    match backend {
        "memory" => Ok(Runtime::in_memory()),
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let built = match Runtime::builder().postgres(url).await {
                Ok(b) => b.build().map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            built.map_err(|e| format!("cannot use {url}: {e}"))
        }
        other => Err(format!(
            "unknown --backend {other:?}: use `memory` or a postgres:// URL"
        )),
    }
}

async fn run(args: &Args) -> Result<Report, String> {
    let rt = connect(&args.backend).await?;
    let mut initial_targets = Vec::new();
    let mut targets = Vec::new();
    for i in 0..args.targets {
        let t = Target {
            id: EntityId::new(),
            name: format!("target-{i}"),
            hits: 0,
            total: 0,
        };
        let h =
            (rt.insert(t.clone()).await).map_err(|e| format!("cannot insert the targets: {e}"))?;
        targets.push(h);
        initial_targets.push(t);
    }
    let mut initial_accounts = Vec::new();
    let mut accounts = Vec::new();
    for i in 0..args.accounts {
        let a = Account {
            id: EntityId::new(),
            name: format!("account-{i}"),
            balance: OPENING_BALANCE,
        };
        let h =
            (rt.insert(a.clone()).await).map_err(|e| format!("cannot insert the accounts: {e}"))?;
        accounts.push(h);
        initial_accounts.push(a);
    }
    let planned = plan(args);
    let started = Instant::now();
    let outcomes = drive(args, &targets, &accounts, planned).await;
    let wall = started.elapsed();
    let mut final_targets = Vec::new();
    for h in &targets {
        final_targets.push((h.load().await).map_err(|e| format!("cannot load a target: {e}"))?);
    }
    let mut final_accounts = Vec::new();
    for h in &accounts {
        final_accounts.push((h.load().await).map_err(|e| format!("cannot load an account: {e}"))?);
    }
    let states = States {
        initial_targets: &initial_targets,
        final_targets: &final_targets,
        initial_accounts: &initial_accounts,
        final_accounts: &final_accounts,
    };
    Ok(report(args, &rt, wall, &outcomes, &states))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = check_args(&args) {
        eprintln!("stress: {e}");
        return ExitCode::from(2);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = args.workers {
        builder.worker_threads(w);
    }
    let tokio_rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match tokio_rt.block_on(run(&args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stress: {e}");
            return ExitCode::from(2);
        }
    };
    let text = if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("cannot serialize the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        let mut text = String::new();
        print_text(&mut text, &report);
        text
    };
    if let Err(e) = emit(&text) {
        eprintln!("stress: {e}");
        return ExitCode::from(2);
    }
    if report.verdict.ok {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "stress: verification FAILED ({} problem(s), listed under VERIFICATION)",
            report.verdict.problems.len()
        );
        ExitCode::FAILURE
    }
}
