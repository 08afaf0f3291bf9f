//! Poison groups against real Pushgateways: `{job="j"}` next to `{job="j",instance=""}` on one Pushgateway 1.5.1
//! makes it answer every later push with 400 and its `/metrics` with 500. The gateway drops empty-valued
//! grouping labels (proxy, redirect, owner lookup), so through it the two forms are one group; and a node
//! poisoned some other way is reported after a read (log, metric, `/-/ring`).

mod common;

use std::collections::BTreeMap;

use common::*;
use reqwest::{Method, StatusCode};

const NODE_HEADER: &str = "x-dynamic-sharding-node";

fn config(mode: &str, algorithm: &str, nodes: &[Pushgateway]) -> String {
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    format!(
        "mode: {mode}\nring: {{algorithm: {algorithm}}}\npushgateway:\n  servers: [{}]\n\
         health_check: {{interval: 500ms, timeout: 400ms, unhealthy_threshold: 2, healthy_threshold: 1}}\n\
         rebalance: {{enabled: false}}\n",
        servers.join(", ")
    )
}

async fn wait_for_ring(gateway: &Gateway, size: usize) {
    wait_until(secs(20), POLL_INTERVAL, || async {
        gateway.ring().await["ring_nodes"]
            .as_array()
            .is_some_and(|nodes| nodes.len() == size)
    })
    .await
    .expect("every node in the ring");
}

/// Poisons `node` straight, bypassing the gateway (which would drop the empty label): `{job="p"}` and then
/// `{job="p",instance=""}`; the Pushgateway answers the second push 400 but keeps it.
async fn poison_directly(node: &Pushgateway) {
    assert_eq!(node.push("/metrics/job/p", "a 1\n").await, StatusCode::OK);
    node.push("/metrics/job/p/instance@base64/=", "a 1\n").await;
}

fn node<'a>(nodes: &'a [Pushgateway], addr: &str) -> &'a Pushgateway {
    nodes
        .iter()
        .find(|n| n.addr() == addr)
        .unwrap_or_else(|| panic!("{addr} is not one of the test's Pushgateways"))
}

/// Every group on every node whose job is `job`, with the node holding it.
async fn groups_of_job(
    nodes: &[Pushgateway],
    job: &str,
) -> Vec<(String, BTreeMap<String, String>)> {
    let mut found = Vec::new();
    for node in nodes {
        for group in node.groups().await {
            if group.get("job").map(String::as_str) == Some(job) {
                found.push((node.addr(), group));
            }
        }
    }
    found
}

