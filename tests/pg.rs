//! `PgStore` against a real PostgreSQL: the backend suite (`conflict_tests::suite`) unchanged,
//! then what only a database store has to guarantee — the ledger, all-or-nothing multi-writes,
//! conflicts from SQLSTATE 40P01, settled unknown outcomes, several OS processes, a killed
//! process, a database restart.
//!
//! The tests share one throwaway cluster (`conflict_tests::pg`, started on first use and removed
//! when this binary exits); each uses its own schema. The restart test starts a private cluster
//! so that it does not disturb the others. Without PostgreSQL's server binaries every test here
//! fails with a message naming the Debian package `postgresql`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conflict_runtime::prelude::*;
use conflict_runtime::store::postgres::{LedgerEntry, LedgerStatus};
use conflict_runtime::store::{
    Commit, CommitOutcome, Delete, EntityCodec, EntityStore, PgStore, Read, StoredValue, Write,
};
use conflict_runtime::{entity::EntityKey, store::StoreError};
use conflict_tests::suite::{self, Scale};
use conflict_tests::{Counter, multi_thread, pg};

// ---------------------------------------------------------------------------------------------
// The backend suite, unchanged: every case as `postgres::<case>`, each on a store in a fresh
// schema of the shared cluster, at the smaller `pg::Postgres::SCALES`.

conflict_tests::backend_suite!(postgres, conflict_tests::pg::Postgres);

// ---------------------------------------------------------------------------------------------
// Helpers.

fn key_of(id: EntityId) -> EntityKey {
    EntityKey::new(Counter::TYPE_NAME, id)
}

fn counter_with(id: EntityId, value: u64) -> StoredValue {
    Arc::new(Counter {
        id,
        value,
        log: Vec::new(),
    })
}

fn commit_of(op_id: OpId, writes: Vec<Write>) -> Commit {
    Commit {
        op_id,
        op_type: "test_commit",
        priority: OperationPriority::HIGH,
        attempt: 1,
        writes,
        deletes: Vec::new(),
        reads: Vec::new(),
    }
}

fn commit_reading(op_id: OpId, writes: Vec<Write>, reads: Vec<Read>) -> Commit {
    Commit {
        reads,
        ..commit_of(op_id, writes)
    }
}

fn read_of(id: EntityId, version: u64) -> Read {
    Read {
        key: key_of(id),
        version,
    }
}

fn fresh_op() -> OpId {
    OpId::from_parts(fastrand::u64(..), fastrand::u64(..))
}

async fn load(store: &PgStore, id: EntityId) -> (Counter, u64) {
    let snap = store
        .load(&key_of(id), EntityCodec::of::<Counter>())
        .await
        .unwrap()
        .expect("entity exists");
    let c = snap
        .value
        .as_any()
        .downcast_ref::<Counter>()
        .unwrap()
        .clone();
    (c, snap.version)
}

/// Checks that the ledger and the entity agree: one committed entry per commit of `key`, their
/// versions exactly `2..=version` in commit order, each op id once. Returns the entries.
async fn ledger_agrees(
    store: &PgStore,
    key: &EntityKey,
    commits: u64,
    version: u64,
) -> Vec<LedgerEntry> {
    let entries = store.ledger_for(key).await.unwrap();
    assert_eq!(
        entries.len() as u64,
        commits,
        "one ledger entry per commit of {key}"
    );
    let versions: Vec<u64> = entries
        .iter()
        .map(|e| {
            assert_eq!(e.status, LedgerStatus::Committed);
            e.targets.iter().find(|t| &t.key == key).unwrap().version
        })
        .collect();
    assert_eq!(
        versions,
        (2..=version).collect::<Vec<_>>(),
        "the ledger's versions of {key} are gap-free and in commit order"
    );
    let ops: HashSet<OpId> = entries.iter().map(|e| e.op_id).collect();
    assert_eq!(
        ops.len(),
        entries.len(),
        "each op id at most once in the ledger"
    );
    entries
}

/// The pid of a backend of `store`'s schema waiting for a row lock (polls up to 10 s).
async fn waiting_backend(store: &PgStore) -> i32 {
    let client = store.pool().get().await.unwrap();
    let pattern = format!("%\"{}\".entities%", store.schema());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = client
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE $1 AND pid <> pg_backend_pid()",
                &[&pattern],
            )
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "no backend started waiting for the row lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The store's own contract on PostgreSQL.

#[with_conflict_resolution(
    mode = "occ",
    occ(
        max_retries = 1000,
        base_delay_ms = 0,
        backoff_factor = 1.5,
        max_delay_ms = 2
    )
)]
async fn tally(c: &mut Counter, tag: u64) -> u64 {
    c.value += 1;
    c.log.push(tag);
    c.value
}

/// Invariant: every commit made through the runtime is in the ledger exactly once, with the op
/// id, type, priority and attempt the caller saw and the version it got; versions gap-free.
#[test]
fn every_commit_is_in_the_ledger_exactly_once() {
    multi_thread(2, async {
        let (rt, store) = pg::runtime("ledger_once").await;
        let h = rt.insert(Counter::new()).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = Vec::new();
                for i in 0..20 {
                    if let Ok(c) = tally(&h, t * 100 + i).await {
                        done.push((c.op_id, c.version, c.attempts));
                    }
                }
                done
            }));
        }
        let mut seen = HashMap::new();
        for t in tasks {
            for (op, version, attempts) in t.await.unwrap() {
                assert!(seen.insert(op, (version, attempts)).is_none());
            }
        }
        let now = h.load().await.unwrap();
        assert_eq!(now.value.value, seen.len() as u64);
        let entries = ledger_agrees(&store, h.key(), seen.len() as u64, now.version).await;
        for e in &entries {
            let (version, attempts) = seen[&e.op_id];
            assert_eq!(e.targets.len(), 1);
            assert_eq!(e.targets[0].version, version);
            assert_eq!(e.attempt, Some(attempts));
            assert_eq!(e.op_type.as_deref(), Some("tally"));
            assert_eq!(e.priority, Some(OperationPriority::NORMAL));
            assert!(e.commit_seq.is_some());
        }
        let lookup = store.lookup(entries[0].op_id).await.unwrap();
        assert_eq!(lookup.as_ref(), Some(&entries[0]));
    });
}

