//! Where the node set comes from. Whatever the source, the result is a stream of [`Membership`] snapshots on a
//! `tokio::sync::watch` channel; no source touches the ring or the request path.
//!
//! Two layers, as in pingora-load-balancing's discovery / health-check split:
//! - a **discovery** source yields candidate addresses ([`discovery::Discovery`]: one module each,
//!   [`static_list`] for `pushgateway.servers`, [`dns`] for `dns_sd`, [`file`] for `file_sd`); the
//!   [`discovery`] driver keeps the last set while a look-up fails and reports the outage;
//! - the [`health`] layer probes the candidates with `health_check`'s thresholds and publishes the snapshot.
//!
//! [`consul`] is the exception: Consul runs its own checks, so its watcher publishes snapshots itself.
//! [`start`] is the one place that picks the source for a config. A new source is one module implementing
//! [`discovery::Discovery`] and one `MembershipConfig` variant.

pub mod consul;
pub mod discovery;
pub mod dns;
pub mod file;
pub mod health;
pub mod static_list;

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

use crate::config::{Config, MembershipConfig};
use crate::consul::ConsulClient;
use crate::pushgateway::HttpClient;
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;
use health::SuspectReporter;

/// One node as the membership source sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeStatus {
    /// `host:port`, the node's identity on the ring.
    pub node: String,
    pub healthy: bool,
    #[serde(with = "optional_rfc3339")]
    pub last_probe: Option<SystemTime>,
    pub last_error: Option<String>,
}

/// A point-in-time view of the node set. Immutable once published.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Membership {
    /// The source's name: `MembershipConfig::name` (`static`, `consul`, `dns_sd`, `file_sd`).
    pub source: &'static str,
    /// Every known node, sorted by name.
    pub nodes: Vec<NodeStatus>,
    /// Source-specific details for `/-/ring` (e.g. Consul's last index and error, a DNS outage).
    pub detail: serde_json::Value,
}

impl Membership {
    pub fn empty(source: &'static str) -> Membership {
        Membership {
            source,
            nodes: Vec::new(),
            detail: serde_json::Value::Null,
        }
    }

    /// The healthy nodes, sorted: the ring's input.
    pub fn healthy_nodes(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.healthy)
            .map(|n| n.node.clone())
            .collect()
    }
}

/// A started membership source.
pub struct Started {
    pub membership: watch::Receiver<Arc<Membership>>,
    /// Where handlers report a node a request failed on (a no-op for Consul, which runs its own checks).
    pub suspects: SuspectReporter,
}

/// What a source may need.
pub struct Dependencies {
    pub config: watch::Receiver<Arc<Config>>,
    pub client: HttpClient,
    /// Present when the membership source is Consul.
    pub consul: Option<ConsulClient>,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
}

/// Starts the membership source `config` names. The source and its kind are fixed for the process's life; a
/// reload changes its settings (servers, names, files), not which source it is.
pub fn start(config: &Config, deps: Dependencies) -> Started {
    let Dependencies {
        config: config_rx,
        client,
        consul: consul_client,
        metrics,
        shutdown,
    } = deps;
    let discovered = match (&config.membership, consul_client) {
        // Consul runs the health checks; a failed request is seen by its next check, not reported by handlers.
        (MembershipConfig::Consul(consul), Some(consul_client)) => {
            return Started {
                membership: consul::spawn(
                    consul.as_ref().clone(),
                    consul_client,
                    config_rx,
                    metrics,
                    shutdown,
                ),
                suspects: SuspectReporter::disconnected(),
            }
        }
        (MembershipConfig::DnsSd(dns_sd), _) => discovery::spawn(
            dns::DnsDiscovery::new(dns_sd.clone(), config_rx.clone()),
            metrics.clone(),
            shutdown.clone(),
        ),
        (MembershipConfig::FileSd(file_sd), _) => discovery::spawn(
            file::FileDiscovery::new(file_sd.clone(), config_rx.clone()),
            metrics.clone(),
            shutdown.clone(),
        ),
        (MembershipConfig::Consul(_), None) => {
            tracing::error!(
                "Consul membership started without a Consul client; probing pushgateway.servers instead"
            );
            discovery::spawn(
                static_list::StaticList::new(config_rx.clone()),
                metrics.clone(),
                shutdown.clone(),
            )
        }
        (MembershipConfig::Static, _) => discovery::spawn(
            static_list::StaticList::new(config_rx.clone()),
            metrics.clone(),
            shutdown.clone(),
        ),
    };
    let (membership, suspects) = health::spawn(discovered, config_rx, client, metrics, shutdown);
    Started {
        membership,
        suspects,
    }
}

mod optional_rfc3339 {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(
        value: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(time) => {
                serializer.serialize_str(&humantime::format_rfc3339_millis(*time).to_string())
            }
            None => serializer.serialize_none(),
        }
    }
}
