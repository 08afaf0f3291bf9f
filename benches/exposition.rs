//! Parse and merge throughput for the gateway's read side: three nodes, ~10 MB of
//! Pushgateway-style exposition in total (counters, gauges, histograms, escaped labels).
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dynamic_sharding::exposition::{merge, parse_text};

/// One node's `/metrics`: `groups` groups, each with a counter, a gauge and a histogram.
fn node_exposition(node: usize, groups: usize) -> String {
    let mut out = String::new();
    out.push_str("# HELP requests_total Requests.\n# TYPE requests_total counter\n");
    for g in 0..groups {
        for code in ["200", "404", "500"] {
            out.push_str(&format!(
                "requests_total{{code=\"{code}\",instance=\"n{node}\",job=\"job-{g}\",path=\"/a \\\"b\\\"\"}} {}\n",
                g * 7 + node
            ));
        }
    }
    out.push_str("# HELP queue_depth Depth.\n# TYPE queue_depth gauge\n");
    for g in 0..groups {
        out.push_str(&format!(
            "queue_depth{{instance=\"n{node}\",job=\"job-{g}\"}} {}.25\n",
            g % 97
        ));
    }
    out.push_str("# HELP latency_seconds Latency.\n# TYPE latency_seconds histogram\n");
    for g in 0..groups {
        for (i, le) in ["0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "+Inf"]
            .iter()
            .enumerate()
        {
            out.push_str(&format!(
                "latency_seconds_bucket{{instance=\"n{node}\",job=\"job-{g}\",le=\"{le}\"}} {}\n",
                i * 3
            ));
        }
        out.push_str(&format!(
            "latency_seconds_sum{{instance=\"n{node}\",job=\"job-{g}\"}} 12.5\n"
        ));
        out.push_str(&format!(
            "latency_seconds_count{{instance=\"n{node}\",job=\"job-{g}\"}} 21\n"
        ));
    }
    out
}

fn bench_exposition(c: &mut Criterion) {
    let nodes: Vec<(String, String)> = (0..3)
        .map(|n| (format!("127.0.0.1:{}", 9091 + n), node_exposition(n, 5_000)))
        .collect();
    let total: usize = nodes.iter().map(|(_, text)| text.len()).sum();
    let pairs: Vec<(&str, &str)> = nodes
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();

    let mut group = c.benchmark_group("exposition");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(total as u64));
    group.bench_function("parse_3_nodes", |b| {
        b.iter(|| {
            for (_, text) in &pairs {
                std::hint::black_box(parse_text(text).map(|f| f.len()).unwrap_or(0));
            }
        })
    });
    group.bench_function("merge_3_nodes", |b| {
        b.iter_batched(|| (), |_| merge(&pairs).text.len(), BatchSize::SmallInput)
    });
    group.finish();
}

criterion_group!(benches, bench_exposition);
criterion_main!(benches);
