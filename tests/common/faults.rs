//! Store wrappers for tests.
//!
//! * [`SlowCommits`] makes commits slow, before they apply and after, so that callers can be
//!   dropped, outranked or raced while a commit is in flight.
//! * [`FaultyStore`] injects, from a seeded schedule, the failures a real backend has: an error
//!   before anything is applied, a delay, and for commits a lost reply (applied, but the caller
//!   hears of a failure). It logs what the wrapped store really applied, so tests can check that
//!   nothing was lost or doubled and replay the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use conflict_runtime::entity::EntityKey;
use conflict_runtime::operation::OpId;
use conflict_runtime::store::{
    Commit, CommitOutcome, EntityCodec, EntityStore, Snapshot, StoreError, StoreFuture, StoredValue,
};

/// Wraps a store; `commit` waits `before` (the write not yet applied), commits through the inner
/// store, then waits `after` (the write applied, the reply not yet delivered). Both delays can
/// be changed while the store is in use. Loads and inserts pass straight through.
pub struct SlowCommits {
    inner: Arc<dyn EntityStore>,
    before_us: AtomicU64,
    after_us: AtomicU64,
    commits_applied: AtomicU64,
}

impl SlowCommits {
    /// Wraps `inner` with no delay yet.
    #[must_use]
    pub fn new(inner: Arc<dyn EntityStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            before_us: AtomicU64::new(0),
            after_us: AtomicU64::new(0),
            commits_applied: AtomicU64::new(0),
        })
    }

    /// The wait before a commit reaches the inner store.
    pub fn delay_before(&self, d: Duration) {
        self.before_us.store(micros(d), Ordering::SeqCst);
    }

    /// The wait between the inner store's answer and the reply to the caller.
    pub fn delay_after(&self, d: Duration) {
        self.after_us.store(micros(d), Ordering::SeqCst);
    }

    /// Commits the inner store reported as applied.
    pub fn commits_applied(&self) -> u64 {
        self.commits_applied.load(Ordering::SeqCst)
    }

    /// A runtime on the embedded store behind a `SlowCommits` (no delay yet), and the wrapper.
    ///
    /// # Panics
    /// If the runtime configuration of the test binary is invalid.
    #[must_use]
    pub fn memory_runtime() -> (conflict_runtime::Runtime, Arc<Self>) {
        let store = Self::new(Arc::new(conflict_runtime::store::MemoryStore::new()));
        let rt = conflict_runtime::Runtime::builder()
            .shared_store(store.clone())
            .build()
            .expect("runtime configuration");
        (rt, store)
    }

    /// The wrapped store.
    #[must_use]
    pub fn inner(&self) -> &Arc<dyn EntityStore> {
        &self.inner
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn pause(us: u64) {
    if us > 0 {
        tokio::time::sleep(Duration::from_micros(us)).await;
    }
}

impl EntityStore for SlowCommits {
    fn name(&self) -> &'static str {
        "slow-commits"
    }

    fn load<'a>(
        &'a self,
        key: &'a EntityKey,
        codec: EntityCodec,
    ) -> StoreFuture<'a, Option<Snapshot>> {
        self.inner.load(key, codec)
    }

    fn insert<'a>(&'a self, key: EntityKey, value: StoredValue) -> StoreFuture<'a, Snapshot> {
        self.inner.insert(key, value)
    }

    fn commit<'a>(&'a self, commit: Commit) -> StoreFuture<'a, CommitOutcome> {
        Box::pin(async move {
            pause(self.before_us.load(Ordering::SeqCst)).await;
            let out = self.inner.commit(commit).await?;
            if matches!(out, CommitOutcome::Committed { .. }) {
                self.commits_applied.fetch_add(1, Ordering::SeqCst);
            }
            pause(self.after_us.load(Ordering::SeqCst)).await;
            Ok(out)
        })
    }
}

