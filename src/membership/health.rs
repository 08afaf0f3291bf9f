//! The health layer: the discovered candidates, each probed with `GET /-/healthy`, make the membership snapshot.
//!
//! Whatever found the candidates (the static list, DNS, files), the thresholds are `health_check`'s: a node leaves the healthy set after `unhealthy_threshold` consecutive failed probes and returns after
//! `healthy_threshold` good ones. At start-up (and for a node added by a reload) the first probe decides
//! directly, so the gateway is ready as soon as one node answers. Request handlers may report a node as
//! suspect; it is then probed at once instead of at the next interval.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::join_all;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::discovery::Discovered;
use super::{Membership, NodeStatus};
use crate::config::{Config, HealthCheckConfig};
use crate::pushgateway::{api, HttpClient, NodeError};
use crate::shutdown::Shutdown;
use crate::telemetry::{Metrics, NodeLabels, ProbeLabels};

/// Handlers send node names here when a request to them failed.
#[derive(Clone)]
pub struct SuspectReporter(mpsc::Sender<String>);

impl SuspectReporter {
    /// Asks for an immediate probe of `node`. Never blocks; a full queue means a probe is coming anyway.
    pub fn report(&self, node: &str) {
        let _ = self.0.try_send(node.to_string());
    }

    /// A reporter whose reports go nowhere (for sources that do their own health checking).
    pub fn disconnected() -> SuspectReporter {
        let (tx, _) = mpsc::channel(1);
        SuspectReporter(tx)
    }
}

#[derive(Debug, Default)]
struct ProbeState {
    /// `None` until the first probe.
    healthy: Option<bool>,
    successes_in_a_row: u32,
    failures_in_a_row: u32,
    last_probe: Option<SystemTime>,
    last_error: Option<String>,
}

impl ProbeState {
    /// Applies one probe result; returns true when the node's health flipped.
    fn record(&mut self, result: Result<(), String>, thresholds: &HealthCheckConfig) -> bool {
        self.last_probe = Some(SystemTime::now());
        let before = self.healthy;
        match result {
            Ok(()) => {
                self.successes_in_a_row = self.successes_in_a_row.saturating_add(1);
                self.failures_in_a_row = 0;
                self.last_error = None;
                if before.is_none() || self.successes_in_a_row >= thresholds.healthy_threshold {
                    self.healthy = Some(true);
                }
            }
            Err(error) => {
                self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
                self.successes_in_a_row = 0;
                self.last_error = Some(error);
                if before.is_none() || self.failures_in_a_row >= thresholds.unhealthy_threshold {
                    self.healthy = Some(false);
                }
            }
        }
        before.is_some() && before != self.healthy
    }
}

/// Starts the prober of the candidates `discovered` yields. Returns the membership channel and the reporter
/// handlers use for failed nodes.
pub fn spawn(
    discovered: watch::Receiver<Arc<Discovered>>,
    config: watch::Receiver<Arc<Config>>,
    client: HttpClient,
    metrics: Metrics,
    shutdown: Shutdown,
) -> (watch::Receiver<Arc<Membership>>, SuspectReporter) {
    let source = discovered.borrow().source;
    let (membership_tx, membership_rx) = watch::channel(Arc::new(Membership::empty(source)));
    let (suspect_tx, suspect_rx) = mpsc::channel(64);
    tokio::spawn(run(
        discovered,
        config,
        client,
        metrics,
        membership_tx,
        suspect_rx,
        shutdown,
    ));
    (membership_rx, SuspectReporter(suspect_tx))
}

async fn run(
    mut discovered: watch::Receiver<Arc<Discovered>>,
    mut config: watch::Receiver<Arc<Config>>,
    client: HttpClient,
    metrics: Metrics,
    membership: watch::Sender<Arc<Membership>>,
    mut suspects: mpsc::Receiver<String>,
    mut shutdown: Shutdown,
) {
    let mut states: BTreeMap<String, ProbeState> = BTreeMap::new();
    loop {
        let thresholds = config.borrow_and_update().health_check;
        let mut candidates = discovered.borrow_and_update().clone();
        states.retain(|node, _| candidates.addresses.contains(node));
        for node in &candidates.addresses {
            states.entry(node.clone()).or_default();
        }
        let nodes: Vec<String> = states.keys().cloned().collect();
        probe(&nodes, &mut states, &client, &metrics, &thresholds).await;
        publish(&states, &candidates, &thresholds, &metrics, &membership);

        let next_round = Instant::now() + thresholds.interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_round) => break,
                changed = config.changed() => {
                    if changed.is_err() { return; }
                    break;
                }
                changed = discovered.changed() => {
                    if changed.is_err() { return; }
                    let next = discovered.borrow_and_update().clone();
                    // A look-up that found the same addresses only refreshes the discovery status.
                    let same = next.addresses == candidates.addresses;
                    candidates = next;
                    if !same { break; }
                    publish(&states, &candidates, &thresholds, &metrics, &membership);
                }
                Some(node) = suspects.recv() => {
                    // Coalesce a burst of reports into one probe per node.
                    let mut suspected = vec![node];
                    while let Ok(more) = suspects.try_recv() {
                        if !suspected.contains(&more) { suspected.push(more); }
                    }
                    suspected.retain(|n| states.get(n).is_some_and(|s| s.healthy == Some(true)));
                    if !suspected.is_empty() {
                        tracing::debug!(nodes = ?suspected, "probing nodes reported as suspect");
                        probe(&suspected, &mut states, &client, &metrics, &thresholds).await;
                        publish(&states, &candidates, &thresholds, &metrics, &membership);
                    }
                }
                _ = shutdown.recv() => return,
            }
        }
    }
}

