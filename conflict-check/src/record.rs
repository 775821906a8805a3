//! The recorder: a [`History`] of calls (caller side) and of the runtime's events (runtime side).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use conflict_core::{Committed, ConflictError, EntityKey, Event, OpId, OutcomeKind, Versioned};
use conflict_runtime::events::{EventSubscriber, Received};

/// A call's number in its [`History`] (0, 1, ... in invocation order).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call#{}", self.0)
    }
}

/// What one call did to one entity, as far as the caller can see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    /// The entity.
    pub key: EntityKey,
    /// Whether the call wrote the entity (then `version` is the version it wrote) or only read
    /// it (then `version` is the version it read).
    pub access: Access,
    /// The version written or read.
    pub version: u64,
    /// The model value the call read from the entity, if the caller knows it (a body returns
    /// what it saw; a load returns the value).
    pub read_value: Option<u64>,
    /// The model value the call wrote, if it wrote and the caller knows it.
    pub wrote_value: Option<u64>,
}

/// How a call used an entity.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Wrote it (a committed write bumps its version by one).
    Write,
    /// Read it without writing (a load, or a `#[read]` parameter whose version the caller knows).
    Read,
}

impl Effect {
    /// A write of `version` that read `read_value` and wrote `wrote_value`.
    #[must_use]
    pub fn write(key: EntityKey, version: u64, read_value: u64, wrote_value: u64) -> Self {
        Self {
            key,
            access: Access::Write,
            version,
            read_value: Some(read_value),
            wrote_value: Some(wrote_value),
        }
    }

    /// A write of `version` whose values the caller does not know.
    #[must_use]
    pub fn write_version(key: EntityKey, version: u64) -> Self {
        Self {
            key,
            access: Access::Write,
            version,
            read_value: None,
            wrote_value: None,
        }
    }

    /// A read of `version` that saw `value`.
    #[must_use]
    pub fn read(key: EntityKey, version: u64, value: u64) -> Self {
        Self {
            key,
            access: Access::Read,
            version,
            read_value: Some(value),
            wrote_value: None,
        }
    }
}

/// How a call ended, as its caller saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It returned `Ok`: for an annotated function, committed (with its operation's id); for a
    /// load, the value read (no operation).
    Ok {
        /// The operation, if the call was one.
        op_id: Option<OpId>,
        /// What it wrote and read.
        effects: Vec<Effect>,
    },
    /// It returned an error of this kind.
    Failed {
        /// The operation, where the error names it.
        op_id: Option<OpId>,
        /// The error's kind.
        kind: OutcomeKind,
    },
    /// The caller dropped the call's future before it returned (a cancellation). Whether it
    /// committed anyway (a commit already in flight) only the runtime's events tell.
    Dropped,
}

impl Outcome {
    /// The operation id the caller learnt, if any.
    #[must_use]
    pub fn op_id(&self) -> Option<OpId> {
        match self {
            Self::Ok { op_id, .. } | Self::Failed { op_id, .. } => *op_id,
            Self::Dropped => None,
        }
    }

    /// The outcome kind the runtime should report for this call, if the caller knows it.
    #[must_use]
    pub fn kind(&self) -> Option<OutcomeKind> {
        match self {
            Self::Ok { op_id: Some(_), .. } => Some(OutcomeKind::Committed),
            Self::Failed { kind, .. } => Some(*kind),
            Self::Ok { op_id: None, .. } | Self::Dropped => None,
        }
    }
}

/// One ending of a call: when (a tick of the history's logical clock) and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    /// The tick at which the caller saw the call end.
    pub at: u64,
    /// How.
    pub outcome: Outcome,
}

/// Everything recorded about one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// Its number.
    pub id: CallId,
    /// The operation kind (the annotated function's name, `"load"`, ...).
    pub op: Cow<'static, str>,
    /// The entities it was called on, in parameter order.
    pub targets: Vec<EntityKey>,
    /// The tick at which it was invoked (before its future was first polled).
    pub invoked: u64,
    /// Its endings: exactly one in a sound history.
    pub ends: Vec<Ending>,
}

