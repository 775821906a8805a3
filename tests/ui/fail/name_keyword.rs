// An operation's `name` segments must be plain identifiers, not keywords.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Ledger3 {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(name = "Rack::self")]
async fn add_line(ledger: &mut Ledger3) {
    let _ = ledger;
}

fn main() {}
