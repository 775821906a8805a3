// Known limit: an associated function without a receiver in a generic `impl<T>` block cannot
// use `T` (the generated body is a nested function, which cannot see the impl's parameters).
// Write it as a `&mut self` method or a free generic function.
use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Tally {
    #[entity(id)]
    id: EntityId,
    n: u64,
}

struct Ops<T>(std::marker::PhantomData<T>);

impl<T: Entity> Ops<T> {
    #[with_conflict_resolution]
    async fn touch(entity: &mut T) {
        let _ = entity;
    }
}

fn main() {}
