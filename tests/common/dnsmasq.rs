//! A real DNS server for membership tests: Debian's `dnsmasq` (package `dnsmasq-base`), unprivileged-port, no
//! upstream, answering only what the test gives it: A records from a hosts file (re-read on SIGHUP, see
//! [`Dnsmasq::set_hosts`]) and SRV records from `--srv-host` flags; or, in front of such a one, a validating
//! forwarder that answers SERVFAIL for every name it does not know itself
//! ([`Dnsmasq::start_validating_forwarder`]).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::{
    free_port, new_temp_dir, signal_pid, wait_until, write_file, ChildGuard, POLL_INTERVAL,
    START_ATTEMPTS,
};

/// How long dnsmasq may take to start or to re-read its hosts file.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The validating forwarder's root trust anchor: a DS record (key tag, algorithm 8 RSA/SHA-256, digest type 2
/// SHA-256, a digest of zeros) that no key matches.
const UNKNOWN_KEY_TAG: u16 = 12345;
const RSASHA256: u8 = 8;
const SHA256: u8 = 2;

pub struct Dnsmasq {
    // Declared before `dir`: the process is dead before its files go.
    guard: ChildGuard,
    port: u16,
    hosts_file: PathBuf,
    dir: TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq on `127.0.0.1:<free port>` with `hosts` (hosts-file lines, `127.0.0.2 pg.test`) and one
    /// `--srv-host=<each>` per entry (`_pg._tcp.pg.test,target,port`).
    pub async fn start(hosts: &str, srv_hosts: &[String]) -> Dnsmasq {
        // Names under .test are ours: an unknown one is NXDOMAIN (without it, REFUSED: no upstream).
        let mut flags = vec!["--local=/test/".to_owned()];
        flags.extend(srv_hosts.iter().map(|srv| format!("--srv-host={srv}")));
        Dnsmasq::launch(hosts, &flags).await
    }

    /// Starts a DNSSEC-validating dnsmasq that answers the names in `hosts` itself and forwards every other
    /// query to `upstream`, whose answers it cannot validate: it answers those with SERVFAIL.
    ///
    /// dnsmasq has no option to fail a name, and it passes an upstream's REFUSED through and leaves a dead or
    /// silent upstream's queries unanswered (a timeout). A validating resolver, though, answers SERVFAIL for an
    /// answer it finds bogus. The root trust anchor here matches no key, and `upstream` serves unsigned data,
    /// so every forwarded answer is bogus. Local (hosts-file) answers are not validated, so removing a name from
    /// `hosts` ([`Dnsmasq::set_hosts`]) turns its answers into SERVFAIL, and putting it back ends that.
    pub async fn start_validating_forwarder(hosts: &str, upstream: &Dnsmasq) -> Dnsmasq {
        let flags = [
            format!("--server=127.0.0.1#{}", upstream.port),
            "--dnssec".to_owned(),
            format!(
                "--trust-anchor=.,{UNKNOWN_KEY_TAG},{RSASHA256},{SHA256},{}",
                "0".repeat(64)
            ),
        ];
        Dnsmasq::launch(hosts, &flags).await
    }

    async fn launch(hosts: &str, flags: &[String]) -> Dnsmasq {
        let dir = new_temp_dir("ds-test-dnsmasq-");
        let hosts_file = dir.path().join("hosts");
        write_file(&hosts_file, hosts);
        let marker = format!("read {}", hosts_file.display());
        // A free port is not reserved: another process may take it before dnsmasq binds it; then start again on
        // another one, as the other programs' starts do.
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut command = Command::new(
                std::env::var_os("DS_DNSMASQ_BIN").unwrap_or_else(|| "dnsmasq".into()),
            );
            command
                .arg("--no-daemon")
                .arg(format!("--port={port}"))
                .arg("--listen-address=127.0.0.1")
                .arg("--bind-interfaces")
                .arg("--no-resolv")
                .arg("--no-hosts")
                .arg(format!("--addn-hosts={}", hosts_file.display()))
                .arg(format!("--pid-file={}", dir.path().join("pid").display()))
                // The temp dir is the test user's; dnsmasq must still read it after a SIGHUP.
                .arg(format!("--user={}", current_user()))
                .arg("--log-facility=-")
                // What it answers and forwards: the tests read it when one fails.
                .arg("--log-queries")
                .args(flags);
            let mut guard = ChildGuard::spawn(&format!("dnsmasq-{port}"), command);
            let started = wait_until(READY_TIMEOUT, POLL_INTERVAL, || {
                let done = guard.exit_status().is_some() || guard.log_text().contains(&marker);
                async move { done }
            })
            .await;
            if guard.exit_status().is_some() {
                if guard
                    .log_text()
                    .to_ascii_lowercase()
                    .contains("address already in use")
                {
                    continue;
                }
                panic!("{}", guard.describe_failure("dnsmasq did not start"));
            }
            if started.is_err() {
                panic!("{}", guard.describe_failure("dnsmasq did not start"));
            }
            return Dnsmasq {
                guard,
                port,
                hosts_file,
                dir,
            };
        }
        panic!("dnsmasq lost its port {START_ATTEMPTS} times");
    }

    /// `127.0.0.1:<port>`, for `dns_sd.nameservers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Rewrites the hosts file and SIGHUPs dnsmasq; returns once dnsmasq has logged reading it again.
    pub async fn set_hosts(&self, hosts: &str) {
        let marker = format!("read {}", self.hosts_file.display());
        let reads_before = self.guard.log_text().matches(&marker).count();
        write_file(&self.hosts_file, hosts);
        signal_pid(self.guard.pid(), "HUP");
        wait_until(READY_TIMEOUT, POLL_INTERVAL, || {
            let reads = self.guard.log_text().matches(&marker).count();
            async move { reads > reads_before }
        })
        .await
        .expect("dnsmasq re-reads its hosts file after SIGHUP");
    }

    /// SIGSTOPs dnsmasq: queries reach its socket and time out unanswered, until [`Dnsmasq::resume`].
    pub fn pause(&self) {
        signal_pid(self.guard.pid(), "STOP");
    }

    pub fn resume(&self) {
        signal_pid(self.guard.pid(), "CONT");
    }

    /// SIGKILLs dnsmasq: queries then go unanswered (the port is closed).
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    pub fn log_text(&self) -> String {
        self.guard.log_text()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            Command::new("id")
                .arg("-un")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "root".to_string())
}
