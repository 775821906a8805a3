//! A basic entity with a fallible, an infallible and a unit-returning operation.

use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("insufficient funds")]
struct Insufficient;

#[with_conflict_resolution]
async fn withdraw(account: &mut Account, amount: i64) -> Result<i64, Insufficient> {
    if account.balance < amount {
        return Err(Insufficient);
    }
    account.balance -= amount;
    Ok(account.balance)
}

#[with_conflict_resolution]
async fn deposit(account: &mut Account, amount: i64) -> i64 {
    account.balance += amount;
    account.balance
}

#[with_conflict_resolution]
async fn reset(account: &mut Account) {
    account.balance = 0;
}

fn main() {
    let _ = withdraw;
    let _ = deposit;
    let _ = reset;
    // Called inside an async block that is never run: the calls must type-check.
    let _ = async {
        let rt = Runtime::in_memory();
        let h: Handle<Account> = rt
            .insert(Account { id: EntityId::new(), balance: 10 })
            .await
            .unwrap();
        let a: Result<Committed<i64>, ConflictError<Insufficient>> = withdraw(&h, 5).await;
        let b = deposit(&h, 5).await.unwrap();
        let c = reset(&h).await;
        let _ = (a, b.value, b.version, c);
    };
}