/// The state of an entity the history starts from: its version and model value when the
/// workload began (typically right after inserting it).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Initial {
    /// The version.
    pub version: u64,
    /// The model value, if known.
    pub value: Option<u64>,
}

/// A frozen copy of a [`History`], what [`check`](crate::check()) reads. Also the way to write
/// a history by hand (all fields are public).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recorded {
    /// Every call, by [`CallId`] order.
    pub calls: Vec<CallRecord>,
    /// The runtime's events, in the order received.
    pub events: Vec<Event>,
    /// Events the subscription reported lost ([`Received::Missed`]).
    pub missed_events: u64,
    /// Where each entity started.
    pub initial: BTreeMap<EntityKey, Initial>,
    /// Whether events were recorded at all: the checks that need them (exactly-once endings of
    /// operations, staging decisions, commits of dropped calls) are skipped when not.
    pub events_recorded: bool,
}

#[derive(Default)]
struct State {
    clock: u64,
    rec: Recorded,
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

/// A recorder of calls and events, shared by every task of a workload.
///
/// Cheap to clone (an `Arc`) and `Send + Sync`. Time is a logical clock: every invocation and
/// every ending takes the next tick under one short lock, so "A returned before B was
/// invoked" is exact even on tokio's paused clock, where many calls share one instant.
///
/// ```
/// use conflict_check::{Effect, History};
/// use conflict_core::{EntityId, EntityKey, OpId, Versions, Committed};
///
/// let key = EntityKey::new("Counter", EntityId::new());
/// let history = History::new();
/// history.initial(key.clone(), 1, Some(0));
/// let call = history.invoke("bump", [key.clone()]);
/// // ... the call runs and commits version 2, having read 0 and written 1:
/// let done = Committed { value: 0_u64, version: 2, versions: Versions::one(key.clone(), 2),
///                        op_id: OpId::from_parts(1, 1), attempts: 1 };
/// call.committed(&done, [Effect::write(key.clone(), 2, 0, 1)]);
/// assert!(history.check().is_ok());
/// ```
#[derive(Clone, Default)]
pub struct History {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("History")
            .field("calls", &st.rec.calls.len())
            .field("events", &st.rec.events.len())
            .finish_non_exhaustive()
    }
}

impl History {
    /// An empty history.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section below is a push or a field update that cannot panic halfway,
        // so a poisoned lock (a panicking task elsewhere) still guards a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records where `key` starts: its version and, if known, its model value.
    pub fn initial(&self, key: EntityKey, version: u64, value: Option<u64>) {
        self.lock()
            .rec
            .initial
            .insert(key, Initial { version, value });
    }

    /// Records an invocation and returns its number. The low-level half of [`History::invoke`]:
    /// end it with [`History::end`] (which does not stop a second ending, so hand-written
    /// histories can contain one).
    pub fn start(
        &self,
        op: impl Into<Cow<'static, str>>,
        targets: impl IntoIterator<Item = EntityKey>,
    ) -> CallId {
        let mut st = self.lock();
        let invoked = st.tick();
        let id = CallId(st.rec.calls.len() as u64);
        st.rec.calls.push(CallRecord {
            id,
            op: op.into(),
            targets: targets.into_iter().collect(),
            invoked,
            ends: Vec::new(),
        });
        id
    }

    /// Records an ending of call `id`.
    ///
    /// # Panics
    /// If `id` is not a call of this history.
    pub fn end(&self, id: CallId, outcome: Outcome) {
        let mut st = self.lock();
        let at = st.tick();
        let index = usize::try_from(id.0).expect("a call id indexes the calls");
        st.rec.calls[index].ends.push(Ending { at, outcome });
    }

    /// Records an invocation; the returned guard records its ending. Take it right before
    /// the call's future is first polled.
    #[must_use = "the call ends (as dropped) when the guard goes"]
    pub fn invoke(
        &self,
        op: impl Into<Cow<'static, str>>,
        targets: impl IntoIterator<Item = EntityKey>,
    ) -> Call {
        Call {
            id: Some(self.start(op, targets)),
            history: self.clone(),
        }
    }