/// How often each fault is injected, per call of the store method it applies to (each a
/// probability in `0.0..=1.0`), and how long a delay lasts at most.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultRates {
    /// `load` and `load_many` fail with [`StoreError::Backend`] (nothing is read).
    pub load_error: f64,
    /// `load` and `load_many` wait before reading.
    pub load_delay: f64,
    /// `insert` fails with [`StoreError::Backend`] before anything is stored.
    pub insert_error: f64,
    /// `insert` waits before storing.
    pub insert_delay: f64,
    /// `commit` fails with [`StoreError::Backend`] before the commit reaches the inner store.
    pub commit_error: f64,
    /// `commit` waits before the commit reaches the inner store.
    pub commit_delay: f64,
    /// `commit` reaches the inner store, which settles it (applied or a conflict), and then the
    /// reply is lost: the caller gets [`StoreError::OutcomeUnknown`], what a database store
    /// returns when the connection drops in flight and the ledger cannot settle it.
    pub lost_reply: f64,
    /// `commit` waits after the inner store settled it, before replying.
    pub reply_delay: f64,
    /// Each delay is uniform in `0..=max_delay` (whole microseconds).
    pub max_delay: Duration,
}

impl FaultRates {
    /// No faults at all: the wrapper passes every call through (and still logs commits).
    pub const NONE: Self = Self {
        load_error: 0.0,
        load_delay: 0.0,
        insert_error: 0.0,
        insert_delay: 0.0,
        commit_error: 0.0,
        commit_delay: 0.0,
        lost_reply: 0.0,
        reply_delay: 0.0,
        max_delay: Duration::ZERO,
    };
}

impl Default for FaultRates {
    fn default() -> Self {
        Self::NONE
    }
}

/// How many faults of each kind were injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// `load` calls failed.
    pub load_errors: u64,
    /// `load_many` calls failed.
    pub load_many_errors: u64,
    /// `load` and `load_many` calls delayed.
    pub load_delays: u64,
    /// `insert` calls failed (nothing stored).
    pub insert_errors: u64,
    /// `insert` calls delayed.
    pub insert_delays: u64,
    /// `commit` calls failed before reaching the inner store.
    pub commit_errors: u64,
    /// `commit` calls delayed before reaching the inner store.
    pub commit_delays: u64,
    /// `commit` replies lost after the inner store applied the commit.
    pub lost_applied: u64,
    /// `commit` replies lost after the inner store found a conflict (nothing applied).
    pub lost_conflicts: u64,
    /// `commit` replies delayed.
    pub reply_delays: u64,
}

impl FaultCounts {
    /// Every lost reply, applied or not: the callers told [`StoreError::OutcomeUnknown`].
    #[must_use]
    pub fn lost_replies(&self) -> u64 {
        self.lost_applied + self.lost_conflicts
    }

    /// Every injected error that ends a store call before it reaches the inner store: the
    /// callers told [`StoreError::Backend`].
    #[must_use]
    pub fn errors(&self) -> u64 {
        self.load_errors + self.load_many_errors + self.insert_errors + self.commit_errors
    }
}

/// A commit the inner store applied, as the wrapper saw it go through.
#[derive(Debug, Clone)]
pub struct AppliedCommit {
    /// The operation that committed.
    pub op_id: OpId,
    /// Its function's name.
    pub op_type: &'static str,
    /// Which attempt of the operation it was.
    pub attempt: u32,
    /// Per write: the key, the version it expected (`0`: a create), the new version the inner
    /// store reported and the value written.
    pub writes: Vec<AppliedWrite>,
    /// Per delete: the key and the tombstone's version.
    pub deletes: Vec<(EntityKey, u64)>,
    /// Whether its reply was lost (the caller was told [`StoreError::OutcomeUnknown`]).
    pub reply_lost: bool,
}

/// One write of an [`AppliedCommit`].
#[derive(Debug, Clone)]
pub struct AppliedWrite {
    /// The entity written.
    pub key: EntityKey,
    /// The version the writer read (`0`: it created the entity).
    pub expected_version: u64,
    /// The version the write made.
    pub version: u64,
    /// The value written.
    pub value: StoredValue,
}

/// An insert the inner store applied.
#[derive(Debug, Clone)]
pub struct AppliedInsert {
    /// The entity stored.
    pub key: EntityKey,
    /// Its version (1 for a key never stored before).
    pub version: u64,
    /// The value stored.
    pub value: StoredValue,
}

/// What one store call is to suffer, drawn in one go so that the schedule depends only on the
/// seed and the order of calls, not on what the inner store answers.
#[derive(Debug, Clone, Copy)]
struct Plan {
    error: bool,
    delay: Option<Duration>,
    lost: bool,
    reply_delay: Option<Duration>,
}

struct State {
    rates: FaultRates,
    rng: fastrand::Rng,
    counts: FaultCounts,
    commits: Vec<AppliedCommit>,
    inserts: Vec<AppliedInsert>,
}

