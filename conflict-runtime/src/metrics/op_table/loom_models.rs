//! loom model of the metrics table's concurrent claims: threads counting operations of two
//! types at once, on a table of one slot (`OpTable::new` rounds up to at least 16, where two
//! types would start at different slots, or not, depending on where the linker put them), so
//! both types start their probe at the same slot whatever their addresses: one claims it, the
//! other goes to the overflow map. Every type gets stats of its own, and no count is lost or
//! merged. Run with `RUSTFLAGS="--cfg loom"` (see `docs/verification.md`).

use std::sync::Arc;
use std::time::Duration;

use conflict_core::{OperationConfig, OutcomeKind};
use loom::thread;

use super::OpTable;
use crate::metrics::Ending;
use crate::registry::OperationSpec;
use crate::sync::model;

static FIRST: OperationSpec = OperationSpec {
    name: "first",
    module: "loom",
    config: OperationConfig::DEFAULT,
};
static SECOND: OperationSpec = OperationSpec {
    name: "second",
    module: "loom",
    config: OperationConfig::DEFAULT,
};

fn count(table: &OpTable, spec: &'static OperationSpec) {
    let ending = Ending {
        kind: OutcomeKind::Committed,
        latency: Duration::from_micros(1),
        attempts: 1,
        conflicts: 0,
    };
    table.with(spec, |stats| stats.record(0, &ending));
}

/// Two threads claim for the same type and one for another, on a one-slot table.
#[test]
fn loom_claims_are_exclusive() {
    model("loom_claims_are_exclusive", || {
        let table = Arc::new(OpTable::with_slots(1));
        let t = Arc::clone(&table);
        let a = thread::spawn(move || count(&t, &FIRST));
        let t = Arc::clone(&table);
        let b = thread::spawn(move || count(&t, &SECOND));
        count(&table, &FIRST);
        a.join().unwrap();
        b.join().unwrap();
        let snaps = table.snapshots();
        let seen: Vec<(&str, u64)> = snaps.iter().map(|s| (s.name.as_str(), s.ended)).collect();
        assert_eq!(seen, [("first", 2), ("second", 1)]);
        // One type in the slot, the other in the overflow map.
        assert!(table.slots[0].stats.get().is_some());
        assert_eq!(table.overflow.pin().len(), 1);
    });
}
