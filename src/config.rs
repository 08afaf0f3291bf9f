//! The YAML configuration: the Go original's keys, unchanged, plus our optional ones.
//!
//! [`Config::load`] reads and validates a file; every error names the key and says what to fix. The raw
//! serde structs mirror the file; [`Config`] is the validated form the rest of the program uses.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::authorization::{Authorization, UserRules};
use crate::ring::Algorithm;
pub use crate::secret::Secret;

/// The default Pushgateway port applied to `pushgateway.servers` entries without one (the original's behaviour).
pub const DEFAULT_PUSHGATEWAY_PORT: u16 = 9091;
/// The original tool's listen address.
pub const DEFAULT_LISTEN_ADDR: &str = ":9292";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path:?}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid YAML in config file {path:?}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// How a push reaches its owner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Forward the request to the owner and relay its answer (works with every client library).
    #[default]
    Proxy,
    /// Answer `307` with the owner's URL (the Go original's behaviour).
    Redirect,
}

/// A duration in Prometheus notation (`500ms`, `2s`, `1m`, `1h30m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromDuration(pub Duration);

impl<'de> Deserialize<'de> for PromDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(PromDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a Prometheus-style duration: one or more `<integer><unit>` parts, units `ms s m h d w y`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {text:?}: use a number and a unit, e.g. \"500ms\", \"2s\", \"1m\", \"1h30m\"")
    };
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let millis_per_unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let millis = value.checked_mul(millis_per_unit).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// A byte size: an integer number of bytes or a string such as `512KiB`, `16MiB`, `1MB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(text) => parse_byte_size(&text)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn parse_byte_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid size {text:?}: use bytes or a unit, e.g. \"512KiB\", \"16MiB\", \"1MB\"")
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let value: u64 = trimmed[..split].parse().map_err(|_| bad())?;
    let multiplier: u64 = match trimmed[split..].trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    value.checked_mul(multiplier).ok_or_else(bad)
}

// ---- The file as written ------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    consul_server: Option<RawConsulServer>,
    http_listen_addr: Option<String>,
    pushgateway: Option<RawPushgateway>,
    mode: Option<Mode>,
    health_check: Option<RawHealthCheck>,
    ring: Option<RawRing>,
    proxy: Option<RawProxy>,
    read: Option<RawRead>,
    rebalance: Option<RawRebalance>,
    outlier_detection: Option<RawOutlierDetection>,
    ambiguous_writes: Option<RawAmbiguousWrites>,
    groups: Option<RawGroups>,
    web: Option<RawWeb>,
    authorization: Option<RawAuthorization>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthorization {
    #[serde(default)]
    users: std::collections::BTreeMap<String, RawUserRules>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUserRules {
    push_jobs: Option<String>,
    #[serde(default)]
    admin: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroups {
    expire_after: Option<PromDuration>,
    #[serde(default)]
    expire_overrides: Vec<RawExpireOverride>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpireOverride {
    job: String,
    expire_after: PromDuration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsulServer {
    addr: Option<String>,
    username: Option<String>,
    password: Option<String>,
    register_service_name: Option<String>,
    register: Option<bool>,
    check_interval: Option<PromDuration>,
    check_timeout: Option<PromDuration>,
    deregister_critical_after: Option<PromDuration>,
    datacenter: Option<String>,
    tag: Option<String>,
    token: Option<String>,
    scheme: Option<ConsulScheme>,
    tls: Option<RawConsulTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsulTls {
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPushgateway {
    port: Option<u16>,
    #[serde(default)]
    servers: Option<Vec<String>>,
    scheme: Option<NodeScheme>,
    tls_config: Option<RawNodeTls>,
    basic_auth: Option<RawBasicAuth>,
}

/// `pushgateway.tls_config`, the keys of a Prometheus scrape config's `tls_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeTls {
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    server_name: Option<String>,
    insecure_skip_verify: Option<bool>,
}

/// `pushgateway.basic_auth`, as in a Prometheus scrape config. Not `Debug`: it holds the password as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    username: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
}

impl std::fmt::Debug for RawBasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBasicAuth")
            .field("username", &self.username)
            .field(
                "password",
                &self.password.as_ref().map(|_| crate::secret::REDACTED),
            )
            .field("password_file", &self.password_file)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    interval: Option<PromDuration>,
    timeout: Option<PromDuration>,
    unhealthy_threshold: Option<u32>,
    healthy_threshold: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRing {
    algorithm: Option<Algorithm>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    max_body_size: Option<ByteSize>,
    connect_timeout: Option<PromDuration>,
    upstream_timeout: Option<PromDuration>,
    client_body_timeout: Option<PromDuration>,
    retry: Option<bool>,
    shutdown_timeout: Option<PromDuration>,
    per_node_pool: Option<bool>,
    max_in_flight_per_node: Option<usize>,
    max_body_memory: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutlierDetection {
    consecutive_failures: Option<u32>,
    base_ejection_time: Option<PromDuration>,
    max_ejection_time: Option<PromDuration>,
    max_ejected_percent: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAmbiguousWrites {
    settle_time: Option<PromDuration>,
    linger: Option<PromDuration>,
    max_groups: Option<usize>,
    max_bytes: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    max_connections: Option<usize>,
    header_read_timeout: Option<PromDuration>,
    idle_timeout: Option<PromDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRead {
    timeout: Option<PromDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRebalance {
    enabled: Option<bool>,
    interval: Option<PromDuration>,
    concurrency: Option<usize>,
    max_age: Option<PromDuration>,
    retries: Option<u32>,
}

// ---- The validated configuration ----------------------------------------------------------------------------

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen_addr: String,
    pub mode: Mode,
    /// Configured Pushgateways as `host:port`, deduplicated, in file order.
    pub servers: Vec<String>,
    pub consul: Option<ConsulConfig>,
    pub health_check: HealthCheckConfig,
    pub ring_algorithm: Algorithm,
    pub proxy: ProxyConfig,
    pub rebalance: RebalanceConfig,
    pub read: ReadConfig,
    pub outlier_detection: OutlierDetectionConfig,
    pub ambiguous_writes: AmbiguousWritesConfig,
    pub groups: GroupsConfig,
    /// How the gateway talks to every Pushgateway: scheme, TLS, basic auth.
    pub upstream: UpstreamConfig,
    /// Client connections; read once at start (like `http_listen_addr`, a reload does not change them).
    pub web: WebConfig,
    /// `authorization`: who may push which jobs and use the admin endpoints; `None`: every authenticated user
    /// may do everything (the behaviour without the section).
    pub authorization: Option<Authorization>,
}

/// `pushgateway.scheme`: how every Pushgateway is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeScheme {
    #[default]
    Http,
    Https,
}

impl NodeScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeScheme::Http => "http",
            NodeScheme::Https => "https",
        }
    }

    /// `http://` or `https://`.
    pub fn prefix(self) -> &'static str {
        match self {
            NodeScheme::Http => "http://",
            NodeScheme::Https => "https://",
        }
    }
}

/// `pushgateway.scheme`, `tls_config` and `basic_auth`: used for every request to a Pushgateway (pushes, probes,
/// reads, the rebalancer, repairs, admin wipe).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub scheme: NodeScheme,
    pub tls: NodeTlsConfig,
    pub basic_auth: Option<BasicAuth>,
}

/// `pushgateway.tls_config`. Paths are PEM files, read when the client is built (at start and on reload).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTlsConfig {
    /// Replaces the built-in roots (as in Prometheus).
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// The name the node certificates are verified against (and sent as SNI) instead of each node's host.
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
}

