//! `/metrics/job/...`: parse the grouping key, find its owner on the ring, then proxy, redirect, or (GET) say
//! who the owner is.

use std::cell::RefCell;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::{json, text, text_lines, AppState};
use crate::body_budget::{self, BodyError};
use crate::config::{Config, Mode};
use crate::grouping::{self, GroupingKey};
use crate::node_route::NodeRoute;
use crate::ring::Algorithm;
use crate::telemetry::{ErrorLabels, NodeLabels};
use crate::upstream::{self, UpstreamError};

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
    let path = request.uri().path();
    if !is_push_path(path) {
        return text(StatusCode::NOT_FOUND, format!("404 page not found: {path}"));
    }
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

/// `/metrics/job` itself is a 404 on the Pushgateway; everything below it is ours to parse.
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
        } => return proxy(state, request, &key, owner, successor).await,
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
    },
}

/// Everything before the first await: parse, look up the owner, and answer unless the push is to be proxied.
fn route(state: &AppState, request: Request<Body>) -> Routed {
    let method = request.method();
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
    let raw_path = request.uri().path();
    let key = match grouping::parse_push_path(raw_path) {
        Ok(key) => key,
        Err(error) => return Routed::Answered(rejected(&error)),
    };
    let config = state.config.load();
    let table = state.ring.load();
    let proxying = config.mode == Mode::Proxy && *method != Method::GET;
    let wants_successor = proxying && config.proxy.retry;
    let lookup = |ring_key: &[u8]| {
        let owner = table.ring.owner_index(ring_key);
        let successor = wants_successor
            .then(|| table.ring.successor_index(ring_key))
            .flatten();
        (owner, successor)
    };
    let (owner, successor) = match table.ring.algorithm() {
        Algorithm::Rendezvous => RING_KEY.with_borrow_mut(|buffer| {
            key.write_ring_key(buffer);
            lookup(buffer)
        }),
        Algorithm::GoCompatible => match grouping::decoded_path(raw_path) {
            Ok(path) => lookup(path.as_bytes()),
            Err(error) => return Routed::Answered(rejected(&error)),
        },
    };
    let Some(owner) = owner.and_then(|index| table.routes.get(index)) else {
        return Routed::Answered(no_healthy_node());
    };
    if key.has_empty_label_value() {
        tracing::debug!(grouping_key = %key, "grouping key has an empty label value; it is a different group from one without that label");
    }
    if !proxying {
        return Routed::Answered(if *method == Method::GET {
            owner_info(&request, &key, &owner.name)
        } else {
            redirect(&request, &owner.name)
        });
    }
    Routed::Proxy {
        owner: owner.clone(),
        successor: successor.and_then(|index| table.routes.get(index)).cloned(),
        request,
        key,
    }
}

fn rejected(error: &grouping::GroupingKeyError) -> Response<Body> {
    let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = text(status, error.to_string());
    if let Some(location) = error
        .redirect_location()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
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
fn owner_info(request: &Request<Body>, key: &GroupingKey, owner: &str) -> Response<Body> {
    let url = format!("http://{owner}{}", request.uri().path());
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

fn redirect(request: &Request<Body>, owner: &str) -> Response<Body> {
    const SCHEME: &str = "http://";
    const BODY_PREFIX: &str = "Temporary Redirect: ";
    let target = path_and_query(request);
    // One buffer holds the body; the Location header shares its tail (no second copy, no formatting machinery).
    let mut body =
        String::with_capacity(BODY_PREFIX.len() + SCHEME.len() + owner.len() + target.len() + 1);
    body.push_str(BODY_PREFIX);
    body.push_str(SCHEME);
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
) -> (Response<Body>, Option<Arc<NodeRoute>>) {
    let config = state.config.load();
    match proxy_to(state, &config, request, key, owner, successor).await {
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

    // While the rebalancer moves groups, a push of a group being moved waits for the move and then wins over it.
    let _permit = state
        .rebalance
        .coordinator
        .push_permit(|| key.ring_key())
        .await;
    let mut node = owner;
    let mut retry_on = successor;
    loop {
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
            Ok(response) => return Ok((response, node)),
            Err(error) => {
                let name = &node.name;
                tracing::warn!(node = %name, grouping_key = %key, %error, "push could not reach its node");
                state.suspects.report(name);
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

async fn forward(
    state: &AppState,
    config: &Config,
    method: &Method,
    target: Option<&PathAndQuery>,
    headers: HeaderMap,
    body: Bytes,
    node: &NodeRoute,
) -> Result<Response<Body>, UpstreamError> {
    let started = Instant::now();
    let result = match &node.pool {
        Some(pool) if config.proxy.per_node_pool => {
            // Origin-form (`/path?query`): the node's pool connects to it and sets `Host`.
            let mut upstream_request = Request::new(Full::new(body));
            *upstream_request.method_mut() = method.clone();
            *upstream_request.uri_mut() = target
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
                .into();
            *upstream_request.headers_mut() = headers;
            let timeout = config.proxy.upstream_timeout;
            // Boxed: the exchange holds a whole connection, and inline it would enlarge this future, and so
            // the shared client's path too (+900 instructions per push in callgrind).
            Box::pin(tokio::time::timeout(
                timeout,
                pool.send(upstream_request, config.proxy.connect_timeout),
            ))
            .await
            .unwrap_or(Err(UpstreamError::Timeout(timeout)))
        }
        _ => match node.upstream_uri(target) {
            Some(uri) => {
                let mut upstream_request = Request::new(Full::new(body));
                *upstream_request.method_mut() = method.clone();
                *upstream_request.uri_mut() = uri;
                let mut headers = headers;
                // hyper-util's client keeps a `Host` it is given; without one it sets the node's.
                headers.remove(header::HOST);
                *upstream_request.headers_mut() = headers;
                upstream::send(
                    &state.client,
                    upstream_request,
                    config.proxy.upstream_timeout,
                )
                .await
            }
            None => Err(UpstreamError::Request(format!(
                "node address {:?} is not a valid host:port",
                node.name
            ))),
        },
    };
    match result {
        Ok(upstream_response) => {
            node.upstream_duration(&state.metrics.upstream_duration)
                .observe(started.elapsed().as_secs_f64());
            let (parts, body) = upstream_response.into_parts();
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
            Err(error)
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
