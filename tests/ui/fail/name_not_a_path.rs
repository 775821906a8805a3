// An operation's `name` must be an identifier or identifiers joined by `::`.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Ledger {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(name = "add line")]
async fn add_line(ledger: &mut Ledger) {
    let _ = ledger;
}

fn main() {}
