//! The checker: reads a [`Recorded`] history and reports every rule it breaks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use conflict_core::policy::{self, Candidate};
use conflict_core::{EntityKey, Event, OpId, OperationPriority, OutcomeKind, RejectReason};

use crate::record::{Access, CallId, CallRecord, Outcome, Recorded};

/// Who did something: a call the caller recorded, or an operation known only from the
/// runtime's events (a dropped call whose commit was already in flight).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Actor {
    /// A recorded call.
    Call(CallId),
    /// An operation seen only in events.
    Op(OpId),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Call(c) => c.fmt(f),
            Self::Op(o) => write!(f, "op {o}"),
        }
    }
}

/// A broken rule, with what is needed to find it in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A call was invoked and never ended (its guard is still alive: a hung or leaked call).
    NeverEnded {
        /// The call.
        call: CallId,
        /// Its operation kind.
        op: String,
    },
    /// A call ended more than once.
    EndedTwice {
        /// The call.
        call: CallId,
        /// How many endings it has.
        endings: usize,
    },
    /// The event subscription lost events: the event-based checks saw an incomplete history.
    EventsMissed {
        /// How many.
        count: u64,
    },
    /// An operation has events but no `OperationCompleted`.
    OperationNeverCompleted {
        /// The operation.
        op_id: OpId,
    },
    /// An operation has more than one `OperationCompleted`.
    OperationCompletedTwice {
        /// The operation.
        op_id: OpId,
        /// How many.
        count: usize,
    },
    /// What the caller was told differs from what the runtime recorded for the operation.
    OutcomeMismatch {
        /// The call.
        call: CallId,
        /// Its operation.
        op_id: OpId,
        /// What the caller got.
        caller: OutcomeKind,
        /// What the runtime's `OperationCompleted` says (`None`: there is none).
        runtime: Option<OutcomeKind>,
    },
    /// The version the caller was told differs from the one in the runtime's event.
    ReportedVersionMismatch {
        /// The call.
        call: CallId,
        /// The entity (the operation's first target).
        key: EntityKey,
        /// What the caller was told.
        caller: u64,
        /// What the event says.
        runtime: Option<u64>,
    },
    /// More root operations completed than the calls that could account for them (calls whose
    /// operation id the caller never learnt: dropped ones, refusals without an id).
    UnaccountedOperations {
        /// Completed root operations no call names.
        unmatched: usize,
        /// Calls that could be them.
        candidates: usize,
    },
    /// Two commits wrote the same version of one entity.
    DuplicateVersion {
        /// The entity.
        key: EntityKey,
        /// The version.
        version: u64,
        /// Who wrote it.
        writers: Vec<Actor>,
    },
    /// A write at or below the entity's initial version, or a read below it.
    VersionOutOfRange {
        /// The entity.
        key: EntityKey,
        /// The version.
        version: u64,
        /// The initial version.
        initial: u64,
        /// Who.
        actor: Actor,
    },
    /// Versions between the initial and the last one seen that no commit accounts for.
    VersionGap {
        /// The entity.
        key: EntityKey,
        /// The first missing versions (at most 16).
        missing: Vec<u64>,
        /// How many are missing.
        missing_count: usize,
        /// Commits on this entity whose version is not known (they may fill that many).
        unplaced: usize,
    },
    /// Real-time order contradicts version order: `earlier` returned before `later` was
    /// invoked, yet `later` wrote (or read) an older version of `key` than `earlier`.
    NotLinearizable {
        /// The entity.
        key: EntityKey,
        /// The call that ended first.
        earlier: Actor,
        /// Its version and whether it wrote.
        earlier_version: u64,
        /// The call invoked after it.
        later: Actor,
        /// Its version.
        later_version: u64,
    },
    /// The register model was broken: `actor` read `found` at `version` of `key` (a write reads
    /// the state of `version - 1`), but the history says that state was `expected`.
    StaleValue {
        /// The entity.
        key: EntityKey,
        /// Who read.
        actor: Actor,
        /// The version whose state was read.
        version: u64,
        /// What it read.
        found: u64,
        /// What that version holds.
        expected: u64,
    },
    /// The precedence graph of multi-entity commits has a cycle: each actor must come before
    /// the next (on the key named), and the last before the first.
    NotSerializable {
        /// The cycle: each actor precedes the next on this key.
        cycle: Vec<(Actor, EntityKey)>,
    },
    /// A staging decision rejected an operation that ranks ahead of the winner.
    StagingNotTopRanked {
        /// The rejected operation.
        loser: OpId,
        /// Its effective priority.
        loser_priority: OperationPriority,
        /// The winner.
        winner: OpId,
        /// The winner's effective priority.
        winner_priority: OperationPriority,
    },
    /// A rejection's reason does not match the priorities (`LostPriority` needs a strictly
    /// higher winner, `SubmittedLater` an equal one).
    StagingReasonWrong {
        /// The rejected operation.
        loser: OpId,
        /// The reason given.
        reason: RejectReason,
    },
    /// A rejection names a winner that has no event of its own, or whose own events give
    /// another effective priority than the rejection.
    StagingWinnerUnknown {
        /// The rejected operation.
        loser: OpId,
        /// The winner named.
        winner: OpId,
        /// The winner's effective priority in its own events (`None`: it has none).
        own_priority: Option<OperationPriority>,
    },
    /// An operation was preempted by one that does not outrank it.
    PreemptedByLower {
        /// The preempted operation.
        op_id: OpId,
        /// Its effective priority.
        priority: OperationPriority,
        /// The preemptor.
        by: OpId,
        /// The preemptor's effective priority.
        by_priority: OperationPriority,
    },
}

