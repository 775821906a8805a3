use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    id: EntityId,
    balance: i64,
}

fn main() {}
