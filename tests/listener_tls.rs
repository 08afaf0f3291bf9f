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

/// The gateway in front of `upstream`, with [`web_yaml`] plus `tls_extra`; `client_cert`: readiness is probed with
/// the PKI's client certificate.
async fn start_gateway(
    pki: &Pki,
    upstream: &str,
    tls_extra: &str,
    client_cert: bool,
) -> SecureGateway {
    SecureGateway::start(
        pki,
        &proxy_config(&[upstream.to_string()], ""),
        &web_yaml(pki, tls_extra),
        client_cert,
    )
    .await
}

/// Waits until the gateway's one node is in its ring (`/-/ready`): the gateway answers `/-/healthy` before its
/// first probe has filled the ring, and a push in between gets 503.
async fn wait_for_the_node(gateway: &SecureGateway, client: &reqwest::Client, password: &str) {
    let url = format!("{}/-/ready", gateway.url());
    wait_until(secs(30), POLL_INTERVAL, || async {
        get(client, &url, Some(password))
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the node never joined the ring: {e}\n{}",
            gateway.log_text()
        )
    });
}

/// `POST /-/reload` as the test user with `password`.
async fn post_reload(
    gateway: &SecureGateway,
    client: &reqwest::Client,
    password: &str,
) -> reqwest::Response {
    client
        .post(format!("{}/-/reload", gateway.url()))
        .basic_auth(USERNAME, Some(password))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /-/reload: {e}"))
}

