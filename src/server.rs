//! Serving HTTP: binding the listener, the accept loop, one hyper HTTP/1 connection per accepted socket, and
//! graceful shutdown. `app.rs` only wires a service into it.
//!
//! The accept path is one function per step so that a TLS handshake (tokio-rustls) can slot in between accepting
//! a socket and serving it, and an auth layer around the service, without touching the per-request path.

use std::convert::Infallible;
use std::future::Future;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::ServiceExt;

use crate::shutdown::Shutdown;

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

/// Serves `service` on every connection `listener` accepts until `shutdown` fires; then stops accepting, asks
/// each open connection to finish its in-flight request and close, and returns once all have closed. The
/// caller bounds that wait (`proxy.shutdown_timeout`).
pub async fn serve<S>(listener: TcpListener, service: S, mut shutdown: Shutdown)
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    // Every connection task holds a clone of `open_tx`; `recv` yields `None` once the last one has ended.
    let (open_tx, mut open_rx) = mpsc::channel::<Infallible>(1);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.recv() => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let connection = serve_connection(stream, service.clone(), shutdown.clone());
                let open = open_tx.clone();
                tokio::spawn(async move {
                    connection.await;
                    drop(open);
                });
            }
            Err(error) => {
                tracing::error!(%error, "cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
    drop(listener);
    drop(open_tx);
    while open_rx.recv().await.is_some() {}
}

/// Serves one connection until the client closes it, an error ends it, or shutdown asked it to close after its
/// in-flight request.
fn serve_connection<S>(
    stream: TcpStream,
    service: S,
    mut shutdown: Shutdown,
) -> impl Future<Output = ()> + Send
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    // The same request adaptation `axum::serve` does: one boxed body per request, nothing more.
    let service = TowerToHyperService::new(
        service.map_request(|request: http::Request<Incoming>| request.map(Body::new)),
    );
    async move {
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        let mut closing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
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
}
