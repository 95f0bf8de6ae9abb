//! Engine micro-benchmarks: routing-table insert and `closest`, and simulated lookups.
//! Run with `cargo bench -p kad-sim`. CI compiles them but does not time them.
#![allow(clippy::disallowed_methods, missing_docs)] // benches pick an arbitrary base instant

use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use kad_core::{Contact, NodeId, PeerAddr, RoutingParams, RoutingTable};
use kad_sim::{LookupScenario, run_lookup_scenario};
use rand::SeedableRng;

fn params() -> RoutingParams {
    RoutingParams {
        k: 20,
        replacement_cache: 8,
        liveness_window: Duration::from_secs(900),
        max_failures: 2,
        subnet_limit: 2,
    }
}

fn contacts(n: usize) -> Vec<Contact> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    (0..n)
        .map(|i| Contact::new(NodeId::random(&mut rng), PeerAddr::Mem(i as u64)))
        .collect()
}

fn routing(c: &mut Criterion) {
    let now = Instant::now();
    let cs = contacts(10_000);
    c.bench_function("routing/insert 10k contacts", |b| {
        b.iter_batched(
            || RoutingTable::new(NodeId::ZERO, params()),
            |mut rt| {
                for ct in &cs {
                    rt.insert(now, ct.clone(), true);
                }
                rt
            },
            BatchSize::SmallInput,
        )
    });
    let mut rt = RoutingTable::new(NodeId::ZERO, params());
    for ct in &cs {
        rt.insert(now, ct.clone(), true);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let targets: Vec<NodeId> = (0..1024).map(|_| NodeId::random(&mut rng)).collect();
    let mut i = 0;
    c.bench_function(&format!("routing/closest 20 of {}", rt.len()), |b| {
        b.iter(|| {
            i = (i + 1) % targets.len();
            rt.closest(&targets[i], 20)
        })
    });
}

fn simulated_lookups(c: &mut Criterion) {
    let mut g = c.benchmark_group("sim");
    g.sample_size(10);
    g.bench_function("1000 nodes join + 200 lookups", |b| {
        b.iter(|| run_lookup_scenario(&LookupScenario::default(), |_, _| {}))
    });
    g.finish();
}

criterion_group!(benches, routing, simulated_lookups);
criterion_main!(benches);
