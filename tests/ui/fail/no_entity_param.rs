use conflict_runtime::prelude::*;

#[with_conflict_resolution]
async fn touch(count: u32, label: &str) {
    let _ = (count, label);
}

fn main() {}
