//! The stress run as a command: a reader that stops reading early (`stress | head -1`) is no
//! failure (issue #15: "no panic on a closed pipe").

use std::process::{Command, Stdio};

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
