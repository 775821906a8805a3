//! Every accepted form of the `#[with_conflict_resolution(...)]` arguments.

use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Account {
    #[entity(id)]
    id: EntityId,
    balance: i64,
}

#[with_conflict_resolution(priority = 5)]
async fn priority_int(a: &mut Account) {
    a.balance += 1;
}

#[with_conflict_resolution(priority = "high")]
async fn priority_str(a: &mut Account) {
    a.balance += 1;
}

#[with_conflict_resolution(priority = CRITICAL)]
async fn priority_ident(a: &mut Account) {
    a.balance += 1;
}

#[with_conflict_resolution(op_class = "structural")]
async fn structural(a: &mut Account) {
    a.balance += 1;
}

#[with_conflict_resolution(mode = "occ")]
async fn occ_only(a: &mut Account) {
    a.balance += 1;
}

#[with_conflict_resolution(pre_ecs, occ = false)]
async fn pre_ecs_flag(a: &mut Account) {
    a.balance += 1;
}

#[with_conflict_resolution(pre_ecs(
    staging_timeout_ms = 50,
    on_lose = "requeue",
    max_staged_per_target = 10,
    grace_period_ms = 0
),
    occ = false)]
async fn pre_ecs_full(a: &mut Account) {
    a.balance += 1;
}

#[with_conflict_resolution(occ(max_retries = 10, base_delay_ms = 0, backoff_factor = 1.5, max_delay_ms = 50), pre_ecs = false)]
async fn occ_full(a: &mut Account) {
    a.balance += 1;
}

#[with_conflict_resolution(cleanup = false)]
async fn no_cleanup(a: &mut Account) {
    a.balance += 1;
}

#[with_conflict_resolution(cleanup(strategy = "immediate"))]
async fn cleanup_immediate(a: &mut Account) {
    a.balance += 1;
}

#[with_conflict_resolution(cleanup(strategy = "custom", custom_cleanup_handler = "audit"))]
async fn cleanup_custom(a: &mut Account) {
    a.balance += 1;
}

#[with_conflict_resolution(cleanup(immediate_cleanup_priorities = [CRITICAL, 8]))]
async fn cleanup_priorities(a: &mut Account) {
    a.balance += 1;
}

#[with_conflict_resolution(
    priority = HIGH,
    op_class = "normal",
    pre_ecs(on_lose = "reject"),
    occ(max_retries = 3),
    cleanup(strategy = "deferred", retention_minutes = 5),
)]
async fn combined(a: &mut Account) {
    a.balance += 1;
}

fn main() {
    let _ = priority_int;
    let _ = priority_str;
    let _ = priority_ident;
    let _ = structural;
    let _ = occ_only;
    let _ = pre_ecs_flag;
    let _ = pre_ecs_full;
    let _ = occ_full;
    let _ = no_cleanup;
    let _ = cleanup_immediate;
    let _ = cleanup_custom;
    let _ = cleanup_priorities;
    let _ = combined;
}
