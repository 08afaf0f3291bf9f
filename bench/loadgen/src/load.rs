//! The load loop: C workers, each with its own keep-alive connection, pushing until the budget runs out, or
//! until every group has been pushed once ([`Walk::EachGroupOnce`]).
//!
//! A worker owns one HTTP/1.1 connection to the target (plus one per redirect target it has been sent to) and
//! issues one request at a time on it, so C workers means C concurrent connections. Requests share one body
//! `Bytes`; nothing is allocated per request beyond what hyper needs. An `https://` target gets a TLS handshake
//! once per connection ([`crate::tls`]), then the same keep-alive exchange inside it.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, LOCATION};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::stats::{ErrorKind, WorkerStats};
use crate::target::LoopbackEndpoint;
use crate::tls::TlsClient;

/// When to stop issuing requests. Whichever bound is reached first ends the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
}

/// Which group each request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Worker `w` cycles through its own share of the groups (`w`, `w + C`, `w + 2C`, ...) until the [`Limit`]:
    /// a steady load over a fixed set of groups. Groups are pushed unevenly when the limit is a request count (a
    /// fast worker comes round to its own groups again while a slow one has not reached all of its own).
    RoundRobin,
    /// Every group exactly once, across all workers: each takes the next group from one shared counter, and the
    /// run ends when the counter passes the last group (or at the limit's deadline, leaving the rest unpushed).
    /// The limit's request count is not used. For filling a target with exactly the given groups.
    EachGroupOnce,
}

/// Everything a run needs, shared read-only by the workers.
#[derive(Debug)]
pub struct LoadPlan {
    pub target: LoopbackEndpoint,
    pub method: Method,
    /// Request paths (path and query), one per group; workers walk them in an interleaved order.
    pub paths: Vec<String>,
    pub body: Bytes,
    pub content_type: HeaderValue,
    pub concurrency: usize,
    pub limit: Limit,
    pub walk: Walk,
    pub follow_redirects: bool,
    pub max_redirects: u32,
    /// Bounds one push, redirects included.
    pub request_timeout: Duration,
    /// The status that counts as success; any 2xx when `None`.
    pub expected_status: Option<StatusCode>,
    /// For `https://` endpoints; a push to one without it fails as a connect error.
    pub tls: Option<TlsClient>,
    /// Sent with every request (`Basic ...`), marked sensitive.
    pub authorization: Option<HeaderValue>,
}

/// Builds the request paths for `groups` distinct groups: `/metrics/job/<job>/instance/i-<n>`, and every
/// `extra_label_every`-th group also gets `/zone/z<n % 4>` so that grouping keys vary in length.
pub fn group_paths(
    prefix: &str,
    job: &str,
    groups: usize,
    extra_label_every: usize,
) -> Vec<String> {
    (0..groups)
        .map(|n| {
            let mut path = format!("{prefix}/metrics/job/{job}/instance/i-{n}");
            if extra_label_every > 0 && n % extra_label_every == extra_label_every - 1 {
                path.push_str(&format!("/zone/z{}", n % 4));
            }
            path
        })
        .collect()
}

/// Hands out permission to start a request until the limit is reached.
struct Budget {
    deadline: Option<Instant>,
    remaining: Option<AtomicU64>,
}

impl Budget {
    fn new(limit: Limit, start: Instant) -> Self {
        Self {
            deadline: limit.duration.map(|duration| start + duration),
            remaining: limit.requests.map(AtomicU64::new),
        }
    }

    fn take(&self) -> bool {
        if let Some(deadline) = self.deadline {
            if Instant::now() >= deadline {
                return false;
            }
        }
        match &self.remaining {
            Some(remaining) => remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(1)
                })
                .is_ok(),
            None => true,
        }
    }
}

/// Hands each worker its next group, following the plan's [`Walk`].
enum GroupCursor<'a> {
    /// The worker's next group of its own share.
    Own { next: usize, stride: usize },
    /// The next group no worker has taken yet.
    Shared(&'a AtomicUsize),
}

