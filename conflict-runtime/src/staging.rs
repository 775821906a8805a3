//! Stage one: per-target staging areas that resolve competing operations by priority before any
//! of them runs.
//!
//! Each target has a small state machine (its `Phase`) guarded by a short critical section
//! (never held across an `.await`):
//!
//! * **`Idle`**: an arriving operation with `staging_timeout_ms = 0` becomes the executing one at
//!   once; with a window it opens a collecting group and waits in it.
//! * **`Collecting { until }`**: arrivals join the group until the window closes; then the best
//!   member (by [`policy::rank`]) executes and the others are rejected (`on_lose = "reject"`)
//!   or stay staged for the next round (`"requeue"`).
//! * **`Executing`**: arrivals are staged and form the next group, resolved the moment the
//!   executing operation ends (commit, error, panic, cancellation, preemption). Whether a
//!   staged operation takes over before that is [`policy::preemption`]'s call: it must outrank
//!   the executing one, which must not be committing and must have used up its grace period.
//!
//! No decision by priority is made here: ranking, displacement ([`policy::select_weakest_by`])
//! and preemption are `conflict_core::policy`'s pure functions.
//!
//! Nothing here spawns a task: the staged operations' own futures wait for their decision (a
//! oneshot) and for the next deadline (window end, grace end), and whichever wakes first drives
//! the state machine. A dropped operation removes itself in `Drop`, so cancellation never leaks a
//! staged slot, a capacity permit, or the executing slot.
//!
//! # Lifetime of a target's cell
//!
//! A target's cell lives in the map while something *holds* it: a [`Handle`](crate::Handle)
//! that has made a staged call caches it (one hold per handle), and a call that could not use
//! a handle's cache holds it for its duration. Holds are counted under the cell's lock
//! (`holders`), so the count is exact. When the last hold is released and the cell is idle, the
//! cell is removed from the map at once (O(1), no sweep), so staging memory follows the set of
//! live handles and running calls. A held cell is never evicted, so a handle's cached cell is
//! always the live one: it can neither keep an evicted cell alive nor bring one back. Every
//! removal marks the cell `dead` under its lock and removes exactly that cell from the map
//! (`remove_if` on pointer identity): a caller that fetched it just before sees `dead` and
//! fetches (or creates) its successor, and a second evictor skips it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, PoisonError};
use std::task::Waker;
use std::time::Duration;

use conflict_core::policy::{self, Candidate};
use conflict_core::{EntityKey, OnLose, OpId, OperationPriority, OverloadScope, PreEcsConfig};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::lifecycle::AbortSignal;
use crate::metrics::{Counter, Metrics};
use crate::store::Snapshot;
use crate::sync::{AtomicUsize, ConcurrentMap, Mutex, MutexGuard, Notify, oneshot};

type CellMap = ConcurrentMap<EntityKey, Arc<TargetCell>>;

pub(crate) struct Staging {
    cells: CellMap,
    /// Operations waiting in staging areas, across targets.
    total: AtomicUsize,
    capacity: usize,
    metrics: Arc<Metrics>,
}

/// A target's cell, borrowed from a handle's cache (which holds it) or held by this call.
#[derive(Clone)]
enum CellRef<'a> {
    Cached(&'a Arc<TargetCell>),
    Held(Arc<Hold<'a>>),
}

impl std::ops::Deref for CellRef<'_> {
    type Target = TargetCell;
    fn deref(&self) -> &TargetCell {
        match self {
            Self::Cached(c) => c,
            Self::Held(h) => &h.cell,
        }
    }
}

/// One hold on a cell that no handle's cache carries; released (and the cell evicted if idle)
/// when the last clone goes.
struct Hold<'a> {
    staging: &'a Staging,
    key: EntityKey,
    cell: Arc<TargetCell>,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.staging.release_hold(&self.key, &self.cell);
    }
}

pub(crate) struct TargetCell {
    state: Mutex<TargetState>,
    /// Told when the executing operation leaves its commit phase without ending (its commit
    /// conflicted). Staged operations that outrank it wait for this rather than for its grace
    /// end, because no preemption is possible while it commits; after it they wait for the
    /// grace end again.
    commit_ended: Notify,
}

