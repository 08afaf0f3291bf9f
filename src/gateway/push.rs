//! `/metrics/job/...`: parse the grouping key, find its owner on the ring, then proxy, redirect, or (GET) say
//! who the owner is.

use std::borrow::Cow;
use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};

use super::{forbidden, json, text, text_lines, AppState};
use crate::ambiguous::{AckedWrite, WriteHeaders};
use crate::authorization::Action;
use crate::body_budget::{self, BodyError};
use crate::config::{Config, Mode, NodeScheme};
use crate::grouping::{self, GroupingKey, GroupingKeyError, NonUtf8};
use crate::node_route::NodeRoute;
use crate::outlier::OutlierDetector;
use crate::pushgateway::{forward, NodeError};
use crate::ring::Algorithm;
use crate::telemetry::{ErrorLabels, NodeLabels};

/// The response header naming the node that served a proxied push.
pub const NODE_HEADER: &str = "x-dynamic-sharding-node";
const ALLOW: &str = "DELETE, GET, OPTIONS, POST, PUT";

thread_local! {
    /// The rendezvous ring key of the push being routed: reused so that a lookup does not allocate.
    static RING_KEY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The fallback service: every path no other route claimed. A hand-written service rather than a handler
/// with `State<AppState>`, because axum clones a handler's state for every request, and `AppState` is some
/// thirty reference counts (each metric family, the HTTP client's pool): here a request clones one `Arc`.
#[derive(Clone)]
pub struct PushService(Arc<AppState>);

impl PushService {
    pub fn new(state: AppState) -> PushService {
        PushService(Arc::new(state))
    }
}

impl tower::Service<Request<Body>> for PushService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move { Ok(dispatch(&state, request).await) })
    }
}

async fn dispatch(state: &AppState, request: Request<Body>) -> Response<Body> {
    // Every path comes here, not only those `is_push_path` recognises: `//metrics/job/j`, `/metrics/JOB/j` and
    // `/metrics/%6Aob/j` reach the Pushgateway's push routes too; the parser tells them from a 404.
    let method = request.method().clone();
    let (response, served_by) = handle(state, request).await;
    let family = &state.metrics.requests;
    match served_by {
        Some(node) => node.requests.record(family, &method, response.status()),
        None => state
            .ring
            .load()
            .unserved
            .record(family, &method, response.status()),
    }
    response
}

/// The fast path: a raw path that can only be a push path (`/metrics/job` itself is a 404 on the Pushgateway).
/// Other spellings of push paths reach [`PushService`] as the router's fallback.
pub(crate) fn is_push_path(path: &str) -> bool {
    match path.strip_prefix("/metrics/job") {
        Some(rest) => rest.starts_with('/') || rest.starts_with("@base64/"),
        None => false,
    }
}

/// The answer, and the node that served it when a push was forwarded (its label in the request counter).
async fn handle(
    state: &AppState,
    request: Request<Body>,
) -> (Response<Body>, Option<Arc<NodeRoute>>) {
    let response = match route(state, request) {
        Routed::Answered(response) => response,
        Routed::Proxy {
            request,
            key,
            owner,
            successor,
            replicas,
        } => return proxy(state, request, &key, owner, successor, replicas).await,
    };
    (response, None)
}

enum Routed {
    Answered(Response<Body>),
    Proxy {
        request: Request<Body>,
        key: GroupingKey,
        owner: Arc<NodeRoute>,
        successor: Option<Arc<NodeRoute>>,
        /// With `replication.factor` above 1: the other nodes the push is written to (the rest of the owner set;
        /// for a DELETE every other ring node, so no stray copy survives it). Empty otherwise.
        replicas: Vec<Arc<NodeRoute>>,
    },
}

