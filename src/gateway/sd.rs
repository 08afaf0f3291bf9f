//! `GET /-/sd`: Prometheus HTTP service discovery (`http_sd_configs`) of the healthy nodes.
//!
//! Prometheus polls this every `refresh_interval`, so a scrape config pointed at the gateway follows the ring
//! without anyone editing a target list. The answer lists every healthy node: a node that fails its health checks
//! drops out of discovery when it drops out of routing. A node ejected by passive failure detection stays listed
//! (its pushes go elsewhere, but it still holds its groups).
//!
//! With `replication.factor` above 1 every group is on several nodes, and scraping the nodes would show each
//! group several times. The answer is then one target instead: the gateway itself (as Prometheus addressed it,
//! the request's `Host`), whose `/metrics` shows each group once (see `gateway/read.rs`). A node that dies is
//! left out of the very next scrape's fan-out and its groups are shown from the next owner, with no push and no
//! discovery refresh in between.

use axum::body::Body;
use axum::extract::State;
use http::header::{self, HeaderMap};
use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{json, text, AppState};
use crate::config::NodeScheme;

/// The target label naming the node (`host:port`, the same as `__address__`), for relabeling into a label
/// that survives the scrape, e.g. `pushgateway_node`.
pub const NODE_LABEL: &str = "__meta_dynamic_sharding_node";
/// The target label naming the membership source the node came from: `static`, `consul`, `dns_sd` or `file_sd`.
pub const SOURCE_LABEL: &str = "__meta_dynamic_sharding_membership_source";
/// Prometheus' own target label for the scrape scheme: `pushgateway.scheme`, so a scrape config needs no
/// `scheme:` of its own (its `tls_config` and `basic_auth` still apply).
pub const SCHEME_LABEL: &str = "__scheme__";

/// The target label saying what a replicated answer's one target serves: `deduplicated` (each group once).
pub const VIEW_LABEL: &str = "__meta_dynamic_sharding_view";

pub async fn targets(State(state): State<AppState>, headers: HeaderMap) -> Response<Body> {
    let table = state.ring.load_full();
    let source = state.membership.borrow().source;
    let config = state.config.load();
    if config.replication_factor > 1 {
        let Some(host) = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .filter(|host| !host.is_empty())
        else {
            return text(
                StatusCode::BAD_REQUEST,
                "/-/sd with replication.factor above 1 names the gateway itself as the target, and needs the \
                 request's Host header for its address",
            );
        };
        return json(StatusCode::OK, &deduplicated_target(host, source));
    }
    json(
        StatusCode::OK,
        &target_groups(&table.readable, source, config.upstream.scheme),
    )
}

/// The HTTP SD answer with replication: the gateway at `host`, path `/metrics` (each group once). No
/// `__scheme__`: the scrape config's own scheme is the one that reaches the gateway.
pub fn deduplicated_target(host: &str, source: &str) -> Value {
    json!([{
        "targets": [host],
        "labels": {
            "__metrics_path__": "/metrics",
            VIEW_LABEL: "deduplicated",
            SOURCE_LABEL: source,
        },
    }])
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
    fn a_replicated_answer_is_the_gateway_itself() {
        assert_eq!(
            deduplicated_target("dynamic-sharding:9292", "static"),
            json!([{"targets": ["dynamic-sharding:9292"], "labels": {
                "__metrics_path__": "/metrics",
                "__meta_dynamic_sharding_view": "deduplicated",
                "__meta_dynamic_sharding_membership_source": "static"}}])
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
