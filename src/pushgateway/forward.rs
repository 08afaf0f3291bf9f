//! Forwarding a client's request to a node: the push path's half of the conversation. Which node, retries,
//! metrics and what the client is told stay with the caller (`gateway/push.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::uri::PathAndQuery;
use http::{Method, Request, Response};
use http_body_util::Full;

use super::client::{exchange, HttpClient};
use super::error::NodeError;
use super::pool::NodePool;

/// One forwarded request to a node, under way. Boxed (and owning what it uses) so that a timed-out exchange
/// can be handed to a background task; the box also keeps a whole connection out of the caller's future.
pub type Exchange = Pin<Box<dyn Future<Output = Result<Response<Bytes>, NodeError>> + Send>>;

/// A client's request as it goes to a node: its hop-by-hop headers already removed.
pub struct Forwarded<'a> {
    pub method: &'a Method,
    /// `None` for `/`.
    pub target: Option<&'a PathAndQuery>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How to reach the node: its own pool of connections (`proxy.per_node_pool`), or the shared client.
#[derive(Clone, Copy)]
pub struct Route<'a> {
    /// The node's pool (and address); `None` when the node's name is not a valid address.
    pub pool: Option<&'a Arc<NodePool>>,
    /// The node's name, for the error when it has no address.
    pub name: &'a str,
    pub per_node_pool: bool,
    /// `proxy.connect_timeout`, for the pool's connects (the shared client has its own).
    pub connect_timeout: Duration,
}

/// Starts sending `request` to the node of `route`, with the current transport's scheme, TLS and credentials.
/// Nothing is sent until the returned exchange is polled; it has no timeout of its own.
pub fn start(
    client: &HttpClient,
    route: Route<'_>,
    request: Forwarded<'_>,
) -> Result<Exchange, NodeError> {
    let Forwarded {
        method,
        target,
        headers,
        body,
    } = request;
    match route.pool {
        Some(pool) if route.per_node_pool => {
            // Origin-form (`/path?query`): the node's pool connects to it and sets `Host`.
            let mut node_request = Request::new(Full::new(body));
            *node_request.method_mut() = method.clone();
            *node_request.uri_mut() = target
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
                .into();
            *node_request.headers_mut() = headers;
            let pool = pool.clone();
            let connect_timeout = route.connect_timeout;
            // The pool sets the gateway's own `Authorization` (if any) and speaks TLS for https.
            let transport = client.transport();
            Ok(Box::pin(async move {
                pool.send(node_request, connect_timeout, transport).await
            }))
        }
        _ => match route
            .pool
            .and_then(|pool| pool.address().uri(client.transport().scheme, target))
        {
            Some(uri) => {
                let mut node_request = Request::new(Full::new(body));
                *node_request.method_mut() = method.clone();
                *node_request.uri_mut() = uri;
                let mut headers = headers;
                // hyper-util's client keeps a `Host` it is given; without one it sets the node's.
                headers.remove(header::HOST);
                *node_request.headers_mut() = headers;
                let client = client.clone();
                Ok(Box::pin(
                    async move { exchange(&client, node_request).await },
                ))
            }
            None => Err(NodeError::Request(format!(
                "node address {:?} is not a valid host:port",
                route.name
            ))),
        },
    }
}
