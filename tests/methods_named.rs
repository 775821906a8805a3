//! Two annotated methods of one name in one module: with `name = ".."` on one of them the
//! runtime starts, both run, and metrics, events and records tell them apart (without it the
//! runtime refuses to start: `tests/startup_duplicate_operation.rs`).

use conflict_runtime::events::{Event, Received};
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Basket {
    #[entity(id)]
    id: EntityId,
    lines: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Rack {
    #[entity(id)]
    id: EntityId,
    items: u32,
}

impl Basket {
    #[with_conflict_resolution]
    async fn add(&mut self) -> u32 {
        self.lines += 1;
        self.lines
    }
}

impl Rack {
    #[with_conflict_resolution(name = "Rack::add")]
    async fn add(&mut self) -> u32 {
        self.items += 1;
        self.items
    }
}

#[tokio::test]
async fn a_renamed_method_is_its_own_operation_type() {
    let rt = Runtime::builder().build().expect("names are unique");
    let mut paths: Vec<String> = rt
        .registered_operations()
        .iter()
        .map(|s| s.path())
        .collect();
    paths.sort();
    assert_eq!(paths, ["methods_named::Rack::add", "methods_named::add"]);

    let mut events = rt.subscribe();
    let basket = rt
        .insert(Basket {
            id: EntityId::new(),
            lines: 0,
        })
        .await
        .unwrap();
    let rack = rt
        .insert(Rack {
            id: EntityId::new(),
            items: 0,
        })
        .await
        .unwrap();
    for _ in 0..3 {
        Basket::add(&basket).await.unwrap();
    }
    Rack::add(&rack).await.unwrap();

    let m = rt.metrics();
    let committed = |name: &str| {
        m.op_types
            .iter()
            .find(|o| o.name == name)
            .unwrap_or_else(|| panic!("no metrics for {name}: {:?}", m.op_types))
            .committed
    };
    assert_eq!((committed("add"), committed("Rack::add")), (3, 1));
    assert_eq!(m.op_types.len(), 2);

    let mut completed = Vec::new();
    while let Some(r) = events.try_recv() {
        if let Received::Event(Event::OperationCompleted { op, .. }) = r {
            completed.push(op.op_type.to_string());
        }
    }
    completed.sort();
    assert_eq!(completed, ["Rack::add", "add", "add", "add"]);
}
