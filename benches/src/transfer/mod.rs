//! Transfers between two accounts: the multi-entity workload.
//!
//! Every call moves [`AMOUNT`] from one [`Account`] to another, both chosen at random per call
//! (always two distinct accounts, [`Pair`]), and refuses — commits nothing — if the source
//! would go below zero. Accounts start at [`START_BALANCE`], far more than any run can move
//! out of one account, so a refusal does not happen in practice; each one is still counted
//! ([`Call::refused`](crate::Call::refused)) and reported. The two body kinds are the ones of the
//! read-modify-write rows:
//!
//! * [`Body::Cpu`]: check, debit, credit; nothing in between.
//! * [`Body::Await`]: check, debit, `tokio::task::yield_now().await`, credit: whoever holds a
//!   lock holds both across the await; an optimistic snapshot of both goes stale across it.
//!
//! The implementations, one module each:
//!
//! * [`framework`]: one `#[with_conflict_resolution]` function with two `&mut Account`
//!   parameters (it stages on both accounts in key order, reads both as one snapshot and
//!   commits both at once), with the default attribute and with `pre_ecs(on_lose = "requeue")`.
//! * [`mutex`]: one `tokio::sync::Mutex` per account; a transfer locks both, the lower index
//!   first (one global order, so no deadlock), and holds both for the whole body.
//! * [`naive_occ`]: a versioned slot per account; snapshot both, compute on copies with no lock
//!   held, then lock both in index order, compare both versions and swap both; start over at
//!   once on a mismatch.
//!
//! Every account also counts the transfers it took part in ([`Account::transfers`]); after
//! every run the harness checks that the balances still sum to what they started at and that
//! the counters sum to exactly two per committed transfer (`Bench::run` panics otherwise).

use conflict_runtime::prelude::*;

use crate::Body;

pub mod framework;
pub mod mutex;
pub mod naive_occ;

/// The entity of the transfer rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Entity)]
#[entity(name = "bench::Account")]
pub struct Account {
    /// Identity.
    #[entity(id)]
    pub id: EntityId,
    /// Current balance.
    pub balance: u64,
    /// Committed transfers this account was the source or the destination of.
    pub transfers: u64,
}

impl Account {
    /// A fresh account holding [`START_BALANCE`].
    #[must_use]
    pub fn new() -> Self {
        Self {
            id: EntityId::new(),
            balance: START_BALANCE,
            transfers: 0,
        }
    }
}

impl Default for Account {
    fn default() -> Self {
        Self::new()
    }
}

/// What every account starts with: 10⁹, so that no benchmark run (a few million transfers of
/// [`AMOUNT`] at most) can drain an account and make a transfer refuse.
pub const START_BALANCE: u64 = 1_000_000_000;

/// What each transfer moves.
pub const AMOUNT: u64 = 1;

/// A refused transfer: the source holds less than the amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insufficient;

impl std::fmt::Display for Insufficient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("insufficient funds")
    }
}

impl std::error::Error for Insufficient {}

/// The two distinct accounts (indices) of one transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// Debited.
    pub from: usize,
    /// Credited.
    pub to: usize,
}

impl Pair {
    /// Two distinct indices below `accounts`, uniformly among the ordered pairs.
    ///
    /// # Panics
    /// If `accounts < 2`.
    #[must_use]
    pub fn pick(rng: &mut fastrand::Rng, accounts: usize) -> Self {
        assert!(accounts >= 2, "a transfer needs two accounts");
        let from = rng.usize(..accounts);
        let mut to = rng.usize(..accounts - 1);
        if to >= from {
            to += 1;
        }
        Self { from, to }
    }
}

/// The CPU-only transfer; returns the source's new balance.
///
/// # Errors
/// [`Insufficient`] (and nothing changed) if `from` holds less than `amount`.
#[inline]
pub fn transfer_cpu(
    from: &mut Account,
    to: &mut Account,
    amount: u64,
) -> Result<u64, Insufficient> {
    if from.balance < amount {
        return Err(Insufficient);
    }
    from.balance -= amount;
    from.transfers += 1;
    to.balance += amount;
    to.transfers += 1;
    Ok(from.balance)
}

/// The transfer with an await point between the debit and the credit; returns the source's
/// new balance.
///
/// # Errors
/// [`Insufficient`] (and nothing changed) if `from` holds less than `amount`.
pub async fn transfer_await(
    from: &mut Account,
    to: &mut Account,
    amount: u64,
) -> Result<u64, Insufficient> {
    if from.balance < amount {
        return Err(Insufficient);
    }
    from.balance -= amount;
    from.transfers += 1;
    tokio::task::yield_now().await;
    to.balance += amount;
    to.transfers += 1;
    Ok(from.balance)
}

/// Runs the transfer of kind `body`.
///
/// # Errors
/// [`Insufficient`] (and nothing changed) if `from` holds less than `amount`.
pub async fn transfer(
    from: &mut Account,
    to: &mut Account,
    body: Body,
    amount: u64,
) -> Result<u64, Insufficient> {
    match body {
        Body::Cpu => transfer_cpu(from, to, amount),
        Body::Await => transfer_await(from, to, amount).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invariant: a pair is two distinct in-range indices, and every ordered pair occurs.
    #[test]
    fn pairs_are_distinct_and_cover_every_ordered_pair() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut seen = [[0_u32; 4]; 4];
        for _ in 0..10_000 {
            let p = Pair::pick(&mut rng, 4);
            assert_ne!(p.from, p.to);
            seen[p.from][p.to] += 1;
        }
        for (i, row) in seen.iter().enumerate() {
            for (j, n) in row.iter().enumerate() {
                assert_eq!(*n == 0, i == j, "{i} → {j}: {n}");
            }
        }
    }

    /// Invariant: a refused transfer changes nothing; a committed one conserves the sum.
    #[test]
    fn a_refusal_changes_nothing_and_a_transfer_conserves_the_sum() {
        let (mut a, mut b) = (Account::new(), Account::new());
        a.balance = 0;
        let (a0, b0) = (a.clone(), b.clone());
        assert_eq!(transfer_cpu(&mut a, &mut b, 1), Err(Insufficient));
        assert_eq!((&a, &b), (&a0, &b0));
        assert_eq!(transfer_cpu(&mut b, &mut a, 5), Ok(START_BALANCE - 5));
        assert_eq!(a.balance + b.balance, START_BALANCE);
        assert_eq!((a.transfers, b.transfers), (1, 1));
    }
}
