// A bad item of a priority list is reported at the item.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(cleanup(debug_retention_priorities = [LOW, 11]))]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
