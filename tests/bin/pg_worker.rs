//! Worker process of the multi-process PostgreSQL tests (`tests/pg.rs`): changes entities through
//! a `PgStore` and prints one line per committed operation, so the test can check every one of
//! them against the entities and the ledger.
//!
//! ```text
//! pg_worker increment <url> <schema> <entity-id> <tasks> <calls-per-task>
//! pg_worker transfer  <url> <schema> <a-id> <b-id> <tasks> <commits, 0 = until killed>
//! pg_worker bank      <url> <schema> <tasks> <transfers-per-task, 0 = until killed> <account-id>...
//! ```
//!
//! * `increment`: `tasks` tasks each call an OCC-only annotated function `calls-per-task` times
//!   on one `Counter`.
//! * `transfer`: `tasks` tasks commit two-write commits (`PgStore::commit` directly) that add 1
//!   to both counters `a` and `b` and append the same tag to both logs, until `commits` commits
//!   in all (or forever).
//! * `bank`: a Jepsen-style bank over the given accounts (an `Account` each, created by the
//!   test; at least two): `tasks` tasks, task `t` at priority LOW, NORMAL or HIGH (`t % 3`, set
//!   with `scope().priority(..)`), each make `transfers-per-task` transfers (or go on until
//!   killed) through the annotated two-entity function `bank_transfer` (staged with
//!   `on_lose = "requeue"`, up to 1000 OCC retries): a random ordered pair of distinct accounts,
//!   a random amount in `1..=40`, refused if it would overdraw, an `.await` between debit and
//!   credit.
//!
//! Output lines: `prefix <n>` first (the op-id prefix of this process; `increment` and
//! `transfer` only use it), then for `increment` and `transfer` `committed <op-id> <version>...`
//! per commit and `error <message>` per store error. For `bank`, account indices are positions
//! in the argument list (0-based), and the lines are
//!
//! * `attempt <op-id> <from> <to> <amount>`, printed by the body each time it runs, before that
//!   attempt can commit — so every op of this process that may be in the ledger has one, even if
//!   the process was killed before it printed the call's outcome;
//! * one outcome line per call, as the caller was told it: `committed <op-id> <from> <to>
//!   <amount> <from-version> <to-version>`, `refused <op-id> <from> <to> <amount>` (it would have
//!   overdrawn), or `error <kind> <op-id, or -> <from> <to> <amount> <message>` (`kind` is the
//!   `OutcomeKind` label, e.g. `preempted`).
//!
//! All modes end with `done committed=<n> refused=<n> exhausted=<n> errors=<n>`. Stdout is
//! line-buffered, so a killed worker has printed every outcome it saw (and every attempt it
//! began).
//!
//! A worker that meets `MAX_ERRORS` errors (store errors; in `bank`, failed calls but exhausted
//! retries) stops by itself, even when told to go on until killed: its test died and took the
//! database with it.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conflict_runtime::operation::scope;
use conflict_runtime::prelude::*;
use conflict_runtime::store::{Commit, CommitOutcome, EntityCodec, EntityStore, PgStore, Write};
use conflict_runtime::{entity::EntityKey, store::StoreError};
use conflict_tests::Counter;

#[with_conflict_resolution(
    mode = "occ",
    occ(
        max_retries = 1000,
        base_delay_ms = 0,
        backoff_factor = 1.5,
        max_delay_ms = 2
    )
)]
async fn increment(c: &mut Counter, tag: u64) -> u64 {
    c.value += 1;
    c.log.push(tag);
    c.value
}

/// An account of the `bank` mode. `tests/pg.rs` creates and reads the same entity (same name,
/// same fields) with its own copy of this type.
#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "pg_bank::Account")]
struct Account {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

/// A transfer that would overdraw its `from` account; nothing was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Overdraw {
    /// The refused operation (so the test can check it is not in the ledger).
    op_id: Option<OpId>,
}

impl std::fmt::Display for Overdraw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("would overdraw")
    }
}

/// Which accounts a transfer goes between, as indices into the worker's account list (for the
/// body's `attempt` line).
#[derive(Debug, Clone, Copy)]
struct Route {
    from: usize,
    to: usize,
}

fn op_text(op_id: Option<OpId>) -> String {
    op_id.map_or_else(|| "-".to_string(), |op| op.to_string())
}

#[with_conflict_resolution(
    pre_ecs(on_lose = "requeue"),
    occ(
        max_retries = 1000,
        base_delay_ms = 0,
        backoff_factor = 1.5,
        max_delay_ms = 5
    )
)]
async fn bank_transfer(
    from: &mut Account,
    to: &mut Account,
    amount: i64,
    route: Route,
) -> Result<(), Overdraw> {
    let op_id = current_operation().map(|c| c.op_id());
    // Before this attempt can commit: the test learns every op that may be in the ledger.
    println!(
        "attempt {} {} {} {amount}",
        op_text(op_id),
        route.from,
        route.to
    );
    if from.balance < amount {
        return Err(Overdraw { op_id });
    }
    from.balance -= amount;
    // An await between the two halves: other tasks (and the other process) run here.
    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..300))).await;
    to.balance += amount;
    Ok(())
}