/// Everything before the first await: parse, look up the owner, and answer unless the push is to be proxied.
/// The order of the checks is the Pushgateway's: its router (path cleaning, route match, method) answers
/// before its handlers look at the grouping key.
fn route(state: &AppState, mut request: Request<Body>) -> Routed {
    let method = request.method();
    let push_route = match grouping::match_push_path(request.uri().path()) {
        Ok(push_route) => push_route,
        Err(error) => return Routed::Answered(rejected(&request, &error)),
    };
    if !matches!(
        *method,
        Method::GET | Method::PUT | Method::POST | Method::DELETE | Method::OPTIONS
    ) {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed; use PUT or POST to push, DELETE to delete, GET to find the owner"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        return Routed::Answered(response);
    }
    if *method == Method::OPTIONS {
        let mut response = text(StatusCode::OK, "");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        return Routed::Answered(response);
    }
    // A delete of a key with a non-UTF-8 value harms no Pushgateway (it answers 202); a push of one breaks it.
    let non_utf8 = if *method == Method::DELETE {
        NonUtf8::Replace
    } else {
        NonUtf8::Reject
    };
    let is_get = *method == Method::GET;
    let key = match push_route.grouping_key(non_utf8) {
        Ok(key) => key,
        Err(error) => return Routed::Answered(rejected(&request, &error)),
    };
    let config = state.config.load();
    // Before the owner is looked up: a refused push is neither forwarded nor redirected to a node.
    let action = match *method {
        Method::PUT | Method::POST => Some(Action::Push { job: key.job() }),
        Method::DELETE => Some(Action::Delete { job: key.job() }),
        _ => None, // the GET owner lookup is a read
    };
    if let Some(action) = action {
        if let Some(refused) = forbidden(state, &config, request.extensions(), action) {
            return Routed::Answered(refused);
        }
    }
    // `{a=""}` and an absent `a` are one group: only its canonical path is forwarded, redirected to or
    // hashed (go-compatible), so a node never holds both (which breaks it for every group).
    let canonical = grouping::without_empty_labels(request.uri().path(), &key);
    let table = state.ring.load();
    let proxying = config.mode == Mode::Proxy && !is_get;
    let factor = if proxying {
        config.replication_factor
    } else {
        1
    };
    let is_delete = *method == Method::DELETE;
    let wants_successor = proxying && config.proxy.retry && factor == 1;
    let lookup = |ring_key: &[u8]| {
        let owner = table.ring.owner_index(ring_key);
        let successor = wants_successor
            .then(|| table.ring.successor_index(ring_key))
            .flatten();
        let replicas: Vec<usize> = match (factor, owner) {
            (1, _) | (_, None) => Vec::new(),
            (_, Some(owner)) if is_delete => (0..table.ring.nodes().len())
                .filter(|&index| index != owner)
                .collect(),
            _ => table
                .ring
                .owner_set_indices(ring_key, factor)
                .into_iter()
                .skip(1)
                .collect(),
        };
        (owner, successor, replicas)
    };
    let key = match &canonical {
        Some(_) => key.canonical(),
        None => key,
    };
    let (owner, successor, replicas) = match table.ring.algorithm() {
        Algorithm::Rendezvous => RING_KEY.with_borrow_mut(|buffer| {
            key.write_ring_key(buffer);
            lookup(buffer)
        }),
        Algorithm::GoCompatible => match &canonical {
            None => lookup(push_route.decoded_path()),
            Some(path) => match grouping::match_push_path(path) {
                Ok(canonical_route) => lookup(canonical_route.decoded_path()),
                Err(error) => return Routed::Answered(rejected(&request, &error)),
            },
        },
    };
    if let Some(path) = canonical {
        match with_path(request.uri(), &path) {
            Some(uri) => {
                tracing::debug!(grouping_key = %key, %path, "dropped empty-valued grouping labels: an empty label is an absent label");
                *request.uri_mut() = uri;
            }
            None => {
                return Routed::Answered(text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "push path {path:?} without its empty-valued labels is not a valid URI"
                    ),
                ))
            }
        }
    }
    let Some(owner) = owner.and_then(|index| table.routes.get(index)) else {
        return Routed::Answered(no_healthy_node());
    };
    if !proxying {
        return Routed::Answered(if is_get {
            owner_info(&request, &key, config.upstream.scheme, &owner.name)
        } else {
            redirect(&request, config.upstream.scheme, &owner.name)
        });
    }
    Routed::Proxy {
        owner: owner.clone(),
        successor: successor.and_then(|index| table.routes.get(index)).cloned(),
        replicas: replicas
            .into_iter()
            .filter_map(|index| table.routes.get(index).cloned())
            .collect(),
        request,
        key,
    }
}

