//! A per-node pool of HTTP/1.1 connections for the push path, driven by the request handler itself.
//!
//! hyper-util's legacy client (still used by probes, reads and the rebalancer, see [`super::client`]) keeps one
//! pool behind a global mutex, hashes a pool key per request, and runs every connection in its own task: a push
//! is handed to that task over a channel and its response comes back over a oneshot, two cross-task wake-ups per
//! push. Here each [`NodeRoute`](crate::node_route::NodeRoute) owns a [`NodePool`], so picking the pool is free
//! once the owner is known, and the handler that checked a connection out polls hyper's `Connection` future
//! itself, together with its own request and response body, until the exchange is over.
//!
//! Consequences of nobody polling idle connections:
//! - A connection the node closed while idle is noticed at its next use. The handler polls the connection
//!   before anything else, so a close that has already arrived ends it before the request is written; hyper then
//!   hands the request back unsent and it is sent again on another connection. A request that may have been sent
//!   is never repeated here: that failure is returned, and the caller's own retry policy applies.
//! - Idle connections are dropped lazily once older than [`IDLE_TIMEOUT`] (as Go's default transport), and at
//!   most [`MAX_IDLE_PER_NODE`] are kept per node.
//! - A handler future dropped mid-exchange (client gone, timeout) drops its connection with it: a connection
//!   returns to the pool only after a complete exchange that left it ready for the next request.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Body as _;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::address::NodeAddress;
use super::client::Transport;
use super::error::{root_cause, tls_message, NodeError};

/// Idle connections older than this are closed instead of reused (Go's `http.DefaultTransport` uses 90 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections are kept per node (as the legacy client's `pool_max_idle_per_host`).
pub const MAX_IDLE_PER_NODE: usize = 256;

type Driver = http1::Connection<TokioIo<NodeStream>, Full<Bytes>>;

/// One HTTP/1.1 connection: the handle requests are sent through and the future that does the I/O.
struct PooledConnection {
    sender: http1::SendRequest<Full<Bytes>>,
    /// `None` once the connection has ended (closed by the node, or failed).
    driver: Option<Driver>,
    /// The [`Transport`] it was opened under: after a reload (scheme, TLS or credentials may have changed) it
    /// is not reused.
    generation: u64,
}

/// A connection to a node: plain TCP or TLS (`pushgateway.scheme: https`). The TLS stream is boxed so that a
/// plain connection does not carry the size of a rustls session.
enum NodeStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for NodeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            NodeStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            NodeStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            NodeStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            NodeStream::Plain(stream) => stream.is_write_vectored(),
            NodeStream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            NodeStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            NodeStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

struct IdleConnection {
    connection: PooledConnection,
    since: Instant,
}

/// Keep-alive connections to one node. Each node has its own lock, held only to push or pop one entry.
pub struct NodePool {
    /// Where to connect to.
    address: NodeAddress,
    /// The `Host` header of every request (the node's address).
    host_header: Option<HeaderValue>,
    /// Most recently returned last: checkouts take the warmest connection.
    idle: Mutex<Vec<IdleConnection>>,
}

/// How an exchange on one connection failed.
enum ExchangeError {
    /// The connection was already closed: hyper gave the request back without writing any of it.
    NotSent(Box<Request<Full<Bytes>>>),
    /// The request may have reached the node; it must not be sent again here.
    Failed(NodeError),
}

impl NodePool {
    pub fn new(address: NodeAddress) -> NodePool {
        NodePool {
            host_header: HeaderValue::from_str(address.as_str()).ok(),
            address,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The node this pool connects to.
    pub fn address(&self) -> &NodeAddress {
        &self.address
    }

    /// How many idle connections the pool holds now (for tests and diagnostics).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    /// Sends `request` (origin-form URI: path and query only) with `transport`'s scheme and credentials, and
    /// reads the whole response. No overall timeout: the caller bounds the exchange; a connect (with its TLS
    /// handshake) is bounded by `connect_timeout`.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
        connect_timeout: Duration,
        transport: Arc<Transport>,
    ) -> Result<Response<Bytes>, NodeError> {
        if let Some(host) = &self.host_header {
            request.headers_mut().insert(header::HOST, host.clone());
        }
        transport.authorize(request.headers_mut());
        // Let every other task the runtime woke in this turn run first, so that the requests of all pushes read
        // together are written together, as they were when connection tasks ran after the handlers. Writing
        // each at once wakes the node (and, later, the client) once per push instead of once per batch: on the
        // benchmark machine that cost more kernel CPU (+14-20% per push) than the handler saved (bench/PROFILING.md).
        tokio::task::yield_now().await;
        loop {
            let (connection, reused) = match self.checkout(transport.generation()) {
                Some(connection) => (connection, true),
                None => (self.connect(connect_timeout, &transport).await?, false),
            };
            match self.exchange(connection, request).await {
                Ok(response) => return Ok(response),
                // A pooled connection the node had closed: try the next one, or a new one. This terminates,
                // since every pass takes one connection out of the pool for good.
                Err(ExchangeError::NotSent(unsent)) if reused => request = *unsent,
                Err(ExchangeError::NotSent(_)) => {
                    return Err(NodeError::Reset(
                        "new connection closed before the request was sent".to_string(),
                    ))
                }
                Err(ExchangeError::Failed(error)) => return Err(error),
            }
        }
    }

    /// Takes the most recently used idle connection that is young enough and was opened under transport
    /// `generation`, dropping expired ones.
    fn checkout(&self, generation: u64) -> Option<PooledConnection> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let found = {
            let mut idle = self.idle.lock().ok()?;
            loop {
                match idle.pop() {
                    None => break None,
                    Some(entry) if entry.connection.generation != generation => expired.push(entry),
                    Some(entry) if now.duration_since(entry.since) < IDLE_TIMEOUT => {
                        break Some(entry.connection)
                    }
                    // Entries below are older still: all of them have expired.
                    Some(entry) => {
                        expired.push(entry);
                        expired.append(&mut idle);
                    }
                }
            }
        };
        // Closing sockets outside the lock.
        drop(expired);
        found
    }

