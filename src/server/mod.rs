//! Serving HTTP: binding the listener, the accept loop (connection cap, accept errors), one hyper HTTP/1
//! connection per accepted socket (header-read and idle timeouts), and graceful shutdown. `app.rs` only wires a
//! service into it.
//!
//! With `--web.config.file` ([`web_config`], [`Security`]): a TLS handshake (tokio-rustls) between accepting a
//! socket and serving it, and basic authentication of every request before the gateway's service sees it.

use std::convert::Infallible;
use std::future::Future;
use std::io::ErrorKind;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use futures_util::future::{BoxFuture, Either};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tower::util::Oneshot;

use crate::authorization::User;
use crate::config::WebConfig;
use crate::shutdown::Shutdown;
use crate::telemetry::{LogInterval, ServerMetrics};

mod security;
mod timeouts;
pub mod web_config;
pub use security::Security;
use timeouts::{RequestCount, Timeouts};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source} (is another process using the port?)")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Binds the listening socket (`addr` as `normalize_listen_addr` returns it).
pub async fn bind(addr: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Accept errors are logged at most this often; the rest are counted (`http_accept_errors_total`).
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The pause after an accept error doubles from the first to the last (as Go's `net/http` does), so a
/// process out of file descriptors neither spins nor stays deaf long after descriptors are free again.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `service` on every connection `listener` accepts until `shutdown` fires; then stops accepting, asks
/// each open connection to finish its in-flight request and close, and returns once all have closed. The
/// caller bounds that wait (`proxy.shutdown_timeout`).
///
/// At most `limits.max_connections` connections are served at once: the next one is accepted only when one
/// closes, so the others wait in the kernel's listen backlog (what Go's `netutil.LimitListener` does for
/// Prometheus and the Pushgateway), and a client sees a slow connect rather than a refusal.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    security: Arc<ArcSwap<Security>>,
    limits: WebConfig,
    metrics: ServerMetrics,
    mut shutdown: Shutdown,
) where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    // `Timeouts` bounds heads and idle waits with one timer per connection; hyper's own header timer would box
    // a new one for every request.
    http.header_read_timeout(None);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection task holds a clone of `open_tx`; `recv` yields `None` once the last one has ended.
    let (open_tx, mut open_rx) = mpsc::channel::<Infallible>(1);
    let mut accept_errors = AcceptErrors::default();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            _ = shutdown.recv() => break,
        };
        let Ok(slot) = slot else { break }; // the semaphore is never closed
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.recv() => break,
        };
        let (stream, peer) = match accepted {
            Ok((stream, peer)) => {
                accept_errors.backoff = ACCEPT_BACKOFF_FIRST;
                (stream, peer)
            }
            // The client gave up between connecting and our accept: nothing is wrong with the gateway.
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                metrics.accept_errors.inc();
                let pause = accept_errors.record(&error);
                drop(slot);
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    _ = shutdown.recv() => break,
                }
            }
        };
        let shared_security = security.clone();
        let security = security.load_full();
        let heads_too_large = metrics.heads_too_large.clone();
        let service = service.clone();
        let http = http.clone();
        let connection_shutdown = shutdown.clone();
        let open = open_tx.clone();
        let connections_open = metrics.connections_open.clone();
        connections_open.inc();
        tokio::spawn(async move {
            // One `serve_connection` call per stream type (plain or TLS); a macro keeps the argument list once.
            macro_rules! serve {
                ($io:expr, $certificate_user:expr) => {
                    serve_connection(
                        $io,
                        $certificate_user,
                        peer,
                        heads_too_large,
                        service,
                        shared_security,
                        http,
                        limits,
                        connection_shutdown,
                    )
                    .await
                };
            }
            match &security.tls {
                None => serve!(stream, None),
                Some(tls) => {
                    // As Go's net/http does, the handshake has a header-read timeout of its own; the first
                    // request head then gets a fresh one.
                    let handshake = tls.acceptor().accept(stream);
                    match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            let user = tls.certificate_user(stream.get_ref().1);
                            serve!(stream, user)
                        }
                        // A plain-HTTP client, a client certificate refused, an untrusted server certificate:
                        // the client sees its handshake fail (or, speaking plain HTTP, a TLS alert and EOF).
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            connections_open.dec();
            drop(slot);
            drop(open);
        });
    }
    drop(listener);
    drop(open_tx);
    while open_rx.recv().await.is_some() {}
}