/// `uri` with its path replaced by `path`, keeping the query (and scheme and authority, if any).
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let path_and_query = match uri.query() {
        Some(query) => PathAndQuery::try_from(format!("{path}?{query}")),
        None => PathAndQuery::try_from(path),
    }
    .ok()?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    http::Uri::from_parts(parts).ok()
}

fn rejected(request: &Request<Body>, error: &GroupingKeyError) -> Response<Body> {
    let method = request.method();
    let path = request.uri().path();
    match error {
        // The Pushgateway's router finds a fixed-case route only among the routes of the request's method, and
        // only PUT, POST and DELETE have push routes.
        GroupingKeyError::WrongCase { .. }
            if !matches!(*method, Method::PUT | Method::POST | Method::DELETE) =>
        {
            return not_found(path);
        }
        // No route matches an empty job; PUT, POST, DELETE and the GET lookup say why instead.
        GroupingKeyError::EmptyJob
            if !matches!(
                *method,
                Method::PUT | Method::POST | Method::DELETE | Method::GET
            ) =>
        {
            return not_found(path);
        }
        _ => {}
    }
    let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = text(status, error.to_string());
    if let Some(location) = error.redirect_location() {
        // Go keeps the query string in both redirects.
        let location = match request.uri().query() {
            Some(query) if !query.is_empty() => Cow::Owned(format!("{location}?{query}")),
            _ => Cow::Borrowed(location),
        };
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
    }
    response
}

fn not_found(path: &str) -> Response<Body> {
    text(StatusCode::NOT_FOUND, format!("404 page not found: {path}"))
}

fn no_healthy_node() -> Response<Body> {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "no healthy Pushgateway: every node is failing its health check (see /-/ring)",
    )
}

fn path_and_query(request: &Request<Body>) -> &str {
    request.uri().path_and_query().map_or("/", |pq| pq.as_str())
}

/// The original's `GET /metrics/job/...`: which node owns the group.
fn owner_info(
    request: &Request<Body>,
    key: &GroupingKey,
    scheme: NodeScheme,
    owner: &str,
) -> Response<Body> {
    let url = format!("{}{owner}{}", scheme.prefix(), request.uri().path());
    let wants_json = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    if wants_json {
        json(
            StatusCode::OK,
            &serde_json::json!({ "node": owner, "url": url, "grouping_key": key.to_string() }),
        )
    } else {
        // No trailing newline: byte-for-byte what the original answers.
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::from(format!("nextUrl:{url}")))
            .unwrap_or_default()
    }
}

/// `307` to the owner, with `pushgateway.scheme` in `Location`.
fn redirect(request: &Request<Body>, scheme: NodeScheme, owner: &str) -> Response<Body> {
    let scheme = scheme.prefix();
    const BODY_PREFIX: &str = "Temporary Redirect: ";
    let target = path_and_query(request);
    // One buffer holds the body; the Location header shares its tail (no second copy, no formatting machinery).
    let mut body =
        String::with_capacity(BODY_PREFIX.len() + scheme.len() + owner.len() + target.len() + 1);
    body.push_str(BODY_PREFIX);
    body.push_str(scheme);
    body.push_str(owner);
    body.push_str(target);
    body.push('\n');
    let body = bytes::Bytes::from(body);
    let location = body.slice(BODY_PREFIX.len()..body.len() - 1);
    match HeaderValue::from_maybe_shared(location) {
        Ok(value) => {
            let mut response = text_lines(StatusCode::TEMPORARY_REDIRECT, body);
            response.headers_mut().insert(header::LOCATION, value);
            response
        }
        Err(_) => text(
            StatusCode::BAD_REQUEST,
            "request path cannot be used in a Location header",
        ),
    }
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 section 7.6.1).
///
/// `Host` and `Content-Length` are not in the list although the next hop gets its own: removing an entry from a
/// `HeaderMap` reorders it and cost ~1,000 instructions per push (callgrind), while `Host` is simply overwritten
/// for the upstream (the per-node pool sets it; the shared client's path removes it so hyper sets it) and
/// `Content-Length` stays right because every body is forwarded whole, as received.
fn is_hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers in place: the map is moved from the incoming to the outgoing message, not copied.
fn strip_hop_headers(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    if headers.keys().any(is_hop_header) {
        let hop: Vec<HeaderName> = headers
            .keys()
            .filter(|n| is_hop_header(n))
            .cloned()
            .collect();
        for name in hop {
            headers.remove(name);
        }
    }
}

