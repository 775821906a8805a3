//! The pure rules of the staging stage: who wins a group ([`rank`], [`select_winner`]), who
//! admission control displaces ([`select_weakest`]), and when a staged operation may preempt
//! the executing one ([`preemption`]). The runtime's staging areas call these; nothing else
//! there decides by priority.
//!
//! ```
//! use conflict_core::policy::{select_winner, Candidate};
//! use conflict_core::{OpId, OperationPriority as P};
//!
//! let group = [
//!     Candidate { op_id: OpId::from_parts(1, 1), effective_priority: P::NORMAL, submitted_seq: 1 },
//!     Candidate { op_id: OpId::from_parts(1, 2), effective_priority: P::CRITICAL, submitted_seq: 2 },
//!     Candidate { op_id: OpId::from_parts(1, 3), effective_priority: P::CRITICAL, submitted_seq: 3 },
//! ];
//! assert_eq!(select_winner(&group), Some(1)); // highest priority, then earliest
//! ```

use std::cmp::Ordering;
use std::time::Duration;

use crate::{OpId, OperationPriority};

/// What the policy needs to know about a staged operation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The operation (final tie-break).
    pub op_id: OpId,
    /// Own priority raised to the maximum of the parent chain.
    pub effective_priority: OperationPriority,
    /// Submission order within the runtime (lower = earlier).
    pub submitted_seq: u64,
}

/// Orders candidates best first: higher effective priority, then earlier submission, then the
/// smaller op id. Total and deterministic: two distinct operations never compare equal.
#[must_use]
pub fn rank(a: &Candidate, b: &Candidate) -> Ordering {
    b.effective_priority
        .cmp(&a.effective_priority)
        .then_with(|| a.submitted_seq.cmp(&b.submitted_seq))
        .then_with(|| a.op_id.cmp(&b.op_id))
}

/// Whether `a` ranks ahead of `b`.
#[must_use]
pub fn beats(a: &Candidate, b: &Candidate) -> bool {
    rank(a, b) == Ordering::Less
}

/// The index of the winner of a group, `None` for an empty group.
#[must_use]
pub fn select_winner(group: &[Candidate]) -> Option<usize> {
    select_winner_by(group, |c| *c)
}

/// [`select_winner`] over any items that carry a candidate (no copy of the group).
pub fn select_winner_by<T>(group: &[T], key: impl Fn(&T) -> Candidate) -> Option<usize> {
    group
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| rank(&key(a), &key(b)))
        .map(|(i, _)| i)
}

/// The index of the weakest member of a group (the one admission control displaces first).
#[must_use]
pub fn select_weakest(group: &[Candidate]) -> Option<usize> {
    select_weakest_by(group, |c| *c)
}

/// [`select_weakest`] over any items that carry a candidate (no copy of the group).
pub fn select_weakest_by<T>(group: &[T], key: impl Fn(&T) -> Candidate) -> Option<usize> {
    group
        .iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| rank(&key(a), &key(b)))
        .map(|(i, _)| i)
}

/// An operation's effective priority: its own, raised to its parent's effective priority.
/// Because the parent's is already raised to its own parent's, this is the maximum of the chain.
#[must_use]
pub fn effective_priority(
    own: OperationPriority,
    parent_effective: Option<OperationPriority>,
) -> OperationPriority {
    parent_effective.map_or(own, |p| own.max(p))
}

/// What the staging stage knows about the operation executing on a target (the incumbent),
/// for [`preemption`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Incumbent {
    /// Its effective priority.
    pub priority: OperationPriority,
    /// How long it has been executing.
    pub executing_for: Duration,
    /// Its grace period: no preemption before it has executed this long.
    pub grace: Duration,
    /// Whether it is committing (no preemption while it is: its commit is already on the way).
    pub committing: bool,
}

/// Whether `challenger` outranks the executing operation's priority `incumbent` enough to
/// preempt it at all: strictly higher. Equal priorities never preempt (arrival order decides
/// only between staged operations, never against the one that executes).
#[must_use]
pub fn outranks(challenger: OperationPriority, incumbent: OperationPriority) -> bool {
    challenger > incumbent
}

/// What a staged operation may do about the executing one.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Preemption {
    /// It does not outrank the executing operation: it waits for that one to end.
    Never,
    /// It outranks it, but the executing operation is committing: ask again when the commit
    /// phase ends (a conflicting commit leaves it executing, between attempts).
    AfterCommit,
    /// It outranks it; the executing operation's grace period ends in this long.
    After(Duration),
    /// It outranks it and the grace period is over: preempt now.
    Now,
}

