//! The operation hierarchy: which operation's body is running, and per-call overrides.
//!
//! Every body runs inside a task-local frame naming its operation. An annotated function called
//! from inside that body sees the frame, records the operation as its parent and inherits its
//! effective priority. [`scope`] sets a priority or a parent for the calls inside a future (for
//! example a task spawned from a body, which does not inherit task-locals).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use conflict_core::{EntityKey, OccConfig, OnLose, OpId, OperationPriority};

use crate::txn::TxnShared;

/// A running operation, as its children see it. Obtain it with [`current_operation`] and pass it
/// to [`Scope::parent`] to make calls in another task children of this operation.
///
/// Ancestry is a chain of shared links from child to parent. A link is created only for an
/// operation that already exists, with a fresh id, so a chain can never loop back on itself.
#[derive(Clone, Debug)]
pub struct OperationContext {
    pub(crate) link: Arc<Link>,
}

#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) runtime_id: u64,
    pub(crate) op_id: OpId,
    pub(crate) params: Params,
    pub(crate) effective_priority: OperationPriority,
    pub(crate) parent: Option<Arc<Link>>,
    /// Whether the body run (attempt) that handed this link out is still running; cleared when
    /// that run ends. Between its attempts and while it commits, an operation still holds its
    /// target, which `find_target` asks the runtime about.
    pub(crate) live: AtomicBool,
    /// The transaction of the body run that handed this link out (its root operation's
    /// attempt): nested calls made under this link compose into it.
    pub(crate) txn: Arc<TxnShared>,
    /// The written parameters this body run asked to [`delete`]: deleted instead of written
    /// when the call completes. `None` once the run is over (taken).
    pub(crate) deleted: crate::sync::Mutex<Option<Vec<EntityKey>>>,
}

impl Link {
    /// What the body run asked to delete; from now on `delete` under this link is refused
    /// (`Ended`), so no late request is silently dropped.
    pub(crate) fn take_deleted(&self) -> Vec<EntityKey> {
        self.deleted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .unwrap_or_default()
    }
}

/// An operation's entity parameters: the entities its body holds copies of.
#[derive(Clone, Debug)]
pub(crate) enum Params {
    /// One written entity (every single-entity call).
    One(EntityKey),
    /// Several, each with whether it is written (`&mut`) or only read (`#[read]`).
    Many(Arc<[(EntityKey, bool)]>),
}

impl Params {
    /// The first entity parameter.
    pub(crate) fn first(&self) -> &EntityKey {
        match self {
            Self::One(k) => k,
            Self::Many(all) => &all[0].0,
        }
    }

    /// Each entity parameter and whether it is written.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&EntityKey, bool)> + '_ {
        let (one, many) = match self {
            Self::One(k) => (Some((k, true)), &[][..]),
            Self::Many(all) => (None, &all[..]),
        };
        one.into_iter().chain(many.iter().map(|(k, w)| (k, *w)))
    }
}

impl OperationContext {
    /// The operation's id.
    #[must_use]
    pub fn op_id(&self) -> OpId {
        self.link.op_id
    }

    /// Its effective priority (what children inherit).
    #[must_use]
    pub fn effective_priority(&self) -> OperationPriority {
        self.link.effective_priority
    }

    /// The entity it executes on (a multi-entity call's first entity parameter).
    #[must_use]
    pub fn target(&self) -> &EntityKey {
        self.link.params.first()
    }

    /// Every entity parameter of the operation, in order.
    #[must_use]
    pub fn targets(&self) -> Vec<EntityKey> {
        self.link.params.iter().map(|(k, _)| k.clone()).collect()
    }

    /// The ids of its ancestors, nearest first (not including itself).
    #[must_use]
    pub fn ancestors(&self) -> Vec<OpId> {
        let mut out = Vec::new();
        let mut cur = self.link.parent.as_deref();
        while let Some(l) = cur {
            out.push(l.op_id);
            cur = l.parent.as_deref();
        }
        out
    }

