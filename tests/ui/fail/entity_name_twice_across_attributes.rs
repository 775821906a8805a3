use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "Acct")]
#[entity(name = "Account")]
struct Account {
    #[entity(id)]
    id: EntityId,
}

fn main() {}