/// Store errors after which a worker gives up (the test checks there are none at all).
const MAX_ERRORS: u64 = 200;

#[derive(Default)]
struct Tally {
    committed: AtomicU64,
    refused: AtomicU64,
    exhausted: AtomicU64,
    errors: AtomicU64,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pg_worker: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg_worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let s = args
        .get(i)
        .ok_or_else(|| format!("missing argument {i} ({what})"))?;
    s.parse().map_err(|e| format!("bad {what} `{s}`: {e}"))
}

async fn run(args: &[String]) -> Result<(), String> {
    let mode: String = arg(args, 0, "mode")?;
    let url: String = arg(args, 1, "url")?;
    let schema: String = arg(args, 2, "schema")?;
    let store = PgStore::builder(url)
        .schema(schema)
        .max_connections(8)
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let prefix = fastrand::u64(1..);
    println!("prefix {prefix}");
    let tally = Arc::new(Tally::default());
    match mode.as_str() {
        "increment" => {
            let id: EntityId = arg(args, 3, "entity id")?;
            let tasks: u64 = arg(args, 4, "tasks")?;
            let calls: u64 = arg(args, 5, "calls")?;
            increments(store, prefix, id, tasks, calls, &tally).await?;
        }
        "transfer" => {
            let a: EntityId = arg(args, 3, "entity a")?;
            let b: EntityId = arg(args, 4, "entity b")?;
            let tasks: u64 = arg(args, 5, "tasks")?;
            let commits: u64 = arg(args, 6, "commits")?;
            transfers(store, prefix, [a, b], tasks, commits, &tally).await?;
        }
        "bank" => {
            let tasks: u64 = arg(args, 3, "tasks")?;
            let calls: u64 = arg(args, 4, "transfers per task")?;
            let ids = (5..args.len())
                .map(|i| arg(args, i, "account id"))
                .collect::<Result<Vec<EntityId>, _>>()?;
            if ids.len() < 2 {
                return Err(format!(
                    "bank needs two accounts or more, got {}",
                    ids.len()
                ));
            }
            bank(store, &ids, tasks, calls, &tally).await?;
        }
        other => return Err(format!("unknown mode `{other}`")),
    }
    println!(
        "done committed={} refused={} exhausted={} errors={}",
        tally.committed.load(Ordering::SeqCst),
        tally.refused.load(Ordering::SeqCst),
        tally.exhausted.load(Ordering::SeqCst),
        tally.errors.load(Ordering::SeqCst)
    );
    Ok(())
}

async fn increments(
    store: PgStore,
    prefix: u64,
    id: EntityId,
    tasks: u64,
    calls: u64,
    tally: &Arc<Tally>,
) -> Result<(), String> {
    let rt = Runtime::builder()
        .store(store)
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let h: Handle<Counter> = rt.handle(id);
    let mut joins = Vec::new();
    for t in 0..tasks {
        let h = h.clone();
        let tally = tally.clone();
        joins.push(tokio::spawn(async move {
            for i in 0..calls {
                // Unique across processes (with near certainty) and tasks.
                let tag = ((prefix & 0xffff_ffff) << 32) | (t << 20) | i;
                match increment(&h, tag).await {
                    Ok(c) => {
                        tally.committed.fetch_add(1, Ordering::SeqCst);
                        println!("committed {} {}", c.op_id, c.version);
                    }
                    Err(ConflictError::RetriesExhausted { .. }) => {
                        tally.exhausted.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        tally.errors.fetch_add(1, Ordering::SeqCst);
                        println!("error {e}");
                    }
                }
            }
        }));
    }
    for j in joins {
        j.await.map_err(|e| format!("task: {e}"))?;
    }
    Ok(())
}

