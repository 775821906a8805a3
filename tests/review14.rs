//! Review of issue #14's changes: attribute values reach the registered configuration, the
//! macros work without the prelude and through a re-exported crate path, the staging state
//! machine neither leaks nor hangs on cancellation, preemption happens exactly at the grace end,
//! and every call is counted exactly once.

use std::time::Duration;

use conflict_runtime::config::{
    CleanupConfig, OccConfig, OnLose, OpClass, OperationConfig, OperationPriority, PreEcsConfig,
    PrioritySet, ResolutionMode,
};
use conflict_runtime::operation::OutcomeKind;
use conflict_runtime::prelude::*;
use conflict_tests::Counter;

// ---------------------------------------------------------------------------------------------
// 1. Every key of every section reaches the registered configuration.
// ---------------------------------------------------------------------------------------------

#[with_conflict_resolution(
    priority = 1,
    op_class = "low_priority",
    pre_ecs(
        staging_timeout_ms = 60000,
        on_lose = "requeue",
        max_staged_per_target = 100000,
        grace_period_ms = 3600000
    ),
    occ(
        max_retries = 1000,
        base_delay_ms = 60000,
        backoff_factor = 10,
        max_delay_ms = 600000
    ),
    cleanup(
        strategy = "lazy",
        retention_minutes = 1440,
        cleanup_check_interval_seconds = 3600,
        aggressive_on_memory_pressure = false,
        memory_pressure_threshold = 0.1,
        immediate_cleanup_priorities = [],
        debug_retention_priorities = [BACKGROUND, "low", 3, NORMAL, 10],
        max_zombie_count_per_target = 10000,
        force_cleanup_threshold = 100000
    )
)]
async fn r14_extremes(c: &mut Counter) -> u64 {
    c.value += 1;
    c.value
}

#[with_conflict_resolution(priority = 10)]
async fn r14_prio_ten(c: &mut Counter) -> u64 {
    c.value
}

#[with_conflict_resolution(priority = "high")]
async fn r14_prio_str(c: &mut Counter) -> u64 {
    c.value
}

#[with_conflict_resolution(priority = HIGH)]
async fn r14_prio_ident(c: &mut Counter) -> u64 {
    c.value
}

#[with_conflict_resolution(priority = critical)]
async fn r14_prio_lower_ident(c: &mut Counter) -> u64 {
    c.value
}

#[with_conflict_resolution(op_class = "structural", occ(base_delay_ms = 0, max_delay_ms = 0))]
async fn r14_structural(c: &mut Counter) -> u64 {
    c.value
}

#[with_conflict_resolution(mode = "none", cleanup(strategy = "none"))]
async fn r14_mode_none(c: &mut Counter) -> u64 {
    c.value
}

#[with_conflict_resolution(mode = "occ", cleanup(strategy = "immediate"))]
async fn r14_mode_occ(c: &mut Counter) -> u64 {
    c.value
}

#[with_conflict_resolution(occ = false, pre_ecs, cleanup = false)]
async fn r14_occ_off(c: &mut Counter) -> u64 {
    c.value
}

#[with_conflict_resolution(pre_ecs = false, cleanup = true, occ = true)]
async fn r14_pre_off(c: &mut Counter) -> u64 {
    c.value
}

#[with_conflict_resolution(cleanup(strategy = "custom", custom_cleanup_handler = "r14_audit"))]
async fn r14_custom(c: &mut Counter) -> u64 {
    c.value
}

#[cleanup_handler("r14_audit")]
async fn r14_audit(_op: &OperationRecord) -> Result<(), CleanupError> {
    Ok(())
}

#[with_conflict_resolution(name = "Renamed::op", priority = LOW)]
async fn r14_renamed(c: &mut Counter) -> u64 {
    c.value
}

fn spec(name: &str) -> OperationConfig {
    let rt = Runtime::in_memory();
    rt.registered_operations()
        .into_iter()
        .find(|s| s.module == "review14" && s.name == name)
        .unwrap_or_else(|| panic!("{name} not registered"))
        .config
        .clone()
}

