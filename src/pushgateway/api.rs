//! The Pushgateway API calls the gateway makes of its own accord (pushes from clients go through
//! [`forward`](super::forward)): health probes, the read side's fan-out, the rebalancer's listings, copies and
//! deletes, and the repairs' writes. Each builds its URL with the current scheme, sends the gateway's
//! credentials, and turns an answer that is not a success into [`NodeError::Status`].

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request};
use http_body_util::Full;

use super::client::{send, HttpClient};
use super::error::NodeError;

/// The exposition format the gateway writes itself (the rebalancer's copies).
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Pushgateway 1.5.1 would answer protobuf to a client preferring it; the gateway reads text only.
const ACCEPT_TEXT: &str = "text/plain; version=0.0.4";

/// `GET /-/healthy`: `Ok` when the node answers with a success.
pub async fn healthy(client: &HttpClient, node: &str, timeout: Duration) -> Result<(), NodeError> {
    call(client, node, Method::GET, "/-/healthy", None, timeout)
        .await
        .map(drop)
}

/// A read the gateway fans out to its nodes; its answer's body is what the caller combines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// `GET /metrics`: the node's exposition (text format).
    Metrics,
    /// `GET /api/v1/metrics`: the node's groups, as JSON.
    Groups,
    /// `GET /api/v1/status`: the node's own status, as JSON.
    Status,
    /// `PUT /api/v1/admin/wipe`: deletes every group (the admin API).
    Wipe,
}

impl Read {
    /// The endpoint's path, also the `path` label of the read metrics.
    pub const fn path(self) -> &'static str {
        match self {
            Read::Metrics => "/metrics",
            Read::Groups => "/api/v1/metrics",
            Read::Status => "/api/v1/status",
            Read::Wipe => "/api/v1/admin/wipe",
        }
    }

    fn method(self) -> Method {
        match self {
            Read::Wipe => Method::PUT,
            _ => Method::GET,
        }
    }
}

/// `read` on `node` within `timeout`: the body of its successful answer.
pub async fn read(
    client: &HttpClient,
    node: &str,
    read: Read,
    timeout: Duration,
) -> Result<Bytes, NodeError> {
    call(
        client,
        node,
        read.method(),
        read.path(),
        Some(ACCEPT_TEXT),
        timeout,
    )
    .await
}

/// `GET /api/v1/metrics`: every group on `node` with its metrics, as the Pushgateway's JSON.
pub async fn list_groups(
    client: &HttpClient,
    node: &str,
    timeout: Duration,
) -> Result<Bytes, NodeError> {
    read(client, node, Read::Groups, timeout).await
}

/// A group's body written to a node (`PUT` replaces the group, `POST` replaces the metric families it names).
pub struct GroupWrite<'a> {
    pub method: Method,
    /// The push path (`/metrics/job/...`), with the client's query if any.
    pub path_and_query: &'a str,
    /// `None` sends no `Content-Type` (the Pushgateway then reads the text format).
    pub content_type: Option<HeaderValue>,
    pub content_encoding: Option<HeaderValue>,
    pub body: Bytes,
}

/// Writes a group's body to `node`.
pub async fn write_group(
    client: &HttpClient,
    node: &str,
    write: GroupWrite<'_>,
    timeout: Duration,
) -> Result<(), NodeError> {
    let mut request = Request::builder()
        .method(write.method)
        .uri(client.node_url(node, write.path_and_query))
        .body(Full::new(write.body))
        .map_err(|e| NodeError::Request(e.to_string()))?;
    let headers = request.headers_mut();
    if let Some(content_type) = write.content_type {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    if let Some(encoding) = write.content_encoding {
        headers.insert(header::CONTENT_ENCODING, encoding);
    }
    answer(send(client, request, timeout).await?).map(drop)
}

/// `DELETE` of the group at push path `path` on `node`.
pub async fn delete_group(
    client: &HttpClient,
    node: &str,
    path: &str,
    timeout: Duration,
) -> Result<(), NodeError> {
    call(client, node, Method::DELETE, path, None, timeout)
        .await
        .map(drop)
}

async fn call(
    client: &HttpClient,
    node: &str,
    method: Method,
    path: &str,
    accept: Option<&'static str>,
    timeout: Duration,
) -> Result<Bytes, NodeError> {
    let mut request = Request::builder()
        .method(method)
        .uri(client.node_url(node, path))
        .body(Full::new(Bytes::new()))
        .map_err(|e| NodeError::Request(e.to_string()))?;
    if let Some(accept) = accept {
        request
            .headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static(accept));
    }
    answer(send(client, request, timeout).await?)
}

/// Any 2xx is a success (the Pushgateway answers `PUT` with 200, `DELETE` with 202).
fn answer(response: http::Response<Bytes>) -> Result<Bytes, NodeError> {
    if response.status().is_success() {
        Ok(response.into_body())
    } else {
        Err(NodeError::status(response.status(), response.body()))
    }
}
