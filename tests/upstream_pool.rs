//! The push path's per-node connection pool (`src/pushgateway/pool.rs`) against real Pushgateways: connections are
//! reused, a pooled connection the node closed (restart on the same port) is replaced without an error or a
//! retry on another node, and many concurrent pushes to one node all succeed.

mod common;

use std::collections::BTreeSet;

use common::*;
use reqwest::{Method, StatusCode};

const NODE_HEADER: &str = "x-dynamic-sharding-node";
const BODY: &str = "# TYPE pool_gauge gauge\npool_gauge 1\n";

/// Proxy mode with the per-node pool (`proxy.per_node_pool`) over `nodes`, with health checks so rare that no probe marks a restarting node unhealthy during a
/// test: the ring (and so each node's pool) stays the same throughout.
fn proxy_config(nodes: &[Pushgateway]) -> String {
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    format!(
        "mode: proxy\npushgateway:\n  servers: [{}]\nhealth_check: {{interval: 30s, timeout: 2s, \
         unhealthy_threshold: 3, healthy_threshold: 1}}\nproxy: {{per_node_pool: true}}\n",
        servers.join(", ")
    )
}

async fn wait_ring(gateway: &Gateway, size: usize) {
    wait_until(secs(20), POLL_INTERVAL, || async {
        gateway.ring().await["ring_nodes"]
            .as_array()
            .map_or(0, |n| n.len())
            == size
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "ring never reached {size} nodes: {e}\n{}",
            gateway.log_text()
        )
    });
}

/// TCP sockets on this host (any state, IPv4) whose remote port is `port`: the client ends of connections to a
/// node, including closed ones still in TIME_WAIT. A client that opened a connection per push leaves one each.
fn client_sockets_towards(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let wanted = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            line.split_whitespace()
                .nth(2)
                .and_then(|remote| remote.split(':').nth(1))
                .is_some_and(|remote_port| remote_port == wanted)
        })
        .count()
}

/// Series of `name` in the gateway's `/-/metrics` text, with their values.
async fn series(gateway: &Gateway, name: &str) -> Vec<String> {
    let text = gateway.request(Method::GET, "/-/metrics", "").await.body;
    text.lines()
        .filter(|line| line.starts_with(name))
        .map(str::to_string)
        .collect()
}

/// A push path owned by `node`, found by asking the gateway.
async fn path_owned_by(gateway: &Gateway, node: &str) -> String {
    for i in 0..200 {
        let path = format!("/metrics/job/pool/instance/i-{i}");
        if gateway.owner_of(&path).await == node {
            return path;
        }
    }
    panic!("none of 200 groups is owned by {node}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connection_is_reused_and_a_restarted_node_gets_a_fresh_one_without_error_or_retry()
{
    let mut nodes = Pushgateway::start_many(2).await;
    let gateway = Gateway::start(&proxy_config(&nodes)).await;
    wait_ring(&gateway, 2).await;
    let target = nodes[0].addr();
    let path = path_owned_by(&gateway, &target).await;

    let before = client_sockets_towards(nodes[0].port());
    for attempt in 0..20 {
        let reply = gateway.request(Method::PUT, &path, BODY).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "push {attempt}: {}",
            reply.body
        );
        assert_eq!(reply.headers[NODE_HEADER].to_str().unwrap(), target);
    }
    // One pooled connection carries all 20 sequential pushes (the prober may hold one more).
    let opened = client_sockets_towards(nodes[0].port()).saturating_sub(before);
    assert!(
        opened <= 2,
        "20 sequential pushes left {opened} client sockets towards {target}: connections are not reused"
    );

    // The pooled connection is now dead: the node behind it was SIGKILLed and a new process listens there.
    nodes[0].restart().await;
    for attempt in 0..5 {
        let reply = gateway.request(Method::PUT, &path, BODY).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "push {attempt} after the restart: {}\n{}",
            reply.body,
            gateway.log_text()
        );
        assert_eq!(reply.headers[NODE_HEADER].to_str().unwrap(), target);
    }
    assert!(
        nodes[0].groups().await.contains(&labels(&[
            ("job", "pool"),
            ("instance", path.rsplit('/').next().unwrap())
        ])),
        "the group is on the restarted node"
    );
    let errors = series(&gateway, "dynamic_sharding_upstream_errors").await;
    assert!(errors.is_empty(), "no upstream error counted: {errors:?}");
    let retries = series(&gateway, "dynamic_sharding_upstream_retries").await;
    assert!(retries.is_empty(), "no retry on the successor: {retries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_pushes_to_one_node_all_succeed_and_reuse_connections() {
    let nodes = Pushgateway::start_many(1).await;
    let gateway = Gateway::start(&proxy_config(&nodes)).await;
    wait_ring(&gateway, 1).await;
    const PUSHES_PER_WAVE: usize = 100;

    for wave in 0..3 {
        let pushes = (0..PUSHES_PER_WAVE).map(|i| {
            let gateway = &gateway;
            async move {
                let path = format!("/metrics/job/burst/instance/w{wave}-{i}");
                let reply = gateway.request(Method::PUT, &path, BODY).await;
                (path, reply.status, reply.body)
            }
        });
        for (path, status, body) in futures_util::future::join_all(pushes).await {
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
        }
    }
    let held: BTreeSet<String> = nodes[0]
        .groups()
        .await
        .into_iter()
        .filter_map(|group| group.get("instance").cloned())
        .collect();
    assert_eq!(
        held.len(),
        3 * PUSHES_PER_WAVE,
        "every pushed group is on the node"
    );
    let errors = series(&gateway, "dynamic_sharding_upstream_errors").await;
    assert!(errors.is_empty(), "no upstream error counted: {errors:?}");
    // Three waves of 100 concurrent pushes need at most 100 connections (plus the prober's), not 300: the
    // second and third waves ran on connections the first one returned to the pool.
    let sockets = client_sockets_towards(nodes[0].port());
    assert!(
        sockets <= PUSHES_PER_WAVE + 2 + 1,
        "{sockets} client sockets towards the node after 3 x {PUSHES_PER_WAVE} pushes"
    );
}
