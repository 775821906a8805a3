//! The synchronization primitives the runtime's state machines are built on, in one place, so
//! that they can be model-checked (the tokio way).
//!
//! Normally these are `std`'s primitives, a [`papaya`] map and tokio's `Notify`, `oneshot` and
//! `task_local!`. Built with `--cfg loom` (`RUSTFLAGS="--cfg loom"`, `scripts/loom`, see
//! `docs/verification.md`), they are [`loom`](https://docs.rs/loom)'s, the map is a loom mutex
//! around a `HashMap`, and `Notify`/`oneshot` are built on it with tokio's contract (`modelled`):
//! every lock, atomic access and map operation becomes a point where loom's scheduler may switch
//! threads, and the `loom_models` modules beside the code they check explore every interleaving
//! of them (up to the preemption bound). Built with `--cfg shuttle` (`scripts/shuttle`,
//! `tests/shuttle.rs`), they are [shuttle](https://docs.rs/shuttle)'s, with the same map and
//! `Notify`/`oneshot` as under loom and a task-local kept in shuttle's per-task storage
//! (`task_local` below), so that shuttle's schedulers control every switch between tasks in
//! whole async scenarios.
//!
//! What goes through here: the staging cell's lock and its permit counter, the memory store's
//! slots and map, the abort flag, the metrics table's claims, the transaction state, the wait
//! graph, a call's delete list, the cleanup queues, and the tokio primitives the staging
//! hand-off and the abort wait on. (Under shuttle every lock must: a `std` lock held across a
//! switch would block shuttle's one OS thread.)
//!
//! Under loom, two things are not modelled and no loom model may touch them: the process-wide
//! wait graph (`waits::WAITS`, a `LazyLock` whose loom mutex would outlive the execution that
//! made it) and the task-local of the running call (`context::FRAME`, tokio's, which loom's
//! threads on one OS thread would share in the middle of a poll). Under shuttle both are
//! per-execution and per-task (`shuttle::lazy_static`, `task_local` below), since the shuttle
//! scenarios run whole calls.
//!
//! Plain counters (metrics) stay `std` atomics: they order nothing, and modelling them would only
//! multiply the states loom explores.

#[cfg(not(any(loom, shuttle)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize};
#[cfg(not(any(loom, shuttle)))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(all(shuttle, not(loom)))]
pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicUsize};
#[cfg(all(shuttle, not(loom)))]
pub(crate) use shuttle::sync::{Mutex, MutexGuard};

#[cfg(not(any(loom, shuttle)))]
pub(crate) use tokio::sync::futures::Notified;
#[cfg(not(any(loom, shuttle)))]
pub(crate) use tokio::sync::{Notify, oneshot};

#[cfg(any(loom, shuttle))]
mod modelled;
#[cfg(any(loom, shuttle))]
pub(crate) use modelled::{Notified, Notify, oneshot};

use std::hash::Hash;

/// A concurrent map whose operations are each atomic: [`papaya`] normally, a loom mutex around
/// a `HashMap` under loom (papaya's own atomics are outside loom's view, and its deferred
/// reclamation would outlive a model's execution).
///
/// Values are returned as clones (they are `Arc`s), so no reference into the map outlives an
/// operation: that is what lets the loom version lock per operation, as papaya is linearizable
/// per operation.
pub(crate) struct ConcurrentMap<K, V> {
    #[cfg(not(any(loom, shuttle)))]
    inner: papaya::HashMap<K, V, foldhash::fast::RandomState>,
    #[cfg(any(loom, shuttle))]
    inner: Mutex<ModelMap<K, V>>,
}

#[cfg(not(any(loom, shuttle)))]
impl<K: Hash + Eq + Clone, V: Clone> ConcurrentMap<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            inner: papaya::HashMap::with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// The value of `key`.
    #[inline]
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.inner.pin().get(key).cloned()
    }

    /// The value of `key`, inserting `make()` if there is none.
    pub(crate) fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
        self.inner.pin().get_or_insert_with(key, make).clone()
    }

    /// Inserts `value` unless `key` has one: then `Err` with the value it has.
    pub(crate) fn try_insert(&self, key: K, value: V) -> Result<(), V> {
        match self.inner.pin().try_insert(key, value) {
            Ok(_) => Ok(()),
            Err(taken) => Err(taken.current.clone()),
        }
    }

    /// Removes `key` if its value satisfies `pred`.
    pub(crate) fn remove_if(&self, key: &K, pred: impl FnMut(&K, &V) -> bool) {
        let _ = self.inner.pin().remove_if(key, pred);
    }

    /// Calls `f` on every entry (each seen once; entries added or removed meanwhile may or may
    /// not be).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        for (k, v) in &self.inner.pin() {
            f(k, v);
        }
    }

    /// How many entries the map holds.
    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }
}

/// Under loom and shuttle: a hasher without a random seed, so that iteration order (which
/// decides the order of some wake-ups) is the same in a replay as in the run it replays.
#[cfg(any(loom, shuttle))]
type ModelMap<K, V> = std::collections::HashMap<
    K,
    V,
    std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>,
>;

