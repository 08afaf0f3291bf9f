//! Group expiry against real Pushgateways: a group nobody pushes any more is deleted from its node(s) once its
//! `groups.expire_after` (or its job's override) has passed; one pushed regularly stays; a group the rebalancer
//! moved keeps the age of its last client push, not of the move.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::placement::{gateway_metric, wait_for_ring};
use common::*;
use dynamic_sharding::grouping::GroupingKey;
use dynamic_sharding::ring::{Algorithm, Ring};
use reqwest::{Method, StatusCode};

fn config(servers: &[String], groups: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "pushgateway:\n  servers: [{}]\nhealth_check: {{interval: 500ms, timeout: 400ms, unhealthy_threshold: 2, \
         healthy_threshold: 1}}\nrebalance: {{interval: 1s}}\ngroups: {groups}\n",
        servers.join(", ")
    )
}

/// The jobs of every group on `nodes`.
async fn jobs(nodes: &[&Pushgateway]) -> Vec<String> {
    let mut jobs = Vec::new();
    for node in nodes {
        for group in node.groups().await {
            jobs.push(group.get("job").cloned().unwrap_or_default());
        }
    }
    jobs.sort();
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_pushed_once_expires_while_one_pushed_regularly_and_one_exempt_stay() {
    let nodes = Pushgateway::start_many(2).await;
    let addrs: Vec<String> = nodes.iter().map(Pushgateway::addr).collect();
    let gateway = Gateway::start(&config(
        &addrs,
        "{expire_after: 3s, expire_overrides: [{job: \"keep_.*\", expire_after: 0s}, {job: \"short\", expire_after: 1s}]}",
    ))
    .await;
    let refs: Vec<&Pushgateway> = nodes.iter().collect();
    wait_for_ring(&gateway, &refs).await;
    let push = |job: &'static str| {
        let gateway = &gateway;
        async move {
            let reply = gateway
                .request(Method::PUT, &format!("/metrics/job/{job}"), "x 1\n")
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{job}: {}", reply.body);
        }
    };
    push("once").await;
    push("short").await;
    push("keep_nightly").await;
    push("regular").await;

    // "regular" is pushed every 500 ms until "once" (3 s) and "short" (1 s) have expired. The wait is for the
    // whole set: a pass may delete both in one go, and a Pushgateway applies each DELETE after its 202.
    let kept = vec!["keep_nightly".to_string(), "regular".to_string()];
    let expired = wait_until(secs(30), Duration::from_millis(500), || async {
        push("regular").await;
        jobs(&refs).await == kept
    })
    .await;
    assert_eq!(
        jobs(&refs).await,
        kept,
        "the exempt job and the regularly pushed one stay; the 3 s default and the 1 s override expired ({expired:?})"
    );
    // The pass counts and logs its expiries once its deletes are answered, which may be after the nodes show them.
    let recorded = wait_until(SETTLE, POLL_INTERVAL, || async {
        let log = gateway.log_text();
        gateway_metric(&gateway, "dynamic_sharding_groups_expired_total").await >= 2.0
            && log.contains("group expired")
            && (log.contains("expired=1") || log.contains("expired=2"))
    })
    .await;
    assert!(
        gateway_metric(&gateway, "dynamic_sharding_groups_expired_total").await >= 2.0,
        "{recorded:?}"
    );
    let log = gateway.log_text();
    assert!(log.contains("group expired"), "{log}");
    assert!(
        log.contains("expired=1") || log.contains("expired=2"),
        "the pass line counts expiries"
    );
}

