//! The measurement: a fixed number of committed operations from a scenario's tasks, wall time,
//! and the attempts that did not commit.
//!
//! One [`Bench`] is one cell of the report (scenario × body × implementation). It owns a
//! two-worker multi-thread tokio runtime and the implementation's entities, both created once;
//! each [`Bench::run`] then spawns the scenario's tasks on that runtime, gives each an equal share
//! of the commits to make, and times from the first spawn to the last join. A call that does not
//! commit (rejected, retries exhausted, a refused transfer) is simply made again, so only commits
//! count towards the share.
//!
//! A scenario's [`Op`] says what one call does: a read-modify-write of one entity (the
//! [`Workload`] trait with its default target, an entity index) or a transfer between two
//! ([`Workload<Pair>`](Workload), see [`crate::transfer`]). After every transfer run the bench
//! checks conservation (the balances' sum is unchanged) and that exactly the committed transfers
//! were applied.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Body;
use crate::floor::Floor;
use crate::framework::{self, Framework};
use crate::mutex::MutexPerEntity;
use crate::naive_occ::NaiveOcc;
use crate::stm::StmVars;
use crate::transfer::{
    self, Pair, framework::FrameworkBank, mutex::MutexBank, naive_occ::NaiveOccBank,
};

/// How one call ended, as the harness counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// Whether it committed.
    pub committed: bool,
    /// How many times its body ran (0 for a call refused before running, e.g. rejected by
    /// staging).
    pub body_runs: u32,
    /// Whether its body refused (a transfer from an account short of the amount): not
    /// committed, nothing changed. Never set by the read-modify-write rows.
    pub refused: bool,
}

impl Call {
    /// A call that committed at its first and only body run.
    pub const FIRST_TRY: Self = Self {
        committed: true,
        body_runs: 1,
        refused: false,
    };
}

/// What one call works on, drawn afresh for every call from the task's generator.
pub trait Target: Copy + Send + 'static {
    /// A target among `entities` entities.
    fn pick(rng: &mut fastrand::Rng, entities: usize) -> Self;
}

/// A read-modify-write's entity: uniform among the entities.
impl Target for usize {
    fn pick(rng: &mut fastrand::Rng, entities: usize) -> Self {
        if entities == 1 {
            0
        } else {
            rng.usize(..entities)
        }
    }
}

/// A transfer's two distinct accounts: uniform among the ordered pairs.
impl Target for Pair {
    fn pick(rng: &mut fastrand::Rng, entities: usize) -> Self {
        Pair::pick(rng, entities)
    }
}

/// One implementation of the benchmarked operation over a fixed set of entities. With the
/// default target (`usize`) the operation is the read-modify-write; with [`Pair`] it is the
/// transfer of [`crate::transfer`].
pub trait Workload<T: Target = usize>: Send + Sync + 'static {
    /// Read-modify-writes entity `target` (an index below the number of entities) with a body
    /// of kind `body`, adding [`AMOUNT`](crate::AMOUNT) to its total — or, for a [`Pair`],
    /// transfers [`transfer::AMOUNT`] between the two accounts.
    fn call(&self, target: T, body: Body) -> impl Future<Output = Call> + Send;

    /// The sums of `counter` and `total` over every entity (to check that no update was lost);
    /// for transfers, the sums of `transfers` (two per committed transfer) and `balance`
    /// (constant).
    fn totals(&self) -> impl Future<Output = (u64, u64)> + Send;
}

/// What one call of a scenario does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A read-modify-write of one [`Item`](crate::Item).
    Rmw,
    /// A transfer between two distinct [`Account`](transfer::Account)s.
    Transfer,
}

