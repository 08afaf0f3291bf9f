//! Where groups are: every node's groups as the Pushgateway JSON API lists them, compared with where the ring
//! says they belong. Shared by the rebalancing tests.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};

use super::{http_client, metric_sum, secs, send, wait_until, Gateway, Pushgateway};

/// A group's grouping labels, `job` included.
pub type Labels = BTreeMap<String, String>;

/// Every group's families as the nodes expose them, without the times a copy changes (and the marker a move
/// adds): labels -> (node, families).
pub type Contents = BTreeMap<Labels, Vec<(String, serde_json::Value)>>;

pub async fn contents(nodes: &[&Pushgateway]) -> Contents {
    let mut all: Contents = BTreeMap::new();
    for node in nodes {
        for group in node.api_metrics().await {
            let labels: Labels =
                serde_json::from_value(group["labels"].clone()).expect("labels map");
            let mut families = serde_json::Map::new();
            for (name, family) in group.as_object().expect("group object") {
                if matches!(
                    name.as_str(),
                    "labels"
                        | "last_push_successful"
                        | "push_time_seconds"
                        | "push_failure_time_seconds"
                        // The rebalancer's marker on a moved copy (the client's push time, for expiry).
                        | "dynamic_sharding_group_moved"
                ) {
                    continue;
                }
                let mut family = family.clone();
                if let Some(object) = family.as_object_mut() {
                    object.remove("time_stamp");
                }
                families.insert(name.clone(), family);
            }
            all.entry(labels)
                .or_default()
                .push((node.addr(), serde_json::Value::Object(families)));
        }
    }
    all
}

/// What is wrong with the placement: groups not on exactly their owner, and groups nobody pushed.
pub fn placement_errors(contents: &Contents, owners: &BTreeMap<Labels, String>) -> Vec<String> {
    let mut errors = Vec::new();
    for (labels, owner) in owners {
        let holders: Vec<&String> = contents
            .get(labels)
            .map(|copies| copies.iter().map(|(node, _)| node).collect())
            .unwrap_or_default();
        if holders != vec![owner] {
            errors.push(format!("{labels:?} on {holders:?}, owner {owner}"));
        }
    }
    for labels in contents.keys() {
        if !owners.contains_key(labels) {
            errors.push(format!("unexpected group {labels:?}"));
        }
    }
    errors
}

/// Waits (generously: the machine is shared with builds) until every group is on exactly its owner; returns the
/// contents then.
pub async fn wait_until_every_group_is_once_on_its_owner(
    nodes: &[&Pushgateway],
    owners: &BTreeMap<Labels, String>,
) -> Contents {
    let last_errors = std::cell::RefCell::new(Vec::new());
    let result = wait_until(secs(60), Duration::from_millis(250), || {
        let last_errors = &last_errors;
        async move {
            let errors = placement_errors(&contents(nodes).await, owners);
            let done = errors.is_empty();
            *last_errors.borrow_mut() = errors;
            done
        }
    })
    .await;
    if let Err(error) = result {
        let last_errors = last_errors.borrow();
        panic!(
            "groups not on exactly their owner ({error}); {} wrong, first: {:?}",
            last_errors.len(),
            last_errors.iter().take(5).collect::<Vec<_>>()
        );
    }
    contents(nodes).await
}

/// The single copy of each group (call on contents where every group is on exactly one node).
pub fn single_copies(contents: &Contents) -> BTreeMap<Labels, serde_json::Value> {
    contents
        .iter()
        .map(|(labels, copies)| (labels.clone(), copies[0].1.clone()))
        .collect()
}

/// The sum of every sample of `name` (with any labels) on the gateway's `/-/metrics`.
pub async fn gateway_metric(gateway: &Gateway, name: &str) -> f64 {
    metric_sum(
        &gateway.request(Method::GET, "/-/metrics", "").await.body,
        name,
    )
}

/// The `ring_nodes` of a `/-/ring` answer, sorted.
pub fn ring_nodes(ring: &serde_json::Value) -> Vec<String> {
    let mut nodes: Vec<String> = ring["ring_nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

/// Waits until the gateway's ring is exactly `nodes` (in any order).
pub async fn wait_for_ring(gateway: &Gateway, nodes: &[&Pushgateway]) {
    let mut expected: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    expected.sort();
    wait_until(secs(30), Duration::from_millis(100), || async {
        ring_nodes(&gateway.ring().await) == expected
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "ring never became {expected:?}: {e}\n{}",
            gateway.log_text()
        )
    });
}

/// PUTs each `(push path, body)` through the gateway, 16 at a time; every push must be acknowledged with 200.
pub async fn put_all(gateway: &Gateway, pushes: &[(String, String)]) {
    let client = http_client();
    for chunk in pushes.chunks(16) {
        let replies = chunk.iter().map(|(path, body)| {
            let url = format!("{}{path}", gateway.url());
            let client = client.clone();
            let body = body.clone();
            async move { send(&client, Method::PUT, &url, body).await }
        });
        for ((path, _), reply) in chunk.iter().zip(join_all(replies).await) {
            let reply = reply.unwrap_or_else(|e| panic!("push {path}: {e}"));
            assert_eq!(reply.status, StatusCode::OK, "push {path}: {}", reply.body);
        }
    }
}
