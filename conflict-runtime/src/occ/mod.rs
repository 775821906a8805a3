//! Stage two: the optimistic executor. Snapshot, run the body on a private copy, compare and
//! commit, and on a newer version back off and run again.
//!
//! This module also keeps each operation's books: one `submitted` when it starts and exactly one
//! outcome when it ends, whichever way it ends — including when its caller drops the future.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;

use conflict_core::policy::{self, Candidate};
use conflict_core::{
    BodyFailed, Committed, ConflictError, Entity, EntityKey, Event, OpId, OperationInfo,
    OperationPriority, OutcomeKind, StoreError,
};
use futures_util::FutureExt;
use tokio::time::Instant;
use tracing::Instrument;

use crate::cleanup::Finished;
use crate::context::{self, LazyLink, OperationContext, Params, TxnSeed};
use crate::handle::{Handle, HandleCache, downcast};
use crate::metrics::{Counter, Ending};
use crate::registry::OperationSpec;
use crate::runtime::Inner;
use crate::staging::{ExecGuard, StageError, Watch};
use crate::store::{Cas, CommitInfo, CommitOutcome, EntityCodec, Snapshot, StoredValue, Write};

mod many;

pub(crate) use many::{Target, copy_of, execute_many, insert_composed};

/// One call of an annotated function, from submission to its single outcome.
struct Operation<'rt> {
    rt: &'rt Arc<Inner>,
    spec: &'static OperationSpec,
    op_id: OpId,
    seq: u64,
    priority: OperationPriority,
    effective: OperationPriority,
    parent: Option<OperationContext>,
    /// Under `scope().detached()` inside a body: the operation it was detached from.
    origin: Option<OperationContext>,
    target: EntityKey,
    /// A multi-entity call's other entities, in parameter order (empty, unallocated, for one).
    more: Vec<EntityKey>,
    submitted: Instant,
    started: Option<Instant>,
    /// When it committed (read once before the commit, reused as its end time).
    committed_at: Option<Instant>,
    attempts: u32,
    conflicts: u32,
    ended: bool,
    /// Registered as a detached call its origin's root waits for (see `crate::waits`);
    /// unregistered when the operation is dropped.
    detached_edge: bool,
    /// A commit sent to a store whose commit awaits, running in its own task until it
    /// settles. If the caller drops the call meanwhile, the task records the outcome the commit
    /// had (see `Drop`), not `Cancelled`.
    in_flight: Option<InFlight>,
    /// Nested calls composed into the attempt being committed: they end with its outcome.
    composed: Vec<Books>,
    /// Per-call overrides (`scope()`): what to do on losing, the retry budget, the deadline.
    on_lose: Option<conflict_core::OnLose>,
    max_retries: Option<u32>,
    deadline: Option<Instant>,
}

impl<'rt> Operation<'rt> {
    fn begin(rt: &'rt Arc<Inner>, spec: &'static OperationSpec, target: &EntityKey) -> Self {
        let frame = context::inherited();
        let seq = rt.next_seq();
        let priority = frame.overrides.priority.unwrap_or(spec.config.priority);
        let parent = frame.current;
        let effective = policy::effective_priority(
            priority,
            parent.as_ref().map(OperationContext::effective_priority),
        );
        rt.metrics.submitted();
        rt.cleanup.operation_started(target);
        let submitted = Instant::now();
        let deadline = frame.overrides.deadline.map(|d| match d {
            context::Deadline::At(at) => at,
            // Too far to represent: no deadline in practice.
            context::Deadline::After(after) => submitted
                .checked_add(after)
                .unwrap_or_else(|| submitted + std::time::Duration::from_secs(86_400 * 365 * 30)),
        });
        Self {
            rt,
            spec,
            op_id: conflict_core::OpId::from_parts(rt.id, seq),
            seq,
            priority,
            effective,
            parent,
            origin: frame.origin,
            target: target.clone(),
            more: Vec::new(),
            submitted,
            started: None,
            committed_at: None,
            attempts: 0,
            conflicts: 0,
            ended: false,
            detached_edge: false,
            in_flight: None,
            composed: Vec::new(),
            on_lose: frame.overrides.on_lose,
            max_retries: frame.overrides.max_retries,
            deadline,
        }
    }

    /// Whether this call is nested in a body of its own runtime, and so composes into that
    /// body's root. (A call on another runtime's entity, made inside a body, is a root of its
    /// own runtime: a commit is in one store.)
    fn composes(&self) -> bool {
        self.parent
            .as_ref()
            .is_some_and(|p| p.link.runtime_id == self.rt.id)
    }

    /// The root operation whose body waits for this call although it does not compose into
    /// it: the call is detached from that body, or made in it on another runtime's entity.
    /// Such a call could close a cycle of waits (see [`crate::waits`]).
    fn waited_on_by(&self) -> Option<OpId> {
        match (&self.origin, &self.parent) {
            (Some(origin), _) => Some(origin.txn().root),
            (None, Some(parent)) if parent.link.runtime_id != self.rt.id => Some(parent.txn().root),
            _ => None,
        }
    }

