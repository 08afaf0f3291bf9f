//! The header-read and idle timeouts of a client connection, as a wrapper around its socket.
//!
//! - idle: a connection that sends no byte of a next request within `web.idle_timeout` (after connecting, or
//!   after the gateway wrote its last response) is closed, as if the client had closed it;
//! - header: a request head (request line and headers) that is not complete within `web.header_read_timeout`
//!   of that same moment ends the connection with an error.
//!
//! hyper 1.x has a header-read timeout of its own (its timer starts whenever it waits for a request head, on
//! connect and after each response, so it bounds idle waits too), but it boxes a new timer for every request,
//! and it has no separate idle timeout for HTTP/1 servers. Here one timer per connection serves both: it is
//! re-armed only when it fires or when a deadline moves earlier, so a request costs a few branches, a counter
//! increment and at most one clock read.
//!
//! Where a request is: reads of request bytes start a head; hyper calling the service ([`RequestCount`]) means
//! the head is complete; a write once the service has answered every request (not a `100 Continue`) means the
//! gateway waits for the next request again.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests of one connection whose head was complete (hyper called the service), and those the service has
/// answered. Only the connection's own task touches them, so plain loads and stores suffice.
#[derive(Debug, Default)]
pub struct RequestCount {
    started: AtomicU64,
    answered: AtomicU64,
}

impl RequestCount {
    /// Called once per request, when its head is complete.
    pub fn head_complete(&self) {
        increment(&self.started);
    }

    /// Called once per request, when the service has produced its response.
    pub fn answered(&self) {
        increment(&self.answered);
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    fn in_flight(&self) -> bool {
        self.started.load(Ordering::Relaxed) != self.answered.load(Ordering::Relaxed)
    }
}

fn increment(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

#[derive(Clone, Copy)]
enum State {
    /// Waiting since this instant for the first byte of a request.
    Waiting(Instant),
    /// Bytes of a head arrived; waiting since this instant; `requests` heads were complete before it.
    Head { since: Instant, requests: u64 },
    /// The head was complete; the request is being read or answered.
    Busy,
}

pub struct Timeouts<T> {
    inner: T,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    requests: Arc<RequestCount>,
    state: State,
    /// Armed at or before the current deadline; firing early only leads to a re-arm.
    timer: Pin<Box<Sleep>>,
}

impl<T> Timeouts<T> {
    /// `idle_timeout` is at most `header_read_timeout` (validated with the config).
    pub fn new(
        inner: T,
        header_read_timeout: Duration,
        idle_timeout: Duration,
        requests: Arc<RequestCount>,
    ) -> Timeouts<T> {
        let now = Instant::now();
        Timeouts {
            inner,
            header_read_timeout,
            idle_timeout,
            requests,
            state: State::Waiting(now),
            timer: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        }
    }

    /// Notes a head that completed since the last read or write (hyper called the service): the request is
    /// being served.
    fn settle(&mut self) {
        match self.state {
            State::Head { requests, .. } if self.requests.started() != requests => {
                self.state = State::Busy;
            }
            State::Waiting(_) if self.requests.in_flight() => self.state = State::Busy,
            _ => {}
        }
    }

    /// Whether `deadline` has passed; if not, the timer wakes `cx` by then.
    fn expired(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        if self.timer.deadline() > deadline {
            self.timer.as_mut().reset(deadline);
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.timer.deadline() >= deadline {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Timeouts<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.settle();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    if let State::Waiting(since) = this.state {
                        this.state = State::Head {
                            since,
                            requests: this.requests.started(),
                        };
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.state {
                State::Busy => Poll::Pending,
                State::Waiting(since) => {
                    if this.expired(since + this.idle_timeout, cx) {
                        // End of stream: hyper closes an idle connection as if the client had.
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Pending
                }
                State::Head { since, .. } => {
                    if this.expired(since + this.header_read_timeout, cx) {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request head not complete within web.header_read_timeout",
                        )));
                    }
                    Poll::Pending
                }
            },
            error => error,
        }
    }
}

impl<T> Timeouts<T> {
    /// After a write of a response (not of a `100 Continue` while its request is still in flight), the
    /// connection waits for the next request. The timer is armed here: hyper does not read again by itself
    /// until the socket or a timer wakes it.
    fn wrote(&mut self, result: &Poll<std::io::Result<usize>>, cx: &mut Context<'_>) {
        if !matches!(result, Poll::Ready(Ok(written)) if *written > 0) {
            return;
        }
        self.settle();
        // A head still in progress is a pipelined next request: its own deadline stands.
        if !matches!(self.state, State::Head { .. }) && !self.requests.in_flight() {
            let now = Instant::now();
            self.state = State::Waiting(now);
            // Only registers the wake-up; the deadline cannot have passed yet.
            let _ = self.expired(now + self.idle_timeout, cx);
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Timeouts<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&result, cx);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&result, cx);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const HEADER: Duration = Duration::from_secs(20);
    const IDLE: Duration = Duration::from_secs(10);

    fn pair() -> (DuplexStream, Timeouts<DuplexStream>, Arc<RequestCount>) {
        let (client, server) = tokio::io::duplex(64);
        let requests = Arc::new(RequestCount::default());
        let server = Timeouts::new(server, HEADER, IDLE, requests.clone());
        (client, server, requests)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_ends_after_the_idle_timeout() {
        let (_client, mut server, _) = pair();
        let started = Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        assert_eq!(started.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_not_complete_within_the_header_timeout_is_an_error() {
        let (mut client, mut server, _) = pair();
        let started = Instant::now();
        let mut buf = [0u8; 8];
        // A byte every 5 s: never idle for 10 s, but the head is never complete.
        let error = loop {
            tokio::select! {
                read = server.read(&mut buf) => match read {
                    Ok(n) => assert!(n > 0),
                    Err(error) => break error,
                },
                () = tokio::time::sleep(Duration::from_secs(5)) => client.write_all(b"G").await.unwrap(),
            }
        };
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_answered_never_times_out_and_the_answer_restarts_the_idle_clock() {
        let (mut client, mut server, requests) = pair();
        let mut buf = [0u8; 8];
        tokio::time::sleep(Duration::from_secs(9)).await;
        client.write_all(b"GET").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 3);
        requests.head_complete();
        // Busy: however long the answer takes, a read just waits for the client; a 100 Continue changes nothing.
        server.write_all(b"100").await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_secs(120), server.read(&mut buf)).await;
        assert!(waiting.is_err(), "a busy connection must not time out");
        requests.answered();
        server.write_all(b"200").await.unwrap();
        let answered = Instant::now();
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        assert_eq!(answered.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_request_gets_its_own_header_deadline() {
        let (mut client, mut server, requests) = pair();
        let mut buf = [0u8; 8];
        client.write_all(b"GET").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 3);
        requests.head_complete();
        requests.answered();
        server.write_all(b"200").await.unwrap();
        // The next head starts but never completes: the header timeout applies again.
        client.write_all(b"G").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        let started = Instant::now();
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() <= HEADER);
    }
}
