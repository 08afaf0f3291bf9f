//! I/O for one pass: list every node's groups, then carry out a [`Plan`](super::planner::Plan): all copies
//! first, then all deletes, each with bounded concurrency and retries.
//!
//! Before every request the executor re-checks that the ring is still the one the plan was made for and that
//! the node may be touched (healthy, or draining and listed this pass); a group pushed through this replica
//! during the pass is skipped (see [`move_guard`](crate::move_guard)). A delete only follows a copy that succeeded, so a
//! failure anywhere leaves the group where it was.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{self, StreamExt};
use http::{HeaderValue, Method};

use super::planner::{last_client_push, Action, ListedGroup, NodeListing};
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
    /// Groups left for a later pass: pushed through this replica during the pass, or a node became unusable.
    pub skipped: u64,
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
    pub concurrency: usize,
    pub retries: u32,
    pub request_timeout: Duration,
}

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
        let deletes: Vec<BoxFuture<'_, (&Action, (u64, Step))>> = actions
            .iter()
            .zip(deletable)
            .filter(|(_, ok)| *ok)
            .map(|(action, _)| {
                async move { (action, self.delete_wrong_copies(action).await) }.boxed()
            })
            .collect();
        let deletes = stream::iter(deletes)
            .buffer_unordered(self.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        for (action, (deleted, step)) in deletes {
            match action {
                Action::Move { .. } => outcome.deleted_after_copy += deleted,
                Action::DeleteStale { .. } => outcome.deleted_stale += deleted,
                Action::DropExpired { .. } => outcome.dropped_expired += deleted,
                Action::Expire {
                    key,
                    last_client_push,
                    ..
                } => {
                    if matches!(step, Step::Done) {
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

    /// Deletes the group from every wrong node, in order; returns how many copies were deleted.
    async fn delete_wrong_copies(&self, action: &Action) -> (u64, Step) {
        let key = action.key();
        let path = key.to_push_path();
        let mut deleted = 0;
        for node in action.delete_from() {
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

/// `GET /api/v1/metrics` on `node`, turned into the planner's input.
/// Lists `node`'s groups. Without replication (`factor` 1) bodies are rendered only for groups that `ring` does
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
