//! The stress run as a command (issue #15): the default workload exercises every kind of
//! conflict handling it reports, a broken store makes its verdict fail, `--profile seed` prints
//! the design's figures beside ours, nonsensical flags are refused, and a reader that stops
//! reading early (`stress | head -1`) is no failure.

use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Runs the stress binary with `args` to the end.
fn stress(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stress"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the stress binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A field of the JSON report as a count.
fn count(report: &Value, path: &str) -> u64 {
    report
        .pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} is not a count in the report"))
}

#[test]
fn a_closed_pipe_ends_the_run_quietly_with_its_verdict() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stress"))
        .args(["--ops", "2000", "--workers", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the stress binary starts");
    // The reader is gone (its end of the pipe closed) before the report is written: writing
    // it meets a broken pipe, which once panicked ("failed printing to stdout").
    drop(child.stdout.take().expect("piped"));
    let out = child.wait_with_output().expect("the run ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
}

/// With no flags, every kind of conflict handling the report counts happens, the counts are
/// the runtime's own, and the verdict (which requires them) passes.
#[test]
fn the_default_run_exercises_every_kind_it_reports_and_passes() {
    let out = stress(&["--json"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(report.pointer("/verdict/ok"), Some(&Value::Bool(true)));
    assert_eq!(
        report.pointer("/verdict/coverage_required"),
        Some(&Value::Bool(true)),
        "no flags is the default workload"
    );
    assert_eq!(
        report.pointer("/verdict/coverage_ok"),
        Some(&Value::Bool(true))
    );
    // The history checker saw every call, and the multi-entity commits and staging decisions
    // it is there to check, and found nothing.
    assert_eq!(
        report.pointer("/verdict/history_ok"),
        Some(&Value::Bool(true))
    );
    assert_eq!(count(&report, "/history/violations"), 0);
    assert_eq!(
        count(&report, "/history/calls"),
        count(&report, "/submitted")
    );
    for what in [
        "writes",
        "multi_entity_commits",
        "staging_decisions",
        "preemptions",
    ] {
        assert!(
            count(&report, &format!("/history/{what}")) > 0,
            "the history check saw no {what}"
        );
    }
    // Each kind happened, and is what the runtime's metrics counted (not a guess of the
    // driver's).
    for (kind, metric) in [
        ("staging_conflicts", "/metrics/staging_contended_groups"),
        ("rejections", "/metrics/outcomes/rejected"),
        ("requeues", "/metrics/requeued"),
        ("preemptions", "/metrics/preemptions"),
        ("occ_conflicts", "/metrics/occ_conflicts"),
        ("occ_retries", "/metrics/occ_retries"),
    ] {
        let n = count(&report, &format!("/exercised/{kind}"));
        assert!(n > 0, "the default run had no {kind}");
        assert_eq!(n, count(&report, metric), "{kind} is not {metric}");
    }
    // A priority win is a rejection, so there are at most as many.
    let wins = count(&report, "/exercised/priority_wins");
    assert!(wins > 0, "the default run had no priority win");
    assert!(wins + count(&report, "/order_wins") == count(&report, "/exercised/rejections"));
    // Every call that ended Preempted was preempted; the runtime counts preemptions per
    // entity, so a transfer stopped on both its accounts may count twice.
    let preempted = count(&report, "/metrics/outcomes/preempted");
    assert!(preempted > 0, "no call ended Preempted");
    assert!(preempted <= count(&report, "/exercised/preemptions"));
}

/// A store that applies every commit whatever version it expected loses updates; the replay
/// must see it, and the run must exit 1 naming what failed.
#[test]
fn a_store_without_its_compare_fails_the_default_verdict() {
    let out = stress(&["--sabotage", "compare"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("verdict: FAIL"), "{stdout}");
    let state = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("state (targets"))
        .expect("a state line");
    assert!(state.ends_with("FAILED"), "{state}");
    assert!(stdout.contains("but replay gives"), "{stdout}");
    // Without a compare no commit can conflict: the coverage check says so too.
    assert!(
        stdout.contains("no longer exercises OCC conflicts"),
        "{stdout}"
    );
    assert!(stderr.contains("verification FAILED"), "{stderr}");
}

/// A store that applies every commit twice moves each entity two versions per commit; the
/// gap-free version check must see it, and the run must exit 1.
#[test]
fn a_store_that_applies_commits_twice_fails_the_default_verdict() {
    let out = stress(&["--sabotage", "double-apply"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("verdict: FAIL"), "{stdout}");
    for check in [
        "state (targets",
        "money (Σ balances",
        "history (conflict-check",
    ] {
        let line = stdout
            .lines()
            .skip_while(|l| !l.trim_start().starts_with(check))
            .find(|l| l.contains("OK") || l.contains("FAILED"))
            .unwrap_or_else(|| panic!("no result for {check}"));
        assert!(line.ends_with("FAILED"), "{check}: {line}");
    }
    assert!(
        stdout.contains("committed versions are not exactly"),
        "{stdout}"
    );
    assert!(stdout.contains("history: VersionGap"), "{stdout}");
    assert!(stderr.contains("verification FAILED"), "{stderr}");
}

/// `--profile seed` prints, per figure, ours beside the design's published one, and says that
/// a pass with most calls rejected is no proof that most of the work got done.
#[test]
fn the_seed_profile_prints_the_designs_figures_beside_ours() {
    // The design's workload, shortened (a flag given overrides the profile).
    let out = stress(&["--profile", "seed", "--ops", "3000"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stdout.contains("work 5 ms") || stdout.contains("5 ms of simulated work"));
    assert!(
        stdout.contains("OURS (measured in this run) BESIDE THE DESIGN'S (published claims)"),
        "{stdout}"
    );
    // figure, the design's value, unit: the last three columns of the row.
    for (figure, design, unit) in [
        ("pre-ECS conflicts detected", "900", "groups"),
        ("pre-ECS conflicts resolved", "900", "groups"),
        ("OCC conflicts detected", "1401", "commits"),
        ("OCC retries attempted", "1401", "retries"),
        ("OCC operations still retrying", "933", "operations"),
        ("wall time of the run", "42.00", "seconds"),
    ] {
        let row = stdout
            .lines()
            .skip_while(|l| !l.starts_with("SEED PROFILE"))
            .find(|l| l.trim_start().starts_with(figure))
            .unwrap_or_else(|| panic!("no row {figure}: {stdout}"));
        let cols: Vec<&str> = row.split_whitespace().rev().take(3).collect();
        assert_eq!(cols[0], unit, "{row}");
        assert_eq!(cols[1], design, "{row}");
        assert!(cols[2].parse::<f64>().is_ok(), "ours is a number: {row}");
    }
    // 100 calls per batch on 3 targets, losers rejected: nearly all are turned away.
    assert!(stdout.contains("note: most calls"), "{stdout}");
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    assert!(stdout.contains("not required (not the default workload)"));
}

/// A workload that is not the default one may leave a kind out (here: no OCC-only share, so no
/// OCC conflict) without failing; the coverage line says it was not required.
#[test]
fn a_workload_other_than_the_default_does_not_require_coverage() {
    let out = stress(&["--ops", "2000", "--occ-share", "0", "--json"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(
        report.pointer("/verdict/coverage_required"),
        Some(&Value::Bool(false))
    );
    assert_eq!(count(&report, "/exercised/occ_conflicts"), 0);
}

/// The text report labels its figures: units, what "pre-ECS" and the table columns mean.
#[test]
fn the_text_report_labels_its_figures() {
    let out = stress(&["--ops", "2000"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for label in [
        "\"pre-ECS\" is the design's name for staging",
        "hits: count of increment, accumulate and version commits applied",
        "total: sum of the amounts added",
        "microseconds from a call's submission to its outcome",
        "wall time:",
        "operations/s",
        "MiB",
        "first-try: calls committed on their first attempt",
        "the checks cover the",
    ] {
        assert!(stdout.contains(label), "no {label:?} in:\n{stdout}");
    }
}

/// A count where 0 or a negative makes no sense is refused with a message naming the flag and
/// exit status 2, before anything runs (never raised to 1 in silence).
#[test]
fn nonsensical_counts_are_refused() {
    for (flag, value) in [
        ("--rate", "0"),
        ("--batch", "0"),
        ("--workers", "0"),
        ("--ops", "0"),
        ("--rate", "-5"),
        ("--batch", "-1"),
        ("--workers", "-2"),
        ("--ops", "-1"),
        ("--targets", "-1"),
        ("--accounts", "-1"),
        ("--work-ms", "-1"),
        ("--transfer-share", "101"),
        ("--occ-share", "-1"),
        ("--preemptible-share", "101"),
    ] {
        let out = stress(&[flag, value]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
        assert!(out.stdout.is_empty(), "{flag} {value} ran");
    }
}

/// Flags that parse but make no run together are refused (exit 2) rather than one of them
/// being ignored.
#[test]
fn contradictory_flags_are_refused() {
    for (args, says) in [
        (&["--rate", "100", "--batch", "5"][..], "--batch"),
        (&["--mode", "occ", "--on-lose", "reject"][..], "--on-lose"),
        (
            &["--mode", "pre-ecs", "--occ-share", "5"][..],
            "--occ-share",
        ),
        (
            &["--occ-share", "60", "--preemptible-share", "50"][..],
            "at most 100",
        ),
        (&["--targets", "0"][..], "--targets"),
        (&["--accounts", "1"][..], "--accounts"),
        (
            &[
                "--sabotage",
                "compare",
                "--backend",
                "postgres://u@127.0.0.1:1/db",
            ][..],
            "--sabotage",
        ),
    ] {
        let out = stress(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} ran");
    }
}
