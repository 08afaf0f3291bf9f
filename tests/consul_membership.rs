//! Consul membership against a real Consul agent and real Pushgateways: registration with checks, routing over
//! every passing instance, a Pushgateway leaving and rejoining, an empty passing list, an instance registered by
//! someone else, Consul going away and coming back empty, two replicas agreeing, https with a private CA, and the
//! leader lock.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};

const BODY: &str = "# TYPE some_gauge gauge\nsome_gauge 42\n";
/// `check_interval` used in these tests; the bound for leaving/rejoining is this plus 2 s.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A Consul-membership config registering `nodes`, with 1 s checks and no deregistration of critical services.
fn consul_config(consul_addr: &str, nodes: &[&Pushgateway], extra: &str) -> String {
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    format!(
        "consul_server:\n  addr: {consul_addr}\n  register_service_name: pushgateway\n  check_interval: 1s\n  \
         check_timeout: 500ms\n{extra}pushgateway:\n  servers: [{}]\n",
        servers.join(", ")
    )
}

/// The nodes in the gateway's current ring, sorted.
async fn ring_nodes(gateway: &Gateway) -> Vec<String> {
    let ring = gateway.ring().await;
    let mut nodes: Vec<String> = ring["ring_nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

fn sorted_addrs(nodes: &[&Pushgateway]) -> Vec<String> {
    let mut addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    addrs.sort();
    addrs
}

/// Waits until the gateway's ring is exactly `expected`; returns how long that took.
async fn wait_for_ring(gateway: &Gateway, expected: &[String], timeout: Duration) -> Duration {
    let started = Instant::now();
    wait_until(timeout, POLL_INTERVAL, || async {
        ring_nodes(gateway).await == expected
    })
    .await
    .unwrap_or_else(|error| {
        panic!(
            "ring never became {expected:?} ({error}); /-/ring: {}",
            gateway_log_tail(gateway)
        )
    });
    started.elapsed()
}

/// The gateway's log tail, for failure messages (the ring JSON needs an await, the log does not).
fn gateway_log_tail(gateway: &Gateway) -> String {
    let log = gateway.log_text();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The service IDs Consul reports as passing for `pushgateway`.
async fn passing_ids(consul: &Consul) -> Vec<String> {
    let entries = consul
        .get_json("/v1/health/service/pushgateway?passing=true")
        .await;
    let mut ids: Vec<String> = entries
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e["Service"]["ID"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn service_id(node: &Pushgateway) -> String {
    format!("127.0.0.1_{}", node.port())
}

fn metric_value(metrics_text: &str, name: &str) -> Option<f64> {
    metrics_text
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_every_server_with_a_check_and_routes_over_all_of_them() {
    let consul = Consul::start().await;
    let nodes = Pushgateway::start_many(3).await;
    let node_refs: Vec<&Pushgateway> = nodes.iter().collect();
    let gateway = Gateway::start(&consul_config(&consul.addr(), &node_refs, "")).await;

    let expected_ids: Vec<String> = {
        let mut ids: Vec<String> = nodes.iter().map(service_id).collect();
        ids.sort();
        ids
    };
    wait_until(secs(20), POLL_INTERVAL, || async {
        passing_ids(&consul).await == expected_ids
    })
    .await
    .expect("every configured Pushgateway registered and passing in Consul");
    let entries = consul.get_json("/v1/health/service/pushgateway").await;
    for entry in entries.as_array().expect("health entries") {
        let id = entry["Service"]["ID"].as_str().unwrap_or_default();
        let port = entry["Service"]["Port"].as_u64().unwrap_or_default();
        assert_eq!(entry["Service"]["Address"], "127.0.0.1", "{entry}");
        let check = entry["Checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["ServiceID"] == id))
            .unwrap_or_else(|| panic!("no service check for {id}: {entry}"));
        assert_eq!(check["Type"], "http", "{check}");
        assert_eq!(check["Status"], "passing", "{check}");
        let output = check["Output"].as_str().unwrap_or_default();
        assert!(
            output.contains(&format!("http://127.0.0.1:{port}/-/healthy")),
            "the check probes /-/healthy: {check}"
        );
    }

    wait_for_ring(&gateway, &sorted_addrs(&node_refs), secs(20)).await;
    for i in 0..30 {
        let reply = gateway
            .request(
                Method::PUT,
                &format!("/metrics/job/spread/instance/i{i}"),
                BODY,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "push {i}: {}", reply.body);
    }
    for node in &nodes {
        assert!(
            !node.groups().await.is_empty(),
            "node {} got none of 30 groups",
            node.addr()
        );
    }

    let ring = gateway.ring().await;
    assert_eq!(ring["membership"]["source"], "consul", "{ring}");
    let detail = &ring["membership"]["detail"];
    assert!(detail["last_index"].as_u64().unwrap_or(0) > 0, "{ring}");
    assert_eq!(detail["reachable"], true, "{ring}");
    assert!(detail["last_error"].is_null(), "{ring}");
    // The registrar counts a registration when the agent's answer arrives, which may be after the catalog shows it.
    let registrations = || async {
        let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
        metric_value(&metrics, "dynamic_sharding_consul_registrations_total").unwrap_or(0.0)
    };
    let counted = wait_until(secs(30), POLL_INTERVAL, || async {
        registrations().await >= 3.0
    })
    .await;
    let registered = registrations().await;
    assert!(
        registered >= 3.0,
        "{registered} registrations ({counted:?})"
    );
    let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    assert_eq!(
        metric_value(&metrics, "dynamic_sharding_consul_up"),
        Some(1.0)
    );
    assert!(metric_value(&metrics, "dynamic_sharding_consul_last_index").unwrap_or(0.0) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pushgateway_leaves_the_ring_and_rejoins_by_itself_when_restarted() {
    let consul = Consul::start().await;
    let mut nodes = Pushgateway::start_many(2).await;
    let gateway = {
        let node_refs: Vec<&Pushgateway> = nodes.iter().collect();
        Gateway::start(&consul_config(&consul.addr(), &node_refs, "")).await
    };
    let all = sorted_addrs(&nodes.iter().collect::<Vec<_>>());
    wait_for_ring(&gateway, &all, secs(20)).await;
    let bound = CHECK_INTERVAL + Duration::from_secs(2);

    nodes[0].kill();
    let survivor = vec![nodes[1].addr()];
    let left_after = wait_for_ring(&gateway, &survivor, secs(20)).await;
    eprintln!("killed Pushgateway left the ring after {left_after:?} (bound {bound:?})");
    assert!(
        left_after <= bound,
        "a SIGKILLed Pushgateway must leave within check_interval + 2s, took {left_after:?}"
    );
    // Not deregistered: the registration stays (critical) so the node can come back.
    let all_instances = consul.get_json("/v1/health/service/pushgateway").await;
    assert_eq!(
        all_instances.as_array().map(Vec::len),
        Some(2),
        "{all_instances}"
    );

    nodes[0].restart().await;
    let rejoined_after = wait_for_ring(&gateway, &all, secs(20)).await;
    eprintln!("restarted Pushgateway rejoined the ring after {rejoined_after:?} (bound {bound:?})");
    assert!(
        rejoined_after <= bound,
        "a restarted Pushgateway must rejoin within check_interval + 2s, took {rejoined_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_passing_instance_means_503_not_the_last_dead_list() {
    let consul = Consul::start().await;
    let mut node = Pushgateway::start().await;
    let gateway = Gateway::start(&consul_config(&consul.addr(), &[&node], "")).await;
    wait_for_ring(&gateway, &[node.addr()], secs(20)).await;
    let ready = gateway.request(Method::GET, "/-/ready", "").await;
    assert_eq!(ready.status, StatusCode::OK);

    node.kill();
    wait_for_ring(&gateway, &[], secs(20)).await;
    let push = gateway
        .request(Method::PUT, "/metrics/job/orphan", BODY)
        .await;
    assert_eq!(
        push.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        push.body
    );
    let ready = gateway.request(Method::GET, "/-/ready", "").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let ring = gateway.ring().await;
    assert_eq!(ring["membership"]["detail"]["reachable"], true, "{ring}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_registered_directly_in_consul_joins_the_ring() {
    let consul = Consul::start().await;
    let configured = Pushgateway::start().await;
    let foreign = Pushgateway::start().await;
    let gateway = Gateway::start(&consul_config(&consul.addr(), &[&configured], "")).await;
    wait_for_ring(&gateway, &[configured.addr()], secs(20)).await;

    // Registered by someone else, without Service.Address: the node's address (127.0.0.1) is used.
    let registration = serde_json::json!({
        "ID": "registered-elsewhere",
        "Name": "pushgateway",
        "Port": foreign.port(),
        "Check": {"HTTP": format!("{}/-/healthy", foreign.url()), "Interval": "1s", "Timeout": "500ms"},
    });
    consul.register_service(&registration).await;

    wait_for_ring(&gateway, &sorted_addrs(&[&configured, &foreign]), secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_down_keeps_the_last_ring_and_a_fresh_agent_gets_the_registrations_back() {
    let mut consul = Consul::start().await;
    let nodes = Pushgateway::start_many(2).await;
    let node_refs: Vec<&Pushgateway> = nodes.iter().collect();
    let gateway = Gateway::start(&consul_config(&consul.addr(), &node_refs, "")).await;
    let all = sorted_addrs(&node_refs);
    wait_for_ring(&gateway, &all, secs(20)).await;
    let ring_changes =
        |metrics: &str| metric_value(metrics, "dynamic_sharding_membership_changes_total");
    let changes_before = ring_changes(&gateway.request(Method::GET, "/-/metrics", "").await.body);
    assert!(changes_before.is_some());

    consul.kill();
    wait_until(secs(20), POLL_INTERVAL, || async {
        gateway.ring().await["membership"]["detail"]["reachable"] == false
    })
    .await
    .expect("the gateway notices that Consul is gone");
    let ring = gateway.ring().await;
    assert!(
        ring["membership"]["detail"]["last_error"].is_string(),
        "{ring}"
    );
    assert_eq!(ring_nodes(&gateway).await, all, "the last ring stays");
    // The status page says so, with the agent's address and the last error.
    let section = gateway.status_page_section("membership").await;
    assert!(
        section.starts_with(" data-source=\"consul\" data-state=\"failing\">")
            && section.contains("Consul unreachable")
            && section.contains(&consul.addr())
            && section.contains("<dt>last error</dt>"),
        "{section}"
    );
    let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    assert_eq!(
        metric_value(&metrics, "dynamic_sharding_consul_up"),
        Some(0.0)
    );
    assert_eq!(
        gateway.request(Method::GET, "/-/ready", "").await.status,
        StatusCode::OK,
        "ready while the last ring has nodes"
    );
    for i in 0..20 {
        let reply = gateway
            .request(
                Method::PUT,
                &format!("/metrics/job/during_outage/instance/i{i}"),
                BODY,
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "push {i} during the outage: {}",
            reply.body
        );
    }
    // Let a few retries fail, to show they are not logged one by one.
    tokio::time::sleep(Duration::from_secs(3)).await;

    consul.restart().await;
    let expected_ids: Vec<String> = {
        let mut ids: Vec<String> = nodes.iter().map(service_id).collect();
        ids.sort();
        ids
    };
    wait_until(secs(30), POLL_INTERVAL, || async {
        passing_ids(&consul).await == expected_ids
    })
    .await
    .expect("the fresh agent gets every registration back, passing");
    wait_until(secs(20), POLL_INTERVAL, || async {
        gateway.ring().await["membership"]["detail"]["reachable"] == true
    })
    .await
    .expect("the gateway reports Consul reachable again");
    wait_for_ring(&gateway, &all, secs(20)).await;
    let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    assert_eq!(
        metric_value(&metrics, "dynamic_sharding_consul_up"),
        Some(1.0)
    );
    // The fresh agent knew nothing at first; the gateway re-registered before trusting it, with checks starting
    // passing for nodes in the ring, so the ring never shrank (a shrink would move groups, and with rebalancing
    // on, drain nodes).
    assert_eq!(
        ring_changes(&metrics),
        changes_before,
        "the ring never changed across the Consul restart:\n{}",
        gateway.log_text()
    );

    let log = gateway.log_text();
    assert_eq!(
        log.matches("cannot query Consul; routing on the last known ring")
            .count(),
        1,
        "the outage is logged once, not per retry:\n{log}"
    );
    assert_eq!(log.matches("Consul is reachable again").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_replicas_sharing_consul_agree_on_every_owner() {
    let consul = Consul::start().await;
    let nodes = Pushgateway::start_many(3).await;
    let node_refs: Vec<&Pushgateway> = nodes.iter().collect();
    let config = consul_config(&consul.addr(), &node_refs, "");
    let first = Gateway::start(&config).await;
    // The second replica only watches: registrations by anyone are enough.
    let second = Gateway::start(&consul_config(&consul.addr(), &[], "  register: false\n")).await;
    let all = sorted_addrs(&node_refs);
    wait_for_ring(&first, &all, secs(20)).await;
    wait_for_ring(&second, &all, secs(20)).await;

    let mut owners_used = std::collections::BTreeSet::new();
    for i in 0..100 {
        let path = format!("/metrics/job/agree/instance/i{i}/zone/z{}", i % 7);
        let owner = first.owner_of(&path).await;
        assert_eq!(owner, second.owner_of(&path).await, "owner of {path}");
        owners_used.insert(owner);
    }
    assert_eq!(owners_used.len(), 3, "100 keys spread over every node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talks_https_to_consul_with_a_private_ca_and_a_client_certificate() {
    let tls_dir = tempfile::tempdir().expect("temp dir");
    let consul_bin = consul_binary();
    for args in [
        &["tls", "ca", "create"][..],
        &["tls", "cert", "create", "-server", "-dc", "dc1"][..],
        &["tls", "cert", "create", "-client", "-dc", "dc1"][..],
    ] {
        let status = Command::new(&consul_bin)
            .args(args)
            .current_dir(tls_dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run consul tls");
        assert!(status.success(), "consul {args:?} failed");
    }
    let file = |name: &str| tls_dir.path().join(name).display().to_string();
    let (http_port, https_port) = (free_port(), free_port());
    let agent_config = tls_dir.path().join("agent.hcl");
    std::fs::write(
        &agent_config,
        format!(
            "ports {{ https = {https_port} }}\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             verify_incoming_https = true\n",
            file("consul-agent-ca.pem"),
            file("dc1-server-consul-0.pem"),
            file("dc1-server-consul-0-key.pem"),
        ),
    )
    .expect("write agent config");
    let mut command = Consul::dev_agent_command(http_port);
    command.arg(format!("-config-file={}", agent_config.display()));
    let _agent = ChildGuard::spawn("consul-tls", command);
    let plain = http_client();
    wait_until(STARTUP_TIMEOUT, POLL_INTERVAL, || async {
        match send(
            &plain,
            Method::GET,
            &format!("http://127.0.0.1:{http_port}/v1/status/leader"),
            "",
        )
        .await
        {
            Ok(reply) => {
                reply.status == StatusCode::OK && !reply.body.trim().trim_matches('"').is_empty()
            }
            Err(_) => false,
        }
    })
    .await
    .expect("TLS Consul agent elected itself");

    let node = Pushgateway::start().await;
    let extra = format!(
        "  scheme: https\n  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
        file("consul-agent-ca.pem"),
        file("dc1-client-consul-0.pem"),
        file("dc1-client-consul-0-key.pem"),
    );
    let gateway = Gateway::start(&consul_config(
        &format!("127.0.0.1:{https_port}"),
        &[&node],
        &extra,
    ))
    .await;
    wait_for_ring(&gateway, &[node.addr()], secs(30)).await;
    let ring = gateway.ring().await;
    assert_eq!(
        ring["membership"]["detail"]["consul"],
        format!("https://127.0.0.1:{https_port}"),
        "{ring}"
    );

    // Without the client certificate the agent (verify_incoming_https) refuses us: the certificate was used.
    let no_client_cert = format!(
        "  scheme: https\n  tls:\n    ca_file: {}\n",
        file("consul-agent-ca.pem")
    );
    let refused = Gateway::start(&consul_config(
        &format!("127.0.0.1:{https_port}"),
        &[&node],
        &no_client_cert,
    ))
    .await;
    wait_until(secs(20), POLL_INTERVAL, || async {
        refused.ring().await["membership"]["detail"]["last_error"].is_string()
    })
    .await
    .expect("a gateway without the client certificate reports an error");
    assert!(ring_nodes(&refused).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_has_one_leader_and_fails_over_when_it_stops() {
    use dynamic_sharding::config::Config;
    use dynamic_sharding::consul::leader::spawn_leader_election;
    use dynamic_sharding::consul::ConsulClient;
    use dynamic_sharding::shutdown;

    let consul = Consul::start().await;
    let config =
        Config::parse(&format!("consul_server: {{addr: '{}'}}", consul.addr())).expect("config");
    let consul_config = config.consul().expect("consul section").clone();
    let key = "dynamic-sharding/leader".to_string();
    let (stop_a, shutdown_a) = shutdown::channel();
    let (stop_b, shutdown_b) = shutdown::channel();
    let a = spawn_leader_election(
        ConsulClient::new(&consul_config).expect("client"),
        key.clone(),
        shutdown_a,
    );
    let b = spawn_leader_election(
        ConsulClient::new(&consul_config).expect("client"),
        key.clone(),
        shutdown_b,
    );
    wait_until(secs(20), POLL_INTERVAL, || async {
        *a.borrow() || *b.borrow()
    })
    .await
    .expect("one elector becomes leader");
    // Watch for a while: never two leaders, and the leadership does not flap.
    let first_leader_is_a = *a.borrow();
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        assert!(!(*a.borrow() && *b.borrow()), "two leaders at once");
        assert_eq!(*a.borrow(), first_leader_is_a, "leadership flapped");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let lock = consul.get_json(&format!("/v1/kv/{key}")).await;
    assert!(lock[0]["Session"].is_string(), "the key is locked: {lock}");

    let (stop_leader, follower) = if first_leader_is_a {
        (stop_a, b.clone())
    } else {
        (stop_b, a.clone())
    };
    let stopped_at = Instant::now();
    stop_leader.trigger();
    wait_until(secs(30), POLL_INTERVAL, || async { *follower.borrow() })
        .await
        .expect("the other elector takes over after the leader stops");
    eprintln!("failover took {:?}", stopped_at.elapsed());
    let old_leader = if first_leader_is_a { &a } else { &b };
    assert!(
        !*old_leader.borrow(),
        "the stopped elector is no longer leader"
    );
}