    /// Whether the body run that handed out this context is still running. (Between two
    /// attempts, and while it commits, the operation itself still holds its entity: calls on
    /// that entity under this context are still `Reentrant` then.)
    ///
    /// ```
    /// # use conflict_runtime::prelude::*;
    /// # #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
    /// # struct Chore { #[entity(id)] id: EntityId }
    /// #[with_conflict_resolution]
    /// async fn own_context(_c: &mut Chore) -> Option<conflict_runtime::operation::OperationContext> {
    ///     conflict_runtime::operation::current_operation()
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let rt = Runtime::in_memory();
    /// let chore = rt.insert(Chore { id: EntityId::new() }).await.unwrap();
    /// let ctx = own_context(&chore).await.unwrap().value.unwrap();
    /// assert!(!ctx.is_running()); // the call has ended
    /// # }
    /// ```
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.link.live.load(Ordering::Acquire)
    }

    /// The nearest operation in this chain (itself included) of runtime `runtime_id` that is
    /// executing on `target`. Only ancestors that still hold the target count: one whose body
    /// is running, or whose body ended but which `holds(op_id)` says still executes on the
    /// target (between attempts, committing). An operation that has ended holds nothing.
    pub(crate) fn find_target(
        &self,
        runtime_id: u64,
        target: &EntityKey,
        holds: impl Fn(OpId) -> bool,
    ) -> Option<OpId> {
        self.find_conflicting(runtime_id, target, true, holds)
    }

    /// The nearest operation in this chain (itself included) of runtime `runtime_id` whose
    /// running body has a copy of `key` that a nested call using it would get wrong: any copy
    /// if the nested call `writes` it (the ancestor's copy would go stale, or overwrite it), a
    /// written copy if it only reads it (its pending change is in the ancestor's copy only).
    /// Ancestors whose body ended count while `holds(op_id)` (still executing on the target).
    pub(crate) fn find_conflicting(
        &self,
        runtime_id: u64,
        key: &EntityKey,
        writes: bool,
        holds: impl Fn(OpId) -> bool,
    ) -> Option<OpId> {
        let mut cur = Some(&*self.link);
        while let Some(l) = cur {
            if l.runtime_id == runtime_id
                && l.params.iter().any(|(k, w)| k == key && (writes || w))
                && (l.live.load(Ordering::Acquire) || holds(l.op_id))
            {
                return Some(l.op_id);
            }
            cur = l.parent.as_deref();
        }
        None
    }

    /// The nearest operation in this chain (itself included) of runtime `runtime_id` that
    /// `holds(op_id)` says executes on a staged target (a detached call staging there would wait
    /// for its own caller).
    pub(crate) fn find_holder(
        &self,
        runtime_id: u64,
        holds: impl Fn(OpId) -> bool,
    ) -> Option<OpId> {
        let mut cur = Some(&*self.link);
        while let Some(l) = cur {
            if l.runtime_id == runtime_id && holds(l.op_id) {
                return Some(l.op_id);
            }
            cur = l.parent.as_deref();
        }
        None
    }

    /// The transaction nested calls under this context compose into.
    pub(crate) fn txn(&self) -> &Arc<TxnShared> {
        &self.link.txn
    }
}

/// What the task-local holds: the operation whose body runs (built lazily) and the per-call
/// overrides.
#[derive(Default)]
pub(crate) struct Frame {
    current: Current,
    priority: Option<OperationPriority>,
    /// The rarer overrides, boxed: every body runs in a frame, and a small frame is cheap to
    /// move in and out of the task-local.
    rest: Option<Box<Overrides>>,
}

impl Frame {
    fn new(current: Current, o: Overrides) -> Self {
        let rare = o.on_lose.is_some() || o.max_retries.is_some() || o.deadline.is_some();
        Self {
            current,
            priority: o.priority,
            rest: rare.then(|| Box::new(o)),
        }
    }

