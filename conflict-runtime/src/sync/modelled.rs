//! What `tokio::sync::Notify` and `tokio::sync::oneshot` promise, built on the model checker's
//! mutex, for `--cfg loom` and `--cfg shuttle` builds only.
//!
//! tokio's own primitives synchronize through atomics loom cannot see: a model mixing them
//! with loom's atomics reports interleavings no real execution has (a thread reading a stale
//! flag *after* a tokio acquire that ordered it). tokio checks those primitives with loom
//! itself; the models here check our protocols against their documented contracts:
//! * `Notify::notified()` returns a future that completes at any `notify_waiters()` made
//!   after its creation, polled or not; `notify_waiters()` stores no permit;
//! * `oneshot`: `send` fails (returning the value) once the receiver is gone; the receiver
//!   gets the value, or an error once the sender is gone without sending; `try_recv` never
//!   waits.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Waker};

use super::{Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `tokio::sync::Notify`, restricted to what the runtime uses.
pub(crate) struct Notify {
    state: Mutex<NotifyState>,
}

struct NotifyState {
    /// How many `notify_waiters` calls were made.
    calls: u64,
    next_id: u64,
    waiters: Vec<(u64, Waker)>,
}

impl Notify {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(NotifyState {
                calls: 0,
                next_id: 0,
                waiters: Vec::new(),
            }),
        }
    }

    pub(crate) fn notified(&self) -> Notified<'_> {
        let mut st = lock(&self.state);
        let id = st.next_id;
        st.next_id += 1;
        Notified {
            notify: self,
            calls: st.calls,
            id,
        }
    }

    pub(crate) fn notify_waiters(&self) {
        let waiters = {
            let mut st = lock(&self.state);
            st.calls += 1;
            std::mem::take(&mut st.waiters)
        };
        for (_, w) in waiters {
            w.wake();
        }
    }
}

/// The future of [`Notify::notified`].
pub(crate) struct Notified<'a> {
    notify: &'a Notify,
    /// `calls` when it was created.
    calls: u64,
    id: u64,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut st = lock(&this.notify.state);
        if st.calls != this.calls {
            return Poll::Ready(());
        }
        let id = this.id;
        st.waiters.retain(|(i, _)| *i != id);
        st.waiters.push((id, cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        let id = self.id;
        lock(&self.notify.state).waiters.retain(|(i, _)| *i != id);
    }
}

/// `tokio::sync::oneshot`, restricted to what the runtime uses.
pub(crate) mod oneshot {
    use super::{Arc, Context, Future, Mutex, Pin, Poll, Waker, lock};

    struct Inner<T> {
        value: Option<T>,
        waker: Option<Waker>,
        sender_gone: bool,
        receiver_gone: bool,
    }

    pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let inner = Arc::new(Mutex::new(Inner {
            value: None,
            waker: None,
            sender_gone: false,
            receiver_gone: false,
        }));
        (Sender(Arc::clone(&inner)), Receiver(inner))
    }

    pub(crate) struct Sender<T>(Arc<Mutex<Inner<T>>>);

    impl<T> Sender<T> {
        /// Sends `value`, or gives it back if the receiver is gone.
        pub(crate) fn send(self, value: T) -> Result<(), T> {
            let mut inner = lock(&self.0);
            if inner.receiver_gone {
                return Err(value);
            }
            inner.value = Some(value);
            let waker = inner.waker.take();
            drop(inner);
            if let Some(w) = waker {
                w.wake();
            }
            Ok(())
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            let mut inner = lock(&self.0);
            inner.sender_gone = true;
            let waker = inner.waker.take();
            drop(inner);
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    pub(crate) struct Receiver<T>(Arc<Mutex<Inner<T>>>);

    /// The sender is gone without sending.
    #[derive(Debug)]
    pub(crate) struct RecvError;

    impl<T> Receiver<T> {
        /// The value if it was sent; never waits.
        pub(crate) fn try_recv(&mut self) -> Result<T, RecvError> {
            lock(&self.0).value.take().ok_or(RecvError)
        }
    }

    impl<T> Future for Receiver<T> {
        type Output = Result<T, RecvError>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let mut inner = lock(&self.0);
            if let Some(v) = inner.value.take() {
                return Poll::Ready(Ok(v));
            }
            if inner.sender_gone {
                return Poll::Ready(Err(RecvError));
            }
            inner.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    impl<T> Drop for Receiver<T> {
        fn drop(&mut self) {
            lock(&self.0).receiver_gone = true;
        }
    }
}
