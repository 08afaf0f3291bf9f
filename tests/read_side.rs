//! The read side against real Pushgateways and a real Prometheus: HTTP service discovery (`/-/sd`), the merged
//! `GET /metrics`, `/api/v1/metrics` and `/api/v1/status` fanned out to every node, and the admin wipe.

mod common;

use std::collections::BTreeMap;

use common::*;
use reqwest::{Method, StatusCode};

const NODE_HEADER: &str = "x-dynamic-sharding-node";
const MISSING_NODES_HEADER: &str = "x-dynamic-sharding-missing-nodes";
const GROUPS: usize = 36;

/// A static config over `nodes` with fast health checks.
fn static_config(nodes: &[&Pushgateway]) -> String {
    config_with_health_check(
        nodes,
        "{interval: 500ms, timeout: 400ms, unhealthy_threshold: 2, healthy_threshold: 1}",
    )
}

fn config_with_health_check(nodes: &[&Pushgateway], health_check: &str) -> String {
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    format!(
        "pushgateway:\n  servers: [{}]\nhealth_check: {health_check}\nread: {{timeout: 5s}}\n",
        servers.join(", ")
    )
}

/// The nodes `/-/sd` lists, sorted.
async fn discovered(gateway: &Gateway) -> Vec<String> {
    let reply = gateway.request(Method::GET, "/-/sd", "").await;
    assert_eq!(reply.status, StatusCode::OK, "/-/sd: {}", reply.body);
    let groups: serde_json::Value = serde_json::from_str(&reply.body)
        .unwrap_or_else(|error| panic!("/-/sd is not JSON ({error}): {}", reply.body));
    let mut nodes: Vec<String> = groups
        .as_array()
        .unwrap_or_else(|| panic!("/-/sd is not an array: {groups}"))
        .iter()
        .flat_map(|group| group["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target.as_str().map(str::to_owned))
        .collect();
    nodes.sort();
    nodes
}

async fn wait_for_ring(gateway: &Gateway, nodes: &[Pushgateway]) {
    let mut expected: Vec<String> = nodes.iter().map(Pushgateway::addr).collect();
    expected.sort();
    wait_until(secs(30), POLL_INTERVAL, || async {
        discovered(gateway).await == expected
    })
    .await
    .expect("every node healthy and listed by /-/sd");
}

/// The value pushed for group `index`: distinct per group and exact in decimal.
fn value_of(index: usize) -> f64 {
    index as f64 * 1.5 + 0.25
}

/// Pushes `GROUPS` groups `{job="read_side", instance="host-<i>"}` through the gateway; returns instance -> node
/// that took the push.
async fn push_groups(gateway: &Gateway) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for index in 0..GROUPS {
        let instance = format!("host-{index}");
        let reply = gateway
            .request(
                Method::PUT,
                &format!("/metrics/job/read_side/instance/{instance}"),
                &format!(
                    "# TYPE read_side_value gauge\nread_side_value {}\n",
                    value_of(index)
                ),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "push {instance}: {}",
            reply.body
        );
        let node = reply.headers[NODE_HEADER]
            .to_str()
            .expect("node header is ASCII")
            .to_owned();
        owners.insert(instance, node);
    }
    owners
}

/// `instance -> (value, extra label)` of every `read_side_value` series Prometheus has now; panics on a duplicate.
async fn prometheus_values(
    prometheus: &Prometheus,
    extra_label: &str,
) -> BTreeMap<String, (f64, String)> {
    let result = prometheus.query("read_side_value").await;
    let mut values = BTreeMap::new();
    for series in result.as_array().cloned().unwrap_or_default() {
        let metric = &series["metric"];
        assert_eq!(metric["job"], "read_side", "{series}");
        let instance = metric["instance"].as_str().unwrap_or_default().to_owned();
        let value: f64 = series["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric value in {series}"));
        let extra = metric[extra_label].as_str().unwrap_or_default().to_owned();
        let previous = values.insert(instance.clone(), (value, extra));
        assert!(
            previous.is_none(),
            "group {instance} shows up twice in Prometheus: {result}"
        );
    }
    values
}

