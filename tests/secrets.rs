//! Credentials never leave the process: user info in addresses is refused, and with a Consul token, username and
//! password configured (real Consul agent, real Pushgateways, `--log.level=debug`), no endpoint body or header and
//! no log line shows any of them, whatever is requested (reads, pushes, reloads, errors).

mod common;

use base64::Engine;
use common::*;
use reqwest::{Method, StatusCode};

const USERNAME: &str = "ds-user-6c1e";
const PASSWORD: &str = "ds-pass-93fd0b";
const TOKEN: &str = "ds-token-5a2e71c4";

/// Every string that would reveal a credential.
fn secrets() -> Vec<String> {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USERNAME}:{PASSWORD}"));
    vec![USERNAME.into(), PASSWORD.into(), TOKEN.into(), basic]
}

fn assert_shows_no_secret(what: &str, text: &str) {
    for secret in secrets() {
        assert!(
            !text.contains(&secret),
            "{what} shows the credential {secret:?}:\n{text}"
        );
    }
}

fn config(consul: &Consul, nodes: &[&Pushgateway], addr_prefix: &str) -> String {
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.addr())).collect();
    format!(
        "consul_server:\n  addr: {addr_prefix}{}\n  username: {USERNAME}\n  password: {PASSWORD}\n  token: {TOKEN}\n  \
         register_service_name: pushgateway\n  check_interval: 1s\n  check_timeout: 500ms\n\
         pushgateway:\n  servers: [{}]\n",
        consul.addr(),
        servers.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_info_in_an_address_is_refused_with_a_message_naming_username_and_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("userinfo.yml");
    std::fs::write(
        &path,
        format!("consul_server:\n  addr: http://admin:{PASSWORD}@127.0.0.1:8500\n"),
    )
    .unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dynamic-sharding"));
    command
        .arg(format!("--config.file={}", path.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()))
        .arg("--log.level=debug");
    let mut gateway = ChildGuard::spawn("gateway-userinfo", command);
    wait_until(secs(30), POLL_INTERVAL, || {
        let exited = gateway.exit_status().is_some();
        async move { exited }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the gateway started with a password in its address: {e}\n{}",
            gateway.log_text()
        )
    });
    assert!(!gateway.exit_status().is_some_and(|status| status.success()));
    let log = gateway.log_text();
    assert!(
        log.contains("consul_server.username") && log.contains("consul_server.password"),
        "{log}"
    );
    assert!(!log.contains(PASSWORD), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoint_and_no_log_line_shows_a_credential() {
    let consul = Consul::start().await;
    let nodes = Pushgateway::start_many(2).await;
    let node_refs: Vec<&Pushgateway> = nodes.iter().collect();
    let good_config = config(&consul, &node_refs, "");
    let gateway = Gateway::start_with_args(
        &good_config,
        &["--web.enable-lifecycle", "--web.enable-admin-api"],
    )
    .await;
    wait_until(secs(30), POLL_INTERVAL, || async {
        gateway.ring().await["ring_nodes"]
            .as_array()
            .is_some_and(|nodes| nodes.len() == 2)
    })
    .await
    .unwrap_or_else(|e| panic!("ring never had both nodes: {e}\n{}", gateway.log_text()));

    let mut answers = Vec::new();
    let exercise = |method: Method, path: &'static str, body: &'static str| {
        let gateway = &gateway;
        async move {
            (
                method.clone(),
                path,
                gateway.request(method, path, body).await,
            )
        }
    };
    let requests: Vec<(Method, &'static str, &'static str)> = vec![
        (Method::GET, "/-/ring", ""),
        (Method::GET, "/-/metrics", ""),
        (Method::GET, "/-/sd", ""),
        (Method::GET, "/-/healthy", ""),
        (Method::GET, "/-/ready", ""),
        (Method::GET, "/test/v1", ""),
        (
            Method::PUT,
            "/metrics/job/secrets_test",
            "secrets_gauge 1\n",
        ),
        (
            Method::POST,
            "/metrics/job/secrets_test/instance/a",
            "secrets_gauge 2\n",
        ),
        (Method::GET, "/metrics/job/secrets_test", ""),
        (Method::GET, "/metrics", ""),
        (Method::GET, "/api/v1/metrics", ""),
        (Method::GET, "/api/v1/status", ""),
        (Method::DELETE, "/metrics/job/secrets_test/instance/a", ""),
        (Method::PUT, "/metrics/job/bad/@base64/!!", "x 1\n"),
        (
            Method::PUT,
            "/metrics/job/bad_body",
            "this is not { exposition\n",
        ),
        (Method::GET, "/no/such/route", ""),
        (Method::POST, "/-/reload", ""),
        (Method::PUT, "/api/v1/admin/wipe", ""),
    ];
    for (method, path, body) in requests {
        answers.push(exercise(method, path, body).await);
    }
    assert!(
        answers
            .iter()
            .any(|(_, path, reply)| *path == "/metrics/job/secrets_test"
                && reply.status == StatusCode::OK),
        "the push went through"
    );

    // A reload of a file with the password in the address is refused without repeating it; a good one works.
    std::fs::write(
        gateway.config_path(),
        config(
            &consul,
            &node_refs,
            &format!("http://{USERNAME}:{PASSWORD}@"),
        ),
    )
    .unwrap();
    let refused = gateway.request(Method::POST, "/-/reload", "").await;
    assert_ne!(refused.status, StatusCode::OK, "{}", refused.body);
    answers.push((Method::POST, "/-/reload (user info)", refused));
    std::fs::write(gateway.config_path(), &good_config).unwrap();
    gateway.signal("HUP");
    wait_until(secs(20), POLL_INTERVAL, || async {
        gateway.log_text().matches("configuration reloaded").count() >= 2
    })
    .await
    .expect("the good config is reloaded on SIGHUP");
    answers.push((
        Method::GET,
        "/-/ring (after reload)",
        gateway.request(Method::GET, "/-/ring", "").await,
    ));

    for (method, path, reply) in &answers {
        let headers: String = reply
            .headers
            .iter()
            .map(|(name, value)| format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())))
            .collect();
        assert_shows_no_secret(
            &format!("{method} {path} ({})", reply.status),
            &format!("{headers}\n{}", reply.body),
        );
    }
    let log = gateway.log_text();
    assert!(log.contains("level=debug"), "the log is at debug level");
    assert_shows_no_secret("the gateway's log", &log);
}