async fn proxy(
    state: &AppState,
    request: Request<Body>,
    key: &GroupingKey,
    owner: Arc<NodeRoute>,
    successor: Option<Arc<NodeRoute>>,
    replicas: Vec<Arc<NodeRoute>>,
) -> (Response<Body>, Option<Arc<NodeRoute>>) {
    let config = state.config.load();
    match proxy_to(state, &config, request, key, owner, successor, replicas).await {
        Ok((response, node)) => (response, Some(node)),
        Err(response) => (response, None),
    }
}

/// `503` for a push whose body does not fit in `proxy.max_body_memory` now; the client may retry shortly.
fn body_memory_exhausted(config: &Config) -> Response<Body> {
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "request bodies held in memory have reached proxy.max_body_memory ({} bytes); retry later",
            config.proxy.max_body_memory
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Forwards the push to `owner`, or to `successor` if the owner cannot be reached. `Err` is our own answer.
async fn proxy_to(
    state: &AppState,
    config: &Config,
    request: Request<Body>,
    key: &GroupingKey,
    owner: Arc<NodeRoute>,
    successor: Option<Arc<NodeRoute>>,
    replicas: Vec<Arc<NodeRoute>>,
) -> Result<(Response<Body>, Arc<NodeRoute>), Response<Body>> {
    let (mut parts, body) = request.into_parts();
    let limit = config.proxy.max_body_size;
    let collected = tokio::time::timeout(
        config.proxy.client_body_timeout,
        body_budget::collect(
            body,
            limit,
            &state.body_budget,
            config.proxy.max_body_memory,
        ),
    )
    .await;
    // `_held` keeps the body's bytes counted against `proxy.max_body_memory` until the push is done.
    let (body, _held) = match collected {
        Ok(Ok(collected)) => collected,
        Ok(Err(BodyError::TooLarge)) => {
            return Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {limit} bytes (proxy.max_body_size)"),
            ))
        }
        Ok(Err(BodyError::OverBudget)) => return Err(body_memory_exhausted(config)),
        Ok(Err(BodyError::Read(error))) => {
            return Err(text(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {error}"),
            ))
        }
        Err(_) => {
            return Err(text(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {} (proxy.client_body_timeout)",
                    humantime::format_duration(config.proxy.client_body_timeout)
                ),
            ))
        }
    };
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_headers(&mut headers);
    let target = parts.uri.path_and_query();

    // A group with an ambiguous write: its pushes wait while it is repaired, and acknowledged ones are recorded.
    let journal = &state.journal;
    let mut entry = JournalEntry {
        key,
        ring_key: None,
        write_headers: None,
    };
    let mut _group_lock = None;
    if !journal.is_empty() {
        let group = key.ring_key();
        if let Some(lock) = journal.group_lock(&group) {
            entry.write_headers = Some(WriteHeaders::from_headers(&headers));
            _group_lock = Some(lock.lock_owned().await);
        }
        entry.ring_key = Some(group);
    }
    // While the rebalancer moves groups, a push of a group being moved waits for the move and then wins over it.
    let _permit = state.move_guard.push_permit(|| key.ring_key()).await;
    if !replicas.is_empty() {
        let mut nodes = Vec::with_capacity(replicas.len() + 1);
        nodes.push(owner);
        nodes.extend(replicas);
        let write = ReplicatedWrite {
            method: &parts.method,
            target,
            entry,
        };
        return write.send(state, config, headers, body, nodes).await;
    }
    let mut node = owner;
    let mut retry_on = successor;
    loop {
        let Some(slot) = node.counters.try_begin(config.proxy.max_in_flight_per_node) else {
            // Never sent, so unambiguous: the next node may take it at once.
            state.metrics.faults.count_in_flight_overflow(&node.name);
            match retry_on.take() {
                Some(next) => {
                    tracing::debug!(from = %node.name, to = %next.name, grouping_key = %key, "node has too many pushes in flight; sending to the next node");
                    node = next;
                    continue;
                }
                None => return Err(overloaded(&node.name, config.proxy.max_in_flight_per_node)),
            }
        };
        // The headers are needed again only if a retry can follow.
        let attempt_headers = if retry_on.is_some() {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        match forward(
            state,
            config,
            &parts.method,
            target,
            attempt_headers,
            body.clone(),
            &node,
        )
        .await
        {
            Ok(response) => {
                OutlierDetector::record_success(&node.counters);
                entry.note_acked(state, response.status(), &parts.method, target, body);
                return Ok((response, node));
            }
            Err((error, late)) => {
                let name = &node.name;
                // `headers` are intact when a retry follows; a push that is not retried is not acknowledged either.
                entry.note_failure(state, &node, &headers, &error, late, Some(slot));
                match retry_on.take() {
                    Some(next) => {
                        state
                            .metrics
                            .retries
                            .get_or_create(&NodeLabels { node: name.clone() })
                            .inc();
                        tracing::info!(from = %name, to = %next.name, grouping_key = %key, "retrying push on the next node");
                        node = next;
                    }
                    None => {
                        return Err(text(
                            StatusCode::BAD_GATEWAY,
                            format!("Pushgateway {name} could not be reached: {error}"),
                        ))
                    }
                }
            }
        }
    }
}

