//! Hand-written histories: each rule's violation is reported, and valid histories pass.

use std::time::Duration;

use conflict_core::{
    Committed, EntityId, EntityKey, Event, OpId, OperationInfo, OperationPriority as P,
    OutcomeKind, RejectReason, Versions,
};

use crate::{Actor, CallId, Effect, History, Outcome, Violation, check};

fn key(name: &str) -> EntityKey {
    // Stable ids per name, so that failures print the same keys every run.
    let n = name.bytes().fold(0u64, |n, b| n * 131 + u64::from(b)) & 0xffff_ffff_ffff;
    let id: EntityId = format!("00000000-0000-4000-8000-{n:012x}")
        .parse()
        .expect("a well-formed uuid");
    EntityKey::new("Reg", id)
}

fn op(n: u64) -> OpId {
    OpId::from_parts(7, n)
}

fn info(op_id: OpId, targets: &[&EntityKey], priority: P) -> OperationInfo {
    OperationInfo {
        op_id,
        op_type: "bump".into(),
        target: targets[0].clone(),
        more_targets: targets[1..].iter().map(|k| (*k).clone()).collect(),
        priority,
        effective_priority: priority,
        parent_op_id: None,
    }
}

fn completed(info: OperationInfo, outcome: OutcomeKind, version: Option<u64>) -> Event {
    Event::OperationCompleted {
        op: info,
        outcome,
        version,
        attempts: 1,
        duration: Duration::ZERO,
    }
}

fn committed(op_id: OpId, writes: &[(&EntityKey, u64)]) -> Committed<()> {
    let versions: Vec<(EntityKey, u64)> = writes.iter().map(|(k, v)| ((*k).clone(), *v)).collect();
    Committed {
        value: (),
        version: writes.first().map_or(0, |w| w.1),
        versions: Versions::from(versions),
        op_id,
        attempts: 1,
    }
}

/// A write of `key` at `version` by a call of op `n`, reading `version - 2` as the model value
/// (a counter starting at 0 at version 1), recorded sequentially.
fn bump(h: &History, n: u64, key: &EntityKey, version: u64) {
    let call = h.invoke("bump", [key.clone()]);
    call.committed(
        &committed(op(n), &[(key, version)]),
        [Effect::write(
            key.clone(),
            version,
            version - 2,
            version - 1,
        )],
    );
}

fn load(h: &History, key: &EntityKey, version: u64, value: u64) {
    let id = h.start("load", [key.clone()]);
    h.end(
        id,
        Outcome::Ok {
            op_id: None,
            effects: vec![Effect::read(key.clone(), version, value)],
        },
    );
}

fn kinds(report: &crate::Report) -> Vec<&'static str> {
    report
        .violations
        .iter()
        .map(|v| match v {
            Violation::NeverEnded { .. } => "NeverEnded",
            Violation::EndedTwice { .. } => "EndedTwice",
            Violation::EventsMissed { .. } => "EventsMissed",
            Violation::OperationNeverCompleted { .. } => "OperationNeverCompleted",
            Violation::OperationCompletedTwice { .. } => "OperationCompletedTwice",
            Violation::OutcomeMismatch { .. } => "OutcomeMismatch",
            Violation::ReportedVersionMismatch { .. } => "ReportedVersionMismatch",
            Violation::UnaccountedOperations { .. } => "UnaccountedOperations",
            Violation::DuplicateVersion { .. } => "DuplicateVersion",
            Violation::VersionOutOfRange { .. } => "VersionOutOfRange",
            Violation::VersionGap { .. } => "VersionGap",
            Violation::NotLinearizable { .. } => "NotLinearizable",
            Violation::StaleValue { .. } => "StaleValue",
            Violation::NotSerializable { .. } => "NotSerializable",
            Violation::StagingNotTopRanked { .. } => "StagingNotTopRanked",
            Violation::StagingReasonWrong { .. } => "StagingReasonWrong",
            Violation::StagingWinnerUnknown { .. } => "StagingWinnerUnknown",
            Violation::PreemptedByLower { .. } => "PreemptedByLower",
        })
        .collect()
}

