use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

impl Account {
    // The entity of a method operation is `&mut self`; `&self` or `self` cannot be changed.
    #[with_conflict_resolution]
    async fn peek(&self) {
        let _ = self;
    }

    #[with_conflict_resolution]
    async fn consume(self) {
        let _ = self;
    }
}

fn main() {}
