//! I/O for one pass: list every node's groups, then carry out a [`Plan`](super::planner::Plan): all copies
//! first, then all deletes, each with bounded concurrency and retries.
//!
//! Before every request the executor re-checks that the ring is still the one the plan was made for and that
//! the node may be touched (healthy, or draining and listed this pass); a group pushed through this replica
//! during the pass is skipped (see [`move_guard`](crate::move_guard)). A delete only follows a copy that succeeded, so a
//! failure anywhere leaves the group where it was. Between the copies and the deletes, every node that is to lose
//! a copy is listed once more, and a copy whose `push_time_seconds` changed since the pass listed it (a push
//! through another gateway replica, or straight to the node) is left for the next pass instead of deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{self, StreamExt};
use http::{HeaderValue, Method};

use super::planner::{last_client_push, Action, ListedGroup, ListedPushTimes, NodeListing};
use crate::exposition::pushgateway_json::parse_api_metrics_with;
use crate::exposition::pushgateway_json::MovedMarker;
use crate::grouping::GroupingKey;
use crate::move_guard::MoveCoordinator;
use crate::pushgateway::{api, HttpClient, NodeError, RequestError};
use crate::ring::Ring;
use crate::routing::RoutingTable;

/// First retry delay; doubled per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why a request to a node did not do what the rebalancer wanted.
#[derive(Debug, thiserror::Error)]
pub enum NodeRequestError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("GET {node}/api/v1/metrics: {message}")]
    Listing { node: String, message: String },
}

impl NodeRequestError {
    /// `method path` on `node` failed with `error`.
    fn new(method: Method, node: &str, path: &str, error: NodeError) -> NodeRequestError {
        RequestError::new(method, node, path, error).into()
    }

    /// Network errors and 5xx may pass; a 4xx (e.g. a copy inconsistent with the owner's other metrics) won't.
    fn is_transient(&self) -> bool {
        match self {
            NodeRequestError::Request(error) => {
                error.status().is_none_or(|status| status.is_server_error())
            }
            NodeRequestError::Listing { .. } => false,
        }
    }
}

/// What the executor asks the rebalancer before each request.
pub trait Preconditions: Sync {
    /// False once the ring differs from the one the plan was made for: the rest of the pass is abandoned.
    fn ring_unchanged(&self) -> bool;
    /// False for a node failing its health check (or no longer known and not draining).
    fn node_usable(&self, node: &str) -> bool;
}

/// Per-pass counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Copies written to an owner (one per owner: a group copied to two owners counts twice).
    pub copied: u64,
    /// `Move`s whose copies to every owner succeeded.
    pub groups_copied_everywhere: u64,
    /// Copies deleted from a wrong node after the group was copied to its owner.
    pub deleted_after_copy: u64,
    /// Copies deleted from a wrong node because the owner already had one at least as new.
    pub deleted_stale: u64,
    /// Copies deleted from a wrong node because they were older than `max_age`.
    pub dropped_expired: u64,
    /// Groups deleted from every node because they expired (`groups.expire_after`).
    pub expired: u64,
    /// Groups left for a later pass: pushed through this replica during the pass, a node became unusable or
    /// could not be listed again before the deletes, or a copy to delete changed since the pass listed it (also
    /// counted in `changed_since_listing`).
    pub skipped: u64,
    /// Groups with a copy not deleted because its node's second listing showed it pushed since the first (or
    /// gone).
    pub changed_since_listing: u64,
    /// Nodes that could not be listed again before their deletes (their deletes were left for the next pass).
    pub relist_failures: u64,
    pub copy_failures: u64,
    pub delete_failures: u64,
    /// The ring changed mid-pass; the remaining actions were not attempted.
    pub aborted: bool,
}

/// How requests are made; one per pass.
pub struct Executor<'a> {
    pub client: &'a HttpClient,
    pub coordinator: &'a MoveCoordinator,
    pub preconditions: &'a dyn Preconditions,
    /// The push times the plan's listing saw on each copy it deletes.
    pub listed: &'a ListedPushTimes,
    /// Timeout of the second listing of the nodes that lose copies.
    pub list_timeout: Duration,
    pub concurrency: usize,
    pub retries: u32,
    pub request_timeout: Duration,
}

/// A group's push time on one node, by ring key, from a listing.
type PushTimes = HashMap<Vec<u8>, f64>;

/// One action's deletes: the action, whether every copy it deletes was still as listed, and the deletes' result.
type DeleteResult<'a> = (&'a Action, bool, (u64, Step));

