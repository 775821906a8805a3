//! The runtime: its builder, its shared state (`Inner`), and its public facade (inserting,
//! handles, status, shutdown). Calls run in `occ`; handles are in `handle`; the shutdown state
//! machine is in `lifecycle`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conflict_core::{
    CleanupError, ConfigError, Entity, EntityIdType, EntityKey, OperationRecord, OutcomeKind,
    StoreError,
};
use serde::{Deserialize, Serialize};

use crate::cleanup::{
    Handler, Handlers, HealthReport, MemoryPressure, Operations, Registry, SystemMemory,
};
use crate::events::{EventBus, EventSubscriber};
use crate::handle::Handle;
use crate::lifecycle::Lifecycle;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::registry::{self, OperationSpec};
use crate::staging::{Staging, StagingStatus};
use crate::store::{Backend, EntityStore, MemoryStore, SlotCache};

/// The framework's runtime: a store, the staging coordinator, events and metrics.
///
/// Cheap to clone (an `Arc`); every clone is the same runtime. Annotated functions reach it
/// through the [`Handle`] they are called with, so there is no global state.
///
/// ```
/// use conflict_runtime::prelude::*;
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
/// struct Savings { #[entity(id)] id: EntityId, balance: i64 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = Runtime::in_memory();
/// let acct = rt.insert(Savings { id: EntityId::new(), balance: 10 }).await?;
/// let again: Handle<Savings> = rt.handle(acct.id());
/// assert_eq!(again.load().await?.value.balance, 10);
/// let report = rt.shutdown(std::time::Duration::from_secs(1)).await;
/// assert_eq!(report.still_running, 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Random per-runtime prefix of op ids; also tells runtimes apart in operation chains.
    pub(crate) id: u64,
    seq: AtomicU64,
    pub(crate) backend: Backend,
    pub(crate) staging: Arc<Staging>,
    pub(crate) events: EventBus,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) cleanup: Arc<Registry>,
    /// A monotonic instant and the wall time at that instant, taken at build: wall times are
    /// derived from instants (monotonic, like `last_modified` must be) without a second
    /// clock read.
    anchor: (tokio::time::Instant, std::time::SystemTime),
}

impl Inner {
    /// The wall time at `at`, derived from the runtime's anchor.
    #[inline]
    pub(crate) fn wall_time(&self, at: tokio::time::Instant) -> std::time::SystemTime {
        let (i0, s0) = self.anchor;
        s0 + at.saturating_duration_since(i0)
    }