fn p(v: u8) -> OperationPriority {
    OperationPriority::new(v).unwrap()
}

#[test]
fn every_key_at_its_extreme_reaches_the_registered_config() {
    let want = OperationConfig {
        priority: p(1),
        op_class: OpClass::LowPriority,
        mode: ResolutionMode::Both,
        pre_ecs: PreEcsConfig {
            staging_timeout_ms: 60_000,
            on_lose: OnLose::Requeue,
            max_staged_per_target: 100_000,
            grace_period_ms: 3_600_000,
        },
        occ: OccConfig {
            max_retries: 1000,
            base_delay_ms: 60_000,
            backoff_factor: 10.0,
            max_delay_ms: 600_000,
        },
        cleanup: CleanupConfig {
            strategy: conflict_runtime::cleanup::CleanupStrategy::Lazy,
            retention_minutes: 1440,
            cleanup_check_interval_seconds: 3600,
            aggressive_on_memory_pressure: false,
            memory_pressure_threshold: 0.1,
            immediate_cleanup_priorities: PrioritySet::EMPTY,
            debug_retention_priorities: [p(1), p(2), p(3), p(5), p(10)].into_iter().collect(),
            custom_cleanup_handler: None,
            max_zombie_count_per_target: 10_000,
            force_cleanup_threshold: 100_000,
        },
    };
    assert_eq!(spec("r14_extremes"), want);
}

#[test]
fn every_priority_form_reaches_the_config() {
    assert_eq!(spec("r14_prio_ten").priority, OperationPriority::CRITICAL);
    assert_eq!(spec("r14_prio_str").priority, OperationPriority::HIGH);
    assert_eq!(spec("r14_prio_ident").priority, OperationPriority::HIGH);
    assert_eq!(
        spec("r14_prio_lower_ident").priority,
        OperationPriority::CRITICAL
    );
    assert_eq!(spec("Renamed::op").priority, OperationPriority::LOW);
}

#[test]
fn stage_selection_and_class_defaults_reach_the_config() {
    let s = spec("r14_structural");
    assert_eq!(s.op_class, OpClass::Structural);
    assert_eq!(s.priority, OpClass::Structural.default_priority());
    assert_eq!(s.occ.max_retries, 20);
    assert_eq!((s.occ.base_delay_ms, s.occ.max_delay_ms), (0, 0));
    assert_eq!(s.mode, ResolutionMode::Both);

    let n = spec("r14_mode_none");
    assert_eq!(n.mode, ResolutionMode::None);
    assert_eq!(
        n.cleanup.strategy,
        conflict_runtime::cleanup::CleanupStrategy::None
    );
    let o = spec("r14_mode_occ");
    assert_eq!(o.mode, ResolutionMode::Occ);
    assert_eq!(
        o.cleanup.strategy,
        conflict_runtime::cleanup::CleanupStrategy::Immediate
    );
    let off = spec("r14_occ_off");
    assert_eq!(off.mode, ResolutionMode::PreEcs);
    assert_eq!(off.cleanup, CleanupConfig::DISABLED);
    assert_eq!(off.effective_max_retries(), 0);
    let pre_off = spec("r14_pre_off");
    assert_eq!(pre_off.mode, ResolutionMode::Occ);
    assert_eq!(pre_off.cleanup, CleanupConfig::DEFAULT);
    let c = spec("r14_custom");
    assert_eq!(
        c.cleanup.strategy,
        conflict_runtime::cleanup::CleanupStrategy::Custom
    );
    assert_eq!(
        c.cleanup.custom_cleanup_handler.as_deref(),
        Some("r14_audit")
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Without the prelude, through a re-exported crate path.
// ---------------------------------------------------------------------------------------------

/// A re-export of the runtime under another path, as a facade crate would have it.
pub mod facade {
    pub use conflict_runtime::*;
}

mod no_prelude {
    conflict_runtime::typed_id!(
        /// A typed id, declared with no import at all.
        pub WidgetId
    );

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, conflict_runtime::Entity)]
    #[entity(crate = "crate::facade", name = "r14_widget")]
    pub struct Widget {
        #[entity(id)]
        pub id: WidgetId,
        pub n: u32,
    }

    #[conflict_runtime::with_conflict_resolution(crate = "crate::facade", priority = HIGH)]
    pub async fn grow(w: &mut Widget, by: u32) -> Result<u32, String> {
        if by == 0 {
            return Err("zero".into());
        }
        w.n += by;
        Ok(w.n)
    }

    impl Widget {
        #[conflict_runtime::with_conflict_resolution(
            crate = "crate::facade",
            name = "Widget::shrink"
        )]
        pub async fn shrink(&mut self) -> u32 {
            self.n -= 1;
            self.n
        }
    }
}

