//! Runs every scenario × body kind × implementation in one process and prints markdown tables
//! (median of several runs each): for the read-modify-writes, committed ops/s, wasted attempts
//! per commit, the ratios against the Mutex and the naive OCC loop, and the verdict on each
//! target; for the transfers (scenarios `xfer-*`), committed ops/s, attempts per commit,
//! refusals and the ratios against the two-Mutex baseline and the naive two-key OCC loop.
//!
//! ```sh
//! cargo run --release -p conflict-benches --bin perf_report
//! cargo run --release -p conflict-benches --bin perf_report -- --only hot-64x1/await --runs 3
//! cargo run --release -p conflict-benches --bin perf_report -- --only xfer-
//! ```
//!
//! Options: `--runs N` (runs per cell, median reported; default 7), `--target-ms T` (each run
//! is sized by a warm-up calibration to take about T ms; default 250), `--commits N` (fixed
//! commits per run instead of calibrating, e.g. under a profiler), `--only A,B` (only the cells
//! whose id `scenario/body/implementation` contains one of the substrings), `--skip A,B` (leave
//! out the cells whose id contains one of the substrings, after `--only`: e.g.
//! `--only spread-2x10k --skip xfer-` for the read-modify-write spread cells alone),
//! `--primitives` (print what one atomic read-modify-write, lock, clock read and allocation
//! cost on this machine, and exit).
//!
//! Within a scenario × body group the runs are interleaved (run 1 of every implementation, then
//! run 2, ...) so that a slow phase of the machine hits every implementation alike.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use conflict_benches::framework::Config;
use conflict_benches::{Bench, Body, Impl, Op, Sample, Scenario};