/// One push written to several nodes (`replication.factor` above 1): the owner and the rest of its owner set.
///
/// Every write starts at once and the answer waits for all of them, each bounded by `proxy.upstream_timeout`.
/// The client gets the owner's answer. When the owner gives none (unreachable, timed out, over its in-flight
/// limit), the first node of the owner set that answered gives it, so the next node takes the push at once, as
/// the successor retry does without replication; it is not sent again anywhere (each node gets it at most once).
/// A write to any other node that fails or is refused does not fail the push: it is counted
/// (`dynamic_sharding_replica_writes_failed_total`) and left to the rebalancer, and the per-node bookkeeping
/// (suspects, outlier detection, the ambiguous-write journal) is the same as for a single write.
struct ReplicatedWrite<'a> {
    method: &'a Method,
    target: Option<&'a PathAndQuery>,
    entry: JournalEntry<'a>,
}

impl ReplicatedWrite<'_> {
    async fn send(
        mut self,
        state: &AppState,
        config: &Config,
        headers: HeaderMap,
        body: Bytes,
        nodes: Vec<Arc<NodeRoute>>,
    ) -> Result<(Response<Body>, Arc<NodeRoute>), Response<Body>> {
        let writes = nodes.iter().map(|node| {
            let headers = headers.clone();
            let body = body.clone();
            async move {
                let Some(slot) = node.counters.try_begin(config.proxy.max_in_flight_per_node)
                else {
                    return (None, Err(None));
                };
                let result = forward(
                    state,
                    config,
                    self.method,
                    self.target,
                    headers,
                    body.clone(),
                    node,
                )
                .await;
                (Some(slot), result.map_err(Some))
            }
        });
        let results = futures_util::future::join_all(writes).await;
        let mut answer: Option<(Response<Body>, Arc<NodeRoute>)> = None;
        let mut owner_error = None;
        let mut written_to = Vec::with_capacity(nodes.len());
        for (index, (node, (slot, result))) in nodes.iter().zip(results).enumerate() {
            let written = match result {
                Ok(response) => {
                    OutlierDetector::record_success(&node.counters);
                    let success = response.status().is_success();
                    if answer.is_none() {
                        answer = Some((response, node.clone()));
                    }
                    success
                }
                Err(None) => {
                    state.metrics.faults.count_in_flight_overflow(&node.name);
                    if index == 0 {
                        owner_error = Some(format!(
                            "over its proxy.max_in_flight_per_node ({})",
                            config.proxy.max_in_flight_per_node
                        ));
                    }
                    false
                }
                Err(Some((error, late))) => {
                    if index == 0 {
                        owner_error = Some(error.to_string());
                    }
                    self.entry
                        .note_failure(state, node, &headers, &error, late, slot);
                    false
                }
            };
            written_to.push(written);
        }
        // A node that did not take a push the client is told succeeded is missing a copy; when the push failed
        // (e.g. a 400 for a bad body, which every node gives), nothing is missing.
        if answer
            .as_ref()
            .is_some_and(|(response, _)| response.status().is_success())
        {
            for (node, written) in nodes.iter().zip(written_to) {
                let answered_here = answer.as_ref().is_some_and(|(_, by)| Arc::ptr_eq(by, node));
                if !written && !answered_here {
                    state
                        .metrics
                        .replica_writes_failed
                        .get_or_create(&NodeLabels {
                            node: node.name.clone(),
                        })
                        .inc();
                    tracing::debug!(node = %node.name, grouping_key = %self.entry.key, "replica write failed; the rebalancer restores the copy");
                }
            }
        }
        let Some((response, node)) = answer else {
            let owner = nodes.first().map_or("", |node| &*node.name);
            return Err(text(
                StatusCode::BAD_GATEWAY,
                format!(
                    "no node of the owner set could take the push; Pushgateway {owner}: {}",
                    owner_error.unwrap_or_default()
                ),
            ));
        };
        self.entry
            .note_acked(state, response.status(), self.method, self.target, body);
        Ok((response, node))
    }
}