    /// Whether the call's deadline has passed at `now`.
    fn past_deadline(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Awaits `fut`, unless the call's deadline passes first (`DeadlineExceeded`). For the
    /// multi-entity and nested paths; the single-entity hot path writes it out.
    #[inline]
    async fn by_deadline<F: Future, E>(&self, fut: F) -> Result<F::Output, ConflictError<E>> {
        match self.deadline {
            None => Ok(fut.await),
            // Boxed: only calls with a deadline pay for the timer.
            Some(d) => Box::pin(tokio::time::timeout_at(d, fut))
                .await
                .map_err(|_| self.deadline_exceeded()),
        }
    }

    fn deadline_exceeded<E>(&self) -> ConflictError<E> {
        ConflictError::DeadlineExceeded {
            op_id: self.op_id,
            after: self.deadline.map_or(std::time::Duration::ZERO, |d| {
                d.saturating_duration_since(self.submitted)
            }),
        }
    }

    fn candidate(&self) -> Candidate {
        Candidate {
            op_id: self.op_id,
            effective_priority: self.effective,
            submitted_seq: self.seq,
        }
    }

    fn info(&self) -> OperationInfo {
        OperationInfo {
            op_id: self.op_id,
            op_type: self.spec.name.into(),
            target: self.target.clone(),
            more_targets: self.more.clone(),
            priority: self.priority,
            effective_priority: self.effective,
            parent_op_id: self.parent.as_ref().map(OperationContext::op_id),
        }
    }

    fn emit(&self, f: impl FnOnce() -> Event) {
        self.rt.events.emit(&self.rt.metrics, f);
    }

    /// Records the outcome; called exactly once (by `finish` or, for a dropped call, by `Drop`).
    fn end(
        &mut self,
        kind: OutcomeKind,
        version: Option<u64>,
        error: Option<ConflictError<BodyFailed>>,
    ) {
        self.ended = true;
        // One clock read for the end (none if it committed: the commit's read serves): latency,
        // record times and the event all use it.
        let now = self.committed_at.take().unwrap_or_else(Instant::now);
        let duration = now - self.submitted;
        self.rt.cleanup.finished(&Finished {
            spec: self.spec,
            op_id: self.op_id,
            target: &self.target,
            more: &self.more,
            priority: self.priority,
            effective: self.effective,
            parent: self.parent.as_ref().map(OperationContext::op_id),
            attempts: self.attempts,
            kind,
            version,
            error,
            submitted: self.submitted,
            started: self.started,
            now,
        });
        self.rt.metrics.ended(
            self.spec,
            &Ending {
                kind,
                latency: duration,
                attempts: self.attempts,
                conflicts: self.conflicts,
            },
        );
        self.emit(|| Event::OperationCompleted {
            op: self.info(),
            outcome: kind,
            version,
            attempts: self.attempts,
            duration,
        });
        self.rt.lifecycle.operation_ended();
    }

    fn finish<T, E: std::fmt::Display>(mut self, result: &Result<Committed<T>, ConflictError<E>>) {
        if self.ended {
            // A composed nested call: it ends with its root's attempt.
            return;
        }
        match result {
            Ok(c) => self.end(OutcomeKind::Committed, Some(c.version), None),
            Err(e) => {
                tracing::debug!(op_id = %self.op_id, error = %DisplayKind(e.kind()), "operation failed");
                self.end(e.kind(), None, Some(e.erase_body()));
            }
        }
    }

    fn preempted<E>(&self, by: Candidate, target: &EntityKey) -> ConflictError<E> {
        self.emit(|| Event::OperationPreempted {
            op: self.info(),
            by_op_id: by.op_id,
            by_priority: by.effective_priority,
        });
        ConflictError::Preempted {
            op_id: self.op_id,
            target: target.clone(),
            by_op_id: by.op_id,
            priority: self.effective,
            by_priority: by.effective_priority,
        }
    }
}

/// What a call's books need to be closed later (by another owner than the call's future):
/// a composed nested call's, closed with its root's outcome, or a dropped call's whose commit
/// is in flight, closed when it settles.
pub(crate) struct Books {
    spec: &'static OperationSpec,
    op_id: OpId,
    seq: u64,
    priority: OperationPriority,
    effective: OperationPriority,
    parent: Option<OperationContext>,
    target: EntityKey,
    more: Vec<EntityKey>,
    submitted: Instant,
    started: Option<Instant>,
    attempts: u32,
    conflicts: u32,
    /// A composed call's first written entity (its version is the root commit's).
    wrote: Option<EntityKey>,
}

impl Operation<'_> {
    /// Hands the books over; this call no longer ends the operation itself.
    fn park(&mut self, wrote: Option<EntityKey>) -> Books {
        self.ended = true;
        Books {
            spec: self.spec,
            op_id: self.op_id,
            seq: self.seq,
            priority: self.priority,
            effective: self.effective,
            parent: self.parent.take(),
            target: self.target.clone(),
            more: std::mem::take(&mut self.more),
            submitted: self.submitted,
            started: self.started,
            attempts: self.attempts,
            conflicts: self.conflicts,
            wrote,
        }
    }
}

impl Books {
    /// Whether `ancestor` is this operation's parent or one of its parent's ancestors.
    pub(crate) fn descends_from(&self, ancestor: OpId) -> bool {
        let mut cur = self.parent.as_ref().map(|p| &*p.link);
        while let Some(l) = cur {
            if l.op_id == ancestor {
                return true;
            }
            cur = l.parent.as_deref();
        }
        false
    }

    fn resume(self, rt: &Arc<Inner>) -> Operation<'_> {
        Operation {
            rt,
            spec: self.spec,
            op_id: self.op_id,
            seq: self.seq,
            priority: self.priority,
            effective: self.effective,
            parent: self.parent,
            origin: None,
            target: self.target,
            more: self.more,
            submitted: self.submitted,
            started: self.started,
            committed_at: None,
            attempts: self.attempts,
            conflicts: self.conflicts,
            ended: false,
            detached_edge: false,
            in_flight: None,
            composed: Vec::new(),
            on_lose: None,
            max_retries: None,
            deadline: None,
        }
    }
}

