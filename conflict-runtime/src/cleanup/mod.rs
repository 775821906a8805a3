//! The operation registry and the cleanup of the records of operations that did not succeed
//! ("zombies").
//!
//! Every operation that ends leaves a record:
//!
//! * a **succeeded** record goes into a bounded ring (per thread shard), kept for
//!   [`RuntimeBuilder::keep_succeeded`](crate::RuntimeBuilder::keep_succeeded) records and age;
//! * a **rejected, failed or cancelled** record is a zombie: its function's [`CleanupConfig`](crate::config::CleanupConfig)
//!   decides ([`CleanupConfig::decide`](crate::config::CleanupConfig::decide)) whether it is dropped at once (immediate), kept until
//!   the background sweeper finds it expired (deferred, and immediate for a debug-retained
//!   priority), kept until a query or a new operation on the same target meets it expired
//!   (lazy), kept (none), or handed to a named handler (custom). `max_zombie_count_per_target`
//!   is enforced on every insert: the oldest of that target beyond it go.
//!
//! # What is kept, at most
//!
//! * **Zombies: at most `force_cleanup_threshold + 1`**, with the largest threshold among the
//!   functions whose operations end (the default 1000 gives 1001). A zombie is kept only if the
//!   count of kept zombies is at or under its function's threshold, and it is counted by a
//!   compare-and-swap on the very count it was decided on, so however many operations end at
//!   once, the count grows only from a value at or under the threshold, by one.
//!   [`Operations::zombie_count`] is that count. This holds for every strategy and priority:
//!   `none`, `deferred`, `lazy`, `custom` (records its handler keeps or failed on included) and
//!   debug-retained records (`debug_retention_priorities`) alike; above the threshold every new
//!   zombie is cleaned at once. The per-target cap only lowers the count.
//! * **Succeeded records**: at most `keep_succeeded` per shard (16 shards), older than the age
//!   window dropped from queries; queries show the most recent `keep_succeeded`.
//! * **Failed cleanup handlers** (for the health report): the most recent
//!   [`FAILED_HANDLERS_KEPT`]; the metrics count every failure.
//!
//! Not bounded by the registry: a custom handler that is running holds a copy of its record
//! until it ends, also when the per-target cap evicts the kept record meanwhile; their number is
//! the health report's `active_cleanup_tasks`.

mod handlers;
mod health;
mod pressure;

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use conflict_core::{
    BodyFailed, ConflictError, EntityKey, OpId, OperationPriority, OperationRecord,
    OperationStatus, OutcomeKind,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use conflict_core::{
    CleanupAction, CleanupDecision, CleanupError, CleanupStrategy, CleanupTrigger,
};
// Link-time registration: what `#[cleanup_handler]` expands to, not for hand-written use.
#[doc(hidden)]
pub use handlers::{CleanupHandlerRegistration, HandlerFuture};
pub(crate) use handlers::{Handler, Handlers};
pub use health::{FAILED_HANDLERS_KEPT, FailedHandler, HealthReport, HealthStatus};
pub use pressure::{MemoryPressure, SystemMemory};

use crate::metrics::{Counter, Metrics};
use crate::registry::OperationSpec;
use crate::sync::{Mutex, MutexGuard};

const SHARDS: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Registry critical sections only move whole records in and out, so a panic elsewhere
    // cannot leave one half-updated: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the runtime knows about an operation when it ends.
pub(crate) struct Finished<'a> {
    pub(crate) spec: &'static OperationSpec,
    pub(crate) op_id: OpId,
    pub(crate) target: &'a EntityKey,
    /// The call's other entities (a multi-entity call), after `target`.
    pub(crate) more: &'a [EntityKey],
    pub(crate) priority: OperationPriority,
    pub(crate) effective: OperationPriority,
    pub(crate) parent: Option<OpId>,
    pub(crate) attempts: u32,
    pub(crate) kind: OutcomeKind,
    pub(crate) version: Option<u64>,
    pub(crate) error: Option<ConflictError<BodyFailed>>,
    pub(crate) submitted: Instant,
    pub(crate) started: Option<Instant>,
    pub(crate) now: Instant,
}

