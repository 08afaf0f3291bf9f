//! Replication (`replication.factor`) against real Pushgateways and a real Prometheus scraping through
//! `examples/prometheus.yml` (only the gateway's address rewritten): when nodes are SIGKILLed, restart empty or
//! join, nothing is re-pushed, and still Prometheus shows every group exactly once with its last value, and the
//! rebalancer puts every group back on exactly min(R, healthy nodes) nodes, its owner set.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use dynamic_sharding::grouping::GroupingKey;
use dynamic_sharding::ring::{Algorithm, Ring};
use reqwest::{Method, StatusCode};

const GROUPS: usize = 60;
const JOB: &str = "rp";
const POLL: Duration = Duration::from_millis(250);
/// The bound for "visible again, and restored to R copies".
const SETTLE: Duration = Duration::from_secs(30);

/// Fast health checks (a node leaves after 2 failed 300 ms probes), a rebalance pass every second. Outlier
/// detection is off: pushes right after a SIGKILL would eject the dead node (racing the probes) and keep it out of
/// the ring for 30 s after its restart, longer than [`SETTLE`]; ejection is tested in faults.rs.
fn config(nodes: &[&Pushgateway], factor: usize) -> String {
    config_with_unhealthy_threshold(nodes, factor, 2)
}

fn config_with_unhealthy_threshold(
    nodes: &[&Pushgateway],
    factor: usize,
    unhealthy_threshold: u32,
) -> String {
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    format!(
        "pushgateway:\n  servers: [{}]\nhealth_check: {{interval: 300ms, timeout: 250ms, \
         unhealthy_threshold: {unhealthy_threshold}, healthy_threshold: 1}}\n\
         rebalance: {{interval: 1s, concurrency: 8}}\nreplication: {{factor: {factor}}}\n\
         outlier_detection: {{consecutive_failures: 0}}\n",
        servers.join(", ")
    )
}

/// The scrape configs of `examples/prometheus.yml`, pointed at `gateway` (the only change).
fn example_scrape_configs(gateway: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/prometheus.yml");
    let file = std::fs::read_to_string(path).expect("read examples/prometheus.yml");
    assert!(
        file.contains("dynamic-sharding:9292"),
        "the example names the gateway dynamic-sharding:9292"
    );
    let file = file.replace("dynamic-sharding:9292", gateway);
    let (_, configs) = file
        .split_once("scrape_configs:\n")
        .expect("examples/prometheus.yml has a scrape_configs: key");
    configs.to_string()
}

fn instance(index: usize) -> String {
    format!("i{index}")
}

fn ring_key(index: usize) -> Vec<u8> {
    GroupingKey::from_labels(labels(&[("job", JOB), ("instance", &instance(index))]))
        .expect("valid grouping key")
        .ring_key()
}

/// Every group's owner set (sorted) on the ring of `nodes`.
fn owner_sets(nodes: &[&Pushgateway], factor: usize) -> BTreeMap<String, Vec<String>> {
    let ring = Ring::build(
        Algorithm::Rendezvous,
        &nodes.iter().map(|n| n.addr()).collect::<Vec<_>>(),
    );
    (0..GROUPS)
        .map(|index| {
            let mut set: Vec<String> = ring
                .owner_set(&ring_key(index), factor)
                .iter()
                .map(|n| n.to_string())
                .collect();
            set.sort();
            (instance(index), set)
        })
        .collect()
}

async fn push_all(gateway: &Gateway, version: u64) {
    for index in 0..GROUPS {
        let path = format!("/metrics/job/{JOB}/instance/{}", instance(index));
        let body = format!("# TYPE rp_version gauge\nrp_version {version}\n");
        let reply = gateway.request(Method::PUT, &path, &body).await;
        assert_eq!(reply.status, StatusCode::OK, "push {path}: {}", reply.body);
    }
}