    /// Returns a connection after a complete exchange; expired entries at the bottom are dropped on the way.
    fn checkin(&self, connection: PooledConnection) {
        let now = Instant::now();
        let mut rejected = Vec::new();
        if let Ok(mut idle) = self.idle.lock() {
            if idle
                .first()
                .is_some_and(|oldest| now.duration_since(oldest.since) >= IDLE_TIMEOUT)
            {
                let fresh_from = idle
                    .iter()
                    .position(|entry| now.duration_since(entry.since) < IDLE_TIMEOUT)
                    .unwrap_or(idle.len());
                rejected.extend(idle.drain(..fresh_from));
            }
            if idle.len() < MAX_IDLE_PER_NODE {
                idle.push(IdleConnection {
                    connection,
                    since: now,
                });
            } else {
                rejected.push(IdleConnection {
                    connection,
                    since: now,
                });
            }
        }
        drop(rejected);
    }

    async fn connect(
        &self,
        connect_timeout: Duration,
        transport: &Transport,
    ) -> Result<PooledConnection, NodeError> {
        match tokio::time::timeout(connect_timeout, self.open(transport)).await {
            Ok(result) => result,
            Err(_) => Err(NodeError::Connect(format!(
                "no connection within {connect_timeout:?} (proxy.connect_timeout)"
            ))),
        }
    }

    /// TCP connect, the TLS handshake when the scheme is https, then the HTTP/1.1 handshake.
    async fn open(&self, transport: &Transport) -> Result<PooledConnection, NodeError> {
        let address = (self.address.host(), self.address.port());
        let stream = TcpStream::connect(address)
            .await
            .map_err(|error| NodeError::Connect(error.to_string()))?;
        // Pushes are one small write each: Nagle's algorithm would only delay them.
        stream
            .set_nodelay(true)
            .map_err(|error| NodeError::Connect(format!("cannot set TCP_NODELAY: {error}")))?;
        let stream = match transport.tls_for(self.address.host()) {
            None => NodeStream::Plain(stream),
            Some(tls) => {
                let (connector, name) = tls?;
                let stream = connector
                    .connect(name, stream)
                    .await
                    .map_err(|error| NodeError::Connect(tls_message(&root_cause(&error))))?;
                NodeStream::Tls(Box::new(stream))
            }
        };
        let (sender, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| NodeError::Connect(root_cause(&error)))?;
        Ok(PooledConnection {
            sender,
            driver: Some(driver),
            generation: transport.generation(),
        })
    }

    /// One request and its whole response on `connection`, polling the connection alongside; then the
    /// connection goes back to the pool if it is ready for another request.
    async fn exchange(
        &self,
        mut connection: PooledConnection,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, ExchangeError> {
        // Polled before the request is queued: a close that arrived while idle ends the connection now, and
        // hyper then returns the request unsent instead of writing it into a dead socket.
        poll_fn(|cx| {
            connection.poll_driver(cx);
            Poll::Ready(())
        })
        .await;
        let mut response_future = pin!(connection.sender.try_send_request(request));
        let response = poll_fn(|cx| {
            connection.poll_driver(cx);
            response_future.as_mut().poll(cx)
        })
        .await;
        let response = match response {
            Ok(response) => response,
            Err(mut error) => {
                return Err(match error.take_message() {
                    Some(unsent) => ExchangeError::NotSent(Box::new(unsent)),
                    None => ExchangeError::Failed(NodeError::Reset(root_cause(error.error()))),
                })
            }
        };
        let (parts, mut body) = response.into_parts();
        let mut collected = Vec::new();
        loop {
            // hyper usually has the whole (small) body in hand by the time the head is parsed: ask the body
            // first and do the connection's I/O only when it has to wait.
            let frame = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(frame) => Poll::Ready(frame),
                Poll::Pending => {
                    connection.poll_driver(cx);
                    Pin::new(&mut body).poll_frame(cx)
                }
            })
            .await;
            match frame {
                None => break,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        collected.push(data);
                    }
                }
                Some(Err(error)) => {
                    return Err(ExchangeError::Failed(NodeError::Reset(root_cause(&error))))
                }
            }
        }
        drop(body);
        if !connection.sender.is_ready() {
            // One more turn lets hyper finish the message and make the connection idle (ready for the next
            // request); a connection still not ready after it is not kept.
            poll_fn(|cx| {
                connection.poll_driver(cx);
                Poll::Ready(())
            })
            .await;
        }
        if connection.driver.is_some() && connection.sender.is_ready() {
            self.checkin(connection);
        }
        // The same for the answers to the clients: batched behind the other handlers of this turn.
        tokio::task::yield_now().await;
        Ok(Response::from_parts(parts, concat(collected)))
    }
}

impl PooledConnection {
    /// Lets hyper do the connection's I/O; drops the connection future once it has ended, which also fails
    /// (or, if not yet written, hands back) a request still queued on it.
    fn poll_driver(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = self.driver.as_mut() {
            if let Poll::Ready(result) = Pin::new(driver).poll(cx) {
                if let Err(error) = result {
                    tracing::debug!(%error, "upstream connection ended");
                }
                self.driver = None;
            }
        }
    }
}

/// A body is nearly always one chunk: avoid the copy then.
fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => chunks.concat().into(),
    }
}
