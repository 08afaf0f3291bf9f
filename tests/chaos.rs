//! A seeded chaos run against four real Pushgateways (with persistence files): clients push while nodes are
//! SIGKILLed and restarted or SIGSTOPped and SIGCONTed at random, one fault at a time. Afterwards every group
//! holds the value of its last acknowledged push, on exactly its owner.
//!
//! `DS_CHAOS_SEED=<n>` replays another sequence; the run prints its seed and counts.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::placement::{contents, Labels};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;

const NODES: usize = 4;
const CLIENTS: usize = 6;
const GROUPS_PER_CLIENT: usize = 4;
/// How long faults are injected; the whole test stays well under a minute when nothing is wrong.
const CHAOS: Duration = Duration::from_secs(20);

fn seed() -> u64 {
    std::env::var("DS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_201)
}

fn group_path(client: usize, group: usize) -> String {
    format!("/metrics/job/chaos/client/c{client}/group/g{group}")
}

fn group_labels(client: usize, group: usize) -> Labels {
    labels(&[
        ("job", "chaos"),
        ("client", &format!("c{client}")),
        ("group", &format!("g{group}")),
    ])
}

#[derive(Default)]
struct Counts {
    pushes: AtomicU64,
    acknowledged: AtomicU64,
    failed: AtomicU64,
}

/// One client: pushes its groups in turn with increasing values; remembers the last acknowledged value of each.
async fn client(
    gateway_url: String,
    client: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<Labels, u64>>>,
    counts: Arc<Counts>,
) {
    let http = http_client();
    let mut value = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for group in 0..GROUPS_PER_CLIENT {
            value += 1;
            counts.pushes.fetch_add(1, Ordering::Relaxed);
            let url = format!("{gateway_url}{}", group_path(client, group));
            let body = format!("chaos_value {value}\n");
            match send(&http, Method::PUT, &url, body).await {
                Ok(reply) if reply.status.is_success() => {
                    counts.acknowledged.fetch_add(1, Ordering::Relaxed);
                    acked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(group_labels(client, group), value);
                }
                _ => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every group's copies: labels -> [(node, value)].
async fn placement(nodes: &[&Pushgateway]) -> BTreeMap<Labels, Vec<(String, u64)>> {
    contents(nodes)
        .await
        .into_iter()
        .map(|(labels, copies)| {
            let values = copies
                .into_iter()
                .map(|(node, families)| {
                    let value = families["chaos_value"]["metrics"][0]["value"]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(u64::MAX);
                    (node, value)
                })
                .collect();
            (labels, values)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_keeps_its_last_acknowledged_value_on_its_owner_through_kills_and_stops() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = Vec::new();
    for i in 0..NODES {
        nodes.push(
            Pushgateway::start_with_persistence(dir.path().join(format!("node{i}.db"))).await,
        );
    }
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    let gateway = Gateway::start(&format!(
        "pushgateway:\n  servers: [{}]\nhealth_check: {{interval: 500ms, timeout: 400ms, unhealthy_threshold: 2, \
         healthy_threshold: 1}}\nrebalance: {{interval: 1s}}\nproxy: {{upstream_timeout: 1s}}\n\
         ambiguous_writes: {{settle_time: 1s, linger: 60s}}\n\
         outlier_detection: {{consecutive_failures: 3, base_ejection_time: 1s, max_ejection_time: 4s}}\n",
        servers.join(", ")
    ))
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let counts = Arc::new(Counts::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(client(
                gateway.url(),
                c,
                stop.clone(),
                acked.clone(),
                counts.clone(),
            ))
        })
        .collect();

    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < CHAOS {
        let victim = rng.random_range(0..NODES);
        let down_for = Duration::from_millis(rng.random_range(300..2500));
        if rng.random_bool(0.5) {
            *faults.entry("sigkill+restart").or_default() += 1;
            nodes[victim].kill();
            tokio::time::sleep(down_for).await;
            nodes[victim].restart().await;
        } else {
            *faults.entry("sigstop+sigcont").or_default() += 1;
            nodes[victim].pause();
            tokio::time::sleep(down_for).await;
            nodes[victim].resume();
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in clients {
        task.await.expect("client task");
    }
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(
        acked.len(),
        CLIENTS * GROUPS_PER_CLIENT,
        "every group had an acknowledged push"
    );

    // Settled: every node back in the ring, no repair pending, every group once on its owner with its last
    // acknowledged value.
    let refs: Vec<&Pushgateway> = nodes.iter().collect();
    let last_errors = std::cell::RefCell::new(Vec::new());
    // Generous: after the last fault a node may still be ejected (up to 4 s), be settling an ambiguous write
    // (1 s after its answer) and need passes to move groups back, all on a possibly slow, loaded machine.
    let settled = wait_until(secs(120), Duration::from_millis(500), || {
        let (refs, acked, gateway, last_errors) = (&refs, &acked, &gateway, &last_errors);
        async move {
            let ring = gateway.ring().await;
            let mut errors = Vec::new();
            if ring["ring_nodes"].as_array().map_or(0, Vec::len) != NODES {
                errors.push(format!("ring: {}", ring["ring_nodes"]));
            }
            if ring["ambiguous_writes"]["pending_groups"] != 0 {
                errors.push(format!("pending: {}", ring["ambiguous_writes"]));
            }
            let now = placement(refs).await;
            for (client, group) in
                (0..CLIENTS).flat_map(|c| (0..GROUPS_PER_CLIENT).map(move |g| (c, g)))
            {
                let labels = group_labels(client, group);
                let owner = gateway.owner_of(&group_path(client, group)).await;
                let expected = vec![(owner, acked[&labels])];
                let actual = now.get(&labels).cloned().unwrap_or_default();
                if actual != expected {
                    errors.push(format!("{labels:?}: {actual:?}, expected {expected:?}"));
                }
            }
            let done = errors.is_empty();
            *last_errors.borrow_mut() = errors;
            done
        }
    })
    .await;
    let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    println!(
        "chaos seed {seed}: {} pushes, {} acknowledged, {} failed; faults {faults:?}; ambiguous writes {}, \
         repaired {}, forgotten {}; ejections {}; groups moved {}",
        counts.pushes.load(Ordering::Relaxed),
        counts.acknowledged.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        metric_sum(&metrics, "dynamic_sharding_ambiguous_writes_total"),
        metric_sum(&metrics, "dynamic_sharding_ambiguous_writes_repaired_total"),
        metric_sum(&metrics, "dynamic_sharding_ambiguous_writes_forgotten_total"),
        metric_sum(&metrics, "dynamic_sharding_node_ejections_total"),
        metric_sum(&metrics, "dynamic_sharding_rebalance_groups_moved_total"),
    );
    assert!(
        settled.is_ok(),
        "seed {seed}: not settled after the chaos:\n{}\n{}",
        last_errors.borrow().join("\n"),
        gateway.log_text()
    );
}
