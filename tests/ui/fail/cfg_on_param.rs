use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
}

#[with_conflict_resolution]
async fn touch(account: &mut Account, #[cfg(any())] extra: u32, n: i64) {
    let _ = (account, n);
}

fn main() {}
