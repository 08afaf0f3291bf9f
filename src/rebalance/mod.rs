//! Keeps every group on exactly its owner set (its owner and the next `replication.factor - 1` nodes; one node
//! without replication) when the ring changes or a copy is missing.
//!
//! After every ring change, every membership change that removed a node, and every `rebalance.interval`, the
//! leader replica runs a *pass*: list every healthy node's groups (and those of *draining* nodes: removed from
//! the membership but still answering), [`planner::plan`] the copies and deletes, and
//! [`executor::Executor::execute`] them. Copies go first, deletes after, so a group is never on zero nodes
//! because of a failure; the owner's copy wins when it is at least as new (`push_time_seconds`).
//!
//! A pass that finds something to move first asks [`MoveCoordinator`] to route pushes through this
//! replica's slow path, waits for in-flight pushes, and lists the nodes again, so no push acknowledged through
//! this replica is overwritten by an older copy.
//!
//! - [`planner`]: pure planning, unit- and property-tested.
//! - [`executor`]: listing, copying, deleting (I/O, concurrency limit, retries).
//! - [`guard`]: in-process coordination with the push handler.

pub mod executor;
pub mod planner;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures_util::future::{join_all, BoxFuture, FutureExt};
use serde::Serialize;
use tokio::sync::watch;

use crate::ambiguous::Journal;
use crate::config::Config;
use crate::membership::Membership;
use crate::move_guard::MoveCoordinator;
use crate::pushgateway::HttpClient;
use crate::ring::Algorithm;
use crate::routing::{RingHandle, RoutingTable};
use crate::shutdown::Shutdown;
use crate::telemetry::{Metrics, RebalanceDeleteLabels, RebalanceFailureLabels};
use executor::{Executor, Outcome, Preconditions};
use planner::{ListedPushTimes, NodeListing};

/// Coalesces a burst of ring and membership changes (e.g. several nodes flipping at once) into one pass.
const SETTLE: Duration = Duration::from_millis(300);
/// After a pass that left work behind (a failure, a skipped group, an aborted pass), the next one comes this
/// soon, or at `rebalance.interval` if that is sooner.
const FOLLOW_UP: Duration = Duration::from_secs(5);
/// A draining node that could not be listed this many passes in a row is forgotten.
const DRAINING_LIST_ATTEMPTS: u32 = 3;
/// Listing a node with many groups takes longer than a push; never allow less than this.
const MIN_LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the rest of the gateway sees of the rebalancer: the coordinator that pushes and repairs share with it,
/// and its status for `/-/ring` and the status page. Cheap to clone.
#[derive(Clone)]
pub struct Rebalancer {
    pub coordinator: MoveCoordinator,
    status: Arc<ArcSwap<Status>>,
    /// `status` as JSON (the `rebalance` object of `/-/ring`), published on every change.
    status_json: Arc<watch::Sender<serde_json::Value>>,
}

impl Rebalancer {
    /// A rebalancer that never runs (for tests or wiring without one).
    pub fn idle() -> Rebalancer {
        Rebalancer {
            coordinator: MoveCoordinator::new(),
            status: Arc::new(ArcSwap::from_pointee(Status::default())),
            status_json: Arc::new(watch::channel(json_of(&Status::default())).0),
        }
    }

    /// The `rebalance` object of `/-/ring`, kept current.
    pub fn status_json(&self) -> watch::Receiver<serde_json::Value> {
        self.status_json.subscribe()
    }

    fn store_status(&self, status: Status) {
        self.status_json.send_replace(json_of(&status));
        self.status.store(Arc::new(status));
    }
}

fn json_of(status: &Status) -> serde_json::Value {
    serde_json::to_value(status).unwrap_or_default()
}

/// The rebalancer's state as `/-/ring` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub enabled: bool,
    /// Whether this replica is the one that rebalances.
    pub leader: bool,
    /// Why passes do not run, when they do not.
    pub inactive_reason: Option<String>,
    /// Nodes removed from the membership whose groups are still being drained.
    pub draining: Vec<String>,
    pub last_pass: Option<PassReport>,
}

