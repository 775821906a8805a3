use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Gauge {
    #[entity(id)]
    id: EntityId,
    level: i64,
}

impl Gauge {
    #[with_conflict_resolution]
    async fn set(&mut self, this: i64) {
        self.level = this;
    }
}

fn main() {}