#[derive(Default)]
struct TargetState {
    /// Set when the cell was removed from the map; arrivals holding it look again.
    dead: bool,
    /// Handles caching this cell plus calls holding it without a handle's cache (see the
    /// module docs). The cell is evicted when this drops to zero while idle.
    holders: u32,
    phase: Phase,
    staged: StagedSet,
    /// Operations preempted while executing, with who preempted them, until they notice.
    preempted: Vec<(OpId, Candidate)>,
    /// What the last commit through this staging area wrote (database stores only): the next
    /// winner starts from it instead of loading. The store's compare-and-swap still decides;
    /// a stale snapshot (a write from elsewhere) only costs a conflict and a fresh load.
    last: Option<Snapshot>,
}

/// Where a target's state machine is (see the module docs). Collecting and executing exclude
/// each other: a window opens only on an idle target, and nothing executes until it closes.
#[derive(Default)]
enum Phase {
    /// Nothing executes and no window is open (operations may be staged only for the instant
    /// between a window's end and the group's resolution, under the lock).
    #[default]
    Idle,
    /// A staging window is open until `until`: arrivals join the group.
    Collecting { until: Instant },
    /// An operation holds the target.
    Executing(Executing),
}

impl Phase {
    fn executing(&self) -> Option<&Executing> {
        match self {
            Self::Executing(e) => Some(e),
            _ => None,
        }
    }

    fn executing_mut(&mut self) -> Option<&mut Executing> {
        match self {
            Self::Executing(e) => Some(e),
            _ => None,
        }
    }

    /// The executing operation if `op_id` is it.
    fn executing_as(&mut self, op_id: OpId) -> Option<&mut Executing> {
        self.executing_mut().filter(|e| e.cand.op_id == op_id)
    }

    fn is_executing(&self, op_id: OpId) -> bool {
        self.executing().is_some_and(|e| e.cand.op_id == op_id)
    }

    /// The executing operation leaves; the phase becomes idle.
    fn take_executing(&mut self) -> Option<Executing> {
        match std::mem::take(self) {
            Self::Executing(e) => Some(e),
            other => {
                *self = other;
                None
            }
        }
    }

    fn collecting_until(&self) -> Option<Instant> {
        match self {
            Self::Collecting { until } => Some(*until),
            _ => None,
        }
    }
}

struct Executing {
    cand: Candidate,
    started: Instant,
    grace: Duration,
    committing: bool,
    /// Its commit runs in a task of its own ([`CommitSlot`]), which releases the slot if the
    /// call is dropped meanwhile (`orphaned`).
    commit_in_flight: bool,
    /// The call's guard went while `commit_in_flight`: the commit's [`CommitSlot`] releases.
    orphaned: bool,
    /// The executing operation's task, registered while its body waits: woken when it is
    /// preempted or the runtime aborts at shutdown.
    waker: Option<Waker>,
}

/// What [`ExecGuard::watch`] finds.
pub(crate) enum Watch {
    /// Still the executing operation (and now woken on preemption or abort).
    Running,
    /// Preempted by this operation.
    Preempted(Candidate),
}

struct Staged {
    cand: Candidate,
    on_lose: OnLose,
    /// The grace period this operation gets if it executes.
    grace: Duration,
    tx: oneshot::Sender<Decision>,
}

impl PartialEq for Staged {
    fn eq(&self, other: &Self) -> bool {
        self.cand == other.cand
    }
}

impl Eq for Staged {}

impl PartialOrd for Staged {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Staged {
    /// Greater = ranks ahead: the heap's top is the winner.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        policy::rank(&self.cand, &other.cand).reverse()
    }
}

/// A target's staging area: a heap whose top is the policy's winner (O(log n) per handoff),
/// and how many members would be rejected on losing (none in a requeue-only area, so a
/// handoff there skips the rejection pass).
#[derive(Default)]
struct StagedSet {
    heap: std::collections::BinaryHeap<Staged>,
    rejectable: usize,
}

impl StagedSet {
    fn len(&self) -> usize {
        self.heap.len()
    }

    fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    fn push(&mut self, s: Staged) {
        if s.on_lose == OnLose::Reject {
            self.rejectable += 1;
        }
        self.heap.push(s);
    }

    fn counted_out(&mut self, s: Staged) -> Staged {
        if s.on_lose == OnLose::Reject {
            self.rejectable -= 1;
        }
        s
    }

    /// The winner, without removing it.
    fn peek(&self) -> Option<&Staged> {
        self.heap.peek()
    }

    /// Removes the winner.
    fn pop(&mut self) -> Option<Staged> {
        let s = self.heap.pop()?;
        Some(self.counted_out(s))
    }

    /// The weakest member (admission control displaces it first).
    fn weakest(&self) -> Option<&Staged> {
        let all = self.heap.as_slice();
        policy::select_weakest_by(all, |s| s.cand).map(|i| &all[i])
    }