/// After the three pushes of one job: the group exists once, on `owner`, without an empty label, with the
/// last value; and `owner` still accepts pushes of other groups and serves `/metrics`.
async fn assert_one_healthy_group(nodes: &[Pushgateway], owner: &str, job: &str, last_value: u32) {
    assert_eq!(
        groups_of_job(nodes, job).await,
        vec![(owner.to_owned(), labels(&[("job", job)]))],
        "{job} must be one group on its owner"
    );
    let owner_node = node(nodes, owner);
    let exposition = owner_node.metrics_text().await;
    assert!(
        // The Pushgateway adds `instance=""` to every series without one: hence the clash of the two forms.
        exposition.contains(&format!(
            "poison_value{{instance=\"\",job=\"{job}\"}} {last_value}"
        )),
        "{exposition}"
    );
    assert_eq!(
        owner_node
            .push(&format!("/metrics/job/{job}_other/instance/x"), "other 1\n")
            .await,
        StatusCode::OK,
        "the owner still accepts pushes to other groups"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_label_and_absent_label_are_one_group_when_proxied() {
    let nodes = Pushgateway::start_many(3).await;
    for algorithm in ["rendezvous", "go-compatible"] {
        let gateway = Gateway::start(&config("proxy", algorithm, &nodes)).await;
        wait_for_ring(&gateway, nodes.len()).await;
        let job = format!("poison_proxy_{}", algorithm.replace('-', "_"));
        let paths = [
            format!("/metrics/job/{job}"),
            format!("/metrics/job/{job}/instance@base64/="),
            format!("/metrics/job/{job}/instance/"),
        ];
        let owner = gateway.owner_of(&paths[0]).await;
        let mut served_by = Vec::new();
        for (value, path) in paths.iter().enumerate() {
            assert_eq!(gateway.owner_of(path).await, owner, "{algorithm}: {path}");
            let reply = gateway
                .request(Method::PUT, path, &format!("poison_value {value}\n"))
                .await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{algorithm}: PUT {path}: {}",
                reply.body
            );
            served_by.push(
                reply.headers[NODE_HEADER]
                    .to_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        assert_eq!(served_by, vec![owner.clone(); 3], "{algorithm}");
        assert_one_healthy_group(&nodes, &owner, &job, 2).await;

        // The owner lookup names the canonical path too.
        let reply = gateway.request(Method::GET, &paths[2], "").await;
        assert_eq!(
            reply.body,
            format!("nextUrl:http://{owner}/metrics/job/{job}"),
            "{algorithm}"
        );
        // A DELETE of either form deletes the one group.
        let reply = gateway.request(Method::DELETE, &paths[1], "").await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        // The Pushgateway applies the DELETE after its 202.
        assert_eventually_eq(
            SETTLE,
            || groups_of_job(&nodes, &job),
            vec![],
            &format!("{algorithm}: the one group is deleted"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_location_drops_empty_labels_and_keeps_the_query() {
    let nodes = Pushgateway::start_many(3).await;
    let gateway = Gateway::start(&config("redirect", "rendezvous", &nodes)).await;
    wait_for_ring(&gateway, nodes.len()).await;
    let job = "poison_redirect";
    let owner = gateway.owner_of(&format!("/metrics/job/{job}")).await;
    let client = http_client();
    for (value, (path, location)) in [
        (format!("/metrics/job/{job}"), format!("/metrics/job/{job}")),
        (
            format!("/metrics/job/{job}/instance@base64/="),
            format!("/metrics/job/{job}"),
        ),
        (
            format!("/metrics/job/{job}/instance/?x=1"),
            format!("/metrics/job/{job}?x=1"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let reply = gateway.request(Method::PUT, &path, "").await;
        assert_eq!(
            reply.status,
            StatusCode::TEMPORARY_REDIRECT,
            "{path}: {}",
            reply.body
        );
        let target = reply.headers["location"]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(target, format!("http://{owner}{location}"), "{path}");
        // Followed by hand, as Go's client_golang would.
        let pushed = send(
            &client,
            Method::PUT,
            &target,
            format!("poison_value {value}\n"),
        )
        .await
        .unwrap_or_else(|error| panic!("PUT {target}: {error}"));
        assert_eq!(
            pushed.status,
            StatusCode::OK,
            "PUT {target}: {}",
            pushed.body
        );
    }
    assert_one_healthy_group(&nodes, &owner, job, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_poisoned_directly_is_reported_after_a_read_until_it_recovers() {
    let nodes = Pushgateway::start_many(2).await;
    let gateway = Gateway::start(&config("proxy", "rendezvous", &nodes)).await;
    wait_for_ring(&gateway, nodes.len()).await;
    let poisoned = &nodes[0];
    let addr = poisoned.addr();
    poison_directly(poisoned).await;
    let reply = poisoned.request(Method::GET, "/metrics", "").await;
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        reply.body
    );
    // The node's own explanation, as the gateway must pass it on.
    let node_error = "was collected before with the same name and label values";
    assert!(reply.body.contains(node_error), "{}", reply.body);

    let reply = gateway.request(Method::GET, "/metrics", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.headers["x-dynamic-sharding-missing-nodes"],
        addr.as_str()
    );

    let warned = |log: &str| {
        log.lines().any(|line| {
            line.contains("level=warn")
                && line.contains(&addr)
                && line.contains("path=/metrics")
                && line.contains(node_error)
        })
    };
    wait_until(secs(10), POLL_INTERVAL, || async {
        warned(&gateway.log_text())
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no warn line with the node's error:\n{}",
            gateway.log_text()
        )
    });
    let failing =
        format!("dynamic_sharding_read_node_failing{{node=\"{addr}\",path=\"/metrics\"}}");
    let own_metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    assert!(
        own_metrics.contains(&format!("{failing} 1")),
        "{own_metrics}"
    );
    let ring = gateway.ring().await;
    let reported = &ring["read_failures"];
    assert_eq!(reported.as_array().map(Vec::len), Some(1), "{ring}");
    assert_eq!(reported[0]["node"], addr.as_str(), "{ring}");
    assert_eq!(reported[0]["path"], "/metrics", "{ring}");
    assert_eq!(reported[0]["kind"], "status", "{ring}");
    assert!(
        reported[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains(node_error),
        "{ring}"
    );
    // Reported, not ejected: the node still passes its probes and keeps its groups' routes.
    assert_eq!(
        ring["ring_nodes"].as_array().map(Vec::len),
        Some(2),
        "{ring}"
    );

    // Deleting one of the two groups heals the node; the next read clears the report.
    assert_eq!(
        poisoned.delete("/metrics/job/p/instance@base64/=").await,
        StatusCode::ACCEPTED
    );
    wait_until(secs(10), POLL_INTERVAL, || async {
        poisoned.request(Method::GET, "/metrics", "").await.status == StatusCode::OK
    })
    .await
    .expect("the node serves /metrics again");
    let reply = gateway.request(Method::GET, "/metrics", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply
        .headers
        .get("x-dynamic-sharding-missing-nodes")
        .is_none());
    let ring = gateway.ring().await;
    assert_eq!(ring["read_failures"], serde_json::json!([]), "{ring}");
    let own_metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    assert!(
        own_metrics.contains(&format!("{failing} 0")),
        "{own_metrics}"
    );
    assert!(
        gateway
            .log_text()
            .contains("node answers fanned-out reads again"),
        "{}",
        gateway.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebalancer_moves_a_group_with_an_empty_label_to_its_owner_in_canonical_form() {
    let nodes = Pushgateway::start_many(2).await;
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    let gateway = Gateway::start(&format!(
        "pushgateway:\n  servers: [{}]\nhealth_check: {{interval: 500ms, timeout: 400ms, \
         unhealthy_threshold: 2, healthy_threshold: 1}}\nrebalance: {{interval: 1s}}\n",
        servers.join(", ")
    ))
    .await;
    wait_for_ring(&gateway, nodes.len()).await;
    let job = "poison_legacy";
    let owner = gateway.owner_of(&format!("/metrics/job/{job}")).await;
    let other = nodes
        .iter()
        .find(|n| n.addr() != owner)
        .expect("a second node");
    let reply = gateway
        .request(
            Method::PUT,
            &format!("/metrics/job/{job}"),
            "poison_value 1\n",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // Pushed straight to the wrong node, later: as a pre-upgrade push of the empty-label form would sit there.
    assert_eq!(
        other
            .push(
                &format!("/metrics/job/{job}/instance@base64/="),
                "poison_value 2\n"
            )
            .await,
        StatusCode::OK
    );
    // The newer copy wins and lands on the owner as `{job=...}`: copied under its own path, it would put both
    // forms on the owner and break it.
    wait_until(secs(30), POLL_INTERVAL, || async {
        groups_of_job(&nodes, job).await == vec![(owner.clone(), labels(&[("job", job)]))]
            && node(&nodes, &owner)
                .request(Method::GET, "/metrics", "")
                .await
                .body
                .contains(&format!("poison_value{{instance=\"\",job=\"{job}\"}} 2"))
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the group did not end up once, canonical, on {owner}:\n{}",
            gateway.log_text()
        )
    });
    assert_one_healthy_group(&nodes, &owner, job, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_poisoned_directly_is_reported_by_the_push_path_until_it_accepts_pushes_again() {
    let nodes = Pushgateway::start_many(2).await;
    let gateway = Gateway::start(&config("proxy", "rendezvous", &nodes)).await;
    wait_for_ring(&gateway, nodes.len()).await;
    let poisoned = &nodes[0];
    let addr = poisoned.addr();
    poison_directly(poisoned).await;
    let mut job = None;
    for i in 0..500 {
        let candidate = format!("victim{i}");
        if gateway.owner_of(&format!("/metrics/job/{candidate}")).await == addr {
            job = Some(candidate);
            break;
        }
    }
    let job = job.expect("a job owned by the poisoned node");
    let path = format!("/metrics/job/{job}");
    let push = || gateway.request(Method::PUT, &path, "b 1\n");

    // A push to an unrelated group is refused by the node: the gateway passes the 400 on and reports the node.
    let reply = push().await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let series = format!("dynamic_sharding_node_poisoned{{node=\"{addr}\"}}");
    let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    assert_eq!(metric_sum(&metrics, &series), 1.0, "{metrics}");
    assert_eq!(
        gateway.ring().await["outlier_detection"][&addr]["poisoned"],
        true
    );
    assert!(gateway
        .log_text()
        .lines()
        .any(|line| line.contains("level=warn")
            && line.contains(&addr)
            && line.contains("rejects every push")
            && line.contains("push_time_seconds")));

    // Deleting one of the two groups on the node cures it; the next push clears the report.
    assert_eq!(
        poisoned.delete("/metrics/job/p/instance@base64/=").await,
        StatusCode::ACCEPTED
    );
    let cured = wait_until(secs(10), POLL_INTERVAL, || async {
        push().await.status == StatusCode::OK
    })
    .await;
    assert!(
        cured.is_ok(),
        "the node accepts pushes once the colliding group is gone"
    );
    let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    assert_eq!(metric_sum(&metrics, &series), 0.0, "{metrics}");
    assert_eq!(
        gateway.ring().await["outlier_detection"][&addr]["poisoned"],
        false
    );
}
