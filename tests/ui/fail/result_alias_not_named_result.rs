use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Stock {
    #[entity(id)]
    id: EntityId,
    units: u32,
}

#[derive(Debug)]
struct Nope;

type Outcome<T> = Result<T, Nope>;

#[with_conflict_resolution]
async fn take(s: &mut Stock) -> Outcome<u32> {
    s.units -= 1;
    Err(Nope)
}

fn main() {}