/// At most one log line per interval for requests hyper refused as too large, over all connections.
static TOO_LARGE_LOG: LogInterval = LogInterval::new(ACCEPT_ERROR_LOG_INTERVAL);

/// Rate-limits accept-error log lines and grows the pause after each error.
struct AcceptErrors {
    backoff: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Default for AcceptErrors {
    fn default() -> Self {
        AcceptErrors {
            backoff: ACCEPT_BACKOFF_FIRST,
            last_logged: None,
            unlogged: 0,
        }
    }
}

impl AcceptErrors {
    /// Logs `error` unless one was logged within `ACCEPT_ERROR_LOG_INTERVAL`; returns how long to pause.
    fn record(&mut self, error: &std::io::Error) -> Duration {
        let now = Instant::now();
        let due = self
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= ACCEPT_ERROR_LOG_INTERVAL);
        if due {
            tracing::error!(
                %error,
                similar_errors_not_logged = self.unlogged,
                retry_in = ?self.backoff,
                "cannot accept a connection; new clients wait until it works again \
                 (out of file descriptors? raise the open-files limit or lower web.max_connections)"
            );
            self.last_logged = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
        pause
    }
}

/// Errors that concern one connection, not the listener (the same list as `axum::serve` and hyper 0.14).
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// Serves one connection until the client closes it, an error or a timeout ends it, or shutdown asked it to
/// close after its in-flight request.
#[allow(clippy::too_many_arguments)]
async fn serve_connection<S, T>(
    stream: T,
    certificate_user: Option<User>,
    peer: std::net::SocketAddr,
    heads_too_large: prometheus_client::metrics::counter::Counter,
    service: S,
    security: Arc<ArcSwap<Security>>,
    http: hyper::server::conn::http1::Builder,
    limits: WebConfig,
    mut shutdown: Shutdown,
) where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requests = Arc::new(RequestCount::default());
    let service = ConnectionService {
        inner: service,
        security,
        certificate_user,
        requests: requests.clone(),
    };
    let io = TokioIo::new(Timeouts::new(
        stream,
        limits.header_read_timeout,
        limits.idle_timeout,
        requests,
    ));
    let connection = http.serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                match result {
                    Err(error) if error.is_parse_too_large() => {
                        heads_too_large.inc();
                        if TOO_LARGE_LOG.due() {
                            tracing::warn!(
                                %peer,
                                %error,
                                "request refused before routing: its target is over 65534 bytes (414) or its \
                                 headers over hyper's limit (431); a lone Pushgateway accepts up to 1 MiB, see the \
                                 README's deliberate differences (logged at most every 10 s)"
                            );
                        }
                    }
                    Err(error) => tracing::debug!(%error, "connection ended with an error"),
                    Ok(()) => {}
                }
                break;
            }
            _ = shutdown.recv(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The gateway's service as hyper calls it on one connection: what `axum::serve` does (one boxed body per
/// request, a clone of the service per request), plus telling [`Timeouts`] that a request head is complete, and
/// with `basic_auth_users` authenticating the request before the service sees it.
struct ConnectionService<S> {
    inner: S,
    // Loaded per request, so a reload (a user removed, a password changed) holds on open connections too.
    security: Arc<ArcSwap<Security>>,
    /// The user a verified client certificate names (see `ReloadingTls::certificate_user`); the identity of
    /// every request on this connection unless `basic_auth_users` asks each request for its own.
    certificate_user: Option<User>,
    requests: Arc<RequestCount>,
}

type Respond = Result<http::Response<Body>, Infallible>;

impl<S> hyper::service::Service<http::Request<Incoming>> for ConnectionService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Answered<Either<Oneshot<S, http::Request<Body>>, BoxFuture<'static, Respond>>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        self.requests.head_complete();
        let mut request = request.map(Body::new);
        let security = self.security.load_full();
        let future = if security.auth.is_some() {
            Either::Right(authenticated(self.inner.clone(), security.clone(), request))
        } else {
            if let Some(user) = &self.certificate_user {
                request.extensions_mut().insert(user.clone());
            }
            Either::Left(Oneshot::new(self.inner.clone(), request))
        };
        Answered {
            future,
            headers: (!security.headers.is_empty()).then_some(security),
            requests: Some(self.requests.clone()),
        }
    }
}

