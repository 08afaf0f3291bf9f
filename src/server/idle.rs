//! The idle keep-alive timeout: a connection that sends no byte of a next request within `web.idle_timeout`
//! (after connecting, or after the gateway wrote its last response) is closed.
//!
//! hyper 1.x has no idle timeout of its own for HTTP/1 servers (its header-read timer bounds idle time too,
//! but only as long as `web.header_read_timeout`). This wraps the socket: reads of request bytes mark it busy,
//! writes of a response mark it idle again, and a read that finds nothing while idle past the timeout reports
//! end of stream, which hyper treats as the client closing an idle connection.
//!
//! The per-request cost is kept to a branch and at most one clock read per response: the timer is re-armed
//! only when it fires, not on every request.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

enum State {
    /// A request is being read or answered.
    Busy,
    /// A response was written; idle from the next read that finds nothing.
    Answered,
    /// Waiting for a next request since this instant.
    Idle(Instant),
}

pub struct IdleTimeout<T> {
    inner: T,
    timeout: Duration,
    state: State,
    /// Armed for some idle period's deadline; it may fire early (for an earlier period) but never late.
    timer: Pin<Box<Sleep>>,
}

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, timeout: Duration) -> IdleTimeout<T> {
        let now = Instant::now();
        IdleTimeout {
            inner,
            timeout,
            state: State::Idle(now),
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
        }
    }

    /// Whether the idle period that began at `since` is over; if not, the timer will wake `cx` by then.
    fn expired(&mut self, since: Instant, cx: &mut Context<'_>) -> bool {
        let deadline = since + self.timeout;
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

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state = State::Busy;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let since = match this.state {
                    State::Busy => return Poll::Pending,
                    State::Answered => {
                        let now = Instant::now();
                        this.state = State::Idle(now);
                        now
                    }
                    State::Idle(since) => since,
                };
                if this.expired(since, cx) {
                    // End of stream: hyper closes the connection as if the client had.
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
            error => error,
        }
    }
}

impl<T: AsyncWrite + Unpin> IdleTimeout<T> {
    fn wrote(&mut self, result: &Poll<std::io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(written)) if *written > 0) {
            self.state = State::Answered;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&result);
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_ends_after_the_timeout_and_a_busy_one_does_not() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, Duration::from_secs(10));
        let mut client = client;
        let mut buf = [0u8; 8];

        // A request arrives before the timeout: it is read, and the answer makes the stream idle again.
        tokio::time::sleep(Duration::from_secs(9)).await;
        client.write_all(b"GET").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 3);
        // Busy: however long the answer takes, a read waits for the client.
        let waiting = tokio::time::timeout(Duration::from_secs(60), server.read(&mut buf)).await;
        assert!(waiting.is_err(), "a busy stream must not time out");
        server.write_all(b"200").await.unwrap();
        // Idle since the answer: the read ends the stream once the timeout has passed.
        let started = Instant::now();
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        assert!(started.elapsed() >= Duration::from_secs(10));
    }
}