/// The preemption rule, the only place it is written: a staged operation preempts the
/// executing one when its effective priority is strictly higher ([`outranks`]), the executing
/// one is not committing, and the executing one has run for at least its grace period.
///
/// ```
/// use std::time::Duration;
/// use conflict_core::policy::{preemption, Incumbent, Preemption};
/// use conflict_core::OperationPriority as P;
///
/// let ms = Duration::from_millis;
/// let low = Incumbent { priority: P::LOW, executing_for: ms(30), grace: ms(100), committing: false };
/// assert_eq!(preemption(&low, P::CRITICAL), Preemption::After(ms(70)));
/// assert_eq!(preemption(&Incumbent { executing_for: ms(100), ..low }, P::CRITICAL), Preemption::Now);
/// assert_eq!(preemption(&Incumbent { committing: true, ..low }, P::CRITICAL), Preemption::AfterCommit);
/// assert_eq!(preemption(&low, P::LOW), Preemption::Never);
/// ```
#[must_use]
pub fn preemption(incumbent: &Incumbent, challenger: OperationPriority) -> Preemption {
    if !outranks(challenger, incumbent.priority) {
        Preemption::Never
    } else if incumbent.committing {
        Preemption::AfterCommit
    } else if incumbent.executing_for >= incumbent.grace {
        Preemption::Now
    } else {
        // Never saturates: the branch above took `executing_for >= grace`.
        Preemption::After(incumbent.grace.saturating_sub(incumbent.executing_for))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OperationPriority as P;

    fn c(seq: u64, p: P) -> Candidate {
        Candidate {
            op_id: OpId::from_parts(9, seq),
            effective_priority: p,
            submitted_seq: seq,
        }
    }

    #[test]
    fn critical_beats_normal_and_low_in_any_arrival_order() {
        let ops = [c(1, P::LOW), c(2, P::NORMAL), c(3, P::CRITICAL)];
        // Every permutation of arrival order picks the CRITICAL one.
        let perms = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for perm in perms {
            let group: Vec<_> = perm.iter().map(|&i| ops[i]).collect();
            let w = select_winner(&group).unwrap();
            assert_eq!(group[w].effective_priority, P::CRITICAL);
        }
    }

    #[test]
    fn equal_priorities_go_to_the_earliest_submission_then_op_id() {
        let group = [c(7, P::HIGH), c(3, P::HIGH), c(5, P::HIGH)];
        assert_eq!(select_winner(&group), Some(1));
        let same_seq = [
            Candidate {
                op_id: OpId::from_parts(2, 0),
                effective_priority: P::HIGH,
                submitted_seq: 1,
            },
            Candidate {
                op_id: OpId::from_parts(1, 0),
                effective_priority: P::HIGH,
                submitted_seq: 1,
            },
        ];
        assert_eq!(select_winner(&same_seq), Some(1));
        assert_eq!(select_winner(&[]), None);
    }

    #[test]
    fn rank_is_a_strict_total_order() {
        let all: Vec<_> = (0..30)
            .map(|i| c(i, P::new(u8::try_from(i % 10 + 1).unwrap()).unwrap()))
            .collect();
        for a in &all {
            assert_eq!(rank(a, a), Ordering::Equal);
            for b in &all {
                if a != b {
                    assert_ne!(rank(a, b), Ordering::Equal);
                    assert_eq!(rank(a, b), rank(b, a).reverse());
                }
            }
        }
        let w = select_winner(&all).unwrap();
        let l = select_weakest(&all).unwrap();
        assert!(all.iter().all(|x| !beats(x, &all[w])));
        assert!(all.iter().all(|x| !beats(&all[l], x)));
    }

    #[test]
    fn effective_priority_is_the_chain_maximum() {
        assert_eq!(effective_priority(P::LOW, None), P::LOW);
        assert_eq!(effective_priority(P::LOW, Some(P::CRITICAL)), P::CRITICAL);
        assert_eq!(effective_priority(P::CRITICAL, Some(P::LOW)), P::CRITICAL);
        // A chain LOW <- NORMAL <- HIGH root: every descendant is at least HIGH.
        let root = effective_priority(P::HIGH, None);
        let mid = effective_priority(P::NORMAL, Some(root));
        let leaf = effective_priority(P::LOW, Some(mid));
        assert_eq!(leaf, P::HIGH);
    }

    #[test]
    fn preemption_needs_strictly_higher_priority_no_commit_and_an_expired_grace() {
        let ms = Duration::from_millis;
        let inc = |priority, executing_for, committing| Incumbent {
            priority,
            executing_for: ms(executing_for),
            grace: ms(100),
            committing,
        };
        assert_eq!(
            preemption(&inc(P::LOW, 99, false), P::CRITICAL),
            Preemption::After(ms(1))
        );
        assert_eq!(
            preemption(&inc(P::LOW, 100, false), P::CRITICAL),
            Preemption::Now
        );
        assert_eq!(
            preemption(&inc(P::LOW, 900, false), P::NORMAL),
            Preemption::Now
        );
        assert_eq!(
            preemption(&inc(P::LOW, 900, true), P::CRITICAL),
            Preemption::AfterCommit
        );
        assert_eq!(
            preemption(&inc(P::HIGH, 9_000, false), P::HIGH),
            Preemption::Never
        );
        assert_eq!(
            preemption(&inc(P::HIGH, 9_000, true), P::NORMAL),
            Preemption::Never
        );
        assert!(outranks(P::HIGH, P::NORMAL));
        assert!(!outranks(P::HIGH, P::HIGH));
    }

    #[test]
    fn a_zero_grace_allows_preemption_at_once() {
        let inc = Incumbent {
            priority: P::LOW,
            executing_for: Duration::ZERO,
            grace: Duration::ZERO,
            committing: false,
        };
        assert_eq!(preemption(&inc, P::NORMAL), Preemption::Now);
    }
}