    /// The next submission number (1, 2, ...).
    #[inline]
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Configures and builds a [`Runtime`].
///
/// ```
/// use conflict_runtime::Runtime;
/// let rt = Runtime::builder().max_staged_total(10_000).event_capacity(4096).build().unwrap();
/// assert_eq!(rt.staging_status().capacity, 10_000);
/// ```
#[must_use]
pub struct RuntimeBuilder {
    store: Option<Arc<dyn EntityStore>>,
    max_staged_total: usize,
    event_capacity: usize,
    handlers: Vec<Handler>,
    memory_pressure: Option<Arc<dyn MemoryPressure>>,
    keep_succeeded: usize,
    succeeded_max_age: Duration,
}

impl RuntimeBuilder {
    /// Uses `store` instead of the embedded in-memory store.
    pub fn store<S: EntityStore>(mut self, store: S) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Uses a shared store.
    pub fn shared_store(mut self, store: Arc<dyn EntityStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses a [`PgStore`](crate::store::PgStore) on `url` (feature `postgres`): connects and
    /// creates or migrates its schema ([`PgStore::connect`](crate::store::PgStore::connect)).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rt = conflict_runtime::Runtime::builder()
    ///     .postgres("postgres://app@127.0.0.1:5432/app")
    ///     .await?
    ///     .build()?;
    /// assert_eq!(rt.store_name(), "postgres");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A [`StoreError`] if the database cannot be reached or its schema cannot be set up.
    #[cfg(feature = "postgres")]
    pub async fn postgres(self, url: &str) -> Result<Self, StoreError> {
        let store = crate::store::PgStore::connect(url).await?;
        Ok(self.store(store))
    }

    /// The most operations that may wait in staging areas at once, all targets together
    /// (default 65536, at least 1). Beyond it arrivals are refused with `Overloaded` unless they
    /// outrank a staged operation on their target.
    pub fn max_staged_total(mut self, n: usize) -> Self {
        self.max_staged_total = n;
        self
    }

    /// How many events a subscriber may fall behind before it misses some (default 1024).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// Registers a cleanup handler in code, as `#[cleanup_handler(name)]` does at link time.
    /// Functions with `cleanup(strategy = "custom", custom_cleanup_handler = name)` use it.
    /// The handler returns `Ok(())` (remove the record) or `Ok(CleanupAction::Keep)`; an error
    /// or a panic is retried, then the record is kept and the handler reported as failed.
    ///
    /// ```
    /// use conflict_runtime::{cleanup::CleanupError, operation::OperationRecord, Runtime};
    /// let rt = Runtime::builder()
    ///     .cleanup_handler("log", |rec: OperationRecord| async move {
    ///         println!("cleaning {}", rec.op_id);
    ///         Ok::<(), CleanupError>(())
    ///     })
    ///     .build()
    ///     .unwrap();
    /// assert!(rt.cleanup_handlers().contains(&"log".to_string()));
    /// ```
    pub fn cleanup_handler<F, Fut, T>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(OperationRecord) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, CleanupError>> + Send + 'static,
        T: Into<conflict_core::CleanupAction>,
    {
        self.handlers.push(Handler::new(
            name,
            "RuntimeBuilder::cleanup_handler",
            handler,
        ));
        self
    }

    /// Where memory pressure comes from (default: [`SystemMemory`], the cgroup limit or
    /// `/proc/meminfo`). Tests pass a fixed value.
    pub fn memory_pressure(mut self, source: impl MemoryPressure) -> Self {
        self.memory_pressure = Some(Arc::new(source));
        self
    }

    /// How many of the most recent succeeded records the registry shows, and for how long
    /// (default 1024 records, 10 minutes). `0` keeps none. Records are buffered per thread, so
    /// up to `records` per thread (at most 16 buffers) are held in memory.
    pub fn keep_succeeded(mut self, records: usize, max_age: Duration) -> Self {
        self.keep_succeeded = records;
        self.succeeded_max_age = max_age;
        self
    }

    /// Validates the configuration of every annotated function linked into the program and
    /// builds the runtime.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for `max_staged_total = 0` or an `event_capacity` outside
    /// `1..=usize::MAX/4`; [`ConfigError::DuplicateEntityType`] when two linked entity types
    /// share a type name; [`ConfigError::InOperation`] when an annotated function's
    /// configuration is invalid; [`ConfigError::DuplicateCleanupHandler`] when two cleanup
    /// handlers share a name; [`ConfigError::UnknownCleanupHandler`] when a function names a
    /// handler nobody registered.
    pub fn build(self) -> Result<Runtime, ConfigError> {
        if self.max_staged_total == 0 {
            return Err(ConfigError::OutOfRange {
                field: "max_staged_total",
                value: "0".into(),
                expected: "at least 1",
            });
        }
        if self.event_capacity == 0 || self.event_capacity > (usize::MAX >> 2) {
            return Err(ConfigError::OutOfRange {
                field: "event_capacity",
                value: self.event_capacity.to_string(),
                expected: "1..=usize::MAX/4",
            });
        }
        registry::validate_linked()?;
        let handlers = Handlers::collect(self.handlers)?;
        let backend = match self.store {
            Some(s) => Backend::Dyn(s),
            None => Backend::Memory(Arc::new(MemoryStore::new())),
        };
        let metrics = Arc::new(Metrics::new());
        let cleanup = Registry::new(
            metrics.clone(),
            self.memory_pressure
                .unwrap_or_else(|| Arc::new(SystemMemory::new())),
            handlers,
            self.keep_succeeded,
            self.succeeded_max_age,
        );
        Ok(Runtime {
            inner: Arc::new(Inner {
                id: fastrand::u64(..),
                seq: AtomicU64::new(0),
                backend,
                staging: Arc::new(Staging::new(self.max_staged_total, metrics.clone())),
                events: EventBus::new(self.event_capacity),
                metrics,
                lifecycle: Lifecycle::new(),
                cleanup,
                anchor: (tokio::time::Instant::now(), std::time::SystemTime::now()),
            }),
        })
    }
}

impl Runtime {
    /// A runtime on the embedded in-memory store with default settings.
    ///
    /// # Panics
    /// With the message [`RuntimeBuilder::build`] would return as an error, if the annotated
    /// functions linked into the program are misconfigured (e.g. two entity types share a name).
    #[must_use]
    pub fn in_memory() -> Self {
        match Self::builder().build() {
            Ok(rt) => rt,
            Err(e) => panic!("conflict runtime configuration is invalid: {e}"),
        }
    }

