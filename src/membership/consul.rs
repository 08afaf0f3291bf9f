//! Consul membership: the passing instances of `register_service_name`, followed with blocking queries.
//!
//! Two tasks:
//! - the **registrar** registers every `pushgateway.servers` entry (ID `<host>_<port>`, the Go original's IDs,
//!   with an HTTP check on `/-/healthy`) and re-asserts the registrations every [`REASSERT_INTERVAL`], whenever
//!   Consul becomes reachable again and whenever its index goes backwards (an agent that lost its state), so a
//!   restarted agent is repopulated. A node that is in the current ring is registered with its check starting
//!   `passing` (Consul keeps the status of a check it already has, so this only matters for an agent that lost
//!   its state): a restarted agent then does not take healthy nodes out of the ring until its first check run.
//!   Nothing is deregistered on shutdown: other replicas route on the same registrations. (Skipped with
//!   `register: false`.)
//! - the **watcher** follows `/v1/health/service/<name>` and publishes a [`Membership`] snapshot per answer.
//!   Every passing instance (all its checks passing, exactly what `?passing=true` selects) joins the ring,
//!   whoever registered it; registered but failing instances are kept in the snapshot as unhealthy, so the
//!   rebalancer can tell them (never touched) from deregistered ones (drained). No passing instance is an empty
//!   ring (pushes get 503). When Consul cannot be reached the last snapshot stays in force, marked unreachable, and
//!   the watcher retries with jittered backoff until Consul answers again. The first answer after an outage (or
//!   after the index went backwards) is not trusted when this process registers the nodes: the agent may be a
//!   fresh one that does not know them yet, and its empty answer would empty the ring (and make the rebalancer
//!   drain every node). The watcher first waits for the registrar to re-assert (at most
//!   [`REASSERT_WAIT`]), then queries again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};

use super::{Membership, NodeStatus};
use crate::config::{BasicAuth, Config, ConsulConfig, UpstreamConfig};
use crate::consul::index::{backoff, next_index, pause_before_next, went_backwards};
use crate::consul::{ConsulClient, HttpCheck, ServiceInstance, ServiceRegistration};
use crate::pushgateway::address::node_id;
use crate::pushgateway::NodeAddress;
use crate::shutdown::Shutdown;
use crate::telemetry::{ConsulOperationLabels, Metrics, NodeLabels};

/// Registrations are re-asserted this often even when nothing seems wrong (cheap and idempotent in Consul).
pub const REASSERT_INTERVAL: Duration = Duration::from_secs(30);
/// How long one blocking query may wait for a change.
pub const WATCH_WAIT: Duration = Duration::from_secs(300);
/// How long the watcher waits, after Consul comes back, for the registrar to re-assert before it queries again.
pub const REASSERT_WAIT: Duration = Duration::from_secs(10);

/// Starts the registrar (unless `register: false`) and the watcher for the `consul_server` of `config`.
pub fn spawn(
    consul: ConsulConfig,
    client: ConsulClient,
    config: watch::Receiver<Arc<Config>>,
    metrics: Metrics,
    shutdown: Shutdown,
) -> watch::Receiver<Arc<Membership>> {
    let (membership_tx, membership_rx) = watch::channel(Arc::new(Membership::empty("consul")));
    let reassert = Arc::new(Notify::new());
    let registration_error = Arc::new(Mutex::new(None));
    // Counts the registrar's completed passes, so the watcher can wait for one.
    let (passes_tx, passes_rx) = watch::channel(0u64);
    if consul.register {
        tokio::spawn(register_loop(
            Registrar {
                client: client.clone(),
                consul: consul.clone(),
                metrics: metrics.clone(),
                reassert: reassert.clone(),
                registration_error: registration_error.clone(),
                membership: membership_rx.clone(),
                passes: passes_tx,
            },
            config.clone(),
            shutdown.clone(),
        ));
    }
    let watcher = Watcher {
        started_with: consul,
        client,
        config,
        metrics,
        membership: membership_tx,
        reassert,
        registration_error,
        registrar_passes: passes_rx,
        reasserted_since_outage: false,
        reachable: None,
        last_index: 0,
        query_index: 0,
        last_error: None,
        last_error_at: None,
        last_contact: None,
        passing: BTreeMap::new(),
        failing: BTreeSet::new(),
    };
    tokio::spawn(watcher.run(shutdown));
    membership_rx
}

