//! The health check of [`Runtime::health`](crate::Runtime::health).

use std::collections::BTreeMap;

use conflict_core::OpId;
use serde::{Deserialize, Serialize};

/// Overall health.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Nothing to report.
    Healthy,
    /// Working, but zombies or memory pressure are high.
    Degraded,
    /// A cleanup handler failed for good.
    Unhealthy,
}

/// A cleanup handler that failed on a record after all its retries (the record was kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedHandler {
    /// The handler's name.
    pub handler: String,
    /// The operation whose record it failed on.
    pub op_id: OpId,
    /// The last error (or panic message).
    pub error: String,
    /// How many times it ran.
    pub attempts: u32,
}

/// The health report, serde-serializable.
///
/// Thresholds: more than 10,000 zombies or memory pressure above 0.9 → degraded; any failed
/// cleanup handler → unhealthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Overall status.
    pub status: HealthStatus,
    /// Zombie records kept.
    pub total_zombie_operations: u64,
    /// Zombie records kept, per target (`Type/id`).
    pub zombie_counts_by_target: BTreeMap<String, u64>,
    /// Memory pressure, 0..1.
    pub memory_pressure: f64,
    /// Cleanup handler runs in progress.
    pub active_cleanup_tasks: u64,
    /// Handlers that failed for good: the most recent [`FAILED_HANDLERS_KEPT`] failures.
    pub failed_cleanup_handlers: Vec<FailedHandler>,
    /// What is wrong, in words.
    pub issues: Vec<String>,
}

/// Zombies above which the runtime reports itself degraded.
pub const ZOMBIE_DEGRADED: u64 = 10_000;
/// Memory pressure above which the runtime reports itself degraded.
pub const PRESSURE_DEGRADED: f64 = 0.9;
/// How many failed handler runs the registry keeps for the health report (the most recent).
pub const FAILED_HANDLERS_KEPT: usize = 100;

impl HealthReport {
    pub(crate) fn assess(
        total_zombie_operations: u64,
        zombie_counts_by_target: BTreeMap<String, u64>,
        memory_pressure: f64,
        active_cleanup_tasks: u64,
        failed_cleanup_handlers: Vec<FailedHandler>,
    ) -> Self {
        let mut status = HealthStatus::Healthy;
        let mut issues = Vec::new();
        if total_zombie_operations > ZOMBIE_DEGRADED {
            status = HealthStatus::Degraded;
            issues.push(format!("High zombie count: {total_zombie_operations}"));
        }
        if memory_pressure > PRESSURE_DEGRADED {
            status = HealthStatus::Degraded;
            issues.push(format!(
                "High memory pressure: {:.1}%",
                memory_pressure * 100.0
            ));
        }
        if !failed_cleanup_handlers.is_empty() {
            status = HealthStatus::Unhealthy;
            let mut names: Vec<&str> = failed_cleanup_handlers
                .iter()
                .map(|f| f.handler.as_str())
                .collect();
            names.sort_unstable();
            names.dedup();
            issues.push(format!(
                "Failed cleanup handlers: {} ({} records kept)",
                names.join(", "),
                failed_cleanup_handlers.len()
            ));
        }
        Self {
            status,
            total_zombie_operations,
            zombie_counts_by_target,
            memory_pressure,
            active_cleanup_tasks,
            failed_cleanup_handlers,
            issues,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_follow_the_design() {
        let h = HealthReport::assess(10_000, BTreeMap::new(), 0.9, 0, vec![]);
        assert_eq!(h.status, HealthStatus::Healthy);
        assert!(h.issues.is_empty());
        let h = HealthReport::assess(10_001, BTreeMap::new(), 0.1, 0, vec![]);
        assert_eq!(h.status, HealthStatus::Degraded);
        let h = HealthReport::assess(0, BTreeMap::new(), 0.91, 0, vec![]);
        assert_eq!(h.status, HealthStatus::Degraded);
        let failed = FailedHandler {
            handler: "audit".into(),
            op_id: OpId::from_parts(1, 1),
            error: "down".into(),
            attempts: 3,
        };
        let h = HealthReport::assess(20_000, BTreeMap::new(), 0.99, 0, vec![failed]);
        assert_eq!(h.status, HealthStatus::Unhealthy);
        assert_eq!(h.issues.len(), 3);
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["status"], "unhealthy");
    }
}
