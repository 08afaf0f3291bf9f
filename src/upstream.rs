//! The pooled HTTP/1.1 client used to talk to Pushgateways (proxying, probes, read fan-out).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A keep-alive pooled client; cloning shares the pool.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the shared client. Idle connections are kept for 90 s, as in Go's default transport.
pub fn new_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// Why a request to a node got no usable response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connection failed before a response: {0}")]
    Reset(String),
    #[error("invalid request: {0}")]
    Request(String),
}

impl UpstreamError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Reset(_) => "reset",
            UpstreamError::Request(_) => "request",
        }
    }

    /// The request may have reached the node, which may still apply it later.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, UpstreamError::Timeout(_) | UpstreamError::Reset(_))
    }

    /// The node itself failed (as opposed to a request the gateway could not build).
    pub fn is_node_failure(&self) -> bool {
        !matches!(self, UpstreamError::Request(_))
    }

    pub(crate) fn from_client_error(err: hyper_util::client::legacy::Error) -> UpstreamError {
        // Show the root cause; hyper-util's own message is just "client error (Connect)".
        let mut cause = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(inner) = source {
            cause = inner.to_string();
            source = inner.source();
        }
        if err.is_connect() {
            UpstreamError::Connect(cause)
        } else {
            UpstreamError::Reset(cause)
        }
    }
}

/// Sends `request` and reads the whole response, however long that takes.
pub async fn exchange(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
) -> Result<http::Response<Bytes>, UpstreamError> {
    let response = client
        .request(request)
        .await
        .map_err(UpstreamError::from_client_error)?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| UpstreamError::Reset(e.to_string()))?
        .to_bytes();
    Ok(http::Response::from_parts(parts, body))
}

/// Sends `request` and reads the whole response within `timeout`.
pub async fn send(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<http::Response<Bytes>, UpstreamError> {
    tokio::time::timeout(timeout, exchange(client, request))
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
}

/// `GET http://<node><path>` within `timeout`.
pub async fn get(
    client: &HttpClient,
    node: &str,
    path_and_query: &str,
    timeout: Duration,
) -> Result<http::Response<Bytes>, UpstreamError> {
    let request = http::Request::get(format!("http://{node}{path_and_query}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| UpstreamError::Request(e.to_string()))?;
    send(client, request, timeout).await
}
