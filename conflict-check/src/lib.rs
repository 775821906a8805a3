// Pedantic lints are enforced (CI denies warnings). Where one does not fit, it is allowed at the
// item with a reason; no lint is allowed crate-wide here.
#![warn(clippy::pedantic)]

//! A history checker for the `conflict` framework: record every call of a workload (in tests,
//! or in the stress run) and the runtime's events, then check that what happened is what the
//! framework promises.
//!
//! * [`History`]: the recorder. Cheap to clone, `Send + Sync`; [`History::invoke`] before a
//!   call, then [`Call::committed`] / [`Call::failed`] / [`Call::returned`] after it (a guard
//!   dropped with the call's future records [`Outcome::Dropped`]); [`History::observe`] /
//!   [`History::drain`] for the events of [`Runtime::subscribe`](conflict_runtime::Runtime::subscribe).
//! * [`check()`]: reads a [`Recorded`] history (from [`History::snapshot`], or written by hand)
//!   and returns a [`Report`] of typed [`Violation`]s.
//!
//! # The rules
//!
//! 1. **Every call ends exactly once** ([`Violation::NeverEnded`], [`Violation::EndedTwice`]),
//!    and with events: every operation has exactly one `OperationCompleted`, saying what the
//!    caller was told ([`Violation::OperationNeverCompleted`],
//!    [`Violation::OperationCompletedTwice`], [`Violation::OutcomeMismatch`],
//!    [`Violation::ReportedVersionMismatch`]), and no operation completes that no call
//!    accounts for ([`Violation::UnaccountedOperations`]).
//! 2. **Committed versions are gap-free per entity**: each version from the initial one + 1
//!    to the last one seen (written, or read by a final load) is written exactly once
//!    ([`Violation::DuplicateVersion`], [`Violation::VersionGap`],
//!    [`Violation::VersionOutOfRange`]).
//! 3. **Each entity's history is linearizable** against a register: if A returned before B was
//!    invoked, A's version is below B's (a read of `v` sits after the write of `v`)
//!    ([`Violation::NotLinearizable`]); and each write read the state the previous version
//!    left, each read the state its version holds ([`Violation::StaleValue`]).
//! 4. **Multi-entity commits are serializable**: the precedence graph (per entity, each
//!    version's writer before the next one's, readers between) has no cycle
//!    ([`Violation::NotSerializable`]).
//! 5. **Each staging decision picked a top-ranked candidate**: every rejected operation ranks
//!    below the winner its `OperationRejected` names, by [`conflict_core::policy::rank`], with
//!    the matching reason, and every preemptor outranks who it preempted
//!    ([`Violation::StagingNotTopRanked`], [`Violation::StagingReasonWrong`],
//!    [`Violation::StagingWinnerUnknown`], [`Violation::PreemptedByLower`]).
//!
//! # Why no linearizability crate
//!
//! A general checker (Wing & Gong's search, as in Knossos or Porcupine, or `stateright`'s
//! linearizability tester) searches the orders in which overlapping operations could have
//! taken effect: exponential in the worst case. Here the search has nothing to do: every
//! committed write carries the version it wrote, the store's compare-and-commit orders them,
//! so a history is linearizable exactly when *that* order (writes by version, reads of a
//! version after its write) agrees with real time and with the register model. That is a
//! sort and one sweep per entity (O(n log n)), checks histories of any size the stress run
//! produces, and needs no dependency (the Rust tester we know of, `stateright`'s
//! `LinearizabilityTester`, comes with a whole model checker and searches anyway). Where
//! versions disagree with real time, the checker names the pair.
//!
//! # What is observable, and what is missing
//!
//! * Versions **written** come from [`Committed::versions`](conflict_core::Committed) and, for
//!   a call whose caller dropped it while its commit was in flight, from its
//!   `OperationCompleted` event, which carries only the first target's version; such a
//!   commit's other entities count as *unplaced* commits, which may fill that many holes.
//! * Versions **read** are not reported for the attempt that commits (the store bumps a
//!   written entity by exactly one, so a write of `v` read `v - 1`), nor for `#[read]`
//!   parameters (`Committed` has no field for them): record loads
//!   ([`Call::loaded`]) to put reads in the history, and have bodies return the model values
//!   they read ([`Effect::write`]).
//! * **Staging decisions**: the events say who was rejected and who won
//!   (`OperationRejected { winner_op_id, winner_priority, reason }`), and who preempted whom.
//!   They do not say *who was staged* when a group was resolved, so a winner that beat every
//!   rejected member but not a *requeued* one (`on_lose = "requeue"` losers get no event), or
//!   not one that was cancelled or displaced meanwhile, cannot be seen. Checking "top-ranked
//!   among all candidates" needs an event at admission (`OperationStaged { op, target }`) and
//!   one per resolution (`GroupResolved { target, winner, members }`).
//! * **Not modelled**: entities created or deleted by a call (a delete's tombstone version
//!   is in no `Committed`, so it would show as a gap), and operations nested in a body (their
//!   writes are in their root's `Committed::versions`, which is what the checker uses; their
//!   own completions are not matched to calls). Workloads with those need [`Effect`]s written
//!   by hand.
//! * Time is a logical clock of the recorder (see [`History`]), not tokio's, so the paused
//!   clock's many equal instants do not hide real-time order.
//!
//! # Recording a workload (and plugging it into the stress binary)
//!
//! Subscribe before the first call (with an event capacity above what can pile up between
//! two drains, else the check reports [`Violation::EventsMissed`]); wrap each call; after
//! shutdown, load each entity once (its last version closes the gap check) and check:
//!
//! ```
//! use conflict_check::{Effect, History};
//! use conflict_runtime::prelude::*;
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
//! struct Tally { #[entity(id)] id: EntityId, n: u64 }
//!
//! /// Returns what it read, so that the history knows the values.
//! #[with_conflict_resolution]
//! async fn add_one(t: &mut Tally) -> u64 { t.n += 1; t.n - 1 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let rt = Runtime::builder().event_capacity(1 << 16).build().unwrap();
//! let history = History::new();
//! let mut events = rt.subscribe();
//! let t = rt.insert(Tally { id: EntityId::new(), n: 0 }).await.unwrap();
//! history.initial(t.key().clone(), 1, Some(0));
//!
//! // In each worker task:
//! let call = history.invoke("add_one", [t.key().clone()]);
//! match add_one(&t).await {
//!     Ok(c) => {
//!         let read = c.value;
//!         call.committed(&c, [Effect::write(t.key().clone(), c.version, read, read + 1)]);
//!     }
//!     Err(e) => call.failed(&e),
//! }
//!
//! // At the end:
//! rt.shutdown(std::time::Duration::from_secs(1)).await;
//! let call = history.invoke("load", [t.key().clone()]);
//! let last = t.load().await.unwrap();
//! call.loaded(t.key().clone(), &last, last.value.n);
//! history.drain(&mut events);
//! let report = history.check();
//! assert!(report.is_ok(), "{report}");
//! assert_eq!(report.stats.writes, 1);
//! # }
//! ```
//!
//! In `examples/stress.rs` that is: a `History` next to the runtime, the wrapping above in the
//! worker's call site (or [`Call::returned`] to record versions only), a task that keeps the
//! subscription drained while the run lasts (`while let Some(r) = events.recv().await {
//! history.observe_received(&r) }`, stopped after shutdown), a final load per entity, and
//! `history.check()` printed with the summary (non-zero exit if `!report.is_ok()`).

mod check;
mod record;

pub use check::{Actor, Report, Stats, Violation, check};
pub use record::{
    Access, Call, CallId, CallRecord, Effect, Ending, History, Initial, Outcome, Recorded,
};

#[cfg(test)]
#[allow(
    clippy::many_single_char_names,
    reason = "hand-written histories name entities x, y and calls a, b, as papers on histories do"
)]
mod tests;