/// How many tasks work on how many entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// Short id, used in filters and criterion ids.
    pub name: &'static str,
    /// A description for the report.
    pub label: &'static str,
    /// Concurrent tasks, each calling in a loop.
    pub tasks: usize,
    /// Entities; each call picks one uniformly at random (per-task seeded generator), or a
    /// transfer two distinct ones.
    pub entities: usize,
    /// Whether the calls compete for the same entities (the contended targets apply).
    pub contended: bool,
    /// What each call does.
    pub op: Op,
}

impl Scenario {
    /// One task calling sequentially on one entity.
    pub const SEQUENTIAL: Self = Self {
        name: "seq-1x1",
        label: "1 task, 1 entity",
        tasks: 1,
        entities: 1,
        contended: false,
        op: Op::Rmw,
    };
    /// Two tasks on 10,000 entities: parallel, (almost) never on the same entity.
    pub const SPREAD: Self = Self {
        name: "spread-2x10k",
        label: "2 tasks, 10,000 entities",
        tasks: 2,
        entities: 10_000,
        contended: false,
        op: Op::Rmw,
    };
    /// 64 tasks on 3 hot entities.
    pub const CONTENDED_3: Self = Self {
        name: "hot-64x3",
        label: "64 tasks, 3 entities",
        tasks: 64,
        entities: 3,
        contended: true,
        op: Op::Rmw,
    };
    /// 64 tasks on one hot entity.
    pub const CONTENDED_1: Self = Self {
        name: "hot-64x1",
        label: "64 tasks, 1 entity",
        tasks: 64,
        entities: 1,
        contended: true,
        op: Op::Rmw,
    };
    /// Every read-modify-write scenario, uncontended first.
    pub const ALL: [Self; 4] = [
        Self::SEQUENTIAL,
        Self::SPREAD,
        Self::CONTENDED_3,
        Self::CONTENDED_1,
    ];

    /// Transfers, one task calling sequentially between two accounts: never contended (one
    /// call at a time), the per-call overhead of a two-entity call.
    pub const TRANSFER_SEQUENTIAL: Self = Self {
        name: "xfer-seq-1x2",
        label: "transfers, 1 task, 2 accounts",
        tasks: 1,
        entities: 2,
        contended: false,
        op: Op::Transfer,
    };
    /// Transfers, two tasks on 10,000 accounts: parallel, (almost) never on the same account.
    pub const TRANSFER_SPREAD: Self = Self {
        name: "xfer-spread-2x10k",
        label: "transfers, 2 tasks, 10,000 accounts",
        tasks: 2,
        entities: 10_000,
        contended: false,
        op: Op::Transfer,
    };
    /// Transfers, 64 tasks on 4 hot accounts (every transfer shares an account with most
    /// others).
    pub const TRANSFER_HOT: Self = Self {
        name: "xfer-hot-64x4",
        label: "transfers, 64 tasks, 4 accounts",
        tasks: 64,
        entities: 4,
        contended: true,
        op: Op::Transfer,
    };
    /// Every transfer scenario, uncontended first.
    pub const TRANSFERS: [Self; 3] = [
        Self::TRANSFER_SEQUENTIAL,
        Self::TRANSFER_SPREAD,
        Self::TRANSFER_HOT,
    ];
}

/// The implementations measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Impl {
    /// The framework in one of its configurations.
    Framework(framework::Config),
    /// A `tokio::sync::Mutex` per entity.
    Mutex,
    /// A versioned slot with an immediate-retry compare-and-swap loop.
    NaiveOcc,
    /// `async-stm`.
    Stm,
    /// The hand-written minimal staging-then-OCC path ([`crate::floor`]); uncontended
    /// scenarios only.
    Floor,
}

impl Impl {
    /// Every implementation: the framework's configurations, then the baselines.
    pub const ALL: [Self; 8] = [
        Self::Framework(framework::Config::Default),
        Self::Framework(framework::Config::Requeue),
        Self::Framework(framework::Config::OccOnly),
        Self::Framework(framework::Config::Windowed),
        Self::Mutex,
        Self::NaiveOcc,
        Self::Stm,
        Self::Floor,
    ];

