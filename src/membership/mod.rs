//! Where the node set comes from. Each source publishes [`Membership`] snapshots on a `tokio::sync::watch`
//! channel; it never touches the ring or the request path directly.
//!
//! - [`static_probe`]: the configured `pushgateway.servers`, probed by the gateway itself.
//! - [`consul`]: the passing instances of a Consul service, followed with blocking queries.

pub mod consul;
pub mod static_probe;

use std::time::SystemTime;

use serde::Serialize;

/// Which kind of source produced a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Static,
    Consul,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Static => "static",
            SourceKind::Consul => "consul",
        }
    }
}

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
    pub source: SourceKind,
    /// Every known node, sorted by name.
    pub nodes: Vec<NodeStatus>,
    /// Source-specific details for `/-/ring` (e.g. Consul's last index and error).
    pub detail: serde_json::Value,
}

impl Membership {
    pub fn empty(source: SourceKind) -> Membership {
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
