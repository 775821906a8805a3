//! The generated signatures are the documented ones: `&Handle<E>` instead of `&mut E`, the other
//! arguments unchanged, and `Result<Committed<T>, ConflictError<Err>>` as the output.

use std::convert::Infallible;
use std::future::Future;
use std::io;

use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("my error")]
struct MyErr;

#[with_conflict_resolution]
async fn withdraw(account: &mut Account, amount: i64) -> Result<i64, MyErr> {
    account.balance -= amount;
    Ok(account.balance)
}

#[with_conflict_resolution]
async fn withdraw_std(account: &mut Account, amount: i64) -> std::result::Result<i64, MyErr> {
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

#[with_conflict_resolution]
async fn read_io(account: &mut Account) -> io::Result<i64> {
    Ok(account.balance)
}

#[with_conflict_resolution]
async fn label(account: &mut Account, name: &str, n: u32) -> String {
    let _ = account.balance;
    format!("{name}{n}")
}

/// An alias of a plain type is a plain value (only a `Result` under another name is refused).
type Units = u32;

#[with_conflict_resolution]
async fn units(account: &mut Account) -> Units {
    account.balance as u32
}

/// A generic return type is taken as a value.
#[with_conflict_resolution]
async fn tagged<T: Clone + Send + Sync + 'static>(account: &mut Account, tag: T) -> (T, i64) {
    (tag, account.balance)
}

/// An opaque return type is a value.
#[with_conflict_resolution]
async fn shown(account: &mut Account) -> impl std::fmt::Display + Clone + Send + 'static + use<> {
    account.balance
}

fn _shown(h: &Handle<Account>) -> impl Future + '_ {
    shown(h)
}

fn _units(h: &Handle<Account>) -> impl Future<Output = Result<Committed<Units>, ConflictError<Infallible>>> + '_ {
    units(h)
}

fn _tagged(h: &Handle<Account>) -> impl Future<Output = Result<Committed<(u8, i64)>, ConflictError<Infallible>>> + '_ {
    tagged(h, 7u8)
}

fn _fallible(h: &Handle<Account>) -> impl Future<Output = Result<Committed<i64>, ConflictError<MyErr>>> + '_ {
    withdraw(h, 5)
}

fn _fallible_std(h: &Handle<Account>) -> impl Future<Output = Result<Committed<i64>, ConflictError<MyErr>>> + '_ {
    withdraw_std(h, 5)
}

fn _infallible(h: &Handle<Account>) -> impl Future<Output = Result<Committed<i64>, ConflictError<Infallible>>> + '_ {
    deposit(h, 5)
}

fn _unit(h: &Handle<Account>) -> impl Future<Output = Result<Committed<()>, ConflictError<Infallible>>> + '_ {
    reset(h)
}

fn _io(h: &Handle<Account>) -> impl Future<Output = Result<Committed<i64>, ConflictError<io::Error>>> + '_ {
    read_io(h)
}

fn _borrowed<'a>(h: &'a Handle<Account>, name: &'a str) -> impl Future<Output = Result<Committed<String>, ConflictError<Infallible>>> + 'a {
    label(h, name, 1)
}

/// The futures can be spawned on a multi-thread runtime.
fn _send(h: Handle<Account>) {
    fn is_send<F: Future + Send>(_: F) {}
    is_send(async move {
        let _ = withdraw(&h, 1).await;
        let _ = deposit(&h, 1).await;
        let _ = reset(&h).await;
        let _ = read_io(&h).await;
        let _ = label(&h, "x", 2).await;
    });
}

fn main() {}
