//! The stress run: a workload that exercises every mechanism the report counts, and a verdict
//! that is proven, not asserted.
//!
//! Four single-target operation types hit a few shared targets, and a share of the operations
//! (20% by default, `--transfer-share`) are transfers between two random accounts that refuse
//! to overdraw (one call over two entities, committed on both or neither), all with mixed
//! priorities, in batches (closed loop) or at a fixed rate (open loop). By default the
//! single-target operations also mix the routes through the framework so that every kind of
//! conflict handling happens: most are staged (priority decides who runs; a loser is rejected
//! or requeued, drawn per call), a share skips staging and runs under OCC only (so commits race
//! and conflict), and a share has no grace period (so a higher-priority arrival preempts it).
//! At the end the run checks:
//!
//! * **accounting**: submitted = committed + every error kind; no operation reported twice;
//!   nothing still running;
//! * **state**: per target, the committed operations' versions are exactly `2..=final` (gap-free)
//!   and replaying them in version order from the initial value gives the stored final state;
//! * **money**: the accounts' balances add up to what they opened with (transfers only move
//!   money), and per account, replaying the transfers its callers were told committed, in
//!   version order (gap-free) from the opening balance, gives the stored balance without ever
//!   going below zero;
//! * **coverage** (default workload only): staging conflicts, priority wins, rejections,
//!   requeues, preemptions and OCC conflicts each happened at least once, so a check above
//!   cannot pass just because nothing raced.
//!
//! Any mismatch prints what failed and exits with status 1. `--sabotage` (a test aid) breaks
//! the store on purpose to show that the verdict catches it; `--profile seed` runs the design's
//! workload and prints its published figures beside ours.
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
use conflict_check::History;
use conflict_runtime::entity::EntityKey;
use conflict_runtime::prelude::*;
use conflict_runtime::store::{
    Commit, CommitOutcome, EntityCodec, EntityStore, MemoryStore, Snapshot, StoreFuture,
    StoredValue,
};
use conflict_runtime::{metrics::MetricsSnapshot, operation::OutcomeKind, policy};
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

/// Simulated work between reading the snapshot and writing it back. No work still yields to
/// the scheduler once, as any body that awaits something does: a body that never awaits runs
/// from its read to its write without letting another call on its worker move the entity in
/// between (no OCC conflict) or stop it (no preemption).
async fn work(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    } else {
        tokio::task::yield_now().await;
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
// Staged like `both`, but with no grace period: a staged call of strictly higher priority stops
// an executing one at once (the default 100 ms grace outlasts every body of a fast run).
op_set!(
    preemptible,
    pre_ecs(grace_period_ms = 0),
    occ(max_retries = 15)
);

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    /// Staging, then OCC (the framework default), with the shares of --occ-share and
    /// --preemptible-share routed differently.
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
    /// Each operation draws reject or requeue (half each), so both happen in one run.
    Mixed,
}

/// Which workload the flags start from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Profile {
    /// The defaults shown for each flag: a run that exercises every mechanism it reports.
    Default,
    /// The design's workload (30,000 operations of the four single-target types on 3 targets,
    /// batches of 100, 5 ms of work, losers rejected, no transfers, no OCC-only or preemptible
    /// share), reported beside the design's published figures. Flags given as well override it.
    Seed,
}

/// How `--sabotage` breaks the store (a test aid: it proves the verdict catches a broken store).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Sabotage {
    /// The compare is gone: every commit applies, whatever version it expected (its expected
    /// versions are rewritten to the current ones before the store sees it).
    Compare,
    /// Every commit is applied twice (the second time on top of the first).
    DoubleApply,
}

/// The stress run of the conflict framework (see the module docs).
#[derive(Parser, Debug, Clone, Serialize)]
#[command(version, about)]
struct Args {
    /// Workload to start from; flags given as well override its values.
    #[arg(long, value_enum, default_value_t = Profile::Default)]
    profile: Profile,
    /// Operations to submit (at least 1).
    #[arg(
        long,
        default_value_t = 30_000,
        value_parser = parse_positive::<u64>,
        allow_negative_numbers = true
    )]
    ops: u64,
    /// Shared targets of the four single-target operation types (at least 1 unless
    /// --transfer-share is 100).
    #[arg(
        long,
        default_value_t = 3,
        value_parser = parse_count::<usize>,
        allow_negative_numbers = true
    )]
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
    /// Share of the operations (single-target ones and transfers alike) that skip staging and
    /// run under OCC only, in percent (0..=100; --mode both only). They race the staged ones on
    /// the same entities, so commits meet newer versions (OCC conflicts) and retry, each retry
    /// after a backoff of up to 1 ms: the default keeps the run under 2 s.
    #[arg(
        long,
        value_name = "PERCENT",
        default_value_t = 2,
        value_parser = parse_percent,
        allow_negative_numbers = true
    )]
    occ_share: u8,
    /// Share of the operations that are staged with no grace period, in percent (0..=100, with
    /// --occ-share at most 100 in all; --mode both only): a staged call of strictly higher
    /// priority preempts one of them while it executes.
    #[arg(
        long,
        value_name = "PERCENT",
        default_value_t = 5,
        value_parser = parse_percent,
        allow_negative_numbers = true
    )]
    preemptible_share: u8,
    /// Accounts the transfers move money between, each opening with 1000 (at least 2 unless
    /// --transfer-share is 0).
    #[arg(
        long,
        default_value_t = 10,
        value_parser = parse_count::<usize>,
        allow_negative_numbers = true
    )]
    accounts: usize,
    /// Operations per batch (closed loop: a batch is submitted at once, the next when it has
    /// resolved; at least 1; not with --rate).
    #[arg(
        long,
        default_value_t = 100,
        value_parser = parse_positive::<usize>,
        allow_negative_numbers = true
    )]
    batch: usize,
    /// Open loop instead: submit at this many operations per second regardless of completion
    /// (at least 1).
    #[arg(long, value_parser = parse_positive::<u64>, allow_negative_numbers = true)]
    rate: Option<u64>,
    /// Simulated work between read and write, in milliseconds (the design used 5; 0 still
    /// yields to the scheduler once).
    #[arg(
        long,
        default_value_t = 0,
        value_parser = parse_count::<u64>,
        allow_negative_numbers = true
    )]
    work_ms: u64,
    /// Which stages run.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// What losers of a staging group do (not with --mode occ: nothing is staged there).
    #[arg(long, value_enum, default_value_t = OnLose::Mixed)]
    on_lose: OnLose,
    /// Seed of the workload generator (same seed, same workload).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON document instead of the text report.
    #[arg(long)]
    json: bool,
    /// Tokio worker threads (default: one per core; at least 1).
    #[arg(long, value_parser = parse_positive::<usize>, allow_negative_numbers = true)]
    workers: Option<usize>,
    /// Where the entities live: `memory` (the embedded store) or a database URL
    /// (`postgres://user@host:port/db`); the schema is created if missing.
    #[arg(long, default_value = "memory")]
    backend: String,
    /// Test aid, never for a real run: break the in-memory store on purpose, to show that the
    /// verdict fails (exit status 1) and names what broke. Memory backend only.
    #[arg(long, value_enum)]
    sabotage: Option<Sabotage>,
    /// Whether the workload is the default one (every workload flag at its default; the seed
    /// may differ): only then must the run exercise every kind of conflict handling. Set by
    /// `resolve_args`, not a flag.
    #[arg(skip)]
    default_workload: bool,
}