    /// Removes the member that is `op_id`, if staged (O(n): cancellation and displacement only).
    fn remove(&mut self, op_id: OpId) -> Option<Staged> {
        let mut all = std::mem::take(&mut self.heap).into_vec();
        let found = all
            .iter()
            .position(|s| s.cand.op_id == op_id)
            .map(|i| all.swap_remove(i));
        self.heap = all.into();
        found.map(|s| self.counted_out(s))
    }

    /// Removes every member that is rejected on losing.
    fn take_rejectable(&mut self) -> Vec<Staged> {
        if self.rejectable == 0 {
            return Vec::new();
        }
        let (losers, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .partition(|s| s.on_lose == OnLose::Reject);
        self.heap = kept.into();
        self.rejectable = 0;
        losers
    }

    /// Removes everything.
    fn take_all(&mut self) -> Vec<Staged> {
        self.rejectable = 0;
        std::mem::take(&mut self.heap).into_vec()
    }
}

/// What a staged operation is told.
pub(crate) enum Decision {
    Run,
    Rejected {
        winner: Candidate,
    },
    Overloaded {
        capacity: usize,
        scope: OverloadScope,
    },
    ShuttingDown,
}

/// Why an operation did not get to execute.
pub(crate) enum StageError {
    Rejected {
        winner: Candidate,
    },
    Overloaded {
        capacity: usize,
        scope: OverloadScope,
    },
    ShuttingDown,
    /// Waiting would close a cycle of waits (see `crate::waits`): these operations, starting
    /// with the one that was to wait.
    Cycle(Vec<OpId>),
}

impl TargetCell {
    /// One more hold on a cell that is already held (a handle's cache being cloned), so it
    /// cannot be dead.
    pub(crate) fn hold_again(self: &Arc<Self>) -> Arc<Self> {
        self.lock().holders += 1;
        self.clone()
    }

    fn lock(&self) -> MutexGuard<'_, TargetState> {
        // Critical sections below never panic halfway through a state change (no user code runs
        // under the lock), so a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl TargetState {
    /// Nothing staged, executing, collecting or waiting to notice a preemption.
    fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle) && self.staged.is_empty() && self.preempted.is_empty()
    }

    /// Who preempted `op_id`. Only preemption takes the executing slot from a live guard, and
    /// it records the preemptor before releasing the lock, so the entry exists.
    fn preemptor(&self, op_id: OpId) -> Candidate {
        self.preempted.iter().find(|(id, _)| *id == op_id).map_or(
            Candidate {
                op_id,
                effective_priority: OperationPriority::MIN,
                submitted_seq: 0,
            },
            |(_, by)| *by,
        )
    }
}

impl Executing {
    /// What the preemption rule needs to know about this operation at `now`.
    fn incumbent(&self, now: Instant) -> policy::Incumbent {
        policy::Incumbent {
            priority: self.cand.effective_priority,
            executing_for: now.saturating_duration_since(self.started),
            grace: self.grace,
            committing: self.committing,
        }
    }

    fn new(cand: Candidate, grace: Duration, now: Instant) -> Self {
        Self {
            cand,
            started: now,
            grace,
            committing: false,
            commit_in_flight: false,
            orphaned: false,
            waker: None,
        }
    }
}

