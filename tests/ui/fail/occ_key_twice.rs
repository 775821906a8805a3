// A key repeated inside a section: one error, at the second occurrence.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(occ(max_retries = 1, max_retries = 2))]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