/// What the check looked at, so that a test can tell a passing check from one that saw
/// nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls recorded.
    pub calls: usize,
    /// Calls that committed (as their callers saw).
    pub committed_calls: usize,
    /// Calls the caller dropped.
    pub dropped_calls: usize,
    /// Operations seen in events.
    pub operations: usize,
    /// Commits known only from events (dropped callers).
    pub event_only_commits: usize,
    /// Entities whose versions were checked.
    pub entities: usize,
    /// Writes with a known version, checked for gaps, order and values.
    pub writes: usize,
    /// Reads with a known version.
    pub reads: usize,
    /// Writes and reads whose model value was checked against the previous state.
    pub values_checked: usize,
    /// Pairs of entities written by one commit (what serializability is about).
    pub multi_entity_commits: usize,
    /// Staging rejections checked.
    pub staging_decisions: usize,
    /// Preemptions checked.
    pub preemptions: usize,
}

/// The result of [`check`]: every violation found, and what was looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The violations, grouped by rule in the order of [`Violation`]'s variants.
    pub violations: Vec<Violation>,
    /// What was checked.
    pub stats: Stats,
}

impl Report {
    /// Whether the history broke no rule.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} violation(s); checked {:?}",
            self.violations.len(),
            self.stats
        )?;
        for v in &self.violations {
            writeln!(f, "  - {v:?}")?;
        }
        Ok(())
    }
}

/// One write or read of one entity, with what the checks need.
#[derive(Clone, Debug)]
struct Access1 {
    actor: Actor,
    access: Access,
    version: u64,
    read_value: Option<u64>,
    wrote_value: Option<u64>,
    /// Invocation and return ticks, for calls the caller saw return.
    interval: Option<(u64, u64)>,
}

#[derive(Default)]
struct PerKey {
    accesses: Vec<Access1>,
    /// Commits on this entity whose version is not known.
    unplaced: usize,
}

/// What the events say about one operation.
#[derive(Default)]
struct OpEvents {
    any: bool,
    completions: Vec<(OutcomeKind, Option<u64>)>,
    target: Option<EntityKey>,
    more_targets: Vec<EntityKey>,
    root: bool,
    priority: Option<OperationPriority>,
}

