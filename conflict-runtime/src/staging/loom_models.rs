//! loom models of the staging state machine: every interleaving (up to `LOOM_MAX_PREEMPTIONS`)
//! of arrivals, hand-offs, cancellations, preemptions, the shutdown abort and eviction on one
//! target. Run with `RUSTFLAGS="--cfg loom"` (see `docs/verification.md`).
//!
//! Each model checks the state machine's laws at every step it can observe and at the end:
//! * at most one operation is in its commit phase on a target (the preempt/commit handshake);
//! * every arrival ends exactly once, with a decision that fits what happened;
//! * nothing leaks: no staged entry, no capacity permit, no executing slot, no cell once the
//!   last hold is released.
//!
//! No timer runs here (tokio's timers need its runtime): windows are off
//! (`staging_timeout_ms = 0`) and grace periods are zero, so every transition is driven by an
//! arrival, a departure or the abort, which is exactly the part with races.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use conflict_core::{OnLose, OpId, OperationPriority, PreEcsConfig};
use loom::sync::atomic::AtomicUsize as ModelCounter;
use loom::thread;

use super::{Candidate, ExecGuard, StageError, Staging, TargetCell};
use crate::lifecycle::AbortSignal;
use crate::metrics::Metrics;
use crate::sync::model;
use conflict_core::EntityKey;

fn key() -> EntityKey {
    EntityKey::new(
        "LoomTarget",
        conflict_core::EntityId::from_uuid(uuid::Uuid::from_u128(1)),
    )
}

fn cand(seq: u64, priority: OperationPriority) -> Candidate {
    Candidate {
        op_id: OpId::from_parts(7, seq),
        effective_priority: priority,
        submitted_seq: seq,
    }
}

fn cfg(on_lose: OnLose) -> PreEcsConfig {
    PreEcsConfig {
        staging_timeout_ms: 0,
        grace_period_ms: 0,
        on_lose,
        ..PreEcsConfig::DEFAULT
    }
}

/// What the models share: the staging areas, the abort, and the observers.
struct World {
    staging: Staging,
    abort: AbortSignal,
    /// Operations between a successful `begin_commit` and the end of their turn.
    committing: ModelCounter,
    /// Operations that got to commit.
    committed: ModelCounter,
}

fn world(capacity: usize) -> Arc<World> {
    Arc::new(World {
        staging: Staging::new(capacity, Arc::new(Metrics::new())),
        abort: AbortSignal::new(),
        committing: ModelCounter::new(0),
        committed: ModelCounter::new(0),
    })
}

impl World {
    /// The executing operation's turn: enter the commit phase unless preempted, and commit
    /// alone. Returns whether it committed.
    fn take_turn(&self, guard: ExecGuard<'_>) -> bool {
        if guard.begin_commit().is_err() {
            return false;
        }
        let before = self.committing.fetch_add(1, SeqCst);
        assert_eq!(
            before, 0,
            "two operations in their commit phase on one target"
        );
        self.committing.fetch_sub(1, SeqCst);
        self.committed.fetch_add(1, SeqCst);
        drop(guard);
        true
    }

    /// [`take_turn`](Self::take_turn), as the call's end.
    fn turn(&self, guard: ExecGuard<'_>) -> End {
        if self.take_turn(guard) {
            End::Committed
        } else {
            End::Preempted
        }
    }

    /// Releases the hold a handle's cache keeps (what dropping a `Handle` does).
    fn release(&self, key: &EntityKey, hint: &OnceLock<Arc<TargetCell>>) {
        if let Some(cell) = hint.get() {
            self.staging.release_hold(key, cell);
        }
    }

    /// After every thread is done: nothing staged, no permit out, no cell kept.
    fn assert_clean(&self) {
        assert_eq!(self.staging.total_staged(), 0, "a capacity permit leaked");
        let status = self.staging.status();
        assert!(status.targets.is_empty(), "a target is still busy");
        assert_eq!(status.tracked_targets, 0, "a released cell was not evicted");
    }
}

/// How one arrival ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Committed,
    Preempted,
    Rejected,
    ShuttingDown,
    /// Its caller dropped the call's future while it waited.
    Cancelled,
}

/// A call's arrival on `key`'s staging area: its future resolves once the call executes there
/// (or is turned away).
fn arrive<'a>(
    w: &'a World,
    key: &'a EntityKey,
    hint: &'a OnceLock<Arc<TargetCell>>,
    cfg: &PreEcsConfig,
    seq: u64,
    priority: OperationPriority,
) -> impl Future<Output = Result<(ExecGuard<'a>, bool), StageError>> {
    w.staging.enter(
        key,
        hint,
        cand(seq, priority),
        cfg,
        &w.abort,
        tokio::time::Instant::now(),
        || Ok::<(), StageError>(()),
    )
}

