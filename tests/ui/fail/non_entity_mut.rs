use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution]
async fn touch(account: &mut Account, count: &mut u32) {
    let _ = (account, count);
}

fn main() {}
