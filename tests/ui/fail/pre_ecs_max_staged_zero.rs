use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(pre_ecs(max_staged_per_target = 0))]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
