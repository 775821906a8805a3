// The `crate` string must be a path.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(crate = "not a path")]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
