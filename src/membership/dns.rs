//! `dns_sd`: the candidates are the answers to DNS queries, as Prometheus' `dns_sd_configs` finds targets.
//!
//! SRV records give `target:port` (the target's name, not its address: a StatefulSet pod's name is stable across
//! restarts, its IP is not); A and AAAA records give `address:port` with `dns_sd.port`. Each name is queried every
//! `refresh_interval`; a name whose query fails (NXDOMAIN, no records, SERVFAIL, timeout) keeps its last answer,
//! so a DNS outage never empties the ring.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use tokio::sync::watch;

use super::discovery::{Discovery, Round};
use crate::config::{Config, DnsRecordType, DnsSdConfig, MembershipConfig};

/// A query never takes longer than this (hickory's default), nor longer than the refresh interval.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct DnsDiscovery {
    settings: DnsSdConfig,
    config: watch::Receiver<Arc<Config>>,
    resolver: Option<TokioResolver>,
    /// Each name's last good answer.
    last_answers: BTreeMap<String, BTreeSet<String>>,
}

impl DnsDiscovery {
    pub fn new(settings: DnsSdConfig, config: watch::Receiver<Arc<Config>>) -> DnsDiscovery {
        DnsDiscovery {
            settings,
            config,
            resolver: None,
            last_answers: BTreeMap::new(),
        }
    }

    /// Takes a reloaded `dns_sd` section; a config that switched to another source is warned about by the
    /// reload, and the settings the process started with stay.
    fn follow_reload(&mut self) {
        let config = self.config.borrow_and_update().clone();
        if let MembershipConfig::DnsSd(settings) = &config.membership {
            if *settings != self.settings {
                self.settings = settings.clone();
                self.resolver = None;
                self.last_answers
                    .retain(|name, _| self.settings.names.contains(name));
            }
        }
    }

    fn resolver(&mut self) -> Result<&TokioResolver, String> {
        if self.resolver.is_none() {
            self.resolver = Some(build_resolver(&self.settings)?);
        }
        self.resolver
            .as_ref()
            .ok_or_else(|| "no resolver".to_string())
    }
}

fn build_resolver(settings: &DnsSdConfig) -> Result<TokioResolver, String> {
    let mut builder = if settings.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| {
            format!("cannot read the system resolver configuration (/etc/resolv.conf): {e}; set dns_sd.nameservers")
        })?
    } else {
        let servers = settings
            .nameservers
            .iter()
            .map(|address| name_server(*address))
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.timeout = QUERY_TIMEOUT.min(settings.refresh_interval);
    // Every refresh asks the server: the answer is the membership, so it must not come from a cache.
    options.cache_size = 0;
    builder
        .build()
        .map_err(|e| format!("cannot set up the DNS resolver: {e}"))
}

fn name_server(address: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = address.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = address.port();
    NameServerConfig::new(address.ip(), true, vec![udp, tcp])
}

impl Discovery for DnsDiscovery {
    fn name(&self) -> &'static str {
        "dns_sd"
    }

    async fn discover(&mut self) -> Round {
        self.follow_reload();
        let settings = self.settings.clone();
        let mut errors = Vec::new();
        match self.resolver() {
            Err(error) => errors.push(format!("dns_sd: {error}")),
            Ok(resolver) => {
                let resolver = resolver.clone();
                for (index, name) in settings.names.iter().enumerate() {
                    match lookup(&resolver, name, &settings).await {
                        Ok(addresses) => {
                            self.last_answers.insert(name.clone(), addresses);
                        }
                        Err(error) => errors.push(format!(
                            "dns_sd.names[{index}] {name:?} ({}): {error}",
                            settings.record_type.as_str()
                        )),
                    }
                }
            }
        }
        Round {
            addresses: self.last_answers.values().flatten().cloned().collect(),
            errors,
        }
    }

    async fn wait(&mut self) {
        let interval = self.settings.refresh_interval;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            changed = self.config.changed() => if changed.is_err() {
                std::future::pending::<()>().await;
            },
        }
    }
}

/// The candidates one name answers with.
async fn lookup(
    resolver: &TokioResolver,
    name: &str,
    settings: &DnsSdConfig,
) -> Result<BTreeSet<String>, String> {
    let answer = match settings.record_type {
        DnsRecordType::Srv => resolver.srv_lookup(name).await,
        DnsRecordType::A => resolver.ipv4_lookup(name).await,
        DnsRecordType::Aaaa => resolver.ipv6_lookup(name).await,
    }
    .map_err(|e| describe(&e))?;
    let port = settings.port.unwrap_or_default();
    let addresses: BTreeSet<String> = answer
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) if srv.port != 0 => {
                let target = srv.target.to_utf8();
                let target = target.trim_end_matches('.');
                (!target.is_empty()).then(|| node_address(target, srv.port))
            }
            RData::A(a) if settings.record_type == DnsRecordType::A => {
                Some(format!("{}:{port}", a.0))
            }
            RData::AAAA(aaaa) if settings.record_type == DnsRecordType::Aaaa => {
                Some(format!("[{}]:{port}", aaaa.0))
            }
            _ => None,
        })
        .collect();
    if addresses.is_empty() {
        return Err("the answer has no usable records".to_string());
    }
    Ok(addresses)
}

fn node_address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A short reason: the response code when the server gave one, hickory's message otherwise.
fn describe(error: &NetError) -> String {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no_records)) => match no_records.response_code {
            ResponseCode::NXDomain => "NXDOMAIN (the name does not exist)".to_string(),
            ResponseCode::NoError => "no records of this type".to_string(),
            code => format!("{code} (no records)"),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => code.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_targets_keep_their_names_and_ports() {
        assert_eq!(
            node_address("pg-0.pg.monitoring.svc", 9091),
            "pg-0.pg.monitoring.svc:9091"
        );
        assert_eq!(node_address("fd00::1", 9091), "[fd00::1]:9091");
    }
}