    fn overrides(&self) -> Overrides {
        match &self.rest {
            Some(o) => Overrides {
                priority: self.priority,
                ..**o
            },
            None => Overrides {
                priority: self.priority,
                ..Overrides::default()
            },
        }
    }
}

/// Per-call overrides set by a [`Scope`] (each `None`: the attribute's setting).
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Overrides {
    pub(crate) priority: Option<OperationPriority>,
    pub(crate) on_lose: Option<OnLose>,
    pub(crate) max_retries: Option<u32>,
    pub(crate) deadline: Option<Deadline>,
}

/// When a call must have finished.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deadline {
    /// At this instant.
    At(tokio::time::Instant),
    /// This long after the call is submitted.
    After(std::time::Duration),
}

#[derive(Default)]
enum Current {
    #[default]
    None,
    Ready(OperationContext),
    /// A running body's operation. Its shared link is only allocated if something asks for it
    /// (a nested call or `current_operation()`), which most bodies never do.
    Lazy(LazyLink),
    /// Under `scope().detached()`: no parent, but the operation it was detached from.
    Detached(OperationContext),
}

/// The data of a [`Link`], and the link once it is built.
pub(crate) struct LazyLink {
    pub(crate) runtime_id: u64,
    pub(crate) op_id: OpId,
    pub(crate) params: Params,
    pub(crate) effective_priority: OperationPriority,
    pub(crate) parent: Option<OperationContext>,
    /// The transaction nested calls compose into: given (a multi-entity root, or a composed
    /// call, which uses its root's), or made when the link is built for a single-entity root,
    /// from `version`, the version its body's copy was read at.
    txn: TxnSeed,
    built: std::cell::OnceCell<OperationContext>,
}

pub(crate) enum TxnSeed {
    Given(Arc<TxnShared>),
    /// A single-entity root's: its entity, read at this version.
    Root {
        version: u64,
        codec: crate::store::EntityCodec,
    },
}

impl LazyLink {
    pub(crate) fn new(
        runtime_id: u64,
        op_id: OpId,
        params: Params,
        effective_priority: OperationPriority,
        parent: Option<OperationContext>,
        txn: TxnSeed,
    ) -> Self {
        Self {
            runtime_id,
            op_id,
            params,
            effective_priority,
            parent,
            txn,
            built: std::cell::OnceCell::new(),
        }
    }

    fn get(&self) -> OperationContext {
        self.built
            .get_or_init(|| OperationContext {
                link: Arc::new(Link {
                    runtime_id: self.runtime_id,
                    op_id: self.op_id,
                    params: self.params.clone(),
                    effective_priority: self.effective_priority,
                    parent: self.parent.as_ref().map(|p| p.link.clone()),
                    live: AtomicBool::new(true),
                    deleted: crate::sync::Mutex::new(Some(Vec::new())),
                    txn: match &self.txn {
                        TxnSeed::Given(t) => t.clone(),
                        TxnSeed::Root { version, codec } => Arc::new(TxnShared::for_root(
                            self.runtime_id,
                            self.op_id,
                            self.params.first().clone(),
                            *codec,
                            *version,
                        )),
                    },
                }),
            })
            .clone()
    }

    /// The entity parameters this body run asked to delete (none if its link was never built).
    pub(crate) fn take_deleted(&self) -> Vec<EntityKey> {
        self.built
            .get()
            .map(|c| c.link.take_deleted())
            .unwrap_or_default()
    }

    /// Ends the body run, keeping the transaction nested calls composed into (if a single-entity
    /// root's link made one) for the root to commit; its owner abandons it when dropped.
    pub(crate) fn into_txn(mut self) -> Option<crate::txn::TxnOwner> {
        if !matches!(self.txn, TxnSeed::Root { .. }) {
            return None;
        }
        let txn = self.built.get()?.link.txn.clone();
        self.txn = TxnSeed::Given(txn.clone());
        Some(crate::txn::TxnOwner(txn))
    }
}

