//! The waits that can form a cycle, and their detection.
//!
//! Staging alone cannot deadlock: a single-entity call holds nothing while it waits, and a call
//! over several entities takes them in key order. Two things can still close a cycle of waits:
//!
//! * a call a body waits for without composing into it — one **detached** from the body
//!   (`scope().detached()`), or one made in the body on **another runtime's** entity: the body
//!   waits for it (it is taken to await it) while its root operation holds its entities, and
//!   the call may wait in staging for an entity another operation holds;
//! * a call over several entities that holds some of them while it waits for the next.
//!
//! The graph is one per process ([`WAITS`]), so that a cycle through several runtimes is seen
//! whole (op ids are unique across runtimes).
//!
//! So every such wait is registered here — once the call is queued in the staging area (a
//! target it gets at once is no wait), before it waits — under one lock, and the registering
//! call follows the edges from itself: "waits in staging for `t`" leads to the operation
//! executing on `t`; "root whose body made detached calls" leads to each of them. If the walk
//! comes back to the registering call, waiting would close a cycle: the call ends with
//! `ConflictError::WaitCycle` instead (it is the one whose wait would close it), which releases
//! what it holds and lets the others go on.
//!
//! Why checking at registration finds every cycle: an edge appears either by a registration
//! (checked) or when an entity someone waits for changes hands — and the new holder can only
//! wait for anything (or make a detached call) after it got that entity, so the registration
//! that closes a cycle through it comes later and sees it. Plain single-entity calls that are
//! that no body waits for (not detached, not across runtimes) never register: nothing can wait
//! for them (they hold nothing while they wait, and no edge leads to them), so they cannot be on
//! a cycle.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use conflict_core::{EntityKey, OpId};

use crate::staging::Staging;
use crate::sync::{Mutex, MutexGuard};

/// The registered waits of every runtime of the process.
#[cfg(not(shuttle))]
pub(crate) static WAITS: std::sync::LazyLock<Waits> = std::sync::LazyLock::new(Waits::default);

#[cfg(shuttle)]
shuttle::lazy_static! {
    /// The registered waits of every runtime of the process (under shuttle: of one execution,
    /// since its mutex belongs to the execution that made it).
    pub(crate) static ref WAITS: Waits = Waits::default();
}

/// A graph of registered waits.
#[derive(Default)]
pub(crate) struct Waits {
    graph: Mutex<Graph>,
}

#[derive(Default)]
struct Graph {
    /// Operations waiting in a staging area: which one (of which runtime), and for which
    /// entity.
    waiting: HashMap<OpId, (Arc<Staging>, EntityKey)>,
    /// Root operations whose bodies made detached calls still running, and those calls.
    detached: HashMap<OpId, Vec<OpId>>,
}

impl Waits {
    fn lock(&self) -> MutexGuard<'_, Graph> {
        // No user code runs under this lock; every change is a single insert or removal.
        self.graph.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers that `root`'s body waits for its detached call `call`, until
    /// [`remove_detached`](Self::remove_detached) (when `call` ends, its operation dropped).
    pub(crate) fn add_detached(&self, root: OpId, call: OpId) {
        self.lock().detached.entry(root).or_default().push(call);
    }

    /// Undoes [`add_detached`](Self::add_detached).
    pub(crate) fn remove_detached(&self, root: OpId, call: OpId) {
        let mut g = self.lock();
        if let Some(calls) = g.detached.get_mut(&root) {
            calls.retain(|&c| c != call);
            if calls.is_empty() {
                g.detached.remove(&root);
            }
        }
    }

    /// Registers that `op` is about to wait in `target`'s staging area, unless that would close
    /// a cycle: then the cycle, starting with `op`. The registration lasts until the returned
    /// guard is dropped (when the wait is over).
    pub(crate) fn wait<'w>(
        &'w self,
        op: OpId,
        target: &EntityKey,
        staging: &Arc<Staging>,
    ) -> Result<Waiting<'w>, Vec<OpId>> {
        let mut g = self.lock();
        g.waiting.insert(op, (Arc::clone(staging), target.clone()));
        if let Some(cycle) = find_cycle(&g, op) {
            g.waiting.remove(&op);
            return Err(cycle);
        }
        Ok(Waiting { waits: self, op })
    }
}

/// A depth-first walk from `start` along the edges; the path back to `start`, if any.
fn find_cycle(g: &Graph, start: OpId) -> Option<Vec<OpId>> {
    let edges = |n: OpId| -> Vec<OpId> {
        let mut out = Vec::new();
        if let Some((staging, t)) = g.waiting.get(&n) {
            out.extend(staging.executor(t).filter(|&h| h != n));
        }
        if let Some(calls) = g.detached.get(&n) {
            out.extend(calls.iter().copied());
        }
        out
    };
    let mut path = vec![start];
    let mut pending: Vec<Vec<OpId>> = vec![edges(start)];
    let mut seen = std::collections::HashSet::from([start]);
    while let Some(next) = pending.last_mut() {
        let Some(n) = next.pop() else {
            pending.pop();
            path.pop();
            continue;
        };
        if n == start {
            return Some(path);
        }
        if seen.insert(n) {
            path.push(n);
            pending.push(edges(n));
        }
    }
    None
}

/// A registered staging wait; dropping it unregisters.
pub(crate) struct Waiting<'w> {
    waits: &'w Waits,
    op: OpId,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.waits.lock().waiting.remove(&self.op);
    }
}
