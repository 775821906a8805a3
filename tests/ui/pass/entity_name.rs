//! `#[entity(name = "...")]` sets the registered type name.

use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[entity(name = "Acct")]
struct Account {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Plain {
    label: String,
    #[entity(id)]
    key: EntityId,
}

fn main() {
    assert_eq!(<Account as Entity>::TYPE_NAME, "Acct");
    assert_eq!(<Plain as Entity>::TYPE_NAME, "Plain");
    let id = EntityId::new();
    let a = Account { id, balance: 1 };
    assert_eq!(a.entity_id(), id);
    let p = Plain { label: String::new(), key: id };
    assert_eq!(p.entity_id(), id);
    let _ = (a.balance, p.label);
}