// ---- Pure parts ---------------------------------------------------------------------------------------------

/// The node id (`host:port`) of an instance; `None` when it has no address or port to route to.
pub fn instance_node(instance: &ServiceInstance) -> Option<String> {
    let address = instance.address.trim();
    if address.is_empty() || instance.port == 0 {
        return None;
    }
    Some(node_id(address, instance.port))
}

/// The Consul registration of a configured node `host:port`: the Go original's ID `<host>_<port>`, so an
/// existing fleet's registrations are updated in place rather than duplicated. `in_ring` nodes get a check that
/// starts `passing` (see the module doc); others start with Consul's default, `critical`. The check speaks the
/// nodes' scheme and sends the gateway's `basic_auth` (the Pushgateway guards `/-/healthy` too).
pub fn registration_for(
    node: &str,
    consul: &ConsulConfig,
    upstream: &UpstreamConfig,
    in_ring: bool,
) -> Option<ServiceRegistration> {
    let address = NodeAddress::parse(node).ok()?;
    Some(ServiceRegistration {
        id: format!("{}_{}", address.host(), address.port()),
        name: consul.service_name.clone(),
        address: address.host().to_string(),
        port: address.port(),
        tags: consul.tag.iter().cloned().collect(),
        check: HttpCheck {
            http: address.url(upstream.scheme, "/-/healthy"),
            tls_server_name: upstream.tls.server_name.clone(),
            tls_skip_verify: upstream.tls.insecure_skip_verify,
            authorization: upstream.basic_auth.as_ref().map(BasicAuth::header_value),
            interval: go_duration(consul.check_interval),
            timeout: go_duration(consul.check_timeout),
            deregister_critical_service_after: consul.deregister_critical_after.map(go_duration),
            status: in_ring.then_some("passing"),
        },
    })
}

/// A duration as Go's `time.ParseDuration` reads it.
fn go_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// Passing instances as node id -> service IDs, deduplicated (the same Pushgateway may be registered on
/// several agents, one per gateway replica).
fn passing_nodes(instances: &[ServiceInstance]) -> BTreeMap<String, Vec<String>> {
    let mut nodes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for instance in instances.iter().filter(|i| i.passing) {
        match instance_node(instance) {
            Some(node) => nodes
                .entry(node)
                .or_default()
                .push(instance.service_id.clone()),
            None => tracing::debug!(
                service_id = %instance.service_id,
                "ignoring a Consul instance without address or port"
            ),
        }
    }
    nodes
}

// ---- Registrar ----------------------------------------------------------------------------------------------

struct Registrar {
    client: ConsulClient,
    consul: ConsulConfig,
    metrics: Metrics,
    reassert: Arc<Notify>,
    registration_error: Arc<Mutex<Option<String>>>,
    /// The watcher's last snapshot: which nodes are in the ring right now.
    membership: watch::Receiver<Arc<Membership>>,
    /// Incremented after every pass, successful or not.
    passes: watch::Sender<u64>,
}

