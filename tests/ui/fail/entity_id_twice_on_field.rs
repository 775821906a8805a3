// `id` twice on one field (across its attributes) is a repeat, not a second id field.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    #[entity(id)]
    id: EntityId,
}

fn main() {}
