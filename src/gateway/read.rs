//! The Pushgateway read API, fanned out to every healthy node at once and combined, so the sharded
//! Pushgateways read like one:
//!
//! - `GET /metrics`: the nodes' pushed groups merged into one text exposition (0.0.4). Each node's own process
//!   metrics (`go_*`, `process_*`, `pushgateway_*`, `promhttp_*`) are left out: every node has them, they would
//!   only collide, and they describe one process (see [`crate::exposition::merge_pushed`]). Clashes are resolved
//!   the way a lone Pushgateway does, logged once, and counted.
//! - `GET /api/v1/metrics`: the union of the nodes' groups, each annotated with its node under [`NODE_KEY`].
//! - With `replication.factor` above 1 both show each group once, from the node [`exposition::replicas`] picks
//!   (the first of its owner set that answered and holds it); `/metrics` then reads the nodes' `/api/v1/metrics`,
//!   which names each group's grouping key.
//! - `GET /api/v1/status`: the gateway's own status and each node's.
//! - `PUT /api/v1/admin/wipe`: forwarded to every known node, only with `--web.enable-admin-api`.
//!
//! Every node gets `read.timeout`; a node that fails is left out of the answer, counted in
//! `dynamic_sharding_read_node_failures_total`, and named in the answer (the `X-Dynamic-Sharding-Missing-Nodes`
//! header, or `warnings` in JSON). Until the same read succeeds again it is also reported: a `warn` line with the
//! node's own error text when it starts failing, `dynamic_sharding_read_node_failing` at 1, and an entry in
//! `/-/ring` `read_failures`. A Pushgateway whose `/metrics` answers 500 still passes its health check
//! (prometheus/pushgateway#544), so a read is where such a node shows.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::State;
use bytes::Bytes;
use futures_util::future::join_all;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Extensions, Method, Response, StatusCode};
use serde_json::{json, Value};

use super::{forbidden, json, text, AppState};
use crate::authorization::Action;
use crate::exposition::pushgateway_json::parse_api_metrics_exposed;
use crate::exposition::replicas::GroupCopy;
use crate::exposition::{self, Conflict};
use crate::grouping::GroupingKey;
use crate::pushgateway::{api, NodeError};
use crate::ring::{Algorithm, Ring};
use crate::telemetry::{MergeConflictLabels, ReadFailureLabels, ReadPathLabels};

/// The key added to each group of `GET /api/v1/metrics` naming the node that holds it. Group objects use metric
/// family names as keys, and a metric name cannot contain `@`, so this key never hides a family.
pub const NODE_KEY: &str = "@node";
/// Response header of `GET /metrics` listing the nodes left out because they failed (comma-separated).
pub const MISSING_NODES_HEADER: &str = "x-dynamic-sharding-missing-nodes";
/// The exposition format the gateway serves and asks the nodes for.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How many distinct merge conflicts are remembered as already logged; beyond it the memory starts afresh,
/// which at worst logs a known conflict once more.
const LOGGED_CONFLICTS_LIMIT: usize = 4096;
/// How much of a failing node's answer is kept for the log and `/-/ring`: enough for a Pushgateway's own
/// explanation (e.g. which series collide), bounded because the answer is the node's, not ours.
const ERROR_TEXT_LIMIT: usize = 1024;