/// The value of header `name`, when it is there and text.
fn header<'r>(response: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
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
    let gateway = start_gateway(&pki, &node.addr(), "", false).await;
    let client = pki.client_with(&pki.ca_file(), None);
    wait_for_the_node(&gateway, &client, &pki.password).await;

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
                header(&response, "www-authenticate"),
                Some("Basic realm=\"dynamic-sharding\""),
                "{path}"
            );
            assert_eq!(
                header(&response, "strict-transport-security"),
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
        header(&ok, "strict-transport-security"),
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
    let gateway = start_gateway(&pki, &relay.addr(), "", false).await;
    let client = pki.client_with(&pki.ca_file(), None);
    wait_for_the_node(&gateway, &client, &pki.password).await;
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
    let gateway = start_gateway(&pki, &node.addr(), &tls_extra, true).await;
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
    let gateway = start_gateway(
        &pki,
        &node.addr(),
        "  client_auth_type: RequireAnyClientCert\n",
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
    let gateway = start_gateway(&pki, &node.addr(), "", false).await;
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
            web_yaml(&pki, "  curve_preferences: [X25519]\n"),
            "tls_server_config.curve_preferences",
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
    let reload = post_reload(&gateway, &client, &pki.password).await;
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
    let reload = post_reload(&gateway, &client, &pki.password).await;
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

// ---------------------------------------------------------------- live handshakes with a rustls client
//
// The tests below talk to the listener with a rustls client of their own, so that each one controls exactly
// what the client offers (protocol versions, cipher suites, a client certificate or none) and sees what the
// server chose and whether it asked for a client certificate.

mod raw_tls {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use base64::Engine;
    use rustls::client::ResolvesClientCert;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::sign::CertifiedKey;
    use rustls::{
        ClientConfig, ProtocolVersion, RootCertStore, SignatureScheme, SupportedCipherSuite,
        SupportedProtocolVersion,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::common::tls::{Pki, USERNAME};

    /// What the client offers.
    pub struct Offer {
        pub versions: &'static [&'static SupportedProtocolVersion],
        /// In the client's order of preference; all of the provider's when empty.
        pub cipher_suites: Vec<SupportedCipherSuite>,
        /// The stem of a `.crt`/`.key` pair of the PKI to present when the server asks.
        pub identity: Option<&'static str>,
    }

    impl Offer {
        pub fn versions(versions: &'static [&'static SupportedProtocolVersion]) -> Offer {
            Offer {
                versions,
                cipher_suites: Vec::new(),
                identity: None,
            }
        }

        pub fn presenting(
            versions: &'static [&'static SupportedProtocolVersion],
            identity: Option<&'static str>,
        ) -> Offer {
            Offer {
                identity,
                ..Offer::versions(versions)
            }
        }
    }

    pub const BOTH: &[&SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    pub const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
    pub const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

    /// What one connection saw.
    #[derive(Debug)]
    pub struct Exchange {
        /// Whether the server sent a CertificateRequest.
        pub asked_for_certificate: bool,
        pub version: Option<ProtocolVersion>,
        pub cipher_suite: Option<rustls::CipherSuite>,
        /// The status line and headers of the answer to `GET /-/healthy` with the credentials, or why there was
        /// none (failed handshake, alert, closed connection).
        pub answer: Result<String, String>,
    }

    impl Exchange {
        pub fn status_line(&self) -> Option<&str> {
            self.answer
                .as_ref()
                .ok()
                .and_then(|head| head.lines().next())
        }

        pub fn served(&self) -> bool {
            self.status_line() == Some("HTTP/1.1 200 OK")
        }

        /// Whether the connection failed already in the TLS handshake.
        pub fn failed_handshake(&self) -> bool {
            self.answer
                .as_ref()
                .is_err_and(|e| e.starts_with("handshake"))
        }
    }

    /// Presents the PKI's `identity` certificate whenever the server asks, and notes that it asked.
    #[derive(Debug)]
    struct RecordingResolver {
        key: Option<Arc<CertifiedKey>>,
        asked: Arc<AtomicBool>,
    }

    impl ResolvesClientCert for RecordingResolver {
        fn resolve(
            &self,
            _hints: &[&[u8]],
            _schemes: &[SignatureScheme],
        ) -> Option<Arc<CertifiedKey>> {
            self.asked.store(true, Ordering::SeqCst);
            self.key.clone()
        }

        fn has_certs(&self) -> bool {
            // Called by rustls also before any request: only `resolve` says the server asked.
            self.key.is_some()
        }
    }

    fn certified_key(pki: &Pki, stem: &str) -> Arc<CertifiedKey> {
        let certs = CertificateDer::pem_file_iter(pki.path(&format!("{stem}.crt")))
            .unwrap_or_else(|e| panic!("{stem}.crt: {e}"))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{stem}.crt: {e}"));
        let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{stem}.key")))
            .unwrap_or_else(|e| panic!("{stem}.key: {e}"));
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .unwrap_or_else(|e| panic!("{stem}.key: {e}"));
        Arc::new(CertifiedKey::new(certs, signer))
    }

    /// One TLS connection to `addr` trusting the PKI's CA, then `GET /-/healthy` with the test credentials.
    pub async fn exchange(pki: &Pki, addr: &str, offer: Offer) -> Exchange {
        let mut provider = rustls::crypto::ring::default_provider();
        if !offer.cipher_suites.is_empty() {
            provider.cipher_suites = offer.cipher_suites.clone();
        }
        let mut roots = RootCertStore::empty();
        for cert in
            CertificateDer::pem_file_iter(pki.ca_file()).unwrap_or_else(|e| panic!("ca.crt: {e}"))
        {
            roots
                .add(cert.unwrap_or_else(|e| panic!("ca.crt: {e}")))
                .unwrap_or_else(|e| panic!("ca.crt: {e}"));
        }
        let asked = Arc::new(AtomicBool::new(false));
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(offer.versions)
            .unwrap_or_else(|e| panic!("client versions: {e}"))
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(RecordingResolver {
                key: offer.identity.map(|stem| certified_key(pki, stem)),
                asked: Arc::clone(&asked),
            }));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let server_name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let attempt = async {
            let mut stream = match connector.connect(server_name, tcp).await {
                Ok(stream) => stream,
                Err(e) => return (None, None, Err(format!("handshake: {e}"))),
            };
            let (_, connection) = stream.get_ref();
            let version = connection.protocol_version();
            let suite = connection.negotiated_cipher_suite().map(|s| s.suite());
            let credentials = base64::engine::general_purpose::STANDARD
                .encode(format!("{USERNAME}:{}", pki.password));
            let request = format!(
                "GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {credentials}\r\n\
                 Connection: close\r\n\r\n"
            );
            if let Err(e) = stream.write_all(request.as_bytes()).await {
                return (version, suite, Err(format!("write: {e}")));
            }
            let mut answer = Vec::new();
            // An error after the answer (a close without close_notify) does not take the answer back; a refused
            // client certificate under TLS 1.3 arrives as an alert on the first read, before any answer.
            let ended = stream.read_to_end(&mut answer).await;
            let answer = match ended {
                _ if !answer.is_empty() => {
                    let text = String::from_utf8_lossy(&answer);
                    Ok(text
                        .split("\r\n\r\n")
                        .next()
                        .unwrap_or_default()
                        .to_string())
                }
                Err(e) => Err(format!("read: {e}")),
                Ok(_) => Err("closed without an answer".to_string()),
            };
            (version, suite, answer)
        };
        let (version, cipher_suite, answer) =
            tokio::time::timeout(Duration::from_secs(30), attempt)
                .await
                .unwrap_or_else(|_| panic!("no answer and no close from {addr} within 30 s"));
        Exchange {
            asked_for_certificate: asked.load(Ordering::SeqCst),
            version,
            cipher_suite,
            answer,
        }
    }

    /// `pki.path(name)`, for web config files.
    pub fn file(pki: &Pki, name: &str) -> String {
        Path::display(&pki.path(name)).to_string()
    }
}

