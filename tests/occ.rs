//! The OCC stage: no lost update under contention, body errors, cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use conflict_runtime::OutcomeKind;
use conflict_runtime::prelude::*;
use conflict_tests::{Counter, multi_thread};

#[with_conflict_resolution(
    priority = 5,
    occ(
        max_retries = 1000,
        base_delay_ms = 0,
        backoff_factor = 1.5,
        max_delay_ms = 1
    )
)]
async fn increment(c: &mut Counter, tag: u64) -> u64 {
    c.value += 1;
    c.log.push(tag);
    tokio::task::yield_now().await;
    c.value
}

/// Invariant: with OCC alone, 64 tasks × 200 increments on one entity lose nothing — the final
/// value and the final version both equal the number of committed calls, and every call ended
/// with Ok or a typed error.
#[test]
fn no_lost_update_64_tasks_one_entity() {
    multi_thread(2, async {
        let rt = Runtime::in_memory();
        let h = rt.insert(Counter::new()).await.unwrap();
        let committed = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for t in 0..64u64 {
            let h = h.clone();
            let committed = committed.clone();
            tasks.push(tokio::spawn(async move {
                let mut errors = 0;
                for i in 0..200u64 {
                    match increment(&h, t * 1000 + i).await {
                        Ok(_) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(ConflictError::RetriesExhausted { .. }) => errors += 1,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                errors
            }));
        }
        let mut exhausted = 0;
        for t in tasks {
            exhausted += t.await.unwrap();
        }
        let committed = committed.load(Ordering::Relaxed);
        assert_eq!(committed + exhausted, 64 * 200);
        let now = h.load().await.unwrap();
        assert_eq!(now.value.value, committed);
        assert_eq!(now.version, committed + 1, "version = 1 + commits");
        let mut log = now.value.log.clone();
        log.sort_unstable();
        log.dedup();
        assert_eq!(
            log.len() as u64,
            committed,
            "each committed call applied exactly once"
        );
        let m = rt.metrics();
        assert_eq!(m.submitted, 64 * 200);
        assert_eq!(m.outcome(OutcomeKind::Committed), committed);
        assert_eq!(m.in_flight, 0);
    });
}