/// Read-side state shared by handlers: which merge conflicts were already logged at `warn`, and which nodes'
/// last read failed. A conflict between nodes persists until someone re-pushes, and Prometheus scrapes every
/// few seconds; logging it on every scrape would bury everything else, so it is logged at `warn` once and at
/// `debug` afterwards. A failing node likewise: `warn` when it starts failing (or fails differently), `info`
/// when it answers again.
#[derive(Clone, Default)]
pub struct ReadSide {
    logged_conflicts: Arc<Mutex<HashSet<u64>>>,
    failing: Arc<Mutex<BTreeMap<(String, &'static str), FailingRead>>>,
}

/// A node whose last fanned-out read of one path failed.
#[derive(Clone, Debug)]
struct FailingRead {
    kind: &'static str,
    error: String,
    since: SystemTime,
    last: SystemTime,
    /// Failed reads in a row.
    failures: u64,
}

/// Whether a failure is news worth a `warn` line.
#[derive(Debug, PartialEq, Eq)]
enum FailureNews {
    /// The node's previous read of this path succeeded (or it was never read).
    Started,
    /// It was failing already, for another reason (e.g. a timeout became a 500).
    Changed,
    /// The same failure again.
    Repeated,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a handler panicked while holding it; the data is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ReadSide {
    /// Remembers that `node` failed a read of `path`.
    fn record_failure(&self, node: &str, path: &'static str, failure: &NodeError) -> FailureNews {
        let now = SystemTime::now();
        let kind = failure.kind();
        let mut failing = lock(&self.failing);
        match failing.get_mut(&(node.to_owned(), path)) {
            Some(entry) => {
                let news = if entry.kind == kind {
                    FailureNews::Repeated
                } else {
                    FailureNews::Changed
                };
                entry.kind = kind;
                entry.error = failure.to_string();
                entry.last = now;
                entry.failures += 1;
                news
            }
            None => {
                failing.insert(
                    (node.to_owned(), path),
                    FailingRead {
                        kind,
                        error: failure.to_string(),
                        since: now,
                        last: now,
                        failures: 1,
                    },
                );
                FailureNews::Started
            }
        }
    }

    /// Forgets a failure of `node` reading `path`; returns it when there was one.
    fn record_success(&self, node: &str, path: &'static str) -> Option<FailingRead> {
        let mut failing = lock(&self.failing);
        if failing.is_empty() {
            return None;
        }
        failing.remove(&(node.to_owned(), path))
    }

    /// The nodes whose last read failed, for `/-/ring`: one entry per node and path, sorted.
    pub fn failing_reads_json(&self) -> Value {
        let failing = lock(&self.failing);
        let entries: Vec<Value> = failing
            .iter()
            .map(|((node, path), entry)| {
                json!({
                    "node": node,
                    "path": path,
                    "kind": entry.kind,
                    "error": entry.error,
                    "since": humantime::format_rfc3339_millis(entry.since).to_string(),
                    "last_failure": humantime::format_rfc3339_millis(entry.last).to_string(),
                    "failures_in_a_row": entry.failures,
                })
            })
            .collect();
        Value::Array(entries)
    }

    /// Whether `conflict` is logged for the first time (and remembers it).
    fn first_time(&self, conflict: &str) -> bool {
        let fingerprint = xxhash_rust::xxh3::xxh3_64(conflict.as_bytes());
        let mut logged = lock(&self.logged_conflicts);
        if logged.len() >= LOGGED_CONFLICTS_LIMIT {
            logged.clear();
        }
        logged.insert(fingerprint)
    }
}

/// One node's part of a fan-out.
pub(super) struct NodeAnswer {
    pub(super) node: String,
    pub(super) result: Result<Bytes, NodeError>,
}

/// Sends `method path` to every node in `nodes` concurrently, each within `timeout`. A 2xx answer's body is the
/// node's result; anything else is a [`NodeError`], logged and counted here, so callers only combine.
pub(super) async fn fan_out(
    state: &AppState,
    nodes: &[String],
    read: api::Read,
    timeout: Duration,
) -> Vec<NodeAnswer> {
    let path = read.path();
    let requests = nodes.iter().map(|node| async move {
        let result = request_node(state, node, read, timeout).await;
        NodeAnswer {
            node: node.clone(),
            result,
        }
    });
    let answers = join_all(requests).await;
    for answer in &answers {
        if let Err(failure) = &answer.result {
            note_failure(state, &answer.node, path, failure);
        }
    }
    answers
}

/// `read` on `node`; a failing node's explanation is kept short (see [`ERROR_TEXT_LIMIT`]).
async fn request_node(
    state: &AppState,
    node: &str,
    read: api::Read,
    timeout: Duration,
) -> Result<Bytes, NodeError> {
    api::read(&state.client, node, read, timeout)
        .await
        .map_err(|error| match error {
            NodeError::Status { status, body } => NodeError::Status {
                status,
                body: body.chars().take(ERROR_TEXT_LIMIT).collect(),
            },
            error => error,
        })
}

pub(super) fn note_failure(state: &AppState, node: &str, path: &'static str, failure: &NodeError) {
    match state.read_side.record_failure(node, path, failure) {
        FailureNews::Started => {
            tracing::warn!(%node, path, error = %failure, "node failed a fanned-out read and is left out of it (shown in /-/ring until it answers again)")
        }
        FailureNews::Changed => {
            tracing::warn!(%node, path, error = %failure, "node still fails fanned-out reads, now for another reason")
        }
        FailureNews::Repeated => {
            tracing::debug!(%node, path, error = %failure, "node left out of a fanned-out read (failing already)")
        }
    }
    let node_label: Arc<str> = Arc::from(node);
    state
        .metrics
        .read_node_failing
        .get_or_create(&ReadPathLabels {
            node: node_label.clone(),
            path,
        })
        .set(1);
    state
        .metrics
        .read_node_failures
        .get_or_create(&ReadFailureLabels {
            node: node_label,
            path,
            kind: failure.kind(),
        })
        .inc();
    if !failure.is_answer() {
        // The same hint a failed push gives: probe the node now rather than at the next interval.
        state.suspects.report(node);
    }
}

/// Clears the failure of every node whose answer was used. Called by each endpoint once it has checked the
/// answers' bodies too, so a node answering 200 with an unusable body does not flip back and forth.
fn note_successes(state: &AppState, path: &'static str, answers: &[NodeAnswer]) {
    for answer in answers.iter().filter(|answer| answer.result.is_ok()) {
        note_success(state, &answer.node, path);
    }
}

/// Clears the failure of `node` reading `path`, if it had one.
pub(super) fn note_success(state: &AppState, node: &str, path: &'static str) {
    let Some(was) = state.read_side.record_success(node, path) else {
        return;
    };
    tracing::info!(%node, path, failed_reads = was.failures, "node answers fanned-out reads again");
    state
        .metrics
        .read_node_failing
        .get_or_create(&ReadPathLabels {
            node: Arc::from(node),
            path,
        })
        .set(0);
}

/// `node: error` for every failed node, for messages and `warnings`.
fn failure_list(answers: &[NodeAnswer]) -> Vec<String> {
    answers
        .iter()
        .filter_map(|answer| match &answer.result {
            Err(failure) => Some(format!("node {}: {failure}", answer.node)),
            Ok(_) => None,
        })
        .collect()
}

/// Every healthy node, ejected ones included: ejection stops pushes to a node, not reads of the groups it holds.
fn healthy_nodes(state: &AppState) -> Vec<String> {
    state.ring.load().readable.clone()
}

const NO_HEALTHY_NODE: &str =
    "no healthy Pushgateway: every node is failing its health check (see /-/ring)";

// ---- GET /metrics -------------------------------------------------------------------------------------------

/// `GET /metrics`: every healthy node's pushed groups as one exposition.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response<Body> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    if !accepts_text_format(accept) {
        return text(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "this endpoint serves only the text format ({TEXT_FORMAT}); the Accept header {:?} excludes it",
                accept.unwrap_or_default()
            ),
        );
    }
    let nodes = healthy_nodes(&state);
    if nodes.is_empty() {
        return text(StatusCode::SERVICE_UNAVAILABLE, NO_HEALTHY_NODE);
    }
    let config = state.config.load();
    let timeout = config.read.timeout;
    if config.replication_factor > 1 {
        return replicated_metrics(&state, &nodes, config.replication_factor, timeout).await;
    }
    let mut answers = fan_out(&state, &nodes, api::Read::Metrics, timeout).await;
    for answer in &mut answers {
        if let Ok(body) = &answer.result {
            if std::str::from_utf8(body).is_err() {
                let failure = NodeError::Decode("exposition is not valid UTF-8".to_owned());
                note_failure(&state, &answer.node, api::Read::Metrics.path(), &failure);
                answer.result = Err(failure);
            }
        }
    }
    note_successes(&state, api::Read::Metrics.path(), &answers);
    let expositions: Vec<(&str, &str)> = answers
        .iter()
        .filter_map(|answer| {
            let body = answer.result.as_ref().ok()?;
            Some((answer.node.as_str(), std::str::from_utf8(body).ok()?))
        })
        .collect();
    if expositions.is_empty() {
        return text(
            StatusCode::BAD_GATEWAY,
            format!(
                "no node answered GET /metrics:\n{}",
                failure_list(&answers).join("\n")
            ),
        );
    }
    let merged = exposition::merge_pushed(&expositions);
    note_conflicts(&state, &merged.conflicts);
    merged_response(merged.text, &answers)
}