impl Drop for LazyLink {
    /// The body run ends (completed, interrupted or dropped): contexts handed out from it stop
    /// counting as a running ancestor.
    fn drop(&mut self) {
        if let Some(ctx) = self.built.get() {
            ctx.link.live.store(false, Ordering::Release);
            if let TxnSeed::Root { .. } = self.txn {
                // A single-entity root owns the transaction its link made.
                ctx.link.txn.abandon();
            }
        }
    }
}

impl Current {
    fn context(&self) -> Option<OperationContext> {
        match self {
            Self::None | Self::Detached(_) => None,
            Self::Ready(c) => Some(c.clone()),
            Self::Lazy(l) => Some(l.get()),
        }
    }

    /// The operation a detached scope was started under (not a parent: only checked so that a
    /// detached call does not wait for a target its own caller's chain holds).
    fn origin(&self) -> Option<OperationContext> {
        match self {
            Self::Detached(c) => Some(c.clone()),
            _ => None,
        }
    }
}

#[cfg(not(shuttle))]
tokio::task_local! {
    static FRAME: Frame;
}

// Under shuttle, in shuttle's per-task storage (see `crate::sync::task_local`).
#[cfg(shuttle)]
shuttle::thread_local! {
    static FRAME_SLOT: std::cell::RefCell<Option<Frame>> = std::cell::RefCell::new(None);
}
#[cfg(shuttle)]
static FRAME: crate::sync::task_local::TaskLocal<Frame> =
    crate::sync::task_local::TaskLocal(&FRAME_SLOT);

/// What a new operation inherits from where it is called.
pub(crate) struct Inherited {
    pub(crate) current: Option<OperationContext>,
    /// Under `scope().detached()`: the operation it was detached from.
    pub(crate) origin: Option<OperationContext>,
    pub(crate) overrides: Overrides,
}

/// What a new operation inherits from where it is called.
pub(crate) fn inherited() -> Inherited {
    FRAME
        .try_with(|f| Inherited {
            current: f.current.context(),
            origin: f.current.origin(),
            overrides: f.overrides(),
        })
        .unwrap_or(Inherited {
            current: None,
            origin: None,
            overrides: Overrides::default(),
        })
}

/// Runs `fut` as the body of `op`: calls inside see it as their parent. (Not an `async fn`:
/// that would keep `fut` twice in the caller's future, once as argument, once in the scope.)
/// Once it has completed, [`body_link`] takes `op` back out.
pub(crate) fn run_as<F: Future>(op: LazyLink, fut: F) -> crate::sync::TaskLocalFuture<Frame, F> {
    FRAME.scope(
        Frame {
            current: Current::Lazy(op),
            priority: None,
            rest: None,
        },
        fut,
    )
}

/// The link a completed [`run_as`] ran its body as (to reach the transaction its nested calls
/// composed into). Dropping it ends the body run for nested calls' checks.
pub(crate) fn body_link<F: Future>(
    fut: std::pin::Pin<&mut crate::sync::TaskLocalFuture<Frame, F>>,
) -> Option<LazyLink> {
    match fut.take_value()?.current {
        Current::Lazy(l) => Some(l),
        Current::None | Current::Ready(_) | Current::Detached(_) => None,
    }
}

/// The running body an insert on runtime `runtime_id` joins (none outside bodies, under
/// `scope().detached()`, and in a body of another runtime).
pub(crate) fn composing(runtime_id: u64) -> Option<OperationContext> {
    current_operation().filter(|c| c.link.runtime_id == runtime_id)
}

/// The operation whose body is running in this task, if any.
///
/// ```
/// assert!(conflict_runtime::operation::current_operation().is_none());
/// ```
#[must_use]
pub fn current_operation() -> Option<OperationContext> {
    FRAME.try_with(|f| f.current.context()).ok().flatten()
}