    /// Whether this implementation can run `scenario`. The floor has no waiting room, so it
    /// only runs the uncontended read-modify-writes; transfers are implemented by the default
    /// and requeue configurations, the Mutex (two per transfer) and the naive OCC loop (two
    /// keys).
    #[must_use]
    pub fn applies(self, scenario: Scenario) -> bool {
        match scenario.op {
            Op::Rmw => self != Self::Floor || !scenario.contended,
            Op::Transfer => matches!(
                self,
                Self::Framework(framework::Config::Default | framework::Config::Requeue)
                    | Self::Mutex
                    | Self::NaiveOcc
            ),
        }
    }

    /// Short id, used in filters and criterion ids.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Framework(c) => c.name(),
            Self::Mutex => "mutex",
            Self::NaiveOcc => "naive-occ",
            Self::Stm => "async-stm",
            Self::Floor => "floor",
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Committed operations (the run's target).
    pub commits: u64,
    /// Calls made (committed or not).
    pub calls: u64,
    /// Body runs.
    pub body_runs: u64,
    /// Calls that ended without a commit and without running their body (rejected by staging).
    pub bodiless_failures: u64,
    /// Calls whose body refused (transfers from an account short of the amount).
    pub refused: u64,
    /// Wasted attempts: `body_runs + bodiless_failures − commits`. For the framework this comes
    /// from the runtime's metrics (`attempts`, `rejected` and `overloaded` outcomes); for the
    /// baselines from the harness's own counts.
    pub wasted: u64,
    /// Wall time from the first spawn to the last join.
    pub wall: Duration,
}

impl Sample {
    /// Committed operations per second of wall time.
    #[must_use]
    pub fn ops_per_sec(&self) -> f64 {
        self.commits as f64 / self.wall.as_secs_f64()
    }

    /// Wasted attempts per committed operation.
    #[must_use]
    pub fn wasted_per_commit(&self) -> f64 {
        self.wasted as f64 / self.commits as f64
    }

    /// Attempts per committed operation: 1 + [`Sample::wasted_per_commit`] (every body run and
    /// every call refused before its body ran is an attempt).
    #[must_use]
    pub fn attempts_per_commit(&self) -> f64 {
        (self.commits + self.wasted) as f64 / self.commits as f64
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    commits: u64,
    calls: u64,
    body_runs: u64,
    bodiless_failures: u64,
    refused: u64,
}

impl Tally {
    fn add(&mut self, c: Call) {
        self.calls += 1;
        self.body_runs += u64::from(c.body_runs);
        self.refused += u64::from(c.refused);
        if c.committed {
            self.commits += 1;
        } else if c.body_runs == 0 {
            self.bodiless_failures += 1;
        }
    }

    fn merge(&mut self, o: Self) {
        self.commits += o.commits;
        self.calls += o.calls;
        self.body_runs += o.body_runs;
        self.bodiless_failures += o.bodiless_failures;
        self.refused += o.refused;
    }