/// A push's part in the ambiguous-write journal, the same for a single and a replicated write: the group's ring
/// key (computed when first needed) and the client's headers, kept once a write was ambiguous (or from the start,
/// for a group already journaled) so that the acknowledged push can be recorded.
struct JournalEntry<'a> {
    key: &'a GroupingKey,
    ring_key: Option<Vec<u8>>,
    write_headers: Option<WriteHeaders>,
}

impl JournalEntry<'_> {
    /// What a failed write to one node sets off: the prober is told, outlier detection counts it, and an
    /// ambiguous one is journaled with its late exchange (which keeps its connection, and so its in-flight slot).
    fn note_failure(
        &mut self,
        state: &AppState,
        node: &NodeRoute,
        headers: &HeaderMap,
        error: &NodeError,
        late: Option<LateExchange>,
        slot: Option<crate::outlier::InFlight>,
    ) {
        let name = &node.name;
        tracing::warn!(node = %name, grouping_key = %self.key, %error, "push could not reach its node");
        state.suspects.report(name);
        if error.is_node_failure() {
            state
                .outliers
                .record_failure(name, &node.counters, &error.to_string());
        }
        if error.is_ambiguous() {
            let key = self.key;
            let group = self.ring_key.get_or_insert_with(|| key.ring_key());
            state
                .journal
                .note_ambiguous(key, group, name, late.is_some());
            if let Some(late) = late {
                state.journal.await_late_answer(
                    group.clone(),
                    name.to_string(),
                    Box::pin(async move {
                        let _slot = slot;
                        late.await
                    }),
                );
            }
            self.write_headers
                .get_or_insert_with(|| WriteHeaders::from_headers(headers));
        }
    }

    /// Records an acknowledged push of a journaled group, for its repair.
    fn note_acked(
        self,
        state: &AppState,
        status: StatusCode,
        method: &Method,
        target: Option<&PathAndQuery>,
        body: Bytes,
    ) {
        if let (Some(ring_key), Some(headers), true) =
            (self.ring_key, self.write_headers, status.is_success())
        {
            state.journal.note_acked(
                &ring_key,
                AckedWrite {
                    method: method.clone(),
                    path_and_query: target.map_or("/", |t| t.as_str()).to_string(),
                    headers,
                    body,
                },
            );
        }
    }
}

