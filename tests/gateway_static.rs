//! The core gateway against real Pushgateways with static membership: routing, proxy and redirect modes,
//! rejected paths, health checks, reload, shutdown, and a real client library.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};

const NODE_HEADER: &str = "x-dynamic-sharding-node";
const BODY: &str = "# TYPE some_gauge gauge\nsome_gauge 42\n";

/// A static config over `nodes` with fast health checks (interval 500ms, 2 failures to leave, 1 success to return).
fn static_config(mode: &str, nodes: &[&Pushgateway]) -> String {
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    format!(
        "mode: {mode}\npushgateway:\n  servers: [{}]\nhealth_check: {{interval: 500ms, timeout: 400ms, \
         unhealthy_threshold: 2, healthy_threshold: 1}}\n",
        servers.join(", ")
    )
}

/// Which nodes hold a group with exactly these grouping labels.
async fn holders(nodes: &[Pushgateway], grouping: &BTreeMap<String, String>) -> Vec<String> {
    let mut found = Vec::new();
    for node in nodes {
        if node.groups().await.contains(grouping) {
            found.push(node.addr());
        }
    }
    found
}

/// Sends one request with a path exactly as given (no client-side normalisation); returns status and Location.
async fn raw_http_status(addr: &str, method: &str, path: &str) -> (u16, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = answer
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .map(str::to_string);
    (status, location)
}