/// `pushgateway.basic_auth`, with `password_file` already read (it is read again on every reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: Secret,
}

impl BasicAuth {
    /// The `Authorization` value, `Basic <base64(username:password)>` (RFC 7617).
    pub fn header_value(&self) -> Secret {
        use base64::Engine as _;
        let credentials = format!("{}:{}", self.username, self.password.expose());
        Secret::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ))
    }
}

/// `groups`: group expiry, done by the replica that rebalances (see `crate::rebalance`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupsConfig {
    /// Groups whose last client push is older than this are deleted; `None`: groups never expire.
    pub expire_after: Option<Duration>,
    /// Per-job limits; the first whose regex matches the whole job name wins. `None`: never expires.
    pub expire_overrides: Vec<ExpireOverride>,
}

#[derive(Clone, Debug)]
pub struct ExpireOverride {
    /// Anchored: must match the whole job name, as Prometheus regexes do.
    pub job: regex::Regex,
    pub expire_after: Option<Duration>,
}

impl PartialEq for ExpireOverride {
    fn eq(&self, other: &Self) -> bool {
        self.job.as_str() == other.job.as_str() && self.expire_after == other.expire_after
    }
}

impl Eq for ExpireOverride {}

impl GroupsConfig {
    /// The expiry limit of groups of `job`.
    pub fn expire_after(&self, job: &str) -> Option<Duration> {
        self.expire_overrides
            .iter()
            .find(|o| o.job.is_match(job))
            .map_or(self.expire_after, |o| o.expire_after)
    }

    /// Whether any group can expire.
    pub fn expiry_enabled(&self) -> bool {
        self.expire_after.is_some()
            || self
                .expire_overrides
                .iter()
                .any(|o| o.expire_after.is_some())
    }
}

/// `outlier_detection`: passive failure detection on the push path (see `crate::outlier`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierDetectionConfig {
    /// Pushes in a row that time out or cannot connect before a node is ejected from the ring; 0 turns
    /// ejection off.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long; the n-th one in a row n times as long.
    pub base_ejection_time: Duration,
    /// No ejection lasts longer.
    pub max_ejection_time: Duration,
    /// At most this share of the healthy nodes is ejected at once (at least one node may always be ejected,
    /// and the last node of the ring never is).
    pub max_ejected_percent: u32,
}

impl Default for OutlierDetectionConfig {
    fn default() -> Self {
        OutlierDetectionConfig {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// `ambiguous_writes`: pushes whose outcome on a node is unknown (see `crate::ambiguous`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmbiguousWritesConfig {
    /// After a node that may still apply an ambiguous push answers again, wait this long before repairing
    /// (only for pushes whose exchange ended without the node's answer).
    pub settle_time: Duration,
    /// How long a timed-out push's connection is kept open to see when the node answers it.
    pub linger: Duration,
    /// Groups remembered at most; the oldest is forgotten (and counted) beyond it.
    pub max_groups: usize,
    /// Bytes of acknowledged bodies remembered at most, over all groups.
    pub max_bytes: u64,
}

impl Default for AmbiguousWritesConfig {
    fn default() -> Self {
        AmbiguousWritesConfig {
            settle_time: Duration::from_secs(2),
            linger: Duration::from_secs(300),
            max_groups: 10_000,
            max_bytes: 64 << 20,
        }
    }
}

/// `web`: limits on client connections (see `crate::server`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebConfig {
    /// Connections served at once; further ones wait in the listen backlog (`--web.max-connections`).
    pub max_connections: usize,
    /// From when the gateway starts waiting for a request (on connect, or after the previous response) until
    /// its whole head (request line and headers) has arrived; then the connection is closed.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open without sending a byte of its next request (after connecting, or
    /// after the previous response). At most `header_read_timeout`, which bounds that wait too.
    pub idle_timeout: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            // Prometheus' and the Pushgateway's `--web.max-connections` default.
            max_connections: 512,
            // nginx's `client_header_timeout` default.
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The read side (`GET /metrics`, `/api/v1/...`), fanned out to every healthy node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadConfig {
    /// How long one node may take to answer a fanned-out read; a slower node is left out of the answer.
    pub timeout: Duration,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulConfig {
    /// `host:port` of the Consul agent's HTTP API (a `http://` / `https://` prefix in the file sets `scheme`).
    pub addr: String,
    pub scheme: ConsulScheme,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub service_name: String,
    /// Register `pushgateway.servers` in Consul (off for fleets that register Pushgateways themselves).
    pub register: bool,
    pub check_interval: Duration,
    pub check_timeout: Duration,
    /// Consul's `DeregisterCriticalServiceAfter`; `None` keeps a failing instance registered so it can rejoin.
    pub deregister_critical_after: Option<Duration>,
    pub datacenter: Option<String>,
    /// Only instances carrying this tag join the ring; registrations get it too.
    pub tag: Option<String>,
    /// Sent as `X-Consul-Token`.
    pub token: Option<Secret>,
    pub tls: ConsulTlsConfig,
}

/// How the gateway talks to the Consul agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsulScheme {
    #[default]
    Http,
    Https,
}

impl ConsulScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsulScheme::Http => "http",
            ConsulScheme::Https => "https",
        }
    }
}

/// TLS towards Consul (`scheme: https`). Paths are PEM files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsulTlsConfig {
    /// Trusted in addition to the system roots.
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub insecure_skip_verify: bool,
}

/// Consul's health check defaults for registered Pushgateways.
pub const DEFAULT_CONSUL_CHECK_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_CONSUL_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Larger request bodies get `413`.
    pub max_body_size: u64,
    pub connect_timeout: Duration,
    /// How long the owner may take to answer before the push is retried on the next node.
    pub upstream_timeout: Duration,
    /// How long a client may take to send its body.
    pub client_body_timeout: Duration,
    /// Retry once on the next node when the owner cannot be reached.
    pub retry: bool,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Proxied pushes use the per-node, handler-driven connection pool (`upstream_pool`); `false` falls back to
    /// the shared client. On by default: 11% fewer instructions and 3-7% less CPU per push (bench/PROFILING.md).
    pub per_node_pool: bool,
    /// Pushes forwarded to one node at once; beyond it a push goes to the next node (or gets 503), so one slow
    /// node cannot hold every connection.
    pub max_in_flight_per_node: usize,
    /// Request bodies held in memory at once, over all connections; a push beyond it gets `503`.
    pub max_body_memory: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_body_size: 16 << 20,
            connect_timeout: Duration::from_secs(2),
            upstream_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(30),
            retry: true,
            shutdown_timeout: Duration::from_secs(15),
            per_node_pool: true,
            max_in_flight_per_node: 128,
            max_body_memory: 256 << 20,
        }
    }
}

