//! Integration-test harness: real Pushgateways, Consul agents, Prometheus servers and the gateway binary, each
//! started on free `127.0.0.1` ports chosen at run time and killed when its handle is dropped (also when the test
//! panics). Every test file uses it with `mod common;`. Run `scripts/install-test-deps.sh` once to install the
//! programs it starts.
//!
//! Async tests use `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`; every function that waits is
//! `async`. Helpers panic with a message that names what failed (and prints the child's log tail), which is how a
//! test reports a broken environment.
//!
//! # API
//! - [`free_port`]: a free TCP (and UDP) port on 127.0.0.1, never the same one twice in one test process.
//! - [`ChildGuard`]: owns a spawned process; output goes to a log file in the guard's own temp dir;
//!   [`ChildGuard::kill`] (SIGKILL + reap) runs on drop; if the test panicked, the log is kept and its tail printed.
//! - [`wait_until`]`(timeout, poll_interval, || async { bool })`: polls until true, or
//!   `Err(`[`TimedOut`]`)`; use `.expect("what we waited for")`.
//! - [`assert_eventually_eq`]`(timeout, || async { value }, expected, what)`: polls, then asserts equality; for
//!   state updated after the answer a test got (a Pushgateway's DELETE and wipe, the gateway's pass counters).
//! - [`http_client`] (no proxy, no redirect following, so a 307 is visible) and [`send`] -> [`Reply`].
//! - [`Pushgateway`]: `start()` (in memory), `start_with_persistence(path)`, `addr()`, `url()`, `kill()`,
//!   `restart()`, `push(path, body)` (PUT), `push_add` (POST), `delete(path)`, `groups()`, `metrics_text()`,
//!   `wipe()`.
//!   `start_many(n)`.
//! - [`Gateway`] helpers beyond the process: `ring()` (`/-/ring` JSON), `owner_of(push_path)` (owner lookup),
//!   `status_page_section(id)` (one `<section>` of `GET /`).
//! - [`Consul`]: `start()` a `-dev` agent, `addr()`, `url()`, `kill()`, `restart()` (fresh and empty, same HTTP
//!   port). Binary: `$DS_CONSUL_BIN`, else `<repo>/tools/bin/consul`, else `consul` on `PATH`.
//! - [`Prometheus`]: `start(scrape_configs)` with 1 s scrape and evaluation intervals, `query(promql)` (the
//!   `data.result` array), `targets()` (the `data.activeTargets` array).
//! - [`Gateway`]: the `dynamic-sharding` binary: `start(config_yaml)`, `start_with_args(config_yaml, args)`,
//!   `addr()`, `url()`, `pid()`, `signal("HUP")`, `config_path()` (rewrite it, then signal to reload), `kill()`,
//!   `log_text()`.
//! - [`dnsmasq`]: a real DNS server on a free loopback port: A records from a hosts file (`set_hosts` rewrites it
//!   and SIGHUPs), SRV records from `--srv-host`, names under `.test` answered NXDOMAIN when unknown;
//!   `start_validating_forwarder` puts a DNSSEC-validating dnsmasq in front that answers SERVFAIL for the names
//!   missing from its own hosts file.
//!   `Pushgateway::start_on(host, port)` with [`free_port_on`] puts Pushgateways on 127.0.0.2, 127.0.0.3, ...
//! - [`tls`]: test-time certificates and bcrypt hashes, and Pushgateways with `--web.config.file` (TLS + basic auth).
//! - [`python_push`]`(gateway, job, grouping, op)`: pushes with Debian's `/usr/bin/python3` and `prometheus_client`;
//!   `Ok(())` or `Err(error text)`.
//!
//! Limits: a child outlives the test process only if that process itself is SIGKILLed (no drop runs then).
//! Ports are free when chosen, not reserved: a start that loses its port to another process is retried on a new one.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod dnsmasq;
pub mod fault_proxy;
pub mod placement;
pub mod tls;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use tempfile::TempDir;

/// How long a freshly started process may take to become ready. Generous: CI shares 2 cores with builds.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often readiness and [`wait_until`] conditions are polled by the harness itself.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Log lines shown when a process fails to start or a test panics while it runs.
const LOG_TAIL_LINES: usize = 40;
/// Starts that lose their port to another process are retried this many times on new ports.
const START_ATTEMPTS: usize = 3;

// ---------------------------------------------------------------------------------------------------------------
// Ports

/// Returns a port on 127.0.0.1 that is free for TCP and UDP right now (Consul's serf ports use both), and that
/// this test process has not handed out before.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|error| panic!("cannot bind any TCP port on 127.0.0.1: {error}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("bound TCP socket has no local address: {error}"))
            .port();
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        // A poisoned lock only means another test panicked while holding it; the set is still valid.
        let mut handed_out = handed_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("found no free port on 127.0.0.1 in 1000 attempts");
}