#[tokio::test]
async fn macros_work_without_the_prelude_through_a_facade() {
    use no_prelude::{Widget, WidgetId, grow};
    let rt = conflict_runtime::Runtime::in_memory();
    let id = WidgetId::new();
    let h = rt.insert(Widget { id, n: 1 }).await.unwrap();
    assert_eq!(grow(&h, 2).await.unwrap().value, 3);
    assert!(matches!(
        grow(&h, 0).await,
        Err(conflict_runtime::ConflictError::Body(ref e)) if e == "zero"
    ));
    assert_eq!(Widget::shrink(&h).await.unwrap().value, 2);
    let again: conflict_runtime::Handle<Widget> = rt.handle(id);
    assert_eq!(again.load().await.unwrap().value.n, 2);
    let spec = rt
        .registered_operations()
        .into_iter()
        .find(|s| s.name == "grow")
        .unwrap();
    assert_eq!(spec.module, "review14::no_prelude");
    assert_eq!(spec.config.priority, OperationPriority::HIGH);
}

// ---------------------------------------------------------------------------------------------
// 3. Staging: cancellation at each point leaks nothing; preemption exactly at the grace end.
// ---------------------------------------------------------------------------------------------

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 0, grace_period_ms = 100), occ = false)]
async fn r14_slow(c: &mut Counter, ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    c.value += 1;
    c.value
}

#[with_conflict_resolution(pre_ecs(staging_timeout_ms = 50), occ = false)]
async fn r14_windowed(c: &mut Counter) -> u64 {
    c.value += 1;
    c.value
}

fn assert_nothing_left(rt: &Runtime) {
    let s = rt.staging_status();
    assert_eq!(s.total_staged, 0, "{s:?}");
    assert_eq!(s.executing, 0, "{s:?}");
    assert!(s.targets.is_empty(), "{s:?}");
    let m = rt.metrics();
    assert_eq!(m.in_flight, 0, "{m:?}");
    assert_eq!(m.submitted, m.outcomes.values().sum::<u64>(), "{m:?}");
}