    fn wasted(&self) -> u64 {
        self.body_runs + self.bodiless_failures - self.commits
    }
}

/// Spawns `scenario.tasks` tasks that together commit exactly `commits` operations (shares
/// differ by at most one) and returns their tally and the wall time.
async fn drive<T: Target, W: Workload<T>>(
    w: &Arc<W>,
    scenario: Scenario,
    body: Body,
    commits: u64,
    seed: u64,
) -> (Tally, Duration) {
    let tasks = scenario.tasks as u64;
    let entities = scenario.entities;
    let start = Instant::now();
    let mut handles = Vec::with_capacity(scenario.tasks);
    for t in 0..tasks {
        let share = commits / tasks + u64::from(t < commits % tasks);
        let w = w.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(1_000_003).wrapping_add(t));
            let mut tally = Tally::default();
            while tally.commits < share {
                let target = T::pick(&mut rng, entities);
                tally.add(w.call(target, body).await);
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for h in handles {
        match h.await {
            Ok(t) => total.merge(t),
            // A panicking implementation makes every number of this run meaningless.
            Err(e) => panic!("a benchmark task failed: {e}"),
        }
    }
    (total, start.elapsed())
}

enum AnyWorkload {
    Framework(Arc<Framework>),
    Mutex(Arc<MutexPerEntity>),
    NaiveOcc(Arc<NaiveOcc>),
    Stm(Arc<StmVars>),
    Floor(Arc<Floor>),
    TransferFramework(Arc<FrameworkBank>),
    TransferMutex(Arc<MutexBank>),
    TransferNaiveOcc(Arc<NaiveOccBank>),
}

/// One cell of the report: an implementation, a scenario and a body kind, with its own
/// two-worker tokio runtime and entities, created once and reused by every run.
pub struct Bench {
    imp: Impl,
    scenario: Scenario,
    body: Body,
    rt: tokio::runtime::Runtime,
    workload: AnyWorkload,
    runs: AtomicU64,
    /// Commits of every run so far (what the transfer check expects the counters to sum to).
    committed: AtomicU64,
}

impl Bench {
    /// Builds the runtime (multi-thread, 2 workers) and the scenario's entities.
    ///
    /// # Panics
    /// If the tokio runtime cannot be built, the framework refuses to store an entity, or the
    /// implementation does not apply to the scenario ([`Impl::applies`]).
    #[must_use]
    pub fn new(imp: Impl, scenario: Scenario, body: Body) -> Self {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("cannot build the tokio runtime: {e}"),
        };
        assert!(
            imp.applies(scenario),
            "{} cannot run {}",
            imp.name(),
            scenario.name
        );
        let n = scenario.entities;
        let workload = match (scenario.op, imp) {
            (Op::Rmw, Impl::Framework(config)) => {
                AnyWorkload::Framework(Arc::new(rt.block_on(Framework::new(config, n))))
            }
            (Op::Rmw, Impl::Mutex) => AnyWorkload::Mutex(Arc::new(MutexPerEntity::new(n))),
            (Op::Rmw, Impl::NaiveOcc) => AnyWorkload::NaiveOcc(Arc::new(NaiveOcc::new(n))),
            (Op::Rmw, Impl::Stm) => AnyWorkload::Stm(Arc::new(StmVars::new(n))),
            (Op::Rmw, Impl::Floor) => AnyWorkload::Floor(Arc::new(Floor::new(n))),
            (Op::Transfer, Impl::Framework(config)) => {
                AnyWorkload::TransferFramework(Arc::new(rt.block_on(FrameworkBank::new(config, n))))
            }
            (Op::Transfer, Impl::Mutex) => AnyWorkload::TransferMutex(Arc::new(MutexBank::new(n))),
            (Op::Transfer, Impl::NaiveOcc) => {
                AnyWorkload::TransferNaiveOcc(Arc::new(NaiveOccBank::new(n)))
            }
            (Op::Transfer, Impl::Stm | Impl::Floor) => unreachable!("checked by Impl::applies"),
        };
        Self {
            imp,
            scenario,
            body,
            rt,
            workload,
            runs: AtomicU64::new(0),
            committed: AtomicU64::new(0),
        }
    }

    /// The implementation measured.
    #[must_use]
    pub fn imp(&self) -> Impl {
        self.imp
    }

    /// The scenario.
    #[must_use]
    pub fn scenario(&self) -> Scenario {
        self.scenario
    }

    /// The body kind.
    #[must_use]
    pub fn body(&self) -> Body {
        self.body
    }

    /// `scenario/body/implementation`, e.g. `hot-64x1/await/requeue`.
    #[must_use]
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}",
            self.scenario.name,
            self.body.name(),
            self.imp.name()
        )
    }

    /// Commits `commits` operations and reports what it took. After a transfer run it also
    /// checks the accounts (outside the timed part): their balances must still sum to what they
    /// started with, and their transfer counters to exactly two per transfer committed so far.
    ///
    /// # Panics
    /// If a benchmark task panics, the framework's metrics disagree with the harness's own
    /// count of commits and attempts, or a transfer run lost or created money or lost,
    /// doubled or invented a transfer (any of these would make the numbers meaningless).
    pub fn run(&self, commits: u64) -> Sample {
        let seed = self.runs.fetch_add(1, Ordering::Relaxed);
        let (scenario, body) = (self.scenario, self.body);
        let (tally, wall, wasted) = match &self.workload {
            AnyWorkload::Framework(w) => {
                let before = w.counts();
                let (tally, wall) = self
                    .rt
                    .block_on(drive::<usize, _>(w, scenario, body, commits, seed));
                let d = w.counts().since(&before);
                assert_eq!(
                    (d.committed, d.attempts, d.bodiless_failures),
                    (tally.commits, tally.body_runs, tally.bodiless_failures),
                    "the runtime's metrics disagree with the harness's count"
                );
                (tally, wall, d.attempts + d.bodiless_failures - d.committed)
            }
            AnyWorkload::Mutex(w) => self.own_count::<usize, _>(w, commits, seed),
            AnyWorkload::NaiveOcc(w) => self.own_count::<usize, _>(w, commits, seed),
            AnyWorkload::Stm(w) => self.own_count::<usize, _>(w, commits, seed),
            AnyWorkload::Floor(w) => self.own_count::<usize, _>(w, commits, seed),
            AnyWorkload::TransferFramework(w) => {
                let before = w.counts();
                let (tally, wall) = self
                    .rt
                    .block_on(drive::<Pair, _>(w, scenario, body, commits, seed));
                let d = w.counts().since(&before);
                assert_eq!(
                    (d.committed, d.bodiless_failures, d.body_errors),
                    (tally.commits, tally.bodiless_failures, tally.refused),
                    "the runtime's metrics disagree with the harness's count"
                );
                // A refusal's error does not carry its attempts (the harness counts one), so
                // the body runs only match exactly when nothing was refused.
                if tally.refused == 0 {
                    assert_eq!(
                        d.attempts, tally.body_runs,
                        "the runtime's metrics disagree with the harness's count"
                    );
                } else {
                    assert!(
                        d.attempts >= tally.body_runs,
                        "fewer attempts than body runs"
                    );
                }
                (tally, wall, d.attempts + d.bodiless_failures - d.committed)
            }
            AnyWorkload::TransferMutex(w) => self.own_count::<Pair, _>(w, commits, seed),
            AnyWorkload::TransferNaiveOcc(w) => self.own_count::<Pair, _>(w, commits, seed),
        };
        let done = self.committed.fetch_add(tally.commits, Ordering::Relaxed) + tally.commits;
        if scenario.op == Op::Transfer {
            self.check_transfers(done);
        }
        Sample {
            commits: tally.commits,
            calls: tally.calls,
            body_runs: tally.body_runs,
            bodiless_failures: tally.bodiless_failures,
            refused: tally.refused,
            wasted,
            wall,
        }
    }

    /// The transfer check of [`Bench::run`], after `done` transfers committed in all.
    fn check_transfers(&self, done: u64) {
        let accounts = self.scenario.entities as u64;
        if let Err(e) = audit_transfers(self.totals(), accounts, done) {
            panic!("{}: {e}", self.id());
        }
    }

    /// A run of a baseline, whose wasted attempts are the harness's own count.
    fn own_count<T: Target, W: Workload<T>>(
        &self,
        w: &Arc<W>,
        commits: u64,
        seed: u64,
    ) -> (Tally, Duration, u64) {
        let (t, wall) = self
            .rt
            .block_on(drive::<T, W>(w, self.scenario, self.body, commits, seed));
        (t, wall, t.wasted())
    }

    /// Warms up and picks a commit count for which one run takes about `target`: runs growing
    /// counts (4× each time) until one takes at least a quarter of `target`, then scales.
    /// The result is a multiple of the scenario's task count.
    pub fn calibrate(&self, target: Duration) -> u64 {
        let tasks = self.scenario.tasks as u64;
        let mut n = tasks * 8;
        loop {
            let s = self.run(n);
            if s.wall >= target / 4 || n >= 1 << 28 {
                let per_op = s.wall.as_secs_f64() / n as f64;
                let want = (target.as_secs_f64() / per_op) as u64;
                return (want / tasks).max(1) * tasks;
            }
            n *= 4;
        }
    }

    /// The sums of `counter` and `total` over the entities; for transfers, of `transfers`
    /// and `balance` over the accounts.
    pub fn totals(&self) -> (u64, u64) {
        match &self.workload {
            AnyWorkload::Framework(w) => self.rt.block_on(w.totals()),
            AnyWorkload::Mutex(w) => self.rt.block_on(w.totals()),
            AnyWorkload::NaiveOcc(w) => self.rt.block_on(w.totals()),
            AnyWorkload::Stm(w) => self.rt.block_on(w.totals()),
            AnyWorkload::Floor(w) => self.rt.block_on(w.totals()),
            AnyWorkload::TransferFramework(w) => self.rt.block_on(w.totals()),
            AnyWorkload::TransferMutex(w) => self.rt.block_on(w.totals()),
            AnyWorkload::TransferNaiveOcc(w) => self.rt.block_on(w.totals()),
        }
    }
}

