//! loom model of the abort signal's create-before-check protocol: a waiter creates its
//! `notified` future, then checks the flag, then waits; the trigger sets the flag, then wakes
//! every waiter. Whatever the interleaving, the waiter returns (loom reports a deadlock if a
//! wake-up can be lost). Run with `RUSTFLAGS="--cfg loom"` (see `docs/verification.md`).
//!
//! The waiter here follows the protocol as its callers write it; the callers' own code (a
//! staged waiter in `Staging`) is modelled by `staging::loom_models::loom_abort_wakes_waiters`.

use std::sync::Arc;

use loom::future::block_on;
use loom::thread;

use super::AbortSignal;
use crate::sync::model;

/// Waits for the abort the way staged and executing operations do.
async fn wait_for_abort(abort: &AbortSignal, seq: u64) {
    let aborted = abort.notified(seq);
    if abort.is_set() {
        return;
    }
    aborted.await;
}

/// Two waiters (on different shards) and the trigger: both always return.
#[test]
fn loom_abort_is_never_missed() {
    model("loom_abort_is_never_missed", || {
        let abort = Arc::new(AbortSignal::new());
        let a = Arc::clone(&abort);
        let other = thread::spawn(move || block_on(wait_for_abort(&a, 1)));
        let a = Arc::clone(&abort);
        let trigger = thread::spawn(move || a.trigger());
        block_on(wait_for_abort(&abort, 2));
        other.join().unwrap();
        trigger.join().unwrap();
        assert!(abort.is_set());
    });
}
