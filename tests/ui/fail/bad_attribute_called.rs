// One mistake in the attribute gives one error, also at the call sites: the function is still
// generated with its `&Handle<Account>` signature.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

#[with_conflict_resolution(priority = 11, occ(max_retries = 3))]
async fn withdraw(account: &mut Account, amount: i64) -> i64 {
    account.balance -= amount;
    account.balance
}

async fn caller(rt: &Runtime, h: &Handle<Account>) -> Result<i64, ConflictError<std::convert::Infallible>> {
    let _ = rt;
    let done: Committed<i64> = withdraw(h, 5).await?;
    Ok(done.value)
}

fn main() {
    let _ = caller;
}
