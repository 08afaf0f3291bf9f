//! TLS and basic-auth material made at test time, and Pushgateways that require both.
//!
//! - [`Pki::generate`]: with `openssl` (Debian's, see `scripts/install-test-deps.sh`), a CA, a server certificate
//!   for `127.0.0.1`/`localhost` signed by it, and an unrelated second CA (to test a CA that does not match); and a
//!   bcrypt hash of a random password made with Debian's `python3` (`crypt`, glibc's bcrypt). Nothing is committed.
//! - [`SecurePushgateway::start`]: a real Pushgateway with `--web.config.file` (exporter-toolkit format: TLS and
//!   `basic_auth_users`), ready once `GET https://.../-/ready` with the credentials answers 200.
//! - [`Pki::client`]: a reqwest client that trusts the CA (and does not follow redirects), for talking to the
//!   nodes directly.
//! - [`SecureGateway::start`]: the gateway with `--web.config.file` (TLS on its listener, basic auth), ready once
//!   `GET https://.../-/healthy` answers 200 to a client with the credentials and (when asked) a client certificate.
//! - [`python_push_https`], [`python_https_as`]: Python's `prometheus_client` pushing (or deleting) over https
//!   with `basic_auth_handler`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tempfile::TempDir;

use super::{free_port, ChildGuard, PythonPushOp, POLL_INTERVAL, STARTUP_TIMEOUT};

/// The basic-auth user every secure Pushgateway accepts.
pub const USERNAME: &str = "pusher";

pub struct Pki {
    dir: TempDir,
    /// A fresh random password per test run; its bcrypt hash is in `web.yml`.
    pub password: String,
    /// The bcrypt hash of `password` (`$2b$`), for web config files the tests write.
    pub hash: String,
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("ds-test-pki-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for TLS material: {e}"));
        let path = |name: &str| dir.path().join(name).display().to_string();
        for (ca, subject) in [
            ("ca", "/CN=ds-test-ca"),
            ("other-ca", "/CN=ds-test-other-ca"),
        ] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                subject,
                "-keyout",
                &path(&format!("{ca}.key")),
                "-out",
                &path(&format!("{ca}.crt")),
            ]);
        }
        // The server certificate and a client certificate from the CA; from the unrelated CA a client
        // certificate and a second server certificate, to rotate to.
        for (name, common_name, ca, ext) in [
            (
                "server",
                "pushgateway",
                "ca",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "client", "ca", "extendedKeyUsage=clientAuth\n"),
            (
                "stranger",
                "stranger",
                "other-ca",
                "extendedKeyUsage=clientAuth\n",
            ),
            (
                "server2",
                "server2",
                "other-ca",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
        ] {
            issue_certificate(dir.path(), name, common_name, ca, ext);
        }

        let password = random_password();
        let hash = bcrypt(&password);
        std::fs::write(
            dir.path().join("web.yml"),
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  {USERNAME}: '{hash}'\n",
                path("server.crt"),
                path("server.key"),
            ),
        )
        .unwrap_or_else(|e| panic!("cannot write web.yml: {e}"));
        Pki {
            dir,
            password,
            hash,
        }
    }

    /// A client certificate `<stem>.crt`/`<stem>.key` from the test CA whose subject alternative name is the DNS
    /// name `dns_name` (the user a verified certificate stands for).
    pub fn client_cert_for(&self, stem: &str, dns_name: &str) {
        issue_certificate(
            self.dir.path(),
            stem,
            stem,
            "ca",
            &format!("extendedKeyUsage=clientAuth\nsubjectAltName=DNS:{dns_name}\n"),
        );
    }

    /// `<dir>/<name>`: e.g. `server.crt`, `client.key`, `server2.crt` (signed by the other CA).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client that trusts only `ca` and presents `identity` (the stem of a `.crt`/`.key` pair) if given.
    pub fn client_with(&self, ca: &Path, identity: Option<&str>) -> reqwest::Client {
        let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("cannot read {}: {e}", ca.display()));
        let ca = reqwest::Certificate::from_pem(&pem)
            .unwrap_or_else(|e| panic!("{} is not a PEM certificate: {e}", ca.display()));
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .redirect(reqwest::redirect::Policy::none())
            // A new connection per request: certificate rotation is seen by the next handshake.
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30));
        if let Some(stem) = identity {
            let mut pem = std::fs::read(self.path(&format!("{stem}.crt")))
                .unwrap_or_else(|e| panic!("cannot read {stem}.crt: {e}"));
            pem.extend(
                std::fs::read(self.path(&format!("{stem}.key")))
                    .unwrap_or_else(|e| panic!("cannot read {stem}.key: {e}")),
            );
            let identity = reqwest::Identity::from_pem(&pem)
                .unwrap_or_else(|e| panic!("{stem}.crt/.key is not a usable identity: {e}"));
            builder = builder.identity(identity);
        }
        builder
            .build()
            .unwrap_or_else(|e| panic!("cannot build the TLS test client: {e}"))
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("other-ca.crt")
    }

    pub fn web_config(&self) -> PathBuf {
        self.dir.path().join("web.yml")
    }

    /// Writes `contents` to a file in the PKI dir (e.g. a password file) and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// A client that trusts the test CA; it sends no credentials by itself.
    pub fn client(&self) -> reqwest::Client {
        let pem =
            std::fs::read(self.ca_file()).unwrap_or_else(|e| panic!("cannot read ca.crt: {e}"));
        let ca = reqwest::Certificate::from_pem(&pem)
            .unwrap_or_else(|e| panic!("ca.crt is not a PEM certificate: {e}"));
        reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|e| panic!("cannot build the TLS test client: {e}"))
    }

    /// The `pushgateway:` keys that reach the secure nodes: `scheme`, `tls_config.ca_file`, `basic_auth` with the
    /// given password (`password_file` when `password_file` is set).
    pub fn upstream_yaml(&self, password: &str, password_file: Option<&Path>) -> String {
        let auth = match password_file {
            Some(file) => format!("password_file: '{}'", file.display()),
            None => format!("password: '{password}'"),
        };
        format!(
            "  scheme: https\n  tls_config: {{ca_file: '{}'}}\n  basic_auth: {{username: {USERNAME}, {auth}}}\n",
            self.ca_file().display()
        )
    }
}