/// The merged exposition, naming the nodes left out in [`MISSING_NODES_HEADER`].
fn merged_response(text: String, answers: &[NodeAnswer]) -> Response<Body> {
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, TEXT_FORMAT)
        .body(Body::from(text))
        .unwrap_or_default();
    let missing: Vec<&str> = answers
        .iter()
        .filter(|answer| answer.result.is_err())
        .map(|answer| answer.node.as_str())
        .collect();
    if !missing.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&missing.join(",")) {
            response.headers_mut().insert(MISSING_NODES_HEADER, value);
        }
    }
    response
}

/// `GET /metrics` with `replication.factor` above 1: every node's groups (from `/api/v1/metrics`, which names
/// each group's grouping key, where `/metrics` does not), each group shown once from the node
/// [`exposition::replicas`] picks, then merged like the unreplicated read.
async fn replicated_metrics(
    state: &AppState,
    nodes: &[String],
    factor: usize,
    timeout: Duration,
) -> Response<Body> {
    let mut answers = fan_out(state, nodes, api::Read::Groups, timeout).await;
    let bodies: Vec<(String, Bytes)> = answers
        .iter()
        .filter_map(|answer| Some((answer.node.clone(), answer.result.as_ref().ok()?.clone())))
        .collect();
    let table = state.ring.load_full();
    // Parsing and merging thousands of groups is CPU work; keep it off the async workers.
    let combined =
        tokio::task::spawn_blocking(move || deduplicated_exposition(&bodies, &table.ring, factor))
            .await;
    let (merged, failures) = match combined {
        Ok(combined) => combined,
        Err(error) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("merging the nodes' groups failed: {error}"),
            )
        }
    };
    for (node, failure) in failures {
        note_failure(state, &node, api::Read::Groups.path(), &failure);
        if let Some(answer) = answers.iter_mut().find(|answer| answer.node == node) {
            answer.result = Err(failure);
        }
    }
    note_successes(state, api::Read::Groups.path(), &answers);
    if answers.iter().all(|answer| answer.result.is_err()) {
        return text(
            StatusCode::BAD_GATEWAY,
            format!(
                "no node answered GET /api/v1/metrics:\n{}",
                failure_list(&answers).join("\n")
            ),
        );
    }
    note_conflicts(state, &merged.conflicts);
    merged_response(merged.text, &answers)
}