impl Staging {
    pub(crate) fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            cells: CellMap::new(),
            total: AtomicUsize::new(0),
            capacity,
            metrics,
        }
    }

    /// The cell of `key`: the handle's cached one, else from the map, held by the handle's
    /// cache from now on (so it stays live as long as the handle does).
    fn cell<'a>(&'a self, key: &EntityKey, hint: &'a OnceLock<Arc<TargetCell>>) -> CellRef<'a> {
        if let Some(c) = hint.get() {
            return CellRef::Cached(c);
        }
        let c = self.hold(key);
        let mut ours = false;
        let kept = hint.get_or_init(|| {
            ours = true;
            c.clone()
        });
        if !ours {
            // Another call through the same handle cached it first (and holds it for the
            // handle); this hold is one too many.
            self.release_hold(key, &c);
        }
        CellRef::Cached(kept)
    }

    /// The live cell of `key`, with one more hold on it.
    fn hold(&self, key: &EntityKey) -> Arc<TargetCell> {
        loop {
            let c = self.lookup(key);
            let mut st = c.lock();
            if st.dead {
                // Evicted between the map read and this lock: its successor is (or will be)
                // in the map.
                continue;
            }
            st.holders += 1;
            drop(st);
            return c;
        }
    }

    fn lookup(&self, key: &EntityKey) -> Arc<TargetCell> {
        if let Some(c) = self.cells.get(key) {
            return c;
        }
        self.cells.get_or_insert_with(key.clone(), || {
            Arc::new(TargetCell {
                state: Mutex::new(TargetState::default()),
                commit_ended: Notify::new(),
            })
        })
    }

    /// Releases one hold on `cell`; the last one evicts it if idle.
    pub(crate) fn release_hold(&self, key: &EntityKey, cell: &Arc<TargetCell>) {
        let mut st = cell.lock();
        st.holders = st.holders.saturating_sub(1);
        if st.holders == 0 && !st.dead && st.is_idle() {
            self.evict_locked(key, cell, &mut st);
        }
    }

    /// Removes `cell` (exactly that cell) from the map and marks it dead. Called under its
    /// lock, so anyone who fetched it before sees `dead` once they lock it.
    fn evict_locked(&self, key: &EntityKey, cell: &Arc<TargetCell>, st: &mut TargetState) {
        self.cells.remove_if(key, |_, v| Arc::ptr_eq(v, cell));
        st.dead = true;
        // Nobody reads a dead cell's cached snapshot again: free it now.
        st.last = None;
    }

    /// Waits until `cand` may execute on `key`, or says why it may not.
    ///
    /// `submitted` is the operation's submission time, used as "now" on the fast path (an idle
    /// target) so that path reads no clock. The flag says whether the operation had to wait.
    ///
    /// `before_wait` runs only if the call has to wait (it is staged then), before it does;
    /// what it returns is kept until the wait is over, and an error withdraws the call instead.
    #[allow(
        clippy::too_many_arguments,
        reason = "the target and its cell, the candidate, its settings, the abort, its submission, and the hook"
    )]
    pub(crate) async fn enter<'a, G>(
        &'a self,
        key: &'a EntityKey,
        hint: &'a OnceLock<Arc<TargetCell>>,
        cand: Candidate,
        cfg: &PreEcsConfig,
        abort: &AbortSignal,
        submitted: Instant,
        before_wait: impl FnOnce() -> Result<G, StageError>,
    ) -> Result<(ExecGuard<'a>, bool), StageError> {
        let grace = Duration::from_millis(cfg.grace_period_ms);
        let mut cell = self.cell(key, hint);
        let (cell, rx) = loop {
            let mut st = cell.lock();
            if st.dead {
                // Unreachable while holds are counted (a held cell is never evicted); kept so
                // that a dead cell can never be used even if that changed.
                drop(st);
                cell = CellRef::Held(Arc::new(Hold {
                    staging: self,
                    key: key.clone(),
                    cell: self.hold(key),
                }));
                continue;
            }
            let idle = matches!(st.phase, Phase::Idle) && st.staged.is_empty();
            if idle && cfg.staging_timeout_ms == 0 {
                st.phase = Phase::Executing(Executing::new(cand, grace, submitted));
                self.metrics.add(Counter::StagingGroups, 1);
                drop(st);
                let guard = ExecGuard {
                    staging: self,
                    cell,
                    key,
                    op_id: cand.op_id,
                };
                return Ok((guard, false));
            }
            let now = Instant::now();
            self.admit(&mut st, cand, cfg)?;
            if idle {
                st.phase = Phase::Collecting {
                    until: now + Duration::from_millis(cfg.staging_timeout_ms),
                };
            }
            let (tx, rx) = oneshot::channel();
            st.staged.push(Staged {
                cand,
                on_lose: cfg.on_lose,
                grace,
                tx,
            });
            self.metrics.add(Counter::Staged, 1);
            // A newcomer that outranks the executing operation may take over now (if its grace
            // has run out); nothing else can change by an arrival.
            if st.phase.executing().is_some_and(|e| {
                policy::outranks(cand.effective_priority, e.cand.effective_priority)
            }) {
                self.reconcile(&mut st, now);
            }
            drop(st);
            break (cell, rx);
        };
        let mut waiter = Waiter {
            staging: self,
            cell,
            key,
            op_id: cand.op_id,
            rx: Some(rx),
        };
        // On an error the waiter is dropped, which withdraws the call.
        let _kept = before_wait()?;
        // Boxed: waiting holds a timer and a channel, and only contended calls wait; inline it
        // would make every call's future (and every move of it) larger.
        Box::pin(waiter.wait(abort, cand)).await.map(|g| (g, true))
    }

    /// Admission control: makes room for `cand` in this target's staging area or refuses it.
    fn admit(
        &self,
        st: &mut TargetState,
        cand: Candidate,
        cfg: &PreEcsConfig,
    ) -> Result<(), StageError> {
        let per_target = cfg.max_staged_per_target as usize;
        if st.staged.len() >= per_target {
            return self.displace(st, cand, per_target, OverloadScope::Target);
        }
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return self.displace(st, cand, self.capacity, OverloadScope::Total);
        }
        Ok(())
    }

    /// Refuses `cand`, or, if it outranks the weakest operation staged on this target, refuses
    /// that one instead and hands its slot (and capacity permit) to `cand`.
    fn displace(
        &self,
        st: &mut TargetState,
        cand: Candidate,
        capacity: usize,
        scope: OverloadScope,
    ) -> Result<(), StageError> {
        let weakest = st
            .staged
            .weakest()
            .filter(|w| policy::beats(&cand, &w.cand))
            .map(|w| w.cand.op_id);
        match weakest.and_then(|id| st.staged.remove(id)) {
            Some(victim) => {
                // The permit moves to the newcomer, so `total` is unchanged.
                let _ = victim.tx.send(Decision::Overloaded { capacity, scope });
                self.metrics.add(Counter::Displaced, 1);
                Ok(())
            }
            None => Err(StageError::Overloaded { capacity, scope }),
        }
    }

    /// Releases the capacity permits of `n` entries that left a staging area.
    fn release_permits(&self, n: usize) {
        if n > 0 {
            self.total.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Drives a target's state machine as far as it can go at `now`; returns when staged
    /// operations should look again (window end or grace end), if ever.
    fn reconcile(&self, st: &mut TargetState, now: Instant) -> Option<Instant> {
        if let Some(until) = st.phase.collecting_until() {
            if now < until {
                return Some(until);
            }
            st.phase = Phase::Idle;
        }
        loop {
            let best = st.staged.peek()?;
            let Some(ex) = st.phase.executing() else {
                self.resolve_group(st, now);
                if st.phase.executing().is_none() {
                    // Every candidate had gone; look at the rest (if any) again.
                    continue;
                }
                return None;
            };
            match policy::preemption(&ex.incumbent(now), best.cand.effective_priority) {
                policy::Preemption::Never | policy::Preemption::AfterCommit => return None,
                policy::Preemption::After(left) => return Some(now + left),
                policy::Preemption::Now => {}
            }
            // Preempt: the executing operation's commit will be refused and its body is
            // woken; the best staged operation executes in its place.
            let staged = st.staged.pop()?;
            self.release_permits(1);
            let (by, by_grace) = (staged.cand, staged.grace);
            if staged.tx.send(Decision::Run).is_err() {
                // Its caller is gone (its waiter will not find itself staged and will
                // release nothing, since it never executed). Try the next best.
                continue;
            }
            if let Some(old) = st.phase.take_executing() {
                st.preempted.push((old.cand.op_id, by));
                // Wakes the preempted body so it stops now instead of at its commit.
                if let Some(w) = old.waker {
                    w.wake();
                }
            }
            st.phase = Phase::Executing(Executing::new(by, by_grace, now));
            self.metrics.add(Counter::Preemptions, 1);
            return None;
        }
    }

    /// Picks the winner among the staged operations of an idle target and tells everyone.
    fn resolve_group(&self, st: &mut TargetState, now: Instant) {
        let group_size = st.staged.len();
        let (winner, grace) = loop {
            let Some(staged) = st.staged.pop() else {
                return;
            };
            self.release_permits(1);
            if staged.tx.send(Decision::Run).is_ok() {
                break (staged.cand, staged.grace);
            }
        };
        st.phase = Phase::Executing(Executing::new(winner, grace, now));
        self.metrics.add(Counter::StagingGroups, 1);
        self.metrics.group_size(group_size);
        if group_size > 1 {
            self.metrics.add(Counter::StagingContended, 1);
        }
        let losers = st.staged.len() as u64;
        let rejected = st.staged.take_rejectable();
        self.release_permits(rejected.len());
        for loser in rejected {
            let _ = loser.tx.send(Decision::Rejected { winner });
        }
        if losers > 0 {
            self.metrics.add(Counter::StagingLosers, losers);
            self.metrics.add(Counter::Requeued, st.staged.len() as u64);
        }
    }

    /// Ends every staged operation with `ShuttingDown` and closes open windows.
    pub(crate) fn shut_down(&self) -> u64 {
        let mut n = 0;
        self.cells.for_each(|_, cell| {
            let mut st = cell.lock();
            if st.phase.collecting_until().is_some() {
                st.phase = Phase::Idle;
            }
            let all = st.staged.take_all();
            self.release_permits(all.len());
            for s in all {
                if s.tx.send(Decision::ShuttingDown).is_ok() {
                    n += 1;
                }
            }
        });
        n
    }

    /// Wakes every executing operation (shutdown's abort): their bodies see the abort flag.
    pub(crate) fn wake_executing(&self) {
        self.cells.for_each(|_, cell| {
            let waker = cell
                .lock()
                .phase
                .executing_mut()
                .and_then(|e| e.waker.take());
            if let Some(w) = waker {
                w.wake();
            }
        });
    }

    /// The executing operation leaves its target: the next group (if any) is resolved.
    fn hand_on(&self, st: &mut TargetState) {
        st.phase.take_executing();
        if !st.staged.is_empty() || st.phase.collecting_until().is_some() {
            self.reconcile(st, Instant::now());
        }
    }

    /// Forgets the snapshot `key`'s staging area remembers (an entity written without staging
    /// there: the next winner loads instead of starting from a stale value).
    pub(crate) fn forget_last(&self, key: &EntityKey) {
        if let Some(c) = self.cells.get(key) {
            c.lock().last = None;
        }
    }

    /// The operation executing on `key` (holding it), if any.
    pub(crate) fn executor(&self, key: &EntityKey) -> Option<OpId> {
        let cell = self.cells.get(key)?;
        let st = cell.lock();
        st.phase.executing().map(|e| e.cand.op_id)
    }

    /// Whether `op_id` is the operation executing on `key` (it holds the target).
    pub(crate) fn is_executing(&self, key: &EntityKey, op_id: OpId) -> bool {
        self.cells
            .get(key)
            .is_some_and(|c| c.lock().phase.is_executing(op_id))
    }

    /// Removes the state of targets that are idle and held by nobody (normally none: the last
    /// hold's release already evicts). Safe beside other evictors and running calls: a dead
    /// cell is skipped and only the very cell examined is removed.
    pub(crate) fn evict_idle(&self) -> usize {
        let mut evicted = 0;
        self.cells.for_each(|key, cell| {
            let mut st = cell.lock();
            if !st.dead && st.holders == 0 && st.is_idle() {
                self.evict_locked(key, cell, &mut st);
                evicted += 1;
            }
        });
        evicted
    }

    /// Operations waiting in staging areas, across targets.
    pub(crate) fn total_staged(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    pub(crate) fn status(&self) -> StagingStatus {
        let mut targets = Vec::new();
        self.cells.for_each(|key, cell| {
            let st = cell.lock();
            if st.staged.is_empty() && matches!(st.phase, Phase::Idle) {
                return;
            }
            let executing = st.phase.executing();
            targets.push(TargetStatus {
                target: key.clone(),
                staged: st.staged.len(),
                executing: executing.map(|e| e.cand.op_id),
                executing_priority: executing.map(|e| e.cand.effective_priority),
                collecting: st.phase.collecting_until().is_some(),
            });
        });
        targets.sort_by(|a, b| a.target.cmp(&b.target));
        StagingStatus {
            total_staged: self.total_staged(),
            capacity: self.capacity,
            executing: targets.iter().filter(|t| t.executing.is_some()).count(),
            tracked_targets: self.cells.len(),
            targets,
        }
    }
}

/// A staged operation waiting for its decision. Dropping it (cancellation) withdraws it.
struct Waiter<'s> {
    staging: &'s Staging,
    cell: CellRef<'s>,
    key: &'s EntityKey,
    op_id: OpId,
    rx: Option<oneshot::Receiver<Decision>>,
}

/// What a staged operation waits for besides its decision.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// Nothing: only a decision (or the abort) ends the wait.
    Never,
    /// Look at the target again at this instant (window end, or the grace end of an executing
    /// operation this one outranks).
    At(Instant),
    /// This one outranks the executing operation, which is committing: look again when the
    /// commit phase ends without ending the operation (a conflict).
    CommitEnd,
}

