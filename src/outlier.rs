//! Passive failure detection on the push path (Envoy's outlier detection, HAProxy's `observe layer7`).
//!
//! A Pushgateway can answer `GET /-/healthy` and still never answer a push (a hung store, a SIGSTOPped process
//! whose kernel still accepts connections). Active probes cannot see that; the push path can. Every forwarded
//! push reports its outcome here: `outlier_detection.consecutive_failures` pushes in a row that time out, cannot
//! connect or lose their connection eject the node from the ring for an ejection time that grows with each
//! ejection in a row (`base_ejection_time` times the number of ejections, at most `max_ejection_time`). When it
//! is over the node is back in the ring if its health check passes; if its pushes fail again it is ejected for
//! longer. After `max_ejection_time` without an ejection the count starts again from zero.
//!
//! Never ejected: more than `max_ejected_percent` of the healthy nodes at once (one node always may be), or the
//! last node of the ring. An answer of any status is a success here: a 400 is the client's problem, not the
//! node's.
//!
//! The ring builder reads the ejected set from [`OutlierDetector::subscribe`]; this module never touches the ring.
//! [`Ejections`] is the pure bookkeeping (no clock: callers pass `now`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::config::{Config, OutlierDetectionConfig};
use crate::membership::Membership;
use crate::shutdown::Shutdown;
use crate::telemetry::{FaultMetrics, NodeLabels};

/// The push path's per-node counters, shared by every ring table's route for that node.
#[derive(Debug, Default)]
pub struct NodeCounters {
    consecutive_failures: AtomicU32,
    in_flight: AtomicUsize,
    /// The node's last answers said its store is broken (see [`is_poisoned_answer`]).
    poisoned: AtomicBool,
}

/// Whether a push's answer says the node rejects pushes because of what it already holds, not because of the
/// push: two of its groups have colliding `push_time_seconds` series (`{job="j"}` next to `{job="j",a=""}`), so
/// it answers every push, to any group, with 400 until one of them is deleted.
pub fn is_poisoned_answer(status: http::StatusCode, body: &[u8]) -> bool {
    if status != http::StatusCode::BAD_REQUEST {
        return false;
    }
    let text = String::from_utf8_lossy(body);
    text.contains("was collected before with the same name and label values")
        && (text.contains("\"push_time_seconds\"")
            || text.contains("\"push_failure_time_seconds\""))
}

impl NodeCounters {
    /// Reserves one of `limit` in-flight slots; `None` when the node already has `limit` pushes in flight.
    pub fn try_begin(self: &Arc<Self>, limit: usize) -> Option<InFlight> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight(self.clone()))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// One push in flight to a node; released on drop.
pub struct InFlight(Arc<NodeCounters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ejection state of one node.
#[derive(Clone, Debug, Default)]
struct NodeEjection {
    ejected_until: Option<Instant>,
    /// Ejections in a row (reset after `max_ejection_time` without one).
    times_ejected: u32,
    last_returned: Option<Instant>,
    last_ejected_at: Option<SystemTime>,
    last_reason: Option<String>,
}

/// The pure part: which nodes are ejected, for how long, and whether one more may be.
#[derive(Debug, Default)]
pub struct Ejections {
    nodes: BTreeMap<String, NodeEjection>,
}

/// Why a node that crossed the failure threshold stays in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotEjected {
    AlreadyEjected,
    /// `max_ejected_percent` of the healthy nodes are ejected already.
    TooManyEjected,
    /// It is the last node of the ring.
    LastNode,
}

impl Ejections {
    /// Ejects `node` (one of `healthy` membership nodes) at `now`; returns how long for.
    pub fn eject(
        &mut self,
        node: &str,
        reason: String,
        healthy: &BTreeSet<String>,
        now: Instant,
        config: &OutlierDetectionConfig,
    ) -> Result<Duration, NotEjected> {
        if self.is_ejected(node, now) {
            return Err(NotEjected::AlreadyEjected);
        }
        let ejected_healthy = healthy
            .iter()
            .filter(|n| n.as_str() != node && self.is_ejected(n, now))
            .count();
        if healthy.len().saturating_sub(ejected_healthy) <= 1 {
            return Err(NotEjected::LastNode);
        }
        let allowed = (healthy.len() * config.max_ejected_percent as usize / 100).max(1);
        if ejected_healthy + 1 > allowed {
            return Err(NotEjected::TooManyEjected);
        }
        let state = self.nodes.entry(node.to_string()).or_default();
        if state.last_returned.is_some_and(|returned| {
            now.saturating_duration_since(returned) >= config.max_ejection_time
        }) {
            state.times_ejected = 0;
        }
        state.times_ejected = state.times_ejected.saturating_add(1);
        let duration = config
            .base_ejection_time
            .saturating_mul(state.times_ejected)
            .min(config.max_ejection_time);
        state.ejected_until = Some(now + duration);
        state.last_ejected_at = Some(SystemTime::now());
        state.last_reason = Some(reason);
        Ok(duration)
    }

