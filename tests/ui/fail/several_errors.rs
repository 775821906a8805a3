use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(priority = 0, occ(max_retries = -1), bogus = 1)]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