/// `rebalance`: moving groups to their owner after the ring changed (see `crate::rebalance`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebalanceConfig {
    /// Whether this replica rebalances. With static membership this is the switch that picks the one replica
    /// that does; with Consul, the replicas with it on elect one leader among themselves.
    pub enabled: bool,
    /// A pass also runs this often without a ring change, to catch drift (e.g. a push retried on another node).
    pub interval: Duration,
    /// Group copies and deletes in flight at once, over all nodes.
    pub concurrency: usize,
    /// Groups on a wrong node whose last push is older than this are deleted there instead of copied. `None`: off.
    pub max_age: Option<Duration>,
    /// Extra attempts for a copy or delete that failed with a network error or a 5xx.
    pub retries: u32,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            concurrency: 8,
            max_age: None,
            retries: 3,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        // An empty file is a valid (empty) config; serde_yaml_ng would call it a missing document.
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|err| ConfigError::Parse {
                path: String::new(),
                message: err.to_string(),
            })?
        };
        Config::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let listen_addr = match raw.http_listen_addr.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_LISTEN_ADDR.to_string(),
            Some(addr) => addr.to_string(),
        };
        normalize_listen_addr(&listen_addr)
            .map_err(|e| invalid(format!("http_listen_addr: {e}")))?;

        let pushgateway = raw.pushgateway.unwrap_or_default();
        let default_port = match pushgateway.port {
            Some(0) => {
                return Err(invalid(
                    "pushgateway.port: 0 is not a valid port; use e.g. 9091",
                ))
            }
            Some(port) => port,
            None => DEFAULT_PUSHGATEWAY_PORT,
        };
        let mut servers: Vec<String> = Vec::new();
        for (index, entry) in pushgateway.servers.unwrap_or_default().iter().enumerate() {
            let node = node_address(entry, default_port)
                .map_err(|e| invalid(format!("pushgateway.servers[{index}]: {e}")))?;
            if !servers.contains(&node) {
                servers.push(node);
            }
        }

        let upstream = validate_upstream(
            pushgateway.scheme,
            pushgateway.tls_config,
            pushgateway.basic_auth,
        )?;
        let consul = raw.consul_server.map(validate_consul).transpose()?;
        if consul.is_none() && servers.is_empty() {
            return Err(invalid(
                "pushgateway.servers: empty; list the Pushgateways to shard over (e.g. [\"10.0.0.1\", \"10.0.0.2:9091\"]) \
                 or configure consul_server",
            ));
        }

        let defaults = HealthCheckConfig::default();
        let raw_hc = raw.health_check.unwrap_or_default();
        let health_check = HealthCheckConfig {
            interval: raw_hc.interval.map_or(defaults.interval, |d| d.0),
            timeout: raw_hc.timeout.map_or(defaults.timeout, |d| d.0),
            unhealthy_threshold: raw_hc
                .unhealthy_threshold
                .unwrap_or(defaults.unhealthy_threshold),
            healthy_threshold: raw_hc
                .healthy_threshold
                .unwrap_or(defaults.healthy_threshold),
        };
        if health_check.interval.is_zero() {
            return Err(invalid(
                "health_check.interval: must be greater than 0, e.g. 2s",
            ));
        }
        if health_check.timeout.is_zero() || health_check.timeout > health_check.interval {
            return Err(invalid(format!(
                "health_check.timeout: must be greater than 0 and at most health_check.interval ({})",
                humantime::format_duration(health_check.interval)
            )));
        }
        if health_check.unhealthy_threshold == 0 || health_check.healthy_threshold == 0 {
            return Err(invalid(
                "health_check.unhealthy_threshold and healthy_threshold: must be at least 1",
            ));
        }

        let proxy_defaults = ProxyConfig::default();
        let raw_proxy = raw.proxy.unwrap_or_default();
        let proxy = ProxyConfig {
            max_body_size: raw_proxy
                .max_body_size
                .map_or(proxy_defaults.max_body_size, |s| s.0),
            connect_timeout: raw_proxy
                .connect_timeout
                .map_or(proxy_defaults.connect_timeout, |d| d.0),
            upstream_timeout: raw_proxy
                .upstream_timeout
                .map_or(proxy_defaults.upstream_timeout, |d| d.0),
            client_body_timeout: raw_proxy
                .client_body_timeout
                .map_or(proxy_defaults.client_body_timeout, |d| d.0),
            retry: raw_proxy.retry.unwrap_or(proxy_defaults.retry),
            shutdown_timeout: raw_proxy
                .shutdown_timeout
                .map_or(proxy_defaults.shutdown_timeout, |d| d.0),
            per_node_pool: raw_proxy
                .per_node_pool
                .unwrap_or(proxy_defaults.per_node_pool),
            max_in_flight_per_node: raw_proxy
                .max_in_flight_per_node
                .unwrap_or(proxy_defaults.max_in_flight_per_node),
            max_body_memory: raw_proxy
                .max_body_memory
                .map_or(proxy_defaults.max_body_memory, |s| s.0),
        };
        if proxy.max_in_flight_per_node == 0 {
            return Err(invalid(
                "proxy.max_in_flight_per_node: must be at least 1, e.g. 128",
            ));
        }
        if proxy.max_body_memory < proxy.max_body_size {
            return Err(invalid(format!(
                "proxy.max_body_memory: {} is less than proxy.max_body_size ({}), so a body of the allowed size \
                 could never be accepted; set it to at least proxy.max_body_size",
                proxy.max_body_memory, proxy.max_body_size
            )));
        }
        if proxy.max_body_size == 0 {
            return Err(invalid(
                "proxy.max_body_size: must be greater than 0, e.g. 16MiB",
            ));
        }
        for (key, value) in [
            ("proxy.connect_timeout", proxy.connect_timeout),
            ("proxy.upstream_timeout", proxy.upstream_timeout),
            ("proxy.client_body_timeout", proxy.client_body_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(format!("{key}: must be greater than 0")));
            }
        }

        let read = ReadConfig {
            timeout: raw
                .read
                .and_then(|r| r.timeout)
                .map_or(ReadConfig::default().timeout, |d| d.0),
        };
        if read.timeout.is_zero() {
            return Err(invalid("read.timeout: must be greater than 0, e.g. 5s"));
        }
        let rebalance = validate_rebalance(raw.rebalance.unwrap_or_default())?;
        let outlier_detection =
            validate_outlier_detection(raw.outlier_detection.unwrap_or_default())?;
        let ambiguous_writes = validate_ambiguous_writes(raw.ambiguous_writes.unwrap_or_default())?;
        let groups = validate_groups(raw.groups.unwrap_or_default())?;
        let web = validate_web(raw.web.unwrap_or_default())?;

        Ok(Config {
            listen_addr,
            mode: raw.mode.unwrap_or_default(),
            servers,
            consul,
            health_check,
            ring_algorithm: raw.ring.and_then(|r| r.algorithm).unwrap_or_default(),
            proxy,
            read,
            rebalance,
            outlier_detection,
            ambiguous_writes,
            groups,
            upstream,
            web,
            authorization: raw.authorization.map(validate_authorization).transpose()?,
        })
    }
}

