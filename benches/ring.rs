//! Ring lookup and rebuild cost for both algorithms at several node counts.
//!
//! Lookups cycle through 4096 distinct keys so the table is read at scattered places, as under real traffic,
//! rather than one hot cache line. Keys have the shape each algorithm receives from the gateway: canonical
//! grouping-key bytes for `rendezvous`, the decoded request path for `go-compatible`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dynamic_sharding::ring::{Algorithm, Ring};

const KEY_COUNT: usize = 4096;

fn node_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|index| {
            format!(
                "10.{}.{}.{}:9091",
                index / 65536,
                (index / 256) % 256,
                index % 256
            )
        })
        .collect()
}

fn keys(algorithm: Algorithm) -> Vec<Vec<u8>> {
    (0..KEY_COUNT)
        .map(|index| {
            let job = format!("batch-{index}");
            let instance = format!("host-{}", index % 97);
            match algorithm {
                Algorithm::Rendezvous => format!("job\u{0}{job}\u{0}instance\u{0}{instance}"),
                Algorithm::GoCompatible => format!("/metrics/job/{job}/instance/{instance}"),
            }
            .into_bytes()
        })
        .collect()
}

fn lookup(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("ring_lookup");
    for algorithm in Algorithm::ALL {
        let keys = keys(algorithm);
        for node_count in [3, 10, 100, 1000] {
            let ring = Ring::build(algorithm, &node_names(node_count));
            group.bench_with_input(
                BenchmarkId::new(algorithm.as_str(), node_count),
                &ring,
                |bencher, ring| {
                    let mut next = 0usize;
                    bencher.iter(|| {
                        next = (next + 1) % KEY_COUNT;
                        black_box(ring.owner(black_box(&keys[next])))
                    });
                },
            );
        }
    }
    group.finish();
}

fn successor(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("ring_successor");
    for algorithm in Algorithm::ALL {
        let keys = keys(algorithm);
        let ring = Ring::build(algorithm, &node_names(100));
        group.bench_with_input(
            BenchmarkId::new(algorithm.as_str(), 100),
            &ring,
            |bencher, ring| {
                let mut next = 0usize;
                bencher.iter(|| {
                    next = (next + 1) % KEY_COUNT;
                    black_box(ring.successor(black_box(&keys[next])))
                });
            },
        );
    }
    group.finish();
}

fn rebuild(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("ring_rebuild");
    group.sample_size(20);
    for algorithm in Algorithm::ALL {
        for node_count in [10, 100] {
            let nodes = node_names(node_count);
            group.bench_with_input(
                BenchmarkId::new(algorithm.as_str(), node_count),
                &nodes,
                |bencher, nodes| bencher.iter(|| Ring::build(algorithm, black_box(nodes))),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, lookup, successor, rebuild);
criterion_main!(benches);