/// One copy of a group as a node answered it, for the replicated reads.
struct Held<T> {
    node_index: usize,
    ring_key: Vec<u8>,
    push_time_seconds: f64,
    group: T,
}

/// Which of `held` a replicated read shows: one per group, see [`exposition::replicas`]. Owner ranks come from
/// the ring's owner sets (`rendezvous`; a `go-compatible` ring hashes request paths, which labels do not give
/// back, so there every copy counts as a non-owner's).
fn shown<T>(held: &[Held<T>], nodes: &[&str], ring: &Ring, factor: usize) -> Vec<bool> {
    let copies: Vec<GroupCopy<'_>> = held
        .iter()
        .map(|copy| GroupCopy {
            node: nodes.get(copy.node_index).copied().unwrap_or_default(),
            group: &copy.ring_key,
            push_time_seconds: copy.push_time_seconds,
        })
        .collect();
    let rendezvous = ring.algorithm() == Algorithm::Rendezvous;
    exposition::replicas::shown_copies(&copies, |group, node| {
        if !rendezvous {
            return None;
        }
        ring.owner_set(group, factor)
            .iter()
            .position(|owner| *owner == node)
    })
}

/// The identity of a group by its labels: its ring key, or (for labels that are no grouping key, which a
/// Pushgateway would not hold) the labels rendered, so such a group is still shown once.
fn group_identity(labels: &BTreeMap<String, String>) -> Vec<u8> {
    match GroupingKey::from_labels(labels.clone()) {
        Ok(key) => key.ring_key(),
        Err(_) => format!("{labels:?}").into_bytes(),
    }
}

/// The nodes' `/api/v1/metrics` answers as one exposition with each group once; nodes whose answer does not
/// parse are returned with the reason and left out.
fn deduplicated_exposition(
    bodies: &[(String, Bytes)],
    ring: &Ring,
    factor: usize,
) -> (exposition::Merged, Vec<(String, NodeError)>) {
    let mut failures = Vec::new();
    let mut held = Vec::new();
    for (node_index, (node, body)) in bodies.iter().enumerate() {
        match parse_api_metrics_exposed(body) {
            Ok(groups) => held.extend(groups.into_iter().map(|group| Held {
                node_index,
                ring_key: group_identity(&group.labels),
                push_time_seconds: group.push_time_seconds,
                group: group.exposition,
            })),
            Err(error) => failures.push((
                node.clone(),
                NodeError::Decode(format!("/api/v1/metrics: {error}")),
            )),
        }
    }
    let nodes: Vec<&str> = bodies.iter().map(|(node, _)| node.as_str()).collect();
    let shown = shown(&held, &nodes, ring, factor);
    let expositions: Vec<(&str, &str)> = held
        .iter()
        .zip(shown)
        .filter(|(_, shown)| *shown)
        .map(|(copy, _)| (nodes[copy.node_index], copy.group.as_str()))
        .collect();
    (exposition::merge_pushed(&expositions), failures)
}

