use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(id)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

fn main() {}
