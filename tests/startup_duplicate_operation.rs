//! Start-up validation: two annotated methods of one name in one module (their operation path,
//! `module::name`, would be shared) make the runtime refuse to start, naming the path; giving
//! one of them its own `name = ".."` resolves it (see the `renamed` module).

use conflict_runtime::config::ConfigError;
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Cart {
    #[entity(id)]
    id: EntityId,
    lines: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Shelf {
    #[entity(id)]
    id: EntityId,
    items: u32,
}

impl Cart {
    #[with_conflict_resolution]
    async fn add(&mut self) -> u32 {
        self.lines += 1;
        self.lines
    }
}

impl Shelf {
    #[with_conflict_resolution]
    async fn add(&mut self) -> u32 {
        self.items += 1;
        self.items
    }
}

#[test]
fn two_methods_sharing_an_operation_path_fail_the_build() {
    let err = match Runtime::builder().build() {
        Err(e) => e,
        Ok(_) => panic!("the runtime started with two operations named `add` in one module"),
    };
    match &err {
        ConfigError::DuplicateOperation { path } => {
            assert_eq!(path, "startup_duplicate_operation::add");
        }
        other => panic!("unexpected: {other}"),
    }
    assert!(
        err.to_string().contains("name = \\\"...\\\"")
            || err.to_string().contains("name = \"...\""),
        "{err}"
    );
    let _ = (Cart::add, Shelf::add);
}
