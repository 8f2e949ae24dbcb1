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

/// The HTTP/2 client preface. The opening lasts until it has arrived whole,
/// or until the bytes read differ from it (then it is HTTP/1, whose request
/// head hyper times itself).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) struct GuardedIo<S> {
    inner: S,
    /// Bytes of the preface matched so far, or `None` once the opening is over.
    opening: Option<usize>,
    opening_deadline: Pin<Box<Sleep>>,
    write_timeout: Duration,
    write_stall: Option<Pin<Box<Sleep>>>,
}

impl<S> GuardedIo<S> {
    pub(crate) fn new(inner: S, opening_timeout: Duration, write_timeout: Duration) -> Self {
        Self {
            inner,
            opening: Some(0),
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
                self.opening = None;
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
                if let Some(matched) = this.opening {
                    let new = &buf.filled()[before..];
                    let expected = &H2_PREFACE[matched..];
                    let n = new.len().min(expected.len());
                    this.opening = (new[..n] == expected[..n] && matched + n < H2_PREFACE.len())
                        .then_some(matched + n);
                }
                Poll::Ready(r)
            }
            Poll::Pending if this.opening.is_some() => Self::stalled(
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