fn validate_authorization(raw: RawAuthorization) -> Result<Authorization, ConfigError> {
    let mut users = Vec::with_capacity(raw.users.len());
    for (user, rules) in raw.users {
        let key = format!("authorization.users.{user}");
        if user.is_empty() || user.contains(':') {
            return Err(invalid(format!(
                "{key}: not a user name basic auth can carry (empty, or with ':')"
            )));
        }
        let checked = UserRules::new(rules.push_jobs.as_deref(), rules.admin).map_err(|e| {
            invalid(format!(
                "{key}.push_jobs: {:?} is not a valid regular expression: {e}",
                rules.push_jobs.as_deref().unwrap_or_default()
            ))
        })?;
        users.push((user, checked));
    }
    Ok(Authorization::new(users))
}

fn validate_groups(raw: RawGroups) -> Result<GroupsConfig, ConfigError> {
    let nonzero = |d: PromDuration| Some(d.0).filter(|d| !d.is_zero());
    let mut expire_overrides = Vec::with_capacity(raw.expire_overrides.len());
    for (index, entry) in raw.expire_overrides.into_iter().enumerate() {
        let job = regex::Regex::new(&format!("^(?:{})$", entry.job)).map_err(|e| {
            invalid(format!(
                "groups.expire_overrides[{index}].job: {:?} is not a valid regular expression: {e}",
                entry.job
            ))
        })?;
        expire_overrides.push(ExpireOverride {
            job,
            expire_after: nonzero(entry.expire_after),
        });
    }
    Ok(GroupsConfig {
        expire_after: raw.expire_after.and_then(nonzero),
        expire_overrides,
    })
}

fn validate_upstream(
    scheme: Option<NodeScheme>,
    tls: Option<RawNodeTls>,
    basic_auth: Option<RawBasicAuth>,
) -> Result<UpstreamConfig, ConfigError> {
    let scheme = scheme.unwrap_or_default();
    let non_empty = |value: Option<String>| {
        value
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let tls_given = tls.is_some();
    let raw_tls = tls.unwrap_or_default();
    let tls = NodeTlsConfig {
        ca_file: non_empty(raw_tls.ca_file),
        cert_file: non_empty(raw_tls.cert_file),
        key_file: non_empty(raw_tls.key_file),
        server_name: non_empty(raw_tls.server_name),
        insecure_skip_verify: raw_tls.insecure_skip_verify.unwrap_or(false),
    };
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(invalid(
            "pushgateway.tls_config: cert_file and key_file go together; set both (client certificate) or neither",
        ));
    }
    if tls_given && scheme == NodeScheme::Http {
        return Err(invalid(
            "pushgateway.tls_config: set but pushgateway.scheme is http; set scheme: https or remove tls_config",
        ));
    }
    let basic_auth = basic_auth
        .map(|raw| {
            let username = raw.username.unwrap_or_default();
            if username.is_empty() {
                return Err(invalid(
                    "pushgateway.basic_auth.username: missing; basic_auth needs a username and a password or password_file",
                ));
            }
            // RFC 7617: the user-id cannot contain a colon (the first one ends it).
            if username.contains(':') || username.chars().any(char::is_control) {
                return Err(invalid(
                    "pushgateway.basic_auth.username: must not contain ':' or control characters",
                ));
            }
            let password = match (raw.password, non_empty(raw.password_file)) {
                (Some(password), None) => password,
                (None, Some(path)) => read_password_file(&path)?,
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "pushgateway.basic_auth: both password and password_file are set; keep exactly one",
                    ))
                }
                (None, None) => {
                    return Err(invalid(
                        "pushgateway.basic_auth: set password or password_file (exactly one)",
                    ))
                }
            };
            Ok(BasicAuth {
                username,
                password: Secret::new(password),
            })
        })
        .transpose()?;
    Ok(UpstreamConfig {
        scheme,
        tls,
        basic_auth,
    })
}

/// Reads `pushgateway.basic_auth.password_file`; surrounding whitespace (a trailing newline) is not part of
/// the password, as in Prometheus.
fn read_password_file(path: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        invalid(format!(
            "pushgateway.basic_auth.password_file: cannot read {path:?}: {error}"
        ))
    })?;
    let password = text.trim();
    if password.is_empty() {
        return Err(invalid(format!(
            "pushgateway.basic_auth.password_file: {path:?} is empty; write the password into it"
        )));
    }
    Ok(password.to_string())
}

fn validate_outlier_detection(
    raw: RawOutlierDetection,
) -> Result<OutlierDetectionConfig, ConfigError> {
    let defaults = OutlierDetectionConfig::default();
    let config = OutlierDetectionConfig {
        consecutive_failures: raw
            .consecutive_failures
            .unwrap_or(defaults.consecutive_failures),
        base_ejection_time: raw
            .base_ejection_time
            .map_or(defaults.base_ejection_time, |d| d.0),
        max_ejection_time: raw
            .max_ejection_time
            .map_or(defaults.max_ejection_time, |d| d.0),
        max_ejected_percent: raw
            .max_ejected_percent
            .unwrap_or(defaults.max_ejected_percent),
    };
    if config.base_ejection_time.is_zero() {
        return Err(invalid(
            "outlier_detection.base_ejection_time: must be greater than 0, e.g. 30s",
        ));
    }
    if config.max_ejection_time < config.base_ejection_time {
        return Err(invalid(format!(
            "outlier_detection.max_ejection_time: must be at least outlier_detection.base_ejection_time ({})",
            humantime::format_duration(config.base_ejection_time)
        )));
    }
    if config.max_ejected_percent > 100 {
        return Err(invalid(
            "outlier_detection.max_ejected_percent: must be between 0 and 100",
        ));
    }
    Ok(config)
}

fn validate_ambiguous_writes(
    raw: RawAmbiguousWrites,
) -> Result<AmbiguousWritesConfig, ConfigError> {
    let defaults = AmbiguousWritesConfig::default();
    let config = AmbiguousWritesConfig {
        settle_time: raw.settle_time.map_or(defaults.settle_time, |d| d.0),
        linger: raw.linger.map_or(defaults.linger, |d| d.0),
        max_groups: raw.max_groups.unwrap_or(defaults.max_groups),
        max_bytes: raw.max_bytes.map_or(defaults.max_bytes, |s| s.0),
    };
    if config.max_groups == 0 || config.max_bytes == 0 {
        return Err(invalid(
            "ambiguous_writes.max_groups and max_bytes: must be greater than 0 (e.g. 10000 and 64MiB)",
        ));
    }
    Ok(config)
}

fn validate_web(raw: RawWeb) -> Result<WebConfig, ConfigError> {
    let defaults = WebConfig::default();
    let web = WebConfig {
        max_connections: raw.max_connections.unwrap_or(defaults.max_connections),
        header_read_timeout: raw
            .header_read_timeout
            .map_or(defaults.header_read_timeout, |d| d.0),
        idle_timeout: raw.idle_timeout.map_or(defaults.idle_timeout, |d| d.0),
    };
    if web.max_connections == 0 {
        return Err(invalid("web.max_connections: must be at least 1, e.g. 512"));
    }
    for (key, value) in [
        ("web.header_read_timeout", web.header_read_timeout),
        ("web.idle_timeout", web.idle_timeout),
    ] {
        if value.is_zero() {
            return Err(invalid(format!("{key}: must be greater than 0, e.g. 60s")));
        }
    }
    if web.idle_timeout > web.header_read_timeout {
        return Err(invalid(format!(
            "web.idle_timeout: {} is longer than web.header_read_timeout ({}), which already closes a connection \
             that sends no complete request head within it; set it at most {}",
            humantime::format_duration(web.idle_timeout),
            humantime::format_duration(web.header_read_timeout),
            humantime::format_duration(web.header_read_timeout),
        )));
    }
    Ok(web)
}

