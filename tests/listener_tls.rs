//! The gateway's own listener with `--web.config.file` (exporter-toolkit format): TLS, client certificates,
//! basic auth, response headers, certificate rotation and refused files. Real Pushgateways 1.5.1 behind it;
//! certificates and bcrypt hashes are made at test time (`tests/common/tls.rs`).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::fault_proxy::FaultProxy;
use common::tls::{bcrypt, gateway_command, python_push_https, Pki, SecureGateway, USERNAME};
use common::*;
use reqwest::StatusCode;

fn proxy_config(nodes: &[String], extra: &str) -> String {
    let list: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "mode: proxy\npushgateway:\n  servers: [{}]\n{extra}health_check: {{interval: 500ms, timeout: 500ms, \
         unhealthy_threshold: 1, healthy_threshold: 1}}\n",
        list.join(", ")
    )
}

/// TLS with the test server certificate, the test user, and one response header.
fn web_yaml(pki: &Pki, tls_extra: &str) -> String {
    format!(
        "tls_server_config:\n  cert_file: '{}'\n  key_file: '{}'\n{tls_extra}http_server_config:\n  headers:\n    \
         Strict-Transport-Security: max-age=31536000\nbasic_auth_users:\n  {USERNAME}: '{}'\n",
        pki.path("server.crt").display(),
        pki.path("server.key").display(),
        pki.hash,
    )
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    password: Option<&str>,
) -> Result<reqwest::Response, reqwest::Error> {
    let request = client.get(url);
    let request = match password {
        Some(password) => request.basic_auth(USERNAME, Some(password)),
        None => request,
    };
    request.send().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_pushes_over_https_with_basic_auth_and_wrong_credentials_get_401_and_forward_nothing(
) {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let gateway = SecureGateway::start(
        &pki,
        &proxy_config(&[node.addr()], ""),
        &web_yaml(&pki, ""),
        false,
    )
    .await;
    let client = pki.client_with(&pki.ca_file(), None);

    python_push_https(&pki, &gateway.url(), "secure_job", 7.0, &pki.password)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "push over https with the password failed: {e}\n{}",
                gateway.log_text()
            )
        });
    assert!(
        node.metrics_text()
            .await
            .contains("python_https_gauge{instance=\"\",job=\"secure_job\"} 7"),
        "the push reached the Pushgateway"
    );

    let error = python_push_https(&pki, &gateway.url(), "intruder_job", 1.0, "wrong-password")
        .await
        .expect_err("a push with a wrong password must fail");
    assert!(error.contains("401"), "python saw: {error}");
    for password in [None, Some("wrong-password")] {
        for path in ["/-/healthy", "/metrics/job/intruder_job", "/-/ring", "/"] {
            let response = get(&client, &format!("{}{path}", gateway.url()), password)
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{path} with {password:?}"
            );
            assert_eq!(
                response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok()),
                Some("Basic realm=\"dynamic-sharding\""),
                "{path}"
            );
            assert_eq!(
                response
                    .headers()
                    .get("strict-transport-security")
                    .and_then(|v| v.to_str().ok()),
                Some("max-age=31536000"),
                "http_server_config.headers are on a 401 too"
            );
        }
    }
    assert!(
        !node.metrics_text().await.contains("intruder_job"),
        "nothing of a refused push reached the Pushgateway"
    );

    let ok = get(
        &client,
        &format!("{}/-/healthy", gateway.url()),
        Some(&pki.password),
    )
    .await
    .unwrap_or_else(|e| panic!("GET /-/healthy: {e}"));
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        ok.headers()
            .get("strict-transport-security")
            .and_then(|v| v.to_str().ok()),
        Some("max-age=31536000")
    );

    // Neither the password nor its hash shows in any log line (debug level) or endpoint.
    let mut seen = gateway.log_text();
    for path in ["/", "/-/ring", "/metrics", "/-/sd", "/api/v1/status"] {
        if let Ok(response) = get(
            &client,
            &format!("{}{path}", gateway.url()),
            Some(&pki.password),
        )
        .await
        {
            seen.push_str(&response.text().await.unwrap_or_default());
        }
    }
    assert!(!seen.contains(&pki.password), "the password leaked");
    assert!(!seen.contains(&pki.hash), "the bcrypt hash leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_credentials_are_not_forwarded_to_the_pushgateways() {
    // A relay in front of a real Pushgateway keeps the heads of the requests the gateway sends it.
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let relay = FaultProxy::start(&node.addr()).await;
    let gateway = SecureGateway::start(
        &pki,
        &proxy_config(&[relay.addr()], ""),
        &web_yaml(&pki, ""),
        false,
    )
    .await;
    let client = pki.client_with(&pki.ca_file(), None);
    let response = client
        .put(format!("{}/metrics/job/forwarded", gateway.url()))
        .basic_auth(USERNAME, Some(&pki.password))
        .body("forwarded_metric 1\n")
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT through the gateway: {e}"));
    assert_eq!(response.status(), StatusCode::OK, "{}", gateway.log_text());
    let heads = relay.request_heads();
    let push = heads
        .iter()
        .find(|head| head.starts_with("PUT /metrics/job/forwarded"))
        .unwrap_or_else(|| panic!("the push never reached the node: {heads:?}"));
    assert!(
        !push.to_ascii_lowercase().contains("authorization:"),
        "the client's Authorization was forwarded (header names: {:?})",
        push.lines()
            .filter_map(|line| line.split_once(':').map(|(name, _)| name))
            .collect::<Vec<_>>()
    );
    assert!(node.metrics_text().await.contains("forwarded_metric"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_verify_client_cert_admits_only_clients_with_a_certificate_from_the_ca() {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let tls_extra = format!(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: '{}'\n",
        pki.ca_file().display()
    );
    let gateway = SecureGateway::start(
        &pki,
        &proxy_config(&[node.addr()], ""),
        &web_yaml(&pki, &tls_extra),
        true,
    )
    .await;
    let url = format!("{}/-/healthy", gateway.url());
    let with_cert = pki.client_with(&pki.ca_file(), Some("client"));
    let status = get(&with_cert, &url, Some(&pki.password))
        .await
        .unwrap_or_else(|e| panic!("a client certificate from the CA was refused: {e}"))
        .status();
    assert_eq!(status, StatusCode::OK);
    for (what, client) in [
        (
            "no client certificate",
            pki.client_with(&pki.ca_file(), None),
        ),
        (
            "a certificate from another CA",
            pki.client_with(&pki.ca_file(), Some("stranger")),
        ),
    ] {
        // TLS 1.3: the server checks the certificate after the client's handshake is done, so the refusal
        // arrives as an alert on the first read: an error either way, never a response.
        let result = get(&client, &url, Some(&pki.password)).await;
        assert!(
            result.is_err(),
            "{what}: got {:?}",
            result.map(|r| r.status())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_any_client_cert_admits_any_certificate_but_not_none() {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let gateway = SecureGateway::start(
        &pki,
        &proxy_config(&[node.addr()], ""),
        &web_yaml(&pki, "  client_auth_type: RequireAnyClientCert\n"),
        true,
    )
    .await;
    let url = format!("{}/-/healthy", gateway.url());
    let stranger = pki.client_with(&pki.ca_file(), Some("stranger"));
    let status = get(&stranger, &url, Some(&pki.password))
        .await
        .unwrap_or_else(|e| panic!("a certificate from another CA was refused: {e}"))
        .status();
    assert_eq!(status, StatusCode::OK, "not checked against a CA, as in Go");
    let result = get(
        &pki.client_with(&pki.ca_file(), None),
        &url,
        Some(&pki.password),
    )
    .await;
    assert!(
        result.is_err(),
        "no client certificate: got {:?}",
        result.map(|r| r.status())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_listener_gets_no_http_response() {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let gateway = SecureGateway::start(
        &pki,
        &proxy_config(&[node.addr()], ""),
        &web_yaml(&pki, ""),
        false,
    )
    .await;
    let addr = gateway.addr();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream =
            std::net::TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap_or_else(|e| panic!("{e}"));
        stream
            .write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap_or_else(|e| panic!("write: {e}"));
        let mut answer = Vec::new();
        // Ends at EOF (the gateway closed) or with a reset; a timeout would mean it kept the connection open.
        match stream.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the gateway neither answered nor closed: {e}"),
        }
        answer
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a plain-HTTP request was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // At most a TLS alert record (content type 21).
    assert!(
        answer.is_empty() || answer[0] == 21,
        "unexpected bytes: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_used_by_the_next_connection_without_a_restart() {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    // The gateway reads copies, so rotating them does not disturb the other files of the PKI.
    let cert = pki.write(
        "live.crt",
        &std::fs::read_to_string(pki.path("server.crt")).unwrap_or_default(),
    );
    let key = pki.write(
        "live.key",
        &std::fs::read_to_string(pki.path("server.key")).unwrap_or_default(),
    );
    let web = format!(
        "tls_server_config:\n  cert_file: '{}'\n  key_file: '{}'\nbasic_auth_users:\n  {USERNAME}: '{}'\n",
        cert.display(),
        key.display(),
        pki.hash
    );
    let gateway = SecureGateway::start(&pki, &proxy_config(&[node.addr()], ""), &web, false).await;
    let pid = gateway.pid();
    let url = format!("{}/-/healthy", gateway.url());
    let trusts_old = pki.client_with(&pki.ca_file(), None);
    let trusts_new = pki.client_with(&pki.other_ca_file(), None);
    assert!(get(&trusts_new, &url, Some(&pki.password)).await.is_err());

    // Key first, then certificate: in between the pair does not match and the old certificate stays in use.
    std::fs::copy(pki.path("server2.key"), &key).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(pki.path("server2.crt"), &cert).unwrap_or_else(|e| panic!("{e}"));
    wait_until(secs(30), POLL_INTERVAL, || async {
        get(&trusts_new, &url, Some(&pki.password))
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the new certificate was never served: {e}\n{}",
            gateway.log_text()
        )
    });
    assert!(
        get(&trusts_old, &url, Some(&pki.password)).await.is_err(),
        "a new connection still got the old certificate"
    );
    assert_eq!(gateway.pid(), pid, "no restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_web_config_is_refused_at_start_and_on_reload_the_old_one_stays() {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let config_yaml = proxy_config(&[node.addr()], "");

    // At start: exit non-zero, the message names the key.
    let config = pki.write("refused-config.yml", &config_yaml);
    for (web, key) in [
        (
            "http_server_config: {http2: true}\n".to_string(),
            "http_server_config.http2",
        ),
        (
            web_yaml(&pki, "  min_version: TLS10\n"),
            "tls_server_config.min_version",
        ),
        (
            web_yaml(&pki, "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
            "tls_server_config.cipher_suites",
        ),
        (
            "basic_auth_users: {pusher: not-a-hash}\n".to_string(),
            "basic_auth_users.pusher",
        ),
        (
            "tls_server_config: {cert_file: /nonexistent.crt, key_file: /nonexistent.key}\n"
                .to_string(),
            "cert_file",
        ),
    ] {
        let web_path = pki.write("refused-web.yml", &web);
        let mut guard = ChildGuard::spawn(
            "refused-gateway",
            gateway_command(&config, &web_path, free_port()),
        );
        wait_until(secs(30), POLL_INTERVAL, || {
            let exited = guard.exit_status().is_some();
            async move { exited }
        })
        .await
        .unwrap_or_else(|e| panic!("the gateway kept running with {web:?}: {e}"));
        let status = guard.exit_status().unwrap_or_else(|| unreachable!());
        assert!(!status.success(), "{web:?}: exit {status}");
        let log = guard.log_text();
        assert!(
            log.contains(key),
            "{web:?}: the message does not name {key}:\n{log}"
        );
    }

    // On reload (POST /-/reload and SIGHUP): refused, logged, and the old file still rules.
    let gateway = SecureGateway::start(&pki, &config_yaml, &web_yaml(&pki, ""), false).await;
    let client = pki.client_with(&pki.ca_file(), None);
    std::fs::write(gateway.web_config(), "http_server_config: {http2: true}\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let reload = client
        .post(format!("{}/-/reload", gateway.url()))
        .basic_auth(USERNAME, Some(&pki.password))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /-/reload: {e}"));
    assert!(
        !reload.status().is_success(),
        "reload of an invalid web config: {}",
        reload.status()
    );
    let body = reload.text().await.unwrap_or_default();
    assert!(body.contains("http_server_config.http2"), "{body}");
    let status = std::process::Command::new("kill")
        .args(["-s", "HUP", &gateway.pid().to_string()])
        .status()
        .unwrap_or_else(|e| panic!("kill -s HUP: {e}"));
    assert!(status.success());
    wait_until(secs(30), POLL_INTERVAL, || async {
        gateway
            .log_text()
            .matches("http_server_config.http2")
            .count()
            >= 2
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the SIGHUP reload error was not logged: {e}\n{}",
            gateway.log_text()
        )
    });
    let url = format!("{}/-/healthy", gateway.url());
    let with_password = get(&client, &url, Some(&pki.password))
        .await
        .unwrap_or_else(|e| panic!("still TLS after the refused reloads: {e}"));
    assert_eq!(with_password.status(), StatusCode::OK);
    let without = get(&client, &url, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(without.status(), StatusCode::UNAUTHORIZED, "auth still on");

    // A valid file is taken on reload: the new password works, the old one no longer does.
    let new_password = format!("{}-rotated", pki.password);
    let web = web_yaml(&pki, "").replace(&pki.hash, &bcrypt(&new_password));
    std::fs::write(gateway.web_config(), web).unwrap_or_else(|e| panic!("{e}"));
    let reload = client
        .post(format!("{}/-/reload", gateway.url()))
        .basic_auth(USERNAME, Some(&pki.password))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /-/reload: {e}"));
    assert_eq!(reload.status(), StatusCode::OK, "{}", gateway.log_text());
    let old = get(&client, &url, Some(&pki.password))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        old.status(),
        StatusCode::UNAUTHORIZED,
        "the old password after the reload"
    );
    let new = get(&client, &url, Some(&new_password))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        new.status(),
        StatusCode::OK,
        "the new password after the reload"
    );
}
