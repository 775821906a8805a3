// The accepted strategies are listed from `conflict_core::CleanupStrategy::ALL`.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(cleanup(strategy = "eager"))]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
