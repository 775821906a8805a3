//! The transaction of one body run: what nested calls composed into it read and wrote.
//!
//! A root operation (one called outside any body, or detached) runs its body once per attempt;
//! each run has a transaction. A call made inside that body (at any depth) does not stage and
//! does not commit on its own: it reads through the transaction (seeing what earlier nested
//! calls wrote, and the root's snapshot of the entities the root reads), runs its body once, and
//! leaves its writes in the transaction. The root commits them with its own writes, validating
//! every entity read, in one atomic commit; if the root's attempt does not commit (its body
//! fails, it conflicts and runs again, it is preempted, cancelled or shut down), nothing of its
//! nested calls is committed and each of them ends [`RolledBack`](conflict_core::OutcomeKind).
//!
//! Nested calls never wait for another operation (they take no staging slot), so nesting cannot
//! form a wait cycle: two roots that reach for each other's entities through nested calls both
//! run, and the version compare at commit lets one commit and makes the other run again.
//!
//! Reads are *opaque*: a nested call that loads an entity not yet in the transaction reads it
//! together with every entity already in it (one consistent snapshot) and, if any of those has
//! moved on since it was read, the transaction is doomed: the nested call ends `RolledBack` at
//! once (its body never sees the mixed state) and the root's attempt runs again.

use std::sync::{Arc, PoisonError};

use conflict_core::{EntityKey, OpId};

use crate::occ::Books;
use crate::store::{Delete, EntityCodec, Read, StoredValue, Write};
use crate::sync::{Mutex, MutexGuard};

/// What a body run's nested calls share (behind its [`Link`](crate::context::Link)s).
pub(crate) struct TxnShared {
    pub(crate) runtime_id: u64,
    /// The root operation whose attempt this is.
    pub(crate) root: OpId,
    state: Mutex<TxnState>,
}

#[derive(Default)]
pub(crate) struct TxnState {
    /// The root's body has ended: nothing joins any more.
    pub(crate) sealed: bool,
    /// An entity of the transaction was found changed by a nested call's read: the root's
    /// attempt cannot commit.
    pub(crate) doomed: Option<Doomed>,
    pub(crate) entries: Vec<Entry>,
    /// Nested calls that left their writes here, waiting for the root's outcome.
    pub(crate) children: Vec<Books>,
    /// The runtime, set by the first nested call that parks here: what closes their books if
    /// the root's body run is dropped instead of sealing (see [`TxnShared::abandon`]).
    pub(crate) rt: Option<Arc<crate::runtime::Inner>>,
}

pub(crate) struct Entry {
    pub(crate) key: EntityKey,
    pub(crate) codec: EntityCodec,
    /// The version read from the store (what the root's commit expects); `0` for an entity
    /// the store does not hold (created in this transaction: its commit is a create).
    pub(crate) read_version: u64,
    /// When that version was written.
    pub(crate) last_modified: std::time::SystemTime,
    /// The current value: as read, or as a nested call left it. `None` for a root's written
    /// parameter (only its body has that copy), and for an entity deleted (or not created) here.
    pub(crate) value: Option<StoredValue>,
    pub(crate) role: Role,
    /// How many times nested calls have changed it (written, or undone): a nested call that
    /// read it parks its own writes only if it was not changed since it read (siblings in other
    /// tasks run at once). Never goes down, so a value that was undone never looks unchanged.
    pub(crate) writes: u64,
    /// What each nested write replaced, newest last: undone when the nested call that wrote it
    /// (or one of its ancestors below the root) fails.
    pub(crate) history: Vec<Undo>,
}

/// What one nested write replaced, and who wrote it.
pub(crate) struct Undo {
    /// The writer and its ancestors below the root (the nested calls whose failure undoes it).
    pub(crate) chain: Arc<[OpId]>,
    pub(crate) value: Option<StoredValue>,
    pub(crate) role: Role,
}