/// One call: arrive, wait for the decision, take the turn.
fn call(w: &World, seq: u64, priority: OperationPriority, on_lose: OnLose) -> End {
    let key = key();
    let hint = OnceLock::new();
    let cfg = cfg(on_lose);
    let end = loom::future::block_on(async {
        match arrive(w, &key, &hint, &cfg, seq, priority).await {
            Ok((guard, _)) => w.turn(guard),
            Err(StageError::Rejected { .. }) => End::Rejected,
            Err(StageError::ShuttingDown) => End::ShuttingDown,
            Err(StageError::Overloaded { .. } | StageError::Cycle(_)) => {
                unreachable!("no capacity limit or wait cycle in these models")
            }
        }
    });
    w.release(&key, &hint);
    end
}

/// One call whose caller gives up after the first poll (a dropped future), unless it was
/// decided by then.
fn call_and_cancel(w: &World, seq: u64, priority: OperationPriority) -> End {
    let key = key();
    let hint = OnceLock::new();
    let cfg = cfg(OnLose::Requeue);
    let end = loom::future::block_on(async {
        let mut fut = pin!(arrive(w, &key, &hint, &cfg, seq, priority));
        let first =
            std::future::poll_fn(|cx: &mut Context<'_>| Poll::Ready(fut.as_mut().poll(cx))).await;
        match first {
            Poll::Ready(Ok((guard, _))) => w.turn(guard),
            Poll::Ready(Err(_)) => End::ShuttingDown,
            // Dropped here, staged or just decided: `Waiter::drop` withdraws or hands on.
            Poll::Pending => End::Cancelled,
        }
    });
    w.release(&key, &hint);
    end
}

/// Enters on an idle target: the call executes at once.
fn enter_idle<'a>(
    w: &'a World,
    key: &'a EntityKey,
    hint: &'a OnceLock<Arc<TargetCell>>,
    seq: u64,
    priority: OperationPriority,
) -> ExecGuard<'a> {
    let cfg = cfg(OnLose::Requeue);
    let entered = loom::future::block_on(arrive(w, key, hint, &cfg, seq, priority));
    let Ok((guard, _)) = entered else {
        unreachable!("an idle target refuses no call: no capacity limit, no abort yet");
    };
    guard
}

fn spawn(
    w: &Arc<World>,
    f: impl FnOnce(&World) -> End + Send + 'static,
) -> thread::JoinHandle<End> {
    let w = Arc::clone(w);
    thread::spawn(move || f(&w))
}

/// Two equal calls on one target: both commit, one after the other, whoever arrives first.
#[test]
fn loom_two_arrivals_hand_off() {
    model("loom_two_arrivals_hand_off", || {
        let w = world(8);
        let a = spawn(&w, |w| {
            call(w, 1, OperationPriority::NORMAL, OnLose::Requeue)
        });
        let b = call(&w, 2, OperationPriority::NORMAL, OnLose::Requeue);
        let a = a.join().unwrap();
        assert_eq!((a, b), (End::Committed, End::Committed));
        assert_eq!(w.committed.load(SeqCst), 2);
        w.assert_clean();
    });
}

/// A low call executes; a critical one arrives and preempts it (grace 0) before or after the
/// low one enters its commit phase: never both in the commit phase; the critical one always
/// commits; the low one commits only if it entered its commit phase before it was preempted,
/// else it learns it was preempted. (The low call is executing before the critical one starts,
/// so every order of the preemption and `begin_commit` is within two preemptions.)
#[test]
fn loom_preempt_versus_commit() {
    model("loom_preempt_versus_commit", || {
        let w = world(8);
        let (key, hint) = (key(), OnceLock::new());
        let guard = enter_idle(&w, &key, &hint, 1, OperationPriority::LOW);
        let high = spawn(&w, |w| {
            call(w, 2, OperationPriority::CRITICAL, OnLose::Requeue)
        });
        let low = w.turn(guard);
        w.release(&key, &hint);
        assert_eq!(high.join().unwrap(), End::Committed);
        assert_eq!(
            w.committed.load(SeqCst),
            1 + usize::from(low == End::Committed)
        );
        w.assert_clean();
    });
}

