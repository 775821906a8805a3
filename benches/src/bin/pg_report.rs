//! The PostgreSQL hot-row benchmark: 8 concurrent callers in one process increment one row.
//!
//! In one run, on one throwaway PostgreSQL 15 cluster with durable commits (`fsync`,
//! `full_page_writes` and `synchronous_commit` on):
//!
//! * **conflict, staging (requeue)**: the framework on `PgStore`, `pre_ecs(on_lose = "requeue")`:
//!   the 8 callers are serialised in-process, each commit is one round trip after one load;
//! * **conflict, default (reject)**: the framework's default settings; rejected callers try again;
//! * **naive OCC**: `SELECT version` then `UPDATE … WHERE version = $v`, retried at once on zero
//!   rows — what several processes without staging would do;
//! * **row-lock UPDATE**: `UPDATE hot SET value = value + 1` — a blind write serialised by the
//!   row lock (it cannot run a body between read and write).
//!
//! Each runs for a fixed time; reported: committed ops/s, attempts per commit, and the ratio to
//! the row-lock figure. `cargo run --release -p conflict-benches --bin pg_report [-- --secs N]`
//! (needs Debian's `postgresql` package, like the tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use conflict_runtime::prelude::*;
use conflict_runtime::store::PgStore;
use conflict_runtime::store::postgres::deadpool_postgres::Pool;
use conflict_tests::pg::{Cluster, unique_schema};

const CALLERS: usize = 8;

/// The hot row, as a framework entity.
#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "HotRow")]
struct Hot {
    #[entity(id)]
    id: EntityId,
    value: u64,
}

#[with_conflict_resolution(pre_ecs(on_lose = "requeue"), occ(max_retries = 100))]
async fn bump_requeue(h: &mut Hot) {
    h.value += 1;
}

#[with_conflict_resolution]
async fn bump_default(h: &mut Hot) {
    h.value += 1;
}

struct Row {
    name: &'static str,
    commits: u64,
    attempts: u64,
    secs: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.commits as f64 / self.secs
    }
}

