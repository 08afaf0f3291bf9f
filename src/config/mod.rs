//! The YAML configuration: the Go original's keys, unchanged, plus our optional ones.
//!
//! [`Config::load`] reads and validates a file; every error names the key and says what to fix. The raw
//! serde structs mirror the file; [`Config`] is the validated form the rest of the program uses.
//!
//! Each section's raw and validated types live in the section's module, with its validation.

mod ambiguous_writes;
mod authorization;
mod consul;
mod dns_sd;
mod file_sd;
mod groups;
mod health_check;
mod membership;
mod outlier_detection;
mod proxy;
mod pushgateway;
mod read;
mod rebalance;
mod replication;
mod tls;
mod units;
mod web;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::authorization::Authorization;
use crate::ring::Algorithm;
pub use crate::secret::Secret;

pub use ambiguous_writes::AmbiguousWritesConfig;
pub use consul::{
    ConsulConfig, ConsulScheme, ConsulTlsConfig, DEFAULT_CONSUL_CHECK_INTERVAL,
    DEFAULT_CONSUL_CHECK_TIMEOUT,
};
pub use dns_sd::{DnsRecordType, DnsSdConfig, DEFAULT_DNS_SD_REFRESH_INTERVAL};
pub use file_sd::{FileSdConfig, DEFAULT_FILE_SD_REFRESH_INTERVAL};
pub use groups::{ExpireOverride, GroupsConfig};
pub use health_check::HealthCheckConfig;
pub use membership::MembershipConfig;
pub use outlier_detection::OutlierDetectionConfig;
pub use proxy::ProxyConfig;
pub use pushgateway::{
    node_address, BasicAuth, NodeScheme, NodeTlsConfig, UpstreamConfig, DEFAULT_PUSHGATEWAY_PORT,
};
pub use read::ReadConfig;
pub use rebalance::RebalanceConfig;
pub use units::{parse_duration, ByteSize, PromDuration};
pub use web::{normalize_listen_addr, WebConfig, DEFAULT_LISTEN_ADDR};

use ambiguous_writes::{validate_ambiguous_writes, RawAmbiguousWrites};
use authorization::{validate_authorization, RawAuthorization};
use consul::RawConsulServer;
use dns_sd::RawDnsSd;
use file_sd::RawFileSd;
use groups::{validate_groups, RawGroups};
use health_check::{validate_health_check, RawHealthCheck};
use membership::{validate_membership, RawSources};
use outlier_detection::{validate_outlier_detection, RawOutlierDetection};
use proxy::{validate_proxy, RawProxy};
use pushgateway::{validate_pushgateway, RawPushgateway};
use read::{validate_read, RawRead};
use rebalance::{validate_rebalance, RawRebalance};
use replication::{validate_replication, RawReplication};
use web::{validate_web, RawWeb};

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

// ---- The file as written ------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    consul_server: Option<RawConsulServer>,
    dns_sd: Option<RawDnsSd>,
    file_sd: Option<RawFileSd>,
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
    replication: Option<RawReplication>,
    /// `Some(None)`: the key is there with no value, which must not silently mean "no rules".
    #[serde(default, deserialize_with = "present")]
    authorization: Option<Option<RawAuthorization>>,
}

/// Deserializes a key that is present (even as `null`) as `Some`, so absent and empty can be told apart.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRing {
    algorithm: Option<Algorithm>,
}

// ---- The validated configuration ----------------------------------------------------------------------------

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen_addr: String,
    pub mode: Mode,
    /// Configured Pushgateways as `host:port`, deduplicated, in file order.
    pub servers: Vec<String>,
    /// Where the ring's nodes come from: exactly one source.
    pub membership: MembershipConfig,
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
    /// `replication.factor`: how many nodes hold each group (1: only its owner).
    pub replication_factor: usize,
    /// `authorization`: who may push which jobs and use the admin endpoints; `None`: every authenticated user
    /// may do everything (the behaviour without the section).
    pub authorization: Option<Authorization>,
}

impl Config {
    /// The `consul_server` section, when Consul is the membership source.
    pub fn consul(&self) -> Option<&ConsulConfig> {
        match &self.membership {
            MembershipConfig::Consul(consul) => Some(consul.as_ref()),
            _ => None,
        }
    }

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

        let (servers, upstream) = validate_pushgateway(raw.pushgateway.unwrap_or_default())?;
        let membership = validate_membership(RawSources {
            servers_given: !servers.is_empty(),
            consul_server: raw.consul_server,
            dns_sd: raw.dns_sd,
            file_sd: raw.file_sd,
        })?;

        let health_check = validate_health_check(raw.health_check.unwrap_or_default())?;
        let proxy = validate_proxy(raw.proxy.unwrap_or_default())?;
        let read = validate_read(raw.read.unwrap_or_default())?;
        let rebalance = validate_rebalance(raw.rebalance.unwrap_or_default())?;
        let outlier_detection =
            validate_outlier_detection(raw.outlier_detection.unwrap_or_default())?;
        let ambiguous_writes = validate_ambiguous_writes(raw.ambiguous_writes.unwrap_or_default())?;
        let groups = validate_groups(raw.groups.unwrap_or_default())?;
        let web = validate_web(raw.web.unwrap_or_default())?;
        let mode = raw.mode.unwrap_or_default();
        let replication_factor = validate_replication(
            raw.replication.unwrap_or_default(),
            mode,
            matches!(membership, MembershipConfig::Static).then_some(servers.len()),
        )?;

        Ok(Config {
            listen_addr,
            mode,
            servers,
            membership,
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
            replication_factor,
            authorization: match raw.authorization {
                None => None,
                // Empty rules would turn authorization off and let every user write: refuse instead.
                Some(None) => {
                    return Err(invalid(
                        "authorization: is empty; list users under authorization.users (an empty map: every \
                         user only reads), or remove the key (every authenticated user may do everything)",
                    ))
                }
                Some(Some(raw)) => Some(validate_authorization(raw)?),
            },
        })
    }
}

#[cfg(test)]
mod tests;
