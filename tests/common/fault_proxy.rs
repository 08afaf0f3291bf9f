//! A fault-injecting TCP relay in front of one real Pushgateway, for failures a healthy process cannot be made to
//! show on demand: pushes that hang while `/-/healthy` answers (a gray failure), pushes that are applied late
//! (a node slower than `proxy.upstream_timeout`), pushes held until the test lets them through (to order a
//! request after others deterministically), and connections reset after the request was written.
//!
//! Each request is read whole (head and `Content-Length` body), then relayed to the Pushgateway on a connection
//! of its own with `Connection: close`, and the answer relayed back; the client connection closes after it.
//! Only push methods (`PUT`, `POST`, `DELETE`) are affected by a fault; probes and reads always pass.
//! The relay keeps the head of every request it read ([`FaultProxy::request_heads`]), to check what the gateway
//! sends a node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What happens to pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Relayed as they come.
    None,
    /// Never relayed; the connection stays open until the client closes it.
    HoldPushes,
    /// Relayed after this delay (the answer follows as usual).
    DelayPushes(Duration),
    /// Held until the fault is changed (`set`) to anything else, then relayed and answered as usual; pushes
    /// accepted after the change are not held.
    HoldPushesUntilReleased,
    /// Relayed and applied, then the client's connection is reset instead of answered.
    ResetAfterPush,
}

pub struct FaultProxy {
    addr: String,
    fault: Arc<Mutex<Fault>>,
    heads: Arc<Mutex<Vec<String>>>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts the relay on a free `127.0.0.1` port in front of `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("fault proxy cannot bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fault proxy has no address: {e}"))
            .to_string();
        let fault = Arc::new(Mutex::new(Fault::None));
        let upstream = upstream.to_string();
        let shared = fault.clone();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let fault = *shared.lock().unwrap_or_else(|p| p.into_inner());
                tokio::spawn(relay(
                    client,
                    upstream.clone(),
                    fault,
                    shared.clone(),
                    recorded.clone(),
                ));
            }
        });
        FaultProxy {
            addr,
            fault,
            heads,
            accept,
        }
    }

    /// `127.0.0.1:<port>`: the node address to give the gateway.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// Applies to connections accepted from now on.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// The heads (request line and headers) of every request relayed so far, in order.
    pub fn request_heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads one request: the head up to the blank line, then `Content-Length` bytes of body.
async fn read_request(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let read = client.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let read = client.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Some((head, body))
}

/// Sends the request to the Pushgateway on a new connection and returns its whole answer.
async fn exchange(upstream: &str, head: &str, body: &[u8]) -> Option<Vec<u8>> {
    let mut connection = TcpStream::connect(upstream).await.ok()?;
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|line| {
            !line
                .split_once(':')
                .is_some_and(|(name, _)| name.eq_ignore_ascii_case("connection"))
        })
        .collect();
    lines.push("Connection: close");
    let mut request = lines.join("\r\n").into_bytes();
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body);
    connection.write_all(&request).await.ok()?;
    let mut answer = Vec::new();
    connection.read_to_end(&mut answer).await.ok()?;
    Some(answer)
}

async fn relay(
    mut client: TcpStream,
    upstream: String,
    fault: Fault,
    current_fault: Arc<Mutex<Fault>>,
    heads: Arc<Mutex<Vec<String>>>,
) {
    let Some((head, body)) = read_request(&mut client).await else {
        return;
    };
    heads
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(head.clone());
    let method = head.split(' ').next().unwrap_or_default();
    let is_push = matches!(method, "PUT" | "POST" | "DELETE");
    match (is_push, fault) {
        (true, Fault::HoldPushes) => {
            // Until the client gives up.
            let mut sink = [0u8; 1024];
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        (true, Fault::DelayPushes(delay)) => tokio::time::sleep(delay).await,
        (true, Fault::HoldPushesUntilReleased) => {
            while *current_fault.lock().unwrap_or_else(|p| p.into_inner())
                == Fault::HoldPushesUntilReleased
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        _ => {}
    }
    let Some(answer) = exchange(&upstream, &head, &body).await else {
        return;
    };
    if is_push && fault == Fault::ResetAfterPush {
        // SO_LINGER 0: closing sends RST instead of FIN. Deprecated because a non-zero linger blocks on drop;
        // zero never does.
        #[allow(deprecated)]
        let _ = client.set_linger(Some(Duration::ZERO));
        drop(client);
        return;
    }
    let _ = client.write_all(&answer).await;
    let _ = client.shutdown().await;
}