fn assert_every_group_once(values: &BTreeMap<String, (f64, String)>) {
    assert_eq!(values.len(), GROUPS, "{values:?}");
    for index in 0..GROUPS {
        let (value, _) = &values[&format!("host-{index}")];
        assert_eq!(*value, value_of(index), "value of host-{index}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_discovers_nodes_through_sd_and_sees_every_group_exactly_once() {
    let nodes = Pushgateway::start_many(3).await;
    let gateway = Gateway::start(&static_config(&nodes.iter().collect::<Vec<_>>())).await;
    wait_for_ring(&gateway, &nodes).await;
    let owners = push_groups(&gateway).await;
    let used_nodes: std::collections::BTreeSet<&String> = owners.values().collect();
    assert_eq!(used_nodes.len(), 3, "36 groups spread over all 3 nodes");

    let prometheus = Prometheus::start(&format!(
        "- job_name: pushgateways\n  honor_labels: true\n  http_sd_configs:\n    - url: {}/-/sd\n      \
         refresh_interval: 1s\n  relabel_configs:\n    - source_labels: [__meta_dynamic_sharding_node]\n      \
         target_label: pushgateway_node\n",
        gateway.url()
    ))
    .await;

    wait_until(secs(60), secs(1), || async {
        prometheus_values(&prometheus, "pushgateway_node")
            .await
            .len()
            == GROUPS
    })
    .await
    .expect("Prometheus discovered the nodes through /-/sd and scraped every group");

    let values = prometheus_values(&prometheus, "pushgateway_node").await;
    assert_every_group_once(&values);
    for (instance, (_, scraped_from)) in &values {
        assert_eq!(
            scraped_from, &owners[instance],
            "group {instance} was scraped from the node that took its push"
        );
    }
    let targets = prometheus.targets().await;
    let mut discovered_nodes: Vec<String> = targets
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            t["labels"]["pushgateway_node"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    discovered_nodes.sort();
    let mut expected: Vec<String> = nodes.iter().map(Pushgateway::addr).collect();
    expected.sort();
    assert_eq!(discovered_nodes, expected, "targets: {targets}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_metrics_has_every_pushed_group_once_and_prometheus_sees_the_same_values() {
    let nodes = Pushgateway::start_many(3).await;
    let gateway = Gateway::start(&static_config(&nodes.iter().collect::<Vec<_>>())).await;
    wait_for_ring(&gateway, &nodes).await;
    push_groups(&gateway).await;

    // Two groups on different nodes push `clash` with different TYPEs: each node accepts its own, the merge
    // keeps one family, as a lone Pushgateway would (it would have refused the second push).
    let gauge_path = "/metrics/job/clash/instance/gauge";
    let reply = gateway
        .request(Method::PUT, gauge_path, "# TYPE clash gauge\nclash 1\n")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let gauge_node = reply.headers[NODE_HEADER]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    let mut counter_path = None;
    for index in 0..100 {
        let path = format!("/metrics/job/clash/instance/counter{index}");
        if gateway.owner_of(&path).await != gauge_node {
            counter_path = Some(path);
            break;
        }
    }
    let counter_path = counter_path.expect("a group owned by another node than the gauge's");
    let reply = gateway
        .request(
            Method::PUT,
            &counter_path,
            "# TYPE clash counter\nclash 1\n",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let clash_nodes = [
        gauge_node,
        reply.headers[NODE_HEADER]
            .to_str()
            .unwrap_or_default()
            .to_owned(),
    ];
    assert_ne!(
        clash_nodes[0], clash_nodes[1],
        "the two groups sit on different nodes"
    );

    let reply = gateway.request(Method::GET, "/metrics", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(!reply.headers.contains_key(MISSING_NODES_HEADER));
    let text = reply.body;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            line.contains("job=\""),
            "only pushed series (with a job label) in the merged /metrics, got {line:?}"
        );
    }
    assert_eq!(text.matches("# TYPE read_side_value gauge\n").count(), 1);
    assert_eq!(text.matches("# TYPE clash ").count(), 1, "{text}");
    let pushed_groups = GROUPS + 2;
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("push_time_seconds{"))
            .count(),
        pushed_groups,
        "one push_time_seconds per group"
    );
    for index in 0..GROUPS {
        let line = format!(
            "read_side_value{{instance=\"host-{index}\",job=\"read_side\"}} {}",
            value_of(index)
        );
        assert_eq!(text.matches(&format!("{line}\n")).count(), 1, "{line}");
    }
    let own_metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    assert!(
        own_metrics.contains("dynamic_sharding_read_merge_conflicts_total{kind=\"type_mismatch\"}"),
        "{own_metrics}"
    );
    // A persisting conflict is logged at warn once, however often /metrics is read.
    let reply = gateway.request(Method::GET, "/metrics", "").await;
    assert_eq!(reply.status, StatusCode::OK);
    let warned = gateway
        .log_text()
        .lines()
        .filter(|l| l.contains("nodes disagree") && l.contains("metric family clash"))
        .count();
    assert_eq!(warned, 1, "{}", gateway.log_text());
    let refused = http_client()
        .get(format!("{}/metrics", gateway.url()))
        .header("accept", "application/json")
        .send()
        .await
        .expect("GET /metrics with Accept: application/json");
    assert_eq!(refused.status(), StatusCode::NOT_ACCEPTABLE);

    let prometheus = Prometheus::start(&format!(
        "- job_name: gateway\n  honor_labels: true\n  static_configs:\n    - targets: ['{}']\n",
        gateway.addr()
    ))
    .await;
    wait_until(secs(60), secs(1), || async {
        prometheus_values(&prometheus, "pushgateway_node")
            .await
            .len()
            == GROUPS
    })
    .await
    .expect("Prometheus scraped the gateway's merged /metrics");
    assert_every_group_once(&prometheus_values(&prometheus, "pushgateway_node").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_lists_the_healthy_nodes_drops_a_killed_one_and_is_empty_without_any() {
    let mut nodes = Pushgateway::start_many(2).await;
    let gateway = Gateway::start(&static_config(&nodes.iter().collect::<Vec<_>>())).await;
    wait_for_ring(&gateway, &nodes).await;

    let reply = gateway.request(Method::GET, "/-/sd", "").await;
    assert_eq!(reply.headers["content-type"], "application/json");
    let groups: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    for group in groups.as_array().expect("array") {
        let target = group["targets"][0].as_str().expect("one target");
        assert_eq!(group["labels"]["__meta_dynamic_sharding_node"], target);
        assert_eq!(
            group["labels"]["__meta_dynamic_sharding_membership_source"],
            "static"
        );
    }

    let survivor = nodes[1].addr();
    nodes[0].kill();
    wait_until(secs(30), POLL_INTERVAL, || async {
        discovered(&gateway).await == vec![survivor.clone()]
    })
    .await
    .expect("the killed node left /-/sd");

    nodes[1].kill();
    wait_until(secs(30), POLL_INTERVAL, || async {
        let reply = gateway.request(Method::GET, "/-/sd", "").await;
        reply.status == StatusCode::OK && reply.body == "[]"
    })
    .await
    .expect("/-/sd answers [] with an empty ring");
    let reply = gateway.request(Method::GET, "/metrics", "").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_metrics_names_each_groups_node_and_status_covers_every_node() {
    let nodes = Pushgateway::start_many(3).await;
    let gateway = Gateway::start(&static_config(&nodes.iter().collect::<Vec<_>>())).await;
    wait_for_ring(&gateway, &nodes).await;
    let owners = push_groups(&gateway).await;

    let reply = gateway.request(Method::GET, "/api/v1/metrics", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let answer: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(answer["status"], "success");
    assert!(answer.get("warnings").is_none(), "{answer}");
    let groups = answer["data"].as_array().expect("data array");
    assert_eq!(groups.len(), GROUPS);
    for group in groups {
        let instance = group["labels"]["instance"].as_str().expect("instance");
        assert_eq!(group["@node"], owners[instance].as_str(), "{group}");
        assert_eq!(group["read_side_value"]["type"], "GAUGE", "{group}");
    }
    for node in &nodes {
        let held = node.groups().await;
        let annotated = groups
            .iter()
            .filter(|g| g["@node"] == node.addr().as_str())
            .count();
        assert_eq!(
            annotated,
            held.len(),
            "groups annotated with {}",
            node.addr()
        );
    }

    let reply = gateway.request(Method::GET, "/api/v1/status", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let status: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(status["data"]["gateway"]["membership_source"], "static");
    assert_eq!(status["data"]["gateway"]["admin_api_enabled"], false);
    let node_statuses = status["data"]["nodes"].as_array().expect("nodes");
    assert_eq!(node_statuses.len(), 3);
    for node_status in node_statuses {
        assert_eq!(node_status["healthy"], true, "{node_status}");
        assert!(
            node_status["data"]["build_information"]["version"].is_string(),
            "each node's own /api/v1/status: {node_status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wipe_is_forbidden_without_the_admin_flag_and_wipes_every_node_with_it() {
    let nodes = Pushgateway::start_many(2).await;
    let config = static_config(&nodes.iter().collect::<Vec<_>>());
    let plain = Gateway::start(&config).await;
    let admin = Gateway::start_with_args(&config, &["--web.enable-admin-api"]).await;
    wait_for_ring(&plain, &nodes).await;
    wait_for_ring(&admin, &nodes).await;
    push_groups(&plain).await;

    let reply = plain.request(Method::PUT, "/api/v1/admin/wipe", "").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert!(reply.body.contains("--web.enable-admin-api"));
    let held: usize = [nodes[0].groups().await.len(), nodes[1].groups().await.len()]
        .iter()
        .sum();
    assert_eq!(held, GROUPS, "nothing wiped without the flag");

    let reply = admin.request(Method::GET, "/api/v1/admin/wipe", "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let reply = admin.request(Method::PUT, "/api/v1/admin/wipe", "").await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    // Each Pushgateway answers its wipe 202 and deletes the groups right after.
    for node in &nodes {
        assert_eventually_eq(
            SETTLE,
            || node.groups(),
            Vec::new(),
            &format!("{} wiped", node.addr()),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_but_still_in_the_ring_is_left_out_of_reads_and_counted() {
    let mut nodes = Pushgateway::start_many(2).await;
    // Probes so rare and a threshold so high that a dead node stays in the ring for the whole test.
    let gateway = Gateway::start(&config_with_health_check(
        &nodes.iter().collect::<Vec<_>>(),
        "{interval: 10m, timeout: 1s, unhealthy_threshold: 1000, healthy_threshold: 1}",
    ))
    .await;
    wait_for_ring(&gateway, &nodes).await;
    let owners = push_groups(&gateway).await;
    let dead = nodes[0].addr();
    let survivor_groups: Vec<&String> = owners
        .iter()
        .filter(|(_, node)| **node != dead)
        .map(|(instance, _)| instance)
        .collect();
    assert!(!survivor_groups.is_empty() && survivor_groups.len() < GROUPS);
    nodes[0].kill();

    let reply = gateway.request(Method::GET, "/metrics", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.headers[MISSING_NODES_HEADER], dead.as_str());
    let values = reply
        .body
        .lines()
        .filter(|l| l.starts_with("read_side_value{"))
        .count();
    assert_eq!(values, survivor_groups.len(), "{}", reply.body);
    for instance in survivor_groups {
        assert!(reply.body.contains(&format!("instance=\"{instance}\"")));
    }

    let reply = gateway.request(Method::GET, "/api/v1/metrics", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let answer: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    assert!(
        answer["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .contains(&dead),
        "{answer}"
    );

    let own_metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    let counted = format!(
        "dynamic_sharding_read_node_failures_total{{node=\"{dead}\",path=\"/metrics\",kind=\"connect\"}} 1"
    );
    assert!(
        own_metrics.contains(&counted),
        "{counted} in\n{own_metrics}"
    );
    assert!(
        discovered(&gateway).await.contains(&dead),
        "still in the ring"
    );
}
