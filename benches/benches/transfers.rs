//! `cargo bench -p conflict-benches --bench transfers`: every transfer scenario × body kind ×
//! implementation (the default and requeue configurations, two tokio Mutexes in index order,
//! the naive two-key OCC loop) as a criterion benchmark. One iteration is one committed
//! transfer (`iter_custom` times a whole run of `iters` commits on the cell's own two-worker
//! runtime), so criterion's `thrpt` is committed transfers/s; every run also checks that the
//! accounts' balances still sum to what they started with. Filter as usual, e.g.
//! `cargo bench -p conflict-benches --bench transfers -- xfer-hot-64x4/await`.
//!
//! Criterion reports time only; attempts per commit, refusals and the ratios are in the
//! `perf_report` binary's transfer table (`docs/performance.md`).

#![allow(missing_docs)] // criterion_group! generates undocumented public items.

use std::time::Duration;

use conflict_benches::{Bench, Body, Impl, Scenario};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn transfers(c: &mut Criterion) {
    for scenario in Scenario::TRANSFERS {
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
    targets = transfers
}
criterion_main!(benches);
