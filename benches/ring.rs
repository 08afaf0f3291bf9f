//! Criterion benchmarks for the consistent-hash rings: lookup (owner, and owner + successor as the proxy path
//! does with retries on) at 3/10/100/1000 nodes for both algorithms, and the rebuild that runs on every
//! membership change (from scratch, and incrementally from the previous ring for one node out, one in). Run
//! briefly with `cargo bench --bench ring -- --warm-up-time 1 --measurement-time 3`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use dynamic_sharding::grouping::{match_push_path, parse_push_path};
use dynamic_sharding::ring::{Algorithm, Ring};

const NODE_COUNTS: [usize; 4] = [3, 10, 100, 1000];
/// Distinct groups cycled through, so that lookups do not all hit one cache line of the table.
const GROUPS: usize = 1024;

fn nodes(count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("10.0.{}.{}:9091", index / 250, index % 250 + 1))
        .collect()
}

/// The bytes each algorithm is given for a push: the canonical grouping key for rendezvous, the decoded path
/// for go-compatible (what `gateway::push` passes).
fn keys(algorithm: Algorithm) -> Vec<Vec<u8>> {
    (0..GROUPS)
        .map(|index| {
            let path =
                format!("/metrics/job/batch/instance/host-{index}.example.com:9100/env/prod");
            match algorithm {
                Algorithm::Rendezvous => match parse_push_path(&path) {
                    Ok(key) => key.ring_key(),
                    Err(error) => panic!("benchmark path {path} must parse: {error}"),
                },
                Algorithm::GoCompatible => match match_push_path(&path) {
                    Ok(route) => route.decoded_path().to_vec(),
                    Err(error) => panic!("benchmark path {path} must decode: {error}"),
                },
            }
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    for algorithm in Algorithm::ALL {
        let keys = keys(algorithm);
        let mut group = c.benchmark_group(format!("ring_owner/{algorithm}"));
        for count in NODE_COUNTS {
            let ring = Ring::build(algorithm, &nodes(count));
            let mut next = 0;
            group.bench_with_input(BenchmarkId::from_parameter(count), &ring, |b, ring| {
                b.iter(|| {
                    next = (next + 1) % GROUPS;
                    black_box(ring.owner(black_box(&keys[next])))
                })
            });
        }
        group.finish();
        let mut group = c.benchmark_group(format!("ring_owner_and_successor/{algorithm}"));
        for count in NODE_COUNTS {
            let ring = Ring::build(algorithm, &nodes(count));
            let mut next = 0;
            group.bench_with_input(BenchmarkId::from_parameter(count), &ring, |b, ring| {
                b.iter(|| {
                    next = (next + 1) % GROUPS;
                    let key = black_box(&keys[next]);
                    black_box((ring.owner(key), ring.successor(key)))
                })
            });
        }
        group.finish();
    }
}

fn rebuild(c: &mut Criterion) {
    for algorithm in Algorithm::ALL {
        let mut group = c.benchmark_group(format!("ring_build/{algorithm}"));
        // A 1000-node rendezvous build takes tens of milliseconds; ten samples fit the short measurement time.
        group.sample_size(10);
        for count in NODE_COUNTS {
            let nodes = nodes(count);
            group.bench_with_input(BenchmarkId::from_parameter(count), &nodes, |b, nodes| {
                b.iter(|| Ring::build(algorithm, black_box(nodes)))
            });
        }
        group.finish();
    }
}

/// The rebuild the ring builder does on a typical membership change (one node leaves, another joins), derived
/// from the previous ring; compare with `ring_build/rendezvous`, the full build of the same size.
fn incremental_rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_rebuild_incremental/rendezvous");
    group.sample_size(10);
    for count in [10, 100, 1000] {
        let before = nodes(count);
        let previous = Ring::build(Algorithm::Rendezvous, &before);
        let mut after = before.clone();
        after.remove(count / 2);
        after.push("10.9.9.9:9091".to_string());
        group.bench_with_input(BenchmarkId::from_parameter(count), &after, |b, after| {
            b.iter(|| previous.rebuild(Algorithm::Rendezvous, black_box(after)))
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, rebuild, incremental_rebuild);
criterion_main!(benches);