enum Step {
    Done,
    Skipped,
    Failed,
    Aborted,
}

impl Executor<'_> {
    /// Copies, then deletes. Deletes run only for groups whose copy succeeded (or needed none).
    pub async fn execute(&self, actions: &[Action]) -> Outcome {
        let mut outcome = Outcome::default();
        // Futures are boxed before they go into the stream: with plain closures the compiler cannot prove the
        // spawned pass future `Send` (rust-lang/rust#102211).
        let copies: Vec<BoxFuture<'_, (usize, u64, Step)>> = actions
            .iter()
            .enumerate()
            .map(|(index, action)| {
                async move {
                    let (copied, step) = self.copy(action).await;
                    (index, copied, step)
                }
                .boxed()
            })
            .collect();
        let copies = stream::iter(copies)
            .buffer_unordered(self.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        let mut deletable = vec![false; actions.len()];
        for (index, copied, step) in copies {
            outcome.copied += copied;
            match step {
                Step::Done => {
                    deletable[index] = true;
                    if matches!(actions[index], Action::Move { .. }) {
                        outcome.groups_copied_everywhere += 1;
                    }
                }
                Step::Skipped => outcome.skipped += 1,
                Step::Failed => outcome.copy_failures += 1,
                Step::Aborted => outcome.aborted = true,
            }
        }
        if outcome.aborted {
            return outcome;
        }
        if !self.preconditions.ring_unchanged() {
            outcome.aborted = true;
            return outcome;
        }
        let deletable: Vec<&Action> = actions
            .iter()
            .zip(deletable)
            .filter_map(|(action, ok)| ok.then_some(action))
            .collect();
        let losing_copies: BTreeSet<&str> = deletable
            .iter()
            .flat_map(|action| action.delete_from().iter().map(String::as_str))
            .collect();
        let relisted = self.relist(losing_copies, &mut outcome).await;
        let mut planned_deletes: Vec<(&Action, Vec<&str>)> = Vec::new();
        for action in deletable {
            let ring_key = action.key().ring_key();
            let mut still_as_listed = Vec::new();
            let mut changed = Vec::new();
            let mut not_relisted = false;
            for node in action.delete_from() {
                match relisted.get(node.as_str()) {
                    Some(Some(times)) => {
                        let now = times.get(&ring_key).copied();
                        if self.listed.unchanged(node, &ring_key, now) {
                            still_as_listed.push(node.as_str());
                        } else {
                            changed.push(node.as_str());
                        }
                    }
                    _ => not_relisted = true,
                }
            }
            if !changed.is_empty() {
                tracing::debug!(grouping_key = %action.key(), nodes = ?changed, "copy changed since the pass listed it (pushed through another replica or straight to the node); not deleting it this pass");
                outcome.changed_since_listing += 1;
            }
            if !changed.is_empty() || not_relisted {
                outcome.skipped += 1;
            }
            planned_deletes.push((action, still_as_listed));
        }
        let deletes: Vec<BoxFuture<'_, DeleteResult<'_>>> = planned_deletes
            .into_iter()
            .map(|(action, nodes)| {
                async move {
                    let whole = nodes.len() == action.delete_from().len();
                    (
                        action,
                        whole,
                        self.delete_wrong_copies(action, &nodes).await,
                    )
                }
                .boxed()
            })
            .collect();
        let deletes = stream::iter(deletes)
            .buffer_unordered(self.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        for (action, whole, (deleted, step)) in deletes {
            match action {
                Action::Move { .. } => outcome.deleted_after_copy += deleted,
                Action::DeleteStale { .. } => outcome.deleted_stale += deleted,
                Action::DropExpired { .. } => outcome.dropped_expired += deleted,
                Action::Expire {
                    key,
                    last_client_push,
                    ..
                } => {
                    if whole && matches!(step, Step::Done) {
                        outcome.expired += 1;
                        tracing::debug!(grouping_key = %key, last_client_push, "group expired: deleted from every node");
                    }
                }
            }
            match step {
                Step::Done => {}
                Step::Skipped => outcome.skipped += 1,
                Step::Failed => outcome.delete_failures += 1,
                Step::Aborted => outcome.aborted = true,
            }
        }
        outcome
    }

    /// Copies the group to every owner in `to`, one after the other; `Done` only when every copy succeeded
    /// (the deletes wait for that), and counts each copy made.
    async fn copy(&self, action: &Action) -> (u64, Step) {
        let Action::Move {
            key,
            to,
            source,
            source_push_time,
            last_client_push,
            body,
            ..
        } = action
        else {
            return (0, Step::Done);
        };
        // The copy is stamped with the time of the copy; the marker keeps the client's last push for expiry.
        let marker = MovedMarker {
            last_push: *last_client_push,
            moved_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        };
        // A group listed with an empty-valued label (pushed before the gateway canonicalised, or straight to a
        // node) is copied as its canonical form: an owner holding both forms would reject every push.
        let path = key.clone().canonical().to_push_path();
        let body = Bytes::from(format!("{body}{}", marker.render()));
        let mut copied = 0;
        for owner in to {
            let step = self
                .with_retries(key, owner, || {
                    self.request(owner, &path, Some(body.clone()))
                })
                .await;
            match step {
                Step::Done => {
                    copied += 1;
                    tracing::debug!(grouping_key = %key, from = %source, to = %owner, source_push_time, "group copied to an owner");
                }
                other => return (copied, other),
            }
        }
        (copied, Step::Done)
    }

    /// Lists `nodes` (those about to lose copies) once more (`relist_failures` counts those that fail): node ->
    /// ring key -> `push_time_seconds`, `None` for a node that could not be listed.
    async fn relist<'n>(
        &self,
        nodes: BTreeSet<&'n str>,
        outcome: &mut Outcome,
    ) -> HashMap<&'n str, Option<PushTimes>> {
        let listings: Vec<BoxFuture<'_, (&'n str, Result<_, NodeRequestError>)>> = nodes
            .into_iter()
            .map(|node| {
                async move {
                    let times = list_push_times(self.client, node, self.list_timeout).await;
                    (node, times)
                }
                .boxed()
            })
            .collect();
        let listings = stream::iter(listings)
            .buffer_unordered(self.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        let mut relisted = HashMap::new();
        for (node, result) in listings {
            match result {
                Ok(times) => {
                    relisted.insert(node, Some(times));
                }
                Err(error) => {
                    tracing::warn!(%node, %error, "cannot list a node again before deleting from it; its deletes wait for the next pass");
                    outcome.relist_failures += 1;
                    relisted.insert(node, None);
                }
            }
        }
        relisted
    }

    /// Deletes the group from `nodes` (wrong nodes of `action`), in order; returns how many copies were deleted.
    async fn delete_wrong_copies(&self, action: &Action, nodes: &[&str]) -> (u64, Step) {
        let key = action.key();
        let path = key.to_push_path();
        let mut deleted = 0;
        for &node in nodes {
            let step = self
                .with_retries(key, node, || self.request(node, &path, None))
                .await;
            match step {
                Step::Done => {
                    deleted += 1;
                    let reason = match action {
                        Action::Move { .. } => "copied to its owners",
                        Action::DeleteStale { .. } => "every owner holds a copy at least as new",
                        Action::DropExpired { .. } => "older than rebalance.max_age",
                        Action::Expire { .. } => {
                            "expired: not pushed for longer than groups.expire_after"
                        }
                    };
                    tracing::debug!(grouping_key = %key, %node, reason, "group deleted from a node");
                }
                other => return (deleted, other),
            }
        }
        (deleted, Step::Done)
    }

    /// Runs `attempt` until it succeeds, fails for good, or `retries` extra attempts are spent. Each attempt
    /// re-checks the ring and the node and holds the group's move lock only while it runs, so a push of the
    /// group waits at most one request.
    async fn with_retries<F, Fut>(&self, key: &GroupingKey, node: &str, mut attempt: F) -> Step
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), NodeRequestError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempts_left = self.retries;
        loop {
            if !self.preconditions.ring_unchanged() {
                return Step::Aborted;
            }
            if !self.preconditions.node_usable(node) {
                tracing::debug!(grouping_key = %key, %node, "node is not healthy; leaving the group for a later pass");
                return Step::Skipped;
            }
            let Some(lock) = self.coordinator.lock_group(key.ring_key()) else {
                tracing::debug!(grouping_key = %key, "group was pushed during the pass; re-planning it next pass");
                return Step::Skipped;
            };
            let result = attempt().await;
            drop(lock);
            match result {
                Ok(()) => return Step::Done,
                Err(error) if error.is_transient() && attempts_left > 0 => {
                    tracing::debug!(grouping_key = %key, %error, retry_in = ?backoff, "rebalance request failed; retrying");
                    attempts_left -= 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(error) => {
                    tracing::warn!(grouping_key = %key, %error, "rebalance request failed; the group stays where it is");
                    return Step::Failed;
                }
            }
        }
    }

    /// `PUT` of `body` (`Some`) or `DELETE` (`None`) of the group at push path `path` on `node`.
    async fn request(
        &self,
        node: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(), NodeRequestError> {
        let (method, result) = match body {
            Some(body) => {
                let write = api::GroupWrite {
                    method: Method::PUT,
                    path_and_query: path,
                    content_type: Some(HeaderValue::from_static(api::TEXT_FORMAT)),
                    content_encoding: None,
                    body,
                };
                let result = api::write_group(self.client, node, write, self.request_timeout).await;
                (Method::PUT, result)
            }
            None => {
                let result = api::delete_group(self.client, node, path, self.request_timeout).await;
                (Method::DELETE, result)
            }
        };
        result.map_err(|error| NodeRequestError::new(method, node, path, error))
    }
}

