//! Where the ring's nodes come from: exactly one source per config.

use super::consul::{validate_consul, RawConsulServer};
use super::dns_sd::{validate_dns_sd, RawDnsSd};
use super::file_sd::{validate_file_sd, RawFileSd};
use super::{invalid, ConfigError, ConsulConfig, DnsSdConfig, FileSdConfig};

/// The one membership source of a config (see `crate::membership`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipConfig {
    /// `pushgateway.servers`, probed by the gateway.
    Static,
    /// `consul_server`: Consul's passing instances (and `pushgateway.servers` registered there).
    Consul(Box<ConsulConfig>),
    /// `dns_sd`: the answers to DNS queries, probed by the gateway.
    DnsSd(DnsSdConfig),
    /// `file_sd`: the targets of Prometheus file_sd files, probed by the gateway.
    FileSd(FileSdConfig),
}

impl MembershipConfig {
    /// The source's name in `/-/ring`, `/-/sd` labels and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            MembershipConfig::Static => "static",
            MembershipConfig::Consul(_) => "consul",
            MembershipConfig::DnsSd(_) => "dns_sd",
            MembershipConfig::FileSd(_) => "file_sd",
        }
    }
}

/// The sections that name a membership source, as written.
pub(super) struct RawSources {
    pub servers_given: bool,
    pub consul_server: Option<RawConsulServer>,
    pub dns_sd: Option<RawDnsSd>,
    pub file_sd: Option<RawFileSd>,
}

pub(super) fn validate_membership(raw: RawSources) -> Result<MembershipConfig, ConfigError> {
    let discovering: Vec<&str> = [
        raw.consul_server.as_ref().map(|_| "consul_server"),
        raw.dns_sd.as_ref().map(|_| "dns_sd"),
        raw.file_sd.as_ref().map(|_| "file_sd"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if discovering.len() > 1 {
        return Err(invalid(format!(
            "{}: more than one membership source; the ring's nodes come from exactly one of pushgateway.servers, \
             consul_server, dns_sd and file_sd, so keep one of these sections",
            discovering.join(" and ")
        )));
    }
    // Consul registers `pushgateway.servers`; a discovered list has no use for them.
    if let (true, Some(source @ ("dns_sd" | "file_sd"))) =
        (raw.servers_given, discovering.first().copied())
    {
        return Err(invalid(format!(
            "pushgateway.servers and {source}: more than one membership source; with {source} the ring's nodes \
             are the discovered ones, so remove pushgateway.servers (or {source})"
        )));
    }
    if let Some(consul) = raw.consul_server {
        return Ok(MembershipConfig::Consul(Box::new(validate_consul(consul)?)));
    }
    if let Some(dns_sd) = raw.dns_sd {
        return Ok(MembershipConfig::DnsSd(validate_dns_sd(dns_sd)?));
    }
    if let Some(file_sd) = raw.file_sd {
        return Ok(MembershipConfig::FileSd(validate_file_sd(file_sd)?));
    }
    if !raw.servers_given {
        return Err(invalid(
            "pushgateway.servers: empty; list the Pushgateways to shard over (e.g. [\"10.0.0.1\", \"10.0.0.2:9091\"]) \
             or configure consul_server, dns_sd or file_sd",
        ));
    }
    Ok(MembershipConfig::Static)
}
