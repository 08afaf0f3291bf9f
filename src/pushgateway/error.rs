//! [`NodeError`]: why a conversation with a Pushgateway did not give the caller what it asked for;
//! [`RequestError`]: the same, with the request it was about.

use std::time::Duration;

use http::{Method, StatusCode};

/// Why a request to a node got no usable response: it could not be sent, its answer did not come (or broke
/// off), or the answer was one the caller cannot use.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection broke after (some of) the request was sent: the node may still apply it.
    #[error("connection failed before a response: {0}")]
    Reset(String),
    #[error("invalid request: {0}")]
    Request(String),
    /// The node answered, but not with a success; `body` is its own explanation, trimmed.
    #[error("answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    /// A successful answer whose body is not what the endpoint returns.
    #[error("unusable answer: {0}")]
    Decode(String),
}

/// A [`NodeError`] with the request it answered, for callers that make many requests to many nodes (the
/// rebalancer, the repair of ambiguous writes) and log which one failed.
#[derive(Debug, thiserror::Error)]
#[error("{method} {node}{path}: {source}")]
pub struct RequestError {
    pub method: Method,
    pub node: String,
    pub path: String,
    pub source: NodeError,
}

impl RequestError {
    pub fn new(method: Method, node: &str, path: &str, source: NodeError) -> RequestError {
        RequestError {
            method,
            node: node.to_string(),
            path: path.to_string(),
            source,
        }
    }

    /// The node's non-success status, when it answered with one.
    pub fn status(&self) -> Option<StatusCode> {
        match &self.source {
            NodeError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl NodeError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeError::Timeout(_) => "timeout",
            NodeError::Connect(_) => "connect",
            NodeError::Reset(_) => "reset",
            NodeError::Request(_) => "request",
            NodeError::Status { .. } => "status",
            NodeError::Decode(_) => "body",
        }
    }

    /// The request may have reached the node, which may still apply it later.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, NodeError::Timeout(_) | NodeError::Reset(_))
    }

    /// The node itself failed (as opposed to a request the gateway could not build).
    pub fn is_node_failure(&self) -> bool {
        !matches!(self, NodeError::Request(_))
    }

    /// The node answered, but not with what was asked for (as opposed to no answer at all).
    pub fn is_answer(&self) -> bool {
        matches!(self, NodeError::Status { .. } | NodeError::Decode(_))
    }

    /// A non-success answer, with the node's body trimmed.
    pub(crate) fn status(status: StatusCode, body: &[u8]) -> NodeError {
        NodeError::Status {
            status,
            body: String::from_utf8_lossy(body).trim().to_string(),
        }
    }

    pub(crate) fn from_client_error(err: hyper_util::client::legacy::Error) -> NodeError {
        // Show the root cause; hyper-util's own message is just "client error (Connect)".
        let mut cause = err.to_string();
        let mut tls_failure = false;
        let mut source = std::error::Error::source(&err);
        while let Some(inner) = source {
            cause = inner.to_string();
            tls_failure |= is_tls_error(inner);
            source = inner.source();
        }
        if err.is_connect() && tls_failure {
            NodeError::Connect(tls_message(&cause))
        } else if err.is_connect() {
            NodeError::Connect(cause)
        } else {
            NodeError::Reset(cause)
        }
    }
}

/// rustls' error reaches hyper-util wrapped in `io::Error`s (two, via hyper-rustls), whose `source` skips it.
fn is_tls_error(error: &(dyn std::error::Error + 'static)) -> bool {
    if error.is::<rustls::Error>() {
        return true;
    }
    error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
        .is_some_and(|inner| is_tls_error(inner))
}

/// A failed TLS handshake, with where to fix it: the node's certificate, or `pushgateway.tls_config`.
pub(crate) fn tls_message(cause: &str) -> String {
    format!(
        "TLS handshake failed: {cause} (check the node's certificate and pushgateway.tls_config)"
    )
}

/// hyper's own message names only the category ("connection error"); the innermost cause says what happened.
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    cause
}
