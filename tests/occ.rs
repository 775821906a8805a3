//! The OCC suite (`conflict_tests::suite`) on the embedded in-memory store.

use conflict_runtime::Runtime;
use conflict_runtime::store::MemoryStore;
use conflict_tests::multi_thread;
use conflict_tests::suite::{self, Scale};

/// Invariant: 64 tasks × 200 increments on one entity through the macro (OCC only) lose
/// nothing: value = version - 1 = committed calls, each applied once.
#[test]
fn no_lost_update_64_tasks_one_entity() {
    multi_thread(
        2,
        suite::no_lost_update_one_entity(Runtime::in_memory(), Scale::FULL),
    );
}

/// Invariant: the same with 3 entities, mixed priorities, both stages.
#[test]
fn no_lost_update_three_entities_mixed_priorities() {
    multi_thread(
        2,
        suite::no_lost_update_three_entities_mixed_priorities(
            Runtime::in_memory(),
            Scale {
                tasks: 64,
                calls: 100,
            },
        ),
    );
}

/// Invariant: a body error commits nothing and is not retried.
#[tokio::test]
async fn a_body_error_commits_nothing_and_is_not_retried() {
    suite::a_body_error_commits_nothing_and_is_not_retried(Runtime::in_memory()).await;
}

/// Invariant: every attempt conflicting ends in `RetriesExhausted` after `max_retries + 1`.
#[tokio::test]
async fn retries_exhausted_after_max_retries_plus_one_attempts() {
    suite::retries_exhausted_after_max_retries_plus_one_attempts(Runtime::in_memory()).await;
}

/// Invariant: retry delays stay within their ceiling (paused clock).
#[tokio::test(start_paused = true)]
async fn backoff_delays_stay_within_their_ceiling() {
    suite::backoff_delays_stay_within_their_ceiling(Runtime::in_memory()).await;
}

/// Invariant: the id is immutable.
#[tokio::test]
async fn a_body_that_changes_the_id_is_refused() {
    suite::a_body_that_changes_the_id_is_refused(Runtime::in_memory()).await;
}

/// Invariant: missing and duplicate entities are typed store errors.
#[tokio::test]
async fn a_missing_entity_is_a_store_error() {
    suite::a_missing_entity_is_a_store_error(Runtime::in_memory()).await;
}

/// Invariant: versions start at 1 and grow by 1 per commit.
#[tokio::test]
async fn versions_start_at_one_and_grow_by_one() {
    suite::versions_start_at_one_and_grow_by_one(Runtime::in_memory()).await;
}

/// Invariant: `mode = "none"` compares but does not retry.
#[tokio::test]
async fn mode_none_compares_but_does_not_retry() {
    suite::mode_none_compares_but_does_not_retry(Runtime::in_memory()).await;
}

/// Invariant (defect 10): `MemoryStore` through the `EntityStore` trait refuses a value of
/// another type or id under a key, changing nothing.
#[tokio::test]
async fn store_refuses_a_value_under_another_key() {
    suite::store_refuses_a_value_under_another_key(&MemoryStore::new()).await;
}

/// Invariant (defect 10): a multi-write with one mismatched write applies none.
#[tokio::test]
async fn store_refuses_a_multi_write_with_one_mismatched_write() {
    suite::store_refuses_a_multi_write_with_one_mismatched_write(&MemoryStore::new()).await;
}

/// Invariant (defect 10): an insert under another key stores nothing.
#[tokio::test]
async fn store_refuses_an_insert_under_another_key() {
    suite::store_refuses_an_insert_under_another_key(&MemoryStore::new()).await;
}
