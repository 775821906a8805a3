use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution]
async fn touch(#[read] account: &mut Account) {
    let _ = account;
}

fn main() {}
