use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account<T> {
    #[entity(id)]
    id: EntityId,
    data: T,
}

fn main() {}