/// Checks a recorded history against every rule:
///
/// 1. every call ends exactly once, and (with events) every operation completes exactly once,
///    with the outcome its caller was told;
/// 2. per entity, committed versions are unique and gap-free from the initial version to the
///    last one seen;
/// 3. per entity, the history is linearizable against a register: real-time order agrees with
///    version order, and each write (read) saw the state the previous version left (that
///    version holds);
/// 4. the precedence graph over all entities (version order per entity) has no cycle, so
///    multi-entity commits are serializable;
/// 5. every staging rejection and preemption follows [`policy::rank`].
#[must_use]
pub fn check(rec: &Recorded) -> Report {
    let mut report = Report::default();
    let mut out = |v| report.violations.push(v);
    let mut stats = Stats {
        calls: rec.calls.len(),
        ..Stats::default()
    };

    // 1. Endings, caller side.
    for call in &rec.calls {
        match call.ends.len() {
            0 => out(Violation::NeverEnded {
                call: call.id,
                op: call.op.to_string(),
            }),
            1 => {}
            n => out(Violation::EndedTwice {
                call: call.id,
                endings: n,
            }),
        }
        match call.ends.first().map(|e| &e.outcome) {
            Some(Outcome::Ok { op_id: Some(_), .. }) => stats.committed_calls += 1,
            Some(Outcome::Dropped) => stats.dropped_calls += 1,
            _ => {}
        }
    }

    // 1. Endings, runtime side, and the caller's view against it.
    let ops = ops_of(&rec.events);
    stats.operations = ops.len();
    let mut per_key: BTreeMap<EntityKey, PerKey> = BTreeMap::new();
    if rec.events_recorded {
        check_events(rec, &ops, &mut per_key, &mut stats, &mut out);
    }

    // The caller-side accesses.
    for call in &rec.calls {
        let Some(first) = call.ends.first() else {
            continue;
        };
        let Outcome::Ok { effects, op_id } = &first.outcome else {
            continue;
        };
        if op_id.is_some() && effects.iter().filter(|e| e.access == Access::Write).count() > 1 {
            stats.multi_entity_commits += 1;
        }
        for e in effects {
            per_key
                .entry(e.key.clone())
                .or_default()
                .accesses
                .push(Access1 {
                    actor: Actor::Call(call.id),
                    access: e.access,
                    version: e.version,
                    read_value: e.read_value,
                    wrote_value: e.wrote_value,
                    interval: Some((call.invoked, first.at)),
                });
        }
    }
    stats.entities = per_key.len();

    // 2-3. Per entity: versions, real-time order, values.
    let mut graph = Graph::default();
    for (key, pk) in &per_key {
        let initial = rec.initial.get(key).copied();
        check_versions(key, pk, initial.map(|i| i.version), &mut stats, &mut out);
        check_real_time(key, &pk.accesses, &mut out);
        check_values(key, &pk.accesses, initial, &mut stats, &mut out);
        graph.add_key(key, &pk.accesses);
    }

    // 4. Serializability.
    for cycle in graph.cycles() {
        out(Violation::NotSerializable { cycle });
    }

    // 5. Staging decisions.
    check_staging(&rec.events, &ops, &mut stats, &mut out);

    report.stats = stats;
    report
}

/// Rule 1 on the runtime's side: each operation completes once, as its caller was told, and
/// no more operations complete than calls can account for. Commits of dropped calls (known
/// only from events) join `per_key`.
fn check_events(
    rec: &Recorded,
    ops: &BTreeMap<OpId, OpEvents>,
    per_key: &mut BTreeMap<EntityKey, PerKey>,
    stats: &mut Stats,
    out: &mut impl FnMut(Violation),
) {
    if rec.missed_events > 0 {
        out(Violation::EventsMissed {
            count: rec.missed_events,
        });
    }
    for (op_id, o) in ops {
        match o.completions.len() {
            0 => out(Violation::OperationNeverCompleted { op_id: *op_id }),
            1 => {}
            count => out(Violation::OperationCompletedTwice {
                op_id: *op_id,
                count,
            }),
        }
    }
    let mut named: HashSet<OpId> = HashSet::new();
    let mut candidates = 0;
    for call in &rec.calls {
        let Some(first) = call.ends.first() else {
            continue;
        };
        match first.outcome.op_id() {
            Some(op_id) => {
                named.insert(op_id);
                compare_with_events(call, op_id, &first.outcome, ops.get(&op_id), out);
            }
            None if matches!(
                first.outcome,
                Outcome::Dropped | Outcome::Failed { op_id: None, .. }
            ) =>
            {
                candidates += 1;
            }
            None => {}
        }
    }
    let mut unmatched = 0;
    for (op_id, o) in ops {
        if !o.root || named.contains(op_id) {
            continue;
        }
        unmatched += 1;
        // A dropped call's commit: its first target's version is in the event, the
        // others are not.
        if let Some((OutcomeKind::Committed, version)) = o.completions.first() {
            stats.event_only_commits += 1;
            if let (Some(target), Some(version)) = (&o.target, version) {
                per_key
                    .entry(target.clone())
                    .or_default()
                    .accesses
                    .push(Access1 {
                        actor: Actor::Op(*op_id),
                        access: Access::Write,
                        version: *version,
                        read_value: None,
                        wrote_value: None,
                        interval: None,
                    });
            } else if let Some(target) = &o.target {
                per_key.entry(target.clone()).or_default().unplaced += 1;
            }
            for more in &o.more_targets {
                per_key.entry(more.clone()).or_default().unplaced += 1;
            }
        }
    }
    if unmatched > candidates {
        out(Violation::UnaccountedOperations {
            unmatched,
            candidates,
        });
    }
}

