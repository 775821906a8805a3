use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

struct Token;

#[with_conflict_resolution]
async fn touch(account: &mut Account, token: Token) {
    let _ = (account, token);
}

fn main() {}