/// `/api/v1/metrics` groups (annotated with their node) with each group once.
fn deduplicated_groups(groups: Vec<Value>, ring: &Ring, factor: usize) -> Vec<Value> {
    let mut nodes: Vec<String> = Vec::new();
    let held: Vec<Held<Value>> = groups
        .into_iter()
        .map(|group| {
            let node = group
                .get(NODE_KEY)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let node_index = match nodes.iter().position(|known| *known == node) {
                Some(index) => index,
                None => {
                    nodes.push(node);
                    nodes.len() - 1
                }
            };
            let labels: BTreeMap<String, String> = group
                .get("labels")
                .and_then(|labels| serde_json::from_value(labels.clone()).ok())
                .unwrap_or_default();
            let push_time_seconds = group
                .pointer("/push_time_seconds/metrics/0/value")
                .and_then(Value::as_str)
                .and_then(|value| value.parse().ok())
                .unwrap_or(0.0);
            Held {
                node_index,
                ring_key: group_identity(&labels),
                push_time_seconds,
                group,
            }
        })
        .collect();
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let shown = shown(&held, &names, ring, factor);
    held.into_iter()
        .zip(shown)
        .filter(|(_, shown)| *shown)
        .map(|(copy, _)| copy.group)
        .collect()
}

fn note_conflicts(state: &AppState, conflicts: &[Conflict]) {
    for conflict in conflicts {
        state
            .metrics
            .read_merge_conflicts
            .get_or_create(&MergeConflictLabels {
                kind: conflict.kind(),
            })
            .inc();
        let message = conflict.to_string();
        if state.read_side.first_time(&message) {
            tracing::warn!(kind = conflict.kind(), conflict = %message, "nodes disagree; merged /metrics resolved it as a lone Pushgateway would (logged once)");
        } else {
            tracing::debug!(kind = conflict.kind(), conflict = %message, "merge conflict (seen before)");
        }
    }
}

/// Whether an `Accept` header admits the text format 0.0.4: absent, `*/*`, `text/*`, or `text/plain` without a
/// version or with version 0.0.4, each with a non-zero `q`. Prometheus lists `text/plain;version=0.0.4` in every
/// scrape's `Accept`, behind OpenMetrics, so scrapes of the gateway get the text format.
pub fn accepts_text_format(accept: Option<&str>) -> bool {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return true;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media_type = parts.next().unwrap_or_default().to_ascii_lowercase();
        let mut version = None;
        let mut quality = 1.0_f64;
        for parameter in parts {
            let Some((name, value)) = parameter.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "q" => quality = value.parse().unwrap_or(0.0),
                "version" => version = Some(value.to_owned()),
                _ => {}
            }
        }
        if quality <= 0.0 {
            return false;
        }
        match media_type.as_str() {
            "*/*" | "text/*" => true,
            "text/plain" => version.is_none_or(|v| v == "0.0.4"),
            _ => false,
        }
    })
}

// ---- GET /api/v1/metrics ------------------------------------------------------------------------------------

/// `GET /api/v1/metrics`: the union of every healthy node's groups, each with [`NODE_KEY`].
pub async fn api_metrics(State(state): State<AppState>) -> Response<Body> {
    let nodes = healthy_nodes(&state);
    if nodes.is_empty() {
        return api_error(StatusCode::SERVICE_UNAVAILABLE, NO_HEALTHY_NODE.to_owned());
    }
    let timeout = state.config.load().read.timeout;
    let mut answers = fan_out(&state, &nodes, api::Read::Groups, timeout).await;
    let mut groups = Vec::new();
    for answer in &mut answers {
        let Ok(body) = &answer.result else { continue };
        match annotated_groups(&answer.node, body) {
            Ok(node_groups) => groups.extend(node_groups),
            Err(failure) => {
                note_failure(&state, &answer.node, api::Read::Groups.path(), &failure);
                answer.result = Err(failure);
            }
        }
    }
    note_successes(&state, api::Read::Groups.path(), &answers);
    let factor = state.config.load().replication_factor;
    if factor > 1 {
        groups = deduplicated_groups(groups, &state.ring.load().ring, factor);
    }
    let warnings = failure_list(&answers);
    if warnings.len() == answers.len() {
        return api_error(
            StatusCode::BAD_GATEWAY,
            format!(
                "no node answered GET /api/v1/metrics: {}",
                warnings.join("; ")
            ),
        );
    }
    let mut body = json!({"status": "success", "data": groups});
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    json(StatusCode::OK, &body)
}