fn ops_of(events: &[Event]) -> BTreeMap<OpId, OpEvents> {
    let mut ops: BTreeMap<OpId, OpEvents> = BTreeMap::new();
    for e in events {
        let info = e.op();
        let o = ops.entry(info.op_id).or_default();
        if !o.any {
            o.any = true;
            o.target = Some(info.target.clone());
            o.more_targets.clone_from(&info.more_targets);
            o.root = info.parent_op_id.is_none();
            o.priority = Some(info.effective_priority);
        }
        if let Event::OperationCompleted {
            outcome, version, ..
        } = e
        {
            o.completions.push((*outcome, *version));
        }
    }
    ops
}

fn compare_with_events(
    call: &CallRecord,
    op_id: OpId,
    outcome: &Outcome,
    events: Option<&OpEvents>,
    out: &mut impl FnMut(Violation),
) {
    let Some(caller) = outcome.kind() else {
        return;
    };
    let completion = events.and_then(|o| o.completions.first());
    let runtime = completion.map(|(k, _)| *k);
    if runtime != Some(caller) {
        out(Violation::OutcomeMismatch {
            call: call.id,
            op_id,
            caller,
            runtime,
        });
        return;
    }
    let (Outcome::Ok { effects, .. }, Some(o)) = (outcome, events) else {
        return;
    };
    let Some(target) = &o.target else {
        return;
    };
    if let Some(e) = effects
        .iter()
        .find(|e| e.access == Access::Write && e.key == *target)
    {
        let runtime = completion.and_then(|(_, v)| *v);
        if runtime != Some(e.version) {
            out(Violation::ReportedVersionMismatch {
                call: call.id,
                key: target.clone(),
                caller: e.version,
                runtime,
            });
        }
    }
}

fn check_versions(
    key: &EntityKey,
    pk: &PerKey,
    initial: Option<u64>,
    stats: &mut Stats,
    out: &mut impl FnMut(Violation),
) {
    let mut writers: BTreeMap<u64, Vec<Actor>> = BTreeMap::new();
    let mut last_read = None::<u64>;
    for a in &pk.accesses {
        match a.access {
            Access::Write => {
                stats.writes += 1;
                writers.entry(a.version).or_default().push(a.actor);
            }
            Access::Read => {
                stats.reads += 1;
                last_read = last_read.max(Some(a.version));
            }
        }
    }
    // Without a recorded start, the history starts just before its first write.
    let Some(initial) = initial.or_else(|| writers.keys().next().map(|v| v - 1)) else {
        return;
    };
    for a in &pk.accesses {
        let below = match a.access {
            Access::Write => a.version <= initial,
            Access::Read => a.version < initial,
        };
        if below {
            out(Violation::VersionOutOfRange {
                key: key.clone(),
                version: a.version,
                initial,
                actor: a.actor,
            });
        }
    }
    for (version, who) in &writers {
        if who.len() > 1 {
            out(Violation::DuplicateVersion {
                key: key.clone(),
                version: *version,
                writers: who.clone(),
            });
        }
    }
    let last = writers
        .keys()
        .next_back()
        .copied()
        .max(last_read)
        .unwrap_or(initial);
    let missing: Vec<u64> = (initial + 1..=last)
        .filter(|v| !writers.contains_key(v))
        .collect();
    // An unplaced commit may have written any one missing version (or, if the entity was
    // only read by it, none): only more holes than unplaced commits is a proven gap.
    if missing.len() > pk.unplaced {
        out(Violation::VersionGap {
            key: key.clone(),
            missing_count: missing.len(),
            missing: missing.into_iter().take(16).collect(),
            unplaced: pk.unplaced,
        });
    }
}

