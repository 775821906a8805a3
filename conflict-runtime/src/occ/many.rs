//! Calls over several entities, and nested calls that compose into their root's commit.
//!
//! A multi-entity call stages on every entity it writes, one after the other in key order
//! (ordered acquisition: a call waits for an entity only while holding entities of smaller
//! keys, so waits cannot form a cycle), reads all its entities as one consistent snapshot,
//! runs its body once per attempt, and commits every write and validates every read in one
//! atomic store commit. A nested call (see [`crate::txn`]) neither stages nor commits: it reads
//! through its root's transaction and leaves its writes there.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use conflict_core::{Committed, ConflictError, Entity, EntityKey, OpId, StoreError, Versions};
use futures_util::FutureExt;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Books, InFlight, Operation, flatten, interruptible, panic_message, settle_composed};
use crate::context::{self, LazyLink, Params, TxnSeed};
use crate::handle::{Handle, HandleCache};
use crate::registry::OperationSpec;
use crate::runtime::Inner;
use crate::staging::ExecGuard;
use crate::store::{
    CommitInfo, CommitOutcome, Delete, EntityCodec, SlotCache, Snapshot, StoredValue, Write,
};
use crate::txn::{Entry, Role, Sealed, TxnOwner, TxnShared};

/// One entity parameter of a call: its handle's parts, and whether the call writes it.
pub(crate) struct Target<'h> {
    pub(crate) key: &'h EntityKey,
    pub(crate) cache: &'h HandleCache,
    pub(crate) codec: EntityCodec,
    pub(crate) write: bool,
    pub(crate) rt: &'h Arc<Inner>,
}

impl<'h> Target<'h> {
    /// A `&mut E` parameter.
    pub(crate) fn write<E: Entity>(h: &'h Handle<E>) -> Self {
        Self {
            key: &h.key,
            cache: &h.cache,
            codec: EntityCodec::of::<E>(),
            write: true,
            rt: &h.rt.inner,
        }
    }

    /// A `#[read] &E` parameter.
    pub(crate) fn read<E: Entity>(h: &'h Handle<E>) -> Self {
        Self {
            write: false,
            ..Self::write(h)
        }
    }
}

struct DisplayTargets<'a>(&'a [Target<'a>]);

impl std::fmt::Display for DisplayTargets<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}{}", if t.write { "" } else { "read " }, t.key)?;
        }
        Ok(())
    }
}

/// Runs `fut` in `span` (skipping the wrapper when nothing listens).
async fn in_span<F: Future>(span: &tracing::Span, fut: F) -> F::Output {
    if span.is_disabled() {
        fut.await
    } else {
        fut.instrument(span.clone()).await
    }
}