struct Options {
    primitives: bool,
    runs: usize,
    target: Duration,
    commits: Option<u64>,
    only: Vec<String>,
    skip: Vec<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        primitives: false,
        runs: 7,
        target: Duration::from_millis(250),
        commits: None,
        only: Vec::new(),
        skip: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(format!("{name} needs a positive integer, got `{v}`"))
        };
        match a.as_str() {
            "--runs" => o.runs = number("--runs", value("--runs")?)? as usize,
            "--target-ms" => {
                o.target = Duration::from_millis(number("--target-ms", value("--target-ms")?)?);
            }
            "--commits" => o.commits = Some(number("--commits", value("--commits")?)?),
            "--only" => o
                .only
                .extend(value("--only")?.split(',').map(str::to_string)),
            "--skip" => o
                .skip
                .extend(value("--skip")?.split(',').map(str::to_string)),
            "--primitives" => o.primitives = true,
            "-h" | "--help" => {
                return Err(
                    "usage: perf_report [--runs N] [--target-ms T] [--commits N] [--only A,B] [--skip A,B] [--primitives]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(o)
}

/// The medians of one cell.
#[derive(Clone, Copy)]
struct Row {
    commits_per_run: u64,
    ops: f64,
    wasted: f64,
    /// Attempts (body runs + calls refused before their body) per commit.
    attempts: f64,
    /// Body runs per commit.
    body_runs: f64,
    /// Refused transfers, summed over the runs.
    refused: u64,
    /// (max − min) / median of the runs' ops/s.
    spread: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summarize(commits_per_run: u64, samples: &[Sample]) -> Row {
    let ops: Vec<f64> = samples.iter().map(Sample::ops_per_sec).collect();
    let (lo, hi) = ops
        .iter()
        .fold((f64::MAX, 0.0_f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    let med = median(ops);
    Row {
        commits_per_run,
        ops: med,
        wasted: median(samples.iter().map(Sample::wasted_per_commit).collect()),
        attempts: median(samples.iter().map(Sample::attempts_per_commit).collect()),
        body_runs: median(
            samples
                .iter()
                .map(|s| s.body_runs as f64 / s.commits as f64)
                .collect(),
        ),
        refused: samples.iter().map(|s| s.refused).sum(),
        spread: (hi - lo) / med,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

fn label(imp: Impl, op: Op) -> &'static str {
    match (imp, op) {
        (Impl::Mutex, Op::Transfer) => return "two tokio Mutexes (index order)",
        (Impl::NaiveOcc, Op::Transfer) => return "naive two-key OCC",
        _ => {}
    }
    match imp {
        Impl::Framework(Config::Default) => "conflict: default",
        Impl::Framework(Config::Requeue) => "conflict: requeue",
        Impl::Framework(Config::OccOnly) => "conflict: OCC only",
        Impl::Framework(Config::Windowed) => "conflict: window 1 ms",
        Impl::Mutex => "tokio Mutex",
        Impl::NaiveOcc => "naive OCC",
        Impl::Stm => "async-stm",
        Impl::Floor => "floor (hand-written minimum)",
    }
}

fn fmt_ops(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn fmt_ns(ops: f64) -> String {
    let ns = 1e9 / ops;
    if ns >= 10_000.0 {
        format!("{:.0} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

type Key = (&'static str, Body, Impl);

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if o.primitives {
        print_primitives();
        return ExitCode::SUCCESS;
    }
    let selected = |b: &str| {
        (o.only.is_empty() || o.only.iter().any(|s| b.contains(s.as_str())))
            && !o.skip.iter().any(|s| b.contains(s.as_str()))
    };
    let load_before = load_average();
    let started = Instant::now();
    let mut rows: HashMap<Key, Row> = HashMap::new();
    for scenario in Scenario::ALL.into_iter().chain(Scenario::TRANSFERS) {
        for body in Body::ALL {
            let ids: Vec<Impl> = Impl::ALL
                .into_iter()
                .filter(|imp| imp.applies(scenario))
                .filter(|imp| {
                    selected(&format!("{}/{}/{}", scenario.name, body.name(), imp.name()))
                })
                .collect();
            if ids.is_empty() {
                continue;
            }
            let benches: Vec<Bench> = ids
                .iter()
                .map(|imp| Bench::new(*imp, scenario, body))
                .collect();
            let sizes: Vec<u64> = benches
                .iter()
                .map(|b| {
                    let n = o.commits.unwrap_or_else(|| b.calibrate(o.target));
                    eprintln!("{}: {n} commits per run", b.id());
                    n
                })
                .collect();
            let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); benches.len()];
            for _ in 0..o.runs {
                for (i, b) in benches.iter().enumerate() {
                    samples[i].push(b.run(sizes[i]));
                }
            }
            for (i, b) in benches.iter().enumerate() {
                let row = summarize(sizes[i], &samples[i]);
                eprintln!(
                    "{}: {} ops/s, {:.2} wasted/commit",
                    b.id(),
                    fmt_ops(row.ops),
                    row.wasted
                );
                rows.insert((scenario.name, body, b.imp()), row);
            }
        }
    }
    let elapsed = started.elapsed();
    let load_after = load_average();

    println!(
        "{} runs per cell (median), each sized to ≈{} ms; {} cores visible; load average before {load_before}, after {load_after}; total {:.0} s.",
        o.runs,
        o.target.as_millis(),
        std::thread::available_parallelism().map_or(0, usize::from),
        elapsed.as_secs_f64()
    );
    let has = |scenarios: &[Scenario]| {
        rows.keys()
            .any(|(name, _, _)| scenarios.iter().any(|s| s.name == *name))
    };
    if has(&Scenario::ALL) {
        println!();
        print_table(&rows);
        println!();
        print_verdicts(&rows);
    }
    if has(&Scenario::TRANSFERS) {
        println!();
        print_transfer_table(&rows);
    }
    ExitCode::SUCCESS
}

/// The cost of the primitives a call is made of, on this machine (single thread, uncontended,
/// median of five loops).
fn print_primitives() {
    use std::hint::black_box;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn ns_per(n: u32, mut f: impl FnMut()) -> f64 {
        let mut v: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..n {
                    f();
                }
                t.elapsed().as_nanos() as f64 / f64::from(n)
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[2]
    }
    let a = AtomicU64::new(0);
    let m = Mutex::new(0_u64);
    let rows = [
        (
            "atomic fetch_add (relaxed)",
            ns_per(5_000_000, || {
                black_box(&a).fetch_add(1, Ordering::Relaxed);
            }),
        ),
        (
            "std Mutex lock + unlock",
            ns_per(5_000_000, || {
                *black_box(&m)
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
            }),
        ),
        (
            "Instant::now",
            ns_per(1_000_000, || {
                black_box(Instant::now());
            }),
        ),
        (
            "SystemTime::now",
            ns_per(1_000_000, || {
                black_box(std::time::SystemTime::now());
            }),
        ),
        (
            "Arc::new + drop (40-byte value)",
            ns_per(1_000_000, || {
                black_box(std::sync::Arc::new(black_box([0_u64; 5])));
            }),
        ),
    ];
    println!("| primitive | ns |");
    println!("|---|--:|");
    for (name, ns) in rows {
        println!("| {name} | {ns:.1} |");
    }
}

fn print_table(rows: &HashMap<Key, Row>) {
    println!(
        "| scenario | body | implementation | committed ops/s | time/op | wasted/commit | ops/s ÷ Mutex | ops/s ÷ naive OCC | naive OCC wasted ÷ this | spread | commits/run |"
    );
    println!("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for scenario in Scenario::ALL {
        for body in Body::ALL {
            let mutex = rows.get(&(scenario.name, body, Impl::Mutex));
            let naive = rows.get(&(scenario.name, body, Impl::NaiveOcc));
            for imp in Impl::ALL {
                let Some(r) = rows.get(&(scenario.name, body, imp)) else {
                    continue;
                };
                let vs_mutex = mutex.map_or("–".into(), |m| format!("{:.2}", r.ops / m.ops));
                let (vs_naive, fewer) = match naive {
                    Some(n) if scenario.contended && imp != Impl::NaiveOcc => (
                        format!("{:.2}", r.ops / n.ops),
                        wasted_ratio(n.wasted, r.wasted),
                    ),
                    _ => ("–".into(), "–".into()),
                };
                let name = if imp == Impl::Stm && body == Body::Await {
                    "async-stm (await outside the tx: not comparable)"
                } else {
                    label(imp, scenario.op)
                };
                println!(
                    "| {} | {} | {name} | {} | {} | {:.2} | {vs_mutex} | {vs_naive} | {fewer} | {:.0}% | {} |",
                    scenario.label,
                    body.name(),
                    fmt_ops(r.ops),
                    fmt_ns(r.ops),
                    r.wasted,
                    r.spread * 100.0,
                    r.commits_per_run,
                );
            }
        }
    }
}

/// The transfer rows: ratios against the two-Mutex baseline and the naive two-key loop of
/// the same scenario and body kind, attempts and body runs per commit, and the refusals.
fn print_transfer_table(rows: &HashMap<Key, Row>) {
    println!(
        "| scenario | body | implementation | committed ops/s | time/op | attempts/commit | body runs/commit | ops/s ÷ two Mutexes | ops/s ÷ naive OCC | refused | spread | commits/run |"
    );
    println!("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for scenario in Scenario::TRANSFERS {
        for body in Body::ALL {
            let mutex = rows.get(&(scenario.name, body, Impl::Mutex));
            let naive = rows.get(&(scenario.name, body, Impl::NaiveOcc));
            for imp in Impl::ALL {
                let Some(r) = rows.get(&(scenario.name, body, imp)) else {
                    continue;
                };
                let ratio = |base: Option<&Row>, is_base: bool| match base {
                    Some(b) if !is_base => format!("{:.2}", r.ops / b.ops),
                    Some(_) => "1.00".into(),
                    None => "–".into(),
                };
                println!(
                    "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {:.0}% | {} |",
                    scenario.label,
                    body.name(),
                    label(imp, scenario.op),
                    fmt_ops(r.ops),
                    fmt_ns(r.ops),
                    r.attempts,
                    r.body_runs,
                    ratio(mutex, imp == Impl::Mutex),
                    ratio(naive, imp == Impl::NaiveOcc),
                    r.refused,
                    r.spread * 100.0,
                    r.commits_per_run,
                );
            }
        }
    }
}

fn wasted_ratio(naive: f64, this: f64) -> String {
    if this == 0.0 {
        "∞ (none wasted)".into()
    } else {
        format!("{:.1}", naive / this)
    }
}

/// The verdict column.
fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn print_verdicts(rows: &HashMap<Key, Row>) {
    println!("| target | scenario | configuration | measured | verdict |");
    println!("|---|---|---|---|---|");
    let configs = [
        Config::Default,
        Config::Requeue,
        Config::OccOnly,
        Config::Windowed,
    ];
    for body in Body::ALL {
        for scenario in [Scenario::SEQUENTIAL, Scenario::SPREAD] {
            if let (Some(f), Some(m)) = (
                rows.get(&(scenario.name, body, Impl::Floor)),
                rows.get(&(scenario.name, body, Impl::Mutex)),
            ) {
                println!(
                    "| (reference) {} body: the floor's time/op ÷ Mutex | {} | floor | {:.2}× | – |",
                    body.name(),
                    scenario.label,
                    m.ops / f.ops
                );
            }
        }
    }
    for config in configs {
        let fw = Impl::Framework(config);
        for (body, limit) in [(Body::Await, 2.0), (Body::Cpu, 5.0)] {
            for scenario in [Scenario::SEQUENTIAL, Scenario::SPREAD] {
                let (Some(f), Some(m)) = (
                    rows.get(&(scenario.name, body, fw)),
                    rows.get(&(scenario.name, body, Impl::Mutex)),
                ) else {
                    continue;
                };
                let ratio = m.ops / f.ops;
                println!(
                    "| {} body, uncontended: time/op ≤ {limit}× Mutex | {} | {} | {ratio:.2}× | {} |",
                    body.name(),
                    scenario.label,
                    config.name(),
                    verdict(ratio <= limit)
                );
            }
        }
        for scenario in [Scenario::CONTENDED_3, Scenario::CONTENDED_1] {
            let body = Body::Await;
            let (Some(f), Some(m), Some(n)) = (
                rows.get(&(scenario.name, body, fw)),
                rows.get(&(scenario.name, body, Impl::Mutex)),
                rows.get(&(scenario.name, body, Impl::NaiveOcc)),
            ) else {
                continue;
            };
            let vs_m = f.ops / m.ops;
            let vs_n = f.ops / n.ops;
            let fewer_ok = f.wasted == 0.0 || n.wasted / f.wasted >= 10.0;
            println!(
                "| await body, contended: ops/s ≥ 1× Mutex | {} | {} | {vs_m:.2}× | {} |",
                scenario.label,
                config.name(),
                verdict(vs_m >= 1.0)
            );
            println!(
                "| await body, contended: ops/s ≥ 3× naive OCC | {} | {} | {vs_n:.2}× | {} |",
                scenario.label,
                config.name(),
                verdict(vs_n >= 3.0)
            );
            println!(
                "| await body, contended: ≥ 10× fewer wasted attempts than naive OCC | {} | {} | {:.2} vs {:.2} per commit ({}×) | {} |",
                scenario.label,
                config.name(),
                f.wasted,
                n.wasted,
                wasted_ratio(n.wasted, f.wasted),
                verdict(fewer_ok)
            );
        }
    }
}