/// Invariant: a multi-write commit applies all of its writes or none: one stale write leaves
/// every entity as it was and writes no ledger entry; a current one bumps every version once
/// and records one entry listing all targets. The same key twice is refused (`DuplicateWrite`)
/// with no ledger entry; a commit with no writes (and no reads) records nothing either.
#[test]
fn a_multi_write_commit_is_all_or_nothing() {
    multi_thread(2, async {
        let store = pg::store("multi_write").await;
        let (a, b) = (EntityId::new(), EntityId::new());
        store.insert(key_of(a), counter_with(a, 0)).await.unwrap();
        store.insert(key_of(b), counter_with(b, 0)).await.unwrap();
        let write = |id, v, value| Write {
            key: key_of(id),
            expected_version: v,
            value: counter_with(id, value),
        };

        let ok = fresh_op();
        let out = store
            .commit(commit_of(ok, vec![write(b, 1, 10), write(a, 1, 10)]))
            .await
            .unwrap();
        assert!(
            matches!(&out, CommitOutcome::Committed { versions, .. } if versions == &vec![2, 2]),
            "{out:?}"
        );
        let entry = store.lookup(ok).await.unwrap().expect("ledger entry");
        assert_eq!(entry.status, LedgerStatus::Committed);
        let targets: HashSet<_> = entry
            .targets
            .iter()
            .map(|t| (t.key.clone(), t.version))
            .collect();
        assert_eq!(targets, HashSet::from([(key_of(a), 2), (key_of(b), 2)]));

        // `b` is stale: nothing applies, not even the write to `a`.
        let stale = fresh_op();
        let out = store
            .commit(commit_of(stale, vec![write(a, 2, 99), write(b, 1, 99)]))
            .await
            .unwrap();
        match out {
            CommitOutcome::Conflict {
                key,
                expected,
                actual,
            } => {
                assert_eq!((key, expected, actual), (key_of(b), 1, Some(2)));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(
            load(&store, a).await,
            (
                Counter {
                    id: a,
                    value: 10,
                    log: vec![]
                },
                2
            )
        );
        assert_eq!(load(&store, b).await.1, 2);
        assert_eq!(store.lookup(stale).await.unwrap(), None, "no ledger entry");

        // One key twice: refused before any I/O (not a conflict a caller would retry).
        let twice_op = fresh_op();
        let twice = store
            .commit(commit_of(twice_op, vec![write(a, 2, 1), write(a, 2, 2)]))
            .await;
        assert!(
            matches!(&twice, Err(StoreError::DuplicateWrite { key }) if *key == key_of(a)),
            "{twice:?}"
        );
        assert_eq!(load(&store, a).await.1, 2);
        assert_eq!(
            store.lookup(twice_op).await.unwrap(),
            None,
            "no ledger entry"
        );

        // Nothing written, nothing recorded: an empty commit leaves no ledger entry.
        let empty = fresh_op();
        let out = store.commit(commit_of(empty, vec![])).await.unwrap();
        assert!(matches!(out, CommitOutcome::Committed { versions, .. } if versions.is_empty()));
        assert_eq!(store.lookup(empty).await.unwrap(), None, "no ledger entry");
    });
}

/// Invariant: reads leave no trace in the ledger: a commit with writes and reads records one
/// entry listing the writes only; a commit with reads only records none, whether it applies or
/// conflicts; and a read is validated against the newest committed row — a commit whose read
/// waits for a concurrent transaction that changes the entity conflicts once that one commits,
/// and applies none of its writes.
#[test]
fn reads_are_validated_in_the_commit_and_leave_no_ledger_trace() {
    multi_thread(2, async {
        let store = pg::store("reads").await;
        let (a, b) = (EntityId::new(), EntityId::new());
        store.insert(key_of(a), counter_with(a, 0)).await.unwrap();
        store.insert(key_of(b), counter_with(b, 0)).await.unwrap();
        let write_a = move |v| Write {
            key: key_of(a),
            expected_version: v,
            value: counter_with(a, v * 10),
        };

        let op = fresh_op();
        let out = store
            .commit(commit_reading(op, vec![write_a(1)], vec![read_of(b, 1)]))
            .await
            .unwrap();
        assert!(
            matches!(&out, CommitOutcome::Committed { versions, .. } if versions == &vec![2]),
            "{out:?}"
        );
        let entry = store.lookup(op).await.unwrap().expect("ledger entry");
        assert_eq!(entry.status, LedgerStatus::Committed);
        assert_eq!(
            entry
                .targets
                .iter()
                .map(|t| (t.key.clone(), t.version))
                .collect::<Vec<_>>(),
            [(key_of(a), 2)],
            "the writes only"
        );
        assert!(store.ledger_for(&key_of(b)).await.unwrap().is_empty());

        for (version, applies) in [(1, true), (2, false)] {
            let op = fresh_op();
            let out = store
                .commit(commit_reading(
                    op,
                    vec![],
                    vec![read_of(b, version), read_of(a, 2)],
                ))
                .await
                .unwrap();
            assert_eq!(
                matches!(out, CommitOutcome::Committed { .. }),
                applies,
                "{out:?}"
            );
            assert_eq!(store.lookup(op).await.unwrap(), None, "no ledger entry");
        }

        // Another transaction holds `b` and changes it; the commit reading `b` waits for it.
        let s = store.schema().to_string();
        let blocker = store.pool().get().await.unwrap();
        blocker
            .batch_execute(&format!(
                "BEGIN; UPDATE \"{s}\".entities SET version = version + 1 WHERE id = '{b}'"
            ))
            .await
            .unwrap();
        let op = fresh_op();
        let committing = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .commit(commit_reading(op, vec![write_a(2)], vec![read_of(b, 1)]))
                    .await
            })
        };
        waiting_backend(&store).await;
        blocker.batch_execute("COMMIT").await.unwrap();
        match committing.await.unwrap() {
            Ok(CommitOutcome::Conflict {
                key,
                expected,
                actual,
            }) => assert_eq!((key, expected, actual), (key_of(b), 1, Some(2))),
            other => panic!("expected a conflict on the read, got {other:?}"),
        }
        assert_eq!(load(&store, a).await.1, 2, "the write did not apply");
        assert_eq!(store.lookup(op).await.unwrap(), None, "no ledger entry");
    });
}

/// Invariant: `load_many` decodes each entity with its own codec (entities of several types in
/// one call), and a value its codec cannot decode is `StoreError::Codec` naming that key.
#[test]
fn load_many_decodes_each_entity_with_its_codec() {
    multi_thread(2, async {
        let store = pg::store("load_many_codec").await;
        let (a, l) = (EntityId::new(), EntityId::new());
        store.insert(key_of(a), counter_with(a, 5)).await.unwrap();
        let label = suite::Label {
            id: l,
            text: "hello".into(),
        };
        let label_key = EntityKey::new(suite::Label::TYPE_NAME, l);
        store
            .insert(label_key.clone(), Arc::new(label.clone()))
            .await
            .unwrap();
        let keys = [
            (label_key.clone(), EntityCodec::of::<suite::Label>()),
            (key_of(a), EntityCodec::of::<Counter>()),
        ];
        let snaps = store.load_many(&keys).await.unwrap();
        let got_label = snaps[0].as_ref().unwrap().value.as_any().downcast_ref();
        assert_eq!(got_label, Some(&label));
        let got_counter = snaps[1].as_ref().unwrap().value.as_any();
        assert_eq!(
            got_counter.downcast_ref::<Counter>().map(|c| c.value),
            Some(5)
        );

        let wrong = [
            (key_of(a), EntityCodec::of::<Counter>()),
            (label_key.clone(), EntityCodec::of::<Counter>()),
        ];
        match store.load_many(&wrong).await {
            Err(StoreError::Codec { key, .. }) => assert_eq!(key, label_key),
            other => panic!("expected a codec error, got {other:?}"),
        }
    });
}