/// Ends composed nested calls with their root's outcome: `Some(versions)` if the root
/// committed them, else `RolledBack`.
pub(crate) fn settle_composed(
    rt: &Arc<Inner>,
    root: OpId,
    children: Vec<Books>,
    committed: Option<&conflict_core::Versions>,
) {
    for child in children {
        let wrote = child.wrote.clone();
        let mut op = child.resume(rt);
        match committed {
            Some(versions) => {
                let version = wrote.as_ref().and_then(|k| versions.get(k));
                op.end(OutcomeKind::Committed, version, None);
            }
            None => {
                let e = ConflictError::<BodyFailed>::RolledBack {
                    op_id: op.op_id,
                    root_op_id: root,
                };
                op.end(OutcomeKind::RolledBack, None, Some(e));
            }
        }
    }
}

/// Ends composed nested calls whose root's commit failed with `e`: with that store error
/// (for an unknown outcome, "maybe applied", like their root), not `RolledBack`.
pub(crate) fn settle_composed_failed(rt: &Arc<Inner>, children: Vec<Books>, e: &StoreError) {
    for child in children {
        let mut op = child.resume(rt);
        let e = ConflictError::<BodyFailed>::Store(e.clone());
        op.end(e.kind(), None, Some(e));
    }
}

/// A commit running in a task of its own.
enum InFlight {
    One(tokio::task::JoinHandle<Result<Cas, StoreError>>),
    /// With the keys written, in the order of the versions the commit reports.
    Many {
        task: tokio::task::JoinHandle<Result<CommitOutcome, StoreError>>,
        keys: Vec<EntityKey>,
    },
}

impl Drop for Operation<'_> {
    fn drop(&mut self) {
        if self.detached_edge {
            if let Some(root) = self.waited_on_by() {
                crate::waits::WAITS.remove_detached(root, self.op_id);
            }
        }
        if self.ended && self.composed.is_empty() {
            // Every call that ended in place (nothing composed into it left to close).
            return;
        }
        let composed = std::mem::take(&mut self.composed);
        if self.ended {
            settle_composed(self.rt, self.op_id, composed, None);
            return;
        }
        let Some(commit) = self.in_flight.take() else {
            settle_composed(self.rt, self.op_id, composed, None);
            self.end(OutcomeKind::Cancelled, None, None);
            return;
        };
        let Ok(tokio_rt) = tokio::runtime::Handle::try_current() else {
            // Dropped outside any tokio runtime: the commit task cannot be waited for here.
            settle_composed(self.rt, self.op_id, composed, None);
            let e = ConflictError::<BodyFailed>::Store(StoreError::OutcomeUnknown {
                op_id: self.op_id,
                message: "the call was dropped outside a tokio runtime while its commit was in \
                          flight"
                    .into(),
            });
            self.end(e.kind(), None, Some(e));
            return;
        };
        // The caller left while its commit was in flight: whether it applied is decided by the
        // store, not by the caller leaving. The commit's task goes on; the outcome is recorded
        // when it settles (the operation stays in flight until then, so shutdown waits for it).
        let rt = Arc::clone(self.rt);
        let books = self.park(None);
        let settle = async move {
            let root = books.op_id;
            let mut rest = books.resume(&rt);
            let outcome = match commit {
                InFlight::One(task) => flatten_commit(task.await).map(|cas| match cas {
                    Cas::Committed(v) => (
                        Some(v),
                        conflict_core::Versions::one(rest.target.clone(), v),
                    ),
                    Cas::Conflict(_) => (None, conflict_core::Versions::default()),
                }),
                InFlight::Many { task, keys } => flatten(task.await).map(|out| match out {
                    CommitOutcome::Committed { versions, .. } => (
                        Some(versions.first().copied().unwrap_or(0)),
                        conflict_core::Versions::from(
                            keys.into_iter().zip(versions).collect::<Vec<_>>(),
                        ),
                    ),
                    CommitOutcome::Conflict { .. } => (None, conflict_core::Versions::default()),
                }),
            };
            match outcome {
                Ok((Some(version), versions)) => {
                    settle_composed(&rt, root, composed, Some(&versions));
                    rest.end(OutcomeKind::Committed, Some(version), None);
                }
                // Not applied; the caller is gone, so there is no retry.
                Ok((None, _)) => {
                    settle_composed(&rt, root, composed, None);
                    rest.rt.metrics.add(Counter::OccConflicts, 1);
                    rest.conflicts += 1;
                    rest.end(OutcomeKind::Cancelled, None, None);
                }
                Err(e) => {
                    settle_composed_failed(&rt, composed, &e);
                    let e = ConflictError::<BodyFailed>::Store(e);
                    rest.end(e.kind(), None, Some(e));
                }
            }
        };
        tokio_rt.spawn(settle);
    }
}

/// The commit task's result: a panic in the store is a store failure (the commit did not
/// complete).
fn flatten_commit(
    joined: Result<Result<Cas, StoreError>, tokio::task::JoinError>,
) -> Result<Cas, StoreError> {
    flatten(joined)
}

