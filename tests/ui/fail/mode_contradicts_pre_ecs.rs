use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(mode = "occ", pre_ecs(staging_timeout_ms = 50))]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