/// The flags that shape the workload (not how it is run, seeded or reported).
type WorkloadShape = (
    Profile,
    u64,
    usize,
    u8,
    u8,
    u8,
    usize,
    usize,
    Option<u64>,
    u64,
    Mode,
    OnLose,
);

impl Args {
    fn shape(&self) -> WorkloadShape {
        (
            self.profile,
            self.ops,
            self.targets,
            self.transfer_share,
            self.occ_share,
            self.preemptible_share,
            self.accounts,
            self.batch,
            self.rate,
            self.work_ms,
            self.mode,
            self.on_lose,
        )
    }
}

/// The design's workload (`/work/shared/design/occ-and-operation-hierarchy.md`, "Stress Test
/// Parameters" and the 5 ms `asyncio.sleep` of its OCC stage), for `--profile seed`.
const SEED_OPS: u64 = 30_000;
const SEED_TARGETS: usize = 3;
const SEED_BATCH: usize = 100;
const SEED_WORK_MS: u64 = 5;

/// Parses the command line and applies the profile: a seed-profile value for every workload
/// flag not given, and whether the result is the default workload. A parse error exits (status
/// 2, clap's message); flags that parse but make no run together are the error returned.
fn resolve_args() -> Result<Args, String> {
    use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    if args.profile == Profile::Seed {
        // Every workload flag the design fixed, unless given (the field names are the ids).
        macro_rules! seed {
            ($($field:ident = $value:expr),* $(,)?) => {
                $(if !given(stringify!($field)) {
                    args.$field = $value;
                })*
            };
        }
        seed!(
            ops = SEED_OPS,
            targets = SEED_TARGETS,
            batch = SEED_BATCH,
            work_ms = SEED_WORK_MS,
            transfer_share = 0,
            occ_share = 0,
            preemptible_share = 0,
            mode = Mode::Both,
            on_lose = OnLose::Reject,
        );
    }
    // The routing shares only mean something when both stages run: left at their defaults
    // with another mode they are off (the report says so), given explicitly they are refused
    // by `check_args`.
    if args.mode != Mode::Both {
        if !given("occ_share") {
            args.occ_share = 0;
        }
        if !given("preemptible_share") {
            args.preemptible_share = 0;
        }
    }
    let defaults = Args::parse_from(["stress"]);
    args.default_workload = args.shape() == defaults.shape();
    check_args(&args, &given)?;
    Ok(args)
}

/// `--transfer-share` and the other shares: a whole percentage, refused (not clamped) outside
/// `0..=100`.
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

/// A count that must be at least 1 (refused, not raised to 1, when 0 or negative).
fn parse_positive<T>(s: &str) -> Result<T, String>
where
    T: std::str::FromStr + Default + PartialEq,
{
    if s.trim().starts_with('-') {
        return Err(format!("`{}` is negative: give at least 1", s.trim()));
    }
    let n: T = parse_count(s)?;
    if n == T::default() {
        return Err("0 makes no sense here: give at least 1".to_string());
    }
    Ok(n)
}

/// A count that may be 0 but not negative (refused with a message, not a parse error).
fn parse_count<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(format!(
            "`{s}` is negative: give a whole number of 0 or more"
        ));
    }
    s.parse()
        .map_err(|_| format!("`{s}` is not a whole number (or is too large)"))
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

/// The staged set with no grace period (`--preemptible-share`).
fn preemptible_runner() -> RunFn {
    |h, op, w| Box::pin(preemptible::run(h, op, w))
}

/// The transfer of the staged set with no grace period (`--preemptible-share`).
fn preemptible_transfer_runner() -> TransferFn {
    |f, t, amount, w| Box::pin(preemptible::transfer(f, t, amount, w))
}

fn transfer_runner(mode: Mode) -> TransferFn {
    match mode {
        Mode::Both => |f, t, amount, w| Box::pin(both::transfer(f, t, amount, w)),
        Mode::PreEcs => |f, t, amount, w| Box::pin(pre_ecs_only::transfer(f, t, amount, w)),
        Mode::Occ => |f, t, amount, w| Box::pin(occ_only::transfer(f, t, amount, w)),
    }
}

