// An unknown key in `cleanup(...)`: the keys of the section are listed.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(cleanup(retention = 5))]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
