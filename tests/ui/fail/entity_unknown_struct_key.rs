use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(foo)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

fn main() {}