fn validate_consul(consul: RawConsulServer) -> Result<ConsulConfig, ConfigError> {
    let addr = consul
        .addr
        .map(|a| a.trim().trim_end_matches('/').to_string())
        .unwrap_or_default();
    // The Go client accepted a scheme in the address; honour it, and let an explicit `scheme` agree with it.
    let (addr, scheme_in_addr) = if let Some(rest) = addr.strip_prefix("https://") {
        (rest.to_string(), Some(ConsulScheme::Https))
    } else if let Some(rest) = addr.strip_prefix("http://") {
        (rest.to_string(), Some(ConsulScheme::Http))
    } else {
        (addr, None)
    };
    // Checked before any message that quotes the address, which would then show the password.
    if addr.contains('@') {
        return Err(invalid(
            "consul_server.addr: contains user info (user:password@); it would be shown in logs and /-/ring. \
             Remove it and set consul_server.username and consul_server.password instead",
        ));
    }
    if addr.is_empty() {
        return Err(invalid(
            "consul_server.addr: missing; set it to the Consul agent's host:port, e.g. localhost:8500",
        ));
    }
    if addr.contains('/') || addr.contains(char::is_whitespace) {
        return Err(invalid(format!(
            "consul_server.addr: {addr:?} is not host:port; use e.g. localhost:8500"
        )));
    }
    let scheme = match (consul.scheme, scheme_in_addr) {
        (Some(explicit), Some(from_addr)) if explicit != from_addr => {
            return Err(invalid(format!(
                "consul_server.scheme: {} contradicts the {}:// prefix of consul_server.addr; drop one of them",
                explicit.as_str(),
                from_addr.as_str()
            )))
        }
        (explicit, from_addr) => explicit.or(from_addr).unwrap_or_default(),
    };
    let check_interval = consul
        .check_interval
        .map_or(DEFAULT_CONSUL_CHECK_INTERVAL, |d| d.0);
    let check_timeout = consul
        .check_timeout
        .map_or(DEFAULT_CONSUL_CHECK_TIMEOUT, |d| d.0);
    if check_interval < Duration::from_secs(1) {
        return Err(invalid(
            "consul_server.check_interval: Consul needs at least 1s, e.g. 5s",
        ));
    }
    if check_timeout.is_zero() || check_timeout > check_interval {
        return Err(invalid(format!(
            "consul_server.check_timeout: must be greater than 0 and at most consul_server.check_interval ({})",
            humantime::format_duration(check_interval)
        )));
    }
    let deregister_critical_after = consul.deregister_critical_after.map(|d| d.0);
    // Consul silently raises shorter values to its 1m minimum; say so instead of pretending 5s works.
    if deregister_critical_after.is_some_and(|d| d < Duration::from_secs(60)) {
        return Err(invalid(
            "consul_server.deregister_critical_after: Consul enforces at least 1m; use 1m or more, or leave it unset \
             so a failing Pushgateway stays registered and rejoins when it recovers",
        ));
    }
    let non_empty = |value: Option<String>| {
        value
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let raw_tls = consul.tls.unwrap_or_default();
    let tls = ConsulTlsConfig {
        ca_file: non_empty(raw_tls.ca_file),
        cert_file: non_empty(raw_tls.cert_file),
        key_file: non_empty(raw_tls.key_file),
        insecure_skip_verify: raw_tls.insecure_skip_verify.unwrap_or(false),
    };
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(invalid(
            "consul_server.tls: cert_file and key_file go together; set both (client certificate) or neither",
        ));
    }
    let tls_configured = tls != ConsulTlsConfig::default();
    if tls_configured && scheme == ConsulScheme::Http {
        return Err(invalid(
            "consul_server.tls: set but consul_server.scheme is http; set scheme: https or remove tls",
        ));
    }
    Ok(ConsulConfig {
        addr,
        scheme,
        username: non_empty(consul.username),
        password: consul.password.filter(|p| !p.is_empty()).map(Secret::new),
        service_name: non_empty(consul.register_service_name)
            .unwrap_or_else(|| "pushgateway".to_string()),
        register: consul.register.unwrap_or(true),
        check_interval,
        check_timeout,
        deregister_critical_after,
        datacenter: non_empty(consul.datacenter),
        tag: non_empty(consul.tag),
        token: non_empty(consul.token).map(Secret::new),
        tls,
    })
}

fn validate_rebalance(raw: RawRebalance) -> Result<RebalanceConfig, ConfigError> {
    let defaults = RebalanceConfig::default();
    let rebalance = RebalanceConfig {
        enabled: raw.enabled.unwrap_or(defaults.enabled),
        interval: raw.interval.map_or(defaults.interval, |d| d.0),
        concurrency: raw.concurrency.unwrap_or(defaults.concurrency),
        max_age: raw.max_age.map(|d| d.0).filter(|d| !d.is_zero()),
        retries: raw.retries.unwrap_or(defaults.retries),
    };
    if rebalance.interval.is_zero() {
        return Err(invalid(
            "rebalance.interval: must be greater than 0, e.g. 1m",
        ));
    }
    if rebalance.concurrency == 0 {
        return Err(invalid("rebalance.concurrency: must be at least 1, e.g. 8"));
    }
    Ok(rebalance)
}

/// Turns a Go-style listen address (`:9292`, `host:port`) into one `tokio::net::TcpListener::bind` accepts.
pub fn normalize_listen_addr(addr: &str) -> Result<String, String> {
    let (host, port) = split_host_port(addr).ok_or_else(|| {
        format!("{addr:?} is not host:port; use e.g. \":9292\" or \"127.0.0.1:9292\"")
    })?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{addr:?} has an invalid port; use a number from 0 to 65535"))?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// Splits `host:port` / `[v6]:port`; the host may be empty (`:9292`).
fn split_host_port(addr: &str) -> Option<(&str, &str)> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = addr.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host, port))
}

