use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(occ(base_delay_ms = 10, max_delay_ms = 5))]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