impl<'s> Waiter<'s> {
    async fn wait(
        &mut self,
        abort: &AbortSignal,
        cand: Candidate,
    ) -> Result<ExecGuard<'s>, StageError> {
        // Arrival already drove the state machine; from here on this waiter only needs to wake
        // for its own deadlines: the end of the window, the end of the executing operation's
        // grace if this one outranks it, or the end of that operation's commit phase. Other
        // transitions send a decision.
        loop {
            // Both notifications are created before the state is read, so neither an abort nor
            // the end of a commit phase can slip in between the read and the wait.
            let aborted = abort.notified(self.op_id.sequence());
            let commit_ended = self.cell.commit_ended.notified();
            if abort.is_set() {
                return Err(StageError::ShuttingDown);
            }
            let wake = self.next_wake(cand);
            let Some(rx) = self.rx.as_mut() else {
                return Err(StageError::ShuttingDown);
            };
            let at = match wake {
                Wake::At(at) => Some(at),
                Wake::Never | Wake::CommitEnd => None,
            };
            let decision = tokio::select! {
                biased;
                d = rx => d,
                () = aborted => return Err(StageError::ShuttingDown),
                () = commit_ended, if wake == Wake::CommitEnd => continue,
                () = sleep_until(at) => {
                    let mut st = self.cell.lock();
                    self.staging.reconcile(&mut st, Instant::now());
                    drop(st);
                    continue;
                }
            };
            self.rx = None;
            return match decision {
                Ok(Decision::Run) => Ok(ExecGuard {
                    staging: self.staging,
                    cell: self.cell.clone(),
                    key: self.key,
                    op_id: self.op_id,
                }),
                Ok(Decision::Rejected { winner }) => Err(StageError::Rejected { winner }),
                Ok(Decision::Overloaded { capacity, scope }) => {
                    Err(StageError::Overloaded { capacity, scope })
                }
                // The sender is only dropped without a decision if the runtime itself is gone.
                Ok(Decision::ShuttingDown) | Err(_) => Err(StageError::ShuttingDown),
            };
        }
    }
}

