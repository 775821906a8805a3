//! loom models of the memory store: the slot's compare-and-swap and the multi-slot commit,
//! through the store's public entry points (`EntityStore::load`, `load_many`, `commit`).
//! Run with `RUSTFLAGS="--cfg loom"` (see `docs/verification.md`).
//!
//! The laws: no update is lost or applied twice (a read-modify-write loop in every thread
//! leaves the sum of their deltas, at one version per commit); a multi-slot commit is atomic
//! (a reader of all its keys never sees half of it, so a transfer conserves the total) and two
//! of them in opposite key order never deadlock; exactly one of two creates of a key applies;
//! a commit that conflicts leaves nothing behind (not even a slot for a key it would create).

use std::sync::Arc;

use conflict_core::{Entity, EntityId, EntityKey, OpId, OperationPriority};
use loom::future::block_on;
use loom::thread;
use serde::{Deserialize, Serialize};

use super::MemoryStore;
use crate::store::{Commit, CommitOutcome, EntityCodec, EntityStore, Snapshot, StoredValue, Write};
use crate::sync::model;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Account {
    id: EntityId,
    balance: i64,
}

impl Entity for Account {
    const TYPE_NAME: &'static str = "LoomAccount";
    type Id = EntityId;
    fn entity_id(&self) -> EntityId {
        self.id
    }
}

fn key(n: u128) -> EntityKey {
    EntityKey::new(
        Account::TYPE_NAME,
        EntityId::from_uuid(uuid::Uuid::from_u128(n)),
    )
}

fn value(n: u128, balance: i64) -> StoredValue {
    Arc::new(Account {
        id: EntityId::from_uuid(uuid::Uuid::from_u128(n)),
        balance,
    })
}

fn balance(snap: &Snapshot) -> i64 {
    snap.value
        .as_any()
        .downcast_ref::<Account>()
        .expect("an Account")
        .balance
}

fn codec() -> EntityCodec {
    EntityCodec::of::<Account>()
}

/// A store holding these accounts, each at version 1.
fn store_with(accounts: &[(u128, i64)]) -> Arc<MemoryStore> {
    let store = MemoryStore::new();
    for &(n, b) in accounts {
        block_on(store.insert(key(n), value(n, b))).expect("insert");
    }
    Arc::new(store)
}

fn load(store: &MemoryStore, n: u128) -> Option<Snapshot> {
    block_on(store.load(&key(n), codec())).expect("load")
}

fn commit(store: &MemoryStore, writes: Vec<Write>) -> CommitOutcome {
    block_on(store.commit(Commit {
        op_id: OpId::from_parts(1, 1),
        op_type: "loom",
        priority: OperationPriority::NORMAL,
        attempt: 1,
        writes,
        deletes: Vec::new(),
        reads: Vec::new(),
    }))
    .expect("commit")
}

fn write(n: u128, expected_version: u64, balance: i64) -> Write {
    Write {
        key: key(n),
        expected_version,
        value: value(n, balance),
    }
}

/// Read, compute, compare-and-set, until it commits: what an OCC attempt loop does.
fn add(store: &MemoryStore, n: u128, delta: i64) {
    loop {
        let snap = load(store, n).expect("live");
        let w = write(n, snap.version, balance(&snap) + delta);
        if matches!(commit(store, vec![w]), CommitOutcome::Committed { .. }) {
            return;
        }
    }
}

/// Moves `amount` from `from` to `to` in one two-slot commit (writes listed `from` first, so
/// two opposite transfers lock in opposite list order), retrying on conflict.
fn transfer(store: &MemoryStore, from: u128, to: u128, amount: i64) {
    loop {
        let snaps = block_on(store.load_many(&[(key(from), codec()), (key(to), codec())]))
            .expect("load_many");
        let (a, b) = (
            snaps[0].as_ref().expect("live"),
            snaps[1].as_ref().expect("live"),
        );
        let ws = vec![
            write(from, a.version, balance(a) - amount),
            write(to, b.version, balance(b) + amount),
        ];
        if matches!(commit(store, ws), CommitOutcome::Committed { .. }) {
            return;
        }
    }
}