/// Runs one call of a function over several entities (or one nested call of any function).
pub(crate) async fn execute_many<F, Fut, T, Err>(
    spec: &'static OperationSpec,
    targets: &[Target<'_>],
    body: F,
) -> Result<Committed<T>, ConflictError<Err>>
where
    F: FnMut(&[Snapshot]) -> Result<Fut, StoreError>,
    Fut: Future<Output = (Vec<StoredValue>, Result<T, Err>)>,
    Err: std::fmt::Display,
{
    let Some(first) = targets.first() else {
        // The macro refuses a function without an entity parameter.
        return Err(ConflictError::Store(StoreError::Backend {
            message: format!("`{}` was called without an entity", spec.name),
            source: None,
        }));
    };
    let rt = first.rt;
    let mut op = Operation::begin(rt, spec, first.key);
    op.more = targets[1..].iter().map(|t| t.key.clone()).collect();
    for t in &targets[1..] {
        // Expired lazy zombies of every entity are met, not only of the first.
        rt.cleanup.operation_started(t.key);
    }
    let span = tracing::info_span!(
        "conflict.op",
        op_id = %op.op_id,
        op = spec.name,
        target = %first.key,
        targets = %DisplayTargets(targets),
        attempt = tracing::field::Empty,
    );
    let result = if op.composes() {
        Box::pin(in_span(&span, compose(&mut op, targets, body, &span))).await
    } else {
        in_span(&span, run_many(&mut op, targets, body, &span)).await
    };
    op.finish(&result);
    result
}

/// A nested single-entity call: composes into its root's transaction.
pub(crate) async fn compose_one<E, F, Fut, T, Err>(
    op: &mut Operation<'_>,
    handle: &Handle<E>,
    mut body: F,
) -> Result<Committed<T>, ConflictError<Err>>
where
    E: Entity,
    F: FnMut(E) -> Fut,
    Fut: Future<Output = (E, Result<T, Err>)>,
    Err: std::fmt::Display,
{
    let targets = [Target::write(handle)];
    let span = tracing::info_span!(
        "conflict.op",
        op_id = %op.op_id,
        op = op.spec.name,
        target = %handle.key,
        attempt = tracing::field::Empty,
    );
    let key = &handle.key;
    let adapted = |snaps: &[Snapshot]| -> Result<_, StoreError> {
        let entity = copy_of::<E>(key, &snaps[0])?;
        let fut = body(entity);
        Ok(async move {
            let (entity, out) = fut.await;
            (vec![Arc::new(entity) as StoredValue], out)
        })
    };
    in_span(&span, compose(op, &targets, adapted, &span)).await
}

/// A private copy of the entity in `snap` (for a `&mut` parameter).
pub(crate) fn copy_of<E: Entity>(key: &EntityKey, snap: &Snapshot) -> Result<E, StoreError> {
    Ok(crate::handle::downcast::<E>(key, snap)?.clone())
}

/// The checks every call over a list of entities makes before anything runs: one runtime, no
/// entity twice.
fn check_targets<Err>(
    op: &Operation<'_>,
    targets: &[Target<'_>],
) -> Result<(), ConflictError<Err>> {
    if let Some(t) = targets.iter().find(|t| !Arc::ptr_eq(t.rt, op.rt)) {
        return Err(ConflictError::ForeignHandle {
            op_id: op.op_id,
            target: t.key.clone(),
        });
    }
    if targets.len() > 1 {
        let mut keys: Vec<&EntityKey> = targets.iter().map(|t| t.key).collect();
        keys.sort_unstable();
        if let Some(pair) = keys.windows(2).find(|p| p[0] == p[1]) {
            return Err(ConflictError::DuplicateTarget {
                op_id: op.op_id,
                target: pair[0].clone(),
            });
        }
    }
    Ok(())
}

/// A root call over several entities.
async fn run_many<F, Fut, T, Err>(
    op: &mut Operation<'_>,
    targets: &[Target<'_>],
    mut body: F,
    span: &tracing::Span,
) -> Result<Committed<T>, ConflictError<Err>>
where
    F: FnMut(&[Snapshot]) -> Result<Fut, StoreError>,
    Fut: Future<Output = (Vec<StoredValue>, Result<T, Err>)>,
    Err: std::fmt::Display,
{
    check_targets(op, targets)?;
    op.admit()?;
    op.admit_detached(targets.iter().filter(|t| t.write).map(|t| t.key))?;
    // Its caller's body waits for it (see `crate::waits`).
    op.register_detached();
    let (guards, guard_keys) = op.stage_many(targets).await?;
    let max_attempts = op.max_attempts();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        op.begin_attempt(attempt, span)?;
        let snaps = op.snapshot_many::<Err>(targets).await?;
        let txn = TxnOwner(Arc::new(TxnShared::with_entries(
            op.rt.id,
            op.op_id,
            targets
                .iter()
                .zip(&snaps)
                .map(|(t, s)| Entry {
                    key: t.key.clone(),
                    codec: t.codec,
                    read_version: s.version,
                    last_modified: s.last_modified,
                    value: (!t.write).then(|| s.value.clone()),
                    role: if t.write { Role::RootWrite } else { Role::Read },
                    writes: 0,
                    history: Vec::new(),
                })
                .collect(),
        )));
        let params = Params::Many(targets.iter().map(|t| (t.key.clone(), t.write)).collect());
        let ran = op
            .run_body_on(
                &guards,
                &snaps,
                params,
                TxnSeed::Given(txn.0.clone()),
                &mut body,
            )
            .await;
        let (written, value, gone) = match ran {
            Ok(ran) => ran,
            // A body error in a doomed attempt (an entity it read moved on: the error may come
            // from a nested call or an insert refused for that) is a conflict: run again.
            Err(ConflictError::Body(_)) if txn.0.doomed().is_some() => {
                let Some(d) = txn.0.doomed() else { continue };
                drop(txn);
                op.back_off(&guards, &d.key, d.read, d.found, attempt, max_attempts)
                    .await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut sealed = txn.0.seal();
        // The parameters' writes and deletes first, then the nested calls' (no reallocation
        // when nothing nested).
        let (mut writes, mut deletes) =
            split_deleted(written_params(op, targets, &snaps, written)?, &gone);
        writes.append(&mut sealed.writes);
        deletes.append(&mut sealed.deletes);
        (sealed.writes, sealed.deletes) = (writes, deletes);
        let children = txn.0.take_children();
        let outcome = op
            .commit_all(&guards, &guard_keys, sealed, children, attempt)
            .await?;
        drop(txn);
        match outcome {
            Ok(versions) => {
                return Ok(Committed {
                    value,
                    version: versions.first().unwrap_or(0),
                    versions,
                    op_id: op.op_id,
                    attempts: attempt,
                });
            }
            Err(conflict) => {
                op.back_off(
                    &guards,
                    &conflict.key,
                    conflict.expected,
                    conflict.actual,
                    attempt,
                    max_attempts,
                )
                .await?;
            }
        }
    }
}

/// The writes of a body's written parameters: each new value (in parameter order, as the body
/// returned them) against the version its snapshot had, after checking it is still the entity
/// its key names.
fn written_params<Err>(
    op: &Operation<'_>,
    targets: &[Target<'_>],
    snaps: &[Snapshot],
    written: Vec<StoredValue>,
) -> Result<Vec<Write>, ConflictError<Err>> {
    let mut written = written.into_iter();
    let mut writes = Vec::with_capacity(targets.len());
    for (t, snap) in targets.iter().zip(snaps).filter(|(t, _)| t.write) {
        let value = written.next().ok_or_else(|| missing_write(op, t.key))?;
        check_identity(op, t.key, &value)?;
        writes.push(Write {
            key: t.key.clone(),
            expected_version: snap.version,
            value,
        });
    }
    Ok(writes)
}

/// The writes of parameters the body [deleted](crate::operation::delete) become deletes of the
/// version read.
pub(super) fn split_deleted(writes: Vec<Write>, keys: &[EntityKey]) -> (Vec<Write>, Vec<Delete>) {
    if keys.is_empty() {
        return (writes, Vec::new());
    }
    let (gone, kept): (Vec<Write>, Vec<Write>) =
        writes.into_iter().partition(|w| keys.contains(&w.key));
    let deletes = gone
        .into_iter()
        .map(|w| Delete {
            key: w.key,
            expected_version: w.expected_version,
        })
        .collect();
    (kept, deletes)
}

fn missing_write<Err>(op: &Operation<'_>, key: &EntityKey) -> ConflictError<Err> {
    ConflictError::Store(StoreError::Backend {
        message: format!(
            "operation {}'s body returned no value for {key} (a bug in the generated code)",
            op.op_id
        ),
        source: None,
    })
}

fn check_identity<Err>(
    op: &Operation<'_>,
    key: &EntityKey,
    value: &StoredValue,
) -> Result<(), ConflictError<Err>> {
    let found = value.entity_key();
    if found == *key {
        return Ok(());
    }
    Err(ConflictError::IdentityChanged {
        op_id: op.op_id,
        expected: key.id,
        found: found.id,
    })
}

/// A commit that did not apply: the entity found stale.
pub(crate) struct Stale {
    pub(crate) key: EntityKey,
    pub(crate) expected: u64,
    pub(crate) actual: Option<u64>,
}

impl<'rt> Operation<'rt> {
    /// Stage one for a call over several entities: executes on each entity it writes, taken in
    /// key order (see the module docs). The guards, and the key of each.
    async fn stage_many<'c, Err>(
        &mut self,
        targets: &[Target<'c>],
    ) -> Result<(Vec<ExecGuard<'c>>, Vec<EntityKey>), ConflictError<Err>>
    where
        'rt: 'c,
    {
        if !self.spec.config.mode.staging() {
            self.started = Some(self.submitted);
            return Ok((Vec::new(), Vec::new()));
        }
        let mut written: Vec<&Target<'c>> = targets.iter().filter(|t| t.write).collect();
        written.sort_by(|a, b| a.key.cmp(b.key));
        let mut guards = Vec::with_capacity(written.len());
        let mut keys = Vec::with_capacity(written.len());
        let mut waited_any = false;
        for t in written {
            let (guard, waited) = if guards.is_empty() && !self.detached_edge {
                self.enter_stage(t.key, &t.cache.cell).await?
            } else {
                // Holding entities (or detached from a body): could close a cycle of waits.
                self.enter_stage_registered(t.key, &t.cache.cell).await?
            };
            waited_any |= waited;
            guards.push(guard);
            keys.push(t.key.clone());
        }
        self.started = Some(if waited_any {
            Instant::now()
        } else {
            self.submitted
        });
        Ok((guards, keys))
    }

    /// Every target as one consistent snapshot.
    async fn snapshot_many<Err>(
        &self,
        targets: &[Target<'_>],
    ) -> Result<Vec<Snapshot>, ConflictError<Err>> {
        let list: Vec<(&EntityKey, EntityCodec, &SlotCache)> = targets
            .iter()
            .map(|t| (t.key, t.codec, &t.cache.slot))
            .collect();
        let loaded = self.by_deadline(self.rt.backend.load_many(&list)).await??;
        loaded
            .into_iter()
            .zip(targets)
            .map(|(s, t)| {
                s.ok_or_else(|| ConflictError::Store(StoreError::NotFound { key: t.key.clone() }))
            })
            .collect()
    }

    /// Runs a body that takes the snapshots (its generated code copies or shares each
    /// entity), as this operation, interruptible like any body. Returns the values of its
    /// written parameters, in order, its value, and the parameters it deleted.
    async fn run_body_on<F, Fut, T, Err>(
        &self,
        exec: &[ExecGuard<'_>],
        snaps: &[Snapshot],
        params: Params,
        txn: TxnSeed,
        body: &mut F,
    ) -> Result<(Vec<StoredValue>, T, Vec<EntityKey>), ConflictError<Err>>
    where
        F: FnMut(&[Snapshot]) -> Result<Fut, StoreError>,
        Fut: Future<Output = (Vec<StoredValue>, Result<T, Err>)>,
    {
        let rt = self.rt;
        // Copying the entities and cloning the arguments is user code too (`Clone`).
        let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| body(snaps))) {
            Ok(Ok(fut)) => fut,
            Ok(Err(e)) => return Err(ConflictError::Store(e)),
            Err(payload) => {
                return Err(ConflictError::Panicked {
                    op_id: self.op_id,
                    message: panic_message(payload.as_ref()),
                });
            }
        };
        let link = LazyLink::new(
            rt.id,
            self.op_id,
            params,
            self.effective,
            self.parent.clone(),
            txn,
        );
        let mut scoped =
            std::pin::pin!(context::run_as(link, AssertUnwindSafe(fut).catch_unwind()));
        let ran = interruptible(rt, exec, self.seq, self.deadline, scoped.as_mut()).await;
        // The body run is over: its link stops counting as a running ancestor.
        let deleted = context::body_link(scoped.as_mut())
            .map(|l| l.take_deleted())
            .unwrap_or_default();
        let (written, out) = match ran {
            Ok(Ok(pair)) => pair,
            Ok(Err(payload)) => {
                return Err(ConflictError::Panicked {
                    op_id: self.op_id,
                    message: panic_message(payload.as_ref()),
                });
            }
            Err(interrupt) => return Err(self.interrupted(interrupt)),
        };
        let value = out.map_err(ConflictError::Body)?;
        Ok((written, value, deleted))
    }

    /// Commits the writes and deletes of `changes` and validates its reads in one store
    /// commit, after entering the commit phase on every guard. `children` (nested calls
    /// composed into this attempt) end with the outcome. A doomed attempt (a nested call saw an
    /// entity change) does not commit: it is a conflict on that entity.
    pub(super) async fn commit_all<Err>(
        &mut self,
        exec: &[ExecGuard<'_>],
        exec_keys: &[EntityKey],
        changes: Sealed,
        children: Vec<Books>,
        attempt: u32,
    ) -> Result<Result<Versions, Stale>, ConflictError<Err>> {
        let rt = self.rt;
        let Sealed {
            doomed,
            writes,
            deletes,
            reads,
        } = changes;
        self.composed = children;
        if let Some(d) = doomed {
            settle_composed(rt, self.op_id, std::mem::take(&mut self.composed), None);
            return Ok(Err(Stale {
                key: d.key,
                expected: d.read,
                actual: d.found,
            }));
        }
        if self.deadline.is_some() && self.past_deadline(Instant::now()) {
            return Err(self.deadline_exceeded());
        }
        for (i, guard) in exec.iter().enumerate() {
            if let Err(by) = guard.begin_commit() {
                for g in &exec[..i] {
                    g.end_commit();
                }
                return Err(self.preempted(by, guard.key()));
            }
        }
        if rt.lifecycle.abort.is_set() {
            return Err(ConflictError::ShuttingDown { op_id: self.op_id });
        }
        let info = CommitInfo {
            op_id: self.op_id,
            op_type: self.spec.name,
            priority: self.effective,
            attempt,
        };
        let keys: Vec<EntityKey> = writes.iter().map(|w| w.key.clone()).collect();
        // A delete's tombstone is at the version it expected + 1.
        let tombstones: Vec<(EntityKey, u64)> = deletes
            .iter()
            .map(|d| (d.key.clone(), d.expected_version + 1))
            .collect();
        let at = Instant::now();
        let task = rt
            .backend
            .commit_many_task(info, &writes, &deletes, &reads)
            .and_then(|c| Some((tokio::runtime::Handle::try_current().ok()?, c)));
        let outcome = match task {
            // As for one write (see `Operation::commit`): the commit runs in its own task and
            // keeps every staged entity until it settles.
            Some((h, commit)) => {
                self.commit_in_task(&h, commit, exec, exec_keys, &writes, &keys, at)
                    .await
            }
            None => rt.backend.commit_many(info, writes, deletes, reads).await,
        };
        let composed = std::mem::take(&mut self.composed);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                // The nested calls end with what is known of the commit they were part of.
                super::settle_composed_failed(rt, composed, &e);
                return Err(ConflictError::Store(e));
            }
        };
        match outcome {
            CommitOutcome::Committed { versions, .. } => {
                // Entities written here without staging on them (nested writes): a snapshot
                // their staging area remembers from an earlier commit is stale now.
                if rt.backend.is_remote() {
                    let touched = keys.iter().chain(tombstones.iter().map(|(k, _)| k));
                    for key in touched.filter(|k| !exec_keys.contains(k)) {
                        rt.staging.forget_last(key);
                    }
                }
                let mut versions: Vec<(EntityKey, u64)> = keys.into_iter().zip(versions).collect();
                versions.extend(tombstones);
                let versions = Versions::from(versions);
                settle_composed(rt, self.op_id, composed, Some(&versions));
                self.committed_at = Some(at);
                Ok(Ok(versions))
            }
            CommitOutcome::Conflict {
                key,
                expected,
                actual,
            } => {
                settle_composed(rt, self.op_id, composed, None);
                Ok(Err(Stale {
                    key,
                    expected,
                    actual,
                }))
            }
        }
    }

    /// The commit of [`commit_all`](Self::commit_all) on a store whose commit awaits: in a
    /// task of its own, as for one write (see `Operation::commit`), so a caller that leaves
    /// can neither cut it short nor have it miscounted, and every staged entity stays this
    /// call's until it settles.
    #[allow(
        clippy::too_many_arguments,
        reason = "the commit, the guards and their keys, what it writes, and when"
    )]
    async fn commit_in_task(
        &mut self,
        h: &tokio::runtime::Handle,
        commit: impl Future<Output = Result<CommitOutcome, StoreError>> + Send + 'static,
        exec: &[ExecGuard<'_>],
        exec_keys: &[EntityKey],
        writes: &[Write],
        keys: &[EntityKey],
        at: Instant,
    ) -> Result<CommitOutcome, StoreError> {
        let rt = self.rt;
        let last_modified = rt.wall_time(at);
        let slots: Vec<_> = exec
            .iter()
            .zip(exec_keys)
            .map(|(g, key)| {
                let value = writes
                    .iter()
                    .find(|w| &w.key == key)
                    .map(|w| w.value.clone());
                (g.commit_slot(&rt.staging, key), value)
            })
            .collect();
        let key_order = keys.to_vec();
        let task = h.spawn(async move {
            let r = commit.await;
            for (slot, value) in slots {
                let wrote = match (&r, value) {
                    (Ok(CommitOutcome::Committed { versions, .. }), Some(value)) => {
                        let key = value.entity_key();
                        key_order
                            .iter()
                            .position(|k| *k == key)
                            .and_then(|i| versions.get(i))
                            .map(|&version| Snapshot {
                                value,
                                version,
                                last_modified,
                            })
                    }
                    _ => None,
                };
                slot.settle(wrote);
            }
            r
        });
        self.in_flight = Some(InFlight::Many {
            task,
            keys: keys.to_vec(),
        });
        let joined = match self.in_flight.as_mut() {
            Some(InFlight::Many { task, .. }) => task.await,
            _ => unreachable!("set just above"),
        };
        self.in_flight = None;
        flatten(joined)
    }
}

/// A nested call: reads through its root's transaction, runs its body once, and leaves its
/// writes there (see [`crate::txn`]). It ends when its root's attempt does.
async fn compose<F, Fut, T, Err>(
    op: &mut Operation<'_>,
    targets: &[Target<'_>],
    mut body: F,
    span: &tracing::Span,
) -> Result<Committed<T>, ConflictError<Err>>
where
    F: FnMut(&[Snapshot]) -> Result<Fut, StoreError>,
    Fut: Future<Output = (Vec<StoredValue>, Result<T, Err>)>,
    Err: std::fmt::Display,
{
    let rt = op.rt;
    let Some(parent) = op.parent.clone() else {
        unreachable!("only nested calls compose");
    };
    let txn = parent.txn().clone();
    check_targets(op, targets)?;
    // No `accepting()` check: a graceful shutdown lets running roots finish, nested calls
    // included; the abort that ends the drain stops the root's body, and with it this call.
    if op.deadline.is_some() && op.past_deadline(op.submitted) {
        return Err(op.deadline_exceeded());
    }
    for t in targets {
        // An ancestor between its attempts, or committing, still executes on its target.
        let holds = |id| rt.staging.is_executing(t.key, id);
        if let Some(ancestor) = parent.find_conflicting(rt.id, t.key, t.write, holds) {
            return Err(ConflictError::Reentrant {
                op_id: op.op_id,
                target: t.key.clone(),
                ancestor_op_id: ancestor,
            });
        }
    }
    if !parent.is_running() {
        // The body this call was made for has ended (a context kept, or a task not awaited):
        // there is no commit left to join.
        return Err(ConflictError::RolledBack {
            op_id: op.op_id,
            root_op_id: txn.root,
        });
    }
    op.started = Some(op.submitted);
    op.begin_attempt(1, span)?;
    let (snaps, seen) = read_through(op, &txn, targets).await?;
    // From here on, this call's own nested calls may leave writes in the transaction: unless
    // this call parks, they are undone (whichever way it ends, a dropped future included).
    let mut undo = UndoUnlessParked {
        txn: &txn,
        op_id: op.op_id,
        armed: true,
    };
    let params = Params::Many(targets.iter().map(|t| (t.key.clone(), t.write)).collect());
    let ran = op
        .run_body_on(&[], &snaps, params, TxnSeed::Given(txn.clone()), &mut body)
        .await;
    let (written, value, deleted) = match ran {
        Ok(ran) => ran,
        // Failed in a doomed attempt (what it met there made it fail): rolled back with the
        // attempt, which runs again, rather than a failure of its own.
        Err(ConflictError::Body(_)) if txn.doomed().is_some() => {
            return Err(ConflictError::RolledBack {
                op_id: op.op_id,
                root_op_id: txn.root,
            });
        }
        Err(e) => return Err(e),
    };
    let writes = written_params(op, targets, &snaps, written)?;
    let mut st = txn.lock();
    // A sibling (a nested call of the same attempt in another task) that wrote an entity this
    // call read, after it read it, would be overwritten by this call's writes, computed from
    // what it read: this call is rolled back instead (no lost update inside the transaction).
    let overtaken = targets
        .iter()
        .zip(&seen)
        .any(|(t, n)| st.entry(t.key).is_none_or(|e| e.writes != *n));
    if st.sealed || st.doomed.is_some() || overtaken {
        drop(st);
        return Err(ConflictError::RolledBack {
            op_id: op.op_id,
            root_op_id: txn.root,
        });
    }
    let chain = undo_chain(op.op_id, &parent, txn.root);
    let mut versions = Vec::with_capacity(writes.len());
    for Write {
        key,
        expected_version: read_version,
        value,
    } in writes
    {
        // A deleted parameter is deleted instead of written (its tombstone's version is
        // reported; an entity created in this attempt and deleted again never exists).
        let value = (!deleted.contains(&key)).then_some(value);
        let exists = value.is_some() || read_version > 0;
        st.change(&key, &chain, value);
        if exists {
            versions.push((key, read_version + 1));
        }
    }
    if st.rt.is_none() {
        st.rt = Some(Arc::clone(rt));
    }
    let wrote = versions.first().map(|(k, _)| k.clone());
    st.children.push(op.park(wrote));
    drop(st);
    undo.armed = false;
    let versions = Versions::from(versions);
    Ok(Committed {
        value,
        version: versions.first().unwrap_or(0),
        versions,
        op_id: op.op_id,
        attempts: 1,
    })
}

/// `op_id` and its ancestors below `root`: the nested calls whose failure undoes its writes.
fn undo_chain(op_id: OpId, parent: &crate::context::OperationContext, root: OpId) -> Arc<[OpId]> {
    let mut ids = vec![op_id];
    push_below_root(&mut ids, parent, root);
    ids.into()
}

/// The operations from `ctx` up to (not including) `root`.
fn push_below_root(ids: &mut Vec<OpId>, ctx: &crate::context::OperationContext, root: OpId) {
    let mut cur = Some(&*ctx.link);
    while let Some(l) = cur {
        if l.op_id == root {
            break;
        }
        ids.push(l.op_id);
        cur = l.parent.as_deref();
    }
}

/// An insert made inside the body of `ctx` (of this runtime): the entity is created by the
/// commit of `ctx`'s root, with everything else it commits, and not at all if that attempt does
/// not commit (undone, too, if a nested call it was made in fails).
///
/// # Errors
///
/// `AlreadyExists` if the store or the transaction holds the entity, `RolledBack` if the body
/// has ended or the attempt cannot commit, and the store's failures to load.
pub(crate) async fn insert_composed(
    rt: &Arc<Inner>,
    ctx: &crate::context::OperationContext,
    value: StoredValue,
    codec: EntityCodec,
) -> Result<(), StoreError> {
    let txn = ctx.txn();
    let key = value.entity_key();
    let rolled_back = || StoreError::RolledBack {
        key: key.clone(),
        root_op_id: txn.root,
    };
    let mut chain = Vec::new();
    push_below_root(&mut chain, ctx, txn.root);
    let chain: Arc<[OpId]> = chain.into();
    // Whether the key is absent as far as the transaction knows, and if not known there, what
    // to read (it, with every entity the transaction holds, to check those are unchanged).
    let known: Vec<(EntityKey, EntityCodec, u64)> = {
        let mut st = txn.lock();
        if !ctx.is_running() || st.sealed || st.doomed.is_some() {
            return Err(rolled_back());
        }
        match st.entry(&key) {
            Some(e) if e.value.is_some() || e.role == Role::RootWrite => {
                return Err(StoreError::AlreadyExists { key });
            }
            Some(_) => {
                // Deleted, or a create undone, in this transaction: created (again) here.
                st.change(&key, &chain, Some(value));
                return Ok(());
            }
            None => st.known(),
        }
    };
    let unused = SlotCache::new();
    let scratch: Vec<SlotCache> = known.iter().map(|_| SlotCache::new()).collect();
    let list = beside_known(vec![(&key, codec, &unused)], &known, &scratch);
    let loaded = rt.backend.load_many(&list).await?;
    if !ctx.is_running() {
        return Err(rolled_back());
    }
    let Some(mut st) = relock_unmoved(txn, &known, loaded.get(1..).unwrap_or_default()) else {
        return Err(rolled_back());
    };
    if loaded.first().is_some_and(Option::is_some) || st.entry(&key).is_some() {
        return Err(StoreError::AlreadyExists { key });
    }
    st.entries.push(Entry {
        key: key.clone(),
        codec,
        read_version: 0,
        last_modified: std::time::SystemTime::UNIX_EPOCH,
        value: None,
        role: Role::Absent,
        writes: 0,
        history: Vec::new(),
    });
    st.change(&key, &chain, Some(value));
    Ok(())
}

/// What a nested load reads: `first`, then every entity of the transaction (`known`), each of
/// these through a scratch cache of `scratch` (one per entity).
fn beside_known<'a>(
    mut first: Vec<(&'a EntityKey, EntityCodec, &'a SlotCache)>,
    known: &'a [(EntityKey, EntityCodec, u64)],
    scratch: &'a [SlotCache],
) -> Vec<(&'a EntityKey, EntityCodec, &'a SlotCache)> {
    first.extend(known.iter().zip(scratch).map(|((k, c, _), s)| (k, *c, s)));
    first
}

/// After a nested load: the transaction locked again, unless the root's body has ended, the
/// attempt was doomed meanwhile, or one of `known` (read at its version) is at another one in
/// `now` — then this dooms it (the body must not see the mixed state) and returns `None`.
fn relock_unmoved<'t>(
    txn: &'t TxnShared,
    known: &[(EntityKey, EntityCodec, u64)],
    now: &[Option<Snapshot>],
) -> Option<crate::sync::MutexGuard<'t, crate::txn::TxnState>> {
    let mut st = txn.lock();
    if st.sealed || st.doomed.is_some() {
        return None;
    }
    if let Some(doomed) = moved(known, now) {
        st.doomed = Some(doomed);
        return None;
    }
    Some(st)
}

/// The first entity of `known` (read at its version) that `now` shows at another version (or
/// gone): what dooms the transaction.
fn moved(
    known: &[(EntityKey, EntityCodec, u64)],
    now: &[Option<Snapshot>],
) -> Option<crate::txn::Doomed> {
    known.iter().zip(now).find_map(|((key, _, version), now)| {
        let found = now.as_ref().map(|s| s.version);
        // An entity created here (read at 0) is in the store as nothing.
        (found.unwrap_or(0) != *version).then(|| crate::txn::Doomed {
            key: key.clone(),
            read: *version,
            found,
        })
    })
}

/// Undoes a nested call's own nested writes when it ends without parking (see
/// [`TxnShared::undo`]).
struct UndoUnlessParked<'t> {
    txn: &'t TxnShared,
    op_id: OpId,
    armed: bool,
}

impl Drop for UndoUnlessParked<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.txn.undo(self.op_id);
        }
    }
}

