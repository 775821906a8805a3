// An unknown key in `pre_ecs(...)`: the keys of the section are listed.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(pre_ecs(timeout_ms = 5))]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