impl Waiter<'_> {
    /// When this waiter should look at its target again, if ever.
    fn next_wake(&self, cand: Candidate) -> Wake {
        let st = self.cell.lock();
        match &st.phase {
            Phase::Collecting { until } => Wake::At(*until),
            Phase::Executing(e) => {
                match policy::preemption(&e.incumbent(Instant::now()), cand.effective_priority) {
                    policy::Preemption::Never => Wake::Never,
                    policy::Preemption::AfterCommit => Wake::CommitEnd,
                    policy::Preemption::After(_) | policy::Preemption::Now => {
                        Wake::At(e.started + e.grace)
                    }
                }
            }
            Phase::Idle => Wake::Never,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut st = self.cell.lock();
        if st.staged.remove(self.op_id).is_some() {
            self.staging.release_permits(1);
            // Leaving unblocks nobody (decisions are made by rank, not position), so there is
            // nothing to reconcile; but the last member of a collecting group closes its window,
            // which nobody else would wake for.
            if st.staged.is_empty() && st.phase.collecting_until().is_some() {
                st.phase = Phase::Idle;
            }
            return;
        }
        drop(st);
        // Not staged any more: a decision was sent under the lock. If it made this operation the
        // executing one, hand the target on.
        if let Ok(Decision::Run) = rx.try_recv() {
            drop(ExecGuard {
                staging: self.staging,
                cell: self.cell.clone(),
                key: self.key,
                op_id: self.op_id,
            });
        }
    }
}