/// A job whose group the ring places on `owner` among `nodes`.
fn job_owned_by(nodes: &[String], owner: &str, prefix: &str) -> String {
    let ring = Ring::build(Algorithm::Rendezvous, nodes);
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|job| {
            let key = GroupingKey::from_labels(BTreeMap::from([("job".to_string(), job.clone())]))
                .expect("a valid key");
            ring.owner(&key.ring_key()) == Some(owner)
        })
        .unwrap_or_else(|| panic!("no {prefix}<n> owned by {owner}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_group_keeps_the_age_of_its_last_client_push_and_expires_by_it() {
    let nodes = Pushgateway::start_many(3).await;
    let all: Vec<String> = nodes.iter().map(Pushgateway::addr).collect();
    let first_two = all[..2].to_vec();
    // Owned by the third node once it joins, so scaling out moves it there.
    let job = job_owned_by(&all, &all[2], "moved");
    let gateway = Gateway::start_with_args(
        &config(&first_two, "{expire_after: 8s}"),
        &["--web.enable-lifecycle"],
    )
    .await;
    let refs: Vec<&Pushgateway> = nodes.iter().collect();
    wait_for_ring(&gateway, &refs[..2]).await;
    let reply = gateway
        .request(Method::PUT, &format!("/metrics/job/{job}"), "x 1\n")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let pushed_at = {
        let mut found = None;
        for node in &refs[..2] {
            for group in node.api_metrics().await {
                if group["labels"]["job"] == job.as_str() {
                    found = group["push_time_seconds"]["metrics"][0]["value"]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok());
                }
            }
        }
        found.expect("the pushed group and its push time")
    };

    // Scale out: the group moves to the new node, where the Pushgateway stamps the copy with the move's time.
    std::fs::write(gateway.config_path(), config(&all, "{expire_after: 8s}"))
        .expect("rewrite config");
    let reload = gateway.request(Method::POST, "/-/reload", "").await;
    assert_eq!(reload.status, StatusCode::OK, "{}", reload.body);
    let copy = wait_until(secs(30), Duration::from_millis(200), || async {
        nodes[2]
            .api_metrics()
            .await
            .into_iter()
            .any(|group| group["labels"]["job"] == job.as_str())
    })
    .await;
    assert!(copy.is_ok(), "the group moved to the new node");
    let moved = nodes[2]
        .api_metrics()
        .await
        .into_iter()
        .find(|group| group["labels"]["job"] == job.as_str())
        .expect("the moved copy");
    let copy_stamp: f64 = moved["push_time_seconds"]["metrics"][0]["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("the copy's push time");
    assert!(
        copy_stamp > pushed_at,
        "the copy is stamped with the move: {copy_stamp} vs {pushed_at}"
    );
    let marker = &moved["dynamic_sharding_group_moved"]["metrics"];
    let last_push = marker
        .as_array()
        .and_then(|metrics| metrics.iter().find(|m| m["labels"]["time"] == "last_push"))
        .and_then(|m| m["value"].as_str()?.parse::<f64>().ok())
        .expect("the copy carries the client's push time");
    assert!(
        (last_push - pushed_at).abs() < 0.001,
        "marker {last_push}, client push {pushed_at}"
    );

    // It expires by the client's push, and the pass says so with that time.
    let gone = wait_until(secs(40), Duration::from_millis(200), || async {
        !jobs(&refs).await.contains(&job)
    })
    .await;
    assert!(gone.is_ok(), "the moved group never expired");
    // Logged once the pass's deletes are answered, which may be after the node shows the group gone.
    let logged = wait_until(SETTLE, POLL_INTERVAL, || async {
        gateway
            .log_text()
            .lines()
            .any(|line| line.contains("group expired") && line.contains(&job))
    })
    .await;
    assert!(
        logged.is_ok(),
        "no expiry line for {job} ({logged:?}):\n{}",
        gateway.log_text()
    );
    let log = gateway.log_text();
    let expired_line = log
        .lines()
        .find(|line| line.contains("group expired") && line.contains(&job))
        .unwrap_or_else(|| panic!("no expiry line for {job}:\n{log}"));
    let logged: f64 = expired_line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("last_client_push="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no last_client_push in {expired_line}"));
    assert!(
        (logged - pushed_at).abs() < 0.001,
        "expired by {logged}, the client pushed at {pushed_at} (the move was at {copy_stamp})"
    );
}