async fn register_loop(
    registrar: Registrar,
    mut config: watch::Receiver<Arc<Config>>,
    mut shutdown: Shutdown,
) {
    let Registrar {
        client,
        consul,
        metrics,
        reassert,
        registration_error,
        membership,
        passes,
    } = registrar;
    // IDs this process registered, so a server removed from the config by a reload is deregistered.
    let mut registered: BTreeSet<String> = BTreeSet::new();
    let mut failures: u32 = 0;
    loop {
        let (servers, upstream) = {
            let config = config.borrow_and_update();
            (config.servers.clone(), config.upstream.clone())
        };
        let in_ring: BTreeSet<String> = membership.borrow().healthy_nodes().into_iter().collect();
        let wanted: Vec<ServiceRegistration> = servers
            .iter()
            .filter_map(|node| registration_for(node, &consul, &upstream, in_ring.contains(node)))
            .collect();
        let mut error = None;
        for registration in &wanted {
            match client.register_service(registration).await {
                Ok(()) => {
                    metrics.consul_registrations.inc();
                    registered.insert(registration.id.clone());
                }
                Err(failure) => {
                    count_error(&metrics, "register");
                    error = Some(failure.to_string());
                }
            }
        }
        let stale: Vec<String> = registered
            .iter()
            .filter(|id| !wanted.iter().any(|r| &r.id == *id))
            .cloned()
            .collect();
        for id in stale {
            match client.deregister_service(&id).await {
                Ok(()) => {
                    tracing::info!(service_id = %id, "deregistered a Pushgateway removed from pushgateway.servers");
                    registered.remove(&id);
                }
                Err(failure) => {
                    count_error(&metrics, "deregister");
                    error = Some(failure.to_string());
                }
            }
        }
        let wait = match &error {
            None => {
                if failures > 0 {
                    tracing::info!(count = wanted.len(), "Consul registrations re-asserted");
                } else {
                    tracing::debug!(count = wanted.len(), service = %consul.service_name, "Consul registrations asserted");
                }
                failures = 0;
                REASSERT_INTERVAL
            }
            Some(error) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::warn!(%error, "cannot register Pushgateways in Consul; retrying");
                }
                backoff(failures, rand::random::<f64>())
            }
        };
        if let Ok(mut slot) = registration_error.lock() {
            *slot = error;
        }
        passes.send_modify(|count| *count = count.wrapping_add(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = reassert.notified() => {}
            changed = config.changed() => if changed.is_err() { return },
            _ = shutdown.recv() => return,
        }
    }
}

fn count_error(metrics: &Metrics, operation: &'static str) {
    metrics
        .consul_errors
        .get_or_create(&ConsulOperationLabels { operation })
        .inc();
}

// ---- Watcher ------------------------------------------------------------------------------------------------

struct Watcher {
    /// The `consul_server` section in force; changing it needs a restart.
    started_with: ConsulConfig,
    client: ConsulClient,
    config: watch::Receiver<Arc<Config>>,
    metrics: Metrics,
    membership: watch::Sender<Arc<Membership>>,
    reassert: Arc<Notify>,
    registration_error: Arc<Mutex<Option<String>>>,
    /// The registrar's pass counter (never changes with `register: false`).
    registrar_passes: watch::Receiver<u64>,
    /// Set once the registrar re-asserted after an outage; cleared by the next trusted answer.
    reasserted_since_outage: bool,
    /// `None` until the first answer or error; then whether the last query succeeded.
    reachable: Option<bool>,
    /// The index Consul last answered with (shown in `/-/ring`).
    last_index: u64,
    /// The index to send with the next query: `last_index` by Consul's rules, 0 after an error.
    query_index: u64,
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
    last_contact: Option<SystemTime>,
    /// The last passing set: node id -> the service IDs behind it.
    passing: BTreeMap<String, Vec<String>>,
    /// Registered nodes none of whose instances pass. They stay in the snapshot as unhealthy, so that consumers
    /// (the rebalancer) can tell a failing node, which must not be touched, from a deregistered one.
    failing: BTreeSet<String>,
}

