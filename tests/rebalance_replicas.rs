//! Two gateway replicas that disagree on the ring, against real Pushgateways: the rebalancing replica A already
//! routes to a new node N, the serving replica B does not yet (its membership lags), so B keeps sending pushes to
//! the old owners while A moves their groups to N. A push acknowledged through B must survive the move.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::fault_proxy::{Fault, FaultProxy};
use common::placement::*;
use common::*;
use dynamic_sharding::grouping::GroupingKey;
use dynamic_sharding::ring::{Algorithm, Ring};

/// Fast health checks and a pass every second. A's copies are held by the proxy for as long as the test needs,
/// so its upstream timeout is far longer than that (the copy must not time out and be retried).
fn config(servers: &[String], extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "pushgateway:\n  servers: [{}]\nhealth_check: {{interval: 500ms, timeout: 400ms, unhealthy_threshold: 2, \
         healthy_threshold: 1}}\nproxy: {{upstream_timeout: 60s}}\n{extra}",
        servers.join(", ")
    )
}

const REBALANCER: &str = "rebalance: {interval: 1s, concurrency: 4}\n";
const SERVER: &str = "rebalance: {enabled: false}\n";

fn rewrite_config(gateway: &Gateway, yaml: &str) {
    std::fs::write(gateway.config_path(), yaml).expect("rewrite config");
    gateway.signal("HUP");
}

/// Waits until the gateway's ring is exactly `nodes` (addresses as in its config).
async fn wait_for_ring_of(gateway: &Gateway, nodes: &[String]) {
    let mut expected = nodes.to_vec();
    expected.sort();
    wait_until(secs(30), Duration::from_millis(100), || async {
        ring_nodes(&gateway.ring().await) == expected
    })
    .await
    .unwrap_or_else(|e| panic!("ring never became {expected:?}: {e}"));
}

fn push_path(instance: usize) -> String {
    format!("/metrics/job/replicas/instance/i{instance}")
}

fn version_body(version: u64) -> String {
    format!("# TYPE rb_version gauge\nrb_version {version}\n")
}

fn version_of(families: &serde_json::Value) -> String {
    families["rb_version"]["metrics"][0]["value"]
        .as_str()
        .unwrap_or("missing")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_through_a_replica_with_the_old_ring_survives_the_move_to_the_new_node() {
    let p1 = Pushgateway::start().await;
    let p2 = Pushgateway::start().await;
    let n = Pushgateway::start().await;
    // Every request of A's to N goes through the proxy, so A's copies to N can be held.
    let proxy = FaultProxy::start(&n.addr()).await;
    let old_ring = vec![p1.addr(), p2.addr()];
    let new_ring = vec![p1.addr(), p2.addr(), proxy.addr()];
    let a = Gateway::start(&config(&old_ring, REBALANCER)).await;
    let b = Gateway::start(&config(&old_ring, SERVER)).await;
    wait_for_ring_of(&a, &old_ring).await;
    wait_for_ring_of(&b, &old_ring).await;

    let count = 30;
    let pushes = |version: u64| -> Vec<(String, String)> {
        (0..count)
            .map(|i| (push_path(i), version_body(version)))
            .collect()
    };
    put_all(&b, &pushes(1)).await;

    // Where each group belongs once N is in: labels -> owner, named as the test reads the nodes (N by its own
    // address, not the proxy's).
    let ring = Ring::build(Algorithm::Rendezvous, &new_ring);
    let owners: BTreeMap<Labels, String> = (0..count)
        .map(|i| {
            let labels = labels(&[("job", "replicas"), ("instance", &format!("i{i}"))]);
            let key = GroupingKey::from_labels(labels.clone()).expect("valid grouping key");
            let owner = ring.owner(&key.ring_key()).expect("ring has nodes");
            let owner = if owner == proxy.addr() {
                n.addr()
            } else {
                owner.to_string()
            };
            (labels, owner)
        })
        .collect();
    let moving = owners.values().filter(|owner| **owner == n.addr()).count();
    assert!(moving >= 3, "only {moving} of {count} groups move to N");

    // N joins; A sees it first. Its pass lists the old owners (v1), then copies to N: the copies are held.
    proxy.set(Fault::HoldPushesUntilReleased);
    rewrite_config(&a, &config(&new_ring, REBALANCER));
    wait_until(secs(30), Duration::from_millis(20), || async {
        proxy
            .request_heads()
            .iter()
            .any(|head| head.starts_with("PUT "))
    })
    .await
    .unwrap_or_else(|e| panic!("A never copied a group to N: {e}\n{}", a.log_tail(40)));
    // Meanwhile B, whose ring still lacks N, acknowledges v2 of every group: written to the old owners.
    put_all(&b, &pushes(2)).await;
    proxy.set(Fault::None);
    // B's membership catches up.
    rewrite_config(&b, &config(&new_ring, SERVER));
    wait_for_ring_of(&b, &new_ring).await;

    let nodes = [&p1, &p2, &n];
    wait_until_every_group_is_once_on_its_owner(&nodes, &owners).await;
    // Settled: two more passes leave the placement as it is.
    let passes = gateway_metric(&a, "dynamic_sharding_rebalance_passes_total").await;
    wait_until(secs(30), Duration::from_millis(100), || async {
        gateway_metric(&a, "dynamic_sharding_rebalance_passes_total").await >= passes + 2.0
    })
    .await
    .expect("A keeps running passes");
    let after = contents(&nodes).await;
    assert_eq!(
        placement_errors(&after, &owners),
        Vec::<String>::new(),
        "placement changed after settling"
    );
    let lost: Vec<String> = after
        .iter()
        .filter(|(_, copies)| version_of(&copies[0].1) != "2")
        .map(|(labels, copies)| {
            format!(
                "{} on {}: v{}",
                labels["instance"],
                copies[0].0,
                version_of(&copies[0].1)
            )
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {count} acknowledged v2 pushes lost ({moving} groups moved to N): {lost:?}",
        lost.len()
    );
    // The race really happened: every moved group's old copy changed between A's listing and its delete.
    let changed = gateway_metric(
        &a,
        "dynamic_sharding_rebalance_deletes_skipped_changed_total",
    )
    .await;
    assert!(
        changed >= moving as f64,
        "only {changed} of {moving} deletes were held back; the test did not race"
    );
}
