//! The stress run: the design's 30,000-operation workload on 3 targets, with a verdict that is
//! proven, not asserted.
//!
//! Four operation types hit a few shared targets with mixed priorities, in batches (closed
//! loop) or at a fixed rate (open loop). At the end the run checks:
//!
//! * **accounting**: submitted = committed + every error kind; no operation reported twice;
//!   nothing still running;
//! * **state**: per target, the committed operations' versions are exactly `2..=final` (gap-free)
//!   and replaying them in version order from the initial value gives the stored final state.
//!
//! Any mismatch prints what failed and exits with status 1.
//!
//! `cargo run --release -p conflict-examples --bin stress -- --help`

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
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

/// Simulated work between reading the snapshot and writing it back.
async fn work(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// One set of the four operations per stage selection (the mode is compile-time; what losers
/// do is a per-call override, `scope().on_lose(..)`).
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
    /// Shared targets.
    #[arg(long, default_value_t = 3)]
    targets: usize,
    /// Operations per batch (closed loop: a batch is submitted at once, the next when it has
    /// resolved).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Open loop instead: submit at this many operations per second regardless of completion.
    #[arg(long)]
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
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Where the entities live: `memory` (the embedded store) or a PostgreSQL URL
    /// (`postgres://user@host:port/db`); the schema is created if missing.
    #[arg(long, default_value = "memory")]
    backend: String,
}

type RunFn = for<'a> fn(
    &'a Handle<Target>,
    Op,
    u64,
) -> std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<Committed<()>, ConflictError<std::convert::Infallible>>,
            > + Send
            + 'a,
    >,
>;

fn runner(mode: Mode) -> RunFn {
    match mode {
        Mode::Both => |h, op, w| Box::pin(both::run(h, op, w)),
        Mode::PreEcs => |h, op, w| Box::pin(pre_ecs_only::run(h, op, w)),
        Mode::Occ => |h, op, w| Box::pin(occ_only::run(h, op, w)),
    }
}

/// One submitted operation, as the driver planned it.
#[derive(Debug, Clone, Copy)]
struct Planned {
    target: usize,
    op: Op,
    priority: OperationPriority,
}

