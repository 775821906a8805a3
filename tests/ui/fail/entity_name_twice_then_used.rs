// One mistake in `#[entity(...)]` (a name given twice) must be one error: the derive should
// still implement `Entity` (with the first name) so that uses of the type add no errors.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "a")]
#[entity(name = "b")]
struct Account {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

#[with_conflict_resolution]
async fn deposit(a: &mut Account, n: i64) -> i64 {
    a.balance += n;
    a.balance
}

async fn use_it(rt: &Runtime) {
    let h: Handle<Account> = rt.handle(EntityId::new());
    let _ = deposit(&h, 1).await;
}

fn main() {
    let _ = use_it;
}