/// Invariant: when the connection is lost at `COMMIT` of a commit with reads, the store settles
/// the op id through the ledger exactly as for writes alone (reads add nothing to the ledger):
/// here the commit had not applied, so the ledger records it as aborted, the caller gets a
/// `Backend` error saying so, nothing was applied and the read row is no longer held.
#[test]
fn a_connection_lost_at_commit_with_reads_is_settled_through_the_ledger() {
    multi_thread(2, async {
        let store = pg::store("lost_at_commit").await;
        let (a, b) = (EntityId::new(), EntityId::new());
        store.insert(key_of(a), counter_with(a, 0)).await.unwrap();
        store.insert(key_of(b), counter_with(b, 0)).await.unwrap();
        let s = store.schema().to_string();
        // A deferred trigger on the ledger makes COMMIT wait for an advisory lock the test
        // holds: the commit is then in flight at COMMIT, where its connection is killed.
        let lock_key = fastrand::i64(1..i64::from(i32::MAX));
        let admin = store.pool().get().await.unwrap();
        admin
            .batch_execute(&format!(
                "CREATE FUNCTION \"{s}\".hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     IF NEW.status = 'committed' THEN PERFORM pg_advisory_xact_lock({lock_key}); END IF;
                     RETURN NULL;
                 END $$;
                 CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON \"{s}\".ledger
                     DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION \"{s}\".hold_commit();
                 SELECT pg_advisory_lock({lock_key});"
            ))
            .await
            .unwrap();
        let op = fresh_op();
        let committing = {
            let store = store.clone();
            tokio::spawn(async move {
                let write = Write {
                    key: key_of(a),
                    expected_version: 1,
                    value: counter_with(a, 1),
                };
                store
                    .commit(commit_reading(op, vec![write], vec![read_of(b, 1)]))
                    .await
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid: i32 = loop {
            let rows = admin
                .query(
                    "SELECT pid FROM pg_locks \
                     WHERE locktype = 'advisory' AND NOT granted AND objid::bigint = $1",
                    &[&lock_key],
                )
                .await
                .unwrap();
            if let Some(row) = rows.first() {
                break row.get(0);
            }
            assert!(Instant::now() < deadline, "the commit never reached COMMIT");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let query: String = admin
            .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert_eq!(query, "COMMIT", "waiting at COMMIT");
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        let out = committing.await.unwrap();
        admin
            .batch_execute(&format!("SELECT pg_advisory_unlock({lock_key})"))
            .await
            .unwrap();
        match out {
            Err(StoreError::Backend { message, .. }) => {
                assert!(message.contains("aborted"), "{message}");
            }
            other => panic!("expected a settled Backend error, got {other:?}"),
        }
        let entry = store.lookup(op).await.unwrap().expect("settled");
        assert_eq!(entry.status, LedgerStatus::Aborted);
        assert!(entry.targets.is_empty());
        assert_eq!(load(&store, a).await.1, 1, "nothing applied");
        assert_eq!(load(&store, b).await.1, 1, "nothing applied");
        // `b` is free again: a commit writing it applies at once.
        let write_b = Write {
            key: key_of(b),
            expected_version: 1,
            value: counter_with(b, 2),
        };
        let out = store
            .commit(commit_reading(
                fresh_op(),
                vec![write_b],
                vec![read_of(a, 1)],
            ))
            .await
            .unwrap();
        assert!(matches!(out, CommitOutcome::Committed { .. }), "{out:?}");
    });
}

/// Invariant: a deadlock (SQLSTATE 40P01) rolling back a commit is reported as a conflict —
/// retried like any other — never as an error, and applies nothing.
#[test]
fn a_deadlock_is_a_conflict_not_an_error() {
    multi_thread(2, async {
        let store = pg::store("deadlock").await;
        let (a, b) = (EntityId::new(), EntityId::new());
        store.insert(key_of(a), counter_with(a, 0)).await.unwrap();
        store.insert(key_of(b), counter_with(b, 0)).await.unwrap();
        // The store locks in key order: `first`, then `second`.
        let (first, second) = if key_of(a) < key_of(b) {
            (a, b)
        } else {
            (b, a)
        };
        let s = store.schema().to_string();
        let blocker = store.pool().get().await.unwrap();
        // The blocker waits long before checking for deadlocks, so the store's backend (1 s,
        // the default) is the one that detects the cycle and is rolled back.
        blocker
            .batch_execute(&format!(
                "SET deadlock_timeout = '20s'; BEGIN; \
                 SELECT 1 FROM \"{s}\".entities WHERE id = '{second}' FOR UPDATE"
            ))
            .await
            .unwrap();
        let op = fresh_op();
        let committing = {
            let store = store.clone();
            tokio::spawn(async move {
                let writes = vec![
                    Write {
                        key: key_of(a),
                        expected_version: 1,
                        value: counter_with(a, 1),
                    },
                    Write {
                        key: key_of(b),
                        expected_version: 1,
                        value: counter_with(b, 1),
                    },
                ];
                store.commit(commit_of(op, writes)).await
            })
        };
        waiting_backend(&store).await;
        let closing = tokio::spawn(async move {
            blocker
                .batch_execute(&format!(
                    "SELECT 1 FROM \"{s}\".entities WHERE id = '{first}' FOR UPDATE; ROLLBACK"
                ))
                .await
        });
        let out = committing.await.unwrap();
        assert!(
            matches!(out, Ok(CommitOutcome::Conflict { .. })),
            "a deadlock must be a conflict, got {out:?}"
        );
        closing.await.unwrap().unwrap();
        assert_eq!(load(&store, a).await.1, 1, "nothing applied");
        assert_eq!(load(&store, b).await.1, 1, "nothing applied");
        assert_eq!(store.lookup(op).await.unwrap(), None);
    });
}

/// Invariant: under `SERIALIZABLE` (a database whose default isolation is stricter than the
/// store's `READ COMMITTED`), concurrent commits fail with SQLSTATE 40001; the store reports
/// them as conflicts, which the runtime retries — none surfaces as an error, none is lost.
#[test]
fn serialization_failures_are_retried_conflicts() {
    multi_thread(2, async {
        let url = format!(
            "{} options='-c default_transaction_isolation=serializable'",
            pg::shared().url()
        );
        let store = PgStore::builder(url)
            .schema(pg::unique_schema("serializable"))
            .max_connections(8)
            .connect()
            .await
            .unwrap();
        let client = store.pool().get().await.unwrap();
        let isolation: String = client
            .query_one("SHOW transaction_isolation", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(isolation, "serializable");
        drop(client);
        let rt = Runtime::builder().store(store).build().unwrap();
        // Panics on any error but `RetriesExhausted`, so a raw 40001 would fail it.
        suite::no_lost_update_one_entity(
            rt.clone(),
            Scale {
                tasks: 8,
                calls: 25,
            },
        )
        .await;
        assert!(
            rt.metrics().occ_conflicts > 0,
            "the contention produced conflicts"
        );
    });
}

/// Invariant: when the committing connection dies mid-commit, the caller gets a typed store
/// error — never a panic, never a silent retry — and the store has settled the op id in the
/// ledger: here `Aborted`, and indeed nothing was applied.
#[test]
fn a_connection_killed_mid_commit_is_settled_through_the_ledger() {
    multi_thread(2, async {
        let store = pg::store("killed_conn").await;
        let e = EntityId::new();
        store.insert(key_of(e), counter_with(e, 0)).await.unwrap();
        let s = store.schema().to_string();
        let blocker = store.pool().get().await.unwrap();
        blocker
            .batch_execute(&format!(
                "BEGIN; SELECT 1 FROM \"{s}\".entities WHERE id = '{e}' FOR UPDATE"
            ))
            .await
            .unwrap();
        let op = fresh_op();
        let committing = {
            let store = store.clone();
            tokio::spawn(async move {
                let write = Write {
                    key: key_of(e),
                    expected_version: 1,
                    value: counter_with(e, 1),
                };
                store.commit(commit_of(op, vec![write])).await
            })
        };
        let pid = waiting_backend(&store).await;
        let killer = store.pool().get().await.unwrap();
        killer
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        match committing.await.unwrap() {
            Err(StoreError::Backend { message, .. }) => {
                assert!(message.contains("aborted"), "{message}");
            }
            other => panic!("expected a settled Backend error, got {other:?}"),
        }
        let entry = store
            .lookup(op)
            .await
            .unwrap()
            .expect("settled in the ledger");
        assert_eq!(entry.status, LedgerStatus::Aborted);
        assert!(entry.reason.is_some());
        blocker.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(load(&store, e).await.1, 1, "nothing applied");
    });
}

/// Invariant: `resolve` gives a definite answer and makes it final: a committed op reads as
/// committed; an op with no entry is fenced as aborted, and a late commit under that op id
/// fails without applying anything.
#[test]
fn resolve_settles_an_op_id_for_good() {
    multi_thread(2, async {
        let store = pg::store("resolve").await;
        let e = EntityId::new();
        store.insert(key_of(e), counter_with(e, 0)).await.unwrap();
        let write = |v| Write {
            key: key_of(e),
            expected_version: v,
            value: counter_with(e, v),
        };
        let done = fresh_op();
        store.commit(commit_of(done, vec![write(1)])).await.unwrap();
        let entry = store.resolve(done).await.unwrap();
        assert_eq!(entry.status, LedgerStatus::Committed);
        assert_eq!(entry.targets[0].version, 2);

        let late = fresh_op();
        let entry = store.resolve(late).await.unwrap();
        assert_eq!(entry.status, LedgerStatus::Aborted);
        assert_eq!(store.resolve(late).await.unwrap(), entry, "idempotent");
        let f = EntityId::new();
        store.insert(key_of(f), counter_with(f, 0)).await.unwrap();
        let also_f = Write {
            key: key_of(f),
            expected_version: 1,
            value: counter_with(f, 1),
        };
        // Both commit paths: the single statement and the multi-write transaction.
        for writes in [vec![write(2)], vec![write(2), also_f]] {
            match store.commit(commit_of(late, writes)).await {
                Err(StoreError::Backend { message, .. }) => {
                    assert!(message.contains("ledger"), "{message}");
                }
                other => panic!("a fenced op must not commit, got {other:?}"),
            }
        }
        assert_eq!(
            load(&store, f).await.1,
            1,
            "the fenced commit applied nothing"
        );
        assert_eq!(
            load(&store, e).await.1,
            2,
            "the fenced commit applied nothing"
        );
    });
}

/// Invariant: creating the schema is idempotent and safe from concurrent starts; existing data
/// survives a reconnect; a schema from a newer version is refused with a clear error.
#[test]
fn the_schema_migration_is_idempotent_and_concurrency_safe() {
    multi_thread(2, async {
        let url = pg::shared().url();
        let schema = pg::unique_schema("migrate");
        let open = || {
            PgStore::builder(url.clone())
                .schema(schema.clone())
                .max_connections(2)
                .connect()
        };
        let (x, y, z) = tokio::join!(open(), open(), open());
        let store = x.unwrap();
        y.unwrap();
        z.unwrap();
        let e = EntityId::new();
        store.insert(key_of(e), counter_with(e, 7)).await.unwrap();
        let again = open().await.unwrap();
        assert_eq!(load(&again, e).await.0.value, 7);
        let client = again.pool().get().await.unwrap();
        let n: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM \"{schema}\".schema_version"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "the version is recorded once");
        client
            .execute(
                &format!("INSERT INTO \"{schema}\".schema_version (version) VALUES (999)"),
                &[],
            )
            .await
            .unwrap();
        match open().await {
            Err(StoreError::Backend { message, .. }) => {
                assert!(message.contains("newer"), "{message}")
            }
            other => panic!("a newer schema must be refused, got {other:?}"),
        }
        assert!(
            PgStore::builder(url.clone())
                .schema("Bad-Name")
                .connect()
                .await
                .is_err()
        );
    });
}

/// Invariant: a schema made by a build of schema version 1 (where `entities.value` is NOT
/// NULL, so no tombstone can be stored) is migrated when a store of this build connects: the
/// rows it holds stay, version 2 is recorded once, and deletes then work on old and new rows.
#[test]
fn a_version_1_schema_is_migrated_to_hold_tombstones() {
    multi_thread(2, async {
        let url = pg::shared().url();
        let schema = pg::unique_schema("v1");
        let s = format!("\"{schema}\"");
        let old = pg::store("v1_setup").await;
        let client = old.pool().get().await.unwrap();
        // Schema version 1, as the first release created it.
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {s};
                 CREATE TABLE {s}.schema_version (
                     version integer NOT NULL,
                     migrated_at timestamptz NOT NULL DEFAULT clock_timestamp());
                 CREATE TABLE {s}.entities (
                     entity_type text NOT NULL, id uuid NOT NULL,
                     version bigint NOT NULL CHECK (version >= 1),
                     last_modified timestamptz NOT NULL, value jsonb NOT NULL,
                     PRIMARY KEY (entity_type, id)) WITH (fillfactor = 80);
                 CREATE SEQUENCE {s}.commit_seq;
                 CREATE TABLE {s}.ledger (
                     op_id uuid PRIMARY KEY,
                     status text NOT NULL CHECK (status IN ('committed', 'aborted')),
                     op_type text, targets jsonb NOT NULL DEFAULT '[]', priority smallint,
                     attempt integer, reason text, commit_seq bigint UNIQUE,
                     recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                     CHECK ((status = 'committed') = (commit_seq IS NOT NULL)));
                 INSERT INTO {s}.schema_version (version) VALUES (1);"
            ))
            .await
            .unwrap();
        let kept = EntityId::new();
        let json = serde_json::to_value(Counter {
            id: kept,
            value: 5,
            log: Vec::new(),
        })
        .unwrap();
        client
            .execute(
                &format!("INSERT INTO {s}.entities VALUES ($1, $2, 3, clock_timestamp(), $3)"),
                &[&Counter::TYPE_NAME, kept.as_uuid(), &json],
            )
            .await
            .unwrap();
        let store = PgStore::builder(url.clone())
            .schema(schema.clone())
            .connect()
            .await
            .unwrap();
        assert_eq!(load(&store, kept).await.1, 3, "the old row is kept");
        let versions: Vec<i32> = client
            .query(
                &format!("SELECT version FROM {s}.schema_version ORDER BY version"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, [1, 2], "version 2 recorded once, after 1");
        let fresh = EntityId::new();
        store
            .insert(key_of(fresh), counter_with(fresh, 1))
            .await
            .unwrap();
        for (id, version) in [(kept, 3), (fresh, 1)] {
            let mut c = commit_of(fresh_op(), Vec::new());
            c.deletes = vec![Delete {
                key: key_of(id),
                expected_version: version,
            }];
            assert!(matches!(
                store.commit(c).await.unwrap(),
                CommitOutcome::Committed { .. }
            ));
            assert!(
                store
                    .load(&key_of(id), EntityCodec::of::<Counter>())
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        // Connecting again migrates nothing more.
        PgStore::builder(url)
            .schema(schema.clone())
            .connect()
            .await
            .unwrap();
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {s}.schema_version"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
    });
}

/// Invariant: a commit with creates and deletes is one ledger entry listing every entity it
/// changed at its new version, deletes flagged (`deleted: true`, at the tombstone's version),
/// and each entity's ledger history runs gap-free through the delete and the create again.
#[test]
fn the_ledger_lists_creates_and_deletes() {
    multi_thread(2, async {
        let store = pg::store("ledger_deletes").await;
        let (a, gone) = (EntityId::new(), EntityId::new());
        store
            .insert(key_of(gone), counter_with(gone, 1))
            .await
            .unwrap();
        let op = fresh_op();
        let mut c = commit_of(
            op,
            vec![Write {
                key: key_of(a),
                expected_version: 0,
                value: counter_with(a, 2),
            }],
        );
        c.deletes = vec![Delete {
            key: key_of(gone),
            expected_version: 1,
        }];
        let out = store.commit(c).await.unwrap();
        assert!(
            matches!(&out, CommitOutcome::Committed { versions, .. } if versions == &vec![1]),
            "{out:?}"
        );
        let entry = store.lookup(op).await.unwrap().expect("one ledger entry");
        let mut targets: Vec<(EntityKey, u64, bool)> = entry
            .targets
            .iter()
            .map(|t| (t.key.clone(), t.version, t.deleted))
            .collect();
        targets.sort();
        let mut expected = vec![(key_of(a), 1, false), (key_of(gone), 2, true)];
        expected.sort();
        assert_eq!(targets, expected);
        // Created again: version 3, after the tombstone's 2.
        let again = store
            .insert(key_of(gone), counter_with(gone, 9))
            .await
            .unwrap();
        assert_eq!(again.version, 3);
        let op2 = fresh_op();
        store
            .commit(commit_of(
                op2,
                vec![Write {
                    key: key_of(gone),
                    expected_version: 3,
                    value: counter_with(gone, 10),
                }],
            ))
            .await
            .unwrap();
        let history: Vec<u64> = store
            .ledger_for(&key_of(gone))
            .await
            .unwrap()
            .iter()
            .flat_map(|e| e.targets.iter().filter(|t| t.key == key_of(gone)))
            .map(|t| t.version)
            .collect();
        // The insert at 1 and the re-insert at 3 are not operations (no ledger row).
        assert_eq!(
            history,
            [2, 4],
            "the delete, then the write after the re-insert"
        );
    });
}

/// Invariant: `Runtime::builder().postgres(url)` gives a runtime on PostgreSQL (default schema)
/// whose commits land in the database.
#[test]
fn runtime_builder_postgres_connects_with_the_default_schema() {
    multi_thread(2, async {
        let url = pg::shared().url();
        let rt = Runtime::builder()
            .postgres(&url)
            .await
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(rt.store_name(), "postgres");
        let h = rt.insert(Counter::new()).await.unwrap();
        assert_eq!(tally(&h, 1).await.unwrap().version, 2);
        let store = PgStore::connect(&url).await.unwrap();
        assert_eq!(
            store.schema(),
            conflict_runtime::store::postgres::DEFAULT_SCHEMA
        );
        assert_eq!(load(&store, h.id()).await.0.value, 1);
    });
}

/// Invariant: the fixture's message for a missing PostgreSQL names the Debian package.
#[test]
fn missing_postgres_binaries_name_the_debian_package() {
    let err = pg::find_bin_in(std::path::Path::new("/nonexistent/postgresql")).unwrap_err();
    assert!(
        err.contains("`postgresql`") && err.contains("apt-get"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Several OS processes.

/// A running `pg_worker`; its stdout lines are collected as they come.
struct Worker {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Worker {
    fn spawn(args: &[String]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pg_worker"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pg_worker");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            })
        };
        Self {
            child,
            lines,
            reader,
        }
    }

    fn committed_so_far(&self) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("committed "))
            .count()
    }

    /// Outcome lines of a `bank` worker so far (`committed`, `refused`, `error`).
    fn outcomes_so_far(&self) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                ["committed ", "refused ", "error "]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .count()
    }

    fn wait(mut self) -> (ExitStatus, Vec<String>) {
        let status = self.child.wait().unwrap();
        self.reader.join().unwrap();
        let lines = std::mem::take(&mut *self.lines.lock().unwrap());
        (status, lines)
    }
}

/// What a worker printed: its op-id prefix and its commits (op id → versions).
fn parse(lines: &[String]) -> (u64, BTreeMap<OpId, Vec<u64>>, Vec<String>) {
    let mut prefix = 0;
    let mut commits = BTreeMap::new();
    let mut errors = Vec::new();
    for line in lines {
        let mut words = line.split(' ');
        match words.next() {
            Some("prefix") => prefix = words.next().unwrap().parse().unwrap(),
            Some("committed") => {
                let op: OpId = words.next().unwrap().parse().unwrap();
                let versions = words.map(|w| w.parse().unwrap()).collect();
                assert!(
                    commits.insert(op, versions).is_none(),
                    "op {op} reported twice"
                );
            }
            Some("error") => errors.push(line.clone()),
            _ => {}
        }
    }
    (prefix, commits, errors)
}

/// Invariant: two OS processes incrementing one entity through PostgreSQL concurrently lose
/// nothing: final value = commits reported by both; versions gap-free; the ledger holds every
/// reported commit exactly once, with the version its process saw, and nothing else.
#[test]
fn two_processes_increment_one_entity_without_losing_an_update() {
    multi_thread(2, async {
        let store = pg::store("two_procs").await;
        let h = {
            let rt = Runtime::builder().store(store.clone()).build().unwrap();
            rt.insert(Counter::new()).await.unwrap()
        };
        let args = |_: usize| {
            vec![
                "increment".to_string(),
                pg::shared().url(),
                store.schema().to_string(),
                h.id().to_string(),
                "8".into(),
                "50".into(),
            ]
        };
        let started = Instant::now();
        let workers = [Worker::spawn(&args(0)), Worker::spawn(&args(1))];
        let mut reported = BTreeMap::new();
        for w in workers {
            let (status, lines) = tokio::task::spawn_blocking(move || w.wait()).await.unwrap();
            assert!(status.success(), "worker failed: {status}");
            let (_, commits, errors) = parse(&lines);
            assert!(errors.is_empty(), "store errors: {errors:?}");
            assert!(lines.last().is_some_and(|l| l.starts_with("done ")));
            reported.extend(commits);
        }
        let elapsed = started.elapsed();
        let key = h.key().clone();
        let (now, version) = load(&store, h.id()).await;
        let n = reported.len() as u64;
        assert!(n > 0);
        assert_eq!(now.value, n, "value = commits reported by both processes");
        assert_eq!(version, n + 1, "version = 1 + commits");
        let mut tags = now.log.clone();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len() as u64, n, "each commit applied once");
        let entries = ledger_agrees(&store, &key, n, version).await;
        let in_ledger: BTreeMap<OpId, Vec<u64>> = entries
            .iter()
            .map(|e| (e.op_id, vec![e.targets[0].version]))
            .collect();
        assert_eq!(
            in_ledger, reported,
            "ledger = what the processes saw committed"
        );
        eprintln!(
            "two processes: {n} commits on one entity in {elapsed:?} ({:.0} commits/s)",
            n as f64 / elapsed.as_secs_f64()
        );
    });
}

/// Invariant: SIGKILL of one process mid-run leaves no half-applied multi-write commit: the
/// other process goes on to its end; both entities show the same number of commits, equal to
/// the ledger's entries, each listing both at the same version; every commit a process saw
/// acknowledged is in the ledger, and the only unreported ones are the killed process's.
#[test]
fn a_process_killed_mid_run_leaves_no_half_applied_commit() {
    multi_thread(2, async {
        let store = pg::store("sigkill").await;
        let (a, b) = (EntityId::new(), EntityId::new());
        store.insert(key_of(a), counter_with(a, 0)).await.unwrap();
        store.insert(key_of(b), counter_with(b, 0)).await.unwrap();
        let args = |commits: u64| {
            vec![
                "transfer".to_string(),
                pg::shared().url(),
                store.schema().to_string(),
                a.to_string(),
                b.to_string(),
                "4".into(),
                commits.to_string(),
            ]
        };
        const SURVIVOR_COMMITS: usize = 300;
        let victim = Worker::spawn(&args(0));
        let survivor = Worker::spawn(&args(SURVIVOR_COMMITS as u64));
        let deadline = Instant::now() + Duration::from_secs(60);
        while victim.committed_so_far() < 20 {
            assert!(Instant::now() < deadline, "the victim made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut victim = victim;
        victim.child.kill().unwrap(); // SIGKILL
        let survivor_at_kill = survivor.committed_so_far();
        let (victim_status, victim_lines) = tokio::task::spawn_blocking(move || victim.wait())
            .await
            .unwrap();
        assert!(!victim_status.success());
        let (survivor_status, survivor_lines) =
            tokio::task::spawn_blocking(move || survivor.wait())
                .await
                .unwrap();
        assert!(
            survivor_status.success(),
            "the survivor failed: {survivor_status}"
        );
        let (victim_prefix, victim_commits, _) = parse(&victim_lines);
        let (_, survivor_commits, errors) = parse(&survivor_lines);
        assert!(errors.is_empty(), "survivor store errors: {errors:?}");
        assert!(
            survivor_commits.len() >= SURVIVOR_COMMITS,
            "the survivor went on to its end"
        );
        assert!(
            survivor_at_kill < SURVIVOR_COMMITS,
            "the kill happened while the survivor was still running ({survivor_at_kill})"
        );

        let (ca, va) = load(&store, a).await;
        let (cb, vb) = load(&store, b).await;
        assert_eq!(ca.value, cb.value, "both entities saw every commit");
        assert_eq!(ca.log, cb.log, "in the same order");
        assert_eq!((va, vb), (ca.value + 1, cb.value + 1));
        let entries = ledger_agrees(&store, &key_of(a), ca.value, va).await;
        ledger_agrees(&store, &key_of(b), cb.value, vb).await;
        for e in &entries {
            let versions: HashSet<u64> = e.targets.iter().map(|t| t.version).collect();
            assert_eq!(e.targets.len(), 2, "each commit wrote both");
            assert_eq!(versions.len(), 1, "at the same version");
        }
        let ledger: HashSet<OpId> = entries.iter().map(|e| e.op_id).collect();
        for op in victim_commits.keys().chain(survivor_commits.keys()) {
            assert!(
                ledger.contains(op),
                "acknowledged commit {op} is in the ledger"
            );
        }
        let unreported: Vec<&OpId> = ledger
            .iter()
            .filter(|op| !victim_commits.contains_key(op) && !survivor_commits.contains_key(op))
            .collect();
        assert!(
            unreported.len() <= 4,
            "at most one in-flight commit per victim task"
        );
        for op in unreported {
            assert_eq!(op.as_uuid().as_u64_pair().0, victim_prefix);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// A Jepsen-style bank over several OS processes (`pg_worker bank`).

/// The accounts of `pg_worker bank`: the same entity (name and fields) as the worker's
/// `Account`.
#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "pg_bank::Account")]
struct BankAccount {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

/// Accounts of the bank test, and the balance each starts with.
const BANK_ACCOUNTS: usize = 10;
const BANK_INITIAL: i64 = 100;
/// Tasks per bank worker: at most this many calls of one worker are in flight at once.
const BANK_TASKS: usize = 4;

fn bank_key(id: EntityId) -> EntityKey {
    EntityKey::new(BankAccount::TYPE_NAME, id)
}

/// One transfer: account indices (positions in the worker's argument list) and the amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Move {
    from: usize,
    to: usize,
    amount: i64,
}

/// What a `bank` worker printed.
#[derive(Debug, Default)]
struct BankReport {
    /// Every operation whose body ran at least once, with its transfer.
    attempts: HashMap<OpId, Move>,
    /// The calls told `Committed`, with the new versions of `from` and `to` they were told.
    committed: HashMap<OpId, (Move, u64, u64)>,
    /// The calls told they would overdraw.
    refused: HashMap<OpId, Move>,
    /// The calls that ended with an error: kind, op id (if the error names one), the line.
    errors: Vec<(String, Option<OpId>, String)>,
    /// Outcome lines in all (`committed`, `refused`, `error`).
    outcomes: usize,
    /// Whether it printed its `done` line.
    done: bool,
}

impl BankReport {
    /// The operations of this worker whose outcome it printed.
    fn ended(&self) -> HashSet<OpId> {
        self.committed
            .keys()
            .chain(self.refused.keys())
            .copied()
            .chain(self.errors.iter().filter_map(|(_, op, _)| *op))
            .collect()
    }

    /// Operations whose body ran but whose outcome was never printed.
    fn in_flight(&self) -> HashSet<OpId> {
        let ended = self.ended();
        self.attempts
            .keys()
            .filter(|op| !ended.contains(op))
            .copied()
            .collect()
    }
}

fn parse_bank(lines: &[String]) -> BankReport {
    fn op_of(word: Option<&str>) -> Option<OpId> {
        match word {
            Some("-") | None => None,
            Some(w) => Some(w.parse().unwrap()),
        }
    }
    fn move_of<'a>(words: &mut impl Iterator<Item = &'a str>) -> Move {
        let mut next = || words.next().expect("a complete line");
        Move {
            from: next().parse().unwrap(),
            to: next().parse().unwrap(),
            amount: next().parse().unwrap(),
        }
    }
    let mut r = BankReport::default();
    for line in lines {
        let mut words = line.split(' ');
        let what = words.next();
        assert!(!r.done, "a line after `done`: {line}");
        match what {
            Some("prefix") => {}
            Some("attempt") => {
                let op = op_of(words.next()).expect("the body knows its op id");
                let m = move_of(&mut words);
                let before = r.attempts.insert(op, m);
                assert!(
                    before.is_none_or(|b| b == m),
                    "op {op} ran with two transfers: {line}"
                );
            }
            Some("committed") => {
                let op = op_of(words.next()).unwrap();
                let m = move_of(&mut words);
                let (vf, vt) = (
                    words.next().unwrap().parse().unwrap(),
                    words.next().unwrap().parse().unwrap(),
                );
                assert_eq!(
                    r.attempts.get(&op),
                    Some(&m),
                    "committed without an attempt"
                );
                assert!(
                    r.committed.insert(op, (m, vf, vt)).is_none(),
                    "op {op} reported twice"
                );
                r.outcomes += 1;
            }
            Some("refused") => {
                let op = op_of(words.next()).expect("a refusal names its op");
                let m = move_of(&mut words);
                assert_eq!(r.attempts.get(&op), Some(&m), "refused without an attempt");
                assert!(r.refused.insert(op, m).is_none(), "op {op} reported twice");
                r.outcomes += 1;
            }
            Some("error") => {
                let kind = words.next().unwrap().to_string();
                let op = op_of(words.next());
                r.errors.push((kind, op, line.clone()));
                r.outcomes += 1;
            }
            Some("done") => r.done = true,
            _ => panic!("unexpected line from a bank worker: {line}"),
        }
    }
    r
}

/// What [`bank_agrees`] found: committed transfers in the ledger, and how many of them no
/// worker reported (the killed one's in-flight calls).
#[derive(Debug, Clone, Copy)]
struct BankState {
    ledger: usize,
    unreported: usize,
}

/// Checks the bank's invariants against the accounts and the ledger, given what each worker
/// printed (and whether it was killed):
///
/// * money is conserved, and no account is negative — at the end, and after every commit of
///   it (replaying the ledger in version order);
/// * each account's commits are in the ledger at versions `2..=version`, gap-free; each entry
///   is a `bank_transfer` that wrote exactly the two accounts of a transfer a worker's body ran,
///   and each account's balance = initial + what the ledger's transfers moved in and out;
/// * every call told `Committed` is in the ledger (`lookup`) at the versions it was told; none
///   told refused or failed is committed; the only failures are preemptions (and exhausted
///   retries), never a store error;
/// * every committed entry no worker reported is a call the killed worker had in flight (body
///   ran, outcome not printed), at most one per task of it; a worker that was not killed
///   printed an outcome for every call whose body ran.
async fn bank_agrees(
    store: &PgStore,
    ids: &[EntityId],
    workers: &[(&BankReport, bool)],
) -> BankState {
    let codec = EntityCodec::of::<BankAccount>();
    let keys: Vec<EntityKey> = ids.iter().map(|&id| bank_key(id)).collect();
    let mut balances = Vec::new();
    let mut ledger: HashMap<OpId, LedgerEntry> = HashMap::new();
    let mut per_account = Vec::new();
    for key in &keys {
        let snap = store
            .load(key, codec)
            .await
            .unwrap()
            .expect("account exists");
        let balance = snap
            .value
            .as_any()
            .downcast_ref::<BankAccount>()
            .unwrap()
            .balance;
        assert!(balance >= 0, "{key} went negative: {balance}");
        balances.push(balance);
        let entries = ledger_agrees(store, key, snap.version - 1, snap.version).await;
        for e in &entries {
            let seen = ledger.entry(e.op_id).or_insert_with(|| e.clone());
            assert_eq!(
                seen, e,
                "one entry per op, whichever account it is read for"
            );
        }
        per_account.push(entries);
    }
    let initial_sum: i64 = ids.iter().map(|_| BANK_INITIAL).sum();
    assert_eq!(
        balances.iter().sum::<i64>(),
        initial_sum,
        "money is conserved"
    );

    // Every ledger entry is a transfer some worker's body ran, over exactly its two accounts.
    let mut moves: HashMap<OpId, (Move, usize)> = HashMap::new();
    for (op, e) in &ledger {
        let owners: Vec<(usize, Move)> = workers
            .iter()
            .enumerate()
            .filter_map(|(w, (r, _))| r.attempts.get(op).map(|m| (w, *m)))
            .collect();
        assert_eq!(
            owners.len(),
            1,
            "ledger op {op} ran in exactly one worker: {owners:?}"
        );
        let (owner, m) = owners[0];
        assert_eq!(e.status, LedgerStatus::Committed);
        assert_eq!(e.op_type.as_deref(), Some("bank_transfer"));
        let touched: HashSet<&EntityKey> = e.targets.iter().map(|t| &t.key).collect();
        assert_eq!(e.targets.len(), 2, "{op} wrote two entities: {e:?}");
        assert_eq!(
            touched,
            HashSet::from([&keys[m.from], &keys[m.to]]),
            "{op} wrote exactly the accounts of its transfer {m:?}"
        );
        moves.insert(*op, (m, owner));
    }

    // Replaying each account's commits in version order: never negative, ends at its balance.
    for (i, entries) in per_account.iter().enumerate() {
        let mut balance = BANK_INITIAL;
        for e in entries {
            let (m, _) = moves[&e.op_id];
            if m.from == i {
                balance -= m.amount;
            }
            if m.to == i {
                balance += m.amount;
            }
            assert!(
                balance >= 0,
                "account {i} overdrawn by {} (at version {})",
                e.op_id,
                e.targets.iter().find(|t| t.key == keys[i]).unwrap().version
            );
        }
        assert_eq!(
            balance, balances[i],
            "account {i} = initial + the ledger's transfers"
        );
    }

    // What each worker was told holds.
    let mut reported = HashSet::new();
    for (w, (r, killed)) in workers.iter().enumerate() {
        for (op, (m, vf, vt)) in &r.committed {
            let entry = store.lookup(*op).await.unwrap();
            let entry =
                entry.unwrap_or_else(|| panic!("told committed, {op} is not in the ledger"));
            assert_eq!(
                Some(&entry),
                ledger.get(op),
                "lookup agrees with ledger_for"
            );
            assert_eq!(moves[op], (*m, w));
            let version = |k: usize| {
                entry
                    .targets
                    .iter()
                    .find(|t| t.key == keys[k])
                    .map(|t| t.version)
            };
            assert_eq!(
                (version(m.from), version(m.to)),
                (Some(*vf), Some(*vt)),
                "{op} at the versions its caller was told"
            );
            reported.insert(*op);
        }
        let failed = r.errors.iter().filter_map(|(_, op, _)| *op);
        for op in r.refused.keys().copied().chain(failed) {
            assert!(
                !ledger.contains_key(&op),
                "{op} was not told committed, yet is in the ledger"
            );
            let status = store.lookup(op).await.unwrap().map(|e| e.status);
            assert_ne!(status, Some(LedgerStatus::Committed), "{op}");
        }
        let unexpected: Vec<&String> = r
            .errors
            .iter()
            .filter(|(kind, _, _)| !["preempted", "retries_exhausted"].contains(&kind.as_str()))
            .map(|(_, _, line)| line)
            .collect();
        assert!(
            unexpected.is_empty(),
            "worker {w} failed calls: {unexpected:?}"
        );
        let in_flight = r.in_flight();
        if *killed {
            assert!(
                in_flight.len() <= BANK_TASKS,
                "the killed worker had at most one call in flight per task: {in_flight:?}"
            );
        } else {
            assert!(r.done, "worker {w} ran to its end");
            assert!(
                in_flight.is_empty(),
                "worker {w} printed every outcome: {in_flight:?}"
            );
        }
    }
    let unreported: Vec<OpId> = ledger
        .keys()
        .filter(|op| !reported.contains(op))
        .copied()
        .collect();
    for op in &unreported {
        let (_, owner) = moves[op];
        let (r, killed) = workers[owner];
        assert!(
            killed && r.in_flight().contains(op),
            "committed but unreported {op} is an in-flight call of the killed worker"
        );
    }
    let killed_tasks = workers.iter().filter(|(_, k)| *k).count() * BANK_TASKS;
    assert!(unreported.len() <= killed_tasks, "{unreported:?}");
    BankState {
        ledger: ledger.len(),
        unreported: unreported.len(),
    }
}

/// Invariant (issue #10, a Jepsen-style bank on PostgreSQL): two worker processes make random
/// two-account transfers through one annotated function (mixed priorities, refusals, an await
/// in the body) on the same 10 accounts; one is SIGKILLed mid-run, the other finishes its
/// transfers, and then a fresh process on the same schema (a restart) makes more. After each
/// phase, [`bank_agrees`]: money conserved, no account ever negative, the ledger holds exactly
/// the transfers that committed — all that any process was told committed, at the versions it
/// was told, plus at most the killed process's in-flight calls — and every balance is its
/// initial one plus the ledger's transfers.
#[test]
fn bank_transfers_across_processes_survive_a_sigkill_and_a_restart() {
    multi_thread(2, async {
        const SURVIVOR_CALLS: usize = 150;
        const FRESH_CALLS: usize = 50;
        let store = pg::store("bank_sigkill").await;
        let mut ids = Vec::new();
        for _ in 0..BANK_ACCOUNTS {
            let id = EntityId::new();
            let account = BankAccount {
                id,
                balance: BANK_INITIAL,
            };
            store.insert(bank_key(id), Arc::new(account)).await.unwrap();
            ids.push(id);
        }
        let args = |calls: usize| {
            let mut args = vec![
                "bank".to_string(),
                pg::shared().url(),
                store.schema().to_string(),
                BANK_TASKS.to_string(),
                calls.to_string(),
            ];
            args.extend(ids.iter().map(ToString::to_string));
            args
        };
        let started = Instant::now();
        let victim = Worker::spawn(&args(0));
        let survivor = Worker::spawn(&args(SURVIVOR_CALLS));
        let deadline = Instant::now() + Duration::from_secs(60);
        while victim.committed_so_far() < 100 {
            assert!(Instant::now() < deadline, "the victim made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut victim = victim;
        victim.child.kill().unwrap(); // SIGKILL
        let survivor_at_kill = survivor.outcomes_so_far();
        let (victim_status, victim_lines) = tokio::task::spawn_blocking(move || victim.wait())
            .await
            .unwrap();
        assert!(!victim_status.success());
        let (survivor_status, survivor_lines) =
            tokio::task::spawn_blocking(move || survivor.wait())
                .await
                .unwrap();
        assert!(
            survivor_status.success(),
            "the survivor failed: {survivor_status}"
        );
        let killed_after = started.elapsed();
        let victim_report = parse_bank(&victim_lines);
        let survivor_report = parse_bank(&survivor_lines);
        assert!(!victim_report.done);
        assert!(
            survivor_at_kill < BANK_TASKS * SURVIVOR_CALLS,
            "the kill happened while the survivor was still running ({survivor_at_kill})"
        );
        assert_eq!(
            survivor_report.outcomes,
            BANK_TASKS * SURVIVOR_CALLS,
            "the survivor went on to its end, one outcome per call"
        );
        let after_kill = bank_agrees(
            &store,
            &ids,
            &[(&victim_report, true), (&survivor_report, false)],
        )
        .await;
        assert!(
            !survivor_report.committed.is_empty() && !survivor_report.refused.is_empty(),
            "both outcomes exercised"
        );

        // A restart: a fresh process on the same schema goes on where the others left off.
        let fresh = Worker::spawn(&args(FRESH_CALLS));
        let (fresh_status, fresh_lines) = tokio::task::spawn_blocking(move || fresh.wait())
            .await
            .unwrap();
        assert!(
            fresh_status.success(),
            "the fresh worker failed: {fresh_status}"
        );
        let fresh_report = parse_bank(&fresh_lines);
        assert_eq!(fresh_report.outcomes, BANK_TASKS * FRESH_CALLS);
        assert!(
            !fresh_report.committed.is_empty(),
            "the fresh process commits"
        );
        let after_restart = bank_agrees(
            &store,
            &ids,
            &[
                (&victim_report, true),
                (&survivor_report, false),
                (&fresh_report, false),
            ],
        )
        .await;
        assert_eq!(
            after_restart.ledger,
            after_kill.ledger + fresh_report.committed.len(),
            "the restart added exactly its own commits"
        );
        assert_eq!(after_restart.unreported, after_kill.unreported);
        let errors = |r: &BankReport| r.errors.len();
        eprintln!(
            "bank: victim killed after {} commits ({} in flight, {} of them committed \
             unreported); survivor {} committed, {} refused, {} failed; fresh {} committed; \
             {} transfers in the ledger; {:?} to the kill and survivor's end, {:?} in all",
            victim_report.committed.len(),
            victim_report.in_flight().len(),
            after_kill.unreported,
            survivor_report.committed.len(),
            survivor_report.refused.len(),
            errors(&survivor_report),
            fresh_report.committed.len(),
            after_restart.ledger,
            killed_after,
            started.elapsed()
        );
    });
}

// ---------------------------------------------------------------------------------------------
// A database restart.

/// How one call ended, for the restart test.
#[derive(Debug)]
enum Ended {
    Committed { op: OpId, version: u64 },
    NotApplied,
    Unknown { op: OpId },
}

/// Invariant: across a database crash and restart in the middle of a run, every call ends with
/// a commit or a typed store error (`Backend`: not applied; `OutcomeUnknown`: settled later by
/// op id), and nothing is lost or doubled: the entity's log is exactly the committed calls (acknowledged,
/// plus the unknown ones the ledger settles as committed), value = version - 1 = ledger entries.
#[test]
fn a_database_restart_loses_and_doubles_no_commit() {
    let cluster = Arc::new(pg::Cluster::start().unwrap_or_else(|e| panic!("{e}")));
    multi_thread(2, async {
        let store = pg::store_on(&cluster, "restart").await;
        let rt = Runtime::builder().store(store.clone()).build().unwrap();
        let h = rt.insert(Counter::new()).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for t in 0..6u64 {
            let (h, stop, commits) = (h.clone(), stop.clone(), commits.clone());
            tasks.push(tokio::spawn(async move {
                let mut ended = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let tag = t * 1_000_000 + i;
                    i += 1;
                    let end = match tally(&h, tag).await {
                        Ok(c) => {
                            commits.fetch_add(1, Ordering::SeqCst);
                            Ended::Committed {
                                op: c.op_id,
                                version: c.version,
                            }
                        }
                        Err(ConflictError::RetriesExhausted { .. }) => Ended::NotApplied,
                        Err(ConflictError::Store(StoreError::Backend { .. })) => Ended::NotApplied,
                        Err(ConflictError::Store(StoreError::OutcomeUnknown { op_id, .. })) => {
                            Ended::Unknown { op: op_id }
                        }
                        Err(e) => panic!("unexpected error: {e:?}"),
                    };
                    if !matches!(end, Ended::Committed { .. }) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    ended.push((tag, end));
                }
                ended
            }));
        }
        let wait_for = |n: u64| {
            let commits = commits.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                while commits.load(Ordering::SeqCst) < n {
                    assert!(Instant::now() < deadline, "no progress");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        wait_for(50).await;
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.stop("immediate"))
            .await
            .unwrap()
            .unwrap();
        let before = commits.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.start_again())
            .await
            .unwrap()
            .unwrap();
        wait_for(before + 50).await;
        stop.store(true, Ordering::SeqCst);

        let mut acknowledged = HashMap::new();
        let mut not_applied = HashSet::new();
        let mut unknown = Vec::new();
        for t in tasks {
            for (tag, end) in t.await.unwrap() {
                match end {
                    Ended::Committed { op, version } => {
                        acknowledged.insert(tag, (op, version));
                    }
                    Ended::NotApplied => {
                        not_applied.insert(tag);
                    }
                    Ended::Unknown { op } => unknown.push((tag, op)),
                }
            }
        }
        assert!(
            !not_applied.is_empty() || !unknown.is_empty(),
            "the restart was noticed by some call"
        );
        let mut committed: HashSet<u64> = acknowledged.keys().copied().collect();
        let mut settled = 0;
        for (tag, op) in &unknown {
            if store.resolve(*op).await.unwrap().status == LedgerStatus::Committed {
                committed.insert(*tag);
                settled += 1;
            }
        }
        let (now, version) = load(&store, h.id()).await;
        let mut log = now.log.clone();
        log.sort_unstable();
        let logged: HashSet<u64> = log.iter().copied().collect();
        assert_eq!(logged.len(), log.len(), "no commit applied twice");
        assert_eq!(
            logged, committed,
            "applied = acknowledged + settled as committed"
        );
        assert!(
            not_applied.is_disjoint(&logged),
            "a Backend error applied nothing"
        );
        assert_eq!(now.value, log.len() as u64);
        let entries = ledger_agrees(&store, h.key(), now.value, version).await;
        let ledger: HashMap<OpId, u64> = entries
            .iter()
            .map(|e| (e.op_id, e.targets[0].version))
            .collect();
        for (op, v) in acknowledged.values() {
            assert_eq!(
                ledger.get(op),
                Some(v),
                "acknowledged commit {op} in the ledger"
            );
        }
        eprintln!(
            "restart: {} acknowledged, {} not applied, {} unknown ({settled} settled as committed)",
            acknowledged.len(),
            not_applied.len(),
            unknown.len()
        );
    });
    drop(cluster);
}

// ---------------------------------------------------------------------------------------------
// Staging's snapshot cache on a database store.

#[with_conflict_resolution(
    pre_ecs(on_lose = "requeue"),
    occ(max_retries = 1000, base_delay_ms = 0, max_delay_ms = 0)
)]
async fn staged_tally(c: &mut Counter, tag: u64) -> u64 {
    c.value += 1;
    c.log.push(tag);
    c.value
}

/// Invariant: a staged winner on a database store starts from the snapshot the previous commit
/// through its runtime's staging wrote; when another runtime (another process) wrote in
/// between, that snapshot is stale, the compare-and-swap refuses it, and the retry loads fresh
/// — so two runtimes staging on one row, each with its cache in use, lose no update.
#[test]
fn staged_snapshot_cache_never_loses_an_update_across_runtimes() {
    multi_thread(2, async {
        let store = pg::store("staged_cache").await;
        let a = Runtime::builder().store(store.clone()).build().unwrap();
        let b = Runtime::builder().store(store.clone()).build().unwrap();
        let h = a.insert(Counter::new()).await.unwrap();
        let hb: Handle<Counter> = b.handle(h.id());
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let h = if t % 2 == 0 { h.clone() } else { hb.clone() };
            tasks.push(tokio::spawn(async move {
                let mut ok = 0u64;
                for i in 0..25 {
                    staged_tally(&h, t * 100 + i).await.unwrap();
                    ok += 1;
                }
                ok
            }));
        }
        let mut committed = 0;
        for t in tasks {
            committed += t.await.unwrap();
        }
        let now = h.load().await.unwrap();
        assert_eq!(committed, 200);
        assert_eq!(now.value.value, committed);
        assert_eq!(now.version, committed + 1);
        let mut log = now.value.log.clone();
        log.sort_unstable();
        log.dedup();
        assert_eq!(
            log.len() as u64,
            committed,
            "each commit applied exactly once"
        );
        // Each runtime's cache goes stale whenever the other writes: conflicts must show up and
        // be retried away.
        let conflicts = a.metrics().occ_conflicts + b.metrics().occ_conflicts;
        assert!(
            conflicts > 0,
            "two runtimes on one row must have met stale snapshots"
        );
    });
}