async fn wait_ready(gateway: &Gateway, ring_size: usize) {
    wait_until(secs(20), Duration::from_millis(100), || async {
        let reply = gateway.request(Method::GET, "/-/ring", "").await;
        let ring: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
        ring["ring_nodes"].as_array().map_or(0, |n| n.len()) == ring_size
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "ring never reached {ring_size} nodes: {e}\n{}",
            gateway.log_text()
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_push_lands_on_exactly_its_owner_and_no_other_node() {
    let nodes = Pushgateway::start_many(3).await;
    let gateway = Gateway::start(&static_config("proxy", &nodes.iter().collect::<Vec<_>>())).await;
    wait_ready(&gateway, 3).await;

    let mut owners_used = std::collections::BTreeSet::new();
    for i in 0..30 {
        let path = format!("/metrics/job/batch/instance/host-{i}");
        let reply = gateway.request(Method::PUT, &path, BODY).await;
        assert_eq!(reply.status, StatusCode::OK, "push {path}: {}", reply.body);
        let served_by = reply
            .headers
            .get(NODE_HEADER)
            .expect("node header")
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(
            served_by,
            gateway.owner_of(&path).await,
            "the node that served {path} is its owner"
        );
        let held_by = holders(
            &nodes,
            &labels(&[("job", "batch"), ("instance", &format!("host-{i}"))]),
        )
        .await;
        assert_eq!(
            held_by,
            vec![served_by.clone()],
            "group {path} is on exactly its owner"
        );
        owners_used.insert(served_by);
    }
    assert_eq!(
        owners_used.len(),
        3,
        "30 groups spread over all three nodes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_order_and_base64_variants_reach_the_same_group_on_one_node() {
    let nodes = Pushgateway::start_many(3).await;
    let gateway = Gateway::start(&static_config("proxy", &nodes.iter().collect::<Vec<_>>())).await;
    wait_ready(&gateway, 3).await;

    let variants = [
        ("/metrics/job/j/a/x/b/y", "first"),
        ("/metrics/job/j/b/y/a/x", "second"),
        ("/metrics/job@base64/ag==/a/x/b@base64/eQ==", "third"),
        ("/metrics/job@base64/ag/a@base64/eA/b/y", "fourth"),
    ];
    let mut served = Vec::new();
    for (path, metric) in variants {
        // POST keeps earlier metrics of the group, so the group ends up with all four.
        let reply = gateway
            .request(Method::POST, path, &format!("{metric}_metric 1\n"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        served.push(reply.headers[NODE_HEADER].to_str().unwrap().to_string());
    }
    assert!(
        served.windows(2).all(|w| w[0] == w[1]),
        "all variants served by one node: {served:?}"
    );
    let group = labels(&[("job", "j"), ("a", "x"), ("b", "y")]);
    assert_eq!(holders(&nodes, &group).await, vec![served[0].clone()]);
    let owner = nodes.iter().find(|n| n.addr() == served[0]).unwrap();
    let text = owner.metrics_text().await;
    for (_, metric) in variants {
        assert!(
            text.contains(&format!("{metric}_metric{{")),
            "{metric}_metric missing from the one group:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_group_from_its_owner() {
    let nodes = Pushgateway::start_many(2).await;
    let gateway = Gateway::start(&static_config("proxy", &nodes.iter().collect::<Vec<_>>())).await;
    wait_ready(&gateway, 2).await;
    let group = labels(&[("job", "doomed"), ("instance", "a")]);
    assert_eq!(
        gateway
            .request(Method::PUT, "/metrics/job/doomed/instance/a", BODY)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(holders(&nodes, &group).await.len(), 1);
    let reply = gateway
        .request(Method::DELETE, "/metrics/job/doomed/instance/a", "")
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    // A Pushgateway applies a DELETE after its 202 (it queues the write), so the group may still show a moment.
    assert_eventually_eq(
        SETTLE,
        || holders(&nodes, &group),
        Vec::new(),
        "group deleted everywhere",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_paths_get_the_pushgateways_status_without_touching_any_node() {
    let nodes = Pushgateway::start_many(2).await;
    let reference = Pushgateway::start().await;
    let gateway = Gateway::start(&static_config("proxy", &nodes.iter().collect::<Vec<_>>())).await;
    wait_ready(&gateway, 2).await;

    let paths = [
        "/metrics/job/j/a",
        "/metrics/job/j/1abc/x",
        "/metrics/job/j/__x/y",
        "/metrics/job/j/a/x%2Fy",
        "/metrics/job@base64/!!!",
        "/metrics/job/j/a@base64/%25%25",
        "/metrics/job/j/a/x/",
        "/metrics/job",
        "/metrics/job//j",
        "/metrics/job/j/./k",
    ];
    for path in paths {
        let direct = reference.request(Method::PUT, path, BODY).await;
        let through = gateway.request(Method::PUT, path, BODY).await;
        assert_eq!(
            through.status, direct.status,
            "{path}: gateway said {:?}, Pushgateway said {:?}",
            through.body, direct.body
        );
        if direct.status.is_redirection() {
            assert_eq!(
                through.headers.get("location"),
                direct.headers.get("location"),
                "{path}: same redirect target"
            );
        }
    }
    // Dot segments: HTTP clients resolve them before sending, so speak raw HTTP to check the 301 both give.
    for path in ["/metrics/job/j/../k", "/metrics/job/j/a/x/%2E%2E/y/z"] {
        let direct = raw_http_status(&reference.addr(), "PUT", path).await;
        let through = raw_http_status(&gateway.addr(), "PUT", path).await;
        assert_eq!(through, direct, "{path}");
        assert!(direct.0 == 301, "{path}: {direct:?}");
    }
    // The empty job name: the Pushgateway redirects to a 404; the gateway says what is wrong.
    let reply = gateway.request(Method::PUT, "/metrics/job/", BODY).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains("job"), "{}", reply.body);
    // A method the Pushgateway API does not have.
    let reply = gateway.request(Method::PATCH, "/metrics/job/j", BODY).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.headers.contains_key("allow"));
    for node in &nodes {
        let groups = node.groups().await;
        assert!(
            groups.is_empty(),
            "no rejected push reached {}: {groups:?}",
            node.addr()
        );
    }
    // The gateway keeps serving after all that.
    assert_eq!(
        gateway
            .request(Method::PUT, "/metrics/job/fine", BODY)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_mode_answers_307_to_the_owner_for_put_post_and_delete() {
    let nodes = Pushgateway::start_many(3).await;
    let gateway = Gateway::start(&static_config(
        "redirect",
        &nodes.iter().collect::<Vec<_>>(),
    ))
    .await;
    wait_ready(&gateway, 3).await;
    let client = http_client();
    for i in 0..10 {
        let path = format!("/metrics/job/redir/instance/i{i}?ignored=1");
        let owner = gateway
            .owner_of(&format!("/metrics/job/redir/instance/i{i}"))
            .await;
        for method in [Method::PUT, Method::POST, Method::DELETE] {
            let reply = gateway.request(method.clone(), &path, BODY).await;
            assert_eq!(
                reply.status,
                StatusCode::TEMPORARY_REDIRECT,
                "{method} {path}"
            );
            assert_eq!(
                reply.headers["location"].to_str().unwrap(),
                format!("http://{owner}{path}")
            );
        }
        // Following the redirect (as Go's client does) puts the group on the owner only.
        let location = gateway.request(Method::PUT, &path, BODY).await.headers["location"]
            .to_str()
            .unwrap()
            .to_string();
        let followed = send(&client, Method::PUT, &location, BODY).await.unwrap();
        assert_eq!(followed.status, StatusCode::OK);
        let group = labels(&[("job", "redir"), ("instance", &format!("i{i}"))]);
        assert_eq!(holders(&nodes, &group).await, vec![owner]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_lookup_answers_text_like_the_original_and_json_on_request() {
    let nodes = Pushgateway::start_many(2).await;
    let gateway = Gateway::start(&static_config("proxy", &nodes.iter().collect::<Vec<_>>())).await;
    wait_ready(&gateway, 2).await;
    let text = gateway
        .request(Method::GET, "/metrics/job/j/b/y/a/x", "")
        .await;
    assert_eq!(text.status, StatusCode::OK);
    assert!(
        text.body.starts_with("nextUrl:http://127.0.0.1:"),
        "{}",
        text.body
    );
    let reply = http_client()
        .get(format!("{}/metrics/job/j/b/y/a/x", gateway.url()))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["grouping_key"], r#"{job="j",a="x",b="y"}"#);
    assert_eq!(
        format!("nextUrl:{}", body["url"].as_str().unwrap()),
        text.body
    );
    assert!(nodes.iter().any(|n| n.addr() == body["node"]));
}

fn membership_changes(metrics: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("dynamic_sharding_membership_changes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no membership_changes_total in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_the_ring_pushes_keep_succeeding_and_it_returns_after_restart() {
    let mut nodes = Pushgateway::start_many(3).await;
    // Health checks only: outlier detection (faults.rs) would eject the dead node after 3 failed pushes, racing
    // the probes, and keep it out of the ring for 30 s after its restart.
    let config = format!(
        "{}outlier_detection: {{consecutive_failures: 0}}\n",
        static_config("proxy", &nodes.iter().collect::<Vec<_>>())
    );
    let gateway = Gateway::start(&config).await;
    wait_ready(&gateway, 3).await;
    let victim = nodes[0].addr();
    let changes_before =
        membership_changes(&gateway.request(Method::GET, "/-/metrics", "").await.body);
    // The first push after the kill goes to a group the dead node owns: the probes need two failures 500 ms
    // apart to notice, so it certainly meets the dead node and is retried.
    let mut paths = Vec::new();
    for i in 0..100 {
        let path = format!("/metrics/job/during/instance/i{i}");
        if paths.is_empty() && gateway.owner_of(&path).await != victim {
            continue;
        }
        paths.push(path);
        if paths.len() == 30 {
            break;
        }
    }
    assert_eq!(paths.len(), 30, "no group among 100 owned by {victim}");

    nodes[0].kill();
    let killed_at = Instant::now();
    // Right after the kill, before the health check notices: pushes owned by the dead node are retried on the
    // next node, so every push succeeds.
    for path in &paths {
        let reply = gateway.request(Method::PUT, path, BODY).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{path} after the kill: {}",
            reply.body
        );
        assert_ne!(reply.headers[NODE_HEADER].to_str().unwrap(), victim);
    }
    wait_ready(&gateway, 2).await;
    // interval 500ms x unhealthy_threshold 2 = 1s; the bound only rules out "never noticed until some later
    // event", with a wide margin for a loaded 2-core machine.
    assert!(
        killed_at.elapsed() < secs(15),
        "took {:?} to drop the dead node",
        killed_at.elapsed()
    );
    let ring: serde_json::Value =
        serde_json::from_str(&gateway.request(Method::GET, "/-/ring", "").await.body).unwrap();
    assert!(!ring["ring_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == victim.as_str()));

    nodes[0].restart().await;
    wait_ready(&gateway, 3).await;
    let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    assert_eq!(
        membership_changes(&metrics) - changes_before,
        2,
        "one change for the kill, one for the return"
    );
    let retried = format!("dynamic_sharding_upstream_retries_total{{node=\"{victim}\"}}");
    assert!(metrics.contains(&retried), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_library_pushes_and_deletes_through_proxy_mode() {
    let nodes = Pushgateway::start_many(2).await;
    let gateway = Gateway::start(&static_config("proxy", &nodes.iter().collect::<Vec<_>>())).await;
    wait_ready(&gateway, 2).await;
    let group = labels(&[("job", "pyjob"), ("instance", "worker/1")]);
    python_push(
        &gateway.url(),
        "pyjob",
        &[("instance", "worker/1")],
        PythonPushOp::Push(3.5),
    )
    .await
    .expect("push_to_gateway through the gateway");
    python_push(
        &gateway.url(),
        "pyjob",
        &[("instance", "worker/1")],
        PythonPushOp::PushAdd(4.5),
    )
    .await
    .expect("pushadd_to_gateway through the gateway");
    let held = holders(&nodes, &group).await;
    assert_eq!(
        held.len(),
        1,
        "a value with '/' (base64-encoded by the client) lands on one node"
    );
    let owner = nodes.iter().find(|n| n.addr() == held[0]).unwrap();
    assert!(owner.metrics_text().await.contains(&format!(
        "{PYTHON_GAUGE}{{instance=\"worker/1\",job=\"pyjob\"}} 4.5"
    )));
    python_push(
        &gateway.url(),
        "pyjob",
        &[("instance", "worker/1")],
        PythonPushOp::Delete,
    )
    .await
    .expect("delete_from_gateway through the gateway");
    // Applied by the Pushgateway after its 202.
    assert_eventually_eq(
        SETTLE,
        || holders(&nodes, &group),
        Vec::new(),
        "group deleted",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_node_means_503_and_not_ready() {
    let mut nodes = Pushgateway::start_many(1).await;
    let gateway = Gateway::start(&static_config("redirect", &[&nodes[0]])).await;
    wait_ready(&gateway, 1).await;
    assert_eq!(
        gateway.request(Method::GET, "/-/ready", "").await.status,
        StatusCode::OK
    );
    nodes[0].kill();
    wait_ready(&gateway, 0).await;
    let reply = gateway.request(Method::PUT, "/metrics/job/j", BODY).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply.body.contains("no healthy Pushgateway"),
        "{}",
        reply.body
    );
    assert!(!reply.headers.contains_key("location"));
    assert_eq!(
        gateway.request(Method::GET, "/-/ready", "").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        gateway.request(Method::GET, "/-/healthy", "").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_the_gateway_keeps_serving() {
    let nodes = Pushgateway::start_many(1).await;
    let config = format!(
        "{}proxy: {{max_body_size: 1KiB}}\n",
        static_config("proxy", &[&nodes[0]])
    );
    let gateway = Gateway::start(&config).await;
    wait_ready(&gateway, 1).await;
    let big = format!(
        "# TYPE big gauge\n{}",
        (0..200)
            .map(|i| format!("big{{i=\"{i}\"}} 1\n"))
            .collect::<String>()
    );
    let reply = gateway.request(Method::PUT, "/metrics/job/big", &big).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.body
    );
    assert!(nodes[0].groups().await.is_empty());
    assert_eq!(
        gateway
            .request(Method::PUT, "/metrics/job/small", BODY)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_lifecycle_reload_apply_a_new_config_and_reject_a_bad_one() {
    let nodes = Pushgateway::start_many(2).await;
    let gateway = Gateway::start_with_args(
        &static_config("proxy", &[&nodes[0]]),
        &["--web.enable-lifecycle"],
    )
    .await;
    wait_ready(&gateway, 1).await;

    // SIGHUP with a second node added.
    std::fs::write(
        gateway.config_path(),
        static_config("proxy", &[&nodes[0], &nodes[1]]),
    )
    .unwrap();
    gateway.signal("HUP");
    wait_ready(&gateway, 2).await;

    // A broken file is rejected and the old config stays in force.
    std::fs::write(
        gateway.config_path(),
        "pushgateway: {servers: []}\nbogus_key: 1\n",
    )
    .unwrap();
    let reply = gateway.request(Method::POST, "/-/reload", "").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.body.contains("bogus_key"), "{}", reply.body);
    assert!(gateway
        .request(Method::GET, "/-/metrics", "")
        .await
        .body
        .contains("dynamic_sharding_config_last_reload_successful 0"));
    wait_ready(&gateway, 2).await;

    // Switch to redirect mode through the lifecycle endpoint.
    std::fs::write(
        gateway.config_path(),
        static_config("redirect", &[&nodes[1]]),
    )
    .unwrap();
    assert_eq!(
        gateway.request(Method::POST, "/-/reload", "").await.status,
        StatusCode::OK
    );
    wait_ready(&gateway, 1).await;
    let reply = gateway.request(Method::PUT, "/metrics/job/j", BODY).await;
    assert_eq!(reply.status, StatusCode::TEMPORARY_REDIRECT);
    assert!(reply.headers["location"]
        .to_str()
        .unwrap()
        .starts_with(&format!("http://{}/", nodes[1].addr())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_endpoint_is_forbidden_without_the_lifecycle_flag() {
    let nodes = Pushgateway::start_many(1).await;
    let gateway = Gateway::start(&static_config("proxy", &[&nodes[0]])).await;
    assert_eq!(
        gateway.request(Method::POST, "/-/reload", "").await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_describe_the_ring_and_export_metrics() {
    let nodes = Pushgateway::start_many(2).await;
    let gateway = Gateway::start(&static_config("proxy", &nodes.iter().collect::<Vec<_>>())).await;
    wait_ready(&gateway, 2).await;
    gateway.request(Method::PUT, "/metrics/job/j", BODY).await;

    let ring: serde_json::Value =
        serde_json::from_str(&gateway.request(Method::GET, "/-/ring", "").await.body).unwrap();
    assert_eq!(ring["algorithm"], "rendezvous");
    assert_eq!(ring["membership"]["source"], "static");
    let listed: Vec<&str> = ring["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    let mut expected: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(ring["nodes"][0]["last_probe"].is_string());

    let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    for needle in [
        "dynamic_sharding_requests_total{method=\"PUT\",code=\"200\",node=\"127.0.0.1:",
        "dynamic_sharding_upstream_request_duration_seconds_bucket",
        "dynamic_sharding_ring_nodes 2",
        "dynamic_sharding_health_probes_total{node=",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
    let hello = gateway.request(Method::GET, "/test/v1", "").await;
    assert_eq!(hello.status, StatusCode::OK);
    assert!(hello.body.starts_with("Hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_and_exits_zero() {
    let nodes = Pushgateway::start_many(1).await;
    let mut gateway = Gateway::start(&static_config("proxy", &[&nodes[0]])).await;
    wait_ready(&gateway, 1).await;
    gateway.signal("TERM");
    wait_until(secs(20), Duration::from_millis(50), || {
        let exited = gateway.exit_status().is_some();
        async move { exited }
    })
    .await
    .expect("gateway exits after SIGTERM");
    assert!(
        gateway.exit_status().unwrap().success(),
        "{}",
        gateway.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_exits_non_zero_before_listening_with_a_message_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yml");
    std::fs::write(
        &path,
        "pushgateway: {servers: [a]}\nhealth_check: {interval: soon}\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dynamic-sharding"))
        .arg(format!("--config.file={}", path.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid duration \\\"soon\\\"")
            || stderr.contains("invalid duration \"soon\""),
        "{stderr}"
    );
}
