//! The gateway towards Pushgateways that require TLS and basic auth (`pushgateway.scheme: https`, `tls_config`,
//! `basic_auth`): real Pushgateways 1.5.1 started with their own `--web.config.file`, certificates and bcrypt hashes
//! made at test time (`tests/common/tls.rs`); one test also has a real Consul agent run the registered checks.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::tls::{Pki, SecurePushgateway, USERNAME};
use common::*;
use reqwest::{Method, StatusCode};

fn servers(nodes: &[&SecurePushgateway]) -> String {
    let list: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    format!("[{}]", list.join(", "))
}

/// Proxy mode over `nodes` with quick probes; `extra` is appended (top-level keys).
fn config(pki: &Pki, nodes: &[&SecurePushgateway], password: &str, extra: &str) -> String {
    format!(
        "mode: proxy\npushgateway:\n  servers: {}\n{}health_check: {{interval: 500ms, timeout: 500ms, \
         unhealthy_threshold: 1, healthy_threshold: 1}}\n{extra}",
        servers(nodes),
        pki.upstream_yaml(password, None),
    )
}

async fn wait_ring(gateway: &Gateway, size: usize) {
    wait_until(secs(30), POLL_INTERVAL, || async {
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

/// The `/-/ring` entry of `node` (its `nodes[]` element); `null` before the first probe round is published.
async fn ring_entry(gateway: &Gateway, node: &str) -> serde_json::Value {
    let ring = gateway.ring().await;
    ring["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == node))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_probes_and_reads_reach_tls_nodes_with_basic_auth() {
    let pki = Pki::generate();
    let a = SecurePushgateway::start(&pki).await;
    let b = SecurePushgateway::start(&pki).await;
    for per_node_pool in [true, false] {
        let gateway = Gateway::start(&config(
            &pki,
            &[&a, &b],
            &pki.password,
            &format!("proxy: {{per_node_pool: {per_node_pool}}}\nrebalance: {{enabled: false}}\n"),
        ))
        .await;
        // Probes over TLS with credentials keep both nodes healthy.
        wait_ring(&gateway, 2).await;
        let mut owners = std::collections::BTreeSet::new();
        for i in 0..12 {
            let path = format!("/metrics/job/tls_{per_node_pool}_{i}");
            let reply = gateway
                .request(Method::PUT, &path, &format!("tls_push{{n=\"{i}\"}} {i}\n"))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "PUT {path}: {}", reply.body);
            let owner = reply
                .header("x-dynamic-sharding-node")
                .unwrap_or_else(|| panic!("no node header on {path}"));
            let node = if owner == a.addr() { &a } else { &b };
            assert!(
                node.metrics_text(&pki)
                    .await
                    .contains(&format!("job=\"tls_{per_node_pool}_{i}\"")),
                "{path} not on its node {owner}"
            );
            owners.insert(owner);
        }
        assert_eq!(
            owners.len(),
            2,
            "12 groups all landed on one node: {owners:?}"
        );

        // Reads fan out over TLS with credentials: the merged /metrics holds every group of both nodes.
        let merged = gateway.request(Method::GET, "/metrics", "").await;
        assert_eq!(merged.status, StatusCode::OK, "{}", merged.body);
        for i in 0..12 {
            assert!(
                merged
                    .body
                    .contains(&format!("job=\"tls_{per_node_pool}_{i}\"")),
                "merged /metrics lacks tls_{per_node_pool}_{i}:\n{}",
                merged.body
            );
        }
        assert!(
            merged.header("x-dynamic-sharding-missing-nodes").is_none(),
            "a node failed the read: {:?}",
            merged.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_authorization_header_is_replaced_by_the_gateways() {
    let pki = Pki::generate();
    let node = SecurePushgateway::start(&pki).await;
    for per_node_pool in [true, false] {
        let gateway = Gateway::start(&config(
            &pki,
            &[&node],
            &pki.password,
            &format!("proxy: {{per_node_pool: {per_node_pool}}}\n"),
        ))
        .await;
        wait_ring(&gateway, 1).await;
        let job = format!("with_client_auth_{per_node_pool}");
        // Forwarded as it came, this header would get the node's 401.
        let reply = http_client()
            .put(format!("{}/metrics/job/{job}", gateway.url()))
            .basic_auth("someone", Some("else"))
            .body("client_auth 1\n")
            .send()
            .await
            .expect("push through the gateway");
        assert_eq!(
            reply.status(),
            StatusCode::OK,
            "per_node_pool: {per_node_pool}"
        );
        assert!(node
            .metrics_text(&pki)
            .await
            .contains(&format!("job=\"{job}\"")));
    }
}

/// A plain TCP relay in front of `upstream` that counts the connections it accepted: TLS passes through it
/// untouched (the certificate is for 127.0.0.1, as the relay's address is).
async fn counting_relay(
    upstream: String,
) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the relay");
    let addr = listener.local_addr().expect("relay address").to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, accepted, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_node_pool_keeps_tls_connections_alive() {
    let pki = Pki::generate();
    let node = SecurePushgateway::start(&pki).await;
    let (relay, accepted, relay_task) = counting_relay(node.addr()).await;
    // Probes so rare that only pushes open connections during the test.
    let gateway = Gateway::start(
        &config(&pki, &[&node], &pki.password, "")
            .replace(&node.addr(), &relay)
            .replace(
                "interval: 500ms, timeout: 500ms",
                "interval: 1m, timeout: 2s",
            ),
    )
    .await;
    wait_ring(&gateway, 1).await;
    let before = accepted.load(Ordering::SeqCst);
    for i in 0..30 {
        let status = gateway
            .request(Method::PUT, &format!("/metrics/job/reuse_{i}"), "reuse 1\n")
            .await
            .status;
        assert_eq!(status, StatusCode::OK);
    }
    let opened = accepted.load(Ordering::SeqCst) - before;
    relay_task.abort();
    // One TLS handshake per push would be 30 connections.
    assert!(
        opened <= 2,
        "30 sequential pushes opened {opened} connections to the node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_password_file_again() {
    let pki = Pki::generate();
    let node = SecurePushgateway::start(&pki).await;
    let password_file = pki.write("password", "not-the-password\n");
    let yaml = format!(
        "mode: proxy\npushgateway:\n  servers: {}\n{}health_check: {{interval: 500ms, timeout: 500ms, \
         unhealthy_threshold: 1, healthy_threshold: 1}}\n",
        servers(&[&node]),
        pki.upstream_yaml("", Some(&password_file)),
    );
    let gateway = Gateway::start(&yaml).await;
    let refused = wait_until(secs(30), POLL_INTERVAL, || async {
        let entry = ring_entry(&gateway, &node.addr()).await;
        entry["healthy"] == false
            && entry["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("401"))
    })
    .await;
    if let Err(e) = refused {
        panic!(
            "the wrong password was accepted: {e}\n{}",
            gateway.ring().await
        );
    }
    pki.write("password", &format!("{}\n", pki.password));
    gateway.signal("HUP");
    wait_ring(&gateway, 1).await;
    assert_eq!(
        gateway
            .request(Method::PUT, "/metrics/job/after_reload", "x 1\n")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_and_insecure_skip_verify() {
    let pki = Pki::generate();
    let node = SecurePushgateway::start(&pki).await;
    let ca = pki.ca_file().display().to_string();
    let other_ca = pki.other_ca_file().display().to_string();
    let base = config(&pki, &[&node], &pki.password, "");
    // (tls_config, whether the node is reachable, the error otherwise): the certificate is for 127.0.0.1 and
    // localhost, signed by `ca`.
    let cases = [
        (
            format!("{{ca_file: '{ca}', server_name: localhost}}"),
            true,
            "",
        ),
        (
            format!("{{ca_file: '{ca}', server_name: pgw.example}}"),
            false,
            "not valid for name",
        ),
        (
            format!("{{ca_file: '{other_ca}', insecure_skip_verify: true}}"),
            true,
            "",
        ),
    ];
    for (tls_config, reachable, error) in cases {
        let yaml = base.replace(
            &format!("tls_config: {{ca_file: '{ca}'}}"),
            &format!("tls_config: {tls_config}"),
        );
        assert!(yaml.contains(&tls_config), "{yaml}");
        let gateway = Gateway::start(&yaml).await;
        let settled = wait_until(secs(30), POLL_INTERVAL, || async {
            let entry = ring_entry(&gateway, &node.addr()).await;
            entry["healthy"] == reachable
                && (reachable
                    || entry["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains(error)))
        })
        .await;
        if let Err(e) = settled {
            panic!(
                "{tls_config}: expected reachable={reachable}: {e}\n{}",
                gateway.ring().await
            );
        }
        if reachable {
            // Healthy in the membership snapshot comes a moment before the ring builder puts it in the ring.
            wait_ring(&gateway, 1).await;
            let status = gateway
                .request(Method::PUT, "/metrics/job/named", "named 1\n")
                .await
                .status;
            assert_eq!(status, StatusCode::OK, "{tls_config}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_moves_groups_between_tls_nodes() {
    let pki = Pki::generate();
    let a = SecurePushgateway::start(&pki).await;
    let b = SecurePushgateway::start(&pki).await;
    let rebalance = "rebalance: {enabled: true, interval: 1s}\n";
    let gateway = Gateway::start(&config(&pki, &[&a], &pki.password, rebalance)).await;
    wait_ring(&gateway, 1).await;
    let paths: Vec<String> = (0..16).map(|i| format!("/metrics/job/move_{i}")).collect();
    for (i, path) in paths.iter().enumerate() {
        let status = gateway
            .request(Method::PUT, path, &format!("moved_metric {i}\n"))
            .await
            .status;
        assert_eq!(status, StatusCode::OK, "PUT {path}");
    }
    std::fs::write(
        gateway.config_path(),
        config(&pki, &[&a, &b], &pki.password, rebalance),
    )
    .expect("rewrite config");
    gateway.signal("HUP");
    wait_ring(&gateway, 2).await;

    let mut owners = Vec::new();
    for path in &paths {
        owners.push(gateway.owner_of(path).await);
    }
    let moved = owners.iter().filter(|o| **o == b.addr()).count();
    assert!(moved > 0, "no group belongs to the new node: {owners:?}");
    // Each group ends on exactly its owner: copied over TLS to b, deleted over TLS from a.
    wait_until(secs(60), POLL_INTERVAL * 4, || async {
        let on_a = a.metrics_text(&pki).await;
        let on_b = b.metrics_text(&pki).await;
        paths.iter().zip(&owners).all(|(path, owner)| {
            // With the closing brace: `job="move_1"` alone would also match `move_10`.
            let job = format!("job=\"{}\"}}", path.trim_start_matches("/metrics/job/"));
            let (owner_text, other_text) = if *owner == b.addr() {
                (&on_b, &on_a)
            } else {
                (&on_a, &on_b)
            };
            let holds_metric = owner_text
                .lines()
                .any(|line| line.starts_with("moved_metric{") && line.contains(&job));
            holds_metric && !other_text.contains(&job)
        })
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "groups never settled on their owners: {e}\n{}",
            gateway.log_text()
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_mode_sends_clients_to_https_nodes() {
    let pki = Pki::generate();
    let node = SecurePushgateway::start(&pki).await;
    let gateway = Gateway::start(
        &config(&pki, &[&node], &pki.password, "").replace("mode: proxy", "mode: redirect"),
    )
    .await;
    wait_ring(&gateway, 1).await;
    let path = "/metrics/job/redirected/instance/i1";
    let reply = gateway.request(Method::PUT, path, "redirected 1\n").await;
    assert_eq!(
        reply.status,
        StatusCode::TEMPORARY_REDIRECT,
        "{}",
        reply.body
    );
    let location = reply.header("location").expect("a Location header");
    assert_eq!(location, format!("{}{path}", node.url()));

    let lookup = gateway.request(Method::GET, path, "").await;
    assert_eq!(lookup.body, format!("nextUrl:{}{path}", node.url()));

    // The client then talks to the node itself, so it needs the node's credentials too (README).
    let without = pki
        .client()
        .put(&location)
        .body("redirected 1\n")
        .send()
        .await
        .expect("PUT to the Location");
    assert_eq!(without.status(), StatusCode::UNAUTHORIZED);
    let with = pki
        .client()
        .put(&location)
        .basic_auth(USERNAME, Some(&pki.password))
        .body("redirected 1\n")
        .send()
        .await
        .expect("PUT to the Location");
    assert_eq!(with.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_shows_the_nodes_401_and_the_node_leaves_the_ring() {
    let pki = Pki::generate();
    let node = SecurePushgateway::start(&pki).await;
    let wrong = format!("{}-wrong", pki.password);
    let gateway = Gateway::start(&config(&pki, &[&node], &wrong, "")).await;
    let settled = wait_until(secs(30), POLL_INTERVAL, || async {
        let entry = ring_entry(&gateway, &node.addr()).await;
        entry["healthy"] == false
            && entry["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("401"))
    })
    .await;
    if let Err(e) = settled {
        panic!(
            "node never unhealthy with a 401: {e}\n{}",
            gateway.ring().await
        );
    }
    let log = gateway.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("401") && l.contains(&node.addr())),
        "no log line names the node's 401:\n{log}"
    );
    let push = gateway
        .request(Method::PUT, "/metrics/job/j", "x 1\n")
        .await;
    assert_eq!(
        push.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        push.body
    );
    for output in [gateway.log_text(), gateway.ring().await.to_string()] {
        assert!(
            !output.contains(&wrong),
            "the wrong password leaked:\n{output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_does_not_match_is_a_clear_tls_error() {
    let pki = Pki::generate();
    let node = SecurePushgateway::start(&pki).await;
    let yaml = config(&pki, &[&node], &pki.password, "").replace(
        &pki.ca_file().display().to_string(),
        &pki.other_ca_file().display().to_string(),
    );
    let gateway = Gateway::start(&yaml).await;
    let settled = wait_until(secs(30), POLL_INTERVAL, || async {
        let entry = ring_entry(&gateway, &node.addr()).await;
        entry["healthy"] == false
            && entry["last_error"].as_str().is_some_and(|e| {
                e.contains("UnknownIssuer") && e.contains("pushgateway.tls_config")
            })
    })
    .await;
    if let Err(e) = settled {
        panic!("no TLS error on the node: {e}\n{}", gateway.ring().await);
    }
    assert!(
        gateway.log_text().contains("UnknownIssuer"),
        "the TLS error is not logged:\n{}",
        gateway.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_discovers_the_tls_nodes_through_sd_and_scrapes_them() {
    let pki = Pki::generate();
    let a = SecurePushgateway::start(&pki).await;
    let b = SecurePushgateway::start(&pki).await;
    let gateway = Gateway::start(&config(&pki, &[&a, &b], &pki.password, "")).await;
    wait_ring(&gateway, 2).await;
    let sd = gateway.request(Method::GET, "/-/sd", "").await;
    let groups: serde_json::Value = serde_json::from_str(&sd.body).expect("/-/sd is JSON");
    let groups = groups.as_array().expect("/-/sd is an array");
    assert_eq!(groups.len(), 2, "{}", sd.body);
    for group in groups {
        assert_eq!(group["labels"]["__scheme__"], "https", "{}", sd.body);
    }
    let status = gateway
        .request(
            Method::PUT,
            "/metrics/job/scraped_over_tls",
            "tls_scraped 42\n",
        )
        .await
        .status;
    assert_eq!(status, StatusCode::OK);

    // No `scheme:` in the scrape config: it comes from `__scheme__`.
    let prometheus = Prometheus::start(&format!(
        "- job_name: pushgateways\n  honor_labels: true\n  tls_config: {{ca_file: '{}'}}\n  \
         basic_auth: {{username: {USERNAME}, password: '{}'}}\n  http_sd_configs:\n    \
         - url: {}/-/sd\n      refresh_interval: 1s\n",
        pki.ca_file().display(),
        pki.password,
        gateway.url(),
    ))
    .await;
    let scraped = wait_until(secs(60), POLL_INTERVAL * 10, || async {
        prometheus
            .query("tls_scraped{job=\"scraped_over_tls\"}")
            .await
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["value"][1] == "42")
    })
    .await;
    if let Err(e) = scraped {
        panic!(
            "Prometheus never scraped the pushed metric over TLS: {e}\n{}",
            prometheus.targets().await
        );
    }
    let targets = prometheus.targets().await;
    for target in targets.as_array().expect("targets") {
        let url = target["scrapeUrl"].as_str().unwrap_or_default();
        assert!(url.starts_with("https://"), "scraped over {url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_appears_in_no_gateway_output() {
    let pki = Pki::generate();
    let a = SecurePushgateway::start(&pki).await;
    let b = SecurePushgateway::start(&pki).await;
    let password_file = pki.write("password", &format!("{}\n", pki.password));
    let yaml = |nodes: &[&SecurePushgateway]| {
        format!(
            "mode: proxy\npushgateway:\n  servers: {}\n{}health_check: {{interval: 500ms, timeout: 500ms}}\n\
             rebalance: {{interval: 1s}}\n",
            servers(nodes),
            pki.upstream_yaml("", Some(&password_file)),
        )
    };
    let gateway = Gateway::start(&yaml(&[&a])).await;
    wait_ring(&gateway, 1).await;
    for i in 0..6 {
        let path = format!("/metrics/job/leak_{i}");
        assert_eq!(
            gateway.request(Method::PUT, &path, "leak 1\n").await.status,
            StatusCode::OK
        );
        gateway.request(Method::GET, &path, "").await;
    }
    // A reload re-reads the password file and adds a node: probes, reads and a rebalance pass with it.
    std::fs::write(gateway.config_path(), yaml(&[&a, &b])).expect("rewrite config");
    gateway.signal("HUP");
    wait_ring(&gateway, 2).await;
    gateway.request(Method::GET, "/metrics", "").await;
    gateway.request(Method::GET, "/api/v1/metrics", "").await;

    use base64::Engine as _;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{USERNAME}:{}", pki.password));
    let mut outputs = vec![("log (debug)", gateway.log_text())];
    for path in [
        "/-/ring",
        "/-/metrics",
        "/-/sd",
        "/metrics",
        "/api/v1/status",
    ] {
        outputs.push((path, gateway.request(Method::GET, path, "").await.body));
    }
    for (name, output) in outputs {
        assert!(!output.is_empty(), "{name} is empty");
        assert!(
            !output.contains(&pki.password),
            "{name} shows the password:\n{output}"
        );
        assert!(
            !output.contains(&encoded),
            "{name} shows the Authorization value:\n{output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_checks_reach_tls_nodes_with_the_gateways_credentials() {
    let pki = Pki::generate();
    let node = SecurePushgateway::start(&pki).await;
    let consul = Consul::start().await;
    // Consul verifies with its own CA settings (a dev agent: the system roots), so it is told to skip
    // verification; the gateway itself is too, to keep one config.
    let yaml = format!(
        "consul_server:\n  addr: {}\n  register_service_name: pushgateway\n  check_interval: 1s\n  \
         check_timeout: 500ms\npushgateway:\n  servers: {}\n  scheme: https\n  \
         tls_config: {{insecure_skip_verify: true}}\n  basic_auth: {{username: {USERNAME}, password: '{}'}}\n",
        consul.addr(),
        servers(&[&node]),
        pki.password,
    );
    let gateway = Gateway::start(&yaml).await;
    let id = node.addr().replace(':', "_");
    // The check is only passing if Consul spoke TLS to the node and sent the credentials.
    let passing = wait_until(secs(60), POLL_INTERVAL * 4, || async {
        let checks = consul.get_json("/v1/health/service/pushgateway").await;
        checks.as_array().is_some_and(|entries| {
            entries.iter().any(|entry| {
                entry["Service"]["ID"] == id.as_str()
                    && entry["Checks"].as_array().is_some_and(|checks| {
                        checks
                            .iter()
                            .filter(|c| c["ServiceID"] == id.as_str())
                            .all(|c| {
                                c["Status"] == "passing"
                                    && c["Output"].as_str().is_some_and(|o| o.contains("200"))
                            })
                    })
            })
        })
    })
    .await;
    if let Err(e) = passing {
        panic!(
            "the Consul check never passed: {e}\n{}",
            consul.get_json("/v1/health/service/pushgateway").await
        );
    }
    wait_ring(&gateway, 1).await;
    let status = gateway
        .request(Method::PUT, "/metrics/job/via_consul", "via_consul 1\n")
        .await
        .status;
    assert_eq!(status, StatusCode::OK);
    let checks = consul.get_json("/v1/agent/checks").await.to_string();
    assert!(checks.contains("https://"), "{checks}");
}
