use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(cleanup(strategy = "immediate", custom_cleanup_handler = "x"))]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