/// A `pushgateway.servers` entry as the node id `host:port`: a bare host gets `default_port`.
pub fn node_address(entry: &str, default_port: u16) -> Result<String, String> {
    let entry = entry.trim();
    let entry = entry
        .strip_prefix("http://")
        .unwrap_or(entry)
        .trim_end_matches('/');
    if entry.is_empty() {
        return Err("empty entry; give a host or host:port".to_string());
    }
    // Not quoted back: the entry would show the password.
    if entry.contains('@') {
        return Err(
            "contains user info (user:password@), which would be shown in logs and /-/ring; \
                    remove it (the gateway sends no credentials to Pushgateways)"
                .to_string(),
        );
    }
    if entry.contains('/') || entry.contains(char::is_whitespace) {
        return Err(format!("{entry:?} is not a host or host:port"));
    }
    let bracketed_v6 = entry.starts_with('[');
    let bare_v6 = !bracketed_v6 && entry.matches(':').count() > 1;
    if bare_v6 {
        return Ok(format!("[{entry}]:{default_port}"));
    }
    if bracketed_v6 && entry.ends_with(']') {
        return Ok(format!("{entry}:{default_port}"));
    }
    match split_host_port(entry) {
        Some((host, port)) => {
            if host.is_empty() {
                return Err(format!("{entry:?} has no host"));
            }
            match port.parse::<u16>() {
                Ok(p) if p != 0 => Ok(entry.to_string()),
                _ => Err(format!(
                    "{entry:?} has an invalid port; use a number from 1 to 65535"
                )),
            }
        }
        None => Ok(format!("{entry}:{default_port}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each config text must be rejected with an error that mentions the expected words.
    fn assert_each_error_mentions(cases: &[(&str, &str)]) {
        for (text, expected) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "config {text:?}: error {err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn authorization_rules_parse_and_bad_ones_name_their_key() {
        use crate::authorization::Action;
        let base = "pushgateway: {servers: [a]}\n";
        assert_eq!(Config::parse(base).unwrap().authorization, None);
        let config = Config::parse(&format!(
            "{base}authorization:\n  users:\n    team-a: {{push_jobs: 'team_a_.*'}}\n    ops: {{push_jobs: '.*', admin: true}}\n    reader: {{}}\n"
        ))
        .unwrap();
        let authz = config.authorization.unwrap();
        assert_eq!(
            authz.users().collect::<Vec<_>>(),
            ["ops", "reader", "team-a"]
        );
        assert!(authz
            .check(Some("team-a"), Action::Push { job: "team_a_1" })
            .is_ok());
        assert!(authz
            .check(Some("reader"), Action::Push { job: "x" })
            .is_err());
        assert!(authz
            .check(
                Some("ops"),
                Action::Admin {
                    endpoint: "/-/reload"
                }
            )
            .is_ok());
        assert_each_error_mentions(&[
            (
                "pushgateway: {servers: [a]}\nauthorization: {users: {team-a: {push_jobs: 'team_(a'}}}",
                "authorization.users.team-a.push_jobs: \"team_(a\" is not a valid regular expression",
            ),
            (
                "pushgateway: {servers: [a]}\nauthorization: {users: {team-a: {push_job: 'a'}}}",
                "unknown field `push_job`",
            ),
            (
                "pushgateway: {servers: [a]}\nauthorization: {roles: {}}",
                "unknown field `roles`",
            ),
            (
                "pushgateway: {servers: [a]}\nauthorization: {users: {'a:b': {}}}",
                "authorization.users.a:b",
            ),
        ]);
    }

    #[test]
    fn the_commented_example_parses_with_its_authorization_section_on() {
        let example = include_str!("../examples/dynamic-sharding.yml");
        Config::parse(example).unwrap();
        let start = example.find("# authorization:").unwrap();
        let uncommented: String = example[start..]
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n");
        let config = Config::parse(&format!("{}{uncommented}\n", &example[..start])).unwrap();
        let authz = config.authorization.unwrap();
        assert_eq!(authz.users().collect::<Vec<_>>(), ["ops", "team-a"]);
    }

    #[test]
    fn accepts_the_go_originals_file_unchanged() {
        let text = "consul_server:\n  addr: localhost:8500\n  username:\n  password:\n  register_service_name: pushgateway\n\
                    http_listen_addr: :9292\npushgateway:\n  port: 9091\n  servers:\n    - 1.1.1.1\n    - 1.1.1.2\n";
        let config = Config::parse(text).unwrap();
        assert_eq!(config.servers, vec!["1.1.1.1:9091", "1.1.1.2:9091"]);
        assert_eq!(config.listen_addr, ":9292");
        let consul = config.consul.unwrap();
        assert_eq!(consul.addr, "localhost:8500");
        assert_eq!(consul.username, None);
        assert_eq!(consul.service_name, "pushgateway");
        assert_eq!(config.mode, Mode::Proxy);
    }

    #[test]
    fn consul_defaults_and_new_keys() {
        let config = Config::parse("consul_server: {addr: 'localhost:8500'}").unwrap();
        let consul = config.consul.unwrap();
        assert!(
            config.servers.is_empty(),
            "servers may be empty with Consul"
        );
        assert_eq!(consul.scheme, ConsulScheme::Http);
        assert!(consul.register);
        assert_eq!(consul.check_interval, Duration::from_secs(5));
        assert_eq!(consul.check_timeout, Duration::from_secs(2));
        assert_eq!(consul.deregister_critical_after, None);

        let config = Config::parse(
            "consul_server:\n  addr: https://consul.example:8501\n  username: u\n  password: p\n  register: false\n  \
             check_interval: 1s\n  check_timeout: 500ms\n  deregister_critical_after: 10m\n  datacenter: dc2\n  \
             tag: shard\n  token: secret\n  tls: {ca_file: /ca.pem, cert_file: /c.pem, key_file: /k.pem, \
             insecure_skip_verify: true}\n",
        )
        .unwrap();
        let consul = config.consul.unwrap();
        assert_eq!(consul.addr, "consul.example:8501");
        assert_eq!(consul.scheme, ConsulScheme::Https);
        assert_eq!(consul.username.as_deref(), Some("u"));
        assert!(!consul.register);
        assert_eq!(consul.check_timeout, Duration::from_millis(500));
        assert_eq!(
            consul.deregister_critical_after,
            Some(Duration::from_secs(600))
        );
        assert_eq!(consul.datacenter.as_deref(), Some("dc2"));
        assert_eq!(consul.tag.as_deref(), Some("shard"));
        assert_eq!(consul.token.as_ref().map(Secret::expose), Some("secret"));
        assert_eq!(consul.tls.ca_file.as_deref(), Some("/ca.pem"));
        assert!(consul.tls.insecure_skip_verify);
    }

    #[test]
    fn invalid_consul_settings_say_what_to_fix() {
        let cases = [
            (
                "consul_server: {addr: a:1, check_interval: 500ms}",
                "consul_server.check_interval",
            ),
            (
                "consul_server: {addr: a:1, check_interval: 2s, check_timeout: 3s}",
                "consul_server.check_timeout",
            ),
            (
                "consul_server: {addr: a:1, deregister_critical_after: 5s}",
                "consul_server.deregister_critical_after",
            ),
            ("consul_server: {addr: a:1, scheme: ftp}", "scheme"),
            (
                "consul_server: {addr: 'https://a:1', scheme: http}",
                "consul_server.scheme",
            ),
            (
                "consul_server: {addr: a:1, tls: {ca_file: /ca.pem}}",
                "scheme: https",
            ),
            (
                "consul_server: {addr: a:1, scheme: https, tls: {cert_file: /c.pem}}",
                "key_file",
            ),
            ("consul_server: {addr: a:1, tsl: {}}", "tsl"),
        ];
        assert_each_error_mentions(&cases);
    }

    #[test]
    fn the_per_node_pool_is_the_default_and_can_be_turned_off() {
        let servers = "pushgateway: {servers: ['a:1']}\n";
        assert!(Config::parse(servers).unwrap().proxy.per_node_pool);
        let off = Config::parse(&format!("{servers}proxy: {{per_node_pool: false}}\n")).unwrap();
        assert!(!off.proxy.per_node_pool);
    }

    #[test]
    fn server_entries_with_a_port_keep_it() {
        let config =
            Config::parse("pushgateway: {port: 9191, servers: [a, 'b:9300', '[::1]:9400', '::2']}")
                .unwrap();
        assert_eq!(
            config.servers,
            vec!["a:9191", "b:9300", "[::1]:9400", "[::2]:9191"]
        );
    }

    #[test]
    fn duplicate_servers_are_listed_once() {
        let config = Config::parse("pushgateway: {servers: [a, 'a:9091', b]}").unwrap();
        assert_eq!(config.servers, vec!["a:9091", "b:9091"]);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err =
            Config::parse("pushgateway: {servers: [a]}\nhealth_chek: {interval: 1s}").unwrap_err();
        assert!(err.to_string().contains("health_chek"), "{err}");
        let err = Config::parse("pushgateway: {servers: [a], prot: 1}").unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
    }

    #[test]
    fn fault_handling_keys_have_defaults_and_checked_values() {
        let config = Config::parse(
            "pushgateway: {servers: [a]}\noutlier_detection: {consecutive_failures: 5, base_ejection_time: 10s}\n\
             ambiguous_writes: {settle_time: 500ms, max_bytes: 1MiB}\nproxy: {max_in_flight_per_node: 7}",
        )
        .unwrap();
        assert_eq!(config.outlier_detection.consecutive_failures, 5);
        assert_eq!(
            config.outlier_detection.base_ejection_time,
            Duration::from_secs(10)
        );
        assert_eq!(
            config.outlier_detection.max_ejection_time,
            OutlierDetectionConfig::default().max_ejection_time
        );
        assert_eq!(
            config.ambiguous_writes.settle_time,
            Duration::from_millis(500)
        );
        assert_eq!(config.ambiguous_writes.max_bytes, 1 << 20);
        assert_eq!(config.proxy.max_in_flight_per_node, 7);
        for (yaml, key) in [
            (
                "outlier_detection: {base_ejection_time: 0s}",
                "outlier_detection.base_ejection_time",
            ),
            (
                "outlier_detection: {base_ejection_time: 1m, max_ejection_time: 30s}",
                "outlier_detection.max_ejection_time",
            ),
            (
                "outlier_detection: {max_ejected_percent: 101}",
                "outlier_detection.max_ejected_percent",
            ),
            (
                "ambiguous_writes: {max_groups: 0}",
                "ambiguous_writes.max_groups",
            ),
            (
                "proxy: {max_in_flight_per_node: 0}",
                "proxy.max_in_flight_per_node",
            ),
        ] {
            let err = Config::parse(&format!("pushgateway: {{servers: [a]}}\n{yaml}")).unwrap_err();
            assert!(err.to_string().contains(key), "{yaml}: {err}");
        }
    }

    #[test]
    fn no_servers_and_no_consul_is_an_error() {
        let err = Config::parse("mode: proxy").unwrap_err();
        assert!(err.to_string().contains("pushgateway.servers"), "{err}");
    }

    #[test]
    fn invalid_values_say_what_to_fix() {
        let cases = [
            ("pushgateway: {servers: [a]}\nmode: bounce", "mode"),
            (
                "pushgateway: {servers: ['a:99999']}",
                "pushgateway.servers[0]",
            ),
            (
                "pushgateway: {servers: [a]}\nhealth_check: {interval: 2x}",
                "invalid duration \"2x\"",
            ),
            (
                "pushgateway: {servers: [a]}\nhealth_check: {interval: 1s, timeout: 2s}",
                "health_check.timeout",
            ),
            (
                "pushgateway: {servers: [a]}\nhealth_check: {unhealthy_threshold: 0}",
                "unhealthy_threshold",
            ),
            (
                "pushgateway: {servers: [a]}\nhttp_listen_addr: nonsense",
                "http_listen_addr",
            ),
            (
                "pushgateway: {servers: [a]}\nring: {algorithm: maglev}",
                "algorithm",
            ),
            (
                "pushgateway: {servers: [a]}\nproxy: {max_body_size: 12 parsecs}",
                "invalid size",
            ),
            ("consul_server: {username: x}", "consul_server.addr"),
            (
                "pushgateway: {servers: [a]}\nproxy: {max_body_size: 2MiB, max_body_memory: 1MiB}",
                "proxy.max_body_memory",
            ),
            (
                "pushgateway: {servers: [a]}\nweb: {max_connections: 0}",
                "web.max_connections",
            ),
            (
                "pushgateway: {servers: [a]}\nweb: {header_read_timeout: 0s}",
                "web.header_read_timeout",
            ),
            (
                "pushgateway: {servers: [a]}\nweb: {header_read_timeout: 10s, idle_timeout: 1m}",
                "web.idle_timeout",
            ),
            (
                "pushgateway: {servers: [a]}\nweb: {max_conections: 5}",
                "max_conections",
            ),
        ];
        assert_each_error_mentions(&cases);
    }

    #[test]
    fn user_info_in_addresses_is_rejected_without_showing_the_password() {
        for (text, key) in [
            (
                "consul_server: {addr: 'http://admin:s3cr3t@consul.example:8500'}",
                "consul_server.addr",
            ),
            (
                "consul_server: {addr: 'admin:s3cr3t@consul.example:8500/'}",
                "consul_server.addr",
            ),
            (
                "pushgateway: {servers: ['http://admin:s3cr3t@10.0.0.1:9091']}",
                "pushgateway.servers[0]",
            ),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
        let err = Config::parse("consul_server: {addr: 'admin:s3cr3t@consul.example:8500'}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("consul_server.username") && err.contains("consul_server.password"),
            "{err}"
        );
    }

    #[test]
    fn a_debug_rendering_of_the_config_shows_no_credential() {
        let config = Config::parse(
            "consul_server: {addr: 'consul.example:8500', username: u, password: pa55, token: t0ken}",
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("pa55") && !shown.contains("t0ken"),
            "{shown}"
        );
    }

    #[test]
    fn web_section_parses_and_defaults() {
        let config = Config::parse("pushgateway: {servers: [a]}").unwrap();
        assert_eq!(config.web, WebConfig::default());
        let config = Config::parse(
            "pushgateway: {servers: [a]}\nweb: {max_connections: 3, header_read_timeout: 5s, idle_timeout: 2s}\n\
             proxy: {max_body_memory: 64MiB}",
        )
        .unwrap();
        assert_eq!(config.web.max_connections, 3);
        assert_eq!(config.web.header_read_timeout, Duration::from_secs(5));
        assert_eq!(config.web.idle_timeout, Duration::from_secs(2));
        assert_eq!(config.proxy.max_body_memory, 64 << 20);
    }

    #[test]
    fn optional_sections_parse() {
        let config = Config::parse(
            "mode: redirect\npushgateway: {servers: [a]}\nhealth_check: {interval: 500ms, timeout: 200ms, \
             unhealthy_threshold: 3, healthy_threshold: 1}\nring: {algorithm: go-compatible}\n\
             proxy: {max_body_size: 1MiB, upstream_timeout: 1m30s, retry: false}",
        )
        .unwrap();
        assert_eq!(config.mode, Mode::Redirect);
        assert_eq!(config.health_check.interval, Duration::from_millis(500));
        assert_eq!(config.health_check.unhealthy_threshold, 3);
        assert_eq!(config.ring_algorithm, Algorithm::GoCompatible);
        assert_eq!(config.proxy.max_body_size, 1 << 20);
        assert_eq!(config.proxy.upstream_timeout, Duration::from_secs(90));
        assert!(!config.proxy.retry);
    }

    #[test]
    fn read_timeout_defaults_to_5s_and_must_be_positive() {
        let config = Config::parse("pushgateway: {servers: [a]}").unwrap();
        assert_eq!(config.read.timeout, Duration::from_secs(5));
        let config = Config::parse("pushgateway: {servers: [a]}\nread: {timeout: 750ms}").unwrap();
        assert_eq!(config.read.timeout, Duration::from_millis(750));
        let err = Config::parse("pushgateway: {servers: [a]}\nread: {timeout: 0s}").unwrap_err();
        assert!(err.to_string().contains("read.timeout"), "{err}");
    }

    #[test]
    fn rebalance_section_defaults_and_overrides() {
        let config = Config::parse("pushgateway: {servers: [a]}").unwrap();
        assert_eq!(config.rebalance, RebalanceConfig::default());
        assert!(config.rebalance.enabled);
        let config = Config::parse(
            "pushgateway: {servers: [a]}\nrebalance: {enabled: false, interval: 5s, concurrency: 2, \
             max_age: 1h, retries: 0}",
        )
        .unwrap();
        assert!(!config.rebalance.enabled);
        assert_eq!(config.rebalance.interval, Duration::from_secs(5));
        assert_eq!(config.rebalance.concurrency, 2);
        assert_eq!(config.rebalance.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(config.rebalance.retries, 0);
        for (text, expected) in [
            ("rebalance: {interval: 0s}", "rebalance.interval"),
            ("rebalance: {concurrency: 0}", "rebalance.concurrency"),
            ("rebalance: {max_agee: 1h}", "max_agee"),
        ] {
            let err = Config::parse(&format!("pushgateway: {{servers: [a]}}\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn prometheus_durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        for bad in ["", "5", "s", "1.5s", "-1s", "1 s", "1sec"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(normalize_listen_addr(":9292").unwrap(), "0.0.0.0:9292");
        assert_eq!(normalize_listen_addr("127.0.0.1:1").unwrap(), "127.0.0.1:1");
        assert_eq!(normalize_listen_addr("[::1]:1").unwrap(), "[::1]:1");
        assert!(normalize_listen_addr("9292").is_err());
    }

    #[test]
    fn pushgateway_scheme_tls_and_basic_auth() {
        let config = Config::parse(
            "pushgateway:\n  servers: ['a:1']\n  scheme: https\n  tls_config: {ca_file: ca.crt, cert_file: c.crt, \
             key_file: c.key, server_name: pgw.example, insecure_skip_verify: true}\n  \
             basic_auth: {username: pusher, password: 's3cr3t'}\n",
        )
        .unwrap();
        let upstream = &config.upstream;
        assert_eq!(upstream.scheme, NodeScheme::Https);
        assert_eq!(upstream.tls.ca_file.as_deref(), Some("ca.crt"));
        assert_eq!(upstream.tls.server_name.as_deref(), Some("pgw.example"));
        assert!(upstream.tls.insecure_skip_verify);
        let auth = upstream.basic_auth.as_ref().unwrap();
        assert_eq!(auth.username, "pusher");
        assert_eq!(auth.password.expose(), "s3cr3t");
        // base64("pusher:s3cr3t")
        assert_eq!(auth.header_value().expose(), "Basic cHVzaGVyOnMzY3IzdA==");
        let defaults = Config::parse("pushgateway: {servers: ['a:1']}").unwrap();
        assert_eq!(defaults.upstream, UpstreamConfig::default());
        assert_eq!(defaults.upstream.scheme, NodeScheme::Http);
    }

    #[test]
    fn the_password_is_in_no_debug_output() {
        let config = Config::parse(
            "pushgateway: {servers: ['a:1'], basic_auth: {username: u, password: 'hunter2-secret'}}",
        )
        .unwrap();
        let auth = config.upstream.basic_auth.as_ref().unwrap();
        for text in [
            format!("{config:?}"),
            format!("{auth:?}"),
            format!("{}", auth.password),
            format!("{:?}", auth.header_value()),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("dTpodW50ZXIy"), "{text}");
        }
        let raw: RawConfig = serde_yaml_ng::from_str(
            "pushgateway: {basic_auth: {username: u, password: 'hunter2-secret'}}",
        )
        .unwrap();
        assert!(!format!("{raw:?}").contains("hunter2"));
    }

    #[test]
    fn password_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "from-file\n").unwrap();
        let text = format!(
            "pushgateway: {{servers: ['a:1'], basic_auth: {{username: u, password_file: '{}'}}}}",
            path.display()
        );
        let config = Config::parse(&text).unwrap();
        assert_eq!(
            config.upstream.basic_auth.unwrap().password.expose(),
            "from-file"
        );
        std::fs::write(&path, "\n").unwrap();
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("pushgateway.basic_auth.password_file") && err.contains("empty"),
            "{err}"
        );
    }

    #[test]
    fn invalid_upstream_settings_say_what_to_fix() {
        let servers = "pushgateway:\n  servers: ['a:1']\n";
        let cases = [
            (format!("{servers}  scheme: ftp\n"), "scheme"),
            (
                format!("{servers}  tls_config: {{ca_file: ca.crt}}\n"),
                "pushgateway.tls_config: set but pushgateway.scheme is http",
            ),
            (
                format!("{servers}  scheme: https\n  tls_config: {{cert_file: c.crt}}\n"),
                "cert_file and key_file go together",
            ),
            (
                format!("{servers}  scheme: https\n  tls_config: {{ca: x}}\n"),
                "unknown field `ca`",
            ),
            (
                format!("{servers}  basic_auth: {{password: p}}\n"),
                "pushgateway.basic_auth.username: missing",
            ),
            (
                format!("{servers}  basic_auth: {{username: 'a:b', password: p}}\n"),
                "must not contain ':'",
            ),
            (
                format!("{servers}  basic_auth: {{username: u}}\n"),
                "set password or password_file (exactly one)",
            ),
            (
                format!("{servers}  basic_auth: {{username: u, password: p, password_file: f}}\n"),
                "keep exactly one",
            ),
            (
                format!("{servers}  basic_auth: {{username: u, password_file: /nonexistent/pw}}\n"),
                "pushgateway.basic_auth.password_file: cannot read \"/nonexistent/pw\"",
            ),
            (
                format!("{servers}  basic_auth: {{username: u, pasword: p}}\n"),
                "unknown field `pasword`",
            ),
        ];
        for (text, expected) in &cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "config {text:?}: error {err:?} should mention {expected:?}"
            );
        }
    }
}
