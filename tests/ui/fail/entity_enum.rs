use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
enum Account {
    Open,
    Closed,
}

fn main() {}