/// Wall-clock times from the monotonic instants the runtime keeps (one clock read per query
/// instead of two per operation).
#[derive(Copy, Clone)]
struct Clock {
    instant: Instant,
    system: SystemTime,
}

impl Clock {
    fn now() -> Self {
        Self {
            instant: Instant::now(),
            system: SystemTime::now(),
        }
    }

    fn system(&self, at: Instant) -> SystemTime {
        let ago = self.instant.saturating_duration_since(at);
        self.system.checked_sub(ago).unwrap_or(self.system)
    }
}

/// A succeeded operation, kept compact (no allocation) until someone asks for it.
struct Done {
    spec: &'static OperationSpec,
    op_id: OpId,
    target: EntityKey,
    /// The other entities of a multi-entity call (`None` for one entity: one word kept).
    more: Option<Box<[EntityKey]>>,
    priority: OperationPriority,
    effective: OperationPriority,
    parent: Option<OpId>,
    attempts: u32,
    version: Option<u64>,
    submitted: Instant,
    started: Option<Instant>,
    at: Instant,
}

impl Done {
    fn record(&self, clock: &Clock) -> OperationRecord {
        let cfg = &self.spec.config;
        OperationRecord {
            op_id: self.op_id,
            op_type: self.spec.name.into(),
            priority: self.priority,
            effective_priority: self.effective,
            target_ids: std::iter::once(&self.target)
                .chain(self.more.iter().flatten())
                .cloned()
                .collect(),
            retry_count: self.attempts.saturating_sub(1),
            max_retries: cfg.effective_max_retries(),
            parent_op_id: self.parent,
            status: OperationStatus::Succeeded,
            outcome: Some(OutcomeKind::Committed),
            version: self.version,
            error_message: None,
            submitted_at: clock.system(self.submitted),
            started_at: self.started.map(|s| clock.system(s)),
            completed_at: Some(clock.system(self.at)),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum ZombieState {
    Kept,
    HandlerRunning,
    HandlerKept,
    HandlerFailed,
}

struct Zombie {
    /// The record, without its error message (rendered on demand from `error`).
    record: OperationRecord,
    error: Option<ConflictError<BodyFailed>>,
    strategy: CleanupStrategy,
    /// When the strategy may remove it (`None`: never by expiry).
    expires: Option<Instant>,
    state: ZombieState,
}

impl Zombie {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// The full record, with the error message.
    fn record(&self) -> OperationRecord {
        let mut r = self.record.clone();
        r.error_message = Some(error_message(self.error.as_ref()));
        r
    }
}

fn error_message(error: Option<&ConflictError<BodyFailed>>) -> String {
    error.map_or_else(
        || "cancelled: the caller dropped the call before it ended".to_string(),
        ToString::to_string,
    )
}

#[derive(Default)]
struct ZombieShard {
    targets: HashMap<EntityKey, VecDeque<Zombie>>,
}

/// Counts of what the registry holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegistryCounts {
    /// Succeeded records kept (within the window).
    pub succeeded: u64,
    /// Zombie records kept (rejected, failed, cancelled).
    pub zombies: u64,
    /// Kept records by status.
    pub by_status: std::collections::BTreeMap<String, u64>,
}

struct Sweeper {
    interval: Option<Duration>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) struct Registry {
    shards: Box<[Mutex<ZombieShard>]>,
    hasher: foldhash::fast::RandomState,
    total: AtomicU64,
    lazy: AtomicU64,
    succeeded: Box<[Mutex<VecDeque<Done>>]>,
    /// Each shard keeps this many; queries see the most recent this many across shards.
    succeeded_keep: usize,
    succeeded_max_age: Duration,
    sweeper: Mutex<Sweeper>,
    pressure: Arc<dyn MemoryPressure>,
    pub(crate) handlers: Handlers,
    tasks: Mutex<JoinSet<()>>,
    active_tasks: AtomicU64,
    failed: Mutex<VecDeque<FailedHandler>>,
    metrics: Arc<Metrics>,
    this: Weak<Registry>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.sweeper).task.take() {
            t.abort();
        }
    }
}

