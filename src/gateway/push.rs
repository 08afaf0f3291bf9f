//! `/metrics/job/...`: parse the grouping key, find its owner on the ring, then proxy, redirect, or (GET) say
//! who the owner is.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};

use super::{json, text, AppState};
use crate::config::{Config, Mode};
use crate::grouping::{self, GroupingKey};
use crate::ring::Algorithm;
use crate::telemetry::{ErrorLabels, MethodLabel, NodeLabels, RequestLabels};
use crate::upstream::{self, UpstreamError};

/// The response header naming the node that served a proxied push.
pub const NODE_HEADER: &str = "x-dynamic-sharding-node";
const ALLOW: &str = "DELETE, GET, OPTIONS, POST, PUT";

/// Entry point for every path no other route claimed.
pub async fn dispatch(State(state): State<AppState>, request: Request<Body>) -> Response<Body> {
    let path = request.uri().path();
    if !is_push_path(path) {
        return text(StatusCode::NOT_FOUND, format!("404 page not found: {path}"));
    }
    let method = request.method().clone();
    let response = handle(&state, request).await;
    let served_by = response
        .headers()
        .get(NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(Arc::<str>::from)
        .unwrap_or_else(|| Arc::from(""));
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method: MethodLabel::from(&method),
            code: response.status().as_u16(),
            node: served_by,
        })
        .inc();
    response
}

/// `/metrics/job` itself is a 404 on the Pushgateway; everything below it is ours to parse.
fn is_push_path(path: &str) -> bool {
    match path.strip_prefix("/metrics/job") {
        Some(rest) => rest.starts_with('/') || rest.starts_with("@base64/"),
        None => false,
    }
}

async fn handle(state: &AppState, request: Request<Body>) -> Response<Body> {
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
        return response;
    }
    if *method == Method::OPTIONS {
        let mut response = text(StatusCode::OK, "");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        return response;
    }
    let raw_path = request.uri().path();
    let key = match grouping::parse_push_path(raw_path) {
        Ok(key) => key,
        Err(error) => return rejected(&error),
    };
    let config = state.config.load();
    let table = state.ring.load();
    let ring_key = match table.ring.algorithm() {
        Algorithm::Rendezvous => key.ring_key(),
        Algorithm::GoCompatible => match grouping::decoded_path(raw_path) {
            Ok(path) => path.as_bytes().to_vec(),
            Err(error) => return rejected(&error),
        },
    };
    let Some(owner) = table.ring.owner(&ring_key) else {
        return no_healthy_node();
    };
    if key.has_empty_label_value() {
        tracing::debug!(grouping_key = %key, "grouping key has an empty label value; it is a different group from one without that label");
    }
    match (request.method(), config.mode) {
        (&Method::GET, _) => owner_info(&request, &key, owner),
        (_, Mode::Redirect) => redirect(&request, owner),
        (_, Mode::Proxy) => {
            let successor = if config.proxy.retry {
                table.ring.successor(&ring_key).map(str::to_owned)
            } else {
                None
            };
            let owner = owner.to_owned();
            drop(table);
            proxy(state, &config, request, &key, owner, successor).await
        }
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
    let location = format!("http://{owner}{}", path_and_query(request));
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            let mut response = text(
                StatusCode::TEMPORARY_REDIRECT,
                format!("Temporary Redirect: {location}"),
            );
            response.headers_mut().insert(header::LOCATION, value);
            response
        }
        Err(_) => text(
            StatusCode::BAD_REQUEST,
            "request path cannot be used in a Location header",
        ),
    }
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 section 7.6.1), plus those we recompute.
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
            | "host"
            | "content-length"
    )
}

fn end_to_end_headers(headers: &HeaderMap) -> HeaderMap {
    // Headers named in `Connection` are hop-by-hop too.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !is_hop_header(name) && !listed.contains(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

async fn proxy(
    state: &AppState,
    config: &Config,
    request: Request<Body>,
    key: &GroupingKey,
    owner: String,
    successor: Option<String>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let limit = usize::try_from(config.proxy.max_body_size).unwrap_or(usize::MAX);
    let body = match tokio::time::timeout(
        config.proxy.client_body_timeout,
        Limited::new(body, limit).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) if error.is::<LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {limit} bytes (proxy.max_body_size)"),
            )
        }
        Ok(Err(error)) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {error}"),
            )
        }
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {} (proxy.client_body_timeout)",
                    humantime::format_duration(config.proxy.client_body_timeout)
                ),
            )
        }
    };
    let headers = end_to_end_headers(&parts.headers);
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());

    // While the rebalancer moves groups, a push of a group being moved waits for the move and then wins over it.
    let _permit = state
        .rebalance
        .coordinator
        .push_permit(|| key.ring_key())
        .await;
    let mut node = owner;
    let mut retry_on = successor;
    loop {
        match forward(
            state,
            config,
            &parts.method,
            target,
            &headers,
            body.clone(),
            &node,
        )
        .await
        {
            Ok(response) => return response,
            Err(error) => {
                tracing::warn!(%node, grouping_key = %key, %error, "push could not reach its node");
                state.suspects.report(&node);
                match retry_on.take() {
                    Some(next) => {
                        state
                            .metrics
                            .retries
                            .get_or_create(&NodeLabels {
                                node: Arc::from(node.as_str()),
                            })
                            .inc();
                        tracing::info!(from = %node, to = %next, grouping_key = %key, "retrying push on the next node");
                        node = next;
                    }
                    None => {
                        return text(
                            StatusCode::BAD_GATEWAY,
                            format!("Pushgateway {node} could not be reached: {error}"),
                        )
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
    target: &str,
    headers: &HeaderMap,
    body: Bytes,
    node: &str,
) -> Result<Response<Body>, UpstreamError> {
    let mut builder = Request::builder()
        .method(method.clone())
        .uri(format!("http://{node}{target}"));
    if let Some(out_headers) = builder.headers_mut() {
        out_headers.clone_from(headers);
    }
    let upstream_request = builder
        .body(Full::new(body))
        .map_err(|e| UpstreamError::Request(e.to_string()))?;
    let node_label: Arc<str> = Arc::from(node);
    let started = Instant::now();
    let result = upstream::send(
        &state.client,
        upstream_request,
        config.proxy.upstream_timeout,
    )
    .await;
    match result {
        Ok(upstream_response) => {
            state
                .metrics
                .upstream_duration
                .get_or_create(&NodeLabels { node: node_label })
                .observe(started.elapsed().as_secs_f64());
            let (parts, body) = upstream_response.into_parts();
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = parts.status;
            *response.headers_mut() = end_to_end_headers(&parts.headers);
            if let Ok(value) = HeaderValue::from_str(node) {
                response.headers_mut().insert(NODE_HEADER, value);
            }
            Ok(response)
        }
        Err(error) => {
            state
                .metrics
                .upstream_errors
                .get_or_create(&ErrorLabels {
                    node: node_label,
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
        headers.insert(header::HOST, HeaderValue::from_static("gateway:9292"));
        let out = end_to_end_headers(&headers);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out.contains_key(header::CONTENT_TYPE));
        assert!(out.contains_key(header::CONTENT_ENCODING));
    }
}