    pub fn is_ejected(&self, node: &str, now: Instant) -> bool {
        self.nodes
            .get(node)
            .and_then(|s| s.ejected_until)
            .is_some_and(|until| until > now)
    }

    /// Ends the ejections that are over at `now`; returns the nodes that came back.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut returned = Vec::new();
        for (node, state) in &mut self.nodes {
            if state.ejected_until.is_some_and(|until| until <= now) {
                state.ejected_until = None;
                state.last_returned = Some(now);
                returned.push(node.clone());
            }
        }
        returned
    }

    /// The ejected nodes at `now`.
    pub fn ejected(&self, now: Instant) -> BTreeSet<String> {
        self.nodes
            .keys()
            .filter(|node| self.is_ejected(node, now))
            .cloned()
            .collect()
    }

    /// When the next ejection ends.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.nodes.values().filter_map(|s| s.ejected_until).min()
    }

    /// Forgets nodes that are neither ejected nor within `max_ejection_time` of their last return.
    fn forget_settled(&mut self, now: Instant, config: &OutlierDetectionConfig) {
        self.nodes.retain(|_, state| {
            state.ejected_until.is_some()
                || state
                    .last_returned
                    .is_some_and(|r| now.saturating_duration_since(r) < config.max_ejection_time)
        });
    }
}

/// A node's passive-health state as `/-/ring` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeOutlierStatus {
    pub ejected: bool,
    /// Seconds until the ejection ends.
    pub ejected_for_seconds: Option<f64>,
    pub times_ejected: u32,
    pub last_ejection: Option<String>,
    pub last_ejection_reason: Option<String>,
    pub consecutive_failures: u32,
    pub pushes_in_flight: usize,
    /// The node answers every push with 400 because of groups it already holds.
    pub poisoned: bool,
}

/// Shared between the push path (which reports outcomes), the ring builder (which leaves ejected nodes out)
/// and `/-/ring`. Cheap to clone.
#[derive(Clone)]
pub struct OutlierDetector {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<ArcSwap<Config>>,
    membership: watch::Receiver<Arc<Membership>>,
    counters: Mutex<HashMap<String, Arc<NodeCounters>>>,
    ejections: Mutex<Ejections>,
    ejected_tx: watch::Sender<Arc<BTreeSet<String>>>,
    changed: Notify,
    metrics: FaultMetrics,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is complete before the guard drops, so a panicked holder leaves consistent state.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl OutlierDetector {
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        membership: watch::Receiver<Arc<Membership>>,
        metrics: FaultMetrics,
    ) -> OutlierDetector {
        let (ejected_tx, _) = watch::channel(Arc::new(BTreeSet::new()));
        OutlierDetector {
            inner: Arc::new(Inner {
                config,
                membership,
                counters: Mutex::new(HashMap::new()),
                ejections: Mutex::new(Ejections::default()),
                ejected_tx,
                changed: Notify::new(),
                metrics,
            }),
        }
    }

