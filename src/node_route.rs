//! Per-node data the push path needs on every request, computed once per ring build instead of per push.
//!
//! A [`NodeRoute`] holds a node's connection pool (with its parsed address, see [`crate::pushgateway`]), its
//! response-header value, its metric label and lazily created handles to its metric series. Handles are created on first use (not at build time), so
//! `/-/metrics` shows exactly the series it showed when every push called `Family::get_or_create`: a series
//! appears once a push produced it. Rebuilding the table creates new slots, which resolve to the same series.

use std::sync::{Arc, OnceLock};

use http::{HeaderValue, Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;

use crate::outlier::NodeCounters;
use crate::pushgateway::pool::NodePool;
use crate::pushgateway::NodeAddress;
use crate::telemetry::{MethodLabel, NodeLabels, RequestLabels};

/// Methods and status codes nearly every push has; other combinations go through `get_or_create`.
const CACHED_METHODS: [Method; 3] = [Method::PUT, Method::POST, Method::DELETE];
const CACHED_CODES: [StatusCode; 3] = [
    StatusCode::OK,
    StatusCode::ACCEPTED,
    StatusCode::TEMPORARY_REDIRECT,
];

/// The `dynamic_sharding_requests` series of one `node` label value, for the common method/code pairs.
pub struct RequestCounters {
    node: Arc<str>,
    slots: [OnceLock<Counter>; CACHED_METHODS.len() * CACHED_CODES.len()],
}

impl RequestCounters {
    pub fn new(node: Arc<str>) -> RequestCounters {
        RequestCounters {
            node,
            slots: Default::default(),
        }
    }

    /// Counts one request answered with `status`.
    pub fn record(
        &self,
        family: &Family<RequestLabels, Counter>,
        method: &Method,
        status: StatusCode,
    ) {
        let labels = || RequestLabels {
            method: MethodLabel::from(method),
            code: status.as_u16(),
            node: self.node.clone(),
        };
        let method_index = CACHED_METHODS.iter().position(|m| m == method);
        let code_index = CACHED_CODES.iter().position(|c| *c == status);
        match (method_index, code_index) {
            (Some(m), Some(c)) => self.slots[m * CACHED_CODES.len() + c]
                .get_or_init(|| family.get_or_create(&labels()).clone())
                .inc(),
            _ => family.get_or_create(&labels()).inc(),
        };
    }
}

/// One ring node as the push path sees it.
pub struct NodeRoute {
    /// The node's address, also its metric label.
    pub name: Arc<str>,
    /// The `x-dynamic-sharding-node` value of responses this node served.
    pub header_value: Option<HeaderValue>,
    pub requests: RequestCounters,
    upstream_duration: OnceLock<Histogram>,
    /// The node's address and keep-alive connections for proxied pushes; `None` when the name is not a valid
    /// address (the push path then reports it as a bad request). Shared with the next table's route for the
    /// same node, so a ring rebuild keeps the node's warm connections.
    pub pool: Option<Arc<NodePool>>,
    /// Passive-health counters (consecutive failures, pushes in flight), shared across ring tables.
    pub counters: Arc<NodeCounters>,
}

impl NodeRoute {
    /// `pool` is the node's pool in the previous table, if any; otherwise a new, empty one is made.
    pub fn new(name: &str, pool: Option<Arc<NodePool>>, counters: Arc<NodeCounters>) -> NodeRoute {
        let name: Arc<str> = Arc::from(name);
        let address = NodeAddress::parse(&name).ok();
        NodeRoute {
            pool: address.map(|address| pool.unwrap_or_else(|| Arc::new(NodePool::new(address)))),
            header_value: HeaderValue::from_str(&name).ok(),
            requests: RequestCounters::new(name.clone()),
            upstream_duration: OnceLock::new(),
            counters,
            name,
        }
    }

    /// This node's `dynamic_sharding_upstream_request_duration_seconds` histogram.
    pub fn upstream_duration<C: MetricConstructor<Histogram>>(
        &self,
        family: &Family<NodeLabels, Histogram, C>,
    ) -> &Histogram {
        self.upstream_duration.get_or_init(|| {
            family
                .get_or_create(&NodeLabels {
                    node: self.name.clone(),
                })
                .clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_address_has_no_pool() {
        assert!(NodeRoute::new("bad host:1", None, Default::default())
            .pool
            .is_none());
        let route = NodeRoute::new("127.0.0.1:9091", None, Default::default());
        assert_eq!(
            route.pool.as_ref().map(|pool| pool.address().as_str()),
            Some("127.0.0.1:9091")
        );
    }

    #[test]
    fn cached_and_uncached_counters_land_in_the_same_series() {
        let family = Family::<RequestLabels, Counter>::default();
        let counters = RequestCounters::new(Arc::from("n:1"));
        counters.record(&family, &Method::PUT, StatusCode::OK);
        counters.record(&family, &Method::PUT, StatusCode::OK);
        counters.record(&family, &Method::PATCH, StatusCode::BAD_GATEWAY);
        let put_ok = family
            .get_or_create(&RequestLabels {
                method: MethodLabel::PUT,
                code: 200,
                node: Arc::from("n:1"),
            })
            .get();
        assert_eq!(put_ok, 2);
        let other = family
            .get_or_create(&RequestLabels {
                method: MethodLabel::OTHER,
                code: 502,
                node: Arc::from("n:1"),
            })
            .get();
        assert_eq!(other, 1);
    }
}