/// Lists `node`'s groups (`GET /api/v1/metrics`), turned into the planner's input. Without replication (`factor` 1) bodies are rendered only for groups that `ring` does
/// not place on `node` (the only ones a pass may copy from it), so a pass does not hold a second copy of every
/// group it listed; with replication an owner's copy may be the source for another owner, and the bodies tell
/// two copies of one push apart from a stale one.
pub async fn list_node(
    client: &HttpClient,
    node: &str,
    timeout: Duration,
    ring: Arc<RoutingTable>,
    factor: usize,
) -> Result<NodeListing, NodeRequestError> {
    let body = api::list_groups(client, node, timeout)
        .await
        .map_err(|error| {
            NodeRequestError::new(Method::GET, node, api::Read::Groups.path(), error)
        })?;
    let owned_node = node.to_string();
    // Parsing thousands of groups is CPU work; keep it off the async workers.
    tokio::task::spawn_blocking(move || listing_from_json(&owned_node, &body, &ring.ring, factor))
        .await
        .map_err(|e| NodeRequestError::Listing {
            node: node.to_string(),
            message: format!("parser task failed: {e}"),
        })?
}

/// `node`'s groups' `push_time_seconds` by ring key (`GET /api/v1/metrics`, no bodies rendered).
pub async fn list_push_times(
    client: &HttpClient,
    node: &str,
    timeout: Duration,
) -> Result<PushTimes, NodeRequestError> {
    let body = api::list_groups(client, node, timeout)
        .await
        .map_err(|error| {
            NodeRequestError::new(Method::GET, node, api::Read::Groups.path(), error)
        })?;
    let owned_node = node.to_string();
    tokio::task::spawn_blocking(move || {
        let groups =
            parse_api_metrics_with(&body, |_| false).map_err(|e| NodeRequestError::Listing {
                node: owned_node.clone(),
                message: e.to_string(),
            })?;
        Ok(groups
            .into_iter()
            .filter_map(|group| {
                let key = GroupingKey::from_labels(group.labels).ok()?;
                Some((key.ring_key(), group.push_time_seconds.unwrap_or(0.0)))
            })
            .collect())
    })
    .await
    .map_err(|e| NodeRequestError::Listing {
        node: node.to_string(),
        message: format!("parser task failed: {e}"),
    })?
}