#[tokio::test(start_paused = true)]
async fn cancelling_at_every_staging_point_leaks_nothing() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();

    // (a) the only member of a collecting group is dropped: the window must close.
    let solo = tokio::spawn({
        let h = h.clone();
        async move { r14_windowed(&h).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(rt.staging_status().targets.iter().any(|t| t.collecting));
    solo.abort();
    let _ = solo.await;
    assert_nothing_left(&rt);
    // The target is usable at once afterwards.
    assert_eq!(r14_slow(&h, 0).await.unwrap().value, 1);

    // (b) a staged call behind an executing one is dropped.
    let runner = tokio::spawn({
        let h = h.clone();
        async move { r14_slow(&h, 500).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let staged = tokio::spawn({
        let h = h.clone();
        async move { r14_slow(&h, 0).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(rt.staging_status().total_staged, 1);
    staged.abort();
    let _ = staged.await;
    assert_eq!(rt.staging_status().total_staged, 0);
    // (c) the executing one is dropped: the target is free.
    runner.abort();
    let _ = runner.await;
    assert_nothing_left(&rt);

    // (d) a staged call with a deadline that passes while it waits.
    let runner = tokio::spawn({
        let h = h.clone();
        async move { r14_slow(&h, 500).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let r = conflict_runtime::operation::scope()
        .timeout(Duration::from_millis(50))
        .run(r14_slow(&h, 0))
        .await;
    assert!(
        matches!(r, Err(ConflictError::DeadlineExceeded { .. })),
        "{r:?}"
    );
    assert_eq!(rt.staging_status().total_staged, 0);
    assert!(runner.await.unwrap().is_ok());
    assert_nothing_left(&rt);
    let m = rt.metrics();
    assert_eq!(m.outcomes.get("cancelled").copied(), Some(3), "{m:?}");
    assert_eq!(
        m.outcomes.get("deadline_exceeded").copied(),
        Some(1),
        "{m:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn preemption_happens_exactly_at_the_grace_end() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let low = tokio::spawn({
        let h = h.clone();
        conflict_runtime::operation::scope()
            .priority(OperationPriority::LOW)
            .run(async move { r14_slow(&h, 10_000).await })
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let high = tokio::spawn({
        let h = h.clone();
        conflict_runtime::operation::scope()
            .priority(OperationPriority::CRITICAL)
            .run(async move {
                let r = r14_slow(&h, 0).await;
                (r, tokio::time::Instant::now())
            })
    });
    let low = low.await.unwrap();
    assert!(
        matches!(low, Err(ConflictError::Preempted { .. })),
        "{low:?}"
    );
    let (high, at) = high.await.unwrap();
    assert_eq!(high.unwrap().value, 1);
    assert_eq!(
        at - t0,
        Duration::from_millis(100),
        "preempted at the grace end"
    );
    assert_nothing_left(&rt);
    assert_eq!(rt.metrics().preemptions, 1);
}

/// An equal priority never preempts: it waits for the executing one to end.
#[tokio::test(start_paused = true)]
async fn equal_priority_waits_for_the_end() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let first = tokio::spawn({
        let h = h.clone();
        async move { r14_slow(&h, 1_000).await }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let second = tokio::spawn({
        let h = h.clone();
        async move {
            let r = r14_slow(&h, 0).await;
            (r, tokio::time::Instant::now())
        }
    });
    assert_eq!(first.await.unwrap().unwrap().value, 1);
    let (r, at) = second.await.unwrap();
    assert_eq!(r.unwrap().value, 2);
    assert_eq!(at - t0, Duration::from_millis(1_000));
    assert_nothing_left(&rt);
}

// ---------------------------------------------------------------------------------------------
// 4. Prometheus exposition agrees with the snapshot.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn exposition_agrees_with_the_snapshot() {
    let rt = Runtime::in_memory();
    let h = rt.insert(Counter::new()).await.unwrap();
    for _ in 0..3 {
        r14_slow(&h, 0).await.unwrap();
    }
    let _ = conflict_runtime::operation::scope()
        .timeout(Duration::ZERO)
        .run(r14_slow(&h, 0))
        .await;
    let m = rt.metrics();
    let text = m.to_prometheus();
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("{prefix} missing in\n{text}"))
            .trim()
            .to_string()
    };
    assert_eq!(
        line("conflict_operations_submitted_total "),
        m.submitted.to_string()
    );
    assert_eq!(line("conflict_attempts_total "), m.attempts.to_string());
    for (k, v) in &m.outcomes {
        assert_eq!(
            line(&format!("conflict_operations_total{{outcome=\"{k}\"}} ")),
            v.to_string()
        );
    }
    let t = m.op_types.iter().find(|t| t.name == "r14_slow").unwrap();
    assert_eq!(
        line("conflict_op_type_attempts_total{op=\"r14_slow\",module=\"review14\"} "),
        t.attempts.to_string()
    );
    assert_eq!(
        line("conflict_operation_latency_seconds_count "),
        m.latency.count.to_string()
    );
    assert_eq!(m.submitted, 4);
    assert_eq!(m.outcomes.get("deadline_exceeded").copied(), Some(1));
    let _ = OutcomeKind::Committed;
}