/// One pass, for `/-/ring` and the log.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PassReport {
    pub started: String,
    pub duration_seconds: f64,
    pub trigger: &'static str,
    pub ring_generation: u64,
    pub nodes_listed: usize,
    pub groups_seen: usize,
    /// Groups not on exactly their owner set when the pass planned.
    pub misplaced: usize,
    /// Groups whose owners (`min(replication.factor, ring nodes)` of them) did not all hold a current copy when
    /// the pass planned, less those the pass copied to every owner.
    pub under_replicated: usize,
    pub moved: u64,
    pub deleted_stale: u64,
    pub dropped_expired: u64,
    /// Groups deleted from every node because no client pushed them for longer than `groups.expire_after`.
    pub expired: u64,
    /// Groups past 90% of their expiry limit.
    pub expiring_soon: usize,
    pub skipped: u64,
    /// Of `skipped`: groups with a copy not deleted because it changed after the pass listed it (a push through
    /// another replica or straight to the node).
    pub changed_since_listing: u64,
    pub failures: u64,
    pub outcome: String,
}

/// What the rebalancer task needs.
pub struct Dependencies {
    pub config: watch::Receiver<Arc<Config>>,
    pub membership: watch::Receiver<Arc<Membership>>,
    pub ring_changes: watch::Receiver<Arc<RoutingTable>>,
    pub ring: RingHandle,
    /// `true` while this replica may rebalance (leader election, or the static `rebalance.enabled` switch).
    pub leader: watch::Receiver<bool>,
    pub client: HttpClient,
    /// Groups with a pending ambiguous-write repair, which passes leave alone.
    pub journal: Journal,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
}

/// Starts the rebalancer task.
pub fn spawn(dependencies: Dependencies) -> Rebalancer {
    let rebalancer = Rebalancer::idle();
    let task = Task {
        rebalancer: rebalancer.clone(),
        deps: dependencies,
        known_nodes: BTreeSet::new(),
        draining: BTreeMap::new(),
        warned_go_compatible: false,
    };
    tokio::spawn(task.run());
    rebalancer
}

struct Task {
    rebalancer: Rebalancer,
    deps: Dependencies,
    /// Every node in the last membership snapshot, healthy or not.
    known_nodes: BTreeSet<String>,
    /// Nodes that left the membership and may still hold groups -> passes in a row they could not be listed.
    draining: BTreeMap<String, u32>,
    warned_go_compatible: bool,
}