impl Registry {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        pressure: Arc<dyn MemoryPressure>,
        handlers: Handlers,
        keep_succeeded: usize,
        succeeded_max_age: Duration,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            total: AtomicU64::new(0),
            lazy: AtomicU64::new(0),
            succeeded: (0..SHARDS).map(|_| Mutex::new(VecDeque::new())).collect(),
            succeeded_keep: keep_succeeded,
            succeeded_max_age,
            sweeper: Mutex::new(Sweeper {
                interval: None,
                task: None,
            }),
            pressure,
            handlers,
            tasks: Mutex::new(JoinSet::new()),
            active_tasks: AtomicU64::new(0),
            failed: Mutex::new(VecDeque::new()),
            metrics,
            this: this.clone(),
        })
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "only the hash's low bits pick a shard; dropping high bits on 32-bit is fine"
    )]
    fn shard(&self, key: &EntityKey) -> &Mutex<ZombieShard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Records how an operation ended.
    #[allow(
        clippy::too_many_lines,
        reason = "one decision in order: keep a success, or decide, count, keep, hand off a zombie"
    )]
    pub(crate) fn finished(&self, f: &Finished<'_>) {
        let now = f.now;
        if f.kind == OutcomeKind::Committed {
            self.keep_succeeded(Done {
                spec: f.spec,
                op_id: f.op_id,
                target: f.target.clone(),
                more: (!f.more.is_empty()).then(|| f.more.into()),
                priority: f.priority,
                effective: f.effective,
                parent: f.parent,
                attempts: f.attempts,
                version: f.version,
                submitted: f.submitted,
                started: f.started,
                at: now,
            });
            return;
        }
        let cfg = &f.spec.config.cleanup;
        let pressure = self.pressure.current();
        let mut total = self.total.load(Ordering::Relaxed);
        let decision = loop {
            let decision = cfg.decide(f.effective, pressure, total);
            if decision.strategy == CleanupStrategy::Immediate && decision.keep_for.is_zero() {
                break decision;
            }
            // A record to keep is counted on the very count it was decided on, so operations
            // ending at once cannot all pass the threshold on one stale count: the total only
            // grows from a value at or under the threshold, by one.
            match self.total.compare_exchange_weak(
                total,
                total + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break decision,
                Err(now) => total = now,
            }
        };
        match decision.trigger {
            CleanupTrigger::MemoryPressure => {
                self.metrics.add(Counter::CleanupMemoryPressure, 1);
            }
            CleanupTrigger::Force => self.metrics.add(Counter::CleanupForced, 1),
            CleanupTrigger::Priority | CleanupTrigger::Configured => {}
        }
        if decision.strategy == CleanupStrategy::Immediate && decision.keep_for.is_zero() {
            self.metrics.cleaned(CleanupStrategy::Immediate, 1);
            return;
        }
        let clock = Clock::now();
        let record = OperationRecord {
            op_id: f.op_id,
            op_type: f.spec.name.into(),
            priority: f.priority,
            effective_priority: f.effective,
            target_ids: std::iter::once(f.target).chain(f.more).cloned().collect(),
            retry_count: f.attempts.saturating_sub(1),
            max_retries: f.spec.config.effective_max_retries(),
            parent_op_id: f.parent,
            status: f.kind.status(),
            outcome: Some(f.kind),
            version: None,
            error_message: None,
            submitted_at: clock.system(f.submitted),
            started_at: f.started.map(|s| clock.system(s)),
            completed_at: Some(clock.system(now)),
        };
        let expires = now.checked_add(decision.keep_for);
        let handler = match decision.strategy {
            CleanupStrategy::Custom => cfg
                .custom_cleanup_handler
                .as_deref()
                .and_then(|n| self.handlers.get(n))
                .cloned(),
            _ => None,
        };
        let state = if handler.is_some() {
            ZombieState::HandlerRunning
        } else {
            ZombieState::Kept
        };
        {
            let mut shard = lock(self.shard(f.target));
            let list = shard.targets.entry(f.target.clone()).or_default();
            self.drop_expired_lazy(list, now);
            list.push_back(Zombie {
                record: record.clone(),
                error: f.error.clone(),
                strategy: decision.strategy,
                expires,
                state,
            });
            if decision.strategy == CleanupStrategy::Lazy {
                self.lazy.fetch_add(1, Ordering::Relaxed);
            }
            let cap = cfg.max_zombie_count_per_target as usize;
            while list.len() > cap {
                if let Some(old) = list.pop_front() {
                    self.forget(&old);
                    self.metrics.add(Counter::CleanedByCap, 1);
                }
            }
            if list.is_empty() {
                shard.targets.remove(f.target);
            }
        }
        match decision.strategy {
            CleanupStrategy::Deferred | CleanupStrategy::Immediate => {
                self.ensure_sweeper(Duration::from_secs(u64::from(
                    cfg.cleanup_check_interval_seconds,
                )));
            }
            _ => {}
        }
        if let Some(h) = handler {
            let mut record = record;
            record.error_message = Some(error_message(f.error.as_ref()));
            self.spawn_handler(h, record);
        }
    }

    fn keep_succeeded(&self, done: Done) {
        if self.succeeded_keep == 0 {
            return;
        }
        // Per thread, so concurrent successes rarely meet on one lock and never on one atomic.
        let i = crate::metrics::shard_index() % SHARDS;
        let mut ring = lock(&self.succeeded[i]);
        if ring.len() >= self.succeeded_keep {
            ring.pop_front();
        }
        ring.push_back(done);
    }

    /// Bookkeeping for a zombie leaving the registry.
    fn forget(&self, z: &Zombie) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        if z.strategy == CleanupStrategy::Lazy {
            self.lazy.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Removes the expired lazy zombies of one target's list.
    fn drop_expired_lazy(&self, list: &mut VecDeque<Zombie>, now: Instant) {
        let before = list.len();
        list.retain(|z| {
            let gone = z.strategy == CleanupStrategy::Lazy && z.expired(now);
            if gone {
                self.forget(z);
            }
            !gone
        });
        let n = before - list.len();
        if n > 0 {
            self.metrics.cleaned(CleanupStrategy::Lazy, n as u64);
        }
    }

    /// A new operation on `target` meets its expired lazy zombies.
    pub(crate) fn operation_started(&self, target: &EntityKey) {
        if self.lazy.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut shard = lock(self.shard(target));
        if let Some(list) = shard.targets.get_mut(target) {
            self.drop_expired_lazy(list, Instant::now());
            if list.is_empty() {
                shard.targets.remove(target);
            }
        }
    }

    /// Removes expired deferred (and debug-retained immediate) zombies; the sweeper's pass.
    pub(crate) fn sweep(&self) -> u64 {
        let now = Instant::now();
        let mut removed = 0;
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.targets.retain(|_, list| {
                list.retain(|z| {
                    let gone = matches!(
                        z.strategy,
                        CleanupStrategy::Deferred | CleanupStrategy::Immediate
                    ) && z.expired(now);
                    if gone {
                        self.forget(z);
                        self.metrics.cleaned(z.strategy, 1);
                        removed += 1;
                    }
                    !gone
                });
                !list.is_empty()
            });
        }
        removed
    }

    fn ensure_sweeper(&self, interval: Duration) {
        let mut sw = lock(&self.sweeper);
        let faster = sw.interval.is_none_or(|cur| interval < cur);
        if !faster && sw.task.is_some() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No tokio runtime here: expired records are still removed by `sweep` on queries.
            return;
        };
        if let Some(old) = sw.task.take() {
            old.abort();
        }
        sw.interval = Some(interval);
        let this = self.this.clone();
        sw.task = Some(rt.spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(reg) = this.upgrade() else { return };
                reg.sweep();
            }
        }));
    }

    fn spawn_handler(&self, handler: Handler, record: OperationRecord) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.handler_failed(
                &handler,
                &record,
                "no tokio runtime to run the handler".into(),
                0,
            );
            return;
        };
        self.active_tasks.fetch_add(1, Ordering::SeqCst);
        let mut tasks = lock(&self.tasks);
        // Reap finished tasks so the set does not grow with every handler ever run.
        while tasks.try_join_next().is_some() {}
        tasks.spawn_on(
            async move {
                let started = std::time::Instant::now();
                let outcome = handlers::run_handler(&handler, &record).await;
                this.metrics.handler_ran(started.elapsed());
                match outcome {
                    handlers::HandlerOutcome::Done(action) => this.handler_done(&record, action),
                    handlers::HandlerOutcome::Failed { error, attempts } => {
                        this.handler_failed(&handler, &record, error, attempts);
                    }
                }
                this.active_tasks.fetch_sub(1, Ordering::SeqCst);
            },
            &rt,
        );
    }

    fn with_zombie(&self, record: &OperationRecord, f: impl FnOnce(&mut VecDeque<Zombie>, usize)) {
        let Some(target) = record.target_ids.first() else {
            return;
        };
        let mut shard = lock(self.shard(target));
        if let Some(list) = shard.targets.get_mut(target) {
            if let Some(i) = list.iter().position(|z| z.record.op_id == record.op_id) {
                f(list, i);
            }
            if list.is_empty() {
                shard.targets.remove(target);
            }
        }
    }

    fn handler_done(&self, record: &OperationRecord, action: CleanupAction) {
        self.with_zombie(record, |list, i| match action {
            CleanupAction::Remove => {
                if let Some(z) = list.remove(i) {
                    self.forget(&z);
                    self.metrics.cleaned(CleanupStrategy::Custom, 1);
                }
            }
            CleanupAction::Keep => list[i].state = ZombieState::HandlerKept,
        });
    }

    fn handler_failed(
        &self,
        handler: &Handler,
        record: &OperationRecord,
        error: String,
        attempts: u32,
    ) {
        self.metrics.add(Counter::CleanupFailures, 1);
        self.with_zombie(record, |list, i| list[i].state = ZombieState::HandlerFailed);
        tracing::warn!(handler = %handler.name, op_id = %record.op_id, %error, "cleanup handler failed; record kept");
        let mut failed = lock(&self.failed);
        // A failing handler on a target whose cap evicts its records would otherwise grow this
        // list with every failure, past every record bound.
        if failed.len() >= FAILED_HANDLERS_KEPT {
            failed.pop_front();
        }
        failed.push_back(FailedHandler {
            handler: handler.name.clone(),
            op_id: record.op_id,
            error,
            attempts,
        });
    }

    /// Cleanup handler runs in progress.
    pub(crate) fn active_tasks(&self) -> u64 {
        self.active_tasks.load(Ordering::SeqCst)
    }

    /// Waits until no handler runs (or the deadline passes); true when idle.
    pub(crate) async fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        loop {
            if self.active_tasks() == 0 {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops the sweeper and every handler still running (their records stay kept).
    pub(crate) fn stop_tasks(&self) {
        if let Some(t) = lock(&self.sweeper).task.take() {
            t.abort();
        }
        let mut tasks = lock(&self.tasks);
        tasks.abort_all();
        while tasks.try_join_next().is_some() {}
    }

    /// Handlers that failed for good, with the records they failed on.
    pub(crate) fn failed_handlers(&self) -> Vec<FailedHandler> {
        lock(&self.failed).iter().cloned().collect()
    }

    pub(crate) fn memory_pressure(&self) -> f64 {
        self.pressure.current()
    }

    /// Zombies currently kept.
    pub(crate) fn zombie_count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Visits every kept record (zombies first, then succeeded), removing expired lazy zombies
    /// it meets on the way.
    fn scan(&self, mut f: impl FnMut(&OperationRecord)) {
        let clock = Clock::now();
        let now = clock.instant;
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.targets.retain(|_, list| {
                self.drop_expired_lazy(list, now);
                for z in list.iter() {
                    f(&z.record());
                }
                !list.is_empty()
            });
        }
        // The most recent `succeeded_keep` across the shards, within the age window.
        let mut recent: Vec<(Instant, OperationRecord)> = Vec::new();
        for ring in &self.succeeded {
            let ring = lock(ring);
            recent.extend(
                ring.iter()
                    .filter(|d| now.duration_since(d.at) <= self.succeeded_max_age)
                    .map(|d| (d.at, d.record(&clock))),
            );
        }
        recent.sort_by_key(|(at, r)| std::cmp::Reverse((*at, r.op_id)));
        for (_, r) in recent.iter().take(self.succeeded_keep) {
            f(r);
        }
    }

    pub(crate) fn get(&self, op_id: OpId) -> Option<OperationRecord> {
        let mut found = None;
        self.scan(|r| {
            if r.op_id == op_id && found.is_none() {
                found = Some(r.clone());
            }
        });
        found
    }

    pub(crate) fn select(&self, pred: impl Fn(&OperationRecord) -> bool) -> Vec<OperationRecord> {
        let mut out = Vec::new();
        self.scan(|r| {
            if pred(r) {
                out.push(r.clone());
            }
        });
        out.sort_by_key(|r| r.op_id);
        out
    }

    pub(crate) fn counts(&self) -> RegistryCounts {
        let mut c = RegistryCounts::default();
        self.scan(|r| {
            if r.status == OperationStatus::Succeeded {
                c.succeeded += 1;
            } else {
                c.zombies += 1;
            }
            *c.by_status
                .entry(r.status.as_str().to_string())
                .or_default() += 1;
        });
        c
    }

    pub(crate) fn zombies_by_target(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for shard in &self.shards {
            let shard = lock(shard);
            for (k, list) in &shard.targets {
                out.insert(k.to_string(), list.len() as u64);
            }
        }
        out
    }
}

