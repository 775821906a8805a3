// A priority list given as one priority.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(cleanup(immediate_cleanup_priorities = 10))]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