/// instance -> [(node, version)] over `nodes`, read from each Pushgateway directly.
async fn holdings(nodes: &[&Pushgateway]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut held: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for node in nodes {
        for group in node.api_metrics().await {
            let instance = group
                .pointer("/labels/instance")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            let version = group
                .pointer("/rp_version/metrics/0/value")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            held.entry(instance)
                .or_default()
                .push((node.addr(), version));
        }
    }
    for copies in held.values_mut() {
        copies.sort();
    }
    held
}

/// Whether every group is on exactly its owner set over `nodes`, each copy at `version`.
async fn on_owner_sets(nodes: &[&Pushgateway], factor: usize, version: u64) -> Result<(), String> {
    let expected = owner_sets(nodes, factor);
    let held = holdings(nodes).await;
    for (instance, owners) in &expected {
        let copies = held.get(instance).cloned().unwrap_or_default();
        let holders: Vec<String> = copies.iter().map(|(node, _)| node.clone()).collect();
        if &holders != owners || copies.iter().any(|(_, v)| *v != version.to_string()) {
            return Err(format!("{instance}: held {copies:?}, owner set {owners:?}"));
        }
    }
    if held.len() != expected.len() {
        return Err(format!(
            "{} groups held, {} pushed",
            held.len(),
            expected.len()
        ));
    }
    Ok(())
}

/// Whether Prometheus' latest samples, all scraped after `since` (Unix seconds), show every group exactly once, at
/// `version`.
async fn prometheus_shows_each_group_once(
    prometheus: &Prometheus,
    version: u64,
    since: f64,
) -> Result<(), String> {
    let series = format!("rp_version{{job=\"{JOB}\"}}");
    let result = prometheus
        .query(&format!(
            "{series} and on(job, instance) (timestamp({series}) > {since})"
        ))
        .await;
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for series in result.as_array().cloned().unwrap_or_default() {
        let instance = series
            .pointer("/metric/instance")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let value = series
            .pointer("/value/1")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        seen.entry(instance).or_default().push(value);
    }
    let wrong: Vec<_> = (0..GROUPS)
        .map(instance)
        .filter(|i| seen.get(i) != Some(&vec![version.to_string()]))
        .collect();
    if !wrong.is_empty() || seen.len() != GROUPS {
        return Err(format!(
            "{} series; wrong or missing: {wrong:?}; seen {seen:?}",
            seen.len()
        ));
    }
    Ok(())
}

/// Whether the gateway's merged `/metrics` (what Prometheus scrapes) has each group's sample exactly once.
async fn gateway_shows_each_group_once(gateway: &Gateway, version: u64) -> Result<(), String> {
    let reply = gateway.request(Method::GET, "/metrics", "").await;
    let lines: Vec<&str> = reply
        .body
        .lines()
        .filter(|line| line.starts_with("rp_version{"))
        .collect();
    for index in 0..GROUPS {
        let needle = format!("instance=\"{}\"", instance(index));
        let found: Vec<&&str> = lines.iter().filter(|l| l.contains(&needle)).collect();
        if found.len() != 1 || !found[0].ends_with(&format!(" {version}")) {
            return Err(format!("{}: {found:?}", instance(index)));
        }
    }
    if lines.len() != GROUPS {
        return Err(format!("{} samples for {GROUPS} groups", lines.len()));
    }
    Ok(())
}