/// The groups of one node's `/api/v1/metrics` answer, each with `"@node": node` added.
pub fn annotated_groups(node: &str, body: &[u8]) -> Result<Vec<Value>, NodeError> {
    let answer: Value = serde_json::from_slice(body)
        .map_err(|e| NodeError::Decode(format!("/api/v1/metrics is not JSON: {e}")))?;
    let Some(Value::Array(groups)) = answer.get("data") else {
        return Err(NodeError::Decode(
            "/api/v1/metrics has no \"data\" array".to_owned(),
        ));
    };
    groups
        .iter()
        .map(|group| match group {
            Value::Object(fields) => {
                let mut fields = fields.clone();
                fields.insert(NODE_KEY.to_owned(), Value::String(node.to_owned()));
                Ok(Value::Object(fields))
            }
            other => Err(NodeError::Decode(format!(
                "/api/v1/metrics has a group that is not an object: {other}"
            ))),
        })
        .collect()
}

/// An error in the Prometheus API shape the Pushgateway also uses.
fn api_error(status: StatusCode, message: String) -> Response<Body> {
    json(
        status,
        &json!({"status": "error", "errorType": "unavailable", "error": message}),
    )
}

// ---- GET /api/v1/status -------------------------------------------------------------------------------------

/// `GET /api/v1/status`: the gateway's status plus every known node's (its own `/api/v1/status` if healthy).
pub async fn status(State(state): State<AppState>) -> Response<Body> {
    let table = state.ring.load_full();
    let membership = state.membership.borrow().clone();
    let config = state.config.load_full();
    let answers = fan_out(
        &state,
        &table.readable,
        api::Read::Status,
        config.read.timeout,
    )
    .await;
    note_successes(&state, api::Read::Status.path(), &answers);
    let nodes: Vec<Value> = membership
        .nodes
        .iter()
        .map(|known| {
            let mut entry = json!({"node": known.node, "healthy": known.healthy});
            match answers.iter().find(|a| a.node == known.node) {
                None => {
                    entry["error"] = json!("failing its health check; not asked");
                }
                Some(NodeAnswer {
                    result: Ok(body), ..
                }) => match serde_json::from_slice::<Value>(body) {
                    Ok(node_status) => {
                        entry["data"] = node_status.get("data").cloned().unwrap_or(node_status)
                    }
                    Err(error) => {
                        entry["error"] = json!(format!("/api/v1/status is not JSON: {error}"))
                    }
                },
                Some(NodeAnswer {
                    result: Err(failure),
                    ..
                }) => entry["error"] = json!(failure.to_string()),
            }
            entry
        })
        .collect();
    let body = json!({
        "status": "success",
        "data": {
            "gateway": {
                "version": env!("CARGO_PKG_VERSION"),
                "mode": config.mode,
                "algorithm": table.ring.algorithm(),
                "membership_source": membership.source,
                "ring_generation": table.generation,
                "ring_nodes": table.ring.nodes(),
                "read_timeout": humantime::format_duration(config.read.timeout).to_string(),
                "admin_api_enabled": state.admin_api_enabled,
                "lifecycle_enabled": state.lifecycle_enabled,
            },
            "nodes": nodes,
        },
    });
    json(StatusCode::OK, &body)
}

// ---- PUT /api/v1/admin/wipe ---------------------------------------------------------------------------------

