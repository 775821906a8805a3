// `crate` repeated in a second attribute is refused like one repeated inside the first.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(crate = "conflict_runtime")]
#[entity(crate = "conflict_runtime")]
struct Account {
    #[entity(id)]
    id: EntityId,
}

fn main() {}
