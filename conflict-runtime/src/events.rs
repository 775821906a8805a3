//! Publishing [`Event`]s to subscribers without ever slowing the framework down.
//!
//! Events go through a bounded broadcast ring. Publishing never waits: when nobody subscribes
//! nothing is built at all, and a subscriber that falls more than the ring's capacity behind
//! loses the oldest events, is told how many with [`Received::Missed`], and the runtime's metrics
//! count them (`events_missed`).

pub use conflict_core::{Event, EventKind, OperationInfo};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::broadcast;

use crate::metrics::{Counter, Metrics};

pub(crate) struct EventBus {
    tx: broadcast::Sender<Event>,
    /// Live subscribers. Kept here because `broadcast::Sender::receiver_count` takes the
    /// channel's lock, and this is read twice per operation.
    subscribers: Arc<AtomicUsize>,
}

impl EventBus {
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            subscribers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Whether anyone listens; callers skip building events when not.
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0
    }

    /// Publishes the event built by `f`, if anyone listens.
    #[inline]
    pub(crate) fn emit(&self, metrics: &Metrics, f: impl FnOnce() -> Event) {
        if self.active() && self.tx.send(f()).is_ok() {
            metrics.add(Counter::EventsPublished, 1);
        }
    }

    pub(crate) fn subscribe(&self, metrics: Arc<Metrics>) -> EventSubscriber {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        EventSubscriber {
            rx: self.tx.subscribe(),
            metrics,
            subscribers: self.subscribers.clone(),
        }
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// The next event.
    Event(Event),
    /// This many events were dropped because the subscriber fell behind.
    Missed(u64),
}

/// A subscription to the runtime's events (from [`Runtime::subscribe`](crate::Runtime::subscribe)).
///
/// ```
/// use conflict_runtime::prelude::*;
/// use conflict_runtime::events::Received;
///
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Entity)]
/// # struct Counter { #[entity(id)] id: EntityId, n: u64 }
/// #[with_conflict_resolution]
/// async fn bump(c: &mut Counter) { c.n += 1 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let rt = Runtime::in_memory();
/// let mut events = rt.subscribe();
/// let c = rt.insert(Counter { id: EntityId::new(), n: 0 }).await.unwrap();
/// bump(&c).await.unwrap();
/// let mut kinds = Vec::new();
/// while let Some(Received::Event(e)) = events.try_recv() {
///     kinds.push(e.kind());
/// }
/// assert_eq!(kinds.last(), Some(&conflict_runtime::events::EventKind::Completed));
/// # }
/// ```
pub struct EventSubscriber {
    rx: broadcast::Receiver<Event>,
    metrics: Arc<Metrics>,
    subscribers: Arc<AtomicUsize>,
}

impl Drop for EventSubscriber {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EventSubscriber {
    /// Waits for the next event; `None` once the runtime is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.rx.recv().await {
            Ok(e) => Some(self.delivered(e)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(self.missed(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Received> {
        match self.rx.try_recv() {
            Ok(e) => Some(self.delivered(e)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(self.missed(n)),
            Err(_) => None,
        }
    }

    /// Turns the subscription into a [`Stream`](futures_util::Stream).
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Received> + Send + Unpin {
        Box::pin(futures_util::stream::unfold(self, |mut s| async move {
            s.recv().await.map(|r| (r, s))
        }))
    }

    fn delivered(&self, e: Event) -> Received {
        self.metrics.add(Counter::EventsDelivered, 1);
        Received::Event(e)
    }

    fn missed(&self, n: u64) -> Received {
        self.metrics.add(Counter::EventsMissed, n);
        Received::Missed(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_built_only_while_someone_subscribes() {
        let metrics = Arc::new(Metrics::new());
        let bus = EventBus::new(8);
        let mut built = 0;
        let event = |built: &mut u32| {
            *built += 1;
            Event::OperationRetry {
                op: conflict_core::OperationInfo {
                    op_id: conflict_core::OpId::from_parts(1, 1),
                    op_type: "t".into(),
                    target: conflict_core::EntityKey::new("T", conflict_core::EntityId::new()),
                    more_targets: Vec::new(),
                    priority: conflict_core::OperationPriority::NORMAL,
                    effective_priority: conflict_core::OperationPriority::NORMAL,
                    parent_op_id: None,
                },
                attempt: 2,
                delay: std::time::Duration::ZERO,
            }
        };
        bus.emit(&metrics, || event(&mut built));
        assert_eq!(built, 0);
        let mut sub = bus.subscribe(metrics.clone());
        bus.emit(&metrics, || event(&mut built));
        assert_eq!(built, 1);
        assert!(matches!(sub.try_recv(), Some(Received::Event(_))));
        drop(sub);
        assert!(!bus.active());
        bus.emit(&metrics, || event(&mut built));
        assert_eq!(built, 1);
        assert_eq!(metrics.get(Counter::EventsPublished), 1);
    }
}