impl Watcher {
    async fn run(mut self, mut shutdown: Shutdown) {
        let mut failures: u32 = 0;
        loop {
            let sent = self.query_index;
            let answer = tokio::select! {
                answer = self.client.instances(
                    &self.started_with.service_name,
                    self.started_with.tag.as_deref(),
                    sent,
                    WATCH_WAIT,
                ) => answer,
                changed = self.config.changed() => {
                    if changed.is_err() { return }
                    self.config_changed();
                    continue;
                }
                _ = shutdown.recv() => return,
            };
            let wait = match answer {
                Ok(answer) if self.must_reassert_before_trusting(sent, answer.index) => {
                    if !self.reassert_and_wait(&mut shutdown).await {
                        return;
                    }
                    // Ask again from scratch; the answer is trusted then, re-asserted or not.
                    self.query_index = 0;
                    self.reasserted_since_outage = true;
                    continue;
                }
                Ok(answer) => {
                    failures = 0;
                    self.answered(sent, answer.index, &answer.value);
                    pause_before_next(sent, self.query_index)
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    self.failed(error.to_string());
                    backoff(failures, rand::random::<f64>())
                }
            };
            self.publish();
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.recv() => return,
                }
            }
        }
    }

    /// Whether `answered` may come from an agent that lost this process's registrations (Consul was unreachable
    /// or its index went backwards) and has not been re-asserted to since.
    fn must_reassert_before_trusting(&self, sent: u64, answered: u64) -> bool {
        self.started_with.register
            && !self.reasserted_since_outage
            && (self.reachable == Some(false) || went_backwards(sent, answered))
    }

    /// Asks the registrar for a pass and waits for it (at most [`REASSERT_WAIT`]); `false` on shutdown.
    async fn reassert_and_wait(&mut self, shutdown: &mut Shutdown) -> bool {
        tracing::info!("Consul answered after an outage or with an index that went backwards (an agent that may have lost its state); re-asserting registrations before trusting it");
        let before = *self.registrar_passes.borrow_and_update();
        self.reassert.notify_one();
        let passes = &mut self.registrar_passes;
        tokio::select! {
            waited = tokio::time::timeout(REASSERT_WAIT, passes.wait_for(|count| *count != before)) => {
                if waited.is_err() {
                    tracing::debug!("the registrar did not finish within {REASSERT_WAIT:?}; querying Consul anyway");
                }
                true
            }
            _ = shutdown.recv() => false,
        }
    }

    fn config_changed(&mut self) {
        let current = self.config.borrow_and_update().clone();
        if current.consul() != Some(&self.started_with) {
            tracing::warn!("consul_server changed; the new settings take effect after a restart");
        }
        // The configured servers appear in /-/ring even when not passing; refresh that view.
        self.publish();
    }

    fn answered(&mut self, sent: u64, answered: u64, instances: &[ServiceInstance]) {
        self.last_contact = Some(SystemTime::now());
        match self.reachable {
            // With `register: true` the registrar has already re-asserted before this answer was asked for
            // (`reassert_and_wait`); without it there is no registrar to ask.
            Some(false) => {
                tracing::info!(consul = %self.client.base_url(), "Consul is reachable again")
            }
            None => {
                tracing::info!(consul = %self.client.base_url(), service = %self.started_with.service_name, "watching Consul")
            }
            Some(true) => {}
        }
        if went_backwards(sent, answered) {
            tracing::info!(
                previous = sent,
                now = answered,
                "Consul's index went backwards (restarted or restored agent); following it from there"
            );
        }
        self.reachable = Some(true);
        self.metrics.consul_up.set(1);
        self.query_index = next_index(sent, answered);
        self.last_index = answered;
        self.metrics.consul_last_index.set(self.last_index as i64);

        let passing = passing_nodes(instances);
        for node in passing.keys().filter(|n| !self.passing.contains_key(*n)) {
            tracing::info!(%node, "node is passing in Consul, adding it to the ring");
        }
        for node in self.passing.keys().filter(|n| !passing.contains_key(*n)) {
            tracing::warn!(%node, "node is no longer passing in Consul, removing it from the ring");
        }
        if passing.is_empty() && !self.passing.is_empty() {
            tracing::warn!(service = %self.started_with.service_name, "no passing instance in Consul; pushes get 503");
        }
        self.failing = instances
            .iter()
            .filter_map(instance_node)
            .filter(|node| !passing.contains_key(node))
            .collect();
        self.passing = passing;
        self.reasserted_since_outage = false;
    }

    fn failed(&mut self, error: String) {
        count_error(&self.metrics, "watch");
        self.metrics.consul_up.set(0);
        if self.reachable != Some(false) {
            tracing::warn!(
                %error,
                ring_nodes = self.passing.len(),
                "cannot query Consul; routing on the last known ring until it answers again"
            );
        } else {
            tracing::debug!(%error, "Consul still unreachable");
        }
        self.reachable = Some(false);
        // The agent that answers next may be a fresh one whose index is below ours; a blocking query with our old
        // index would then hang for the whole wait time. Start over with a non-blocking query.
        self.query_index = 0;
        self.last_error = Some(error);
        self.last_error_at = Some(SystemTime::now());
    }

    fn publish(&self) {
        let configured = self.config.borrow().servers.clone();
        let mut nodes: BTreeMap<String, NodeStatus> = BTreeMap::new();
        for node in self.passing.keys() {
            nodes.insert(
                node.clone(),
                NodeStatus {
                    node: node.clone(),
                    healthy: true,
                    last_probe: self.last_contact,
                    last_error: None,
                },
            );
        }
        for node in &self.failing {
            nodes.insert(
                node.clone(),
                NodeStatus {
                    node: node.clone(),
                    healthy: false,
                    last_probe: self.last_contact,
                    last_error: Some("failing its Consul health check".to_string()),
                },
            );
        }
        // Configured servers that are not passing are shown (and counted) as down, to explain a smaller ring.
        if self.started_with.register {
            for node in configured {
                nodes.entry(node.clone()).or_insert_with(|| NodeStatus {
                    node,
                    healthy: false,
                    last_probe: self.last_contact,
                    last_error: Some("not passing in Consul".to_string()),
                });
            }
        }
        for status in nodes.values() {
            self.metrics
                .node_up
                .get_or_create(&NodeLabels {
                    node: Arc::from(status.node.as_str()),
                })
                .set(i64::from(status.healthy));
        }
        self.metrics.known_nodes.set(nodes.len() as i64);
        let registration_error = self
            .registration_error
            .lock()
            .ok()
            .and_then(|slot| slot.clone());
        let rfc3339 = |time: Option<SystemTime>| {
            time.map(|t| humantime::format_rfc3339_millis(t).to_string())
        };
        let snapshot = Membership {
            source: "consul",
            nodes: nodes.into_values().collect(),
            detail: serde_json::json!({
                "consul": self.client.base_url(),
                "service": self.started_with.service_name,
                "tag": self.started_with.tag,
                "datacenter": self.started_with.datacenter,
                "register": self.started_with.register,
                "reachable": self.reachable,
                "last_index": self.last_index,
                "last_contact": rfc3339(self.last_contact),
                "last_error": self.last_error,
                "last_error_at": rfc3339(self.last_error_at),
                "last_registration_error": registration_error,
                "instances": self.passing,
            }),
        };
        self.membership.send_replace(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConsulScheme, ConsulTlsConfig};

    fn instance(id: &str, address: &str, port: u16) -> ServiceInstance {
        ServiceInstance {
            service_id: id.into(),
            passing: true,
            address: address.into(),
            port,
            node: "n".into(),
        }
    }

    fn consul_config() -> ConsulConfig {
        ConsulConfig {
            addr: "127.0.0.1:8500".into(),
            scheme: ConsulScheme::Http,
            username: None,
            password: None,
            service_name: "pushgateway".into(),
            register: true,
            check_interval: Duration::from_secs(5),
            check_timeout: Duration::from_millis(1500),
            deregister_critical_after: None,
            datacenter: None,
            tag: Some("shard".into()),
            token: None,
            tls: ConsulTlsConfig::default(),
        }
    }

    #[test]
    fn registrations_use_the_go_originals_ids_and_a_healthy_check() {
        let registration = registration_for(
            "10.0.0.1:9091",
            &consul_config(),
            &Default::default(),
            false,
        )
        .unwrap();
        assert_eq!(registration.id, "10.0.0.1_9091");
        assert_eq!(registration.address, "10.0.0.1");
        assert_eq!(registration.port, 9091);
        assert_eq!(registration.tags, vec!["shard"]);
        assert_eq!(registration.check.http, "http://10.0.0.1:9091/-/healthy");
        assert_eq!(registration.check.interval, "5s");
        assert_eq!(registration.check.timeout, "1500ms");
        assert_eq!(registration.check.deregister_critical_service_after, None);
        assert_eq!(
            registration.check.status, None,
            "Consul's default: critical"
        );
        let in_ring =
            registration_for("10.0.0.1:9091", &consul_config(), &Default::default(), true).unwrap();
        assert_eq!(in_ring.check.status, Some("passing"));

        let v6 =
            registration_for("[::1]:9091", &consul_config(), &Default::default(), false).unwrap();
        assert_eq!(v6.id, "::1_9091");
        assert_eq!(v6.address, "::1");
        assert_eq!(v6.check.http, "http://[::1]:9091/-/healthy");
    }

    #[test]
    fn checks_follow_the_nodes_scheme_tls_and_credentials() {
        let upstream = crate::config::Config::parse(
            "pushgateway: {servers: ['a:1'], scheme: https, tls_config: {server_name: pgw, \
             insecure_skip_verify: true}, basic_auth: {username: u, password: 'check-secret'}}",
        )
        .unwrap()
        .upstream;
        let registration =
            registration_for("10.0.0.1:9091", &consul_config(), &upstream, false).unwrap();
        assert_eq!(registration.check.http, "https://10.0.0.1:9091/-/healthy");
        let json = serde_json::to_value(&registration).unwrap();
        assert_eq!(json["Check"]["TLSServerName"], "pgw");
        assert_eq!(json["Check"]["TLSSkipVerify"], true);
        // base64("u:check-secret"): Consul needs it to probe a node that guards /-/healthy.
        assert_eq!(
            json["Check"]["Header"]["Authorization"][0],
            "Basic dTpjaGVjay1zZWNyZXQ="
        );
        assert!(!format!("{registration:?}").contains("dTpjaGVjay1zZWNyZXQ="));
        let plain = serde_json::to_value(
            registration_for(
                "10.0.0.1:9091",
                &consul_config(),
                &Default::default(),
                false,
            )
            .unwrap(),
        )
        .unwrap();
        for key in ["TLSServerName", "TLSSkipVerify", "Header"] {
            assert!(plain["Check"].get(key).is_none(), "{key} in {plain}");
        }
    }

    #[test]
    fn instances_become_nodes_deduplicated_and_unroutable_ones_are_skipped() {
        let nodes = passing_nodes(&[
            instance("a", "10.0.0.2", 9091),
            instance("b", "10.0.0.1", 9091),
            instance("b-on-other-agent", "10.0.0.1", 9091),
            instance("v6", "fe80::1", 9091),
            instance("no-address", "", 9091),
            instance("no-port", "10.0.0.3", 0),
        ]);
        let names: Vec<&str> = nodes.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            vec!["10.0.0.1:9091", "10.0.0.2:9091", "[fe80::1]:9091"]
        );
        assert_eq!(nodes["10.0.0.1:9091"], vec!["b", "b-on-other-agent"]);
    }

    #[test]
    fn failing_instances_are_not_passing_nodes() {
        let mut failing = instance("c", "10.0.0.3", 9091);
        failing.passing = false;
        let nodes = passing_nodes(&[instance("a", "10.0.0.1", 9091), failing]);
        assert_eq!(nodes.keys().collect::<Vec<_>>(), vec!["10.0.0.1:9091"]);
    }
}
