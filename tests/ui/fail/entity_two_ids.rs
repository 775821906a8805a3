use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
    #[entity(id)]
    other: EntityId,
}

fn main() {}