/// Runs `CALLERS` copies of `call` for `secs`; each call returns (committed, attempts).
async fn drive<F, Fut>(name: &'static str, secs: f64, call: F) -> Row
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (bool, u64)> + Send,
{
    let call = Arc::new(call);
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let attempts = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (call, stop, commits, attempts) = (
                call.clone(),
                stop.clone(),
                commits.clone(),
                attempts.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (ok, n) = call().await;
                    attempts.fetch_add(n, Ordering::Relaxed);
                    if ok {
                        commits.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Row {
        name,
        commits: commits.load(Ordering::Relaxed),
        attempts: attempts.load(Ordering::Relaxed),
        secs: started.elapsed().as_secs_f64(),
    }
}

async fn sql_table(pool: &Pool, schema: &str) -> Result<(), String> {
    let c = pool.get().await.map_err(|e| e.to_string())?;
    c.batch_execute(&format!(
        "CREATE TABLE {schema}.hot (id int PRIMARY KEY, version bigint NOT NULL, value bigint NOT NULL);
         INSERT INTO {schema}.hot VALUES (1, 1, 0);"
    ))
    .await
    .map_err(|e| e.to_string())
}

async fn naive_occ(pool: Pool, schema: String) -> (bool, u64) {
    let Ok(c) = pool.get().await else {
        return (false, 0);
    };
    let select = format!("SELECT version, value FROM {schema}.hot WHERE id = 1");
    let update = format!(
        "UPDATE {schema}.hot SET version = version + 1, value = $2 WHERE id = 1 AND version = $1"
    );
    let mut attempts = 0;
    loop {
        attempts += 1;
        let Ok(row) = c.query_one(select.as_str(), &[]).await else {
            return (false, attempts);
        };
        let (v, value): (i64, i64) = (row.get(0), row.get(1));
        match c.execute(update.as_str(), &[&v, &(value + 1)]).await {
            Ok(1) => return (true, attempts),
            Ok(_) => {}
            Err(_) => return (false, attempts),
        }
    }
}

async fn row_lock(pool: Pool, schema: String) -> (bool, u64) {
    let Ok(c) = pool.get().await else {
        return (false, 0);
    };
    let update = format!("UPDATE {schema}.hot SET value = value + 1 WHERE id = 1");
    (matches!(c.execute(update.as_str(), &[]).await, Ok(1)), 1)
}

/// A store in a fresh schema of `cluster`, with a connection per caller.
async fn store_on(cluster: &Cluster, hint: &str) -> Result<PgStore, String> {
    PgStore::builder(cluster.url())
        .schema(unique_schema(hint).as_str())
        .max_connections(CALLERS + 2)
        .connect()
        .await
        .map_err(|e| e.to_string())
}

async fn framework(
    name: &'static str,
    secs: f64,
    cluster: &Cluster,
    requeue: bool,
) -> Result<(Row, u64), String> {
    let store = store_on(cluster, "bench").await?;
    let rt = Runtime::builder()
        .store(store)
        .build()
        .map_err(|e| e.to_string())?;
    let h = rt
        .insert(Hot {
            id: EntityId::new(),
            value: 0,
        })
        .await
        .map_err(|e| e.to_string())?;
    let before = rt.metrics();
    let row = drive(name, secs, move || {
        let h = h.clone();
        async move {
            let r = if requeue {
                bump_requeue(&h).await
            } else {
                bump_default(&h).await
            };
            (r.is_ok(), 0)
        }
    })
    .await;
    let after = rt.metrics();
    // Attempts as the framework counts them: body runs plus calls refused before running.
    let attempts = (after.attempts - before.attempts)
        + (after.outcome(conflict_runtime::operation::OutcomeKind::Rejected)
            - before.outcome(conflict_runtime::operation::OutcomeKind::Rejected));
    let conflicts = after.occ_conflicts - before.occ_conflicts;
    Ok((Row { attempts, ..row }, conflicts))
}

async fn run(secs: f64) -> Result<(), String> {
    let cluster = Cluster::start()?;
    let admin = store_on(&cluster, "admin").await?;
    {
        let c = admin.pool().get().await.map_err(|e| e.to_string())?;
        // The fixture turns durability off for test speed; a benchmark of commits needs it on.
        // One statement at a time: ALTER SYSTEM cannot run inside a (multi-statement) transaction.
        for sql in [
            "ALTER SYSTEM SET fsync = on",
            "ALTER SYSTEM SET full_page_writes = on",
            "ALTER SYSTEM SET synchronous_commit = on",
            "SELECT pg_reload_conf()",
        ] {
            c.batch_execute(sql)
                .await
                .map_err(|e| format!("{sql}: {e:?}"))?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let fsync: String = c
            .query_one("SHOW fsync", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let sync: String = c
            .query_one("SHOW synchronous_commit", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        println!(
            "PostgreSQL on 127.0.0.1:{}: fsync = {fsync}, synchronous_commit = {sync}",
            cluster.port()
        );
    }
    let schema = admin.schema().to_string();
    sql_table(admin.pool(), &schema).await?;

    let mut rows = Vec::new();
    let (r, c_requeue) = framework("conflict: staging (requeue)", secs, &cluster, true).await?;
    rows.push(r);
    let (r, c_default) = framework("conflict: default (reject)", secs, &cluster, false).await?;
    rows.push(r);
    let (pool, s) = (admin.pool().clone(), schema.clone());
    rows.push(
        drive(
            "naive OCC (SELECT, then UPDATE … WHERE version)",
            secs,
            move || naive_occ(pool.clone(), s.clone()),
        )
        .await,
    );
    let (pool, s) = (admin.pool().clone(), schema.clone());
    rows.push(
        drive("row-lock UPDATE (blind)", secs, move || {
            row_lock(pool.clone(), s.clone())
        })
        .await,
    );

    let lock_rate = rows[3].rate();
    println!();
    println!("| implementation | committed ops/s | attempts per commit | ÷ row-lock UPDATE |");
    println!("|---|--:|--:|--:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} |",
            r.name,
            r.rate(),
            r.attempts as f64 / r.commits.max(1) as f64,
            r.rate() / lock_rate
        );
    }
    println!();
    println!(
        "{CALLERS} callers, one row, {secs} s each; OCC conflicts seen by the framework: requeue {c_requeue}, default {c_default}"
    );
    Ok(())
}

fn main() {
    let mut secs = 5.0;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--secs") {
        secs = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(secs);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = match rt {
        Ok(rt) => rt.block_on(run(secs)),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = result {
        eprintln!("pg_report: {e}");
        std::process::exit(1);
    }
}