fn plan(args: &Args) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(args.seed);
    (0..args.ops)
        .map(|_| {
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
            // 6 NORMAL : 3 HIGH : 1 CRITICAL
            let priority = match rng.u8(..10) {
                0..=5 => OperationPriority::NORMAL,
                6..=8 => OperationPriority::HIGH,
                _ => OperationPriority::CRITICAL,
            };
            Planned {
                target: rng.usize(..args.targets),
                op,
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
    by_kind: BTreeMap<OutcomeKind, u64>,
    op_ids: Vec<OpId>,
    untagged_errors: u64,
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
struct Verdict {
    ok: bool,
    accounting_ok: bool,
    state_ok: bool,
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
    failed: u64,
    still_running: u64,
    outcomes: BTreeMap<String, u64>,
    targets: Vec<TargetReport>,
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

async fn drive(
    args: &Args,
    rt: &Runtime,
    handles: &[Handle<Target>],
    planned: Vec<Planned>,
) -> Outcomes {
    let run = runner(args.mode);
    let on_lose = match args.on_lose {
        OnLose::Reject => conflict_runtime::config::OnLose::Reject,
        OnLose::Requeue => conflict_runtime::config::OnLose::Requeue,
    };
    let outcomes = Arc::new(Mutex::new(Outcomes {
        commits: vec![Vec::new(); handles.len()],
        ..Outcomes::default()
    }));
    let progress = if std::io::stderr().is_terminal() && !args.json {
        indicatif::ProgressBar::new(args.ops)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let submit = |p: Planned| {
        let h = handles[p.target].clone();
        let outcomes = outcomes.clone();
        let progress = progress.clone();
        let work_ms = args.work_ms;
        tokio::spawn(async move {
            let r = conflict_runtime::operation::scope()
                .priority(p.priority)
                .on_lose(on_lose)
                .run(run(&h, p.op, work_ms))
                .await;
            // The driver's own bookkeeping: one short critical section per operation.
            let mut o = outcomes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match r {
                Ok(c) => {
                    o.commits[p.target].push((c.version, p.op));
                    *o.by_kind.entry(OutcomeKind::Committed).or_default() += 1;
                    o.op_ids.push(c.op_id);
                }
                Err(e) => {
                    *o.by_kind.entry(e.kind()).or_default() += 1;
                    match e.op_id() {
                        Some(id) => o.op_ids.push(id),
                        None => o.untagged_errors += 1,
                    }
                }
            }
            drop(o);
            progress.inc(1);
        })
    };
    match args.rate {
        None => {
            for chunk in planned.chunks(args.batch.max(1)) {
                let tasks: Vec<_> = chunk.iter().map(|p| submit(*p)).collect();
                for t in tasks {
                    let _ = t.await;
                }
            }
        }
        Some(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = Vec::with_capacity(planned.len());
            for p in planned {
                ticker.tick().await;
                tasks.push(submit(p));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }
    progress.finish_and_clear();
    let _ = rt;
    match Arc::try_unwrap(outcomes) {
        Ok(m) => m
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        Err(shared) => std::mem::take(
            &mut *shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ),
    }
}

fn verify(
    args: &Args,
    outcomes: &Outcomes,
    finals: &[Versioned<Target>],
    initial: &[Target],
    m: &MetricsSnapshot,
) -> Verdict {
    // Accounting: every submission has exactly one outcome, on both sides of the API.
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
    // State: per target, replay the commits in version order from the initial value.
    let mut state = Vec::new();
    for (i, commits) in outcomes.commits.iter().enumerate() {
        let mut commits = commits.clone();
        commits.sort_by_key(|(v, _)| *v);
        let gap_free = commits
            .iter()
            .enumerate()
            .all(|(k, (v, _))| *v == k as u64 + 2);
        if !gap_free {
            state.push(format!(
                "target {i}: committed versions are not exactly 2..={}",
                commits.len() + 1
            ));
        }
        let mut replayed = initial[i].clone();
        for (_, op) in &commits {
            op.apply(&mut replayed);
        }
        let stored = &finals[i];
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
    let (accounting_ok, state_ok) = (accounting.is_empty(), state.is_empty());
    accounting.extend(state);
    Verdict {
        ok: accounting_ok && state_ok,
        accounting_ok,
        state_ok,
        problems: accounting,
    }
}

fn print_text(r: &Report) {
    let a = &r.args;
    let m = &r.metrics;
    println!("conflict stress run");
    println!(
        "  {} ops on {} targets, batch {}{}, work {} ms, mode {:?}, on-lose {:?}, seed {}, backend {}",
        a.ops,
        a.targets,
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
    println!();
    println!("OPERATIONS");
    println!("  submitted:        {:>8}", r.submitted);
    println!("  committed:        {:>8}", r.committed);
    println!("  rejected:         {:>8}", r.rejected);
    println!("  failed:           {:>8}", r.failed);
    println!("  still running:    {:>8}", r.still_running);
    for (k, v) in &r.outcomes {
        if *v > 0 {
            println!("    {k:<20}{v:>8}");
        }
    }
    println!();
    println!("CONFLICT RESOLUTION ANALYSIS");
    println!(
        "  Pre-ECS conflicts detected:     {:>8}  (staging groups with more than one member)",
        m.staging_contended_groups
    );
    println!(
        "  Pre-ECS conflicts resolved:     {:>8}  (every contended group got exactly one winner)",
        m.staging_contended_groups
    );
    println!("  operations that waited staged:  {:>8}", m.staged);
    println!(
        "  lost rounds (rejected+requeued):{:>8}  (requeued: {})",
        m.staging_losers, m.requeued
    );
    println!("  preemptions:                    {:>8}", m.preemptions);
    println!("  OCC conflicts detected:         {:>8}", m.occ_conflicts);
    println!("  OCC retries attempted:          {:>8}", m.occ_retries);
    println!(
        "  OCC failures (max retries hit): {:>8}",
        m.outcome(OutcomeKind::RetriesExhausted)
    );
    println!();
    println!("PER OPERATION TYPE");
    println!(
        "  {:<12}{:>9}{:>9}{:>10}{:>9}{:>10}{:>8}{:>11}",
        "type", "conflicts", "retries", "successes", "failures", "avg retry", "max", "first-try"
    );
    for t in &m.op_types {
        println!(
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
    println!();
    println!("PER TARGET");
    println!(
        "  {:<10}{:>8}{:>14}{:>9}{:>9}",
        "target", "hits", "total", "version", "commits"
    );
    for t in &r.targets {
        println!(
            "  {:<10}{:>8}{:>14}{:>9}{:>9}",
            t.name, t.hits, t.total, t.version, t.commits
        );
    }
    println!();
    println!("PERFORMANCE");
    println!("  wall time:   {:.3} s", r.wall_seconds);
    println!("  throughput:  {:.0} ops/s", r.throughput_ops_per_sec);
    let l = &m.latency;
    println!(
        "  latency:     p50 {:.1} µs, p95 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        l.p50_ns as f64 / 1e3,
        l.p95_ns as f64 / 1e3,
        l.p99_ns as f64 / 1e3,
        l.max_ns as f64 / 1e3
    );
    match r.peak_rss_bytes {
        Some(b) => println!("  peak RSS:    {:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        None => println!("  peak RSS:    unavailable"),
    }
    println!();
    println!("CLEANUP");
    let cleaned: Vec<String> = m
        .cleanup
        .cleaned
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "  cleaned:     {}",
        if cleaned.is_empty() {
            "none".to_string()
        } else {
            cleaned.join(", ")
        }
    );
    println!(
        "  zombies after cleanup: {} (forced {}, memory-pressure {}); health: {:?}",
        r.zombies_after_cleanup,
        m.cleanup.force_triggered,
        m.cleanup.memory_pressure_triggered,
        r.health.status
    );
    println!();
    let v = &r.verdict;
    println!("VERIFICATION");
    println!(
        "  accounting (submitted = Σ outcomes, no op twice, none running): {}",
        if v.accounting_ok { "OK" } else { "FAILED" }
    );
    println!(
        "  state (gap-free versions, replay = stored):                      {}",
        if v.state_ok { "OK" } else { "FAILED" }
    );
    for p in &v.problems {
        println!("  - {p}");
    }
    println!("  verdict: {}", if v.ok { "PASS" } else { "FAIL" });
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.targets == 0 {
        eprintln!("--targets must be at least 1");
        return ExitCode::from(2);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = args.workers {
        builder.worker_threads(w.max(1));
    }
    let tokio_rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return ExitCode::from(2);
        }
    };
    let report = tokio_rt.block_on(async {
        let rt = match args.backend.as_str() {
            "memory" => Runtime::in_memory(),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let built = match Runtime::builder().postgres(url).await {
                    Ok(b) => b.build().map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match built {
                    Ok(rt) => rt,
                    Err(e) => return Err(format!("cannot use {url}: {e}")),
                }
            }
            other => {
                return Err(format!(
                    "unknown --backend {other:?}: use `memory` or a postgres:// URL"
                ));
            }
        };
        let mut initial = Vec::new();
        let mut handles = Vec::new();
        for i in 0..args.targets {
            let t = Target {
                id: EntityId::new(),
                name: format!("target-{i}"),
                hits: 0,
                total: 0,
            };
            match rt.insert(t.clone()).await {
                Ok(h) => handles.push(h),
                Err(e) => return Err(format!("cannot insert the targets: {e}")),
            }
            initial.push(t);
        }
        let planned = plan(&args);
        let started = Instant::now();
        let outcomes = drive(&args, &rt, &handles, planned).await;
        let wall = started.elapsed();
        let mut finals = Vec::new();
        for h in &handles {
            match h.load().await {
                Ok(v) => finals.push(v),
                Err(e) => return Err(format!("cannot load a target: {e}")),
            }
        }
        // Run what cleanup is due now (the sweeper would at its next interval).
        rt.sweep_expired();
        let zombies_after_cleanup = rt.operations().zombie_count();
        let health = rt.health();
        let m = rt.metrics();
        let verdict = verify(&args, &outcomes, &finals, &initial, &m);
        let committed = m.outcome(OutcomeKind::Committed);
        let rejected = [
            OutcomeKind::Rejected,
            OutcomeKind::Preempted,
            OutcomeKind::Overloaded,
        ]
        .iter()
        .map(|k| m.outcome(*k))
        .sum::<u64>();
        Ok(Report {
            backend: rt.store_name(),
            wall_seconds: wall.as_secs_f64(),
            throughput_ops_per_sec: args.ops as f64 / wall.as_secs_f64().max(1e-9),
            submitted: m.submitted,
            committed,
            rejected,
            failed: m.ended - committed - rejected,
            still_running: m.in_flight,
            outcomes: m.outcomes.clone(),
            targets: finals
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
            peak_rss_bytes: peak_rss_bytes(),
            zombies_after_cleanup,
            health,
            metrics: m,
            verdict,
            args: args.clone(),
        })
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stress: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("cannot serialize the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print_text(&report);
    }
    if report.verdict.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