/// Deletes `entity`, a `&mut` entity parameter of the call whose body is running, when that
/// call completes: instead of writing its new value, the call's commit deletes it (all or
/// nothing with the call's other writes; see [`crate::store`] for tombstones). If the call
/// does not commit, nothing is deleted. After the commit, handles to the entity get
/// [`StoreError::NotFound`](crate::store::StoreError::NotFound), and inserting it again
/// continues its versions.
///
/// Synchronous: it only marks the parameter. In a nested call it deletes the nested call's
/// parameter, as part of its root's commit.
///
/// # Errors
///
/// [`DeleteError::OutsideCall`](conflict_core::DeleteError::OutsideCall) outside any body
/// (or under [`Scope::detached`]), [`DeleteError::NotWritten`](conflict_core::DeleteError::NotWritten)
/// if `entity` is not a `&mut` parameter of the running call (a `#[read]` one, or another
/// entity), and [`DeleteError::Ended`](conflict_core::DeleteError::Ended) once the body run has
/// ended.
///
/// ```
/// use conflict_runtime::prelude::*;
/// use conflict_runtime::store::StoreError;
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
/// struct Basket {
///     #[entity(id)]
///     id: EntityId,
///     items: u32,
/// }
///
/// #[with_conflict_resolution]
/// async fn check_out(basket: &mut Basket) -> Result<u32, conflict_runtime::error::DeleteError> {
///     let items = basket.items;
///     conflict_runtime::operation::delete(basket)?;
///     Ok(items)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let rt = Runtime::in_memory();
/// let basket = rt.insert(Basket { id: EntityId::new(), items: 3 }).await.unwrap();
/// let done = check_out(&basket).await.unwrap();
/// assert_eq!((done.value, done.version), (3, 2)); // the tombstone is version 2
/// assert!(matches!(basket.load().await, Err(StoreError::NotFound { .. })));
/// assert!(matches!(
///     conflict_runtime::operation::delete(&Basket { id: EntityId::new(), items: 0 }),
///     Err(conflict_runtime::error::DeleteError::OutsideCall)
/// ));
/// # }
/// ```
pub fn delete<E: conflict_core::Entity>(entity: &E) -> Result<(), conflict_core::DeleteError> {
    use conflict_core::DeleteError;
    let Some(ctx) = current_operation() else {
        return Err(DeleteError::OutsideCall);
    };
    let key = entity.key();
    let link = &ctx.link;
    if !link.params.iter().any(|(k, write)| write && *k == key) {
        return Err(DeleteError::NotWritten {
            op_id: link.op_id,
            target: key,
        });
    }
    let mut deleted = link
        .deleted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Taken (the run is over) or not running any more: too late.
    let Some(keys) = deleted.as_mut().filter(|_| ctx.is_running()) else {
        return Err(DeleteError::Ended { op_id: link.op_id });
    };
    if !keys.contains(&key) {
        keys.push(key);
    }
    Ok(())
}

/// Starts a per-call override: see [`Scope`].
///
/// ```
/// use conflict_runtime::prelude::*;
///
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Entity)]
/// # struct Wallet { #[entity(id)] id: EntityId, balance: i64 }
/// #[with_conflict_resolution(occ(max_retries = 3))]
/// async fn deposit(account: &mut Wallet, amount: i64) -> i64 {
///     account.balance += amount;
///     account.balance
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let rt = Runtime::in_memory();
/// let wallet = rt.insert(Wallet { id: EntityId::new(), balance: 0 }).await.unwrap();
/// let done = conflict_runtime::operation::scope()
///     .priority(OperationPriority::CRITICAL)
///     .run(deposit(&wallet, 5))
///     .await
///     .unwrap();
/// assert_eq!(done.value, 5);
/// # }
/// ```
pub fn scope() -> Scope {
    // Starts from the enclosing scope's overrides (a nested scope refines them), but not from a
    // body's: a body runs with none, so children never inherit their parent's.
    let inherited = inherited();
    Scope {
        current: inherited.current,
        origin: inherited.origin,
        overrides: inherited.overrides,
    }
}