use raw_tls::{exchange, Offer, BOTH, TLS12_ONLY, TLS13_ONLY};
use rustls::ProtocolVersion;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_client_cert_if_given_serves_no_certificate_and_one_from_the_ca_but_refuses_a_strangers(
) {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let tls_extra = format!(
        "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: '{}'\n",
        pki.ca_file().display()
    );
    let gateway = start_gateway(&pki, &node.addr(), &tls_extra, false).await;
    // Both handshakes: TLS 1.2 refuses a certificate during the handshake, TLS 1.3 after it.
    for versions in [TLS13_ONLY, TLS12_ONLY] {
        for (identity, served) in [
            (None, true),
            (Some("client"), true),
            (Some("stranger"), false),
        ] {
            let seen = exchange(&pki, &gateway.addr(), Offer::presenting(versions, identity)).await;
            assert!(
                seen.asked_for_certificate,
                "{identity:?}: the server must ask: {seen:?}"
            );
            assert_eq!(seen.served(), served, "{versions:?} {identity:?}: {seen:?}");
            if !served {
                assert!(seen.answer.is_err(), "no HTTP answer at all: {seen:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_client_cert_asks_for_a_certificate_and_serves_clients_with_any_or_none() {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let gateway = start_gateway(
        &pki,
        &node.addr(),
        "  client_auth_type: RequestClientCert\n",
        false,
    )
    .await;
    for versions in [TLS13_ONLY, TLS12_ONLY] {
        for identity in [None, Some("client"), Some("stranger")] {
            let seen = exchange(&pki, &gateway.addr(), Offer::presenting(versions, identity)).await;
            assert!(
                seen.asked_for_certificate,
                "{identity:?}: RequestClientCert asks: {seen:?}"
            );
            assert!(seen.served(), "{versions:?} {identity:?}: {seen:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_tls13_refuses_a_tls12_only_client() {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let gateway = start_gateway(&pki, &node.addr(), "  min_version: TLS13\n", false).await;
    let old = exchange(&pki, &gateway.addr(), Offer::versions(TLS12_ONLY)).await;
    assert!(
        old.failed_handshake(),
        "a TLS 1.2-only client must fail the handshake: {old:?}"
    );
    let new = exchange(&pki, &gateway.addr(), Offer::versions(BOTH)).await;
    assert!(new.served(), "{new:?}");
    assert_eq!(new.version, Some(ProtocolVersion::TLSv1_3));
    assert!(
        !new.asked_for_certificate,
        "NoClientCert (the default) asks for no certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_version_tls12_refuses_a_tls13_only_client_and_caps_one_that_offers_both() {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let gateway = start_gateway(&pki, &node.addr(), "  max_version: TLS12\n", false).await;
    let new_only = exchange(&pki, &gateway.addr(), Offer::versions(TLS13_ONLY)).await;
    assert!(
        new_only.failed_handshake(),
        "a TLS 1.3-only client must fail the handshake: {new_only:?}"
    );
    let both = exchange(&pki, &gateway.addr(), Offer::versions(BOTH)).await;
    assert!(both.served(), "{both:?}");
    assert_eq!(both.version, Some(ProtocolVersion::TLSv1_2), "{both:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_server_cipher_suites_picks_the_servers_order_by_default_and_the_clients_when_false()
{
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    use rustls::CipherSuite;
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    // Without the key: exporter-toolkit's default, true.
    let gateway = start_gateway(&pki, &node.addr(), "", false).await;
    // The reverse of the server's order (rustls puts AES-256-GCM first).
    let offer = || Offer {
        cipher_suites: vec![
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
        ],
        ..Offer::versions(TLS13_ONLY)
    };
    let seen = exchange(&pki, &gateway.addr(), offer()).await;
    assert!(seen.served(), "{seen:?}");
    assert_eq!(
        seen.cipher_suite,
        Some(CipherSuite::TLS13_AES_256_GCM_SHA384),
        "the server's first choice, not the client's"
    );

    std::fs::write(
        gateway.web_config(),
        web_yaml(&pki, "  prefer_server_cipher_suites: false\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let reload = post_reload(
        &gateway,
        &pki.client_with(&pki.ca_file(), None),
        &pki.password,
    )
    .await;
    assert_eq!(reload.status(), StatusCode::OK, "{}", gateway.log_text());
    let seen = exchange(&pki, &gateway.addr(), offer()).await;
    assert!(seen.served(), "{seen:?}");
    assert_eq!(
        seen.cipher_suite,
        Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
        "false: the client's first choice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_headers_are_on_a_push_answered_by_the_pushgateway() {
    let pki = Pki::generate();
    let node = Pushgateway::start().await;
    let web = format!(
        "tls_server_config:\n  cert_file: '{}'\n  key_file: '{}'\nhttp_server_config:\n  headers:\n    \
         Strict-Transport-Security: max-age=63072000; includeSubDomains\n    X-Content-Type-Options: nosniff\n    \
         X-Frame-Options: deny\n    Content-Security-Policy: default-src 'none'\nbasic_auth_users:\n  \
         {USERNAME}: '{}'\n",
        raw_tls::file(&pki, "server.crt"),
        raw_tls::file(&pki, "server.key"),
        pki.hash,
    );
    let gateway = SecureGateway::start(&pki, &proxy_config(&[node.addr()], ""), &web, false).await;
    let client = pki.client_with(&pki.ca_file(), None);
    wait_for_the_node(&gateway, &client, &pki.password).await;
    let response = client
        .put(format!("{}/metrics/job/headers_job", gateway.url()))
        .basic_auth(USERNAME, Some(&pki.password))
        .body("headers_metric 1\n")
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT through the gateway: {e}"));
    assert_eq!(response.status(), StatusCode::OK, "{}", gateway.log_text());
    assert!(
        response.headers().contains_key("x-dynamic-sharding-node"),
        "answered by the node, through the proxy"
    );
    for (name, value) in [
        (
            "strict-transport-security",
            "max-age=63072000; includeSubDomains",
        ),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "deny"),
        ("content-security-policy", "default-src 'none'"),
    ] {
        assert_eq!(
            response.headers().get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name} on the proxied answer"
        );
    }
    assert!(node.metrics_text().await.contains("headers_metric"));
}
