use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = 5)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

fn main() {}