/// `host:port`, with an IPv6 host in brackets (`[::1]:9091`).
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A port free for TCP on every one of `hosts` (loopback addresses such as 127.0.0.2) and for TCP and UDP on
/// 127.0.0.1, not handed out before: Pushgateways behind one DNS A name listen on the same port.
pub fn free_port_on(hosts: &[&str]) -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if hosts
            .iter()
            .all(|host| TcpListener::bind((*host, port)).is_ok())
        {
            return port;
        }
    }
    panic!("found no port free on all of {hosts:?} in 100 attempts");
}

// ---------------------------------------------------------------------------------------------------------------
// Child processes

/// A spawned process that is SIGKILLed and reaped when dropped. Its stdout and stderr go to one log file in a temp
/// dir owned by the guard (removed on drop).
pub struct ChildGuard {
    name: String,
    child: Child,
    exit_status: Option<ExitStatus>,
    log_path: PathBuf,
    // Removed after `child` is killed (see Drop), so the process never writes into a removed dir.
    log_dir: TempDir,
}

impl ChildGuard {
    /// Spawns `command` with stdin closed and output to `<tempdir>/<name>.log`. `name` appears in messages.
    pub fn spawn(name: &str, mut command: Command) -> ChildGuard {
        let log_dir = tempfile::Builder::new()
            .prefix(&format!("ds-test-{name}-"))
            .tempdir()
            .unwrap_or_else(|error| panic!("cannot create a temp dir for {name}'s log: {error}"));
        let log_path = log_dir.path().join(format!("{name}.log"));
        let stdout = File::create(&log_path)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", log_path.display()));
        let stderr = stdout.try_clone().unwrap_or_else(|error| {
            panic!(
                "cannot duplicate the handle of {}: {error}",
                log_path.display()
            )
        });
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name} ({command:?}): {error}"));
        ChildGuard {
            name: name.to_owned(),
            child,
            exit_status: None,
            log_path,
            log_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// SIGKILLs the process (a crash, no clean shutdown) and waits for it to be reaped. Idempotent.
    pub fn kill(&mut self) {
        if self.exit_status.is_some() {
            return;
        }
        // Fails only if the process already exited, which `wait` below then reports.
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => self.exit_status = Some(status),
            Err(error) => eprintln!(
                "harness: cannot reap {} (pid {}): {error}",
                self.name,
                self.pid()
            ),
        }
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            self.exit_status = self.child.try_wait().ok().flatten();
        }
        self.exit_status
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process wrote so far (lossy UTF-8).
    pub fn log_text(&self) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut file) = File::open(&self.log_path) {
            let _ = file.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn describe_failure(&mut self, what: &str) -> String {
        let state = match self.exit_status() {
            Some(status) => format!("exited with {status}"),
            None => "still running".to_owned(),
        };
        format!(
            "{} (pid {}) {what}; it is {state}. Last {LOG_TAIL_LINES} log lines ({}):\n{}",
            self.name,
            self.pid(),
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // Keep the whole log for a post-mortem; a passing run leaves nothing behind.
            self.log_dir.disable_cleanup(true);
            eprintln!(
                "harness: test panicked; {} (pid {}) kept its log at {}; last {LOG_TAIL_LINES} lines:\n{}",
                self.name,
                self.pid(),
                self.log_path.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Waiting

/// [`wait_until`] gave up: the condition was still false when the timeout passed.
#[derive(Debug)]
pub struct TimedOut {
    pub waited: Duration,
    pub polls: u32,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "condition still false after {:?} ({} polls)",
            self.waited, self.polls
        )
    }
}

impl std::error::Error for TimedOut {}

/// Polls `condition` every `poll_interval` until it returns true (`Ok`) or `timeout` has passed (`Err`). The
/// condition is always evaluated at least once, and once more at the deadline. Typical use:
/// `wait_until(secs(10), POLL_INTERVAL, || async { ... }).await.expect("group moved to its new owner")`.
pub async fn wait_until<F, Fut>(
    timeout: Duration,
    poll_interval: Duration,
    mut condition: F,
) -> Result<(), TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    let mut polls = 0;
    loop {
        polls += 1;
        if condition().await {
            return Ok(());
        }
        let elapsed = started.elapsed();
        if elapsed >= timeout {
            return Err(TimedOut {
                waited: elapsed,
                polls,
            });
        }
        tokio::time::sleep(poll_interval.min(timeout - elapsed)).await;
    }
}

/// How long [`assert_eventually_eq`] callers usually wait: generous, CI may be a slow 2-core machine under load.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Polls `read` until it returns `expected` (or `timeout` has passed), then asserts that it does, showing the last
/// value. For state that changes only after the answer that caused it: a Pushgateway applies a DELETE or a wipe
/// after answering 202, the gateway records a rebalance pass (its counters, its log line) when the pass ends,
/// after the moves a test can already see on the nodes.
pub async fn assert_eventually_eq<T, F, Fut>(
    timeout: Duration,
    mut read: F,
    expected: T,
    what: &str,
) where
    T: PartialEq + fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let started = Instant::now();
    loop {
        let value = read().await;
        if value == expected {
            return;
        }
        if started.elapsed() >= timeout {
            assert_eq!(
                value,
                expected,
                "{what} (still so after {:?})",
                started.elapsed()
            );
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Seconds as a [`Duration`], for short call sites: `wait_until(secs(10), POLL_INTERVAL, ...)`.
pub fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP

/// An HTTP client for tests: ignores proxy settings from the environment (targets are always loopback), never
/// follows redirects (so a test sees the 307 itself), and gives up on a request after 30 s. Make one per test or
/// per process handle: a client must not outlive the tokio runtime that used it.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|error| panic!("cannot build the test HTTP client: {error}"))
}

/// A complete HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// Sends one request with a text body and reads the whole answer. `Err` only for transport failures (connection
/// refused, timeout); any HTTP status is an `Ok`.
pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> Result<Reply, reqwest::Error> {
    let response = client.request(method, url).body(body).send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Like [`send`], but a transport failure panics with the method and URL.
async fn send_or_panic(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> Reply {
    send(client, method.clone(), url, body)
        .await
        .unwrap_or_else(|error| panic!("{method} {url} failed: {error}"))
}

/// GETs `url` and parses the answer as JSON, panicking (with the body) unless it is a 200 with valid JSON.
async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let reply = send_or_panic(client, Method::GET, url, "").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "GET {url} answered {}: {}",
        reply.status,
        reply.body
    );
    serde_json::from_str(&reply.body)
        .unwrap_or_else(|error| panic!("GET {url} returned invalid JSON ({error}): {}", reply.body))
}

// ---------------------------------------------------------------------------------------------------------------
// Starting processes

/// One attempt at starting a process: its guard, the URL that answers once it is ready, and what the caller needs
/// to keep (ports, paths).
struct Launch<T> {
    guard: ChildGuard,
    ready_url: String,
    state: T,
}

/// Whether an answer from the readiness URL means "ready".
type ReadyCheck = fn(StatusCode, &str) -> bool;

fn answers_ok(status: StatusCode, _body: &str) -> bool {
    status == StatusCode::OK
}

/// Calls `launch` and waits until its readiness URL satisfies `is_ready`. If the process exits because its port
/// was taken meanwhile, launches again (`launch` picks new ports) up to [`START_ATTEMPTS`] times, or only once when
/// `retry_on_port_clash` is false (restarts that must keep their port). Panics with the log tail on failure.
async fn launch_until_ready<T>(
    what: &str,
    mut launch: impl FnMut() -> Launch<T>,
    is_ready: ReadyCheck,
    retry_on_port_clash: bool,
) -> (ChildGuard, T) {
    let client = http_client();
    let attempts = if retry_on_port_clash {
        START_ATTEMPTS
    } else {
        1
    };
    let mut failures = Vec::new();
    for _ in 0..attempts {
        let Launch {
            mut guard,
            ready_url,
            state,
        } = launch();
        let started = Instant::now();
        loop {
            if guard.exit_status().is_some() {
                let log = guard.log_text().to_ascii_lowercase();
                failures
                    .push(guard.describe_failure(&format!("exited before {ready_url} answered")));
                if log.contains("address already in use") {
                    break;
                }
                panic!("cannot start {what}: {}", failures.join("\n\n"));
            }
            if let Ok(reply) = send(&client, Method::GET, &ready_url, "").await {
                if is_ready(reply.status, &reply.body) {
                    return (guard, state);
                }
            }
            if started.elapsed() >= STARTUP_TIMEOUT {
                failures.push(guard.describe_failure(&format!(
                    "did not answer {ready_url} as ready within {STARTUP_TIMEOUT:?}"
                )));
                panic!("cannot start {what}: {}", failures.join("\n\n"));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    panic!(
        "cannot start {what}: its port was taken {attempts} times:\n{}",
        failures.join("\n\n")
    );
}

/// `$env_var` if set, else `default`: lets a developer off Debian point the harness at their own binaries.
fn binary_from_env(env_var: &str, default: &str) -> PathBuf {
    std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

fn new_temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|error| panic!("cannot create a temp dir {prefix}*: {error}"))
}

fn write_file(path: &Path, contents: &str) {
    std::fs::write(path, contents)
        .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
}

// ---------------------------------------------------------------------------------------------------------------
// Pushgateway

/// A real Pushgateway (Debian's `prometheus-pushgateway`, or `$DS_PUSHGATEWAY_BIN`) on its own port with the
/// admin API enabled.
pub struct Pushgateway {
    guard: ChildGuard,
    /// The loopback address it listens on (127.0.0.1 unless started with [`Pushgateway::start_on`]).
    host: String,
    port: u16,
    persistence_file: Option<PathBuf>,
    client: reqwest::Client,
}

impl Pushgateway {
    /// Starts an in-memory Pushgateway (Debian's default persistence file is shared by every instance, so the
    /// flag is always given).
    pub async fn start() -> Pushgateway {
        Pushgateway::launch(None).await
    }

    /// Starts a Pushgateway that persists to `path` every second, so [`Pushgateway::restart`] finds its groups
    /// again once the file has been written (see [`Pushgateway::persistence_file_contains`]).
    /// Starts `count` in-memory Pushgateways.
    pub async fn start_many(count: usize) -> Vec<Pushgateway> {
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            nodes.push(Pushgateway::start().await);
        }
        nodes
    }

    pub async fn start_with_persistence(path: impl AsRef<Path>) -> Pushgateway {
        Pushgateway::launch(Some(path.as_ref().to_path_buf())).await
    }

    /// Starts an in-memory Pushgateway on `host:port` (another loopback address, e.g. 127.0.0.2, so several can
    /// share a port as the Pushgateways behind one DNS name do); `port` from [`free_port_on`].
    pub async fn start_on(host: &str, port: u16) -> Pushgateway {
        let (guard, port) = launch_until_ready(
            "pushgateway",
            || Pushgateway::launch_on(host, port, None),
            answers_ok,
            false,
        )
        .await;
        Pushgateway {
            guard,
            host: host.to_string(),
            port,
            persistence_file: None,
            client: http_client(),
        }
    }

    async fn launch(persistence_file: Option<PathBuf>) -> Pushgateway {
        let (guard, port) = launch_until_ready(
            "pushgateway",
            || Pushgateway::launch_on("127.0.0.1", free_port(), persistence_file.as_deref()),
            answers_ok,
            true,
        )
        .await;
        Pushgateway {
            guard,
            host: "127.0.0.1".to_string(),
            port,
            persistence_file,
            client: http_client(),
        }
    }

    fn launch_on(host: &str, port: u16, persistence_file: Option<&Path>) -> Launch<u16> {
        let mut command = Command::new(binary_from_env(
            "DS_PUSHGATEWAY_BIN",
            "prometheus-pushgateway",
        ));
        command
            .arg(format!("--web.listen-address={}", host_port(host, port)))
            .arg("--web.enable-admin-api")
            .arg("--log.level=debug");
        match persistence_file {
            Some(path) => {
                command
                    .arg(format!("--persistence.file={}", path.display()))
                    .arg("--persistence.interval=1s");
            }
            None => {
                command.arg("--persistence.file=");
            }
        }
        Launch {
            guard: ChildGuard::spawn(&format!("pushgateway-{host}-{port}"), command),
            ready_url: format!("http://{}/-/ready", host_port(host, port)),
            state: port,
        }
    }

    /// `<host>:<port>` (`127.0.0.1:<port>` by default), the form the gateway's config and Consul registrations use.
    pub fn addr(&self) -> String {
        host_port(&self.host, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn persistence_file(&self) -> Option<&Path> {
        self.persistence_file.as_deref()
    }

    /// Whether the persistence file exists and contains `needle` (e.g. a grouping label value). The file holds
    /// label names and values as plain bytes, so this tells a test when a push has been persisted.
    pub fn persistence_file_contains(&self, needle: &str) -> bool {
        let Some(path) = &self.persistence_file else {
            return false;
        };
        std::fs::read(path)
            .map(|bytes| {
                bytes
                    .windows(needle.len().max(1))
                    .any(|window| window == needle.as_bytes())
            })
            .unwrap_or(false)
    }

    /// SIGSTOPs the Pushgateway: its kernel still accepts connections, but nothing is answered (or applied)
    /// until [`Pushgateway::resume`]. The guard's SIGKILL ends a stopped process too.
    pub fn pause(&self) {
        signal_pid(self.pid(), "STOP");
    }

    /// SIGCONTs a paused Pushgateway: it applies what it received meanwhile.
    pub fn resume(&self) {
        signal_pid(self.pid(), "CONT");
    }

    /// SIGKILLs the Pushgateway (a crash: nothing is persisted on the way out). The port stays this instance's.
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    /// Kills the Pushgateway if it runs and starts it again on the same port with the same persistence file.
    pub async fn restart(&mut self) {
        self.guard.kill();
        let port = self.port;
        let host = self.host.clone();
        let persistence_file = self.persistence_file.clone();
        let (guard, _) = launch_until_ready(
            "pushgateway (restart)",
            || Pushgateway::launch_on(&host, port, persistence_file.as_deref()),
            answers_ok,
            false,
        )
        .await;
        self.guard = guard;
    }

    pub fn log_text(&self) -> String {
        self.guard.log_text()
    }

    /// PUTs `body` (text format) to `path` (`/metrics/job/...`) and returns the status.
    pub async fn push(&self, path: &str, body: &str) -> StatusCode {
        self.request(Method::PUT, path, body).await.status
    }

    /// POSTs `body` (text format) to `path` (`/metrics/job/...`) and returns the status.
    pub async fn push_add(&self, path: &str, body: &str) -> StatusCode {
        self.request(Method::POST, path, body).await.status
    }

    /// DELETEs the group at `path` (`/metrics/job/...`) and returns the status.
    pub async fn delete(&self, path: &str) -> StatusCode {
        self.request(Method::DELETE, path, "").await.status
    }

    /// Any request to this Pushgateway; `path` starts with `/`.
    pub async fn request(&self, method: Method, path: &str, body: &str) -> Reply {
        send_or_panic(
            &self.client,
            method,
            &format!("{}{path}", self.url()),
            body.to_owned(),
        )
        .await
    }

    /// Deletes every group (admin API).
    pub async fn wipe(&self) {
        let reply = self.request(Method::PUT, "/api/v1/admin/wipe", "").await;
        assert!(
            reply.status.is_success(),
            "wipe on {} answered {}: {}",
            self.addr(),
            reply.status,
            reply.body
        );
    }

    /// `GET /metrics` as text.
    pub async fn metrics_text(&self) -> String {
        let reply = self.request(Method::GET, "/metrics", "").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "GET /metrics on {}: {}",
            self.addr(),
            reply.body
        );
        reply.body
    }

    /// The `data` array of `GET /api/v1/metrics`: one element per group.
    pub async fn api_metrics(&self) -> Vec<serde_json::Value> {
        let answer = get_json(&self.client, &format!("{}/api/v1/metrics", self.url())).await;
        match answer.get("data") {
            Some(serde_json::Value::Array(groups)) => groups.clone(),
            _ => panic!(
                "/api/v1/metrics on {} has no data array: {answer}",
                self.addr()
            ),
        }
    }

    /// The grouping key of every group this Pushgateway holds, sorted.
    pub async fn groups(&self) -> Vec<BTreeMap<String, String>> {
        let mut groups: Vec<BTreeMap<String, String>> = self
            .api_metrics()
            .await
            .iter()
            .map(|group| {
                serde_json::from_value(group.get("labels").cloned().unwrap_or_default())
                    .unwrap_or_else(|error| {
                        panic!("group without a string-to-string labels map ({error}): {group}")
                    })
            })
            .collect();
        groups.sort();
        groups
    }
}

/// A grouping key from pairs, to compare with [`Pushgateway::groups`]: `labels(&[("job", "j"), ("a", "x")])`.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Consul

/// A real Consul agent in `-dev` mode (a single in-memory server) with every port its own; DNS and gRPC are off.
pub struct Consul {
    guard: ChildGuard,
    http_port: u16,
    client: reqwest::Client,
}

impl Consul {
    pub async fn start() -> Consul {
        let (guard, http_port) = launch_until_ready(
            "consul",
            || Consul::launch_on(free_port()),
            leader_elected,
            true,
        )
        .await;
        Consul {
            guard,
            http_port,
            client: http_client(),
        }
    }

    /// The command line of a loopback-only `-dev` agent with its HTTP API on `http_port` and every other port free
    /// (DNS and gRPC off). Tests that need more (e.g. `-config-file` for TLS) add arguments before spawning.
    pub fn dev_agent_command(http_port: u16) -> Command {
        let mut command = Command::new(consul_binary());
        command
            .args([
                "agent",
                "-dev",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
            ])
            .arg(format!("-node=harness-{http_port}"))
            .arg(format!("-http-port={http_port}"))
            .args(["-dns-port=-1", "-grpc-port=-1"])
            .arg(format!("-serf-lan-port={}", free_port()))
            .arg(format!("-serf-wan-port={}", free_port()))
            .arg(format!("-server-port={}", free_port()));
        command
    }

    fn launch_on(http_port: u16) -> Launch<u16> {
        let command = Consul::dev_agent_command(http_port);
        Launch {
            guard: ChildGuard::spawn(&format!("consul-{http_port}"), command),
            ready_url: format!("http://127.0.0.1:{http_port}/v1/status/leader"),
            state: http_port,
        }
    }

    /// `127.0.0.1:<http port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    pub fn port(&self) -> u16 {
        self.http_port
    }

    /// `http://127.0.0.1:<http port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// SIGKILLs the agent; its HTTP port stays this instance's.
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    /// Kills the agent if it runs and starts a fresh, empty one (dev mode keeps nothing) on the same HTTP port.
    pub async fn restart(&mut self) {
        self.guard.kill();
        let http_port = self.http_port;
        let (guard, _) = launch_until_ready(
            "consul (restart)",
            || Consul::launch_on(http_port),
            leader_elected,
            false,
        )
        .await;
        self.guard = guard;
    }

    pub fn log_text(&self) -> String {
        self.guard.log_text()
    }

    /// Any request to the agent's HTTP API; `path` starts with `/`, `body` is JSON text or empty.
    pub async fn request(&self, method: Method, path: &str, body: &str) -> Reply {
        send_or_panic(
            &self.client,
            method,
            &format!("{}{path}", self.url()),
            body.to_owned(),
        )
        .await
    }

    /// Registers a service on the agent (`PUT /v1/agent/service/register`); panics unless Consul accepts it.
    pub async fn register_service(&self, registration: &serde_json::Value) {
        let body = registration.to_string();
        let reply = self
            .request(Method::PUT, "/v1/agent/service/register", &body)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "registering {body}: {}",
            reply.body
        );
    }

    /// `GET` a JSON document from the agent's HTTP API.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        get_json(&self.client, &format!("{}{path}", self.url())).await
    }
}

/// `/v1/status/leader` answers `""` until the dev server has elected itself.
fn leader_elected(status: StatusCode, body: &str) -> bool {
    let leader = body.trim().trim_matches('"');
    status == StatusCode::OK && !leader.is_empty()
}

/// `$DS_CONSUL_BIN`, else `<repo>/tools/bin/consul` (where scripts/install-test-deps.sh puts it), else `consul`
/// on `PATH`.
pub fn consul_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("DS_CONSUL_BIN") {
        return PathBuf::from(path);
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bin/consul");
    if installed.is_file() {
        return installed;
    }
    let on_path = std::env::var_os("PATH").map(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("consul"))
            .find(|path| path.is_file())
    });
    match on_path.flatten() {
        Some(path) => path,
        None => panic!(
            "no consul binary: not in $DS_CONSUL_BIN, {}, or PATH. Run scripts/install-test-deps.sh",
            installed.display()
        ),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Prometheus

/// A real Prometheus (Debian's `prometheus`, or `$DS_PROMETHEUS_BIN`) scraping and evaluating every second, with
/// its config and TSDB in its own temp dir.
pub struct Prometheus {
    // Declared before `dir`: fields drop in order, so the process is dead before its files go.
    guard: ChildGuard,
    port: u16,
    client: reqwest::Client,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `scrape_configs`: a YAML sequence of scrape configs, as it would appear under the
    /// `scrape_configs:` key, e.g. `"- job_name: pg\n  honor_labels: true\n  static_configs: [{targets: ['127.0.0.1:9']}]"`.
    pub async fn start(scrape_configs: &str) -> Prometheus {
        let dir = new_temp_dir("ds-test-prometheus-");
        let config_path = dir.path().join("prometheus.yml");
        write_file(
            &config_path,
            &format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}\n"),
        );
        let storage = dir.path().join("data");
        let (guard, port) = launch_until_ready(
            "prometheus",
            || {
                let port = free_port();
                let mut command = Command::new(binary_from_env("DS_PROMETHEUS_BIN", "prometheus"));
                command
                    .arg(format!("--config.file={}", config_path.display()))
                    .arg(format!("--storage.tsdb.path={}", storage.display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"));
                Launch {
                    guard: ChildGuard::spawn(&format!("prometheus-{port}"), command),
                    ready_url: format!("http://127.0.0.1:{port}/-/ready"),
                    state: port,
                }
            },
            answers_ok,
            true,
        )
        .await;
        Prometheus {
            guard,
            port,
            client: http_client(),
            dir,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.yml")
    }

    pub fn log_text(&self) -> String {
        self.guard.log_text()
    }

    /// Runs an instant query and returns `data.result` (an array of `{metric, value: [time, "value"]}`).
    pub async fn query(&self, promql: &str) -> serde_json::Value {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url()),
            &[("query", promql)],
        )
        .unwrap_or_else(|error| panic!("cannot build a query URL for {promql:?}: {error}"));
        let answer = get_json(&self.client, url.as_str()).await;
        match answer.pointer("/data/result") {
            Some(result) => result.clone(),
            None => panic!("query {promql:?} returned no data.result: {answer}"),
        }
    }

    /// `data.activeTargets` of `/api/v1/targets`: each with `labels`, `scrapeUrl`, `health`, `lastError`.
    pub async fn targets(&self) -> serde_json::Value {
        let answer = get_json(&self.client, &format!("{}/api/v1/targets", self.url())).await;
        match answer.pointer("/data/activeTargets") {
            Some(targets) => targets.clone(),
            None => panic!("/api/v1/targets returned no data.activeTargets: {answer}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The gateway under test

/// The `dynamic-sharding` binary built by cargo for this test run, with its config in a temp file.
pub struct Gateway {
    // Declared before `dir`: fields drop in order, so the process is dead before its config goes.
    guard: ChildGuard,
    port: u16,
    client: reqwest::Client,
    config_path: PathBuf,
    dir: TempDir,
}

impl Gateway {
    pub async fn start(config_yaml: &str) -> Gateway {
        Gateway::start_with_args(config_yaml, &[]).await
    }

    /// Writes `config_yaml` to a temp file and runs the gateway with `--config.file=<it>
    /// --web.listen-address=127.0.0.1:<free> --log.level=debug` plus `extra_args`; ready when `/-/healthy` is 200.
    pub async fn start_with_args(config_yaml: &str, extra_args: &[&str]) -> Gateway {
        let dir = new_temp_dir("ds-test-gateway-");
        let config_path = dir.path().join("config.yml");
        write_file(&config_path, config_yaml);
        let (guard, port) = launch_until_ready(
            "dynamic-sharding",
            || {
                let port = free_port();
                let mut command = Command::new(env!("CARGO_BIN_EXE_dynamic-sharding"));
                command
                    .arg(format!("--config.file={}", config_path.display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg("--log.level=debug")
                    .args(extra_args)
                    .env("RUST_BACKTRACE", "1");
                Launch {
                    guard: ChildGuard::spawn(&format!("gateway-{port}"), command),
                    ready_url: format!("http://127.0.0.1:{port}/-/healthy"),
                    state: port,
                }
            },
            answers_ok,
            true,
        )
        .await;
        Gateway {
            guard,
            port,
            client: http_client(),
            config_path,
            dir,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The config file the gateway was started with: rewrite it, then `signal("HUP")` or `POST /-/reload`.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Sends `signal` (a name `kill -s` knows: `HUP`, `TERM`, `INT`) to the gateway.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .unwrap_or_else(|error| panic!("cannot run kill -s {signal}: {error}"));
        assert!(
            status.success(),
            "kill -s {signal} {} failed: {status}",
            self.pid()
        );
    }

    /// The exit status if the gateway has exited (e.g. after `signal("TERM")`), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.guard.exit_status()
    }

    /// SIGKILLs the gateway.
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    /// Everything the gateway logged so far.
    pub fn log_text(&self) -> String {
        self.guard.log_text()
    }

    /// The last `lines` lines the gateway logged.
    pub fn log_tail(&self, lines: usize) -> String {
        self.guard.log_tail(lines)
    }

    /// Any request to the gateway; `path` starts with `/`. Redirects are not followed.
    pub async fn request(&self, method: Method, path: &str, body: &str) -> Reply {
        send_or_panic(
            &self.client,
            method,
            &format!("{}{path}", self.url()),
            body.to_owned(),
        )
        .await
    }

    /// `GET /-/ring` as JSON (panics unless it is a 200 with valid JSON).
    pub async fn ring(&self) -> serde_json::Value {
        let reply = self.request(Method::GET, "/-/ring", "").await;
        assert_eq!(reply.status, StatusCode::OK, "/-/ring: {}", reply.body);
        serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("/-/ring is not JSON ({e}): {}", reply.body))
    }

    /// The status page's (`GET /`, as served) `<section id="{id}"`, from after the id to its `</section>`:
    /// `" data-source=\"dns_sd\" ...>...`. Panics when the page has no such section.
    pub async fn status_page_section(&self, id: &str) -> String {
        let reply = self.request(Method::GET, "/", "").await;
        assert_eq!(reply.status, StatusCode::OK, "GET /: {}", reply.body);
        reply
            .body
            .split(&format!("<section id=\"{id}\""))
            .nth(1)
            .and_then(|rest| rest.split("</section>").next())
            .unwrap_or_else(|| panic!("no {id} section on the status page:\n{}", reply.body))
            .to_owned()
    }

    /// Waits until the ring holds `count` nodes: the gateway answers `/-/healthy` before its first probes have
    /// filled the ring, and a push in between gets 503.
    pub async fn wait_for_ring_size(&self, count: usize) {
        wait_until(secs(30), Duration::from_millis(100), || async {
            self.ring().await["ring_nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.len() == count)
        })
        .await
        .unwrap_or_else(|e| panic!("the ring never held {count} nodes: {e:?}"));
    }

    /// The node owning the group of push path `path`, from the original's `GET` answer
    /// `nextUrl:<scheme>://<owner><path>`.
    pub async fn owner_of(&self, path: &str) -> String {
        let reply = self.request(Method::GET, path, "").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "owner of {path}: {}",
            reply.body
        );
        let url = reply
            .body
            .trim()
            .strip_prefix("nextUrl:")
            .and_then(|url| {
                url.strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"))
            })
            .unwrap_or_else(|| panic!("unexpected owner answer {:?}", reply.body));
        url.split('/').next().unwrap_or_default().to_string()
    }

    /// The temp dir holding the config; a test may put other files (e.g. TLS material) here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Python client library

/// Sends `signal` (a name `kill -s` knows) to a process this test started.
pub fn signal_pid(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .unwrap_or_else(|error| panic!("cannot run kill -s {signal}: {error}"));
    assert!(status.success(), "kill -s {signal} {pid} failed: {status}");
}

/// The sum of every sample in a Prometheus text exposition whose series starts with `series_prefix` (a name, or
/// a name and the start of its labels, e.g. `foo_total{node="a"`); 0 when there is none.
pub fn metric_sum(exposition: &str, series_prefix: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(series_prefix).is_some_and(|rest| {
                rest.starts_with([' ', '{', ',', '}']) || series_prefix.ends_with('"')
            })
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        // An empty f64 sum is -0.0.
        .fold(0.0, |total, value| total + value)
}

/// Name of the gauge [`python_push`] pushes.
pub const PYTHON_GAUGE: &str = "harness_python_gauge";

/// What [`python_push`] does, with the `prometheus_client` function it calls.
#[derive(Clone, Copy, Debug)]
pub enum PythonPushOp {
    /// `push_to_gateway` (PUT) of [`PYTHON_GAUGE`] set to the value.
    Push(f64),
    /// `pushadd_to_gateway` (POST) of [`PYTHON_GAUGE`] set to the value.
    PushAdd(f64),
    /// `delete_from_gateway` (DELETE).
    Delete,
}

/// Debian's interpreter: the one with `prometheus_client` (pyenv's `python3` on PATH lacks it).
const PYTHON: &str = "/usr/bin/python3";

const PYTHON_PUSH_SCRIPT: &str = r#"
import json, sys
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, pushadd_to_gateway, delete_from_gateway
gateway, job, grouping_json, op, value, gauge_name = sys.argv[1:7]
grouping = dict(json.loads(grouping_json))
try:
    if op == "delete":
        delete_from_gateway(gateway, job=job, grouping_key=grouping, timeout=20)
    else:
        registry = CollectorRegistry()
        Gauge(gauge_name, "Set by the test harness through prometheus_client.", registry=registry).set(float(value))
        push = push_to_gateway if op == "push" else pushadd_to_gateway
        push(gateway, job=job, registry=registry, grouping_key=grouping, timeout=20)
except Exception as error:
    print(f"{type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(1)
"#;

/// Pushes (or deletes) through Python's `prometheus_client` to `gateway` (`http://host:port` or `host:port`),
/// as a real client would. `Ok(())` on success, else the client's error, e.g.
/// `"HTTPError: HTTP Error 307: Temporary Redirect"` (urllib does not follow a 307 for PUT/POST/DELETE).
pub async fn python_push(
    gateway: &str,
    job: &str,
    grouping: &[(&str, &str)],
    op: PythonPushOp,
) -> Result<(), String> {
    let (op_name, value) = match op {
        PythonPushOp::Push(value) => ("push", value),
        PythonPushOp::PushAdd(value) => ("pushadd", value),
        PythonPushOp::Delete => ("delete", 0.0),
    };
    // A list of pairs keeps the caller's label order, which the client keeps in the URL.
    let grouping_json = serde_json::to_string(grouping)
        .unwrap_or_else(|error| panic!("cannot encode grouping {grouping:?} as JSON: {error}"));
    let mut command = tokio::process::Command::new(PYTHON);
    command
        .args([
            "-c",
            PYTHON_PUSH_SCRIPT,
            gateway,
            job,
            &grouping_json,
            op_name,
            &value.to_string(),
            PYTHON_GAUGE,
        ])
        .env("no_proxy", "*")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("{PYTHON} did not finish a {op_name} to {gateway} within 60 s"))
        .unwrap_or_else(|error| {
            panic!("cannot run {PYTHON}: {error}. Run scripts/install-test-deps.sh (package python3-prometheus-client)")
        });
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named 'prometheus_client'") {
        panic!("{PYTHON} lacks prometheus_client. Run scripts/install-test-deps.sh");
    }
    Err(stderr.trim().to_owned())
}
