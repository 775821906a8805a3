// A section given twice: one error, at the second one (its contents are not read).
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(occ(max_retries = 1), occ(base_delay_ms = 2))]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