/// Held while an operation is the executing one on its target; dropping it hands the target to
/// the next group.
pub(crate) struct ExecGuard<'s> {
    staging: &'s Staging,
    cell: CellRef<'s>,
    /// The target it executes on.
    key: &'s EntityKey,
    op_id: OpId,
}

impl<'s> ExecGuard<'s> {
    /// The target it executes on.
    pub(crate) fn key(&self) -> &'s EntityKey {
        self.key
    }

    /// Enters the commit phase (no preemption from here on), unless already preempted; then it
    /// returns who preempted it.
    pub(crate) fn begin_commit(&self) -> Result<(), Candidate> {
        let mut st = self.cell.lock();
        if let Some(e) = st.phase.executing_as(self.op_id) {
            e.committing = true;
            return Ok(());
        }
        Err(st.preemptor(self.op_id))
    }

    /// Leaves the commit phase after a conflict; a waiting preemptor may take over now.
    pub(crate) fn end_commit(&self) {
        let mut st = self.cell.lock();
        if let Some(e) = st.phase.executing_as(self.op_id) {
            e.committing = false;
            if !st.staged.is_empty() {
                self.staging.reconcile(&mut st, Instant::now());
                drop(st);
                // Staged operations that outrank this one stopped watching its grace end
                // while it committed: they look again (and preempt at the grace end).
                self.cell.commit_ended.notify_waiters();
            }
        }
    }

    /// For a commit that runs in a task of its own: the slot stays this operation's until the
    /// returned [`CommitSlot`] settles, even if this guard (the call) is dropped first. Called
    /// in the commit phase (no preemption), so the operation is the executing one.
    pub(crate) fn commit_slot(&self, staging: &Arc<Staging>, key: &EntityKey) -> CommitSlot {
        let cell = match &self.cell {
            CellRef::Cached(c) => Arc::clone(c),
            CellRef::Held(h) => Arc::clone(&h.cell),
        };
        {
            let mut st = cell.lock();
            // The slot's own hold: the cell is released (and evicted if idle) by the slot.
            st.holders += 1;
            if let Some(e) = st.phase.executing_as(self.op_id) {
                e.commit_in_flight = true;
            }
        }
        CommitSlot {
            staging: Arc::clone(staging),
            key: key.clone(),
            cell,
            op_id: self.op_id,
            wrote: None,
        }
    }

    /// The snapshot the last commit through this target's staging area wrote, if known.
    pub(crate) fn last_snapshot(&self) -> Option<Snapshot> {
        self.cell.lock().last.clone()
    }

    /// Remembers (or, with `None`, forgets) the snapshot this operation's commit wrote.
    pub(crate) fn remember(&self, snap: Option<Snapshot>) {
        self.cell.lock().last = snap;
    }

    /// Called each time the body waits: registers `waker` to be woken on preemption or abort,
    /// unless the operation has already been preempted. One short critical section.
    pub(crate) fn watch(&self, waker: &Waker) -> Watch {
        let mut st = self.cell.lock();
        match st.phase.executing_as(self.op_id) {
            Some(e) => {
                match &e.waker {
                    Some(w) if w.will_wake(waker) => {}
                    _ => e.waker = Some(waker.clone()),
                }
                Watch::Running
            }
            _ => Watch::Preempted(st.preemptor(self.op_id)),
        }
    }
}

