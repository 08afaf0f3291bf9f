//! Criterion benchmarks for the per-request grouping-key work: parsing a push path and building the
//! ring key. Run briefly with `cargo bench --bench grouping -- --warm-up-time 1 --measurement-time 2`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dynamic_sharding::grouping::parse_push_path;

/// What client libraries typically send: job first, then a few plain labels.
const TYPICAL_PATH: &str =
    "/metrics/job/node_backup/instance/db-7.example.com:9100/env/prod/region/eu-west-1";
/// A job and a value carrying '/' in base64, as clients encode them, plus an empty value.
const BASE64_PATH: &str =
    "/metrics/job@base64/YmF0Y2gvbmlnaHRseQ/path@base64/L3Zhci9saWIvZGF0YQ/env/prod/shard@base64/=";

fn parse(c: &mut Criterion) {
    c.bench_function("parse_push_path/typical_3_labels", |b| {
        b.iter(|| parse_push_path(black_box(TYPICAL_PATH)))
    });
    c.bench_function("parse_push_path/base64", |b| {
        b.iter(|| parse_push_path(black_box(BASE64_PATH)))
    });
}

fn ring_key(c: &mut Criterion) {
    let Ok(key) = parse_push_path(TYPICAL_PATH) else {
        panic!("benchmark path {TYPICAL_PATH} must parse");
    };
    c.bench_function("ring_key/typical_3_labels", |b| {
        b.iter(|| black_box(&key).ring_key())
    });
    let mut buf = Vec::new();
    c.bench_function("write_ring_key/typical_3_labels_reused_buffer", |b| {
        b.iter(|| {
            black_box(&key).write_ring_key(&mut buf);
            black_box(buf.len())
        })
    });
    c.bench_function("parse_and_write_ring_key/typical_3_labels", |b| {
        b.iter(|| {
            if let Ok(key) = parse_push_path(black_box(TYPICAL_PATH)) {
                key.write_ring_key(&mut buf);
            }
            black_box(buf.len())
        })
    });
}

criterion_group!(benches, parse, ring_key);
criterion_main!(benches);