#[test]
fn a_sequential_counter_history_with_a_final_load_passes() {
    let (h, x) = (History::new(), key("x"));
    h.initial(x.clone(), 1, Some(0));
    for v in 2..=5 {
        bump(&h, v, &x, v);
    }
    load(&h, &x, 5, 4);
    let r = h.check();
    assert!(r.is_ok(), "{r}");
    assert_eq!((r.stats.writes, r.stats.reads), (4, 1));
    // Every write and the load had a known predecessor state to compare with.
    assert_eq!(r.stats.values_checked, 5);
}

#[test]
fn a_call_that_never_ended_and_one_that_ended_twice_are_reported() {
    let (h, x) = (History::new(), key("x"));
    let hung = h.invoke("bump", [x.clone()]);
    let twice = h.start("bump", [x.clone()]);
    h.end(twice, Outcome::Dropped);
    h.end(twice, Outcome::Dropped);
    let r = h.check();
    assert_eq!(kinds(&r), ["NeverEnded", "EndedTwice"], "{r}");
    assert_eq!(
        r.violations[0],
        Violation::NeverEnded {
            call: CallId(0),
            op: "bump".into()
        }
    );
    // Once the guard goes, the call has ended (as dropped) and only the double ending is left.
    drop(hung);
    assert_eq!(kinds(&h.check()), ["EndedTwice"]);
}

#[test]
fn duplicate_versions_gaps_and_versions_below_the_start_are_reported() {
    let (h, x) = (History::new(), key("x"));
    h.initial(x.clone(), 3, None);
    for (n, v) in [(1, 4), (2, 4), (3, 6), (4, 3)] {
        let call = h.invoke("bump", [x.clone()]);
        call.committed(&committed(op(n), &[(&x, v)]), []);
    }
    let r = h.check();
    let k = kinds(&r);
    assert!(k.contains(&"DuplicateVersion"), "{r}");
    assert!(k.contains(&"VersionOutOfRange"), "{r}");
    assert!(
        r.violations.contains(&Violation::VersionGap {
            key: x.clone(),
            missing: vec![5],
            missing_count: 1,
            unplaced: 0
        }),
        "{r}"
    );
    assert!(r.violations.contains(&Violation::DuplicateVersion {
        key: x,
        version: 4,
        writers: vec![Actor::Call(CallId(0)), Actor::Call(CallId(1))],
    }));
}

#[test]
fn a_final_load_beyond_the_last_known_commit_is_a_gap_unless_a_dropped_commit_fills_it() {
    let (h, x, y) = (History::new(), key("x"), key("y"));
    h.initial(x.clone(), 1, Some(0));
    h.initial(y.clone(), 1, Some(0));
    bump(&h, 1, &x, 2);
    load(&h, &x, 4, 3);
    let r = h.check();
    assert!(
        r.violations.contains(&Violation::VersionGap {
            key: x.clone(),
            missing: vec![3, 4],
            missing_count: 2,
            unplaced: 0
        }),
        "{r}"
    );

    // Two dropped calls: the events say both committed, one on x alone (version 3), one on
    // y then x (y's version is in the event, x's is not).
    let (h, x2) = (History::new(), x.clone());
    h.initial(x.clone(), 1, Some(0));
    h.initial(y.clone(), 1, Some(0));
    bump(&h, 1, &x2, 2);
    drop(h.invoke("bump", [x.clone()]));
    drop(h.invoke("bump2", [y.clone(), x.clone()]));
    load(&h, &x, 4, 3);
    load(&h, &y, 2, 1);
    let i1 = info(op(1), &[&x], P::NORMAL);
    h.observe(&completed(i1, OutcomeKind::Committed, Some(2)));
    let i2 = info(op(2), &[&x], P::NORMAL);
    h.observe(&completed(i2, OutcomeKind::Committed, Some(3)));
    let i3 = info(op(3), &[&y, &x], P::NORMAL);
    h.observe(&completed(i3, OutcomeKind::Committed, Some(2)));
    let r = h.check();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.stats.event_only_commits, 2);
}

