use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

// An entity by value, and one by shared reference without `#[read]`: one error each.
#[with_conflict_resolution]
async fn touch(account: &mut Account, copy: Account, other: &Account) {
    let _ = (account, copy, other);
}

fn main() {}
