//! `consul_server`: the Consul agent, the service registered and watched, its health checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::tls::validate_tls_files;
use super::{invalid, ConfigError, PromDuration, Secret};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsulServer {
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
pub(super) struct RawConsulTls {
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    insecure_skip_verify: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulConfig {
    /// `host:port` of the Consul agent's HTTP API (a `http://` / `https://` prefix in the file sets `scheme`).
    pub addr: String,
    pub scheme: ConsulScheme,
    /// Basic-auth user, with `password`; a [`Secret`] like it (it is half of the credential).
    pub username: Option<Secret>,
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

pub(super) fn validate_consul(consul: RawConsulServer) -> Result<ConsulConfig, ConfigError> {
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
    let insecure_skip_verify = raw_tls.insecure_skip_verify.unwrap_or(false);
    // An empty `tls: {}` is no TLS setting at all here.
    let [ca_file, cert_file, key_file] = validate_tls_files(
        "consul_server.tls",
        [raw_tls.ca_file, raw_tls.cert_file, raw_tls.key_file],
        insecure_skip_verify,
        scheme == ConsulScheme::Https,
    )?;
    let tls = ConsulTlsConfig {
        ca_file,
        cert_file,
        key_file,
        insecure_skip_verify,
    };
    Ok(ConsulConfig {
        addr,
        scheme,
        username: non_empty(consul.username).map(Secret::new),
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
