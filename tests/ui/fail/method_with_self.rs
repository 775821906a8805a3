use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

impl Account {
    #[with_conflict_resolution]
    async fn touch(&mut self) {
        let _ = self;
    }
}

fn main() {}