/// Polls `check` until it passes or `SETTLE` is over, then panics with its last complaint.
async fn settle<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = std::time::Instant::now();
    loop {
        let complaint = match check().await {
            Ok(()) => {
                eprintln!("{what}: after {:.1} s", started.elapsed().as_secs_f64());
                return;
            }
            Err(complaint) => complaint,
        };
        if started.elapsed() >= SETTLE {
            panic!("{what}: not within {SETTLE:?}: {complaint}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The node of `nodes` that owns (first in the owner set) the most groups.
fn busiest_owner(nodes: &[&Pushgateway]) -> String {
    let ring = Ring::build(
        Algorithm::Rendezvous,
        &nodes.iter().map(|n| n.addr()).collect::<Vec<_>>(),
    );
    let mut owned: BTreeMap<String, usize> = BTreeMap::new();
    for index in 0..GROUPS {
        if let Some(owner) = ring.owner(&ring_key(index)) {
            *owned.entry(owner.to_string()).or_default() += 1;
        }
    }
    owned
        .into_iter()
        .max_by_key(|(_, count)| *count)
        .map(|(node, _)| node)
        .expect("a ring with nodes")
}

async fn settled_view(
    what: &str,
    gateway: &Gateway,
    prometheus: &Prometheus,
    nodes: &[&Pushgateway],
    factor: usize,
    version: u64,
) {
    let since = unix_now();
    settle(&format!("{what}: Prometheus shows each group once"), || {
        prometheus_shows_each_group_once(prometheus, version, since)
    })
    .await;
    settle(&format!("{what}: each group on its owner set"), || {
        on_owner_sets(nodes, factor, version)
    })
    .await;
    gateway_shows_each_group_once(gateway, version)
        .await
        .unwrap_or_else(|complaint| panic!("{what}: gateway /metrics: {complaint}"));
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn start(nodes: &[&Pushgateway], factor: usize) -> (Gateway, Prometheus) {
    start_with(&config(nodes, factor), nodes.len()).await
}

/// The gateway with `config` over `nodes` nodes, once its ring holds them all (it answers `/-/healthy` before its
/// first probes fill the ring, and a push in between gets 503), and Prometheus scraping it.
async fn start_with(config: &str, nodes: usize) -> (Gateway, Prometheus) {
    let gateway = Gateway::start(config).await;
    gateway.wait_for_ring_size(nodes).await;
    let prometheus = Prometheus::start(&example_scrape_configs(&gateway.addr())).await;
    (gateway, prometheus)
}

fn alive<'a>(nodes: &'a [Pushgateway], dead: &[String]) -> Vec<&'a Pushgateway> {
    nodes.iter().filter(|n| !dead.contains(&n.addr())).collect()
}

fn kill(nodes: &mut [Pushgateway], addr: &str) {
    nodes
        .iter_mut()
        .find(|n| n.addr() == addr)
        .expect("node to kill")
        .kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_two_nodes_sigkilled_one_after_the_other_lose_no_group_and_prometheus_sees_each_once() {
    let mut nodes = Pushgateway::start_many(4).await;
    let (gateway, prometheus) = start(&nodes.iter().collect::<Vec<_>>(), 2).await;
    push_all(&gateway, 1).await;
    // The push itself wrote both copies: no rebalancer pass is needed for that.
    on_owner_sets(&nodes.iter().collect::<Vec<_>>(), 2, 1)
        .await
        .unwrap_or_else(|complaint| panic!("after the pushes: {complaint}"));
    settled_view(
        "start",
        &gateway,
        &prometheus,
        &nodes.iter().collect::<Vec<_>>(),
        2,
        1,
    )
    .await;
    // The Prometheus target is the gateway's de-duplicated view, one target.
    let targets = prometheus.targets().await;
    assert_eq!(targets.as_array().map(Vec::len), Some(1), "{targets}");

    let mut dead = vec![busiest_owner(&nodes.iter().collect::<Vec<_>>())];
    kill(&mut nodes, &dead[0]);
    settled_view(
        "first kill",
        &gateway,
        &prometheus,
        &alive(&nodes, &dead),
        2,
        1,
    )
    .await;

    push_all(&gateway, 2).await;
    dead.push(busiest_owner(&alive(&nodes, &dead)));
    kill(&mut nodes, &dead[1]);
    settled_view(
        "second kill",
        &gateway,
        &prometheus,
        &alive(&nodes, &dead),
        2,
        2,
    )
    .await;
    let ring = gateway.ring().await;
    assert_eq!(ring["replication"]["factor"], 2, "{ring}");
    assert_eq!(ring["replication"]["copies_per_group"], 2, "{ring}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_replica_write_failures_are_acknowledged_then_a_node_restarting_empty_and_a_new_node_take_their_share(
) {
    let mut nodes = Pushgateway::start_many(5).await;
    let first_four: Vec<&Pushgateway> = nodes.iter().take(4).collect();
    // A node leaves the ring only after 10 failed probes (3 s at 300 ms; a failed push also sends one at once),
    // so the pushes right after the kill certainly meet the dead node however slow the machine is.
    let (gateway, prometheus) =
        start_with(&config_with_unhealthy_threshold(&first_four, 2, 10), 4).await;
    push_all(&gateway, 1).await;
    settled_view("start", &gateway, &prometheus, &first_four, 2, 1).await;

    // Kill a node and push at once, before the probes notice: a push whose replica is the dead node is still
    // acknowledged, and one whose owner is the dead node is taken by the next owner.
    let victim = busiest_owner(&first_four);
    kill(&mut nodes, &victim);
    push_all(&gateway, 2).await;
    let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("dynamic_sharding_replica_writes_failed_total{")
                && l.contains(&victim)
        ),
        "replica write failures are counted per node:\n{metrics}"
    );
    let survivors: Vec<&Pushgateway> = nodes
        .iter()
        .take(4)
        .filter(|n| n.addr() != victim)
        .collect();
    settled_view("one node dead", &gateway, &prometheus, &survivors, 2, 2).await;

    // The node comes back empty: it is an owner again and gets its copies back; nobody pushes.
    let restarted = nodes
        .iter_mut()
        .find(|n| n.addr() == victim)
        .expect("victim");
    restarted.restart().await;
    let first_four: Vec<&Pushgateway> = nodes.iter().take(4).collect();
    settled_view("restarted empty", &gateway, &prometheus, &first_four, 2, 2).await;

    // Scale-out: a fifth node joins by a reload.
    let all: Vec<&Pushgateway> = nodes.iter().collect();
    std::fs::write(
        gateway.config_path(),
        config_with_unhealthy_threshold(&all, 2, 10),
    )
    .expect("rewrite config");
    gateway.signal("HUP");
    settled_view("scale-out", &gateway, &prometheus, &all, 2, 2).await;
    // The pass that restored the copies counted the groups it found under-replicated; it is recorded when it ends,
    // after the copies a test sees on the nodes. The next pass finds none.
    assert_eventually_eq(
        SETTLE,
        || async { gateway.ring().await["replication"]["under_replicated_groups"].clone() },
        serde_json::json!(0),
        "a pass after the scale-out finds no under-replicated group",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_a_node_sigkilled_leaves_three_copies_of_every_group_on_the_survivors() {
    let mut nodes = Pushgateway::start_many(5).await;
    let (gateway, prometheus) = start(&nodes.iter().collect::<Vec<_>>(), 3).await;
    push_all(&gateway, 7).await;
    settled_view(
        "start",
        &gateway,
        &prometheus,
        &nodes.iter().collect::<Vec<_>>(),
        3,
        7,
    )
    .await;
    let dead = vec![busiest_owner(&nodes.iter().collect::<Vec<_>>())];
    kill(&mut nodes, &dead[0]);
    settled_view("kill", &gateway, &prometheus, &alive(&nodes, &dead), 3, 7).await;
    // DELETE removes every copy.
    for index in 0..GROUPS {
        let path = format!("/metrics/job/{JOB}/instance/{}", instance(index));
        let reply = gateway.request(Method::DELETE, &path, "").await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "delete {path}: {}",
            reply.body
        );
    }
    // Each Pushgateway applies its DELETE after answering 202.
    let survivors = alive(&nodes, &dead);
    assert_eventually_eq(
        SETTLE,
        || holdings(&survivors),
        BTreeMap::new(),
        "every copy deleted",
    )
    .await;
}