/// A call staged behind an executing one is cancelled (its future dropped after one poll)
/// while the executing one finishes: it is withdrawn, or it was handed the target just before
/// its drop, which then hands the target on; either way nothing leaks and a third call still
/// gets the target.
#[test]
fn loom_cancel_while_handed_the_target() {
    model("loom_cancel_while_handed_the_target", || {
        let w = world(8);
        let (key, hint) = (key(), OnceLock::new());
        let guard = enter_idle(&w, &key, &hint, 1, OperationPriority::NORMAL);
        let cancelled = spawn(&w, |w| call_and_cancel(w, 2, OperationPriority::NORMAL));
        assert!(w.take_turn(guard));
        w.release(&key, &hint);
        let cancelled = cancelled.join().unwrap();
        assert!(
            matches!(cancelled, End::Committed | End::Cancelled),
            "{cancelled:?}"
        );
        w.assert_clean();
        // The target is free for the next call.
        assert_eq!(
            call(&w, 3, OperationPriority::NORMAL, OnLose::Requeue),
            End::Committed
        );
        w.assert_clean();
    });
}

/// Three `reject` calls (NORMAL, HIGH, NORMAL) arrive at an idle target in any order: the
/// first executes at once, the others form the next group or find the target idle. Every call
/// ends once, the commits counted match, and HIGH is never rejected (it outranks every group
/// it is in). (Whether anyone is rejected depends on the interleaving, so it is not asserted.)
#[test]
fn loom_group_with_reject() {
    model("loom_group_with_reject", || {
        let w = world(8);
        let a = spawn(&w, |w| {
            call(w, 1, OperationPriority::NORMAL, OnLose::Reject)
        });
        let b = spawn(&w, |w| call(w, 2, OperationPriority::HIGH, OnLose::Reject));
        let c = call(&w, 3, OperationPriority::NORMAL, OnLose::Reject);
        let ends = [a.join().unwrap(), b.join().unwrap(), c];
        // Each ended once; whoever executed committed (nobody outranks HIGH here but HIGH
        // itself, and it preempts only a NORMAL that has not begun to commit).
        let committed = ends.iter().filter(|e| **e == End::Committed).count();
        assert!(committed >= 1, "{ends:?}");
        assert_eq!(committed, w.committed.load(SeqCst));
        assert!(
            ends.iter()
                .all(|e| matches!(e, End::Committed | End::Rejected | End::Preempted)),
            "{ends:?}"
        );
        // HIGH is never rejected: it outranks every group it is in.
        assert_ne!(ends[1], End::Rejected, "{ends:?}");
        w.assert_clean();
    });
}

/// Shutdown's abort while a call executes and another waits, in shutdown's order: staged
/// calls were ended (`shut_down`), then a call that was already past the draining check is
/// staged behind the executing one while the abort triggers. The executing call keeps the
/// target until the waiter has ended, so only the abort can end the wait: the waiter ends
/// `ShuttingDown` whichever way the trigger and its check interleave (the create-before-check
/// protocol; loom reports a deadlock if the wake-up can be lost).
#[test]
fn loom_abort_wakes_waiters() {
    model("loom_abort_wakes_waiters", || {
        let w = world(8);
        let (key, hint) = (key(), OnceLock::new());
        let guard = enter_idle(&w, &key, &hint, 1, OperationPriority::NORMAL);
        assert_eq!(w.staging.shut_down(), 0);
        let waiter = spawn(&w, |w| {
            call(w, 2, OperationPriority::NORMAL, OnLose::Requeue)
        });
        let aborter = {
            let w = Arc::clone(&w);
            thread::spawn(move || {
                w.abort.trigger();
                w.staging.wake_executing();
            })
        };
        assert_eq!(waiter.join().unwrap(), End::ShuttingDown);
        drop(guard);
        w.release(&key, &hint);
        aborter.join().unwrap();
        w.assert_clean();
    });
}

/// The last hold's release evicts an idle cell while another call arrives through its own
/// handle: the arrival never uses the dead cell (it fetches or creates the live one), and the
/// map is empty at the end.
#[test]
fn loom_evict_races_arrival() {
    model("loom_evict_races_arrival", || {
        let w = world(8);
        let a = spawn(&w, |w| {
            call(w, 1, OperationPriority::NORMAL, OnLose::Requeue)
        });
        let evictor = {
            let w = Arc::clone(&w);
            thread::spawn(move || {
                w.staging.evict_idle();
            })
        };
        let b = call(&w, 2, OperationPriority::NORMAL, OnLose::Requeue);
        assert_eq!(a.join().unwrap(), End::Committed);
        assert_eq!(b, End::Committed);
        evictor.join().unwrap();
        w.assert_clean();
    });
}
