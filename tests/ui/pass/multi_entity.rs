use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Audit {
    #[entity(id)]
    id: EntityId,
    seen: u64,
}

// Two written entities of one type, a read entity of another, plain arguments in between
// (including a shared reference that is not an entity).
#[with_conflict_resolution]
async fn transfer(from: &mut Account, to: &mut Account, amount: i64, #[read] audit: &Audit, note: &'static str) -> u64 {
    from.balance -= amount;
    to.balance += amount;
    let _ = note;
    audit.seen
}

// Only reads.
#[with_conflict_resolution]
async fn total(#[read] a: &Account, #[read] b: &Account) -> i64 {
    a.balance + b.balance
}

// The entity need not come first.
#[with_conflict_resolution]
async fn credit(amount: i64, to: &mut Account) {
    to.balance += amount;
}

impl Account {
    // A method with another entity.
    #[with_conflict_resolution]
    async fn pay(&mut self, to: &mut Account, amount: i64) {
        self.balance -= amount;
        to.balance += amount;
    }
}

fn main() {
    let rt = Runtime::in_memory();
    let _ = async move {
        let a = rt.insert(Account { id: EntityId::new(), balance: 1 }).await.unwrap();
        let b = rt.insert(Account { id: EntityId::new(), balance: 1 }).await.unwrap();
        let audit = rt.insert(Audit { id: EntityId::new(), seen: 0 }).await.unwrap();
        let done: Committed<u64> = transfer(&a, &b, 1, &audit, "x").await.unwrap();
        let _ = done.versions.len();
        let _: Committed<i64> = total(&a, &b).await.unwrap();
        credit(3, &a).await.unwrap();
        Account::pay(&a, &b, 1).await.unwrap();
    };
}
