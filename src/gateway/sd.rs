//! `GET /-/sd`: Prometheus HTTP service discovery (`http_sd_configs`) of the healthy nodes.
//!
//! Prometheus polls this every `refresh_interval`, so a scrape config pointed at the gateway follows the ring
//! without anyone editing a target list. The answer lists exactly the nodes of the current ring: a node that
//! fails its health checks drops out of discovery when it drops out of routing.

use axum::body::Body;
use axum::extract::State;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{json, AppState};
use crate::config::NodeScheme;

/// The target label naming the node (`host:port`, the same as `__address__`), for relabeling into a label
/// that survives the scrape, e.g. `pushgateway_node`.
pub const NODE_LABEL: &str = "__meta_dynamic_sharding_node";
/// The target label naming the membership source the node came from: `static`, `consul`, `dns_sd` or `file_sd`.
pub const SOURCE_LABEL: &str = "__meta_dynamic_sharding_membership_source";
/// Prometheus' own target label for the scrape scheme: `pushgateway.scheme`, so a scrape config needs no
/// `scheme:` of its own (its `tls_config` and `basic_auth` still apply).
pub const SCHEME_LABEL: &str = "__scheme__";

pub async fn targets(State(state): State<AppState>) -> Response<Body> {
    let table = state.ring.load_full();
    let source = state.membership.borrow().source;
    let scheme = state.config.load().upstream.scheme;
    json(
        StatusCode::OK,
        &target_groups(table.ring.nodes(), source, scheme),
    )
}

/// The HTTP SD answer for `nodes`: one target group per node, because a label naming the node can only be
/// attached to a group, not to one target of it. No node gives `[]`, which Prometheus reads as "no targets".
pub fn target_groups(nodes: &[String], source: &str, scheme: NodeScheme) -> Value {
    Value::Array(
        nodes
            .iter()
            .map(|node| {
                json!({
                    "targets": [node],
                    "labels": {
                        NODE_LABEL: node,
                        SOURCE_LABEL: source,
                        SCHEME_LABEL: scheme.as_str(),
                    },
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_per_node_labelled_with_node_and_source() {
        let nodes = vec!["127.0.0.1:9091".to_string(), "127.0.0.1:9092".to_string()];
        assert_eq!(
            target_groups(&nodes, "consul", NodeScheme::Https),
            json!([
                {"targets": ["127.0.0.1:9091"], "labels": {
                    "__meta_dynamic_sharding_node": "127.0.0.1:9091",
                    "__meta_dynamic_sharding_membership_source": "consul",
                    "__scheme__": "https"}},
                {"targets": ["127.0.0.1:9092"], "labels": {
                    "__meta_dynamic_sharding_node": "127.0.0.1:9092",
                    "__meta_dynamic_sharding_membership_source": "consul",
                    "__scheme__": "https"}},
            ])
        );
    }

    #[test]
    fn no_node_is_an_empty_array() {
        assert_eq!(
            target_groups(&[], "static", NodeScheme::Http).to_string(),
            "[]"
        );
    }
}
