//! Start-up validation: two cleanup handlers with one name make the runtime refuse to start.

use conflict_runtime::prelude::*;
use conflict_runtime::{cleanup::CleanupError, config::ConfigError, operation::OperationRecord};

mod first {
    use super::*;

    #[cleanup_handler("audit")]
    pub async fn audit(_op: &OperationRecord) -> Result<(), CleanupError> {
        Ok(())
    }
}

mod second {
    use super::*;

    #[cleanup_handler("audit")]
    pub async fn audit_again(_op: &OperationRecord) -> Result<(), CleanupError> {
        Ok(())
    }
}

#[test]
fn a_duplicate_handler_name_fails_the_build() {
    let err = match Runtime::builder().build() {
        Err(e) => e,
        Ok(_) => panic!("the runtime started with two handlers named \"audit\""),
    };
    match &err {
        ConfigError::DuplicateCleanupHandler {
            name,
            first,
            second,
        } => {
            assert_eq!(name, "audit");
            let mut both = [first.as_str(), second.as_str()];
            both.sort_unstable();
            assert_eq!(
                both,
                [
                    "startup_duplicate_handler::first::audit",
                    "startup_duplicate_handler::second::audit_again"
                ]
            );
        }
        other => panic!("unexpected: {other}"),
    }
    assert!(err.to_string().contains("registered twice"));
    let _ = (first::audit, second::audit_again);
}