/// `<dir>/<name>.crt` and `.key`: a P-256 key and a certificate for it (`/CN=<common_name>`) signed by
/// `<dir>/<ca>.crt`, valid for two days, with `ext` (extension lines) besides `basicConstraints=CA:FALSE` and
/// `keyUsage=digitalSignature`.
fn issue_certificate(dir: &Path, name: &str, common_name: &str, ca: &str, ext: &str) {
    let path = |file: &str| dir.join(file).display().to_string();
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/CN={common_name}"),
        "-keyout",
        &path(&format!("{name}.key")),
        "-out",
        &path(&format!("{name}.csr")),
    ]);
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{ext}"),
    )
    .unwrap_or_else(|e| panic!("cannot write {name}.ext: {e}"));
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path(&format!("{name}.csr")),
        "-CA",
        &path(&format!("{ca}.crt")),
        "-CAkey",
        &path(&format!("{ca}.key")),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &path(&format!("{name}.ext")),
        "-out",
        &path(&format!("{name}.crt")),
    ]);
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (run scripts/install-test-deps.sh): {e}"));
    assert!(
        output.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// 24 random alphanumerics: distinctive enough that finding it in any output is a leak, not a coincidence.
fn random_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("pw{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}

/// A bcrypt hash (`$2b$`) as exporter-toolkit's `basic_auth_users` takes it.
pub fn bcrypt(password: &str) -> String {
    let output = Command::new("/usr/bin/python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 4)))",
            password,
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run /usr/bin/python3 for a bcrypt hash: {e}"));
    let hash = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success() && hash.starts_with("$2"),
        "python3 crypt made no bcrypt hash: {hash:?} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    hash
}

/// A Pushgateway 1.5.1 that only speaks TLS and requires basic auth.
pub struct SecurePushgateway {
    guard: ChildGuard,
    port: u16,
}

impl SecurePushgateway {
    pub async fn start(pki: &Pki) -> SecurePushgateway {
        let client = pki.client();
        for _ in 0..3 {
            let port = free_port();
            let mut command = Command::new(
                std::env::var_os("DS_PUSHGATEWAY_BIN")
                    .unwrap_or_else(|| "prometheus-pushgateway".into()),
            );
            command
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg(format!("--web.config.file={}", pki.web_config().display()))
                .arg("--web.enable-admin-api")
                .arg("--persistence.file=");
            let mut guard = ChildGuard::spawn(&format!("secure-pushgateway-{port}"), command);
            let started = Instant::now();
            loop {
                if guard.exit_status().is_some() {
                    if guard.log_text().contains("address already in use") {
                        break;
                    }
                    panic!("secure pushgateway exited: {}", guard.log_tail(20));
                }
                let ready = client
                    .get(format!("https://127.0.0.1:{port}/-/ready"))
                    .basic_auth(USERNAME, Some(&pki.password))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK);
                if ready {
                    return SecurePushgateway { guard, port };
                }
                assert!(
                    started.elapsed() < STARTUP_TIMEOUT,
                    "secure pushgateway not ready: {}",
                    guard.log_tail(20)
                );
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        panic!("secure pushgateway lost its port 3 times");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    pub fn log_text(&self) -> String {
        self.guard.log_text()
    }

    /// The node's own `/metrics` text, read directly with the credentials.
    pub async fn metrics_text(&self, pki: &Pki) -> String {
        let response = pki
            .client()
            .get(format!("{}/metrics", self.url()))
            .basic_auth(USERNAME, Some(&pki.password))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {}/metrics: {e}", self.url()));
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap_or_default()
    }
}

/// The gateway serving https with basic auth (and whatever else `web_yaml` asks for), proxying to the nodes that
/// `config_yaml` names. It runs with `--web.enable-lifecycle` and `--log.level=debug`.
pub struct SecureGateway {
    guard: ChildGuard,
    port: u16,
    config: PathBuf,
    web_config: PathBuf,
    _dir: TempDir,
}

impl SecureGateway {
    /// Ready once a client trusting the CA (presenting `client.crt` when `client_cert`) with the credentials gets
    /// 200 from `/-/healthy`.
    pub async fn start(
        pki: &Pki,
        config_yaml: &str,
        web_yaml: &str,
        client_cert: bool,
    ) -> SecureGateway {
        SecureGateway::start_with_args(pki, config_yaml, web_yaml, client_cert, &[]).await
    }

    /// [`SecureGateway::start`] with more flags (e.g. `--web.enable-admin-api`).
    pub async fn start_with_args(
        pki: &Pki,
        config_yaml: &str,
        web_yaml: &str,
        client_cert: bool,
        extra_args: &[&str],
    ) -> SecureGateway {
        let dir = tempfile::Builder::new()
            .prefix("ds-test-secure-gateway-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let config = dir.path().join("config.yml");
        let web_config = dir.path().join("web.yml");
        std::fs::write(&config, config_yaml)
            .unwrap_or_else(|e| panic!("cannot write config.yml: {e}"));
        std::fs::write(&web_config, web_yaml)
            .unwrap_or_else(|e| panic!("cannot write web.yml: {e}"));
        let client = pki.client_with(&pki.ca_file(), client_cert.then_some("client"));
        for _ in 0..3 {
            let port = free_port();
            let mut guard = ChildGuard::spawn(&format!("secure-gateway-{port}"), {
                let mut command = gateway_command(&config, &web_config, port);
                command.args(extra_args);
                command
            });
            let started = Instant::now();
            loop {
                if guard.exit_status().is_some() {
                    if guard.log_text().contains("Address already in use") {
                        break;
                    }
                    panic!("secure gateway exited: {}", guard.log_tail(20));
                }
                let ready = client
                    .get(format!("https://127.0.0.1:{port}/-/healthy"))
                    .basic_auth(USERNAME, Some(&pki.password))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK);
                if ready {
                    return SecureGateway {
                        guard,
                        port,
                        config,
                        web_config,
                        _dir: dir,
                    };
                }
                assert!(
                    started.elapsed() < STARTUP_TIMEOUT,
                    "secure gateway not ready: {}",
                    guard.log_tail(20)
                );
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        panic!("secure gateway lost its port 3 times");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    /// The `--config.file` it runs with: rewrite it, then reload.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The `--web.config.file` it runs with: rewrite it, then reload.
    pub fn web_config(&self) -> &Path {
        &self.web_config
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn log_text(&self) -> String {
        self.guard.log_text()
    }
}

/// The gateway binary with `--config.file`, `--web.config.file`, lifecycle on and debug logging, on `port`.
pub fn gateway_command(config: &Path, web_config: &Path, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dynamic-sharding"));
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.config.file={}", web_config.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-lifecycle")
        .arg("--log.level=debug");
    command
}

const PYTHON_HTTPS_PUSH_SCRIPT: &str = r#"
import os, sys
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, pushadd_to_gateway, delete_from_gateway
from prometheus_client.exposition import basic_auth_handler
gateway, job, op, value = sys.argv[1:5]
def handler(url, method, timeout, headers, data):
    return basic_auth_handler(url, method, timeout, headers, data, os.environ["DS_USER"], os.environ["DS_PASSWORD"])
try:
    if op == "delete":
        delete_from_gateway(gateway, job=job, handler=handler, timeout=20)
    else:
        registry = CollectorRegistry()
        Gauge("python_https_gauge", "Set by the test through prometheus_client.", registry=registry).set(float(value))
        push = push_to_gateway if op == "push" else pushadd_to_gateway
        push(gateway, job=job, registry=registry, handler=handler, timeout=20)
except Exception as error:
    print(f"{type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(1)
"#;

/// `push_to_gateway(gateway_url, job)` of a gauge `python_https_gauge = value` with `basic_auth_handler` as
/// [`USERNAME`]; Python trusts only the test CA (`SSL_CERT_FILE`).
pub async fn python_push_https(
    pki: &Pki,
    gateway_url: &str,
    job: &str,
    value: f64,
    password: &str,
) -> Result<(), String> {
    python_https_as(
        pki,
        gateway_url,
        (USERNAME, password),
        job,
        PythonPushOp::Push(value),
    )
    .await
}

/// `push_to_gateway`, `pushadd_to_gateway` (of `python_https_gauge`) or `delete_from_gateway` of `job` over https
/// with `basic_auth_handler` as `user`; Python trusts only the test CA (`SSL_CERT_FILE`). The password goes
/// through the environment, not the command line. `Err` is the client's error, e.g.
/// `"HTTPError: HTTP Error 403: Forbidden"`.
pub async fn python_https_as(
    pki: &Pki,
    gateway_url: &str,
    (user, password): (&str, &str),
    job: &str,
    op: PythonPushOp,
) -> Result<(), String> {
    let (op_name, value) = match op {
        PythonPushOp::Push(value) => ("push", value),
        PythonPushOp::PushAdd(value) => ("pushadd", value),
        PythonPushOp::Delete => ("delete", 0.0),
    };
    let mut command = tokio::process::Command::new("/usr/bin/python3");
    command
        .args([
            "-c",
            PYTHON_HTTPS_PUSH_SCRIPT,
            gateway_url,
            job,
            op_name,
            &value.to_string(),
        ])
        .env("no_proxy", "*")
        .env("SSL_CERT_FILE", pki.ca_file())
        .env("DS_USER", user)
        .env("DS_PASSWORD", password)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| {
            panic!("python3 did not finish a {op_name} to {gateway_url} within 60 s")
        })
        .unwrap_or_else(|e| panic!("cannot run python3 (scripts/install-test-deps.sh): {e}"));
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}