/// The owner (and its successor) already have `proxy.max_in_flight_per_node` pushes in flight.
fn overloaded(node: &str, limit: usize) -> Response<Body> {
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "Pushgateway {node} already has {limit} pushes in flight (proxy.max_in_flight_per_node); retry later"
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// An exchange with a node that timed out but is still in progress: the node may yet answer, and so apply the
/// push. Polled to the end in the background (instead of dropped) it says when the node is done with it:
/// `true` once the node answered.
pub type LateExchange = Pin<Box<dyn Future<Output = bool> + Send>>;

async fn forward(
    state: &AppState,
    config: &Config,
    method: &Method,
    target: Option<&PathAndQuery>,
    headers: HeaderMap,
    body: Bytes,
    node: &NodeRoute,
) -> Result<Response<Body>, (NodeError, Option<LateExchange>)> {
    let started = Instant::now();
    let route = forward::Route {
        pool: node.pool.as_ref(),
        name: &node.name,
        per_node_pool: config.proxy.per_node_pool,
        connect_timeout: config.proxy.connect_timeout,
    };
    let request = forward::Forwarded {
        method,
        target,
        headers,
        body,
    };
    let mut exchange = match forward::start(&state.client, route, request) {
        Ok(exchange) => exchange,
        Err(error) => return Err((error, None)),
    };
    let timeout = config.proxy.upstream_timeout;
    let (result, late) = match tokio::time::timeout(timeout, &mut exchange).await {
        Ok(result) => (result, None),
        Err(_) => {
            let late: LateExchange = Box::pin(async move { exchange.await.is_ok() });
            (Err(NodeError::Timeout(timeout)), Some(late))
        }
    };
    match result {
        Ok(upstream_response) => {
            node.upstream_duration(&state.metrics.upstream_duration)
                .observe(started.elapsed().as_secs_f64());
            let (parts, body) = upstream_response.into_parts();
            state
                .outliers
                .record_answer(&node.name, &node.counters, parts.status, &body);
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = parts.status;
            let mut headers = parts.headers;
            strip_hop_headers(&mut headers);
            if let Some(value) = &node.header_value {
                headers.insert(NODE_HEADER, value.clone());
            }
            *response.headers_mut() = headers;
            Ok(response)
        }
        Err(error) => {
            state
                .metrics
                .upstream_errors
                .get_or_create(&ErrorLabels {
                    node: node.name.clone(),
                    kind: error.kind(),
                })
                .inc();
            Err((error, late))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_paths_are_recognised() {
        assert!(is_push_path("/metrics/job/a"));
        assert!(is_push_path("/metrics/job/"));
        assert!(is_push_path("/metrics/job@base64/YQ"));
        assert!(!is_push_path("/metrics/job"));
        assert!(!is_push_path("/metrics/jobs/a"));
        assert!(!is_push_path("/metrics"));
    }

    #[test]
    fn with_path_keeps_the_query_and_an_absolute_form_authority() {
        let uri: http::Uri = "/metrics/job/j/a/?x=1&y".parse().unwrap();
        assert_eq!(
            with_path(&uri, "/metrics/job/j").unwrap(),
            "/metrics/job/j?x=1&y"
        );
        let uri: http::Uri = "http://gw:9292/metrics/job/j/a/".parse().unwrap();
        assert_eq!(
            with_path(&uri, "/metrics/job/j").unwrap(),
            "http://gw:9292/metrics/job/j"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.append(header::TE, HeaderValue::from_static("trailers"));
        headers.append(header::TE, HeaderValue::from_static("gzip"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert(header::HOST, HeaderValue::from_static("gateway:9292"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        let mut out = headers;
        strip_hop_headers(&mut out);
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(out.contains_key(header::CONTENT_TYPE));
        assert!(out.contains_key(header::CONTENT_ENCODING));
        // Overwritten for the upstream / still equal to the whole body's length.
        assert!(out.contains_key(header::HOST));
        assert!(out.contains_key(header::CONTENT_LENGTH));
    }
}