/// How an operation goes through the framework.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// As `--mode` says (staged, then OCC, by default).
    Mode,
    /// OCC only, racing the staged operations on the same target (`--occ-share`).
    OccOnly,
    /// Staged with no grace period, so it can be preempted (`--preemptible-share`).
    Preemptible,
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
    route: Route,
    priority: OperationPriority,
    on_lose: conflict_runtime::config::OnLose,
}

/// 6 NORMAL : 3 HIGH : 1 CRITICAL, for every operation type alike.
fn draw_priority(rng: &mut fastrand::Rng) -> OperationPriority {
    match rng.u8(..10) {
        0..=5 => OperationPriority::NORMAL,
        6..=8 => OperationPriority::HIGH,
        _ => OperationPriority::CRITICAL,
    }
}

/// What a loser does: fixed by `--on-lose`, or drawn per operation with `mixed`.
fn draw_on_lose(args: &Args, rng: &mut fastrand::Rng) -> conflict_runtime::config::OnLose {
    use conflict_runtime::config::OnLose as L;
    match args.on_lose {
        OnLose::Requeue => L::Requeue,
        OnLose::Mixed if rng.bool() => L::Requeue,
        OnLose::Reject | OnLose::Mixed => L::Reject,
    }
}

/// Which route an operation takes. Like the transfer draw, nothing is drawn unless a share is
/// on, so the seed profile draws the same operations as a run without routing.
fn draw_route(args: &Args, rng: &mut fastrand::Rng) -> Route {
    if args.occ_share + args.preemptible_share == 0 {
        return Route::Mode;
    }
    match rng.u8(..100) {
        r if r < args.occ_share => Route::OccOnly,
        r if r < args.occ_share + args.preemptible_share => Route::Preemptible,
        _ => Route::Mode,
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
                let priority = draw_priority(&mut rng);
                return Planned {
                    work: Work::Transfer { from, to, amount },
                    route: draw_route(args, &mut rng),
                    priority,
                    on_lose: draw_on_lose(args, &mut rng),
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
            let target = rng.usize(..args.targets);
            Planned {
                work: Work::Target { target, op },
                route: draw_route(args, &mut rng),
                priority,
                on_lose: draw_on_lose(args, &mut rng),
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
    /// Rejections whose winner had a strictly higher priority than the loser, as the runtime's
    /// `Rejected` errors say (`priority`, `winner_priority`).
    priority_wins: u64,
    /// Rejections by a winner of the same priority (it was submitted first).
    order_wins: u64,
}

impl Outcomes {
    fn record_commit(&mut self, op_id: OpId) {
        *self.by_kind.entry(OutcomeKind::Committed).or_default() += 1;
        self.op_ids.push(op_id);
    }

    fn record_error<E>(&mut self, e: &ConflictError<E>) {
        *self.by_kind.entry(e.kind()).or_default() += 1;
        if let ConflictError::Rejected {
            priority,
            winner_priority,
            ..
        } = e
        {
            if policy::outranks(*winner_priority, *priority) {
                self.priority_wins += 1;
            } else {
                self.order_wins += 1;
            }
        }
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
    /// Whether the run had to exercise every kind of conflict handling (default workload).
    coverage_required: bool,
    /// Every kind happened at least once, or it was not required.
    coverage_ok: bool,
    /// The history checker (`conflict-check`) found no violation.
    history_ok: bool,
    problems: Vec<String>,
}

/// How often each kind of conflict handling happened: the runtime's metrics, except the
/// priority wins, which come from the runtime's `Rejected` errors (loser's and winner's
/// priority).
#[derive(Serialize)]
struct Exercised {
    /// Staging groups with more than one member (pre-ECS conflicts), each resolved to one
    /// winner.
    staging_conflicts: u64,
    /// Rejections whose winner had a strictly higher priority than the loser.
    priority_wins: u64,
    /// Operations that ended rejected (lost a staging group with `on_lose = reject`).
    rejections: u64,
    /// Lost rounds after which the loser stayed staged (`on_lose = requeue`).
    requeues: u64,
    /// Executing operations stopped by a staged one of higher priority.
    preemptions: u64,
    /// Commits that met a newer version than their snapshot (each then retried or gave up).
    occ_conflicts: u64,
    /// Retries started after an OCC conflict.
    occ_retries: u64,
}

impl Exercised {
    fn new(m: &MetricsSnapshot, outcomes: &Outcomes) -> Self {
        Self {
            staging_conflicts: m.staging_contended_groups,
            priority_wins: outcomes.priority_wins,
            rejections: m.outcome(OutcomeKind::Rejected),
            requeues: m.requeued,
            preemptions: m.preemptions,
            occ_conflicts: m.occ_conflicts,
            occ_retries: m.occ_retries,
        }
    }

    /// Every kind the default workload must exercise: name, count, what it is.
    fn kinds(&self) -> [(&'static str, u64, &'static str); 6] {
        [
            (
                "staging conflicts",
                self.staging_conflicts,
                "staging groups with more than one member, the design's pre-ECS conflicts",
            ),
            (
                "priority wins",
                self.priority_wins,
                "rejections whose winner had a strictly higher priority",
            ),
            (
                "rejections",
                self.rejections,
                "losers of a staging group ended with Rejected",
            ),
            (
                "requeues",
                self.requeues,
                "losers of a staging group kept staged for the next round",
            ),
            (
                "preemptions",
                self.preemptions,
                "executing operations stopped by a higher-priority arrival",
            ),
            (
                "OCC conflicts",
                self.occ_conflicts,
                "commits that met a newer version than their snapshot",
            ),
        ]
    }
}

/// One figure of the seed profile: ours (measured in this run) beside the design's (published).
#[derive(Serialize)]
struct SeedRow {
    /// What the figure is.
    figure: String,
    /// Its unit.
    unit: &'static str,
    /// Measured in this run.
    ours: f64,
    /// Published in the design (a claim we did not re-measure).
    design: f64,
}

/// Where the design's figures come from.
const DESIGN_SOURCE: &str = "/work/shared/design/occ-and-operation-hierarchy.md, \"Latest Stress \
                             Test Results (30,000 operations)\" and \"Validation\"";

/// The design's published retry statistics per operation type (its `brutal_*` types): average
/// and maximum retries per success, and successes on the first try.
const DESIGN_RETRIES: [(&str, f64, f64, f64); 4] = [
    ("accumulate", 2.2, 13.0, 32.0),
    ("increment", 2.3, 13.0, 28.0),
    ("update", 2.4, 13.0, 35.0),
    ("version", 2.5, 13.0, 25.0),
];

/// Our figures beside the design's published ones (`--profile seed`).
fn seed_rows(r: &Report) -> Vec<SeedRow> {
    let m = &r.metrics;
    let row = |figure: &str, unit, ours: u64, design| SeedRow {
        figure: figure.to_string(),
        unit,
        ours: ours as f64,
        design,
    };
    let mut rows = vec![
        row(
            "pre-ECS conflicts detected (staging groups with more than one member)",
            "groups",
            m.staging_contended_groups,
            900.0,
        ),
        row(
            "pre-ECS conflicts resolved (one winner chosen per contended group)",
            "groups",
            m.staging_contended_groups,
            900.0,
        ),
        row(
            "OCC conflicts detected (commits that met a newer version)",
            "commits",
            m.occ_conflicts,
            1_401.0,
        ),
        row("OCC retries attempted", "retries", m.occ_retries, 1_401.0),
        row(
            "OCC failures (max retries hit)",
            "operations",
            m.outcome(OutcomeKind::RetriesExhausted),
            0.0,
        ),
        row(
            "OCC operations still retrying when the run ended",
            "operations",
            m.in_flight,
            933.0,
        ),
        SeedRow {
            figure: "wall time of the run".to_string(),
            unit: "seconds",
            ours: r.wall_seconds,
            design: 42.0,
        },
    ];
    for (name, avg, max, first) in DESIGN_RETRIES {
        let t = m
            .op_types
            .iter()
            .find(|t| t.name == name && t.module.ends_with("::both"));
        let (our_avg, our_max, our_first) = t.map_or((0.0, 0, 0), |t| {
            let s = &t.retries_per_success;
            (s.avg, s.max, s.first_try)
        });
        rows.push(SeedRow {
            figure: format!("{name}: average retries per committed call"),
            unit: "retries",
            ours: our_avg,
            design: avg,
        });
        rows.push(row(
            &format!("{name}: most retries of one committed call"),
            "retries",
            our_max,
            max,
        ));
        rows.push(row(
            &format!("{name}: calls committed on the first try"),
            "operations",
            our_first,
            first,
        ));
    }
    rows
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
    exercised: Exercised,
    /// Rejections by a winner of the same priority (submitted earlier).
    order_wins: u64,
    /// `--profile seed` only: our figures beside the design's.
    seed_comparison: Option<Vec<SeedRow>>,
    /// What the history checker looked at.
    history: HistoryReport,
    verdict: Verdict,
}

/// What `conflict-check` checked (its violations are in the verdict's problems).
#[derive(Serialize)]
struct HistoryReport {
    violations: usize,
    calls: usize,
    entities: usize,
    writes: usize,
    multi_entity_commits: usize,
    staging_decisions: usize,
    preemptions: usize,
}

impl HistoryReport {
    fn new(r: &conflict_check::Report) -> Self {
        Self {
            violations: r.violations.len(),
            calls: r.stats.calls,
            entities: r.stats.entities,
            writes: r.stats.writes,
            multi_entity_commits: r.stats.multi_entity_commits,
            staging_decisions: r.stats.staging_decisions,
            preemptions: r.stats.preemptions,
        }
    }
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
    work_ms: u64,
    outcomes: Arc<Mutex<Outcomes>>,
    progress: indicatif::ProgressBar,
    /// Every call, as `conflict-check` records it (invoke, return, outcome, versions).
    history: History,
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
                let run = match p.route {
                    Route::Mode => self.run,
                    Route::OccOnly => runner(Mode::Occ),
                    Route::Preemptible => preemptible_runner(),
                };
                tokio::spawn(async move { this.target_op(&p, run, target, &h, op).await })
            }
            Work::Transfer { from, to, amount } => {
                let (hf, ht) = (accounts[from].clone(), accounts[to].clone());
                let transfer = match p.route {
                    Route::Mode => self.transfer,
                    Route::OccOnly => transfer_runner(Mode::Occ),
                    Route::Preemptible => preemptible_transfer_runner(),
                };
                tokio::spawn(async move {
                    this.transfer_op(&p, transfer, (from, &hf), (to, &ht), amount)
                        .await;
                })
            }
        }
    }

    fn scope(p: &Planned) -> conflict_runtime::operation::Scope {
        conflict_runtime::operation::scope()
            .priority(p.priority)
            .on_lose(p.on_lose)
    }

    async fn target_op(
        &self,
        p: &Planned,
        run: RunFn,
        target: usize,
        handle: &Handle<Target>,
        op: Op,
    ) {
        let call = self.history.invoke(op.name(), [handle.key().clone()]);
        let result = Self::scope(p).run(run(handle, op, self.work_ms)).await;
        call.returned(&result);
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
        p: &Planned,
        transfer: TransferFn,
        (from, hf): (usize, &Handle<Account>),
        (to, ht): (usize, &Handle<Account>),
        amount: i64,
    ) {
        let call = self
            .history
            .invoke("transfer", [hf.key().clone(), ht.key().clone()]);
        let r = Self::scope(p)
            .run(transfer(hf, ht, amount, self.work_ms))
            .await;
        call.returned(&r);
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
    history: &History,
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
        work_ms: args.work_ms,
        outcomes: outcomes.clone(),
        progress: progress.clone(),
        history: history.clone(),
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
    /// `conflict-check`'s verdict on the recorded history.
    history: &'a conflict_check::Report,
}

/// Sorts `commits` by version and says whether they are exactly `2..=len + 1`.
fn gap_free<T>(commits: &mut [(u64, T)]) -> bool {
    commits.sort_by_key(|(v, _)| *v);
    commits
        .iter()
        .zip(2u64..)
        .all(|((v, _), expected)| *v == expected)
}

fn verify(
    args: &Args,
    outcomes: &Outcomes,
    states: &States<'_>,
    m: &MetricsSnapshot,
    exercised: &Exercised,
) -> Verdict {
    let mut problems = check_accounting(args, outcomes, m);
    let state = check_state(outcomes, states);
    let money = check_money(outcomes, states);
    let coverage = if args.default_workload {
        check_coverage(exercised)
    } else {
        Vec::new()
    };
    let history = check_history(states.history);
    let (accounting_ok, state_ok, money_ok, coverage_ok, history_ok) = (
        problems.is_empty(),
        state.is_empty(),
        money.is_empty(),
        coverage.is_empty(),
        history.is_empty(),
    );
    problems.extend(state);
    problems.extend(money);
    problems.extend(coverage);
    problems.extend(history);
    Verdict {
        ok: accounting_ok && state_ok && money_ok && coverage_ok && history_ok,
        accounting_ok,
        state_ok,
        money_ok,
        coverage_required: args.default_workload,
        coverage_ok,
        history_ok,
        problems,
    }
}

/// History: `conflict-check`'s rules over every recorded call and event (each call ended once,
/// versions gap-free per entity, per-entity order agrees with real time, multi-entity commits
/// serializable, staging decisions ranked). The first few violations are listed.
fn check_history(report: &conflict_check::Report) -> Vec<String> {
    const SHOWN: usize = 8;
    let mut out: Vec<String> = report
        .violations
        .iter()
        .take(SHOWN)
        .map(|v| format!("history: {v:?}"))
        .collect();
    if report.violations.len() > SHOWN {
        out.push(format!(
            "history: {} more violations",
            report.violations.len() - SHOWN
        ));
    }
    out
}

/// Coverage: the default workload exists to exercise every kind of conflict handling; if one
/// stopped happening, the checks above would pass without having been put to the test.
fn check_coverage(exercised: &Exercised) -> Vec<String> {
    exercised
        .kinds()
        .iter()
        .filter(|(_, n, _)| *n == 0)
        .map(|(kind, _, what)| {
            format!(
                "coverage: the default workload no longer exercises {kind} ({what}): none \
                 happened, so the checks above were not put to the test by them"
            )
        })
        .collect()
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
    print_analysis(out, r);
    say!(out);
    print_op_types(out, r);
    say!(out);
    print_entities(out, r);
    say!(out);
    print_run(out, r);
    if let Some(rows) = &r.seed_comparison {
        say!(out);
        print_seed(out, r, rows);
    }
    say!(out);
    print_verification(out, r);
}

/// `part` as a percentage of `whole` (0 when `whole` is 0).
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The workload and the outcomes.
fn print_operations(out: &mut String, r: &Report) {
    let a = &r.args;
    let t = &r.transfers;
    say!(
        out,
        "conflict stress run (profile {}{})",
        format!("{:?}", a.profile).to_lowercase(),
        if a.default_workload {
            ": the default workload"
        } else {
            ""
        }
    );
    say!(
        out,
        "  {} operations: {} single-target ones on {} targets, {} transfers ({}%) among {} \
         accounts",
        a.ops,
        a.ops - t.submitted,
        a.targets,
        t.submitted,
        t.share_percent,
        a.accounts
    );
    say!(
        out,
        "  routes: {}% OCC only (no staging), {}% staged with no grace period (preemptible), \
         the rest as --mode {} says",
        a.occ_share,
        a.preemptible_share,
        mode_name(a.mode)
    );
    let on_lose = if a.mode == Mode::Occ {
        "n/a (nothing is staged)".to_string()
    } else {
        format!("{:?}", a.on_lose).to_lowercase()
    };
    say!(
        out,
        "  {}, {} ms of simulated work per attempt, losers of a staging group: {on_lose}, \
         seed {}, backend {}",
        a.rate.map_or_else(
            || format!("closed loop in batches of {} operations", a.batch),
            |x| format!("open loop at {x} operations/s")
        ),
        a.work_ms,
        a.seed,
        r.backend
    );
    say!(out);
    let pct = |n| percent(n, r.submitted);
    say!(
        out,
        "OPERATIONS (calls, and their share of the submitted ones)"
    );
    say!(out, "  submitted:        {:>8}", r.submitted);
    say!(
        out,
        "  committed:        {:>8}  {:>5.1}%",
        r.committed,
        pct(r.committed)
    );
    say!(
        out,
        "  refused:          {:>8}  {:>5.1}%  (transfers that would overdraw: nothing written)",
        r.refused,
        pct(r.refused)
    );
    say!(
        out,
        "  rejected:         {:>8}  {:>5.1}%  (lost a staging group, preempted or overloaded: \
         nothing written)",
        r.rejected,
        pct(r.rejected)
    );
    say!(
        out,
        "  failed:           {:>8}  {:>5.1}%  (out of retries, or another error)",
        r.failed,
        pct(r.failed)
    );
    say!(
        out,
        "  still running:    {:>8}           (when the report was taken)",
        r.still_running
    );
    say!(out, "  by outcome (the runtime's labels):");
    for (k, v) in &r.outcomes {
        if *v > 0 {
            say!(out, "    {k:<20}{v:>8}");
        }
    }
}

/// The conflict analysis: who waited, won, lost and retried, and why.
fn print_analysis(out: &mut String, r: &Report) {
    let m = &r.metrics;
    let e = &r.exercised;
    say!(
        out,
        "CONFLICT RESOLUTION ANALYSIS (counts from the runtime's metrics; \"pre-ECS\" is the \
         design's name for staging: conflicts settled by priority before a body runs)"
    );
    say!(
        out,
        "  pre-ECS conflicts detected:      {:>8}  (staging groups with more than one member)",
        e.staging_conflicts
    );
    say!(
        out,
        "  pre-ECS conflicts resolved:      {:>8}  (each contended group got exactly one winner)",
        e.staging_conflicts
    );
    say!(
        out,
        "  calls that waited staged:        {:>8}  (the target was busy when they arrived)",
        m.staged
    );
    say!(
        out,
        "  lost rounds:                     {:>8}  (members not chosen: {} rejected, {} \
         requeued for the next round)",
        m.staging_losers,
        m.staging_losers - m.requeued,
        e.requeues
    );
    say!(
        out,
        "  priority wins:                   {:>8}  (rejections whose winner had a higher \
         priority, from the Rejected errors; {} more lost to an earlier call of the same \
         priority)",
        e.priority_wins,
        r.order_wins
    );
    say!(
        out,
        "  preemptions:                     {:>8}  (executing calls stopped by a \
         higher-priority arrival, counted per entity; {} calls ended Preempted)",
        e.preemptions,
        m.outcome(OutcomeKind::Preempted)
    );
    say!(
        out,
        "  displaced:                       {:>8}  (staged calls pushed out of a full staging \
         area)",
        m.displaced
    );
    say!(
        out,
        "  OCC conflicts detected:          {:>8}  (commits that met a newer version than \
         their snapshot)",
        e.occ_conflicts
    );
    say!(
        out,
        "  OCC retries attempted:           {:>8}  (body runs again after a conflict)",
        e.occ_retries
    );
    say!(
        out,
        "  OCC failures (max retries hit):  {:>8}  (calls that gave up)",
        m.outcome(OutcomeKind::RetriesExhausted)
    );
}

/// Per annotated function: which route it is, its conflicts and retries.
fn print_op_types(out: &mut String, r: &Report) {
    let m = &r.metrics;
    say!(
        out,
        "PER OPERATION TYPE (set::function; set: both = staged then OCC, occ_only, \
         pre_ecs_only, preemptible = staged with no grace period)"
    );
    say!(
        out,
        "  {:<26}{:>10}{:>9}{:>10}{:>9}{:>10}{:>7}{:>10}",
        "type",
        "conflicts",
        "retries",
        "committed",
        "failed",
        "avg retry",
        "max",
        "first-try"
    );
    for t in &m.op_types {
        let set = t.module.rsplit("::").next().unwrap_or(&t.module);
        say!(
            out,
            "  {:<26}{:>10}{:>9}{:>10}{:>9}{:>10.2}{:>7}{:>10}",
            format!("{set}::{}", t.name),
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
        "  conflicts: OCC conflicts at commit; retries: body runs after one; committed / \
         failed: calls; avg retry and max: retries per committed call; first-try: calls \
         committed on their first attempt. A transfer's failures include the ones refused \
         because they would overdraw."
    );
}

/// The targets, the transfers and the accounts.
fn print_entities(out: &mut String, r: &Report) {
    let t = &r.transfers;
    say!(
        out,
        "PER TARGET (hits: count of increment, accumulate and version commits applied; total: \
         sum of the amounts added, reset by each update; version: the stored version, 1 at \
         insert + 1 per commit; commits: commits the callers were told of)"
    );
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
        "TRANSFERS (move 1..={MAX_TRANSFER} units of money between two random accounts, both \
         written or neither; counts are calls)"
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
        "  money moved:                {:>8}  (units: sum of the committed amounts)",
        t.money_moved
    );
    say!(out);
    print_accounts(out, r);
}

/// Per account, and all of them.
fn print_accounts(out: &mut String, r: &Report) {
    say!(
        out,
        "PER ACCOUNT (units of money; each opened with {OPENING_BALANCE}; version: the stored \
         version; commits: committed transfers it took part in)"
    );
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
        r.transfers.final_total,
        r.transfers.opening_total
    );
}

/// Time, memory and cleanup.
fn print_run(out: &mut String, r: &Report) {
    let m = &r.metrics;
    say!(out, "PERFORMANCE");
    say!(
        out,
        "  wall time:   {:.3} s  (from the first submission to the last outcome)",
        r.wall_seconds
    );
    say!(
        out,
        "  throughput:  {:.0} operations/s  (submitted operations / wall time)",
        r.throughput_ops_per_sec
    );
    let l = &m.latency;
    say!(
        out,
        "  latency:     p50 {:.1} µs, p95 {:.1} µs, p99 {:.1} µs, max {:.1} µs  \
         (microseconds from a call's submission to its outcome, every outcome)",
        l.p50_ns as f64 / 1e3,
        l.p95_ns as f64 / 1e3,
        l.p99_ns as f64 / 1e3,
        l.max_ns as f64 / 1e3
    );
    match r.peak_rss_bytes {
        Some(b) => say!(
            out,
            "  peak RSS:    {:.1} MiB  (the process's peak resident memory, VmHWM)",
            b as f64 / (1024.0 * 1024.0)
        ),
        None => say!(out, "  peak RSS:    unavailable"),
    }
    say!(out);
    say!(
        out,
        "CLEANUP (records of ended operations, by cleanup strategy)"
    );
    let cleaned: Vec<String> = m
        .cleanup
        .cleaned
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    say!(
        out,
        "  records cleaned: {}",
        if cleaned.is_empty() {
            "none".to_string()
        } else {
            cleaned.join(", ")
        }
    );
    say!(
        out,
        "  zombie records after cleanup: {} (cleanups forced by the record threshold {}, by \
         memory pressure {}); health: {:?}",
        r.zombies_after_cleanup,
        m.cleanup.force_triggered,
        m.cleanup.memory_pressure_triggered,
        r.health.status
    );
}

/// `--profile seed`: our figures beside the design's published ones.
fn print_seed(out: &mut String, r: &Report, rows: &[SeedRow]) {
    say!(
        out,
        "SEED PROFILE: OURS (measured in this run) BESIDE THE DESIGN'S (published claims)"
    );
    say!(
        out,
        "  {:<72}{:>12}{:>12}  unit",
        "figure",
        "ours",
        "design"
    );
    for row in rows {
        let fmt = |x: f64| {
            if row.unit == "seconds" || x.fract() != 0.0 {
                format!("{x:.2}")
            } else {
                format!("{x:.0}")
            }
        };
        say!(
            out,
            "  {:<72}{:>12}{:>12}  {}",
            row.figure,
            fmt(row.ours),
            fmt(row.design),
            row.unit
        );
    }
    say!(
        out,
        "  design: published in {DESIGN_SOURCE}; not re-measured here."
    );
    say!(
        out,
        "  It ran in Python/asyncio with up to 25 retries (ours: 15), ramped its submissions up \
         over 10 s and reported operations still retrying when it stopped; this run waits for \
         every operation to end (still running: {}), so that figure is 0 here by design.",
        r.still_running
    );
    if r.args.occ_share == 0 && r.args.mode != Mode::Occ {
        say!(
            out,
            "  Staging lets one call per target execute at a time, so with no OCC-only share \
             and no other writer our staged calls never meet a newer version: 0 OCC conflicts \
             is the expected figure, not a failure to measure."
        );
    }
}

fn print_verification(out: &mut String, r: &Report) {
    let v = &r.verdict;
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
    say!(
        out,
        "  coverage (each kind of conflict handling happened at least once):   {}",
        if v.coverage_required {
            ok_or_failed(v.coverage_ok)
        } else {
            "not required (not the default workload)"
        }
    );
    for (kind, n, _) in r.exercised.kinds() {
        say!(out, "    {kind:<20}{n:>8}");
    }
    say!(
        out,
        "  history (conflict-check: each call ended once, versions gap-free, order agrees"
    );
    say!(
        out,
        "           with real time, multi-entity serializable, staging ranked): {}",
        ok_or_failed(v.history_ok)
    );
    let h = &r.history;
    say!(
        out,
        "    {} calls, {} entities, {} writes, {} multi-entity commits, {} staging decisions, \
         {} preemptions checked",
        h.calls,
        h.entities,
        h.writes,
        h.multi_entity_commits,
        h.staging_decisions,
        h.preemptions
    );
    for p in &v.problems {
        say!(out, "  - {p}");
    }
    let unwritten = r.rejected;
    let share = percent(unwritten, r.submitted);
    say!(
        out,
        "  verdict: {}: the checks cover the {} calls that committed ({:.1}% of {}); {} \
         ({share:.1}%) were rejected, preempted or overloaded and wrote nothing",
        if v.ok { "PASS" } else { "FAIL" },
        r.committed,
        percent(r.committed, r.submitted),
        r.submitted,
        unwritten
    );
    if share >= 50.0 {
        say!(
            out,
            "  note: most calls ({share:.1}%) were turned away before writing anything; a PASS \
             says what committed is consistent, not that most of the work got done"
        );
    }
}

/// Combinations of flags that each parse but make no run together (`given`: whether a flag was
/// on the command line, so that a default is never refused for what another flag implies).
fn check_args(args: &Args, given: &dyn Fn(&str) -> bool) -> Result<(), String> {
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
    if args.mode != Mode::Both {
        for flag in ["occ_share", "preemptible_share"] {
            if given(flag) {
                return Err(format!(
                    "--{} routes a share of the staged operations differently: it needs \
                     --mode both (got --mode {})",
                    flag.replace('_', "-"),
                    mode_name(args.mode)
                ));
            }
        }
    }
    if u16::from(args.occ_share) + u16::from(args.preemptible_share) > 100 {
        return Err(format!(
            "--occ-share {} and --preemptible-share {} are shares of the same operations: \
             together at most 100",
            args.occ_share, args.preemptible_share
        ));
    }
    if args.rate.is_some() && given("batch") {
        return Err(
            "--batch sizes the closed loop; --rate runs an open loop instead: give one \
                    of them"
                .to_string(),
        );
    }
    if args.mode == Mode::Occ && given("on_lose") {
        return Err(
            "--on-lose says what losers of a staging group do; --mode occ stages nothing"
                .to_string(),
        );
    }
    if args.sabotage.is_some() && args.backend != "memory" {
        return Err(format!(
            "--sabotage breaks the embedded store on purpose (a test aid); it cannot wrap \
             --backend {}",
            args.backend
        ));
    }
    Ok(())
}

/// The flag value of a mode, as the user types it.
fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Both => "both",
        Mode::PreEcs => "pre-ecs",
        Mode::Occ => "occ",
    }
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
    let exercised = Exercised::new(&m, outcomes);
    let verdict = verify(args, outcomes, states, &m, &exercised);
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
    let mut report = Report {
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
        exercised,
        order_wins: outcomes.order_wins,
        seed_comparison: None,
        history: HistoryReport::new(states.history),
        verdict,
        args: args.clone(),
    };
    if args.profile == Profile::Seed {
        report.seed_comparison = Some(seed_rows(&report));
    }
    report
}