impl GroupCursor<'_> {
    /// The next group's index, or `None` when the run is over for this worker.
    fn next(&mut self, budget: &Budget, group_count: usize) -> Option<usize> {
        if group_count == 0 || !budget.take() {
            return None;
        }
        match self {
            GroupCursor::Own { next, stride } => {
                let group = *next;
                *next = (*next + *stride) % group_count;
                Some(group)
            }
            GroupCursor::Shared(next_untaken) => {
                let group = next_untaken.fetch_add(1, Ordering::Relaxed);
                (group < group_count).then_some(group)
            }
        }
    }
}

/// Runs the plan to completion and returns the merged statistics and the wall time from the first request
/// to the last response.
pub async fn run(plan: Arc<LoadPlan>) -> (WorkerStats, Duration) {
    let start = Instant::now();
    let limit = match plan.walk {
        Walk::RoundRobin => plan.limit,
        Walk::EachGroupOnce => Limit {
            requests: None,
            ..plan.limit
        },
    };
    let budget = Arc::new(Budget::new(limit, start));
    let next_untaken = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..plan.concurrency)
        .map(|worker_index| {
            let plan = Arc::clone(&plan);
            let budget = Arc::clone(&budget);
            let next_untaken = Arc::clone(&next_untaken);
            tokio::spawn(async move {
                let cursor = match plan.walk {
                    Walk::RoundRobin => GroupCursor::Own {
                        next: worker_index % plan.paths.len().max(1),
                        stride: plan.concurrency,
                    },
                    Walk::EachGroupOnce => GroupCursor::Shared(&next_untaken),
                };
                worker(&plan, &budget, cursor).await
            })
        })
        .collect();
    let mut total = WorkerStats::new();
    for handle in workers {
        // A worker only ends by returning; a panic would be a bug in this crate, and is reported as such.
        match handle.await {
            Ok(stats) => total.merge(&stats),
            Err(err) => eprintln!("ds-loadgen: a worker failed: {err}"),
        }
    }
    (total, start.elapsed())
}

async fn worker(plan: &LoadPlan, budget: &Budget, mut cursor: GroupCursor<'_>) -> WorkerStats {
    let mut stats = WorkerStats::new();
    let mut connections = Connections::default();
    while let Some(group) = cursor.next(budget, plan.paths.len()) {
        let Some(path) = plan.paths.get(group) else {
            break;
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            plan.request_timeout,
            push(plan, &mut connections, path, &mut stats),
        )
        .await;
        match outcome {
            Ok(Ok(())) => stats.record_ok(started.elapsed()),
            Ok(Err(kind)) => stats.record_error(kind),
            Err(_elapsed) => {
                // The connection still carries the abandoned exchange; start afresh like a real client would.
                connections.clear();
                stats.record_error(ErrorKind::Timeout);
            }
        }
    }
    stats
}

/// One push, following 307/308 redirects when asked to.
async fn push(
    plan: &LoadPlan,
    connections: &mut Connections,
    path: &str,
    stats: &mut WorkerStats,
) -> Result<(), ErrorKind> {
    let mut endpoint = Cow::Borrowed(&plan.target);
    let mut path = Cow::Borrowed(path);
    let mut redirects = 0;
    loop {
        let sender = connections.ready(&endpoint, plan.tls.as_ref()).await?;
        let mut request = Request::builder()
            .method(plan.method.clone())
            .uri(path.as_ref())
            .header(HOST, endpoint.authority.as_str())
            .header(CONTENT_TYPE, plan.content_type.clone());
        if let Some(authorization) = &plan.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let request = request
            .body(Full::new(plan.body.clone()))
            // Only a Location from a server can make the URI invalid.
            .map_err(|_| ErrorKind::RedirectRefused)?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(_) => {
                connections.remove(&endpoint);
                return Err(ErrorKind::Io);
            }
        };
        let status = response.status();
        let location = (plan.follow_redirects
            && matches!(
                status,
                StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
            ))
        .then(|| response.headers().get(LOCATION))
        .flatten()
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
        // Drain the body so the connection can carry the next request.
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                connections.remove(&endpoint);
                return Err(ErrorKind::Io);
            }
        }
        if let Some(location) = location {
            redirects += 1;
            if redirects > plan.max_redirects {
                return Err(ErrorKind::TooManyRedirects);
            }
            let (next, next_path) = endpoint
                .resolve_location(&location)
                .map_err(|_| ErrorKind::RedirectRefused)?;
            stats.record_redirect_followed();
            endpoint = Cow::Owned(next);
            path = Cow::Owned(next_path);
            continue;
        }
        let success = match plan.expected_status {
            Some(expected) => status == expected,
            None => status.is_success(),
        };
        return if success {
            Ok(())
        } else {
            Err(ErrorKind::for_status(status.as_u16()))
        };
    }
}