/// Two read-modify-write loops on one slot: both increments are kept, at one version each.
/// Fails if the compare is removed (a lost update) or a commit applies twice.
#[test]
fn loom_cas_keeps_both_increments() {
    model("loom_cas_keeps_both_increments", || {
        let store = store_with(&[(1, 0)]);
        let s = Arc::clone(&store);
        let t = thread::spawn(move || add(&s, 1, 1));
        add(&store, 1, 10);
        t.join().unwrap();
        let end = load(&store, 1).unwrap();
        assert_eq!(balance(&end), 11, "an update was lost or doubled");
        assert_eq!(end.version, 3, "one version per commit");
    });
}

/// Two opposite transfers and a reader of both accounts: the reader always sees the total
/// (commits are atomic to a multi-read), neither transfer deadlocks (slots are locked in key
/// order whatever the list order), and both apply once.
#[test]
fn loom_transfers_are_atomic_and_never_deadlock() {
    model("loom_transfers_are_atomic_and_never_deadlock", || {
        let store = store_with(&[(1, 10), (2, 10)]);
        let other = Arc::clone(&store);
        let forth = thread::spawn(move || transfer(&other, 1, 2, 3));
        let other = Arc::clone(&store);
        let reader = thread::spawn(move || {
            let snaps = block_on(other.load_many(&[(key(1), codec()), (key(2), codec())])).unwrap();
            let total: i64 = snaps
                .iter()
                .map(|snap| balance(snap.as_ref().unwrap()))
                .sum();
            assert_eq!(total, 20, "a reader saw half a commit");
        });
        transfer(&store, 2, 1, 5);
        forth.join().unwrap();
        reader.join().unwrap();
        let (one, two) = (load(&store, 1).unwrap(), load(&store, 2).unwrap());
        assert_eq!((balance(&one), balance(&two)), (12, 8));
        assert_eq!((one.version, two.version), (3, 3));
    });
}

/// A two-slot commit creating key 3 races a single create of key 3: exactly one applies; the
/// loser changes nothing (the two-slot commit's other write is not applied either), and the
/// store keeps exactly the keys that exist.
#[test]
fn loom_create_races_create() {
    model("loom_create_races_create", || {
        let store = store_with(&[(1, 0)]);
        let s = Arc::clone(&store);
        let t = thread::spawn(move || commit(&s, vec![write(3, 0, 9)]));
        let many = commit(&store, vec![write(3, 0, 7), write(1, 1, 1)]);
        let single = t.join().unwrap();
        let committed = |o: &CommitOutcome| matches!(o, CommitOutcome::Committed { .. });
        assert!(committed(&many) ^ committed(&single), "{many:?} {single:?}");
        let (three, one) = (load(&store, 3).unwrap(), load(&store, 1).unwrap());
        assert_eq!(three.version, 1);
        if committed(&many) {
            assert_eq!((balance(&three), balance(&one), one.version), (7, 1, 2));
        } else {
            assert_eq!((balance(&three), balance(&one), one.version), (9, 0, 1));
        }
        assert_eq!(store.keys_kept(), 2);
    });
}

/// A two-slot commit that would create key 3 conflicts on key 1 (a concurrent increment got
/// there first): it leaves no slot for key 3 behind.
#[test]
fn loom_conflicting_create_leaves_nothing() {
    model("loom_conflicting_create_leaves_nothing", || {
        let store = store_with(&[(1, 0)]);
        let s = Arc::clone(&store);
        let t = thread::spawn(move || add(&s, 1, 1));
        let many = commit(&store, vec![write(3, 0, 7), write(1, 1, 5)]);
        t.join().unwrap();
        let one = load(&store, 1).unwrap();
        match many {
            CommitOutcome::Committed { .. } => {
                // It ran first; the increment then applied over it.
                assert_eq!((balance(&one), one.version), (6, 3));
                assert_eq!(store.keys_kept(), 2);
            }
            CommitOutcome::Conflict { .. } => {
                assert_eq!((balance(&one), one.version), (1, 2));
                assert!(load(&store, 3).is_none());
                assert_eq!(store.keys_kept(), 1, "a conflicting create left a slot");
            }
        }
    });
}