#[test]
fn a_write_invoked_after_a_newer_one_returned_is_not_linearizable() {
    let (h, x) = (History::new(), key("x"));
    h.initial(x.clone(), 1, None);
    let a = h.invoke("bump", [x.clone()]);
    let b = h.invoke("bump", [x.clone()]);
    // Overlapping calls may commit in either order.
    b.committed(&committed(op(2), &[(&x, 2)]), []);
    a.committed(&committed(op(1), &[(&x, 3)]), []);
    assert!(h.check().is_ok());
    // But one invoked after a commit of version 4 returned cannot write version 4 - 1.
    let c = h.invoke("bump", [x.clone()]);
    c.committed(&committed(op(3), &[(&x, 5)]), []);
    let d = h.invoke("bump", [x.clone()]);
    d.committed(&committed(op(4), &[(&x, 4)]), []);
    let r = h.check();
    assert_eq!(
        r.violations,
        [Violation::NotLinearizable {
            key: x,
            earlier: Actor::Call(CallId(2)),
            earlier_version: 5,
            later: Actor::Call(CallId(3)),
            later_version: 4,
        }],
        "{r}"
    );
}

#[test]
fn a_read_older_than_a_read_that_returned_before_it_is_not_linearizable() {
    let (h, x) = (History::new(), key("x"));
    h.initial(x.clone(), 1, Some(0));
    bump(&h, 1, &x, 2);
    load(&h, &x, 2, 1);
    load(&h, &x, 1, 0);
    assert_eq!(kinds(&h.check()), ["NotLinearizable"]);
}

#[test]
fn a_lost_update_and_a_wrong_read_break_the_register_model() {
    let (h, x) = (History::new(), key("x"));
    h.initial(x.clone(), 1, Some(0));
    let a = h.invoke("bump", [x.clone()]);
    let b = h.invoke("bump", [x.clone()]);
    // Both read 0 (the same snapshot), yet the store took both: b's write of 3 read 0, not 1.
    a.committed(
        &committed(op(1), &[(&x, 2)]),
        [Effect::write(x.clone(), 2, 0, 1)],
    );
    b.committed(
        &committed(op(2), &[(&x, 3)]),
        [Effect::write(x.clone(), 3, 0, 1)],
    );
    load(&h, &x, 3, 2);
    let r = h.check();
    assert_eq!(
        r.violations,
        [
            Violation::StaleValue {
                key: x.clone(),
                actor: Actor::Call(CallId(1)),
                version: 2,
                found: 0,
                expected: 1
            },
            Violation::StaleValue {
                key: x,
                actor: Actor::Call(CallId(2)),
                version: 3,
                found: 2,
                expected: 1
            }
        ],
        "{r}"
    );
}