fn flatten<T>(
    joined: Result<Result<T, StoreError>, tokio::task::JoinError>,
) -> Result<T, StoreError> {
    joined.unwrap_or_else(|e| {
        Err(StoreError::Backend {
            message: format!("the store's commit task failed: {e}"),
            source: None,
        })
    })
}

struct DisplayKind(OutcomeKind);

impl std::fmt::Display for DisplayKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// Runs one call of an annotated function to its outcome. See the crate docs for the semantics.
pub(crate) async fn execute<E, F, Fut, T, Err>(
    spec: &'static OperationSpec,
    handle: &Handle<E>,
    body: F,
) -> Result<Committed<T>, ConflictError<Err>>
where
    E: Entity,
    F: FnMut(E) -> Fut,
    Fut: Future<Output = (E, Result<T, Err>)>,
    Err: std::fmt::Display,
{
    let rt = &handle.rt.inner;
    let mut op = Operation::begin(rt, spec, &handle.key);
    if op.composes() {
        // Called inside another call's body: part of that call's commit.
        // Boxed: only nested calls take this path, and inline it would make every call's
        // future larger.
        let result = Box::pin(many::compose_one(&mut op, handle, body)).await;
        op.finish(&result);
        return result;
    }
    let span = tracing::info_span!(
        "conflict.op",
        op_id = %op.op_id,
        op = spec.name,
        target = %handle.key,
        attempt = tracing::field::Empty,
    );
    // Without a subscriber for the span, skip the `Instrumented` wrapper: wrapping moves the
    // whole call's state once more for nothing.
    let result = if span.is_disabled() {
        run::<E, F, Fut, T, Err>(&mut op, &handle.key, &handle.cache, body, &span).await
    } else {
        run::<E, F, Fut, T, Err>(&mut op, &handle.key, &handle.cache, body, &span)
            .instrument(span.clone())
            .await
    };
    op.finish(&result);
    result
}

/// How a body run ended, when it did not end the call.
enum BodyRun<E, T> {
    /// The changed entity, the body's value, the transaction nested calls composed into, and
    /// whether the body deleted its entity.
    Done(E, T, Option<crate::txn::TxnOwner>, bool),
    /// The body failed in an attempt that was doomed (an entity of its transaction moved on,
    /// which is what made a nested call or an insert fail): a conflict on that entity, not
    /// the body's error — the body runs again.
    Doomed(Box<crate::txn::Doomed>),
}

enum Interrupt {
    Abort,
    /// By this operation, on this target.
    Preempted(Candidate, EntityKey),
    Deadline,
}

/// One call's way through the two stages, as named steps: [`admit`](Operation::admit),
/// [`stage`](Operation::stage), then per attempt [`snapshot`](Operation::snapshot),
/// [`run_body`](Operation::run_body), [`commit`](Operation::commit) and, on a conflict,
/// [`back_off`](Operation::back_off). Each step returns the call's error when the call ends
/// there.
async fn run<'h, E, F, Fut, T, Err>(
    op: &mut Operation<'_>,
    key: &'h EntityKey,
    cache: &'h HandleCache,
    mut body: F,
    span: &tracing::Span,
) -> Result<Committed<T>, ConflictError<Err>>
where
    E: Entity,
    F: FnMut(E) -> Fut,
    Fut: Future<Output = (E, Result<T, Err>)>,
    Err: std::fmt::Display,
{
    op.admit()?;
    if op.origin.is_some() {
        op.admit_detached(std::iter::once(key))?;
    }
    if op.parent.is_some() || op.origin.is_some() {
        op.register_detached();
    }
    let exec = op.stage(key, cache).await?;
    let exec = exec.as_slice();
    let max_attempts = op.max_attempts();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        op.begin_attempt(attempt, span)?;
        let snap = op.snapshot::<E, Err>(exec, cache, attempt).await?;
        let (entity, value, nested, deleted) = match op.run_body(exec, &snap, &mut body).await? {
            BodyRun::Done(entity, value, nested, deleted) => (entity, value, nested, deleted),
            // A body error in a doomed attempt: a conflict (see `BodyRun::Doomed`).
            BodyRun::Doomed(d) => {
                // Boxed with what it reports: rare, and kept out of every call's future.
                let op = &mut *op;
                Box::pin(async move {
                    op.back_off(exec, &d.key, d.read, d.found, attempt, max_attempts)
                        .await
                })
                .await?;
                continue;
            }
        };
        // (Nested calls that left nothing to commit, e.g. an entity created and deleted
        // again, still end with this commit.)
        let sealed = nested.as_ref().map(|txn| txn.0.seal()).filter(|s| {
            deleted || !s.is_empty() || nested.as_ref().is_some_and(|t| t.0.has_children())
        });
        let Some(sealed) = sealed else {
            // The fast path: nothing nested composed into this attempt.
            drop(nested);
            match op.commit(exec, cache, &snap, entity, attempt).await? {
                Cas::Committed(version) => {
                    return Ok(Committed {
                        value,
                        version,
                        versions: conflict_core::Versions::one(key.clone(), version),
                        op_id: op.op_id,
                        attempts: attempt,
                    });
                }
                Cas::Conflict(actual) => {
                    op.back_off(exec, key, snap.version, actual, attempt, max_attempts)
                        .await?;
                }
            }
            continue;
        };
        // Nested calls composed into this attempt, or the body deleted its entity: one commit
        // of everything.
        let mut sealed = sealed;
        let written: StoredValue = Arc::new(entity);
        sealed.put_first(key, snap.version, (!deleted).then_some(written));
        let children = nested
            .as_ref()
            .map(|t| t.0.take_children())
            .unwrap_or_default();
        let exec_keys: &[EntityKey] = if exec.is_empty() {
            &[]
        } else {
            std::slice::from_ref(key)
        };
        // Boxed: the composed commit's state (every write, delete and read) would otherwise
        // make every call's future larger, composed or not.
        let outcome = Box::pin(op.commit_all(exec, exec_keys, sealed, children, attempt)).await?;
        drop(nested);
        match outcome {
            Ok(versions) => {
                return Ok(Committed {
                    value,
                    version: versions.get(key).unwrap_or(0),
                    versions,
                    op_id: op.op_id,
                    attempts: attempt,
                });
            }
            Err(stale) => {
                op.back_off(
                    exec,
                    &stale.key,
                    stale.expected,
                    stale.actual,
                    attempt,
                    max_attempts,
                )
                .await?;
            }
        }
    }
}