impl Drop for ExecGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.cell.lock();
        match st.phase.executing_as(self.op_id) {
            Some(e) if e.commit_in_flight => {
                // The call was dropped while its commit runs on: the target stays this
                // operation's until the commit settles, and its `CommitSlot` hands it on.
                e.orphaned = true;
            }
            Some(_) => self.staging.hand_on(&mut st),
            None => st.preempted.retain(|(id, _)| *id != self.op_id),
        }
    }
}

/// Owned by a commit that runs in a task of its own (a store whose commit awaits): when the
/// commit settles (this is dropped), it records what the commit wrote for the next winner and,
/// if the call was dropped meanwhile, releases the executing slot the call's guard left
/// behind. So a dropped call's commit keeps its target until it is known whether it applied.
pub(crate) struct CommitSlot {
    staging: Arc<Staging>,
    key: EntityKey,
    cell: Arc<TargetCell>,
    op_id: OpId,
    wrote: Option<Snapshot>,
}

impl CommitSlot {
    /// Settles with what the commit wrote (`None`: it did not apply).
    pub(crate) fn settle(mut self, wrote: Option<Snapshot>) {
        self.wrote = wrote;
    }
}

impl Drop for CommitSlot {
    fn drop(&mut self) {
        let staging = &self.staging;
        {
            let mut guard = self.cell.lock();
            let st = &mut *guard;
            if let Some(e) = st.phase.executing_as(self.op_id) {
                e.commit_in_flight = false;
                let orphaned = e.orphaned;
                st.last = self.wrote.take();
                if orphaned {
                    staging.hand_on(st);
                }
            }
        }
        staging.release_hold(&self.key, &self.cell);
    }
}

/// What [`Runtime::staging_status`](crate::Runtime::staging_status) reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingStatus {
    /// Operations waiting in staging areas, all targets.
    pub total_staged: usize,
    /// The runtime's total staging capacity.
    pub capacity: usize,
    /// Targets with an executing staged operation.
    pub executing: usize,
    /// Targets whose staging state is kept (busy, or kept by a live handle).
    pub tracked_targets: usize,
    /// Busy targets (something staged, executing or collecting), by key.
    pub targets: Vec<TargetStatus>,
}

/// One busy target in a [`StagingStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// The target.
    pub target: EntityKey,
    /// Operations waiting on it.
    pub staged: usize,
    /// The operation executing on it.
    pub executing: Option<OpId>,
    /// That operation's effective priority.
    pub executing_priority: Option<OperationPriority>,
    /// Whether a staging window is open.
    pub collecting: bool,
}

#[cfg(all(test, loom))]
mod loom_models;
