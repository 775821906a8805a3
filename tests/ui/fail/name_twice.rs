// `name` given twice is one error, at the second.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Ledger2 {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(name = "a", name = "b")]
async fn add_line(ledger: &mut Ledger2) {
    let _ = ledger;
}

fn main() {}
