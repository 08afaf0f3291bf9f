//! `dns_sd`: the Pushgateways are the answers to DNS queries (a Kubernetes headless Service), with the keys of
//! Prometheus' `dns_sd_configs` plus `nameservers`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, PromDuration};

/// Prometheus' `dns_sd_configs` default.
pub const DEFAULT_DNS_SD_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// The DNS port a `nameservers` entry without one gets.
const DNS_PORT: u16 = 53;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDnsSd {
    #[serde(default)]
    names: Vec<String>,
    #[serde(rename = "type")]
    record_type: Option<String>,
    port: Option<u16>,
    refresh_interval: Option<PromDuration>,
    #[serde(default)]
    nameservers: Vec<String>,
}

/// Which records are asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsRecordType {
    /// Each SRV record's target and port is a node (the default, as in Prometheus).
    Srv,
    /// Each IPv4 address, with `port`, is a node.
    A,
    /// Each IPv6 address, with `port`, is a node.
    Aaaa,
}

impl DnsRecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsRecordType::Srv => "SRV",
            DnsRecordType::A => "A",
            DnsRecordType::Aaaa => "AAAA",
        }
    }
}

/// The validated `dns_sd` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSdConfig {
    /// Queried every `refresh_interval`; a name's answers are kept while its lookups fail.
    pub names: Vec<String>,
    pub record_type: DnsRecordType,
    /// The port of every A/AAAA address; `None` for SRV (each record carries its own).
    pub port: Option<u16>,
    pub refresh_interval: Duration,
    /// Asked instead of the system resolver (`/etc/resolv.conf`); empty: the system resolver.
    pub nameservers: Vec<SocketAddr>,
}

pub(super) fn validate_dns_sd(raw: RawDnsSd) -> Result<DnsSdConfig, ConfigError> {
    let names: Vec<String> = raw.names.iter().map(|n| n.trim().to_string()).collect();
    if names.is_empty() {
        return Err(invalid(
            "dns_sd.names: empty; list the names to query, e.g. [pushgateway.monitoring.svc.cluster.local]",
        ));
    }
    for (index, name) in names.iter().enumerate() {
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains('/') {
            return Err(invalid(format!(
                "dns_sd.names[{index}]: {name:?} is not a DNS name; use e.g. pushgateway.monitoring.svc.cluster.local"
            )));
        }
    }
    // Prometheus upper-cases the type, so `srv` and `SRV` both work there; here too.
    let record_type = match raw
        .record_type
        .as_deref()
        .map(str::trim)
        .map(str::to_ascii_uppercase)
    {
        None => DnsRecordType::Srv,
        Some(t) if t == "SRV" => DnsRecordType::Srv,
        Some(t) if t == "A" => DnsRecordType::A,
        Some(t) if t == "AAAA" => DnsRecordType::Aaaa,
        Some(other) => {
            return Err(invalid(format!(
                "dns_sd.type: {other:?} is not supported; use SRV (the default), A or AAAA"
            )))
        }
    };
    let port = match (record_type, raw.port) {
        (DnsRecordType::Srv, None) => None,
        (DnsRecordType::Srv, Some(_)) => {
            return Err(invalid(
                "dns_sd.port: SRV records carry their own ports; remove port, or set type: A (or AAAA) to use it",
            ))
        }
        (_, None | Some(0)) => {
            return Err(invalid(format!(
                "dns_sd.port: type {} needs the Pushgateways' port, e.g. port: 9091",
                record_type.as_str()
            )))
        }
        (_, Some(port)) => Some(port),
    };
    let refresh_interval = raw
        .refresh_interval
        .map_or(DEFAULT_DNS_SD_REFRESH_INTERVAL, |d| d.0);
    if refresh_interval.is_zero() {
        return Err(invalid(
            "dns_sd.refresh_interval: must be greater than 0, e.g. 30s",
        ));
    }
    let mut nameservers = Vec::with_capacity(raw.nameservers.len());
    for (index, entry) in raw.nameservers.iter().enumerate() {
        nameservers.push(nameserver_address(entry.trim()).ok_or_else(|| {
            invalid(format!(
                "dns_sd.nameservers[{index}]: {entry:?} is not an IP address with an optional port; use e.g. \
                 10.96.0.10:53 or [fd00::10]:53"
            ))
        })?);
    }
    Ok(DnsSdConfig {
        names,
        record_type,
        port,
        refresh_interval,
        nameservers,
    })
}

/// `ip`, `ip:port`, `[v6]:port` or a bare IPv6 address; the resolver needs addresses, not names.
fn nameserver_address(entry: &str) -> Option<SocketAddr> {
    if let Ok(address) = entry.parse::<SocketAddr>() {
        return (address.port() != 0).then_some(address);
    }
    let ip: IpAddr = entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .unwrap_or(entry)
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, DNS_PORT))
}
