//! The connection wrapper the ingress hands to hyper. It adds the two
//! timeouts hyper does not have:
//! - **opening**: the first bytes of a connection (enough to tell HTTP/1
//!   from the HTTP/2 preface) must arrive within the header-read timeout,
//!   so silent connections cannot pile up until the connection cap is hit;
//!   after that, hyper's own HTTP/1 header timeout and HTTP/2 keep-alive
//!   take over;
//! - **stalled writes**: a write that makes no progress for the write
//!   timeout (a client that stopped reading) fails, which closes the
//!   connection and drops its response.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes after which the protocol is known (the HTTP/2 preface is 24).
const OPENING_BYTES: usize = 24;

pub(crate) struct GuardedIo<S> {
    inner: S,
    read_so_far: usize,
    opening_deadline: Pin<Box<Sleep>>,
    write_timeout: Duration,
    write_stall: Option<Pin<Box<Sleep>>>,
}

impl<S> GuardedIo<S> {
    pub(crate) fn new(inner: S, opening_timeout: Duration, write_timeout: Duration) -> Self {
        Self {
            inner,
            read_so_far: 0,
            opening_deadline: Box::pin(tokio::time::sleep_until(Instant::now() + opening_timeout)),
            write_timeout,
            write_stall: None,
        }
    }

    /// Turns `Pending` into a timeout error once `deadline` passes.
    fn stalled(
        deadline: &mut Pin<Box<Sleep>>,
        cx: &mut Context<'_>,
        what: &str,
    ) -> Poll<io::Error> {
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what.to_string()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn on_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(r) => {
                self.write_stall = None;
                // Answering means the protocol was recognised: the opening is over.
                self.read_so_far = self.read_so_far.max(OPENING_BYTES);
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.write_timeout;
                let stall = self
                    .write_stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                Self::stalled(stall, cx, "client stopped reading").map(Err)
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read_so_far += buf.filled().len() - before;
                Poll::Ready(r)
            }
            Poll::Pending if this.read_so_far < OPENING_BYTES => Self::stalled(
                &mut this.opening_deadline,
                cx,
                "no request within the header timeout",
            )
            .map(Err),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