/// Every request, `/-/healthy` included (as exporter-toolkit does), passes only with the credentials of a
/// configured user; otherwise it gets a 401 and nothing is routed or forwarded. The verified user goes to the
/// service as a [`User`] extension (for `authorization`), and the client's `Authorization` is
/// removed: it is for the gateway, not the Pushgateways (whose own credentials the upstream code sets).
fn authenticated<S>(
    service: S,
    security: Arc<Security>,
    mut request: http::Request<Body>,
) -> BoxFuture<'static, Respond>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    Box::pin(async move {
        let user = match &security.auth {
            Some(auth) => auth.authenticate(request.headers()).await,
            None => None,
        };
        let Some(user) = user else {
            return Ok(unauthorized());
        };
        request.headers_mut().remove(http::header::AUTHORIZATION);
        // Replaces whatever the request carried: only the server room says who the user is.
        request.extensions_mut().insert(user);
        Oneshot::new(service, request).await
    })
}

fn unauthorized() -> http::Response<Body> {
    let mut response = http::Response::new(Body::from("Unauthorized\n"));
    *response.status_mut() = http::StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Basic realm=\"dynamic-sharding\""),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pin_project_lite::pin_project! {
    /// The service's future, telling [`Timeouts`] when the response is ready (so the write that follows is
    /// the answer, not a `100 Continue`).
    struct Answered<F> {
        #[pin]
        future: F,
        // `http_server_config.headers`, added to every response.
        headers: Option<Arc<Security>>,
        requests: Option<Arc<RequestCount>>,
    }
}

impl<F: Future<Output = Respond>> Future for Answered<F> {
    type Output = Respond;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Respond> {
        let this = self.project();
        let Ok(mut response) = std::task::ready!(this.future.poll(cx));
        if let Some(security) = this.headers.take() {
            for (name, value) in security.headers.iter() {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
        if let Some(requests) = this.requests.take() {
            requests.answered();
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn accept_errors_are_logged_at_most_once_per_interval_and_the_pause_doubles_to_a_cap() {
        let mut errors = AcceptErrors::default();
        let emfile = std::io::Error::from_raw_os_error(24);
        assert_eq!(errors.record(&emfile), ACCEPT_BACKOFF_FIRST);
        assert_eq!(errors.unlogged, 0, "the first error is logged");
        assert_eq!(errors.record(&emfile), ACCEPT_BACKOFF_FIRST * 2);
        assert_eq!(
            errors.unlogged, 1,
            "the next one within the interval is only counted"
        );
        let pauses: Vec<Duration> = (0..12).map(|_| errors.record(&emfile)).collect();
        assert_eq!(pauses.last(), Some(&ACCEPT_BACKOFF_MAX));
        assert!(pauses.windows(2).all(|pair| pair[0] <= pair[1]));
        tokio::time::advance(ACCEPT_ERROR_LOG_INTERVAL).await;
        errors.record(&emfile);
        assert_eq!(
            errors.unlogged, 0,
            "logged again once the interval has passed"
        );
    }
}