impl<'rt> Operation<'rt> {
    /// Whether the call may start at all: the runtime accepts calls, its deadline has not
    /// passed, and no running ancestor holds its target (a nested call on its parent's target
    /// would wait for itself).
    #[inline]
    fn admit<Err>(&self) -> Result<(), ConflictError<Err>> {
        let rt = self.rt;
        if !rt.lifecycle.accepting() {
            return Err(ConflictError::ShuttingDown { op_id: self.op_id });
        }
        if self.deadline.is_some() && self.past_deadline(self.submitted) {
            // Past before it began: nothing may run, not even the body.
            return Err(self.deadline_exceeded());
        }
        if let Some(ancestor) = self.parent.as_ref().and_then(|p| {
            p.find_target(rt.id, &self.target, |id| {
                rt.staging.is_executing(&self.target, id)
            })
        }) {
            return Err(ConflictError::Reentrant {
                op_id: self.op_id,
                target: self.target.clone(),
                ancestor_op_id: ancestor,
            });
        }
        Ok(())
    }

    /// A detached call that would stage on a target its own caller's chain executes on would
    /// wait for its caller, which waits for it: refused as `Reentrant` instead. (Only staging
    /// waits: a detached call that does not stage, or on a target its caller only reads, runs.)
    fn admit_detached<'k, Err>(
        &self,
        staged: impl Iterator<Item = &'k EntityKey>,
    ) -> Result<(), ConflictError<Err>> {
        let (Some(origin), true) = (&self.origin, self.spec.config.mode.staging()) else {
            return Ok(());
        };
        let rt = self.rt;
        for key in staged {
            if let Some(holder) = origin.find_holder(rt.id, |id| rt.staging.is_executing(key, id)) {
                return Err(ConflictError::Reentrant {
                    op_id: self.op_id,
                    target: key.clone(),
                    ancestor_op_id: holder,
                });
            }
        }
        Ok(())
    }

    /// Stage one: waits in the target's staging area until this call executes there (a guard
    /// that holds the target), or ends the call (rejected, overloaded, shutting down, past its
    /// deadline). `None` when the function runs without staging.
    #[inline]
    async fn stage<'c, Err>(
        &mut self,
        key: &'c EntityKey,
        cache: &'c HandleCache,
    ) -> Result<Option<ExecGuard<'c>>, ConflictError<Err>>
    where
        'rt: 'c,
    {
        if !self.spec.config.mode.staging() {
            self.started = Some(self.submitted);
            return Ok(None);
        }
        let (guard, waited) = if self.detached_edge {
            // Boxed: only calls a body waits for register their wait (`enter_stage_registered`).
            Box::pin(self.enter_stage_registered(key, &cache.cell)).await?
        } else {
            self.enter_stage(key, &cache.cell).await?
        };
        // An operation that ran at once started when it was submitted: no clock read.
        self.started = Some(if waited {
            Instant::now()
        } else {
            self.submitted
        });
        Ok(Some(guard))
    }

    /// A call a body waits for without composing into it (see
    /// [`waited_on_by`](Self::waited_on_by)): that body's root waits for it from now until it
    /// is dropped (see [`crate::waits`]).
    fn register_detached(&mut self) {
        if let Some(root) = self.waited_on_by() {
            crate::waits::WAITS.add_detached(root, self.op_id);
            self.detached_edge = true;
        }
    }

    /// [`enter_stage`](Self::enter_stage) for a call that could be part of a cycle of waits
    /// (it executes on other entities already, or is detached from a body): registers its wait
    /// first, and ends with `WaitCycle` if the wait would close a cycle (see [`crate::waits`]).
    async fn enter_stage_registered<'c, Err>(
        &self,
        key: &'c EntityKey,
        cell: &'c std::sync::OnceLock<Arc<crate::staging::TargetCell>>,
    ) -> Result<(ExecGuard<'c>, bool), ConflictError<Err>>
    where
        'rt: 'c,
    {
        let staging = &self.rt.staging;
        // Registered only if it has to wait: a target it gets at once closes no cycle.
        self.enter_stage_with(key, cell, || {
            crate::waits::WAITS
                .wait(self.op_id, key, staging)
                .map_err(StageError::Cycle)
        })
        .await
    }

    /// Waits in `key`'s staging area until this call executes there; whether it waited.
    async fn enter_stage<'c, Err>(
        &self,
        key: &'c EntityKey,
        cell: &'c std::sync::OnceLock<Arc<crate::staging::TargetCell>>,
    ) -> Result<(ExecGuard<'c>, bool), ConflictError<Err>>
    where
        'rt: 'c,
    {
        self.enter_stage_with(key, cell, || Ok(())).await
    }

    /// [`enter_stage`](Self::enter_stage), running `before_wait` if the call has to wait
    /// (see `Staging::enter`).
    #[inline]
    async fn enter_stage_with<'c, G, Err>(
        &self,
        key: &'c EntityKey,
        cell: &'c std::sync::OnceLock<Arc<crate::staging::TargetCell>>,
        before_wait: impl FnOnce() -> Result<G, StageError>,
    ) -> Result<(ExecGuard<'c>, bool), ConflictError<Err>>
    where
        'rt: 'c,
    {
        let rt = self.rt;
        let cfg = &self.spec.config;
        let overridden;
        let pre_ecs = match self.on_lose {
            Some(on_lose) => {
                overridden = conflict_core::PreEcsConfig {
                    on_lose,
                    ..cfg.pre_ecs
                };
                &overridden
            }
            None => &cfg.pre_ecs,
        };
        let entered = rt.staging.enter(
            key,
            cell,
            self.candidate(),
            pre_ecs,
            &rt.lifecycle.abort,
            self.submitted,
            before_wait,
        );
        // Written out, not `by_deadline`: this and `snapshot` are on every call's path, where
        // the helper's extra future layer costs about 100 instructions a call (callgrind).
        let entered = match self.deadline {
            None => entered.await,
            // Boxed: only calls with a deadline pay for the timer. Leaving a staging area
            // early is a cancellation it is built for (the waiter withdraws in `Drop`).
            Some(d) => match Box::pin(tokio::time::timeout_at(d, entered)).await {
                Ok(entered) => entered,
                Err(_) => return Err(self.deadline_exceeded()),
            },
        };
        match entered {
            Ok(entered) => Ok(entered),
            Err(StageError::Rejected { winner }) => Err(self.rejected(winner, key)),
            Err(StageError::Overloaded { capacity, scope }) => Err(ConflictError::Overloaded {
                op_id: self.op_id,
                capacity,
                scope,
            }),
            Err(StageError::ShuttingDown) => Err(ConflictError::ShuttingDown { op_id: self.op_id }),
            Err(StageError::Cycle(cycle)) => Err(ConflictError::WaitCycle {
                op_id: self.op_id,
                target: key.clone(),
                cycle,
            }),
        }
    }

    fn rejected<Err>(&self, winner: Candidate, target: &EntityKey) -> ConflictError<Err> {
        // The policy ranks by effective priority, then by submission: say which decided.
        let reason = if winner.effective_priority > self.effective {
            conflict_core::RejectReason::LostPriority
        } else {
            conflict_core::RejectReason::SubmittedLater
        };
        self.emit(|| Event::OperationRejected {
            op: self.info(),
            winner_op_id: winner.op_id,
            winner_priority: winner.effective_priority,
            reason,
        });
        ConflictError::Rejected {
            op_id: self.op_id,
            target: target.clone(),
            winner_op_id: winner.op_id,
            priority: self.effective,
            winner_priority: winner.effective_priority,
            reason,
        }
    }

    /// Attempts allowed: the retry budget (the call's override, else the function's) plus one.
    fn max_attempts(&self) -> u32 {
        let cfg = &self.spec.config;
        let max_retries = match self.max_retries {
            Some(n) if cfg.mode.occ() => n,
            _ => cfg.effective_max_retries(),
        };
        max_retries.saturating_add(1)
    }

    /// Counts and announces attempt number `attempt`, unless the deadline has passed (no
    /// attempt starts after it: a body would run for nothing).
    #[inline]
    fn begin_attempt<Err>(
        &mut self,
        attempt: u32,
        span: &tracing::Span,
    ) -> Result<(), ConflictError<Err>> {
        self.attempts = attempt;
        if self.deadline.is_some() && self.past_deadline(Instant::now()) {
            return Err(self.deadline_exceeded());
        }
        if !span.is_disabled() {
            span.record("attempt", attempt);
        }
        self.rt.metrics.add(Counter::Attempts, 1);
        self.emit(|| Event::OperationStarted {
            op: self.info(),
            attempt,
        });
        Ok(())
    }

    /// The entity's current value and version. A staged winner on a database store starts
    /// from what the previous commit through staging wrote (first attempt only; a retry always
    /// loads).
    #[inline]
    async fn snapshot<E: Entity, Err>(
        &self,
        exec: &[ExecGuard<'_>],
        cache: &HandleCache,
        attempt: u32,
    ) -> Result<Snapshot, ConflictError<Err>> {
        let rt = self.rt;
        let cached = match (exec, attempt) {
            ([guard], 1) if rt.backend.is_remote() => guard.last_snapshot(),
            _ => None,
        };
        if let Some(s) = cached {
            return Ok(s);
        }
        let load = rt
            .backend
            .load(&self.target, EntityCodec::of::<E>(), &cache.slot);
        // Written out on this hot path, like `enter_stage`'s.
        let loaded = match self.deadline {
            None => load.await?,
            // Boxed: only calls with a deadline pay for the timer.
            Some(d) => match Box::pin(tokio::time::timeout_at(d, load)).await {
                Ok(loaded) => loaded?,
                Err(_) => return Err(self.deadline_exceeded()),
            },
        };
        Ok(loaded.ok_or_else(|| StoreError::NotFound {
            key: self.target.clone(),
        })?)
    }

    /// Runs the body on a private copy of the snapshot's entity, as this operation (nested
    /// calls see it as their parent), interruptible by preemption, shutdown and the deadline.
    /// Returns the changed entity and the body's value; a body error, a panic or a changed id
    /// ends the call.
    #[inline]
    async fn run_body<E, F, Fut, T, Err>(
        &self,
        exec: &[ExecGuard<'_>],
        snap: &Snapshot,
        body: &mut F,
    ) -> Result<BodyRun<E, T>, ConflictError<Err>>
    where
        E: Entity,
        F: FnMut(E) -> Fut,
        Fut: Future<Output = (E, Result<T, Err>)>,
    {
        let rt = self.rt;
        let current = downcast::<E>(&self.target, snap)?;
        // The entity's and the arguments' `Clone` (the latter inside `body`, before its future
        // exists) are user code too: a panic there ends the call as `Panicked`, like one in the
        // body, instead of unwinding into the caller's task.
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| body(current.clone())));
        let body_fut = match started {
            Ok(fut) => fut,
            Err(payload) => {
                return Err(ConflictError::Panicked {
                    op_id: self.op_id,
                    message: panic_message(payload.as_ref()),
                });
            }
        };
        let mut scoped = std::pin::pin!(context::run_as(
            LazyLink::new(
                rt.id,
                self.op_id,
                Params::One(self.target.clone()),
                self.effective,
                self.parent.clone(),
                TxnSeed::Root {
                    version: snap.version,
                    codec: EntityCodec::of::<E>(),
                },
            ),
            AssertUnwindSafe(body_fut).catch_unwind(),
        ));
        let ran = interruptible(rt, exec, self.seq, self.deadline, scoped.as_mut()).await;
        // The body run is over: its link (if nested calls asked for one) stops counting as a
        // running ancestor, and the transaction they composed into is this attempt's to
        // commit or abandon.
        let link = context::body_link(scoped.as_mut());
        // Only a body that asked for its link can have deleted its entity.
        let deleted = link.as_ref().is_some_and(|l| !l.take_deleted().is_empty());
        let nested = link.and_then(LazyLink::into_txn);
        let (entity, out) = match ran {
            Ok(Ok(pair)) => pair,
            Ok(Err(payload)) => {
                return Err(ConflictError::Panicked {
                    op_id: self.op_id,
                    message: panic_message(payload.as_ref()),
                });
            }
            Err(interrupt) => return Err(self.interrupted(interrupt)),
        };
        let value = match out {
            Ok(value) => value,
            Err(e) => {
                return match nested.as_ref().and_then(|t| t.0.doomed()) {
                    Some(d) => Ok(BodyRun::Doomed(Box::new(d))),
                    None => Err(ConflictError::Body(e)),
                };
            }
        };
        let found = entity.entity_id();
        if found != self.target.id {
            return Err(ConflictError::IdentityChanged {
                op_id: self.op_id,
                expected: self.target.id,
                found,
            });
        }
        Ok(BodyRun::Done(entity, value, nested, deleted))
    }

    fn interrupted<Err>(&self, interrupt: Interrupt) -> ConflictError<Err> {
        match interrupt {
            Interrupt::Abort => ConflictError::ShuttingDown { op_id: self.op_id },
            Interrupt::Preempted(by, target) => self.preempted(by, &target),
            Interrupt::Deadline => self.deadline_exceeded(),
        }
    }

    /// Compares and commits `entity` against the snapshot's version: `Committed` with the new
    /// version, or `Conflict` with what the store holds. Enters the commit phase first (no
    /// preemption from there on), unless the deadline passed, the call was preempted or the
    /// runtime aborts.
    #[inline]
    async fn commit<E: Entity, Err>(
        &mut self,
        exec: &[ExecGuard<'_>],
        cache: &HandleCache,
        snap: &Snapshot,
        entity: E,
        attempt: u32,
    ) -> Result<Cas, ConflictError<Err>> {
        let rt = self.rt;
        if self.deadline.is_some() && self.past_deadline(Instant::now()) {
            return Err(self.deadline_exceeded());
        }
        if let [guard] = exec {
            guard
                .begin_commit()
                .map_err(|by| self.preempted(by, guard.key()))?;
        }
        if rt.lifecycle.abort.is_set() {
            return Err(ConflictError::ShuttingDown { op_id: self.op_id });
        }
        let value_written: StoredValue = Arc::new(entity);
        let write = Write {
            key: self.target.clone(),
            expected_version: snap.version,
            value: value_written.clone(),
        };
        let info = CommitInfo {
            op_id: self.op_id,
            op_type: self.spec.name,
            priority: self.effective,
            attempt,
        };
        let at = Instant::now();
        let task = rt
            .backend
            .commit_task(info, &write)
            .and_then(|c| Some((tokio::runtime::Handle::try_current().ok()?, c)));
        let outcome = match task {
            // A store whose commit awaits: the commit runs in its own task, so a caller that
            // leaves now can neither cut it short nor have it miscounted (see
            // `Operation::drop`), and it keeps the target until it settles (`CommitSlot`).
            Some((h, commit)) => {
                let slot = exec
                    .first()
                    .map(|g| g.commit_slot(&rt.staging, &self.target));
                let (value, last_modified) = (value_written, rt.wall_time(at));
                let task = h.spawn(async move {
                    let r = commit.await;
                    if let Some(slot) = slot {
                        slot.settle(match &r {
                            Ok(Cas::Committed(version)) => Some(Snapshot {
                                value,
                                version: *version,
                                last_modified,
                            }),
                            _ => None,
                        });
                    }
                    r
                });
                self.in_flight = Some(InFlight::One(task));
                let joined = match self.in_flight.as_mut() {
                    Some(InFlight::One(task)) => task.await,
                    _ => unreachable!("set just above"),
                };
                self.in_flight = None;
                flatten_commit(joined)
            }
            None => {
                let remember = exec.first().filter(|_| rt.backend.is_remote());
                let outcome = rt
                    .backend
                    .commit_one(info, write, &cache.slot, rt.wall_time(at))
                    .await;
                if let Some(guard) = remember {
                    guard.remember(match &outcome {
                        Ok(Cas::Committed(version)) => Some(Snapshot {
                            value: value_written,
                            version: *version,
                            last_modified: rt.wall_time(at),
                        }),
                        _ => None,
                    });
                }
                outcome
            }
        };
        let outcome = outcome?;
        if let Cas::Committed(_) = outcome {
            self.committed_at = Some(at);
            if exec.is_empty() && rt.backend.is_remote() {
                // Written without staging: what its staging area remembers is stale now.
                rt.staging.forget_last(&self.target);
            }
        }
        Ok(outcome)
    }

    /// After a conflicting commit (the store holds `actual`, not `expected`): leaves the commit
    /// phase, then ends the call if the retry budget or the deadline is spent, else waits the
    /// backoff delay (interruptible like the body) before the next attempt.
    async fn back_off<Err>(
        &mut self,
        exec: &[ExecGuard<'_>],
        contended: &EntityKey,
        expected: u64,
        actual: Option<u64>,
        attempt: u32,
        max_attempts: u32,
    ) -> Result<(), ConflictError<Err>> {
        let rt = self.rt;
        rt.metrics.add(Counter::OccConflicts, 1);
        self.conflicts += 1;
        tracing::debug!(
            expected_version = expected,
            actual_version = ?actual,
            "conflict at commit"
        );
        self.emit(|| Event::OperationConflict {
            op: self.info(),
            attempt,
            expected_version: expected,
            actual_version: actual,
        });
        for guard in exec {
            guard.end_commit();
        }
        if attempt >= max_attempts {
            return Err(ConflictError::RetriesExhausted {
                op_id: self.op_id,
                attempts: attempt,
                target: contended.clone(),
            });
        }
        let delay = self.spec.config.occ.backoff_delay(attempt, fastrand::f64());
        if self.deadline.is_some() && self.past_deadline(Instant::now() + delay) {
            // The retry could not even start in time.
            return Err(self.deadline_exceeded());
        }
        rt.metrics.add(Counter::OccRetries, 1);
        tracing::debug!(
            next_attempt = attempt + 1,
            delay_us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
            "retrying"
        );
        self.emit(|| Event::OperationRetry {
            op: self.info(),
            attempt: attempt + 1,
            delay,
        });
        if !delay.is_zero() {
            // Boxed: a timer is large and only retries need one.
            let sleep = Box::pin(tokio::time::sleep(delay));
            interruptible(rt, exec, self.seq, None, sleep)
                .await
                .map_err(|i| self.interrupted(i))?;
        }
        Ok(())
    }
}

pin_project_lite::pin_project! {
    /// Polls `fut` until it completes, unless shutdown aborts the runtime or the operation is
    /// preempted first. The future is polled first, so a body that completes without waiting
    /// never registers for either wake-up. (A named future rather than an `async fn`, which
    /// would hold `fut` twice: as its argument and pinned in its state.)
    struct Interruptible<'a, 'g, F> {
        #[pin]
        fut: F,
        #[pin]
        abort_wait: Option<crate::sync::Notified<'a>>,
        rt: &'a Inner,
        exec: &'a [ExecGuard<'g>],
        // Only calls with a deadline have a timer (boxed: it is large).
        deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    }
}

fn interruptible<'a, 'g, F: Future>(
    rt: &'a Inner,
    exec: &'a [ExecGuard<'g>],
    seq: u64,
    deadline: Option<Instant>,
    fut: F,
) -> Interruptible<'a, 'g, F> {
    // An executing staged operation is woken through its target (see `ExecGuard::watch`);
    // any other one listens on the runtime's abort signal, created here, before the first
    // flag check, so that no abort slips in between.
    Interruptible {
        fut,
        abort_wait: exec.is_empty().then(|| rt.lifecycle.abort.notified(seq)),
        rt,
        exec,
        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
    }
}

impl<F: Future> Future for Interruptible<'_, '_, F> {
    type Output = Result<F::Output, Interrupt>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let abort = &this.rt.lifecycle.abort;
        if abort.is_set() {
            return Poll::Ready(Err(Interrupt::Abort));
        }
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if let Some(d) = this.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Interrupt::Deadline));
            }
        }
        match *this.exec {
            [] => {
                if let Some(w) = this.abort_wait.as_pin_mut() {
                    if w.poll(cx).is_ready() {
                        return Poll::Ready(Err(Interrupt::Abort));
                    }
                }
            }
            guards => {
                for guard in guards {
                    if let Watch::Preempted(by) = guard.watch(cx.waker()) {
                        return Poll::Ready(Err(Interrupt::Preempted(by, guard.key().clone())));
                    }
                }
                // Checked after registering: an abort from here on wakes this task.
                if abort.is_set() {
                    return Poll::Ready(Err(Interrupt::Abort));
                }
            }
        }
        Poll::Pending
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