    /// Records an event of the runtime (from [`Runtime::subscribe`](conflict_runtime::Runtime::subscribe)).
    pub fn observe(&self, event: &Event) {
        let mut st = self.lock();
        st.rec.events_recorded = true;
        st.rec.events.push(event.clone());
    }

    /// Records what a subscription received: an event, or a count of lost ones (which the
    /// check reports, since a history with holes proves nothing).
    pub fn observe_received(&self, received: &Received) {
        match received {
            Received::Event(e) => self.observe(e),
            Received::Missed(n) => {
                let mut st = self.lock();
                st.rec.events_recorded = true;
                st.rec.missed_events += n;
            }
        }
    }

    /// Records every event `events` holds right now (without waiting); returns how many were
    /// received. Also marks the history as one with events, even if there were none.
    pub fn drain(&self, events: &mut EventSubscriber) -> usize {
        self.lock().rec.events_recorded = true;
        let mut n = 0;
        while let Some(r) = events.try_recv() {
            self.observe_received(&r);
            n += 1;
        }
        n
    }

    /// A copy of everything recorded so far.
    #[must_use]
    pub fn snapshot(&self) -> Recorded {
        self.lock().rec.clone()
    }

    /// Checks everything recorded so far (see [`check`](crate::check())).
    #[must_use]
    pub fn check(&self) -> crate::Report {
        crate::check(&self.snapshot())
    }
}

/// A call in progress: records its ending once, when told how it ended or, if it is dropped
/// first, as [`Outcome::Dropped`] (the caller's future was dropped with it).
#[must_use = "the call ends (as dropped) when the guard goes"]
pub struct Call {
    id: Option<CallId>,
    history: History,
}

impl Call {
    /// The call's number.
    ///
    /// # Panics
    /// Never: the id is only taken by the methods that consume the guard.
    #[must_use]
    pub fn id(&self) -> CallId {
        self.id
            .expect("the id is taken only when the guard is consumed")
    }

    fn finish(mut self, outcome: Outcome) {
        if let Some(id) = self.id.take() {
            self.history.end(id, outcome);
        }
    }

    /// The call committed; `effects` says what it read and wrote (with model values, which the
    /// caller knows from what the body returned). Entities `committed` reports written but
    /// `effects` leaves out are recorded as writes of unknown values.
    pub fn committed<T>(self, committed: &Committed<T>, effects: impl IntoIterator<Item = Effect>) {
        let mut effects: Vec<Effect> = effects.into_iter().collect();
        for (key, version) in committed.versions.iter() {
            if !effects
                .iter()
                .any(|e| e.access == Access::Write && e.key == *key)
            {
                effects.push(Effect::write_version(key.clone(), version));
            }
        }
        self.finish(Outcome::Ok {
            op_id: Some(committed.op_id),
            effects,
        });
    }

    /// The call failed with `error`.
    pub fn failed<E>(self, error: &ConflictError<E>) {
        self.finish(Outcome::Failed {
            op_id: error.op_id(),
            kind: error.kind(),
        });
    }

    /// The call returned `result`; a commit is recorded with its versions only.
    pub fn returned<T, E>(self, result: &Result<Committed<T>, ConflictError<E>>) {
        match result {
            Ok(c) => self.committed(c, []),
            Err(e) => self.failed(e),
        }
    }

    /// A load returned `loaded`, whose model value is `value`.
    pub fn loaded<T>(self, key: EntityKey, loaded: &Versioned<T>, value: u64) {
        self.finish(Outcome::Ok {
            op_id: None,
            effects: vec![Effect::read(key, loaded.version, value)],
        });
    }

    /// The call ended in a way the checks do not model (e.g. a load failed): recorded as a
    /// failure without an operation.
    pub fn other(self, kind: OutcomeKind) {
        self.finish(Outcome::Failed { op_id: None, kind });
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.history.end(id, Outcome::Dropped);
        }
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
