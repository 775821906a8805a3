// A key that needs a value, given without one: the message shows the form.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(occ(max_retries))]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