/// Which entity doomed an attempt: read at `read`, found at `found` (`None`: gone).
#[derive(Clone, Debug)]
pub(crate) struct Doomed {
    pub(crate) key: EntityKey,
    pub(crate) read: u64,
    pub(crate) found: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Role {
    /// A root's written parameter: nested calls may neither read nor write it.
    RootWrite,
    /// Read (by the root, as a `#[read]` parameter, or by a nested call): validated at commit.
    Read,
    /// Written by a nested call, or created (`read_version` 0) by an insert in a body:
    /// committed with the root.
    Write,
    /// Deleted by a nested call: its commit deletes it.
    Delete,
    /// Not in the store, and not created here (a create that was undone, or a delete of an
    /// entity created here): nothing to commit.
    Absent,
}

/// What the root takes when its body ends.
#[derive(Default)]
pub(crate) struct Sealed {
    pub(crate) doomed: Option<Doomed>,
    /// Nested calls' writes (expected version: the one read; `0`: a create).
    pub(crate) writes: Vec<Write>,
    /// Nested calls' deletes.
    pub(crate) deletes: Vec<Delete>,
    /// Entities read and not written (the root's `#[read]` parameters included).
    pub(crate) reads: Vec<Read>,
}

impl Sealed {
    /// Puts a root's own entity first: its new value, or (`None`) its delete.
    pub(crate) fn put_first(
        &mut self,
        key: &EntityKey,
        expected_version: u64,
        value: Option<StoredValue>,
    ) {
        let key = key.clone();
        match value {
            Some(value) => self.writes.insert(
                0,
                Write {
                    key,
                    expected_version,
                    value,
                },
            ),
            None => self.deletes.insert(
                0,
                Delete {
                    key,
                    expected_version,
                },
            ),
        }
    }

    /// Whether nested calls left nothing (the root commits alone).
    pub(crate) fn is_empty(&self) -> bool {
        self.doomed.is_none()
            && self.writes.is_empty()
            && self.deletes.is_empty()
            && self.reads.is_empty()
    }
}

impl std::fmt::Debug for TxnShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Txn(runtime {:x}, root {})", self.runtime_id, self.root)
    }
}

impl TxnShared {
    /// The transaction of a single-entity root, whose body holds `key` read at `version`.
    pub(crate) fn for_root(
        runtime_id: u64,
        root: OpId,
        key: EntityKey,
        codec: EntityCodec,
        version: u64,
    ) -> Self {
        Self::with_entries(
            runtime_id,
            root,
            vec![Entry {
                key,
                codec,
                read_version: version,
                last_modified: std::time::SystemTime::UNIX_EPOCH,
                value: None,
                role: Role::RootWrite,
                writes: 0,
                history: Vec::new(),
            }],
        )
    }

