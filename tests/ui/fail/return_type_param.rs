use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Counter {
    #[entity(id)]
    id: EntityId,
    n: u64,
}

// `T` could be instantiated with a `Result`, whose `Err` would then be committed as a value.
#[with_conflict_resolution]
async fn put<T: Clone + Send + Sync + 'static>(c: &mut Counter, out: T) -> T {
    c.n += 1;
    out
}

fn main() {}
