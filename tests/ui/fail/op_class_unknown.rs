// The accepted classes are listed from `conflict_core::OpClass::ALL`.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution(op_class = "urgent")]
async fn touch(account: &mut Account) {
    let _ = account;
}

fn main() {}
