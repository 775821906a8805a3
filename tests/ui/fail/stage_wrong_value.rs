// A stage is switched on or off, never set to a number.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(occ = 3)]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
