//! `dns_sd`: the candidates are the answers to DNS queries, as Prometheus' `dns_sd_configs` finds targets.
//!
//! SRV records give `target:port` (the target's name, not its address: a StatefulSet pod's name is stable across
//! restarts, its IP is not); A and AAAA records give `address:port` with `dns_sd.port`. Each name is queried every
//! `refresh_interval`; a name whose query fails (NXDOMAIN, no records, SERVFAIL, timeout) keeps its last answer,
//! so a DNS outage never empties the ring. Its failure names the nameserver asked and the response code.

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

use super::discovery::{Discovery, PartFailure, Round};
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
        let mut failures = Vec::new();
        match self.resolver() {
            Err(error) => failures.push(PartFailure::new("dns_sd", error)),
            Ok(resolver) => {
                let resolver = resolver.clone();
                let asked = nameservers(&settings);
                for (index, name) in settings.names.iter().enumerate() {
                    match lookup(&resolver, name, &settings).await {
                        Ok(addresses) => {
                            self.last_answers.insert(name.clone(), addresses);
                        }
                        Err(failure) => failures.push(PartFailure::new(
                            format!(
                                "dns_sd.names[{index}] {name:?} ({})",
                                settings.record_type.as_str()
                            ),
                            failure.describe(&asked),
                        )),
                    }
                }
            }
        }
        Round {
            addresses: self.last_answers.values().flatten().cloned().collect(),
            failures,
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

/// Why a name gave no candidates.
#[derive(Debug, PartialEq)]
enum LookupFailure {
    /// The nameserver answered with this response code (NXDOMAIN, SERVFAIL, REFUSED, ...).
    Answered(ResponseCode),
    /// It answered NOERROR, without a record of the type asked for (or none usable: an SRV with port 0).
    NoUsableRecords,
    /// No answer: a timeout, a refused connection, a malformed reply.
    NoAnswer(String),
}

impl LookupFailure {
    fn from_error(error: &NetError) -> LookupFailure {
        match error {
            NetError::Dns(DnsError::NoRecordsFound(no_records)) => match no_records.response_code {
                ResponseCode::NoError => LookupFailure::NoUsableRecords,
                code => LookupFailure::Answered(code),
            },
            NetError::Dns(DnsError::ResponseCode(code)) => LookupFailure::Answered(*code),
            other => LookupFailure::NoAnswer(other.to_string()),
        }
    }

    /// What went wrong, naming whom the resolver asked (`asked`: [`nameservers`]).
    fn describe(&self, asked: &str) -> String {
        match self {
            LookupFailure::Answered(code) => format!("{asked} answered {}", response_code(*code)),
            LookupFailure::NoUsableRecords => {
                format!("{asked} answered without usable records of this type")
            }
            LookupFailure::NoAnswer(why) => format!("no answer from {asked}: {why}"),
        }
    }
}

/// A response code as dig shows it, with what it means for the user.
fn response_code(code: ResponseCode) -> String {
    match code {
        ResponseCode::NXDomain => "NXDOMAIN (the name does not exist)".to_owned(),
        ResponseCode::ServFail => {
            "SERVFAIL (server failure: it could not resolve the name, e.g. its upstream failed or the \
             answer did not validate)"
                .to_owned()
        }
        ResponseCode::Refused => "REFUSED (the nameserver does not answer queries for this name)".to_owned(),
        other => format!("response code {} ({other})", u16::from(other)),
    }
}

/// Whom the resolver asks, for error messages.
fn nameservers(settings: &DnsSdConfig) -> String {
    match settings.nameservers.as_slice() {
        [] => "the system resolver's nameservers (/etc/resolv.conf)".to_owned(),
        [one] => format!("nameserver {one}"),
        many => {
            let many: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!("nameservers {}", many.join(", "))
        }
    }
}

/// The candidates one name answers with.
async fn lookup(
    resolver: &TokioResolver,
    name: &str,
    settings: &DnsSdConfig,
) -> Result<BTreeSet<String>, LookupFailure> {
    let answer = match settings.record_type {
        DnsRecordType::Srv => resolver.srv_lookup(name).await,
        DnsRecordType::A => resolver.ipv4_lookup(name).await,
        DnsRecordType::Aaaa => resolver.ipv6_lookup(name).await,
    }
    .map_err(|e| LookupFailure::from_error(&e))?;
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
        return Err(LookupFailure::NoUsableRecords);
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

    #[test]
    fn a_failure_names_the_nameserver_and_the_response_code() {
        let one = "nameserver 127.0.0.1:5353";
        let servfail = LookupFailure::Answered(ResponseCode::ServFail).describe(one);
        assert!(
            servfail.starts_with("nameserver 127.0.0.1:5353 answered SERVFAIL (server failure"),
            "{servfail}"
        );
        assert_eq!(
            LookupFailure::Answered(ResponseCode::NXDomain).describe(one),
            "nameserver 127.0.0.1:5353 answered NXDOMAIN (the name does not exist)"
        );
        assert_eq!(
            LookupFailure::NoAnswer("request timed out".to_owned()).describe(one),
            "no answer from nameserver 127.0.0.1:5353: request timed out"
        );
        assert_eq!(
            LookupFailure::Answered(ResponseCode::NotImp).describe(one),
            "nameserver 127.0.0.1:5353 answered response code 4 (Not Implemented)"
        );
    }

    #[test]
    fn the_nameservers_asked_are_named_as_configured() {
        let mut settings = DnsSdConfig {
            names: vec!["pg.test".to_owned()],
            record_type: DnsRecordType::A,
            port: Some(9091),
            refresh_interval: Duration::from_secs(30),
            nameservers: vec![],
        };
        assert_eq!(
            nameservers(&settings),
            "the system resolver's nameservers (/etc/resolv.conf)"
        );
        settings.nameservers = vec![
            "10.0.0.10:53".parse().unwrap(),
            "[fd00::a]:5353".parse().unwrap(),
        ];
        assert_eq!(
            nameservers(&settings),
            "nameservers 10.0.0.10:53, [fd00::a]:5353"
        );
    }
}
