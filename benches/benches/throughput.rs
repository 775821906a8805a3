//! `cargo bench -p conflict-benches`: every scenario × body kind × implementation as a criterion
//! benchmark. One iteration is one committed operation (`iter_custom` times a whole run of
//! `iters` commits on the cell's own two-worker runtime), so criterion's `thrpt` is committed
//! ops/s. Filter as usual, e.g. `cargo bench -p conflict-benches -- hot-64x1/await`.
//!
//! Criterion reports time only; the wasted attempts per commit and the ratios are in the
//! `perf_report` binary's table (`docs/performance.md`).

#![allow(missing_docs)] // criterion_group! generates undocumented public items.

use std::time::Duration;

use conflict_benches::{Bench, Body, Impl, Scenario};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn throughput(c: &mut Criterion) {
    for scenario in Scenario::ALL {
        for body in Body::ALL {
            let mut group = c.benchmark_group(format!("{}/{}", scenario.name, body.name()));
            group.throughput(Throughput::Elements(1));
            for imp in Impl::ALL.into_iter().filter(|i| i.applies(scenario)) {
                let mut bench: Option<Bench> = None;
                group.bench_function(imp.name(), |b| {
                    let bench = bench.get_or_insert_with(|| Bench::new(imp, scenario, body));
                    b.iter_custom(|iters| bench.run(iters).wall);
                });
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = throughput
}
criterion_main!(benches);