/// Overrides for the operations started inside one future: their own priority, what they do
/// on losing their staging group, their retry budget, a deadline, their parent.
///
/// The override applies to operations started directly in the future (not to the children they
/// start in turn, which inherit from their parent as usual). A scope created inside another
/// starts from the outer one's overrides.
///
/// ```
/// use conflict_runtime::prelude::*;
/// use std::time::Duration;
///
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Entity)]
/// # struct Seat { #[entity(id)] id: EntityId, taken: bool }
/// #[with_conflict_resolution]
/// async fn book(seat: &mut Seat) -> bool {
///     let was_free = !seat.taken;
///     seat.taken = true;
///     was_free
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let rt = Runtime::in_memory();
/// let seat = rt.insert(Seat { id: EntityId::new(), taken: false }).await.unwrap();
/// let done = conflict_runtime::operation::scope()
///     .on_lose(OnLose::Requeue)         // wait for the next round instead of being rejected
///     .max_retries(20)                  // more OCC retries than the attribute's
///     .timeout(Duration::from_secs(1))  // or end with DeadlineExceeded, committing nothing
///     .run(book(&seat))
///     .await
///     .unwrap();
/// assert!(done.value);
/// # }
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct Scope {
    current: Option<OperationContext>,
    origin: Option<OperationContext>,
    overrides: Overrides,
}

impl Scope {
    /// Runs the calls with this own priority instead of the one their attribute declares.
    pub fn priority(mut self, priority: OperationPriority) -> Self {
        self.overrides.priority = Some(priority);
        self
    }

    /// What the calls do when they lose their staging group, instead of their attribute's
    /// `pre_ecs(on_lose = ..)`.
    pub fn on_lose(mut self, on_lose: OnLose) -> Self {
        self.overrides.on_lose = Some(on_lose);
        self
    }

    /// The calls' OCC retries after the first attempt, instead of their attribute's
    /// `occ(max_retries = ..)` (at most [`OccConfig::MAX_RETRIES`]; more is capped). A function
    /// whose OCC stage is off still does not retry.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.overrides.max_retries = Some(retries.min(OccConfig::MAX_RETRIES));
        self
    }

    /// Each call must finish by `deadline`: one that cannot — still staged, still in its body,
    /// or about to commit or to wait before a retry at that instant — ends with
    /// [`ConflictError::DeadlineExceeded`](crate::ConflictError::DeadlineExceeded), having
    /// committed nothing. A commit already sent to the store when the deadline passes is not
    /// cut short (it may be applying): the call then ends with that commit's outcome.
    pub fn deadline(mut self, deadline: tokio::time::Instant) -> Self {
        self.overrides.deadline = Some(Deadline::At(deadline));
        self
    }

    /// As [`deadline`](Self::deadline), `timeout` after each call is submitted.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.overrides.deadline = Some(Deadline::After(timeout));
        self
    }

    /// Makes the calls children of `parent` (inheriting its effective priority and its
    /// ancestry), e.g. in a task spawned from `parent`'s body.
    pub fn parent(mut self, parent: OperationContext) -> Self {
        self.current = Some(parent);
        self.origin = None;
        self
    }

    /// Makes the calls top-level operations (no parent), even inside a body.
    pub fn detached(mut self) -> Self {
        self.origin = self.current.take().or(self.origin);
        self
    }

    /// Runs `fut` with these overrides.
    pub async fn run<F: Future>(self, fut: F) -> F::Output {
        FRAME
            .scope(
                Frame::new(
                    match (self.current, self.origin) {
                        (Some(c), _) => Current::Ready(c),
                        (None, Some(o)) => Current::Detached(o),
                        (None, None) => Current::None,
                    },
                    self.overrides,
                ),
                fut,
            )
            .await
    }
}
