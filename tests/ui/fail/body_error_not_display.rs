use conflict_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Stock {
    #[entity(id)]
    id: EntityId,
    units: u32,
}

/// Debug only: its message could not be kept in the operation's record.
#[derive(Debug)]
struct Sold;

#[with_conflict_resolution]
async fn take(s: &mut Stock) -> Result<u32, Sold> {
    if s.units == 0 {
        return Err(Sold);
    }
    s.units -= 1;
    Ok(s.units)
}

fn main() {}
