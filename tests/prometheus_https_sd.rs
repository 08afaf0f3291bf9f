//! A real Prometheus finding the Pushgateways through the gateway's `/-/sd` over https with basic auth, and
//! scraping the nodes over https with their own basic auth: the gateway's listener has `--web.config.file` (TLS,
//! `basic_auth_users`, `authorization`), the Pushgateways 1.5.1 their own `--web.config.file`, and the gateway
//! reaches them with `pushgateway.scheme: https`, `tls_config` and `basic_auth`. Certificates and hashes are made
//! at test time (`tests/common/tls.rs`).

mod common;

use common::tls::{bcrypt, python_https_as, Pki, SecureGateway, SecurePushgateway, USERNAME};
use common::{secs, wait_until, Prometheus, PythonPushOp, POLL_INTERVAL};
use reqwest::{Method, StatusCode};

/// Prometheus' user on the gateway: not in `authorization.users`, so it may only read, which is all SD needs.
const PROMETHEUS_USER: &str = "prometheus";
/// A user of the gateway that pushes; the nodes' own user is `pusher` ([`USERNAME`]), known only to the gateway
/// and to Prometheus.
const TEAM: &str = "team-a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_discovers_nodes_through_https_sd_with_basic_auth_and_scrapes_them_over_https() {
    let pki = Pki::generate();
    let a = SecurePushgateway::start(&pki).await;
    let b = SecurePushgateway::start(&pki).await;
    let prometheus_password = format!("{}-prometheus", pki.password);
    let team_password = format!("{}-team", pki.password);
    let web_yaml = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  {USERNAME}: '{}'\n  \
         {PROMETHEUS_USER}: '{}'\n  {TEAM}: '{}'\n",
        pki.path("server.crt").display(),
        pki.path("server.key").display(),
        pki.hash,
        bcrypt(&prometheus_password),
        bcrypt(&team_password),
    );
    let config_yaml = format!(
        "pushgateway:\n  servers: ['{}', '{}']\n{}health_check: {{interval: 300ms, timeout: 300ms, \
         healthy_threshold: 1}}\nrebalance: {{enabled: false}}\n\
         authorization:\n  users:\n    {TEAM}: {{push_jobs: 'team_a_.*'}}\n",
        a.addr(),
        b.addr(),
        pki.upstream_yaml(&pki.password, None),
    );
    let gateway = SecureGateway::start(&pki, &config_yaml, &web_yaml, false).await;
    let client = pki.client();
    let sd = || async {
        let response = client
            .get(format!("{}/-/sd", gateway.url()))
            .basic_auth(PROMETHEUS_USER, Some(&prometheus_password))
            .send()
            .await
            .expect("GET /-/sd");
        assert_eq!(response.status(), StatusCode::OK);
        let groups: serde_json::Value = response.json().await.expect("/-/sd is JSON");
        groups
    };
    wait_until(secs(30), POLL_INTERVAL, || async {
        sd().await.as_array().is_some_and(|g| g.len() == 2)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "both TLS nodes never joined the ring: {e}\n{}",
            gateway.log_text()
        )
    });
    for group in sd().await.as_array().into_iter().flatten() {
        assert_eq!(group["labels"]["__scheme__"], "https", "{group}");
    }
    // Without credentials /-/sd is refused like every endpoint.
    let anonymous = client
        .get(format!("{}/-/sd", gateway.url()))
        .send()
        .await
        .expect("GET /-/sd");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // One group through Python's prometheus_client, one through raw HTTP (whose answer names the node).
    python_https_as(
        &pki,
        &gateway.url(),
        (TEAM, &team_password),
        "team_a_python",
        PythonPushOp::Push(7.0),
    )
    .await
    .expect("team-a pushes team_a_python over https");
    let pushed = client
        .request(
            Method::PUT,
            format!("{}/metrics/job/team_a_raw", gateway.url()),
        )
        .basic_auth(TEAM, Some(&team_password))
        // Typed like Python's gauge: the node may hold both groups, and a Pushgateway refuses a type clash.
        .body("# TYPE python_https_gauge gauge\npython_https_gauge 9\n")
        .send()
        .await
        .expect("PUT /metrics/job/team_a_raw");
    assert_eq!(pushed.status(), StatusCode::OK);
    let raw_owner = pushed
        .headers()
        .get("x-dynamic-sharding-node")
        .and_then(|v| v.to_str().ok())
        .expect("the node header")
        .to_string();

    // The gateway's credentials (SD) and the nodes' (scrapes) differ; both come from files, as in production.
    let sd_password = pki.write("prometheus-sd.password", &prometheus_password);
    let node_password = pki.write("pushgateway.password", &pki.password);
    let wrong_password = pki.write("wrong.password", "not-the-password");
    let ca = pki.ca_file();
    // No `scheme:` in the scrape config: the nodes' scheme comes from `__scheme__`.
    let scrape = |job: &str, sd_password_file: &std::path::Path| {
        format!(
            "- job_name: {job}\n  honor_labels: true\n  tls_config: {{ca_file: '{ca}'}}\n  \
             basic_auth: {{username: {USERNAME}, password_file: '{node}'}}\n  http_sd_configs:\n    \
             - url: {url}/-/sd\n      refresh_interval: 1s\n      tls_config: {{ca_file: '{ca}'}}\n      \
             basic_auth: {{username: {PROMETHEUS_USER}, password_file: '{sd}'}}\n  relabel_configs:\n    \
             - source_labels: [__meta_dynamic_sharding_node]\n      target_label: pushgateway_node\n",
            ca = ca.display(),
            node = node_password.display(),
            url = gateway.url(),
            sd = sd_password_file.display(),
        )
    };
    let prometheus = Prometheus::start(&format!(
        "{}{}",
        scrape("pushgateways", &sd_password),
        scrape("wrong_sd_password", &wrong_password)
    ))
    .await;

    let scraped = wait_until(secs(60), POLL_INTERVAL * 10, || async {
        prometheus
            .query("python_https_gauge")
            .await
            .as_array()
            .is_some_and(|r| r.len() == 2)
    })
    .await;
    if let Err(e) = scraped {
        panic!(
            "Prometheus never scraped both pushed groups over https: {e}\n{}\n{}",
            prometheus.targets().await,
            prometheus.log_text()
        );
    }
    let mut values = std::collections::BTreeMap::new();
    for series in prometheus
        .query("python_https_gauge")
        .await
        .as_array()
        .into_iter()
        .flatten()
    {
        let job = series["metric"]["job"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let node = series["metric"]["pushgateway_node"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        values.insert(job, (series["value"][1].clone(), node));
    }
    assert_eq!(values["team_a_python"].0, "7");
    assert_eq!(values["team_a_raw"].0, "9");
    assert_eq!(
        values["team_a_raw"].1, raw_owner,
        "scraped from the node the push went to"
    );

    let targets = prometheus.targets().await;
    let targets = targets.as_array().expect("activeTargets");
    assert_eq!(
        targets.len(),
        2,
        "only the job with the right SD password found targets: {targets:?}"
    );
    for target in targets {
        assert_eq!(target["labels"]["job"], "pushgateways");
        assert_eq!(
            target["discoveredLabels"]["__scheme__"], "https",
            "{target}"
        );
        assert!(
            target["scrapeUrl"]
                .as_str()
                .is_some_and(|u| u.starts_with("https://127.0.0.1:")),
            "{target}"
        );
    }
    let up = wait_until(secs(30), POLL_INTERVAL * 10, || async {
        prometheus
            .query("up{job=\"pushgateways\"} == 1")
            .await
            .as_array()
            .is_some_and(|r| r.len() == 2)
    })
    .await;
    assert!(
        up.is_ok(),
        "both node targets up: {}",
        prometheus.targets().await
    );
    // The job with the wrong SD password is refused by the gateway: Prometheus says so and finds nothing.
    wait_until(secs(30), POLL_INTERVAL * 10, || async {
        prometheus.log_text().contains("401 Unauthorized")
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "no 401 for the wrong SD password: {e}\n{}",
            prometheus.log_text()
        )
    });

    // Prometheus only read: no authorization refusal, and no credential in the gateway's log.
    let log = gateway.log_text();
    assert!(!log.contains("request refused by authorization"), "{log}");
    for password in [&pki.password, &prometheus_password, &team_password] {
        assert!(
            !log.contains(password.as_str()),
            "a password is in the gateway's log"
        );
    }
}
