//! A store wrapper for tests that makes commits slow, before they apply and after, so that
//! callers can be dropped, outranked or raced while a commit is in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conflict_runtime::entity::EntityKey;
use conflict_runtime::store::{
    Commit, CommitOutcome, EntityCodec, EntityStore, Snapshot, StoreFuture, StoredValue,
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