impl Task {
    async fn run(mut self) {
        self.note_membership();
        let mut trigger = Some("start");
        let mut next_pass = tokio::time::Instant::now() + SETTLE;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_pass) => {}
                changed = self.deps.ring_changes.changed() => {
                    if changed.is_err() { return; }
                    trigger = Some("ring change");
                    next_pass = tokio::time::Instant::now() + SETTLE;
                    continue;
                }
                changed = self.deps.membership.changed() => {
                    if changed.is_err() { return; }
                    if self.note_membership() {
                        trigger = Some("node removed");
                        next_pass = tokio::time::Instant::now() + SETTLE;
                    }
                    continue;
                }
                changed = self.deps.leader.changed() => {
                    if changed.is_err() { return; }
                    if *self.deps.leader.borrow_and_update() {
                        trigger = Some("became leader");
                        next_pass = tokio::time::Instant::now() + SETTLE;
                    }
                    continue;
                }
                changed = self.deps.config.changed() => {
                    if changed.is_err() { return; }
                    continue;
                }
                _ = self.deps.shutdown.recv() => return,
            }
            let config = self.deps.config.borrow_and_update().rebalance;
            let left_work = self.pass(trigger.take().unwrap_or("interval")).await;
            let wait = if left_work {
                config.interval.min(FOLLOW_UP)
            } else {
                config.interval
            };
            next_pass = tokio::time::Instant::now() + wait;
        }
    }

    /// Updates the known and draining nodes from the current membership; true when a node left it.
    fn note_membership(&mut self) -> bool {
        let membership = self.deps.membership.borrow_and_update().clone();
        let now_known: BTreeSet<String> = membership.nodes.iter().map(|n| n.node.clone()).collect();
        let removed: Vec<String> = self.known_nodes.difference(&now_known).cloned().collect();
        for node in &removed {
            tracing::info!(%node, "node left the membership; draining its groups onto the remaining nodes");
            self.draining.insert(node.clone(), 0);
        }
        // A node that comes back is a member again, not draining.
        self.draining.retain(|node, _| !now_known.contains(node));
        self.known_nodes = now_known;
        self.publish_draining();
        !removed.is_empty()
    }

    fn publish_draining(&self) {
        let mut status = (**self.rebalancer.status.load()).clone();
        status.draining = self.draining.keys().cloned().collect();
        self.rebalancer.store_status(status);
    }

    fn set_status(
        &self,
        leader: bool,
        inactive_reason: Option<String>,
        report: Option<PassReport>,
    ) {
        let mut status = (**self.rebalancer.status.load()).clone();
        status.enabled = self.deps.config.borrow().rebalance.enabled;
        status.leader = leader;
        status.inactive_reason = inactive_reason;
        status.draining = self.draining.keys().cloned().collect();
        if report.is_some() {
            status.last_pass = report;
        }
        self.rebalancer.store_status(status);
    }

    /// Runs one pass if this replica should; returns true when work was left for a follow-up pass.
    async fn pass(&mut self, trigger: &'static str) -> bool {
        let config = self.deps.config.borrow().clone();
        let leader = *self.deps.leader.borrow();
        if !config.rebalance.enabled {
            self.set_status(false, Some("rebalance.enabled is false".into()), None);
            return false;
        }
        if !leader {
            self.set_status(false, Some("another replica is the leader".into()), None);
            return false;
        }
        let table = self.deps.ring.load_full();
        if table.ring.algorithm() == Algorithm::GoCompatible {
            if !self.warned_go_compatible {
                tracing::warn!("rebalancing is off with ring.algorithm go-compatible: that ring hashes the client's request path, which cannot be rebuilt from a group's labels");
                self.warned_go_compatible = true;
            }
            self.set_status(true, Some("ring.algorithm is go-compatible".into()), None);
            return false;
        }
        self.warned_go_compatible = false;

        let started_at = SystemTime::now();
        let started = Instant::now();
        let mut report = PassReport {
            started: humantime::format_rfc3339_millis(started_at).to_string(),
            trigger,
            ring_generation: table.generation,
            ..PassReport::default()
        };
        let list_timeout = config.proxy.upstream_timeout.max(MIN_LIST_TIMEOUT);
        let nodes = self.nodes_to_list(&table);
        let mut listed = self.list(&nodes, &table, list_timeout, &mut report).await;
        let (mut plan, mut expiring_soon, _) =
            plan_pass(std::mem::take(&mut listed.listings), &table, &config);
        let mut awaiting_repair = self.leave_pending_repairs(&mut plan);
        let mut outcome = Outcome::default();
        let mut drain_error = None;
        if !plan.actions.is_empty() {
            // Something moves: make pushes through this replica visible, then plan again from fresh listings.
            let max_wait = config.proxy.upstream_timeout * 2 + Duration::from_secs(1);
            match self.rebalancer.coordinator.begin_pass(max_wait).await {
                Ok(()) => {
                    listed = self.list(&nodes, &table, list_timeout, &mut report).await;
                    let mut listed_push_times;
                    (plan, expiring_soon, listed_push_times) =
                        plan_pass(std::mem::take(&mut listed.listings), &table, &config);
                    awaiting_repair = self.leave_pending_repairs(&mut plan);
                    listed_push_times.retain_deletes(&plan.actions);
                    let preconditions = PassPreconditions {
                        ring: &self.deps.ring,
                        generation: table.generation,
                        membership: &self.deps.membership,
                        draining: &listed.draining_listed(&nodes),
                    };
                    let executor = Executor {
                        client: &self.deps.client,
                        coordinator: &self.rebalancer.coordinator,
                        preconditions: &preconditions,
                        listed: &listed_push_times,
                        list_timeout,
                        concurrency: config.rebalance.concurrency,
                        retries: config.rebalance.retries,
                        request_timeout: config.proxy.upstream_timeout,
                    };
                    outcome = executor.execute(&plan.actions).await;
                    self.rebalancer.coordinator.end_pass();
                }
                Err(error) => drain_error = Some(error.to_string()),
            }
        }
        report.groups_seen = plan.groups_seen;
        report.misplaced = plan.actions.len() + plan.owner_not_listed;
        report.moved = outcome.copied;
        report.under_replicated = plan
            .under_replicated
            .saturating_sub(outcome.groups_copied_everywhere as usize);
        report.deleted_stale = outcome.deleted_stale;
        report.dropped_expired = outcome.dropped_expired;
        report.expired = outcome.expired;
        report.expiring_soon = expiring_soon;
        report.skipped = outcome.skipped + plan.owner_not_listed as u64 + awaiting_repair;
        report.changed_since_listing = outcome.changed_since_listing;
        report.failures +=
            outcome.copy_failures + outcome.delete_failures + outcome.relist_failures;
        report.outcome = match (&drain_error, outcome.aborted) {
            (Some(error), _) => format!("not started: {error}"),
            (None, true) => "aborted: the ring changed during the pass".to_string(),
            (None, false) => "completed".to_string(),
        };
        report.duration_seconds = started.elapsed().as_secs_f64();
        self.record(&report, &outcome);
        self.forget_drained(&listed.group_counts);
        let left_work = report.failures > 0
            || report.skipped > 0
            || outcome.aborted
            || drain_error.is_some()
            || !self.draining.is_empty();
        tracing::info!(
            trigger,
            generation = report.ring_generation,
            nodes = report.nodes_listed,
            groups = report.groups_seen,
            misplaced = report.misplaced,
            under_replicated = report.under_replicated,
            moved = report.moved,
            deleted_stale = report.deleted_stale,
            dropped_expired = report.dropped_expired,
            expired = report.expired,
            skipped = report.skipped,
            changed_since_listing = report.changed_since_listing,
            failures = report.failures,
            duration_ms = (report.duration_seconds * 1000.0) as u64,
            outcome = %report.outcome,
            "rebalance pass"
        );
        self.set_status(true, None, Some(report));
        left_work
    }

    /// Leaves groups with a pending ambiguous-write repair alone: which copy is right is known only to the
    /// journal, not to `push_time_seconds` (a late write looks newest). Returns how many were left.
    fn leave_pending_repairs(&self, plan: &mut planner::Plan) -> u64 {
        let journal = &self.deps.journal;
        if journal.is_empty() {
            return 0;
        }
        let before = plan.actions.len();
        plan.actions
            .retain(|action| journal.version(&action.key().ring_key()).is_none());
        (before - plan.actions.len()) as u64
    }

    fn nodes_to_list(&self, table: &RoutingTable) -> PassNodes {
        PassNodes {
            ring: table.ring.nodes().to_vec(),
            draining: self.draining.keys().cloned().collect(),
        }
    }

    /// Lists every ring node and draining node concurrently; failures are logged and counted.
    async fn list(
        &self,
        nodes: &PassNodes,
        table: &Arc<RoutingTable>,
        timeout: Duration,
        report: &mut PassReport,
    ) -> Listed {
        let all: Vec<&String> = nodes.ring.iter().chain(&nodes.draining).collect();
        let factor = self.deps.config.borrow().replication_factor;
        let requests: Vec<BoxFuture<'_, _>> = all
            .iter()
            .map(|node| {
                executor::list_node(&self.deps.client, node, timeout, table.clone(), factor).boxed()
            })
            .collect();
        let results = join_all(requests).await;
        let mut listings = Vec::new();
        let mut group_counts = BTreeMap::new();
        report.nodes_listed = 0;
        for (node, result) in all.into_iter().zip(results) {
            match result {
                Ok(listing) => {
                    report.nodes_listed += 1;
                    group_counts.insert(node.clone(), Some(listing.groups.len()));
                    listings.push(listing);
                }
                Err(error) => {
                    let draining = nodes.draining.contains(node);
                    if draining {
                        tracing::info!(%node, %error, "draining node cannot be listed; it may already be gone");
                    } else {
                        tracing::warn!(%node, %error, "cannot list a node's groups; its groups stay as they are this pass");
                    }
                    group_counts.insert(node.clone(), None);
                    report.failures += 1;
                    self.deps
                        .metrics
                        .rebalance_failures
                        .get_or_create(&RebalanceFailureLabels { operation: "list" })
                        .inc();
                }
            }
        }
        Listed {
            listings,
            group_counts,
        }
    }

    fn record(&self, report: &PassReport, outcome: &Outcome) {
        let metrics = &self.deps.metrics;
        metrics.groups_expired.inc_by(outcome.expired);
        metrics.groups_expiring.set(report.expiring_soon as i64);
        metrics.rebalance_passes.inc();
        metrics.rebalance_groups_moved.inc_by(outcome.copied);
        metrics
            .groups_under_replicated
            .set(report.under_replicated as i64);
        for (reason, count) in [
            ("moved", outcome.deleted_after_copy),
            ("stale", outcome.deleted_stale),
            ("expired", outcome.dropped_expired),
        ] {
            metrics
                .rebalance_copies_deleted
                .get_or_create(&RebalanceDeleteLabels { reason })
                .inc_by(count);
        }
        metrics
            .rebalance_deletes_skipped_changed
            .inc_by(outcome.changed_since_listing);
        for (operation, count) in [
            ("list", outcome.relist_failures),
            ("copy", outcome.copy_failures),
            ("delete", outcome.delete_failures),
        ] {
            metrics
                .rebalance_failures
                .get_or_create(&RebalanceFailureLabels { operation })
                .inc_by(count);
        }
        metrics
            .rebalance_last_pass_seconds
            .set(report.duration_seconds);
        metrics
            .rebalance_last_pass_timestamp
            .set(unix_seconds(SystemTime::now()));
    }

    /// A draining node that was empty when listed is done once nothing failed; one that could not be listed
    /// several passes in a row is forgotten.
    fn forget_drained(&mut self, group_counts: &BTreeMap<String, Option<usize>>) {
        let listed = group_counts;
        let mut forgotten = Vec::new();
        for (node, unreachable_passes) in self.draining.iter_mut() {
            match listed.get(node) {
                Some(Some(0)) => forgotten.push((node.clone(), "drained: it holds no groups")),
                Some(Some(_)) => *unreachable_passes = 0,
                Some(None) => {
                    *unreachable_passes += 1;
                    if *unreachable_passes >= DRAINING_LIST_ATTEMPTS {
                        forgotten
                            .push((node.clone(), "unreachable; its groups could not be drained"));
                    }
                }
                None => {}
            }
        }
        for (node, why) in forgotten {
            tracing::info!(%node, why, "no longer draining node");
            self.draining.remove(&node);
        }
    }
}

