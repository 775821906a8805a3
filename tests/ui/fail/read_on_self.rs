use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

impl Account {
    #[with_conflict_resolution]
    async fn peek(#[read] &self) {}
}

fn main() {}