/// `PUT /api/v1/admin/wipe`, only with `--web.enable-admin-api`: wipes every known node, healthy or not, since
/// a node that is only briefly unhealthy would otherwise bring its groups back. `202` when every node wiped,
/// `502` naming the nodes that did not.
pub async fn wipe(
    State(state): State<AppState>,
    method: Method,
    extensions: Extensions,
) -> Response<Body> {
    let endpoint = Action::Admin {
        endpoint: "/api/v1/admin/wipe",
    };
    if let Some(refused) = forbidden(&state, &state.config.load(), &extensions, endpoint) {
        return refused;
    }
    if !state.admin_api_enabled {
        return text(
            StatusCode::FORBIDDEN,
            "Admin API is not enabled; start the gateway with --web.enable-admin-api",
        );
    }
    if method != Method::PUT {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use PUT to wipe every Pushgateway",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("PUT"));
        return response;
    }
    let nodes: Vec<String> = state
        .membership
        .borrow()
        .nodes
        .iter()
        .map(|n| n.node.clone())
        .collect();
    if nodes.is_empty() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no Pushgateway is known");
    }
    let timeout = state.config.load().read.timeout;
    let answers = fan_out(&state, &nodes, api::Read::Wipe, timeout).await;
    note_successes(&state, api::Read::Wipe.path(), &answers);
    let wiped: Vec<&str> = answers
        .iter()
        .filter(|answer| answer.result.is_ok())
        .map(|answer| answer.node.as_str())
        .collect();
    let failures = failure_list(&answers);
    tracing::warn!(wiped = %wiped.join(","), failed = failures.len(), "wiped Pushgateways on request");
    if failures.is_empty() {
        text(
            StatusCode::ACCEPTED,
            format!("wiped {} node(s): {}", wiped.len(), wiped.join(", ")),
        )
    } else {
        text(
            StatusCode::BAD_GATEWAY,
            format!(
                "wiped {} of {} node(s) ({}); not wiped:\n{}",
                wiped.len(),
                answers.len(),
                wiped.join(", "),
                failures.join("\n")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One node's `/api/v1/metrics` answer holding group `{job="j"}` with gauge `x` at `value`, plus a gauge
    /// `left_over` when `extra`.
    fn api_answer(value: &str, push_time: &str, extra: bool) -> Bytes {
        let gauge = |name: &str, value: &str| {
            json!({"type": "GAUGE", "metrics": [{"labels": {"job": "j"}, "value": value}]})
                .as_object()
                .cloned()
                .map(|family| (name.to_owned(), Value::Object(family)))
                .unwrap()
        };
        let mut group = serde_json::Map::new();
        group.insert("labels".into(), json!({"job": "j"}));
        group.extend([gauge("x", value), gauge("push_time_seconds", push_time)]);
        if extra {
            group.extend([gauge("left_over", "1")]);
        }
        Bytes::from(json!({"status": "success", "data": [group]}).to_string())
    }

    #[test]
    fn a_replicated_read_shows_each_group_whole_from_its_first_owner_not_a_mix_of_copies() {
        let nodes = vec!["a:1".to_string(), "b:1".to_string(), "c:1".to_string()];
        let ring = Ring::build(Algorithm::Rendezvous, &nodes);
        let key =
            GroupingKey::from_labels(BTreeMap::from([("job".to_owned(), "j".to_owned())])).unwrap();
        let owners = ring.owner_set(&key.ring_key(), 2);
        // The second owner holds a stale copy with a family the newest push dropped; a node outside the owner
        // set holds an even newer stray. Listed in both orders, the first owner's copy is the only one shown.
        let outsider = nodes
            .iter()
            .find(|n| !owners.contains(&n.as_str()))
            .unwrap();
        let mut bodies = vec![
            (owners[1].to_string(), api_answer("1", "100", true)),
            (owners[0].to_string(), api_answer("2", "200", false)),
            (outsider.clone(), api_answer("3", "300", false)),
        ];
        for _ in 0..2 {
            let (merged, failures) = deduplicated_exposition(&bodies, &ring, 2);
            assert!(failures.is_empty(), "{failures:?}");
            let samples: Vec<&str> = merged
                .text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect();
            assert_eq!(
                samples,
                ["push_time_seconds{job=\"j\"} 200", "x{job=\"j\"} 2"],
                "{}",
                merged.text
            );
            bodies.reverse();
        }
        // The first owner gone from the answers: the second owner's copy, whole.
        let without_first: Vec<(String, Bytes)> = bodies
            .iter()
            .filter(|(node, _)| node != owners[0])
            .cloned()
            .collect();
        let (merged, _) = deduplicated_exposition(&without_first, &ring, 2);
        assert!(
            merged.text.contains("left_over{job=\"j\"} 1"),
            "{}",
            merged.text
        );
        let groups: Vec<Value> = bodies
            .iter()
            .flat_map(|(node, body)| annotated_groups(node, body).unwrap())
            .collect();
        let shown = deduplicated_groups(groups, &ring, 2);
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0][NODE_KEY], owners[0]);
    }

    fn status_failure(status: StatusCode, body: &str) -> NodeError {
        NodeError::Status {
            status,
            body: body.to_owned(),
        }
    }

    #[test]
    fn a_failing_read_is_news_once_per_kind_and_cleared_by_a_success() {
        let side = ReadSide::default();
        let poisoned = status_failure(StatusCode::INTERNAL_SERVER_ERROR, "collected before");
        assert_eq!(
            side.record_failure("a:1", "/metrics", &poisoned),
            FailureNews::Started
        );
        assert_eq!(
            side.record_failure("a:1", "/metrics", &poisoned),
            FailureNews::Repeated
        );
        // Another path or node is tracked on its own.
        assert_eq!(
            side.record_failure("a:1", "/api/v1/metrics", &poisoned),
            FailureNews::Started
        );
        let timeout = NodeError::Timeout(Duration::from_secs(1));
        assert_eq!(
            side.record_failure("a:1", "/metrics", &timeout),
            FailureNews::Changed
        );
        let shown = side.failing_reads_json();
        assert_eq!(shown.as_array().map(Vec::len), Some(2), "{shown}");
        assert_eq!(shown[1]["path"], "/metrics", "{shown}");
        assert_eq!(shown[1]["kind"], "timeout", "{shown}");
        assert_eq!(shown[1]["failures_in_a_row"], 3, "{shown}");

        let cleared = side.record_success("a:1", "/metrics");
        assert_eq!(cleared.map(|c| c.failures), Some(3));
        assert!(side.record_success("a:1", "/metrics").is_none());
        assert_eq!(
            side.record_failure("a:1", "/metrics", &poisoned),
            FailureNews::Started
        );
    }

    #[test]
    fn accept_headers_that_admit_the_text_format() {
        for accept in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4"),
            Some("TEXT/PLAIN; Version=\"0.0.4\""),
            Some("text/*;q=0.2"),
            // Prometheus 2.42's scrape header.
            Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
            // client_golang's protobuf-first header.
            Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3"),
        ] {
            assert!(accepts_text_format(accept), "{accept:?} should be accepted");
        }
        for accept in [
            "application/json",
            "application/openmetrics-text; version=1.0.0",
            "text/plain; version=1.0.0",
            "text/plain;q=0, application/json",
            "*/*;q=0",
        ] {
            assert!(
                !accepts_text_format(Some(accept)),
                "{accept:?} should be refused"
            );
        }
    }

    #[test]
    fn groups_are_annotated_with_their_node_without_touching_families() {
        let body = br#"{"status":"success","data":[
            {"labels":{"job":"a"},"last_push_successful":true,"node":{"type":"GAUGE","help":"","metrics":[]}},
            {"labels":{"job":"b"},"last_push_successful":false}]}"#;
        let groups = annotated_groups("127.0.0.1:9091", body).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0][NODE_KEY], "127.0.0.1:9091");
        assert_eq!(groups[1][NODE_KEY], "127.0.0.1:9091");
        assert_eq!(groups[0]["labels"]["job"], "a");
        // A metric family that happens to be called "node" is left as it was.
        assert_eq!(groups[0]["node"]["type"], "GAUGE");
    }

    #[test]
    fn unusable_api_answers_say_what_is_wrong() {
        let not_json = annotated_groups("n", b"<html>").unwrap_err();
        assert!(not_json.to_string().contains("not JSON"), "{not_json}");
        let no_data = annotated_groups("n", br#"{"status":"error"}"#).unwrap_err();
        assert!(no_data.to_string().contains("\"data\""), "{no_data}");
        let bad_group = annotated_groups("n", br#"{"data":[1]}"#).unwrap_err();
        assert!(
            bad_group.to_string().contains("not an object"),
            "{bad_group}"
        );
        assert_eq!(bad_group.kind(), "body");
    }

    #[test]
    fn a_conflict_is_first_logged_once() {
        let read_side = ReadSide::default();
        assert!(read_side.first_time("metric family x: ..."));
        assert!(!read_side.first_time("metric family x: ..."));
        assert!(read_side.first_time("metric family y: ..."));
    }
}