/// The snapshots a nested call's body starts from: each target as the transaction has it
/// (read earlier, or written by an earlier nested call), else loaded — together with every
/// entity already in the transaction, which must not have changed (else the transaction is
/// doomed and this call rolled back).
async fn read_through<Err>(
    op: &Operation<'_>,
    txn: &Arc<TxnShared>,
    targets: &[Target<'_>],
) -> Result<(Vec<Snapshot>, Vec<u64>), ConflictError<Err>> {
    let rolled_back = || ConflictError::RolledBack {
        op_id: op.op_id,
        root_op_id: txn.root,
    };
    // What to load: the targets not in the transaction, then every entity in it.
    let (missing, known): (Vec<&Target<'_>>, Vec<(EntityKey, EntityCodec, u64)>) = {
        let st = txn.lock();
        if st.sealed || st.doomed.is_some() {
            return Err(rolled_back());
        }
        let missing: Vec<&Target<'_>> = targets
            .iter()
            .filter(|t| st.entry(t.key).is_none())
            .collect();
        let known = if missing.is_empty() {
            Vec::new()
        } else {
            st.known()
        };
        (missing, known)
    };
    if !missing.is_empty() {
        let scratch: Vec<SlotCache> = known.iter().map(|_| SlotCache::new()).collect();
        let first = missing
            .iter()
            .map(|t| (t.key, t.codec, &t.cache.slot))
            .collect();
        let list = beside_known(first, &known, &scratch);
        let loaded = op.by_deadline(op.rt.backend.load_many(&list)).await??;
        let (fresh, again) = loaded.split_at(missing.len().min(loaded.len()));
        let Some(mut st) = relock_unmoved(txn, &known, again) else {
            return Err(rolled_back());
        };
        for (t, snap) in missing.iter().zip(fresh) {
            let Some(snap) = snap else {
                return Err(ConflictError::Store(StoreError::NotFound {
                    key: t.key.clone(),
                }));
            };
            match st.entry(t.key) {
                // Another nested call (in another task) read it meanwhile: it must be the
                // same version.
                Some(e) if e.read_version != snap.version => {
                    st.doomed = Some(crate::txn::Doomed {
                        key: t.key.clone(),
                        read: e.read_version,
                        found: Some(snap.version),
                    });
                    return Err(rolled_back());
                }
                Some(_) => {}
                None => st.entries.push(Entry {
                    key: t.key.clone(),
                    codec: t.codec,
                    read_version: snap.version,
                    last_modified: snap.last_modified,
                    value: Some(snap.value.clone()),
                    role: Role::Read,
                    writes: 0,
                    history: Vec::new(),
                }),
            }
        }
    }
    let st = txn.lock();
    // Deleted (or not created) earlier in this transaction.
    if let Some(t) = targets.iter().find(|t| {
        st.entry(t.key)
            .is_some_and(|e| matches!(e.role, Role::Delete | Role::Absent))
    }) {
        return Err(ConflictError::Store(StoreError::NotFound {
            key: t.key.clone(),
        }));
    }
    from_transaction(&st, targets).ok_or_else(rolled_back)
}

/// Each target as the transaction has it, and how many nested writes each had: `None` if one
/// is not readable there (the root's written parameter, which the reentrancy check refuses
/// first).
fn from_transaction(
    st: &crate::txn::TxnState,
    targets: &[Target<'_>],
) -> Option<(Vec<Snapshot>, Vec<u64>)> {
    let mut seen = Vec::with_capacity(targets.len());
    let mut snaps = Vec::with_capacity(targets.len());
    for t in targets {
        let Entry {
            value: Some(value),
            read_version,
            last_modified,
            writes,
            ..
        } = st.entry(t.key)?
        else {
            return None;
        };
        seen.push(*writes);
        snaps.push(Snapshot {
            value: value.clone(),
            version: *read_version,
            last_modified: *last_modified,
        });
    }
    Some((snaps, seen))
}