/// Checks the accounts' `(Σ transfers, Σ balance)` after `done` committed transfers among
/// `accounts` accounts: the balances must sum to what they started with (conservation) and the
/// counters to two per committed transfer (none lost, doubled or applied without committing).
fn audit_transfers(
    (transfers, balance): (u64, u64),
    accounts: u64,
    done: u64,
) -> Result<(), String> {
    let expected = accounts * transfer::START_BALANCE;
    if balance != expected {
        return Err(format!(
            "money was created or lost: the balances sum to {balance}, not {expected}"
        ));
    }
    if transfers != 2 * done {
        return Err(format!(
            "the accounts took part in {transfers} transfers' sides, but {done} transfers committed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AMOUNT;

    /// Invariant: every implementation, in every configuration and body kind, under the most
    /// contended scenario, applies each committed operation exactly once — the counters sum to
    /// the commits and the totals to `AMOUNT ×` commits — and the framework's metrics agree
    /// with the harness's count (checked inside `run`).
    #[test]
    fn no_implementation_loses_an_update() {
        for imp in Impl::ALL {
            for body in Body::ALL {
                for scenario in [Scenario::CONTENDED_3, Scenario::SPREAD] {
                    if !imp.applies(scenario) {
                        continue;
                    }
                    let bench = Bench::new(imp, scenario, body);
                    let commits = if imp == Impl::Framework(framework::Config::Windowed) {
                        128
                    } else {
                        640
                    };
                    let mut done = 0;
                    for _ in 0..2 {
                        let s = bench.run(commits);
                        assert_eq!(s.commits, commits, "{}", bench.id());
                        assert_eq!(
                            s.wasted,
                            s.body_runs + s.bodiless_failures - s.commits,
                            "{}",
                            bench.id()
                        );
                        done += s.commits;
                    }
                    assert_eq!(
                        bench.totals(),
                        (done, done * AMOUNT),
                        "{}: lost or doubled updates",
                        bench.id()
                    );
                }
            }
        }
    }

    /// Invariant: a lock never wastes an attempt, and the sequential scenario never conflicts,
    /// whatever the implementation.
    #[test]
    fn uncontended_sequential_calls_waste_nothing() {
        for imp in Impl::ALL {
            let bench = Bench::new(imp, Scenario::SEQUENTIAL, Body::Await);
            let s = bench.run(20);
            assert_eq!((s.commits, s.wasted), (20, 0), "{}", bench.id());
        }
        let bench = Bench::new(Impl::Mutex, Scenario::CONTENDED_1, Body::Await);
        assert_eq!(bench.run(640).wasted, 0);
    }

    /// The implementations of the transfer rows.
    fn transfer_impls() -> Vec<Impl> {
        Impl::ALL
            .into_iter()
            .filter(|i| i.applies(Scenario::TRANSFER_HOT))
            .collect()
    }

    /// Exactly the four transfer implementations apply to every transfer scenario.
    #[test]
    fn four_implementations_run_the_transfers() {
        assert_eq!(
            transfer_impls(),
            [
                Impl::Framework(framework::Config::Default),
                Impl::Framework(framework::Config::Requeue),
                Impl::Mutex,
                Impl::NaiveOcc,
            ]
        );
        for s in Scenario::TRANSFERS {
            assert_eq!(s.op, Op::Transfer);
            for imp in Impl::ALL {
                assert_eq!(
                    imp.applies(s),
                    transfer_impls().contains(&imp),
                    "{}",
                    s.name
                );
            }
        }
    }

    /// Invariant: every transfer implementation, in both body kinds, contended and spread,
    /// conserves money and applies each committed transfer exactly once (checked inside `run`
    /// after each run, and again here), and the framework's metrics agree with the harness's
    /// count.
    #[test]
    fn no_transfer_implementation_creates_or_loses_money() {
        for imp in transfer_impls() {
            for body in Body::ALL {
                for scenario in Scenario::TRANSFERS {
                    let bench = Bench::new(imp, scenario, body);
                    let commits = if scenario.tasks == 1 { 200 } else { 640 };
                    let mut done = 0;
                    for _ in 0..2 {
                        let s = bench.run(commits);
                        assert_eq!((s.commits, s.refused), (commits, 0), "{}", bench.id());
                        assert_eq!(
                            s.wasted,
                            s.body_runs + s.bodiless_failures - s.commits,
                            "{}",
                            bench.id()
                        );
                        done += s.commits;
                    }
                    let accounts = scenario.entities as u64;
                    assert_eq!(
                        bench.totals(),
                        (2 * done, accounts * transfer::START_BALANCE),
                        "{}",
                        bench.id()
                    );
                }
            }
        }
    }

    /// The transfer check accepts exactly a conserved sum with two sides per commit.
    #[test]
    fn the_transfer_audit_catches_lost_money_and_lost_transfers() {
        let start = 4 * transfer::START_BALANCE;
        assert_eq!(audit_transfers((10, start), 4, 5), Ok(()));
        assert!(
            audit_transfers((10, start - 1), 4, 5).is_err(),
            "money lost"
        );
        assert!(
            audit_transfers((10, start + 1), 4, 5).is_err(),
            "money created"
        );
        assert!(
            audit_transfers((8, start), 4, 5).is_err(),
            "a transfer lost"
        );
        assert!(
            audit_transfers((11, start), 4, 5).is_err(),
            "half a transfer"
        );
    }

    /// Invariant: sequential transfers never conflict, and two locks never waste an attempt
    /// even on four hot accounts.
    #[test]
    fn sequential_transfers_and_locked_transfers_waste_nothing() {
        for imp in transfer_impls() {
            let bench = Bench::new(imp, Scenario::TRANSFER_SEQUENTIAL, Body::Await);
            let s = bench.run(20);
            assert_eq!((s.commits, s.wasted), (20, 0), "{}", bench.id());
        }
        let bench = Bench::new(Impl::Mutex, Scenario::TRANSFER_HOT, Body::Await);
        let s = bench.run(640);
        assert_eq!((s.wasted, s.attempts_per_commit()), (0, 1.0));
    }
}
