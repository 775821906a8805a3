// `#[with_conflict_resolution]` on methods with `&mut self`: generated as associated functions
// taking `this: &Handle<Self>`, beside generic and associated free-standing forms.
#![deny(unused_variables)]
use conflict_runtime::prelude::*;
use std::convert::Infallible;
use std::future::Future;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Stock {
    #[entity(id)]
    id: EntityId,
    units: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("out of stock")]
struct OutOfStock;

impl Stock {
    /// Takes `n` units.
    #[with_conflict_resolution(priority = HIGH)]
    pub async fn reserve(&mut self, n: u32) -> Result<u32, OutOfStock> {
        if self.units < n {
            return Err(OutOfStock);
        }
        self.units -= n;
        Ok(self.units)
    }

    /// Returns `Self`-typed values too.
    #[with_conflict_resolution]
    async fn snapshot(&mut self) -> Self {
        self.clone()
    }

    /// The user's lint attributes reach the body (which lives in a hidden method).
    #[allow(unused_variables)]
    #[with_conflict_resolution]
    async fn note(&mut self, unused: u32) {}

    /// An associated function whose entity is an ordinary parameter.
    #[with_conflict_resolution]
    async fn restock(stock: &mut Stock, n: u32) -> u32 {
        stock.units += n;
        stock.units
    }
}

/// A second entity with methods in the same module.
#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Jar {
    #[entity(id)]
    id: EntityId,
    coins: u64,
}

impl Jar {
    #[with_conflict_resolution]
    async fn count(&mut self) -> u64 {
        self.coins
    }
}

fn _reserve(h: &Handle<Stock>) -> impl Future<Output = Result<Committed<u32>, ConflictError<OutOfStock>>> + '_ {
    Stock::reserve(h, 2)
}

fn _snapshot(h: &Handle<Stock>) -> impl Future<Output = Result<Committed<Stock>, ConflictError<Infallible>>> + '_ {
    Stock::snapshot(h)
}

fn _restock(h: &Handle<Stock>) -> impl Future<Output = Result<Committed<u32>, ConflictError<Infallible>>> + '_ {
    Stock::restock(h, 2)
}

fn _send(h: Handle<Stock>) {
    fn is_send<F: Future + Send>(_: F) {}
    is_send(async move {
        let _ = Stock::reserve(&h, 1).await;
    });
}

fn main() {}