#[test]
fn crossed_versions_of_a_two_entity_commit_pair_are_not_serializable() {
    let (x, y) = (key("x"), key("y"));
    let both = |h: &History, n, vx, vy| {
        let c = h.invoke("bump2", [x.clone(), y.clone()]);
        c.committed(&committed(op(n), &[(&x, vx), (&y, vy)]), []);
    };
    let h = History::new();
    h.initial(x.clone(), 1, None);
    h.initial(y.clone(), 1, None);
    // Concurrent, so real time allows any order; versions agree on "1 before 2".
    let (a, b) = (
        h.invoke("bump2", [x.clone(), y.clone()]),
        h.invoke("bump2", [x.clone(), y.clone()]),
    );
    a.committed(&committed(op(1), &[(&x, 2), (&y, 2)]), []);
    b.committed(&committed(op(2), &[(&x, 3), (&y, 3)]), []);
    let r = h.check();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.stats.multi_entity_commits, 2);

    // 1 before 2 on x, 2 before 1 on y.
    let h = History::new();
    h.initial(x.clone(), 1, None);
    h.initial(y.clone(), 1, None);
    let (a, b) = (
        h.invoke("bump2", [x.clone(), y.clone()]),
        h.invoke("bump2", [x.clone(), y.clone()]),
    );
    a.committed(&committed(op(1), &[(&x, 2), (&y, 3)]), []);
    b.committed(&committed(op(2), &[(&x, 3), (&y, 2)]), []);
    both(&h, 3, 4, 4);
    let r = h.check();
    assert_eq!(kinds(&r), ["NotSerializable"], "{r}");
    let Violation::NotSerializable { cycle } = &r.violations[0] else {
        unreachable!()
    };
    let mut actors: Vec<Actor> = cycle.iter().map(|(a, _)| *a).collect();
    actors.sort();
    assert_eq!(actors, [Actor::Call(CallId(0)), Actor::Call(CallId(1))]);
    let mut keys: Vec<&EntityKey> = cycle.iter().map(|(_, k)| k).collect();
    keys.sort();
    let mut expected = vec![&x, &y];
    expected.sort();
    assert_eq!(keys, expected);
}

#[test]
fn a_reader_between_two_writers_closes_a_cycle_through_another_entity() {
    let (x, y) = (key("x"), key("y"));
    let h = History::new();
    h.initial(x.clone(), 1, None);
    h.initial(y.clone(), 1, None);
    // R read x at 1 (before W's write of x at 2) and y at 2 (after W's write of y at 2): R
    // must be both before and after W.
    let (w, r) = (
        h.invoke("bump2", [x.clone(), y.clone()]),
        h.start("read2", [x.clone(), y.clone()]),
    );
    w.committed(&committed(op(1), &[(&x, 2), (&y, 2)]), []);
    h.end(
        r,
        Outcome::Ok {
            op_id: None,
            effects: vec![
                Effect {
                    read_value: None,
                    ..Effect::read(x.clone(), 1, 0)
                },
                Effect {
                    read_value: None,
                    ..Effect::read(y.clone(), 2, 0)
                },
            ],
        },
    );
    assert_eq!(kinds(&h.check()), ["NotSerializable"]);
}

#[test]
fn events_are_checked_for_exactly_once_completion_and_agreement_with_callers() {
    let (h, x) = (History::new(), key("x"));
    h.initial(x.clone(), 1, None);
    bump(&h, 1, &x, 2);
    let failed = h.invoke("bump", [x.clone()]);
    failed.failed(
        &conflict_core::ConflictError::<std::convert::Infallible>::ShuttingDown { op_id: op(2) },
    );
    let i = |n| info(op(n), &[&x], P::NORMAL);
    h.observe(&completed(i(1), OutcomeKind::Committed, Some(3)));
    h.observe(&completed(i(2), OutcomeKind::Committed, Some(3)));
    h.observe(&Event::OperationStarted {
        op: i(3),
        attempt: 1,
    });
    h.observe(&completed(i(4), OutcomeKind::Rejected, None));
    h.observe(&completed(i(4), OutcomeKind::Rejected, None));
    h.observe_received(&conflict_runtime::events::Received::Missed(2));
    let r = h.check();
    let mut k = kinds(&r);
    k.sort_unstable();
    assert_eq!(
        k,
        [
            "EventsMissed",
            "OperationCompletedTwice",
            "OperationNeverCompleted",
            "OutcomeMismatch",
            "ReportedVersionMismatch",
            "UnaccountedOperations",
        ],
        "{r}"
    );
    assert!(r.violations.contains(&Violation::OutcomeMismatch {
        call: CallId(1),
        op_id: op(2),
        caller: OutcomeKind::ShuttingDown,
        runtime: Some(OutcomeKind::Committed),
    }));
}