#[cfg(any(loom, shuttle))]
impl<K: Hash + Eq + Clone, V: Clone> ConcurrentMap<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(ModelMap::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ModelMap<K, V>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.lock().get(key).cloned()
    }

    pub(crate) fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
        self.lock().entry(key).or_insert_with(make).clone()
    }

    pub(crate) fn try_insert(&self, key: K, value: V) -> Result<(), V> {
        match self.lock().entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => Err(o.get().clone()),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(value);
                Ok(())
            }
        }
    }

    pub(crate) fn remove_if(&self, key: &K, mut pred: impl FnMut(&K, &V) -> bool) {
        let mut map = self.lock();
        if map.get_key_value(key).is_some_and(|(k, v)| pred(k, v)) {
            map.remove(key);
        }
    }

    pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        // A copy, so that `f` may lock what it likes (as with papaya, whose iteration holds no
        // lock).
        let all: Vec<(K, V)> = self
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in &all {
            f(k, v);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// `loom::model`, reporting how many interleavings it explored (on stderr; CI runs the models
/// with `--nocapture`), so a model that stopped exploring shows in the log.
#[cfg(all(test, loom))]
pub(crate) fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::Ordering::SeqCst;
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&runs);
    loom::model(move || {
        counted.fetch_add(1, SeqCst);
        f();
    });
    eprintln!("loom: {name}: {} interleavings", runs.load(SeqCst));
}

/// The future of a task-local scope (`tokio::task_local!`'s normally).
#[cfg(not(shuttle))]
pub(crate) use tokio::task::futures::TaskLocalFuture;

#[cfg(shuttle)]
pub(crate) use task_local::TaskLocalFuture;

/// Task-local values under shuttle. tokio's `task_local!` keeps the value in a thread-local
/// while the scoped future is polled; shuttle runs every task on one OS thread and switches
/// tasks in the middle of a poll (at any lock or atomic), so another task would see the value.
/// This keeps it in shuttle's per-task storage instead, with the same scope semantics.
#[cfg(shuttle)]
pub(crate) mod task_local {
    use std::cell::RefCell;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Where a task's value lives: one per task (shuttle's `thread_local!` is per task).
    pub(crate) type Slot<T> = shuttle::thread::LocalKey<RefCell<Option<T>>>;

    /// A task-local key over its per-task slot.
    pub(crate) struct TaskLocal<T: 'static>(pub(crate) &'static Slot<T>);

    /// Accessed outside any scope of the key.
    #[derive(Debug)]
    pub(crate) struct AccessError;

    impl<T: 'static> TaskLocal<T> {
        /// Runs `fut` with `value` set for the duration of each of its polls.
        pub(crate) fn scope<F: Future>(&'static self, value: T, fut: F) -> TaskLocalFuture<T, F> {
            TaskLocalFuture {
                key: self.0,
                slot: Some(value),
                fut: Some(Box::pin(fut)),
            }
        }

        /// `f` of the value of the scope being polled in this task.
        pub(crate) fn try_with<R>(
            &'static self,
            f: impl FnOnce(&T) -> R,
        ) -> Result<R, AccessError> {
            self.0
                .with(|c| c.borrow().as_ref().map(f))
                .ok_or(AccessError)
        }
    }

    /// Runs `f` with `slot`'s value in the task's storage, and puts it back afterwards, also
    /// when `f` panics (as tokio's `scope_inner` does).
    fn scoped<T: 'static, R>(
        key: &'static Slot<T>,
        slot: &mut Option<T>,
        f: impl FnOnce() -> R,
    ) -> R {
        struct Restore<'s, T: 'static> {
            key: &'static Slot<T>,
            slot: &'s mut Option<T>,
            outer: Option<T>,
        }
        impl<T: 'static> Drop for Restore<'_, T> {
            fn drop(&mut self) {
                let outer = self.outer.take();
                *self.slot = self.key.with(|c| c.replace(outer));
            }
        }
        let outer = key.with(|c| c.replace(slot.take()));
        let _restore = Restore { key, slot, outer };
        f()
    }

    /// [`TaskLocal::scope`]'s future. Like tokio's, it drops the inner future inside the scope
    /// (when it completes, or when the scope future is dropped first), before the value.
    pub(crate) struct TaskLocalFuture<T: 'static, F> {
        key: &'static Slot<T>,
        /// The value while the future is not being polled.
        slot: Option<T>,
        /// `None` once completed.
        fut: Option<Pin<Box<F>>>,
    }

    // Nothing in it is pinned in place: the inner future is boxed.
    impl<T, F> Unpin for TaskLocalFuture<T, F> {}

    impl<T, F> TaskLocalFuture<T, F> {
        /// Takes the value out (once the future completed, or to drop it first).
        pub(crate) fn take_value(self: Pin<&mut Self>) -> Option<T> {
            self.get_mut().slot.take()
        }
    }

    impl<T, F: Future> Future for TaskLocalFuture<T, F> {
        type Output = F::Output;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let this = self.get_mut();
            let (key, slot, fut) = (this.key, &mut this.slot, &mut this.fut);
            scoped(key, slot, || {
                let inner = fut
                    .as_mut()
                    .expect("a task-local scope polled after it completed");
                let r = inner.as_mut().poll(cx);
                if r.is_ready() {
                    *fut = None;
                }
                r
            })
        }
    }

    impl<T: 'static, F> Drop for TaskLocalFuture<T, F> {
        fn drop(&mut self) {
            if self.fut.is_some() {
                let (key, slot, fut) = (self.key, &mut self.slot, &mut self.fut);
                scoped(key, slot, || drop(fut.take()));
            }
        }
    }
}
