//! TLS and basic-auth material made at test time, and Pushgateways that require both.
//!
//! - [`Pki::generate`]: with `openssl` (Debian's, see `scripts/install-test-deps.sh`), a CA, a server certificate
//!   for `127.0.0.1`/`localhost` signed by it, and an unrelated second CA (to test a CA that does not match); and a
//!   bcrypt hash of a random password made with Debian's `python3` (`crypt`, glibc's bcrypt). Nothing is committed.
//! - [`SecurePushgateway::start`]: a real Pushgateway with `--web.config.file` (exporter-toolkit format: TLS and
//!   `basic_auth_users`), ready once `GET https://.../-/ready` with the credentials answers 200.
//! - [`Pki::client`]: a reqwest client that trusts the CA (and does not follow redirects), for talking to the
//!   nodes directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tempfile::TempDir;

use super::{free_port, ChildGuard, POLL_INTERVAL, STARTUP_TIMEOUT};

/// The basic-auth user every secure Pushgateway accepts.
pub const USERNAME: &str = "pusher";

pub struct Pki {
    dir: TempDir,
    /// A fresh random password per test run; its bcrypt hash is in `web.yml`.
    pub password: String,
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
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=pushgateway",
            "-keyout",
            &path("server.key"),
            "-out",
            &path("server.csr"),
        ]);
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap_or_else(|e| panic!("cannot write server.ext: {e}"));
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path("server.csr"),
            "-CA",
            &path("ca.crt"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &path("server.ext"),
            "-out",
            &path("server.crt"),
        ]);

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
        Pki { dir, password }
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
fn bcrypt(password: &str) -> String {
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