fn rejected(loser: OpId, lp: P, winner: OpId, wp: P, reason: RejectReason) -> Event {
    let x = key("x");
    Event::OperationRejected {
        op: info(loser, &[&x], lp),
        winner_op_id: winner,
        winner_priority: wp,
        reason,
    }
}

#[test]
fn staging_rejections_must_name_a_winner_that_ranks_ahead() {
    let x = key("x");
    let h = History::new();
    let started = |n, p| Event::OperationStarted {
        op: info(op(n), &[&x], p),
        attempt: 1,
    };
    for (n, p) in [(1, P::HIGH), (2, P::NORMAL), (3, P::NORMAL)] {
        h.observe(&started(n, p));
        h.observe(&completed(
            info(op(n), &[&x], p),
            OutcomeKind::Committed,
            None,
        ));
    }
    // Valid: a higher priority beats a lower one; of equals, the earlier submission wins.
    h.observe(&rejected(
        op(5),
        P::NORMAL,
        op(1),
        P::HIGH,
        RejectReason::LostPriority,
    ));
    h.observe(&rejected(
        op(6),
        P::NORMAL,
        op(2),
        P::NORMAL,
        RejectReason::SubmittedLater,
    ));
    h.observe(&completed(
        info(op(5), &[&x], P::NORMAL),
        OutcomeKind::Rejected,
        None,
    ));
    h.observe(&completed(
        info(op(6), &[&x], P::NORMAL),
        OutcomeKind::Rejected,
        None,
    ));
    let r = h.check();
    // (No call is recorded, so the losers' completions are unaccounted for; nothing else.)
    assert_eq!(kinds(&r), ["UnaccountedOperations"], "{r}");
    assert_eq!(r.stats.staging_decisions, 2);

    let h = History::new();
    for (n, p) in [(1, P::LOW), (3, P::NORMAL)] {
        h.observe(&completed(
            info(op(n), &[&x], p),
            OutcomeKind::Committed,
            None,
        ));
    }
    // The LOW winner beat a NORMAL loser; an equal-priority winner submitted later; a winner
    // that does not exist; and a reason that does not fit the priorities.
    h.observe(&rejected(
        op(2),
        P::NORMAL,
        op(1),
        P::LOW,
        RejectReason::LostPriority,
    ));
    h.observe(&rejected(
        op(2),
        P::NORMAL,
        op(3),
        P::NORMAL,
        RejectReason::SubmittedLater,
    ));
    h.observe(&rejected(
        op(4),
        P::LOW,
        op(9),
        P::HIGH,
        RejectReason::LostPriority,
    ));
    h.observe(&rejected(
        op(5),
        P::NORMAL,
        op(3),
        P::NORMAL,
        RejectReason::LostPriority,
    ));
    let r = check(&h.snapshot());
    let k: Vec<_> = kinds(&r)
        .into_iter()
        .filter(|k| k.starts_with("Staging"))
        .collect();
    assert_eq!(
        k,
        [
            "StagingNotTopRanked",
            "StagingReasonWrong",
            "StagingNotTopRanked",
            "StagingWinnerUnknown",
            "StagingReasonWrong"
        ],
        "{r}"
    );
}

#[test]
fn a_preemption_by_an_equal_or_lower_priority_is_reported() {
    let x = key("x");
    let h = History::new();
    let pre = |by_priority| Event::OperationPreempted {
        op: info(op(1), &[&x], P::NORMAL),
        by_op_id: op(2),
        by_priority,
    };
    h.observe(&pre(P::HIGH));
    h.observe(&pre(P::NORMAL));
    let r = h.check();
    let k: Vec<_> = kinds(&r)
        .into_iter()
        .filter(|k| *k == "PreemptedByLower")
        .collect();
    assert_eq!(k, ["PreemptedByLower"], "{r}");
    assert_eq!(r.stats.preemptions, 2);
}