/// Where a connection goes: the server address and whether it speaks TLS.
type ConnectionKey = (SocketAddr, bool);

/// A worker's open connections, one per server address and scheme (usually just the target).
#[derive(Default)]
struct Connections {
    open: Vec<(ConnectionKey, SendRequest<Full<Bytes>>)>,
}

impl Connections {
    /// A connection to `endpoint` that is ready for a request, reusing a live one.
    async fn ready(
        &mut self,
        endpoint: &LoopbackEndpoint,
        tls: Option<&TlsClient>,
    ) -> Result<&mut SendRequest<Full<Bytes>>, ErrorKind> {
        let key = (endpoint.addr, endpoint.tls);
        let position = match self.open.iter().position(|(open, _)| *open == key) {
            Some(position) => {
                let sender = &mut self.open[position].1;
                if sender.ready().await.is_ok() {
                    Some(position)
                } else {
                    // The server closed it (e.g. restarted); connect again below.
                    self.open.swap_remove(position);
                    None
                }
            }
            None => None,
        };
        let position = match position {
            Some(position) => position,
            None => {
                let sender = connect(endpoint, tls).await?;
                self.open.push((key, sender));
                self.open.len() - 1
            }
        };
        Ok(&mut self.open[position].1)
    }

    fn remove(&mut self, endpoint: &LoopbackEndpoint) {
        let key = (endpoint.addr, endpoint.tls);
        self.open.retain(|(open, _)| *open != key);
    }

    fn clear(&mut self) {
        self.open.clear();
    }
}

async fn connect(
    endpoint: &LoopbackEndpoint,
    tls: Option<&TlsClient>,
) -> Result<SendRequest<Full<Bytes>>, ErrorKind> {
    let stream = TcpStream::connect(endpoint.addr)
        .await
        .map_err(|_| ErrorKind::Connect)?;
    // Requests are small and latency-bound; Nagle would add delay to every exchange.
    stream.set_nodelay(true).map_err(|_| ErrorKind::Connect)?;
    if !endpoint.tls {
        return http1_over(stream).await;
    }
    let tls = tls.ok_or(ErrorKind::Connect)?;
    let stream = tls
        .connect(endpoint.server_name(), stream)
        .await
        .map_err(|_| ErrorKind::Connect)?;
    http1_over(stream).await
}

async fn http1_over<IO>(io: IO) -> Result<SendRequest<Full<Bytes>>, ErrorKind>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|_| ErrorKind::Connect)?;
    // The connection task ends when the sender is dropped or the peer closes; its error, if any, surfaces
    // through the sender on the next request.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn group_paths_are_distinct_and_some_carry_an_extra_label() {
        let paths = group_paths("/pfx", "bench", 100, 4);
        assert_eq!(paths.len(), 100);
        assert_eq!(paths.iter().collect::<HashSet<_>>().len(), 100);
        assert_eq!(paths[0], "/pfx/metrics/job/bench/instance/i-0");
        assert_eq!(paths[3], "/pfx/metrics/job/bench/instance/i-3/zone/z3");
        assert_eq!(paths.iter().filter(|p| p.contains("/zone/")).count(), 25);
        assert!(group_paths("", "j", 10, 0)
            .iter()
            .all(|p| !p.contains("/zone/")));
    }

    #[test]
    fn request_budget_runs_out_exactly() {
        let limit = Limit {
            duration: None,
            requests: Some(3),
        };
        let budget = Budget::new(limit, Instant::now());
        assert_eq!((0..10).filter(|_| budget.take()).count(), 3);
    }

    #[test]
    fn expired_deadline_stops_immediately() {
        let limit = Limit {
            duration: Some(Duration::ZERO),
            requests: Some(100),
        };
        assert!(!Budget::new(limit, Instant::now()).take());
    }
}
