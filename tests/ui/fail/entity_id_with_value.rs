// `id` with a value: one error, at `id` (the field still counts as the id, so no "missing id" follows).
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id = true)]
    id: EntityId,
}

fn main() {}
