//! Return-type aliases, generic and borrowed extra arguments, visibility and doc comments.

use std::io;

use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
    balance: i64,
    tags: Vec<String>,
}

/// A body returning `io::Result<T>`: fallible, with `io::Error` as the body error.
#[with_conflict_resolution]
async fn io_op(account: &mut Account) -> io::Result<i64> {
    if account.balance < 0 {
        return Err(io::Error::other("negative"));
    }
    Ok(account.balance)
}

/// A generic, non-entity argument.
#[with_conflict_resolution]
async fn tag_with<T: Clone + Send + std::fmt::Debug>(account: &mut Account, tag: T) -> usize {
    account.tags.push(format!("{tag:?}"));
    account.tags.len()
}

/// A borrowed `&str` argument.
#[with_conflict_resolution]
async fn rename(account: &mut Account, label: &str) {
    account.tags.push(label.to_owned());
}

/// Visibility is kept.
#[with_conflict_resolution(priority = LOW)]
pub(crate) async fn crate_visible(account: &mut Account, amount: i64) -> i64 {
    account.balance += amount;
    account.balance
}

mod inner {
    use super::Account;
    use conflict_runtime::prelude::*;

    /// Callable from the parent module.
    #[with_conflict_resolution]
    pub(crate) async fn bump(account: &mut Account) {
        account.balance += 1;
    }
}

fn main() {
    let _ = io_op;
    let _ = crate_visible;
    let _ = inner::bump;
    let _ = async {
        let rt = Runtime::in_memory();
        let h = rt
            .insert(Account { id: EntityId::new(), balance: 0, tags: Vec::new() })
            .await
            .unwrap();
        let _ = io_op(&h).await;
        let n: Result<Committed<usize>, _> = tag_with(&h, 7u8).await;
        let m = tag_with(&h, String::from("x")).await;
        let label = String::from("temporary");
        let r = rename(&h, &label).await;
        drop(label);
        let _ = crate_visible(&h, 3).await;
        let _ = inner::bump(&h).await;
        let _ = (n, m, r);
    };
}