/// Wraps any store and injects faults into its calls from a seeded, deterministic schedule
/// (see [`FaultRates`]); counts them ([`counts`](Self::counts)) and logs what the inner store
/// applied ([`applied_commits`](Self::applied_commits), [`applied_inserts`](Self::applied_inserts)).
///
/// Every injected error is typed: [`StoreError::Backend`] (the call was refused before the inner
/// store saw it: nothing applied) or, for a lost commit reply, [`StoreError::OutcomeUnknown`]
/// with the commit's op id (the inner store settled it: it may have applied).
///
/// ```no_run
/// # async fn demo() {
/// use std::sync::Arc;
/// use conflict_tests::faults::{FaultRates, FaultyStore};
/// let store = FaultyStore::new(Arc::new(conflict_runtime::store::MemoryStore::new()), 7);
/// store.set_rates(FaultRates { lost_reply: 0.5, ..FaultRates::NONE });
/// let rt = conflict_runtime::Runtime::builder().shared_store(store.clone()).build().unwrap();
/// # drop(rt);
/// # }
/// ```
pub struct FaultyStore {
    inner: Arc<dyn EntityStore>,
    state: Mutex<State>,
}

impl FaultyStore {
    /// Wraps `inner`, with no faults yet ([`FaultRates::NONE`]) and the schedule seeded by
    /// `seed`.
    #[must_use]
    pub fn new(inner: Arc<dyn EntityStore>, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            inner,
            state: Mutex::new(State {
                rates: FaultRates::NONE,
                rng: fastrand::Rng::with_seed(seed),
                counts: FaultCounts::default(),
                commits: Vec::new(),
                inserts: Vec::new(),
            }),
        })
    }

    /// A runtime on the embedded store behind a `FaultyStore` (no faults yet), and the wrapper.
    ///
    /// # Panics
    /// If the runtime configuration of the test binary is invalid.
    #[must_use]
    pub fn memory_runtime(seed: u64) -> (conflict_runtime::Runtime, Arc<Self>) {
        let store = Self::new(Arc::new(conflict_runtime::store::MemoryStore::new()), seed);
        let rt = conflict_runtime::Runtime::builder()
            .shared_store(store.clone())
            .build()
            .expect("runtime configuration");
        (rt, store)
    }

    /// Replaces the fault rates (from the next store call on).
    pub fn set_rates(&self, rates: FaultRates) {
        self.lock().rates = rates;
    }

    /// The faults injected so far.
    #[must_use]
    pub fn counts(&self) -> FaultCounts {
        self.lock().counts
    }

    /// The commits the inner store applied, in the order their replies reached the wrapper.
    #[must_use]
    pub fn applied_commits(&self) -> Vec<AppliedCommit> {
        self.lock().commits.clone()
    }

    /// The inserts the inner store applied, in the order their replies reached the wrapper.
    #[must_use]
    pub fn applied_inserts(&self) -> Vec<AppliedInsert> {
        self.lock().inserts.clone()
    }

    /// The wrapped store (to read the truth without faults).
    #[must_use]
    pub fn inner(&self) -> &Arc<dyn EntityStore> {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding it has failed already; the log is still sound
        // (every update is one push or one increment).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Draws the next call's faults. `error_rate`, `delay_rate`: of this method; `lost` and
    /// `reply` only for commits.
    fn plan(&self, error_rate: f64, delay_rate: f64, lost_rate: f64, reply_rate: f64) -> Plan {
        let mut st = self.lock();
        let max_us = micros(st.rates.max_delay);
        let rng = &mut st.rng;
        let mut delay_of = |rate: f64| {
            let hit = rng.f64() < rate;
            let us = rng.u64(0..=max_us);
            hit.then(|| Duration::from_micros(us))
        };
        let delay = delay_of(delay_rate);
        let reply_delay = delay_of(reply_rate);
        Plan {
            error: rng.f64() < error_rate,
            delay,
            lost: rng.f64() < lost_rate,
            reply_delay,
        }
    }

    fn rates(&self) -> FaultRates {
        self.lock().rates
    }

    fn count(&self, f: impl FnOnce(&mut FaultCounts)) {
        f(&mut self.lock().counts);
    }
}

fn injected(what: &str) -> StoreError {
    StoreError::Backend {
        message: format!("{INJECTED} {what}"),
        source: None,
    }
}