    pub(crate) fn with_entries(runtime_id: u64, root: OpId, entries: Vec<Entry>) -> Self {
        Self {
            runtime_id,
            root,
            state: Mutex::new(TxnState {
                entries,
                ..TxnState::default()
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, TxnState> {
        // No user code runs under this lock and no state change is left halfway by a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the body run: nothing joins from now on; returns what nested calls left (their
    /// books stay here until [`take_children`](Self::take_children), so that an abandoned
    /// attempt still closes them).
    pub(crate) fn seal(&self) -> Sealed {
        let mut st = self.lock();
        st.sealed = true;
        let mut out = Sealed {
            doomed: st.doomed.take(),
            ..Sealed::default()
        };
        for e in std::mem::take(&mut st.entries) {
            match (e.role, e.value) {
                (Role::Write, Some(value)) => out.writes.push(Write {
                    key: e.key,
                    expected_version: e.read_version,
                    value,
                }),
                (Role::Read, _) => out.reads.push(Read {
                    key: e.key,
                    version: e.read_version,
                }),
                (Role::Delete, _) => out.deletes.push(Delete {
                    key: e.key,
                    expected_version: e.read_version,
                }),
                (Role::RootWrite | Role::Write | Role::Absent, _) => {}
            }
        }
        out
    }
}

impl TxnShared {
    /// Why the attempt cannot commit, if it cannot.
    pub(crate) fn doomed(&self) -> Option<Doomed> {
        self.lock().doomed.clone()
    }

    /// Whether nested calls wait for the root's outcome.
    pub(crate) fn has_children(&self) -> bool {
        !self.lock().children.is_empty()
    }

    /// The nested calls waiting for the root's outcome, for the root to close.
    pub(crate) fn take_children(&self) -> Vec<Books> {
        std::mem::take(&mut self.lock().children)
    }
}

impl TxnState {
    /// Changes `key`'s entry on behalf of the nested call whose undo chain is `chain`:
    /// `value` `None` deletes it (an entity created here becomes absent again). What it
    /// replaced is kept, to be undone if that call (or one above it) fails.
    pub(crate) fn change(
        &mut self,
        key: &EntityKey,
        chain: &Arc<[OpId]>,
        value: Option<StoredValue>,
    ) {
        let Some(e) = self.entry_mut(key) else { return };
        let role = match (&value, e.read_version) {
            (Some(_), _) => Role::Write,
            (None, 0) => Role::Absent,
            (None, _) => Role::Delete,
        };
        let before = std::mem::replace(&mut e.value, value);
        e.history.push(Undo {
            chain: chain.clone(),
            value: before,
            role: e.role,
        });
        e.role = role;
        e.writes += 1;
    }

    /// Every entity of the transaction with the version it was read at: what a nested load
    /// reads again, to check nothing moved (see [`crate::txn`], opacity).
    pub(crate) fn known(&self) -> Vec<(EntityKey, EntityCodec, u64)> {
        self.entries
            .iter()
            .map(|e| (e.key.clone(), e.codec, e.read_version))
            .collect()
    }

    pub(crate) fn entry(&self, key: &EntityKey) -> Option<&Entry> {
        self.entries.iter().find(|e| &e.key == key)
    }

    pub(crate) fn entry_mut(&mut self, key: &EntityKey) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| &e.key == key)
    }
}

impl TxnShared {
    /// The nested call `failed` did not complete (its body failed, it was rolled back, or it
    /// was dropped): what its own nested calls wrote is undone, and they end `RolledBack` — a
    /// nested write is kept only if every call above it, up to the root, is. If another nested
    /// call has written on top of an undone write (it read what is now undone), the attempt is
    /// doomed: the root runs its body again.
    pub(crate) fn undo(&self, failed: OpId) {
        let (children, rt) = {
            let mut st = self.lock();
            let mut dirty = None;
            for e in &mut st.entries {
                while e.history.last().is_some_and(|u| u.chain.contains(&failed)) {
                    let Some(u) = e.history.pop() else { break };
                    e.value = u.value;
                    e.role = u.role;
                    e.writes += 1;
                }
                if dirty.is_none() && e.history.iter().any(|u| u.chain.contains(&failed)) {
                    dirty = Some(Doomed {
                        key: e.key.clone(),
                        read: e.read_version,
                        found: None,
                    });
                }
            }
            if st.doomed.is_none() {
                st.doomed = dirty;
            }
            let (gone, kept): (Vec<Books>, Vec<Books>) = std::mem::take(&mut st.children)
                .into_iter()
                .partition(|b| b.descends_from(failed));
            st.children = kept;
            let rt = if gone.is_empty() { None } else { st.rt.clone() };
            (gone, rt)
        };
        if let Some(rt) = rt {
            crate::occ::settle_composed(&rt, self.root, children, None);
        }
    }

    /// The root's body run ended without taking what nested calls left (it was interrupted,
    /// panicked or dropped): seals, and ends every parked nested call `RolledBack`.
    pub(crate) fn abandon(&self) {
        let (children, rt) = {
            let mut st = self.lock();
            st.sealed = true;
            (std::mem::take(&mut st.children), st.rt.take())
        };
        if let Some(rt) = rt {
            crate::occ::settle_composed(&rt, self.root, children, None);
        }
    }
}

/// Seals (abandoning what was not taken) a multi-entity root's transaction when its body run
/// ends, whichever way; a single-entity root's link does the same (`LazyLink`'s drop).
pub(crate) struct TxnOwner(pub(crate) Arc<TxnShared>);

impl Drop for TxnOwner {
    fn drop(&mut self) {
        self.0.abandon();
    }
}