    /// The ejected set; a new value every time it changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<BTreeSet<String>>> {
        self.inner.ejected_tx.subscribe()
    }

    /// The counters the push path updates for `node` (the same object for every ring table).
    pub fn counters(&self, node: &str) -> Arc<NodeCounters> {
        lock(&self.inner.counters)
            .entry(node.to_string())
            .or_default()
            .clone()
    }

    /// A push got an answer from the node (any status): the node is not failing.
    pub fn record_success(counters: &NodeCounters) {
        // Read first: a store on every push would bounce the cache line between threads.
        if counters.consecutive_failures.load(Ordering::Relaxed) != 0 {
            counters.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A push got an answer: notes whether it says the node is poisoned (logged and counted on a change only).
    pub fn record_answer(
        &self,
        node: &str,
        counters: &NodeCounters,
        status: http::StatusCode,
        body: &[u8],
    ) {
        let poisoned = is_poisoned_answer(status, body);
        if !poisoned && !status.is_success() {
            return;
        }
        // Read first: nearly every answer changes nothing, and a swap on every push would bounce the cache line.
        if counters.poisoned.load(Ordering::Relaxed) == poisoned
            || counters.poisoned.swap(poisoned, Ordering::Relaxed) == poisoned
        {
            return;
        }
        let labels = NodeLabels { node: node.into() };
        self.inner
            .metrics
            .poisoned
            .get_or_create(&labels)
            .set(i64::from(poisoned));
        if poisoned {
            let answer = String::from_utf8_lossy(&body[..body.len().min(1024)]).to_string();
            tracing::warn!(%node, %answer, "node rejects every push because of groups it already holds (two of them differ only by an empty label value); delete one of them on the node");
        } else {
            tracing::info!(%node, "node accepts pushes again");
        }
    }

    /// A push to `node` timed out, could not connect or lost its connection.
    pub fn record_failure(&self, node: &str, counters: &NodeCounters, error: &str) {
        let failures = counters
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let config = self.inner.config.load().outlier_detection;
        if config.consecutive_failures == 0 || failures < config.consecutive_failures {
            return;
        }
        let healthy: BTreeSet<String> = self
            .inner
            .membership
            .borrow()
            .nodes
            .iter()
            .filter(|n| n.healthy)
            .map(|n| n.node.clone())
            .collect();
        if !healthy.contains(node) {
            return;
        }
        let reason = format!("{failures} pushes in a row failed, the last one: {error}");
        let now = Instant::now();
        let result =
            lock(&self.inner.ejections).eject(node, reason.clone(), &healthy, now, &config);
        match result {
            Ok(duration) => {
                counters.consecutive_failures.store(0, Ordering::Relaxed);
                tracing::warn!(
                    %node,
                    ejection_time = %humantime::format_duration(duration),
                    %reason,
                    "node ejected from the ring: its pushes fail (outlier_detection)"
                );
                let labels = NodeLabels { node: node.into() };
                self.inner.metrics.ejections.get_or_create(&labels).inc();
                self.inner.metrics.ejected.get_or_create(&labels).set(1);
                self.publish(now);
                self.inner.changed.notify_one();
            }
            Err(NotEjected::AlreadyEjected) => {}
            Err(why) => {
                tracing::debug!(%node, ?why, failures, "node's pushes fail, but it stays in the ring");
            }
        }
    }

    fn publish(&self, now: Instant) {
        let ejected = lock(&self.inner.ejections).ejected(now);
        self.inner.ejected_tx.send_if_modified(|current| {
            if **current == ejected {
                return false;
            }
            *current = Arc::new(ejected);
            true
        });
    }

    /// Per-node state for `/-/ring`: every node with counters or an ejection history.
    pub fn status(&self) -> BTreeMap<String, NodeOutlierStatus> {
        let now = Instant::now();
        let ejections = lock(&self.inner.ejections);
        let counters = lock(&self.inner.counters);
        let mut status = BTreeMap::new();
        for (node, counters) in counters.iter() {
            let state = ejections.nodes.get(node).cloned().unwrap_or_default();
            let until = state.ejected_until.filter(|until| *until > now);
            status.insert(
                node.clone(),
                NodeOutlierStatus {
                    ejected: until.is_some(),
                    ejected_for_seconds: until.map(|u| (u - now).as_secs_f64()),
                    times_ejected: state.times_ejected,
                    last_ejection: state
                        .last_ejected_at
                        .map(|t| humantime::format_rfc3339_millis(t).to_string()),
                    last_ejection_reason: state.last_reason,
                    consecutive_failures: counters.consecutive_failures.load(Ordering::Relaxed),
                    pushes_in_flight: counters.in_flight(),
                    poisoned: counters.poisoned.load(Ordering::Relaxed),
                },
            );
        }
        status
    }

    /// Ends ejections when they are over. Runs until shutdown.
    pub fn spawn_expiry(&self, mut shutdown: Shutdown) {
        let detector = self.clone();
        tokio::spawn(async move {
            loop {
                let next = lock(&detector.inner.ejections).next_expiry();
                let sleep = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = sleep => {}
                    _ = detector.inner.changed.notified() => continue,
                    _ = shutdown.recv() => return,
                }
                let now = Instant::now();
                let config = detector.inner.config.load().outlier_detection;
                let returned = {
                    let mut ejections = lock(&detector.inner.ejections);
                    let returned = ejections.expire(now);
                    ejections.forget_settled(now, &config);
                    returned
                };
                for node in returned {
                    tracing::info!(%node, "ejection over: the node is back in the ring while its health check passes");
                    detector
                        .inner
                        .metrics
                        .ejected
                        .get_or_create(&NodeLabels {
                            node: node.as_str().into(),
                        })
                        .set(0);
                }
                detector.publish(now);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OutlierDetectionConfig {
        OutlierDetectionConfig {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(35),
            max_ejected_percent: 50,
        }
    }

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_in_a_row_up_to_the_maximum() {
        let mut ejections = Ejections::default();
        let healthy = nodes(&["a", "b", "c"]);
        let mut now = Instant::now();
        let mut durations = Vec::new();
        for _ in 0..5 {
            let duration = ejections
                .eject("a", "x".into(), &healthy, now, &config())
                .unwrap();
            durations.push(duration.as_secs());
            assert!(ejections.is_ejected("a", now));
            now += duration;
            assert_eq!(ejections.expire(now), vec!["a".to_string()]);
            assert!(!ejections.is_ejected("a", now));
            // Fails again soon after it came back.
            now += Duration::from_secs(1);
        }
        assert_eq!(durations, vec![10, 20, 30, 35, 35]);
    }

    #[test]
    fn the_count_starts_again_after_max_ejection_time_without_an_ejection() {
        let mut ejections = Ejections::default();
        let healthy = nodes(&["a", "b", "c"]);
        let mut now = Instant::now();
        for _ in 0..2 {
            now += ejections
                .eject("a", "x".into(), &healthy, now, &config())
                .unwrap();
            ejections.expire(now);
        }
        now += Duration::from_secs(35);
        let again = ejections
            .eject("a", "x".into(), &healthy, now, &config())
            .unwrap();
        assert_eq!(again, Duration::from_secs(10));
    }

    #[test]
    fn never_more_than_the_allowed_share_and_never_the_last_node() {
        let now = Instant::now();
        let mut ejections = Ejections::default();
        let four = nodes(&["a", "b", "c", "d"]);
        assert!(ejections
            .eject("a", "x".into(), &four, now, &config())
            .is_ok());
        assert!(ejections
            .eject("b", "x".into(), &four, now, &config())
            .is_ok());
        assert_eq!(
            ejections.eject("c", "x".into(), &four, now, &config()),
            Err(NotEjected::TooManyEjected)
        );
        assert_eq!(
            ejections.eject("a", "x".into(), &four, now, &config()),
            Err(NotEjected::AlreadyEjected)
        );
        assert_eq!(ejections.ejected(now), nodes(&["a", "b"]));

        // One node may always be ejected, even below the percentage; the last one never.
        let mut small = Ejections::default();
        let two = nodes(&["a", "b"]);
        let strict = OutlierDetectionConfig {
            max_ejected_percent: 10,
            ..config()
        };
        assert!(small.eject("a", "x".into(), &two, now, &strict).is_ok());
        assert_eq!(
            small.eject("b", "x".into(), &two, now, &config()),
            Err(NotEjected::LastNode)
        );
        let mut single = Ejections::default();
        assert_eq!(
            single.eject("a", "x".into(), &nodes(&["a"]), now, &config()),
            Err(NotEjected::LastNode)
        );
    }

    #[test]
    fn the_next_expiry_is_the_earliest_end() {
        let now = Instant::now();
        let mut ejections = Ejections::default();
        let healthy = nodes(&["a", "b", "c", "d"]);
        ejections
            .eject("a", "x".into(), &healthy, now, &config())
            .unwrap();
        ejections
            .eject(
                "b",
                "x".into(),
                &healthy,
                now + Duration::from_secs(3),
                &config(),
            )
            .unwrap();
        assert_eq!(ejections.next_expiry(), Some(now + Duration::from_secs(10)));
        assert_eq!(
            ejections.expire(now + Duration::from_secs(11)),
            vec!["a".to_string()]
        );
        assert_eq!(ejections.next_expiry(), Some(now + Duration::from_secs(13)));
    }

    #[test]
    fn only_a_400_about_the_nodes_own_push_time_series_means_poisoned() {
        let poisoned = b"pushed metrics are invalid or inconsistent with existing metrics: 2 error(s) occurred:\n\
            * collected metric \"push_time_seconds\" { label:<name:\"job\" value:\"p\" > gauge:<value:0 > } was \
            collected before with the same name and label values";
        let clash = b"pushed metrics are invalid or inconsistent with existing metrics: collected metric \"a\" \
            { gauge:<value:1 > } was collected before with the same name and label values";
        assert!(is_poisoned_answer(http::StatusCode::BAD_REQUEST, poisoned));
        assert!(!is_poisoned_answer(http::StatusCode::BAD_REQUEST, clash));
        assert!(!is_poisoned_answer(http::StatusCode::OK, poisoned));
    }

    #[test]
    fn in_flight_slots_are_bounded_and_released() {
        let counters = Arc::new(NodeCounters::default());
        let first = counters.try_begin(2).unwrap();
        let second = counters.try_begin(2).unwrap();
        assert!(counters.try_begin(2).is_none());
        assert_eq!(counters.in_flight(), 2);
        drop(first);
        let third = counters.try_begin(2);
        assert!(third.is_some());
        drop((second, third));
        assert_eq!(counters.in_flight(), 0);
    }
}