/// The registry of ended operations (from [`Runtime::operations`](crate::Runtime::operations)).
///
/// It holds the records of operations that did not succeed (zombies) according to their
/// cleanup configuration, and the most recent succeeded ones. Operations still running are
/// not in it: see [`Runtime::staging_status`](crate::Runtime::staging_status) and the metrics'
/// `in_flight`. Queries meet expired lazy zombies and remove them.
pub struct Operations<'a> {
    pub(crate) registry: &'a Registry,
}

impl Operations<'_> {
    /// The record of one operation, if kept.
    #[must_use]
    pub fn get(&self, op_id: OpId) -> Option<OperationRecord> {
        self.registry.get(op_id)
    }

    /// The kept records of operations on `target`, oldest first.
    #[must_use]
    pub fn by_target(&self, target: &EntityKey) -> Vec<OperationRecord> {
        self.registry.select(|r| r.target_ids.contains(target))
    }

    /// The kept records with this status, oldest first.
    #[must_use]
    pub fn by_status(&self, status: OperationStatus) -> Vec<OperationRecord> {
        self.registry.select(|r| r.status == status)
    }

    /// How many records are kept, by kind and status.
    #[must_use]
    pub fn counts(&self) -> RegistryCounts {
        self.registry.counts()
    }

    /// Zombies kept right now (without scanning).
    #[must_use]
    pub fn zombie_count(&self) -> u64 {
        self.registry.zombie_count()
    }
}