/// The place of an access in the version order: a write of `v` comes right after the state
/// `v - 1`, and reads of `v` after the write of `v`.
fn order_key(a: &Access1) -> (u64, u8) {
    match a.access {
        Access::Write => (a.version, 0),
        Access::Read => (a.version, 1),
    }
}

/// Finds every access `b` for which some `a` later in version order returned before `b` was
/// invoked. Versions fix the only candidate linearization (reads of one version commute), so
/// the history is linearizable exactly when no such pair exists: O(n log n).
fn check_real_time(key: &EntityKey, accesses: &[Access1], out: &mut impl FnMut(Violation)) {
    let mut timed: Vec<(&Access1, (u64, u64))> = accesses
        .iter()
        .filter_map(|a| a.interval.map(|i| (a, i)))
        .collect();
    timed.sort_by_key(|(a, _)| std::cmp::Reverse(order_key(a)));
    // The earliest return among accesses strictly later in version order than the group
    // being looked at.
    let mut earliest: Option<(u64, &Access1)> = None;
    let mut i = 0;
    while i < timed.len() {
        let group = order_key(timed[i].0);
        let mut j = i;
        while j < timed.len() && order_key(timed[j].0) == group {
            let (b, (invoked, _)) = timed[j];
            if let Some((ret, a)) = earliest {
                if ret < invoked {
                    out(Violation::NotLinearizable {
                        key: key.clone(),
                        earlier: a.actor,
                        earlier_version: a.version,
                        later: b.actor,
                        later_version: b.version,
                    });
                }
            }
            j += 1;
        }
        for &(a, (_, ret)) in &timed[i..j] {
            if earliest.is_none_or(|(r, _)| ret < r) {
                earliest = Some((ret, a));
            }
        }
        i = j;
    }
}

fn check_values(
    key: &EntityKey,
    accesses: &[Access1],
    initial: Option<crate::record::Initial>,
    stats: &mut Stats,
    out: &mut impl FnMut(Violation),
) {
    let mut held: HashMap<u64, Option<u64>> = HashMap::new();
    let mut ambiguous: HashSet<u64> = HashSet::new();
    if let Some(i) = initial {
        held.insert(i.version, i.value);
    }
    for a in accesses.iter().filter(|a| a.access == Access::Write) {
        if held.insert(a.version, a.wrote_value).is_some() {
            // Two writers of one version (reported as a duplicate): its state is unknown.
            ambiguous.insert(a.version);
        }
    }
    for a in accesses {
        let (Some(found), Some(seen)) = (
            a.read_value,
            match a.access {
                Access::Write => a.version.checked_sub(1),
                Access::Read => Some(a.version),
            },
        ) else {
            continue;
        };
        if ambiguous.contains(&seen) {
            continue;
        }
        if let Some(Some(expected)) = held.get(&seen) {
            stats.values_checked += 1;
            if *expected != found {
                out(Violation::StaleValue {
                    key: key.clone(),
                    actor: a.actor,
                    version: seen,
                    found,
                    expected: *expected,
                });
            }
        }
    }
}

/// The precedence graph: an edge `a -> b` (on `key`) when `a` must come before `b` in any
/// serial order consistent with `key`'s versions.
#[derive(Default)]
struct Graph {
    edges: BTreeMap<Actor, Vec<(Actor, EntityKey)>>,
}

impl Graph {
    fn add_key(&mut self, key: &EntityKey, accesses: &[Access1]) {
        let mut sorted: Vec<&Access1> = accesses.iter().collect();
        sorted.sort_by_key(|a| (order_key(a), a.actor));
        // Writes in version order; each read between the write it saw and the next one.
        let mut last_write: Option<Actor> = None;
        let mut readers_since: Vec<Actor> = Vec::new();
        for a in sorted {
            match a.access {
                Access::Write => {
                    if let Some(w) = last_write {
                        self.edge(w, a.actor, key);
                    }
                    for r in readers_since.drain(..) {
                        self.edge(r, a.actor, key);
                    }
                    last_write = Some(a.actor);
                }
                Access::Read => {
                    if let Some(w) = last_write {
                        self.edge(w, a.actor, key);
                    }
                    readers_since.push(a.actor);
                }
            }
        }
    }

