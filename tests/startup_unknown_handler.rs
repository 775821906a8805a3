//! Start-up validation: a function that names a cleanup handler nobody registered makes the
//! runtime refuse to start, naming both. (Its own binary: validation covers every function
//! linked into the program.)

use conflict_runtime::prelude::*;
use conflict_runtime::{cleanup::CleanupError, config::ConfigError};
use conflict_tests::Counter;

#[with_conflict_resolution(cleanup(
    strategy = "custom",
    custom_cleanup_handler = "ledger_archive"
))]
async fn archive(c: &mut Counter) {
    c.value += 1;
}

#[test]
fn an_unknown_handler_name_fails_the_build_with_both_names() {
    let err = match Runtime::builder().build() {
        Err(e) => e,
        Ok(_) => panic!("the runtime started with a missing handler"),
    };
    match &err {
        ConfigError::UnknownCleanupHandler { function, handler } => {
            assert_eq!(function, "startup_unknown_handler::archive");
            assert_eq!(handler, "ledger_archive");
        }
        other => panic!("unexpected: {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("`startup_unknown_handler::archive`") && msg.contains("\"ledger_archive\""),
        "{msg}"
    );

    // The infallible shorthand panics with the same message.
    let panic = std::panic::catch_unwind(Runtime::in_memory).err().unwrap();
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains(&msg), "{text}");

    // Registering it in code fixes it.
    Runtime::builder()
        .cleanup_handler("ledger_archive", |_r| async { Ok::<(), CleanupError>(()) })
        .build()
        .unwrap();
    let _ = archive;
}