/// How every message of an injected error starts (so tests can tell them from real failures).
pub const INJECTED: &str = "injected fault:";

impl EntityStore for FaultyStore {
    fn name(&self) -> &'static str {
        "faulty"
    }

    fn load<'a>(
        &'a self,
        key: &'a EntityKey,
        codec: EntityCodec,
    ) -> StoreFuture<'a, Option<Snapshot>> {
        Box::pin(async move {
            let r = self.rates();
            let plan = self.plan(r.load_error, r.load_delay, 0.0, 0.0);
            if let Some(d) = plan.delay {
                self.count(|c| c.load_delays += 1);
                tokio::time::sleep(d).await;
            }
            if plan.error {
                self.count(|c| c.load_errors += 1);
                return Err(injected(&format!("load of {key} failed")));
            }
            self.inner.load(key, codec).await
        })
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [(EntityKey, EntityCodec)],
    ) -> StoreFuture<'a, Vec<Option<Snapshot>>> {
        Box::pin(async move {
            let r = self.rates();
            let plan = self.plan(r.load_error, r.load_delay, 0.0, 0.0);
            if let Some(d) = plan.delay {
                self.count(|c| c.load_delays += 1);
                tokio::time::sleep(d).await;
            }
            if plan.error {
                self.count(|c| c.load_many_errors += 1);
                return Err(injected(&format!("load of {} entities failed", keys.len())));
            }
            self.inner.load_many(keys).await
        })
    }

    fn insert(&self, key: EntityKey, value: StoredValue) -> StoreFuture<'_, Snapshot> {
        Box::pin(async move {
            let r = self.rates();
            let plan = self.plan(r.insert_error, r.insert_delay, 0.0, 0.0);
            if let Some(d) = plan.delay {
                self.count(|c| c.insert_delays += 1);
                tokio::time::sleep(d).await;
            }
            if plan.error {
                self.count(|c| c.insert_errors += 1);
                return Err(injected(&format!(
                    "insert of {key} failed; nothing was stored"
                )));
            }
            let snap = self.inner.insert(key.clone(), value).await?;
            self.lock().inserts.push(AppliedInsert {
                key,
                version: snap.version,
                value: snap.value.clone(),
            });
            Ok(snap)
        })
    }

    fn commit(&self, commit: Commit) -> StoreFuture<'_, CommitOutcome> {
        Box::pin(async move {
            let r = self.rates();
            let plan = self.plan(r.commit_error, r.commit_delay, r.lost_reply, r.reply_delay);
            if let Some(d) = plan.delay {
                self.count(|c| c.commit_delays += 1);
                tokio::time::sleep(d).await;
            }
            let (op_id, attempt) = (commit.op_id, commit.attempt);
            if plan.error {
                self.count(|c| c.commit_errors += 1);
                return Err(injected(&format!(
                    "commit of operation {op_id} (attempt {attempt}) failed before it reached \
                     the store; nothing was applied"
                )));
            }
            let (op_type, writes, deletes) = (
                commit.op_type,
                commit.writes.clone(),
                commit.deletes.clone(),
            );
            let out = self.inner.commit(commit).await?;
            let applied = matches!(out, CommitOutcome::Committed { .. });
            if let CommitOutcome::Committed { versions, .. } = &out {
                let writes = writes
                    .into_iter()
                    .zip(versions)
                    .map(|(w, &version)| AppliedWrite {
                        key: w.key,
                        expected_version: w.expected_version,
                        version,
                        value: w.value,
                    })
                    .collect();
                let deletes = deletes
                    .into_iter()
                    .map(|d| (d.key, d.expected_version + 1))
                    .collect();
                self.lock().commits.push(AppliedCommit {
                    op_id,
                    op_type,
                    attempt,
                    writes,
                    deletes,
                    reply_lost: plan.lost,
                });
            }
            if let Some(d) = plan.reply_delay {
                self.count(|c| c.reply_delays += 1);
                tokio::time::sleep(d).await;
            }
            if plan.lost {
                self.count(|c| {
                    if applied {
                        c.lost_applied += 1;
                    } else {
                        c.lost_conflicts += 1;
                    }
                });
                return Err(StoreError::OutcomeUnknown {
                    op_id,
                    message: format!(
                        "{INJECTED} the reply to attempt {attempt} was lost after the store \
                         settled it"
                    ),
                });
            }
            Ok(out)
        })
    }
}