/// Expired groups first (taken out of the listings, so they are not moved), then the moves; the expiry deletes
/// join the plan's actions. Also returns the push time of every listed copy, for the executor's check before it
/// deletes.
fn plan_pass(
    mut listings: Vec<NodeListing>,
    table: &RoutingTable,
    config: &Config,
) -> (planner::Plan, usize, ListedPushTimes) {
    let now = unix_seconds(SystemTime::now());
    let push_times = ListedPushTimes::of_listings(&listings);
    let expiry = planner::expire(&mut listings, now, |key| {
        config.groups.expire_after(key.job())
    });
    let mut plan = planner::plan(
        listings,
        &table.ring,
        config.replication_factor,
        now,
        config.rebalance.max_age,
    );
    plan.actions.extend(expiry.actions);
    (plan, expiry.expiring_soon, push_times)
}

/// The nodes one pass lists.
struct PassNodes {
    ring: Vec<String>,
    draining: Vec<String>,
}

/// What listing found: the planner's input, and per node the number of groups (`None`: listing failed).
struct Listed {
    listings: Vec<NodeListing>,
    group_counts: BTreeMap<String, Option<usize>>,
}

impl Listed {
    /// Draining nodes whose listing succeeded: the only draining nodes the executor may touch.
    fn draining_listed(&self, nodes: &PassNodes) -> BTreeSet<String> {
        nodes
            .draining
            .iter()
            .filter(|node| matches!(self.group_counts.get(*node), Some(Some(_))))
            .cloned()
            .collect()
    }
}

struct PassPreconditions<'a> {
    ring: &'a RingHandle,
    generation: u64,
    membership: &'a watch::Receiver<Arc<Membership>>,
    draining: &'a BTreeSet<String>,
}

impl Preconditions for PassPreconditions<'_> {
    fn ring_unchanged(&self) -> bool {
        self.ring.load().generation == self.generation
    }

    fn node_usable(&self, node: &str) -> bool {
        let membership = self.membership.borrow();
        match membership.nodes.iter().find(|status| status.node == node) {
            Some(status) => status.healthy,
            None => self.draining.contains(node),
        }
    }
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