    /// A builder with default settings.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            store: None,
            max_staged_total: 65_536,
            event_capacity: 1024,
            handlers: Vec::new(),
            memory_pressure: None,
            keep_succeeded: 1024,
            succeeded_max_age: Duration::from_secs(600),
        }
    }

    /// Stores a new entity (version 1, or over a deleted entity's tombstone its version + 1)
    /// and returns a handle to it.
    ///
    /// **Inside an annotated function's body** (of this runtime, and not under
    /// [`scope().detached()`](crate::operation::Scope::detached)) the insert joins that call's
    /// commit, like a nested call: the entity is created by the commit of the call's root
    /// operation, all or nothing with its writes, and not at all if that attempt does not commit
    /// (when the root runs its body again, the insert runs again too). Until then the handle
    /// reaches it only through nested calls of the same root; [`Handle::load`] finds it once the
    /// root has committed. Two roots creating one key: one commits, the other runs again and
    /// gets `AlreadyExists`.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`] if an entity with this key is stored already (or created
    /// earlier in the same root's attempt), [`StoreError::RolledBack`] if the body it was made
    /// in has ended or its attempt cannot commit any more, and the store's own failures
    /// ([`StoreError::Backend`] for a persistent store; its message says whether the entity
    /// may have been stored).
    ///
    /// ```
    /// use conflict_runtime::prelude::*;
    ///
    /// #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
    /// struct Shelf {
    ///     #[entity(id)]
    ///     id: EntityId,
    ///     free: u32,
    /// }
    /// #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
    /// struct Hold {
    ///     #[entity(id)]
    ///     id: EntityId,
    ///     shelf: EntityId,
    /// }
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// enum HoldError {
    ///     #[error("the shelf is full")]
    ///     Full,
    ///     #[error(transparent)]
    ///     Store(#[from] conflict_runtime::store::StoreError),
    /// }
    ///
    /// /// Takes a place and creates its hold, in one commit.
    /// #[with_conflict_resolution]
    /// async fn hold(shelf: &mut Shelf, rt: Runtime) -> Result<Handle<Hold>, HoldError> {
    ///     let hold = rt.insert(Hold { id: EntityId::new(), shelf: shelf.id }).await?;
    ///     if shelf.free == 0 {
    ///         return Err(HoldError::Full); // nothing is committed: no hold is created
    ///     }
    ///     shelf.free -= 1;
    ///     Ok(hold)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let rt = Runtime::in_memory();
    /// let shelf = rt.insert(Shelf { id: EntityId::new(), free: 1 }).await.unwrap();
    /// let held = hold(&shelf, rt.clone()).await.unwrap();
    /// assert_eq!(held.value.load().await.unwrap().version, 1);
    /// assert!(matches!(hold(&shelf, rt.clone()).await, Err(ConflictError::Body(HoldError::Full))));
    /// assert_eq!(shelf.load().await.unwrap().value.free, 0);
    /// # }
    /// ```
    pub async fn insert<E: Entity>(&self, entity: E) -> Result<Handle<E>, StoreError> {
        let key = entity.key();
        if let Some(ctx) = crate::context::composing(self.inner.id) {
            let codec = crate::store::EntityCodec::of::<E>();
            crate::occ::insert_composed(&self.inner, &ctx, Arc::new(entity), codec).await?;
            return Ok(Handle::new(self.clone(), key, SlotCache::default()));
        }
        let (_, slot) = self
            .inner
            .backend
            .insert(
                key.clone(),
                Arc::new(entity),
                self.inner.wall_time(tokio::time::Instant::now()),
            )
            .await?;
        Ok(Handle::new(self.clone(), key, slot))
    }