/// The embedded store, broken on purpose for `--sabotage` (a test aid: the verdict must catch
/// it). Commits are applied one at a time so the sabotage does the same thing on every run.
struct SabotagedStore {
    inner: MemoryStore,
    how: Sabotage,
    serial: tokio::sync::Mutex<()>,
}

/// The codec of a stress entity, from its key (the sabotaged store reloads what it commits).
fn codec_of(key: &EntityKey) -> Result<EntityCodec, StoreError> {
    match &*key.entity_type {
        Target::TYPE_NAME => Ok(EntityCodec::of::<Target>()),
        Account::TYPE_NAME => Ok(EntityCodec::of::<Account>()),
        other => Err(StoreError::Backend {
            message: format!("the sabotaged stress store holds no {other}"),
            source: None,
        }),
    }
}

impl SabotagedStore {
    /// The current version of `key`, which a broken compare claims the commit expected.
    async fn current(&self, key: &EntityKey) -> Result<Option<u64>, StoreError> {
        let snapshot = self.inner.load(key, codec_of(key)?).await?;
        Ok(snapshot.map(|s| s.version))
    }

    /// Rewrites every expected and read version to the current one: the commit then applies
    /// over whatever was written since its snapshot (a lost update).
    async fn without_compare(&self, mut commit: Commit) -> Result<CommitOutcome, StoreError> {
        for w in &mut commit.writes {
            if let Some(v) = self.current(&w.key).await? {
                w.expected_version = v;
            }
        }
        for d in &mut commit.deletes {
            if let Some(v) = self.current(&d.key).await? {
                d.expected_version = v;
            }
        }
        for r in &mut commit.reads {
            if let Some(v) = self.current(&r.key).await? {
                r.version = v;
            }
        }
        self.inner.commit(commit).await
    }

