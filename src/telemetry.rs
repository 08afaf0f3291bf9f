//! The gateway's own metrics (served on `/-/metrics`) and logging set-up (`--log.level`, `--log.format`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Log output format, as in Prometheus' own `--log.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// Log level, as in Prometheus' own `--log.level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// Installs the global tracing subscriber. Call once, from `main`.
pub fn init_logging(level: LogLevel, format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = match level {
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    };
    // Only our own crate logs at debug; dependencies (hyper, reqwest) stay at warn so debug logs stay readable.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::WARN.min(level))
        .with_target("dynamic_sharding", level)
        .with_target("dynamic_sharding_bin", level);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Logfmt => registry
            .with(
                tracing_logfmt::builder()
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

/// A lock-free "at most once per interval" gate for a log line that a flood of requests could repeat, shared by
/// every task that may log it (e.g. a `static`).
pub struct LogInterval {
    interval_secs: u64,
    last_logged_secs: AtomicU64,
}

impl LogInterval {
    pub const fn new(interval: Duration) -> LogInterval {
        LogInterval {
            interval_secs: interval.as_secs(),
            last_logged_secs: AtomicU64::new(0),
        }
    }

    /// Whether the line may be logged now; at most one caller per interval gets `true`.
    pub fn due(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_logged_secs.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.interval_secs
            && self
                .last_logged_secs
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum MethodLabel {
    GET,
    PUT,
    POST,
    DELETE,
    OTHER,
}

impl From<&http::Method> for MethodLabel {
    fn from(method: &http::Method) -> Self {
        match *method {
            http::Method::GET => MethodLabel::GET,
            http::Method::PUT => MethodLabel::PUT,
            http::Method::POST => MethodLabel::POST,
            http::Method::DELETE => MethodLabel::DELETE,
            _ => MethodLabel::OTHER,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: MethodLabel,
    pub code: u16,
    /// The node that served the request; empty when none did (rejected input, no healthy node, redirect).
    pub node: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub node: Arc<str>,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RebalanceDeleteLabels {
    /// `moved` (deleted after its copy reached the owner), `stale` (the owner's copy was as new), `expired`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RebalanceFailureLabels {
    /// `list`, `copy`, `delete`.
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub node: Arc<str>,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadFailureLabels {
    pub node: Arc<str>,
    /// The Pushgateway API path that was fanned out, e.g. `/metrics`.
    pub path: &'static str,
    /// `connect`, `timeout`, `reset`, `status` (a non-2xx answer) or `body` (an unusable answer).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadPathLabels {
    pub node: Arc<str>,
    /// The Pushgateway API path that was fanned out, e.g. `/metrics`.
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MergeConflictLabels {
    /// `help_mismatch`, `type_mismatch`, `duplicate_series`, `name_collision` or `invalid_exposition`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscoveryLabels {
    /// The membership source: `static`, `dns_sd` or `file_sd`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForbiddenLabels {
    /// `unlisted_user`, `job_not_allowed`, `not_admin` or `unauthenticated` (`authorization::RefusalReason`).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsulOperationLabels {
    /// `watch`, `register` or `deregister`.
    pub operation: &'static str,
}

/// Every metric the gateway exports about itself. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_duration: Family<NodeLabels, Histogram>,
    pub upstream_errors: Family<ErrorLabels, Counter>,
    pub retries: Family<NodeLabels, Counter>,
    pub ring_nodes: Gauge,
    pub known_nodes: Gauge,
    pub node_up: Family<NodeLabels, Gauge>,
    pub membership_changes: Counter,
    pub ring_rebuild_seconds: Gauge<f64, AtomicU64>,
    pub health_probes: Family<ProbeLabels, Counter>,
    pub config_reload_success: Gauge,
    pub config_reload_timestamp: Gauge<f64, AtomicU64>,
    pub read_node_failures: Family<ReadFailureLabels, Counter>,
    pub read_node_failing: Family<ReadPathLabels, Gauge>,
    pub read_merge_conflicts: Family<MergeConflictLabels, Counter>,
    pub discovery_up: Family<DiscoveryLabels, Gauge>,
    pub discovery_failures: Family<DiscoveryLabels, Counter>,
    pub discovery_last_success: Family<DiscoveryLabels, Gauge<f64, AtomicU64>>,
    pub consul_up: Gauge,
    pub consul_errors: Family<ConsulOperationLabels, Counter>,
    pub consul_last_index: Gauge,
    pub consul_registrations: Counter,
    pub rebalance_passes: Counter,
    pub rebalance_groups_moved: Counter,
    pub rebalance_copies_deleted: Family<RebalanceDeleteLabels, Counter>,
    pub rebalance_failures: Family<RebalanceFailureLabels, Counter>,
    /// Groups whose planned delete was left for the next pass because the copy changed after the pass listed it.
    pub rebalance_deletes_skipped_changed: Counter,
    pub rebalance_last_pass_seconds: Gauge<f64, AtomicU64>,
    pub rebalance_last_pass_timestamp: Gauge<f64, AtomicU64>,
    pub groups_expired: Counter,
    pub groups_expiring: Gauge,
    /// Groups not on every owner of their owner set at the last rebalance pass (after its copies).
    pub groups_under_replicated: Gauge,
    /// Replica writes (a push's copy to an owner other than the one that answered) that failed, per node.
    pub replica_writes_failed: Family<NodeLabels, Counter>,
    /// Requests refused with 403 by `authorization`, by reason.
    pub requests_forbidden: Family<ForbiddenLabels, Counter>,
    pub faults: FaultMetrics,
    pub server: ServerMetrics,
}

/// Passive failure detection and ambiguous-write repair (`crate::outlier`, `crate::ambiguous`).
#[derive(Clone, Default)]
pub struct FaultMetrics {
    pub ejections: Family<NodeLabels, Counter>,
    pub ejected: Family<NodeLabels, Gauge>,
    pub in_flight_overflow: Family<NodeLabels, Counter>,
    pub poisoned: Family<NodeLabels, Gauge>,
    pub ambiguous_writes: Family<NodeLabels, Counter>,
    pub ambiguous_pending: Gauge,
    pub ambiguous_repaired: Counter,
    pub ambiguous_forgotten: Family<ForgottenLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForgottenLabels {
    /// `capacity` (ambiguous_writes.max_groups or max_bytes reached), `no_acknowledged_write` (no later push
    /// was acknowledged, so there is nothing to restore) or `rejected` (the owner refused the repair).
    pub reason: &'static str,
}

impl FaultMetrics {
    /// A push not sent to `node` because its in-flight limit was reached.
    pub fn count_in_flight_overflow(&self, node: &Arc<str>) {
        self.in_flight_overflow
            .get_or_create(&NodeLabels { node: node.clone() })
            .inc();
    }

    fn register(registry: &mut Registry) -> FaultMetrics {
        let metrics = FaultMetrics::default();
        registry.register(
            "node_ejections",
            "Times a node was ejected from the ring because pushes to it failed in a row (outlier_detection)",
            metrics.ejections.clone(),
        );
        registry.register(
            "node_ejected",
            "1 while a node is ejected from the ring by outlier detection",
            metrics.ejected.clone(),
        );
        registry.register(
            "push_in_flight_overflow",
            "Pushes not sent to a node because it already had proxy.max_in_flight_per_node pushes in flight",
            metrics.in_flight_overflow.clone(),
        );
        registry.register(
            "node_poisoned",
            "1 while a node answers pushes with 400 because two groups it holds collide (an empty label value next to an absent label)",
            metrics.poisoned.clone(),
        );
        registry.register(
            "ambiguous_writes",
            "Pushes to a node that timed out or lost their connection after being sent: the node may still apply them",
            metrics.ambiguous_writes.clone(),
        );
        registry.register(
            "ambiguous_writes_pending",
            "Groups with an ambiguous write whose acknowledged value is remembered until it is repaired",
            metrics.ambiguous_pending.clone(),
        );
        registry.register(
            "ambiguous_writes_repaired",
            "Groups whose acknowledged value was written again after an ambiguous write could have landed",
            metrics.ambiguous_repaired.clone(),
        );
        registry.register(
            "ambiguous_writes_forgotten",
            "Groups with an ambiguous write that were forgotten without a repair, by reason",
            metrics.ambiguous_forgotten.clone(),
        );
        metrics
    }
}

/// Client connections and request bodies (see `crate::server`, `crate::body_budget`).
#[derive(Clone, Debug, Default)]
pub struct ServerMetrics {
    pub connections_open: Gauge,
    pub accept_errors: Counter,
    pub body_bytes_in_use: Gauge,
    pub bodies_refused: Counter,
    pub heads_too_large: Counter,
}

impl ServerMetrics {
    fn register(registry: &mut Registry) -> ServerMetrics {
        let metrics = ServerMetrics::default();
        registry.register(
            "http_connections_open",
            "Client connections being served now (at most web.max_connections)",
            metrics.connections_open.clone(),
        );
        registry.register(
            "http_accept_errors",
            "Failures to accept a client connection (e.g. out of file descriptors)",
            metrics.accept_errors.clone(),
        );
        registry.register(
            "request_body_bytes_in_use",
            "Bytes of request bodies held in memory now, over all connections (at most proxy.max_body_memory)",
            metrics.body_bytes_in_use.clone(),
        );
        registry.register(
            "request_bodies_refused",
            "Push bodies refused with 503 because proxy.max_body_memory was in use",
            metrics.bodies_refused.clone(),
        );
        registry.register(
            "http_requests_too_large",
            "Requests refused by the HTTP parser because their target (over 65534 bytes) or headers were too large",
            metrics.heads_too_large.clone(),
        );
        metrics
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("dynamic_sharding");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Push API requests handled, by method, status code and the node that served them",
            requests.clone(),
        );
        let upstream_duration = Family::<NodeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ])
        });
        registry.register(
            "upstream_request_duration_seconds",
            "Time from sending a request to a Pushgateway until its full response arrived",
            upstream_duration.clone(),
        );
        let upstream_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests to a Pushgateway that got no response, by kind (connect, timeout, reset)",
            upstream_errors.clone(),
        );
        let retries = Family::<NodeLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Pushes retried on the next node because the owner (the label) could not be reached",
            retries.clone(),
        );
        let ring_nodes = Gauge::default();
        registry.register(
            "ring_nodes",
            "Healthy nodes in the current ring",
            ring_nodes.clone(),
        );
        let known_nodes = Gauge::default();
        registry.register(
            "known_nodes",
            "Nodes known to the membership source, healthy or not",
            known_nodes.clone(),
        );
        let node_up = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "node_up",
            "1 when the node is healthy and in the ring, else 0",
            node_up.clone(),
        );
        let membership_changes = Counter::default();
        registry.register(
            "membership_changes",
            "Times the healthy node set changed and the ring was rebuilt",
            membership_changes.clone(),
        );
        let ring_rebuild_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "ring_rebuild_duration_seconds",
            "How long the last ring rebuild took",
            ring_rebuild_seconds.clone(),
        );
        let health_probes = Family::<ProbeLabels, Counter>::default();
        registry.register(
            "health_probes",
            "Active health probes of Pushgateways, by node and result (success, failure)",
            health_probes.clone(),
        );
        let config_reload_success = Gauge::default();
        registry.register(
            "config_last_reload_successful",
            "Whether the last configuration reload attempt was successful",
            config_reload_success.clone(),
        );
        let config_reload_timestamp = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Timestamp of the last successful configuration reload",
            config_reload_timestamp.clone(),
        );
        let read_node_failures = Family::<ReadFailureLabels, Counter>::default();
        registry.register(
            "read_node_failures",
            "Nodes left out of a fanned-out read (GET /metrics, /api/v1/...) because they failed to answer, by node, path and kind",
            read_node_failures.clone(),
        );
        let read_node_failing = Family::<ReadPathLabels, Gauge>::default();
        registry.register(
            "read_node_failing",
            "1 while a node's last answer to a fanned-out read of this path failed (e.g. a Pushgateway whose /metrics answers 500), 0 once it answers again; see /-/ring read_failures",
            read_node_failing.clone(),
        );
        let read_merge_conflicts = Family::<MergeConflictLabels, Counter>::default();
        registry.register(
            "read_merge_conflicts",
            "Clashes resolved while merging the nodes' expositions for GET /metrics, by kind",
            read_merge_conflicts.clone(),
        );
        let discovery_up = Family::<DiscoveryLabels, Gauge>::default();
        registry.register(
            "membership_discovery_up",
            "1 when the membership source's last look-up (DNS query, file read) fully succeeded, 0 while some part fails (its last answer stays in force)",
            discovery_up.clone(),
        );
        let discovery_failures = Family::<DiscoveryLabels, Counter>::default();
        registry.register(
            "membership_discovery_failures",
            "Membership look-ups (DNS queries, file reads) that failed in some part, by source",
            discovery_failures.clone(),
        );
        let discovery_last_success = Family::<DiscoveryLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "membership_discovery_last_success_timestamp_seconds",
            "Unix time of the membership source's last fully successful look-up",
            discovery_last_success.clone(),
        );
        let consul_up = Gauge::default();
        registry.register(
            "consul_up",
            "1 when the last Consul health query succeeded, 0 while Consul cannot be queried (the last ring stays in force)",
            consul_up.clone(),
        );
        let consul_errors = Family::<ConsulOperationLabels, Counter>::default();
        registry.register(
            "consul_errors",
            "Failed Consul requests, by operation (watch, register, deregister)",
            consul_errors.clone(),
        );
        let consul_last_index = Gauge::default();
        registry.register(
            "consul_last_index",
            "X-Consul-Index of the last answer to the membership watch",
            consul_last_index.clone(),
        );
        let consul_registrations = Counter::default();
        registry.register(
            "consul_registrations",
            "Pushgateway registrations sent to Consul (initial and re-asserted)",
            consul_registrations.clone(),
        );
        let rebalance_passes = Counter::default();
        registry.register(
            "rebalance_passes",
            "Rebalance passes run by this replica (each lists every node and moves misplaced groups)",
            rebalance_passes.clone(),
        );
        let rebalance_groups_moved = Counter::default();
        registry.register(
            "rebalance_groups_moved",
            "Groups copied to their owner by the rebalancer",
            rebalance_groups_moved.clone(),
        );
        let rebalance_copies_deleted = Family::<RebalanceDeleteLabels, Counter>::default();
        registry.register(
            "rebalance_copies_deleted",
            "Group copies deleted from a node that does not own them, by reason (moved, stale, expired)",
            rebalance_copies_deleted.clone(),
        );
        let rebalance_failures = Family::<RebalanceFailureLabels, Counter>::default();
        registry.register(
            "rebalance_failures",
            "Rebalancer requests that failed after their retries, by operation (list, copy, delete)",
            rebalance_failures.clone(),
        );
        let rebalance_deletes_skipped_changed = Counter::default();
        registry.register(
            "rebalance_deletes_skipped_changed",
            "Groups whose copy the rebalancer did not delete because it changed after the pass listed it (pushed \
             through another replica or straight to the node); the next pass re-plans them",
            rebalance_deletes_skipped_changed.clone(),
        );
        let rebalance_last_pass_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "rebalance_last_pass_duration_seconds",
            "How long the last rebalance pass took",
            rebalance_last_pass_seconds.clone(),
        );
        let rebalance_last_pass_timestamp = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "rebalance_last_pass_timestamp_seconds",
            "When the last rebalance pass ended (Unix seconds)",
            rebalance_last_pass_timestamp.clone(),
        );
        let build_info = Family::<Vec<(String, String)>, Gauge>::default();
        build_info
            .get_or_create(&vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )])
            .set(1);
        registry.register(
            "build_info",
            "Build information; the value is always 1",
            build_info,
        );

        let faults = FaultMetrics::register(&mut registry);
        let groups_expired = Counter::default();
        registry.register(
            "groups_expired",
            "Groups deleted from every node because no client pushed them for longer than groups.expire_after",
            groups_expired.clone(),
        );
        let groups_expiring = Gauge::default();
        registry.register(
            "groups_expiring",
            "Groups past 90% of their groups.expire_after limit at the last rebalance pass",
            groups_expiring.clone(),
        );
        let requests_forbidden = Family::<ForbiddenLabels, Counter>::default();
        registry.register(
            "http_requests_forbidden",
            "Requests refused with 403 by the authorization rules (authorization.users), by reason",
            requests_forbidden.clone(),
        );

        let groups_under_replicated = Gauge::default();
        registry.register(
            "groups_under_replicated",
            "Groups not held by every node of their owner set (replication.factor) after the last rebalance pass",
            groups_under_replicated.clone(),
        );
        let replica_writes_failed = Family::<NodeLabels, Counter>::default();
        registry.register(
            "replica_writes_failed",
            "Replica writes of a push that failed; the push was still acknowledged and the rebalancer restores the copy",
            replica_writes_failed.clone(),
        );

        let server = ServerMetrics::register(&mut registry);
        Metrics {
            faults,
            requests_forbidden,
            groups_expired,
            groups_expiring,
            groups_under_replicated,
            replica_writes_failed,
            registry: Arc::new(registry),
            requests,
            upstream_duration,
            upstream_errors,
            retries,
            ring_nodes,
            known_nodes,
            node_up,
            membership_changes,
            ring_rebuild_seconds,
            health_probes,
            config_reload_success,
            config_reload_timestamp,
            read_node_failures,
            read_node_failing,
            read_merge_conflicts,
            discovery_up,
            discovery_failures,
            discovery_last_success,
            consul_up,
            consul_errors,
            consul_last_index,
            consul_registrations,
            rebalance_passes,
            rebalance_groups_moved,
            rebalance_copies_deleted,
            rebalance_failures,
            rebalance_deletes_skipped_changed,
            rebalance_last_pass_seconds,
            rebalance_last_pass_timestamp,
            server,
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail for these metric types.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