    fn edge(&mut self, from: Actor, to: Actor, key: &EntityKey) {
        if from != to {
            self.edges.entry(from).or_default().push((to, key.clone()));
        }
    }

    /// One cycle per back edge met by a depth-first search (none: the graph is acyclic, and
    /// a topological order of it is a serial order of the commits).
    fn cycles(&self) -> Vec<Vec<(Actor, EntityKey)>> {
        #[derive(Copy, Clone, PartialEq)]
        enum Color {
            Grey,
            Black,
        }
        let mut color: HashMap<Actor, Color> = HashMap::new();
        let mut found = Vec::new();
        for &start in self.edges.keys() {
            if color.contains_key(&start) {
                continue;
            }
            // The path from `start`: each node with the index of its next edge to follow, and
            // the key of the edge that led to it.
            let mut path: Vec<(Actor, usize, Option<EntityKey>)> = vec![(start, 0, None)];
            color.insert(start, Color::Grey);
            while let Some((node, next, _)) = path.last_mut() {
                let out = self.edges.get(node).map_or(&[][..], Vec::as_slice);
                let Some((to, key)) = out.get(*next) else {
                    color.insert(*node, Color::Black);
                    path.pop();
                    continue;
                };
                *next += 1;
                match color.get(to) {
                    None => {
                        color.insert(*to, Color::Grey);
                        path.push((*to, 0, Some(key.clone())));
                    }
                    Some(Color::Grey) => {
                        let from = path.iter().position(|(n, _, _)| n == to).unwrap_or(0);
                        let mut cycle: Vec<(Actor, EntityKey)> = Vec::new();
                        for w in path[from..].windows(2) {
                            if let Some(k) = &w[1].2 {
                                cycle.push((w[0].0, k.clone()));
                            }
                        }
                        if let Some((last, _, _)) = path.last() {
                            cycle.push((*last, key.clone()));
                        }
                        found.push(cycle);
                    }
                    Some(Color::Black) => {}
                }
            }
        }
        found
    }
}

fn check_staging(
    events: &[Event],
    ops: &BTreeMap<OpId, OpEvents>,
    stats: &mut Stats,
    out: &mut impl FnMut(Violation),
) {
    // The runtime's submission order is the op id's sequence (both come from one counter).
    let cand = |op_id: OpId, p| Candidate {
        op_id,
        effective_priority: p,
        submitted_seq: op_id.sequence(),
    };
    for e in events {
        match e {
            Event::OperationRejected {
                op,
                winner_op_id,
                winner_priority,
                reason,
            } => {
                stats.staging_decisions += 1;
                let loser = cand(op.op_id, op.effective_priority);
                let winner = cand(*winner_op_id, *winner_priority);
                if !policy::beats(&winner, &loser) {
                    out(Violation::StagingNotTopRanked {
                        loser: op.op_id,
                        loser_priority: op.effective_priority,
                        winner: *winner_op_id,
                        winner_priority: *winner_priority,
                    });
                }
                let reason_fits = match reason {
                    RejectReason::LostPriority => *winner_priority > op.effective_priority,
                    RejectReason::SubmittedLater => *winner_priority == op.effective_priority,
                    // A reason added later: nothing to compare it with.
                    _ => true,
                };
                if !reason_fits {
                    out(Violation::StagingReasonWrong {
                        loser: op.op_id,
                        reason: *reason,
                    });
                }
                let own_priority = ops.get(winner_op_id).and_then(|o| o.priority);
                if own_priority != Some(*winner_priority) {
                    out(Violation::StagingWinnerUnknown {
                        loser: op.op_id,
                        winner: *winner_op_id,
                        own_priority,
                    });
                }
            }
            Event::OperationPreempted {
                op,
                by_op_id,
                by_priority,
            } => {
                stats.preemptions += 1;
                if !policy::outranks(*by_priority, op.effective_priority) {
                    out(Violation::PreemptedByLower {
                        op_id: op.op_id,
                        priority: op.effective_priority,
                        by: *by_op_id,
                        by_priority: *by_priority,
                    });
                }
            }
            _ => {}
        }
    }
}