    /// Applies the commit, then the same writes again on top: every entity moves two versions
    /// and the caller hears of the first only.
    async fn twice(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        let mut again = commit.clone();
        let first = self.inner.commit(commit).await?;
        if let CommitOutcome::Committed { versions, .. } = &first {
            for (w, v) in again.writes.iter_mut().zip(versions) {
                w.expected_version = *v;
            }
            again.deletes.clear();
            again.reads.clear();
            self.inner.commit(again).await?;
        }
        Ok(first)
    }
}

impl EntityStore for SabotagedStore {
    fn name(&self) -> &'static str {
        match self.how {
            Sabotage::Compare => "memory, sabotaged: no compare",
            Sabotage::DoubleApply => "memory, sabotaged: every commit applied twice",
        }
    }

    fn load<'a>(
        &'a self,
        key: &'a EntityKey,
        codec: EntityCodec,
    ) -> StoreFuture<'a, Option<Snapshot>> {
        self.inner.load(key, codec)
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [(EntityKey, EntityCodec)],
    ) -> StoreFuture<'a, Vec<Option<Snapshot>>> {
        self.inner.load_many(keys)
    }

    fn insert(&self, key: EntityKey, value: StoredValue) -> StoreFuture<'_, Snapshot> {
        self.inner.insert(key, value)
    }

    fn commit(&self, commit: Commit) -> StoreFuture<'_, CommitOutcome> {
        Box::pin(async move {
            let _one_at_a_time = self.serial.lock().await;
            match self.how {
                Sabotage::Compare => self.without_compare(commit).await,
                Sabotage::DoubleApply => self.twice(commit).await,
            }
        })
    }
}