async fn transfers(
    store: PgStore,
    prefix: u64,
    keys: [EntityId; 2],
    tasks: u64,
    commits: u64,
    tally: &Arc<Tally>,
) -> Result<(), String> {
    let store = Arc::new(store);
    let seq = Arc::new(AtomicU64::new(0));
    let mut joins = Vec::new();
    for _ in 0..tasks {
        let store = store.clone();
        let seq = seq.clone();
        let tally = tally.clone();
        joins.push(tokio::spawn(async move {
            let keys = keys.map(|id| EntityKey::new(Counter::TYPE_NAME, id));
            let codec = EntityCodec::of::<Counter>();
            // A worker whose database is gone for good (its test died) stops by itself.
            while (commits == 0 || tally.committed.load(Ordering::SeqCst) < commits)
                && tally.errors.load(Ordering::SeqCst) < MAX_ERRORS
            {
                let op_id = OpId::from_parts(prefix, seq.fetch_add(1, Ordering::SeqCst) + 1);
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match transfer_once(&store, codec, &keys, op_id, attempt).await {
                        Ok(Some(versions)) => {
                            tally.committed.fetch_add(1, Ordering::SeqCst);
                            println!("committed {op_id} {} {}", versions[0], versions[1]);
                            break;
                        }
                        Ok(None) => {
                            tokio::time::sleep(Duration::from_micros(fastrand::u64(0..2000))).await;
                        }
                        Err(e) => {
                            tally.errors.fetch_add(1, Ordering::SeqCst);
                            println!("error {e}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            break;
                        }
                    }
                }
            }
        }));
    }
    for j in joins {
        j.await.map_err(|e| format!("task: {e}"))?;
    }
    Ok(())
}

async fn bank(
    store: PgStore,
    ids: &[EntityId],
    tasks: u64,
    calls: u64,
    tally: &Arc<Tally>,
) -> Result<(), String> {
    const PRIORITIES: [OperationPriority; 3] = [
        OperationPriority::LOW,
        OperationPriority::NORMAL,
        OperationPriority::HIGH,
    ];
    let rt = Runtime::builder()
        .store(store)
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let accounts: Arc<Vec<Handle<Account>>> =
        Arc::new(ids.iter().map(|&id| rt.handle(id)).collect());
    let mut joins = Vec::new();
    for t in 0..tasks {
        let accounts = accounts.clone();
        let tally = tally.clone();
        joins.push(tokio::spawn(async move {
            let n = accounts.len();
            let priority = PRIORITIES[usize::try_from(t % 3).unwrap_or(0)];
            let mut rng = fastrand::Rng::new();
            let mut made = 0;
            while (calls == 0 || made < calls) && tally.errors.load(Ordering::SeqCst) < MAX_ERRORS {
                made += 1;
                let from = rng.usize(..n);
                let to = (from + 1 + rng.usize(..n - 1)) % n;
                let amount = rng.i64(1..=40);
                let (a, b) = (&accounts[from], &accounts[to]);
                let outcome = scope()
                    .priority(priority)
                    .run(bank_transfer(a, b, amount, Route { from, to }))
                    .await;
                match outcome {
                    Ok(done) => {
                        tally.committed.fetch_add(1, Ordering::SeqCst);
                        let version = |h: &Handle<Account>| done.version_of(h.key()).unwrap_or(0);
                        println!(
                            "committed {} {from} {to} {amount} {} {}",
                            done.op_id,
                            version(a),
                            version(b)
                        );
                    }
                    Err(ConflictError::Body(Overdraw { op_id })) => {
                        tally.refused.fetch_add(1, Ordering::SeqCst);
                        println!("refused {} {from} {to} {amount}", op_text(op_id));
                    }
                    Err(e) => {
                        let kind = e.kind();
                        if kind == OutcomeKind::RetriesExhausted {
                            tally.exhausted.fetch_add(1, Ordering::SeqCst);
                        } else {
                            tally.errors.fetch_add(1, Ordering::SeqCst);
                        }
                        println!(
                            "error {kind} {} {from} {to} {amount} {e}",
                            op_text(e.op_id())
                        );
                        if kind == OutcomeKind::StoreError {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
        }));
    }
    for j in joins {
        j.await.map_err(|e| format!("task: {e}"))?;
    }
    Ok(())
}

/// One attempt: `Some(new versions)` if committed, `None` on a conflict.
async fn transfer_once(
    store: &PgStore,
    codec: EntityCodec,
    keys: &[EntityKey; 2],
    op_id: OpId,
    attempt: u32,
) -> Result<Option<Vec<u64>>, StoreError> {
    let mut writes = Vec::with_capacity(2);
    for key in keys {
        let snap = store
            .load(key, codec)
            .await?
            .ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
        let mut c = snap
            .value
            .as_any()
            .downcast_ref::<Counter>()
            .cloned()
            .ok_or_else(|| StoreError::Codec {
                key: key.clone(),
                message: "not a Counter".into(),
            })?;
        c.value += 1;
        c.log.push(op_id.sequence());
        writes.push(Write {
            key: key.clone(),
            expected_version: snap.version,
            value: Arc::new(c),
        });
    }
    let outcome = store
        .commit(Commit {
            op_id,
            op_type: "transfer",
            priority: OperationPriority::NORMAL,
            attempt,
            writes,
            deletes: Vec::new(),
            reads: Vec::new(),
        })
        .await?;
    Ok(match outcome {
        CommitOutcome::Committed { versions, .. } => Some(versions),
        CommitOutcome::Conflict { .. } => None,
    })
}