    /// A handle to an entity that already exists (nothing is checked until it is used). The id
    /// is the entity's own id type: an [`EntityId`](crate::EntityId), or its typed id
    /// ([`typed_id!`](crate::typed_id)).
    pub fn handle<E: Entity>(&self, id: E::Id) -> Handle<E> {
        let key = EntityKey::new(E::TYPE_NAME, id.entity_id());
        Handle::new(self.clone(), key, SlotCache::default())
    }

    /// Subscribes to operation events (see [`EventSubscriber`]).
    #[must_use]
    pub fn subscribe(&self) -> EventSubscriber {
        self.inner.events.subscribe(self.inner.metrics.clone())
    }

    /// A snapshot of the runtime's metrics.
    #[must_use]
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// What is staged and executing, per target and in total.
    #[must_use]
    pub fn staging_status(&self) -> StagingStatus {
        self.inner.staging.status()
    }

    /// The registry of ended operations: query records by id, target or status.
    ///
    /// ```
    /// # use conflict_runtime::prelude::*;
    /// # #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
    /// # struct Tally { #[entity(id)] id: EntityId, n: u64 }
    /// #[with_conflict_resolution]
    /// async fn tally(t: &mut Tally) -> u64 { t.n += 1; t.n }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let rt = Runtime::in_memory();
    /// let t = rt.insert(Tally { id: EntityId::new(), n: 0 }).await.unwrap();
    /// let done = tally(&t).await.unwrap();
    /// let rec = rt.operations().get(done.op_id).unwrap();
    /// assert_eq!(rec.status, conflict_runtime::operation::OperationStatus::Succeeded);
    /// assert_eq!(rec.version, Some(2));
    /// # }
    /// ```
    #[must_use]
    pub fn operations(&self) -> Operations<'_> {
        Operations {
            registry: &self.inner.cleanup,
        }
    }

    /// The health check: zombies, memory pressure, cleanup tasks and failed handlers.
    #[must_use]
    pub fn health(&self) -> HealthReport {
        let reg = &self.inner.cleanup;
        HealthReport::assess(
            reg.zombie_count(),
            reg.zombies_by_target(),
            reg.memory_pressure(),
            reg.active_tasks(),
            reg.failed_handlers(),
        )
    }

    /// Every annotated function linked into the program, with its configuration.
    #[must_use]
    pub fn registered_operations(&self) -> Vec<&'static OperationSpec> {
        let mut ops: Vec<_> = registry::linked_operations().collect();
        ops.sort_by(|a, b| (a.module, a.name).cmp(&(b.module, b.name)));
        ops
    }

    /// The names of the cleanup handlers this runtime knows.
    #[must_use]
    pub fn cleanup_handlers(&self) -> Vec<String> {
        self.inner.cleanup.handlers.names()
    }

    /// Waits until no cleanup handler is running, or `timeout` passes; true when idle.
    pub async fn cleanup_idle(&self, timeout: Duration) -> bool {
        self.inner
            .cleanup
            .wait_idle(Some(tokio::time::Instant::now() + timeout))
            .await
    }

    /// Runs the deferred-cleanup sweep now (the background sweeper runs it at the check
    /// interval); returns how many records it removed.
    #[allow(
        clippy::must_use_candidate,
        reason = "called for the sweep; the count is for those who want it (callers drop it)"
    )]
    pub fn sweep_expired(&self) -> u64 {
        self.inner.cleanup.sweep()
    }

    /// The name of the store backend (`"memory"`, `"postgres"`, ...).
    #[must_use]
    pub fn store_name(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    #[must_use]
    pub fn is_shutting_down(&self) -> bool {
        self.inner.lifecycle.draining()
    }

    /// Forgets the staging state of idle targets that no handle keeps (it is recreated on
    /// demand). Returns how many were removed.
    ///
    /// Rarely needed: a target's state is freed by itself when the last handle that called it
    /// is dropped and nothing is staged or executing there, so this finds only what a race left
    /// behind. It is safe beside running calls and other evictors.
    ///
    /// ```
    /// # use conflict_runtime::prelude::*;
    /// # #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
    /// # struct Visits { #[entity(id)] id: EntityId, n: u64 }
    /// #[with_conflict_resolution]
    /// async fn visit(v: &mut Visits) -> u64 { v.n += 1; v.n }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let rt = Runtime::in_memory();
    /// let t = rt.insert(Visits { id: EntityId::new(), n: 0 }).await.unwrap();
    /// visit(&t).await.unwrap();
    /// assert_eq!(rt.staging_status().tracked_targets, 1); // the handle keeps it
    /// drop(t);
    /// assert_eq!(rt.staging_status().tracked_targets, 0); // freed with the last handle
    /// assert_eq!(rt.evict_idle_targets(), 0);
    /// # }
    /// ```
    #[allow(
        clippy::must_use_candidate,
        reason = "called for the eviction; the count is for those who want it (callers drop it)"
    )]
    pub fn evict_idle_targets(&self) -> usize {
        self.inner.staging.evict_idle()
    }

    /// Shuts down gracefully and reports how every operation ended.
    ///
    /// 1. New calls are refused with `ConflictError::ShuttingDown`.
    /// 2. Every staged operation ends with `ShuttingDown`.
    /// 3. Executing operations may finish (commit or fail) until `timeout`.
    /// 4. Then the rest are stopped: their bodies are dropped, nothing more is committed, and
    ///    their callers get `ShuttingDown`.
    ///
    /// The runtime spawns no tasks of its own, so none is left running afterwards. Calling it
    /// again returns a fresh report at once.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let inner = &self.inner;
        let started = tokio::time::Instant::now();
        let first = inner.lifecycle.begin_shutdown();
        let staged_ended = if first { inner.staging.shut_down() } else { 0 };
        let deadline = started + timeout;
        let mut timed_out = false;
        if !inner.lifecycle.wait_drained(&inner.metrics, deadline).await {
            timed_out = true;
            inner.lifecycle.abort.trigger();
            inner.staging.wake_executing();
            // Stopped operations end as soon as their callers poll them; a caller that never
            // polls again cannot be waited for, so this second wait is bounded too.
            let again = tokio::time::Instant::now() + timeout.max(Duration::from_millis(100));
            inner.lifecycle.wait_drained(&inner.metrics, again).await;
        }
        // Cleanup handlers get what is left of the timeout; then they and the sweeper stop.
        inner
            .cleanup
            .wait_idle(Some(deadline.max(tokio::time::Instant::now())))
            .await;
        inner.cleanup.stop_tasks();
        inner.lifecycle.stopped();
        // One snapshot for all three figures, so that `submitted = Σ outcomes + still_running`
        // holds exactly even while late callers are still being refused.
        let m = inner.metrics.snapshot();
        ShutdownReport {
            submitted: m.submitted.max(m.ended),
            outcomes: m.outcomes,
            staged_ended_by_shutdown: staged_ended,
            timed_out,
            still_running: m.in_flight,
            elapsed: started.elapsed(),
        }
    }
}

/// How every operation of a runtime ended, returned by [`Runtime::shutdown`].
///
/// `submitted = Σ outcomes + still_running`; `still_running` is 0 unless a caller stopped
/// polling its call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShutdownReport {
    /// Operations submitted over the runtime's life.
    pub submitted: u64,
    /// Ended operations by outcome label.
    pub outcomes: BTreeMap<String, u64>,
    /// Staged operations that shutdown ended with `ShuttingDown`.
    pub staged_ended_by_shutdown: u64,
    /// Whether executing operations had to be stopped after the timeout.
    pub timed_out: bool,
    /// Operations that had not ended when shutdown returned.
    pub still_running: u64,
    /// How long shutdown took.
    pub elapsed: Duration,
}

impl ShutdownReport {
    /// The count of one outcome.
    #[must_use]
    pub fn outcome(&self, kind: OutcomeKind) -> u64 {
        self.outcomes.get(kind.as_str()).copied().unwrap_or(0)
    }

    /// Σ outcomes.
    #[must_use]
    pub fn ended(&self) -> u64 {
        self.outcomes.values().sum()
    }
}
