//! A runtime's life: running, shutting down (draining, then aborting what is left), stopped.
//! Operations ask it whether they may start and report when they end; shutdown waits on it.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::sync::{AtomicBool, Notified, Notify};

const RUNNING: u8 = 0;
const SHUTTING_DOWN: u8 = 1;
const STOPPED: u8 = 2;

pub(crate) struct Lifecycle {
    state: AtomicU8,
    /// Told whenever an operation ends during shutdown.
    pub(crate) drained: Notify,
    pub(crate) abort: AbortSignal,
}

impl Lifecycle {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU8::new(RUNNING),
            drained: Notify::new(),
            abort: AbortSignal::new(),
        }
    }

    /// Stops accepting calls; true for the first caller (who then ends what is staged).
    pub(crate) fn begin_shutdown(&self) -> bool {
        self.state
            .compare_exchange(RUNNING, SHUTTING_DOWN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Shutdown has finished.
    pub(crate) fn stopped(&self) {
        self.state.store(STOPPED, Ordering::SeqCst);
    }

    /// Tells a waiting shutdown that an operation ended (only while one waits).
    #[inline]
    pub(crate) fn operation_ended(&self) {
        if self.draining() {
            self.drained.notify_waiters();
        }
    }

    #[inline]
    pub(crate) fn accepting(&self) -> bool {
        self.state.load(Ordering::SeqCst) == RUNNING
    }

    #[inline]
    pub(crate) fn draining(&self) -> bool {
        self.state.load(Ordering::Relaxed) != RUNNING
    }
}

const ABORT_SHARDS: usize = 8;

/// Wakes every executing or staged operation when shutdown gives up waiting.
pub(crate) struct AbortSignal {
    flag: AtomicBool,
    // Sharded so that operations registering for the wake-up do not all contend on one lock.
    notify: [Notify; ABORT_SHARDS],
}

impl AbortSignal {
    pub(crate) fn new() -> Self {
        Self {
            flag: AtomicBool::new(false),
            notify: std::array::from_fn(|_| Notify::new()),
        }
    }

    #[inline]
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// A future completing at the abort. Create it before checking [`is_set`](Self::is_set):
    /// it sees every abort that happens after its creation, polled or not.
    #[inline]
    #[allow(
        clippy::cast_possible_truncation,
        reason = "only the low bits of `seq` pick a shard; dropping high bits on 32-bit is fine"
    )]
    pub(crate) fn notified(&self, seq: u64) -> Notified<'_> {
        self.notify[(seq as usize) % ABORT_SHARDS].notified()
    }

    pub(crate) fn trigger(&self) {
        self.flag.store(true, Ordering::Release);
        for n in &self.notify {
            n.notify_waiters();
        }
    }
}

impl Lifecycle {
    /// Waits until no operation is in flight or `deadline` passes; true if drained.
    pub(crate) async fn wait_drained(&self, metrics: &Metrics, deadline: Instant) -> bool {
        loop {
            let notified = self.drained.notified();
            if metrics.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return metrics.in_flight() == 0;
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_models;