/// Events the runtime buffers for the history recorder between two of its turns (a lagging
/// recorder makes the history check fail, never pass).
const EVENT_CAPACITY: usize = 1 << 16;

async fn connect(args: &Args) -> Result<Runtime, String> {
    if let Some(how) = args.sabotage {
        let store = SabotagedStore {
            inner: MemoryStore::new(),
            how,
            serial: tokio::sync::Mutex::new(()),
        };
        return Runtime::builder()
            .store(store)
            .event_capacity(EVENT_CAPACITY)
            .build()
            .map_err(|e| e.to_string());
    }
    match args.backend.as_str() {
        "memory" => Runtime::builder()
            .event_capacity(EVENT_CAPACITY)
            .build()
            .map_err(|e| e.to_string()),
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let built = match Runtime::builder().postgres(url).await {
                Ok(b) => b
                    .event_capacity(EVENT_CAPACITY)
                    .build()
                    .map_err(|e| e.to_string()),
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
    let rt = connect(args).await?;
    // Every call and every event, for the history checker: subscribed before the first call,
    // drained by a task of its own while the run lasts (the event buffer only has to hold
    // what piles up between two of its turns).
    let history = History::new();
    let mut events = rt.subscribe();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let drain = {
        let history = history.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    r = events.recv() => match r {
                        Some(r) => history.observe_received(&r),
                        None => break,
                    },
                    _ = &mut stopped => {
                        history.drain(&mut events);
                        break;
                    }
                }
            }
        })
    };
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
        history.initial(h.key().clone(), 1, None);
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
        history.initial(h.key().clone(), 1, None);
        accounts.push(h);
        initial_accounts.push(a);
    }
    let planned = plan(args);
    let started = Instant::now();
    let outcomes = drive(args, &targets, &accounts, planned, &history).await;
    let wall = started.elapsed();
    let _ = stop.send(());
    drain
        .await
        .map_err(|e| format!("the event recorder failed: {e}"))?;
    let mut final_targets = Vec::new();
    for h in &targets {
        final_targets.push((h.load().await).map_err(|e| format!("cannot load a target: {e}"))?);
    }
    let mut final_accounts = Vec::new();
    for h in &accounts {
        final_accounts.push((h.load().await).map_err(|e| format!("cannot load an account: {e}"))?);
    }
    let checked = history.check();
    let states = States {
        initial_targets: &initial_targets,
        final_targets: &final_targets,
        initial_accounts: &initial_accounts,
        final_accounts: &final_accounts,
        history: &checked,
    };
    Ok(report(args, &rt, wall, &outcomes, &states))
}

fn main() -> ExitCode {
    let args = match resolve_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("stress: {e}");
            return ExitCode::from(2);
        }
    };
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