/// Probes `nodes` once and applies the results to their states.
async fn probe(
    nodes: &[String],
    states: &mut BTreeMap<String, ProbeState>,
    client: &HttpClient,
    metrics: &Metrics,
    thresholds: &HealthCheckConfig,
) {
    let results = join_all(nodes.iter().map(|node| probe_one(client, node, thresholds))).await;
    for (node, result) in nodes.iter().zip(results) {
        let node_label: Arc<str> = Arc::from(node.as_str());
        metrics
            .health_probes
            .get_or_create(&ProbeLabels {
                node: node_label.clone(),
                result: if result.is_ok() { "success" } else { "failure" },
            })
            .inc();
        let Some(state) = states.get_mut(node) else {
            continue;
        };
        let error = result.as_ref().err().cloned();
        let first_probe = state.healthy.is_none();
        if state.record(result, thresholds) {
            match (state.healthy, error) {
                (Some(false), Some(error)) => {
                    tracing::warn!(%node, %error, "node is unhealthy, removing it from the ring")
                }
                _ => tracing::info!(%node, "node is healthy again, adding it to the ring"),
            }
        } else if let (true, Some(error)) = (first_probe, &error) {
            // No flip from "unknown", but a node that is down (or refuses our TLS or credentials) from the
            // start must be visible too.
            tracing::warn!(%node, %error, "first health probe failed, the node stays out of the ring");
        } else if let (Some(error), Some(true)) = (&state.last_error, state.healthy) {
            tracing::debug!(%node, %error, failures = state.failures_in_a_row, "health probe failed");
        }
        metrics
            .node_up
            .get_or_create(&NodeLabels { node: node_label })
            .set(i64::from(state.healthy == Some(true)));
    }
}

/// Publishes the snapshot of the probed candidates.
fn publish(
    states: &BTreeMap<String, ProbeState>,
    discovered: &Discovered,
    thresholds: &HealthCheckConfig,
    metrics: &Metrics,
    membership: &watch::Sender<Arc<Membership>>,
) {
    let snapshot = Membership {
        source: discovered.source,
        nodes: states
            .iter()
            .map(|(node, state)| NodeStatus {
                node: node.clone(),
                healthy: state.healthy == Some(true),
                last_probe: state.last_probe,
                last_error: state.last_error.clone(),
            })
            .collect(),
        detail: serde_json::json!({
            "health_check": {
                "interval": humantime::format_duration(thresholds.interval).to_string(),
                "timeout": humantime::format_duration(thresholds.timeout).to_string(),
                "unhealthy_threshold": thresholds.unhealthy_threshold,
                "healthy_threshold": thresholds.healthy_threshold,
            },
            "discovery": discovered.status,
        }),
    };
    metrics.known_nodes.set(snapshot.nodes.len() as i64);
    membership.send_replace(Arc::new(snapshot));
}

async fn probe_one(
    client: &HttpClient,
    node: &str,
    thresholds: &HealthCheckConfig,
) -> Result<(), String> {
    match api::healthy(client, node, thresholds.timeout).await {
        Ok(()) => Ok(()),
        Err(NodeError::Status { status, .. }) => Err(format!("GET /-/healthy answered {status}")),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn thresholds(unhealthy: u32, healthy: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
        }
    }

    #[test]
    fn first_probe_decides_directly() {
        let t = thresholds(3, 3);
        let mut up = ProbeState::default();
        assert!(!up.record(Ok(()), &t));
        assert_eq!(up.healthy, Some(true));
        let mut down = ProbeState::default();
        down.record(Err("refused".into()), &t);
        assert_eq!(down.healthy, Some(false));
    }

    #[test]
    fn node_leaves_after_unhealthy_threshold_failures_and_returns_after_healthy_threshold() {
        let t = thresholds(2, 3);
        let mut state = ProbeState::default();
        state.record(Ok(()), &t);
        assert!(!state.record(Err("x".into()), &t));
        assert_eq!(
            state.healthy,
            Some(true),
            "one failure is below the threshold"
        );
        assert!(state.record(Err("x".into()), &t), "second failure flips");
        assert_eq!(state.healthy, Some(false));
        assert!(!state.record(Ok(()), &t));
        assert!(!state.record(Ok(()), &t));
        assert_eq!(state.healthy, Some(false));
        assert!(state.record(Ok(()), &t), "third success flips back");
        assert_eq!(state.healthy, Some(true));
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let t = thresholds(2, 1);
        let mut state = ProbeState::default();
        state.record(Ok(()), &t);
        state.record(Err("x".into()), &t);
        state.record(Ok(()), &t);
        state.record(Err("x".into()), &t);
        assert_eq!(state.healthy, Some(true));
    }
}