fn listing_from_json(
    node: &str,
    json: &[u8],
    ring: &Ring,
    factor: usize,
) -> Result<NodeListing, NodeRequestError> {
    let owned_here = |labels: &BTreeMap<String, String>| {
        factor == 1
            && GroupingKey::from_labels(labels.clone())
                .is_ok_and(|key| ring.owner(&key.ring_key()) == Some(node))
    };
    let groups = parse_api_metrics_with(json, |labels| !owned_here(labels)).map_err(|e| {
        NodeRequestError::Listing {
            node: node.to_string(),
            message: e.to_string(),
        }
    })?;
    let mut listed = Vec::with_capacity(groups.len());
    for group in groups {
        match GroupingKey::from_labels(group.labels.clone()) {
            Ok(key) => listed.push(ListedGroup {
                key,
                push_time_seconds: group.push_time_seconds.unwrap_or(0.0),
                last_client_push: last_client_push(
                    group.push_time_seconds.unwrap_or(0.0),
                    group.moved,
                ),
                body: group.body,
            }),
            // The Pushgateway accepted it, so this should not happen; never move what we cannot address.
            Err(error) => {
                tracing::warn!(%node, labels = ?group.labels, %error, "group has no valid grouping key; leaving it alone")
            }
        }
    }
    Ok(NodeListing {
        node: node.to_string(),
        groups: listed,
    })
}
