use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution]
async fn touch(account: &mut Account, #[read] limit: u32) {
    let _ = (account, limit);
}

fn main() {}
