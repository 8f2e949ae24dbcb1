//! Bodies around the guest: [`LimitedBody`] counts request bytes on their way
//! in; [`GuestBody`] streams the response out while driving the guest.
//!
//! Known gap, inherited from wasmtime-wasi-http 48: a guest that returns
//! while still owning its outgoing body, without `finish` and without
//! dropping it, ends the stream as if it had finished. A guest failure is
//! always reported (the body ends with an error), and a declared
//! `Content-Length` is enforced by hyper; only this case is not detected.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::HandleError;
use super::task::{GuestResult, RequestShared, joined};

/// The guest's response body. It ends when both the body and the guest (if
/// it still runs, on its own task) are done, and fails if the guest fails.
pub struct GuestBody {
    pub(super) inner: HyperOutgoingBody,
    /// The guest's task, while it runs.
    pub(super) guest: Option<tokio::task::JoinHandle<GuestResult>>,
    pub(super) shared: Arc<RequestShared>,
    pub(super) failed: bool,
}

impl GuestBody {
    /// Aborts the response. `log`: whether to log the cause (a guest failure
    /// is logged by the guest's own task already).
    fn fail(
        &mut self,
        error: HandleError,
        log: bool,
    ) -> Poll<Option<Result<Frame<Bytes>, HandleError>>> {
        self.failed = true;
        if log {
            tracing::warn!(
                request_id = %self.shared.id,
                component = %self.shared.component,
                "response aborted after it started: {error}"
            );
        }
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = HandleError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HandleError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        if let Some(guest) = &mut this.guest
            && let Poll::Ready(result) = Pin::new(guest).poll(cx)
        {
            this.guest = None;
            if let Err(e) = joined(result) {
                return this.fail(e, false);
            }
        }
        if this.shared.too_large() {
            return this.fail(HandleError::BodyTooLarge(this.shared.body_limit), true);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let sent = &this.shared.usage.response_bytes;
                    sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => this.fail(HandleError::Body(e.to_string()), true),
            // The body is complete but the guest is still running: wait for
            // it (its waker was registered by the poll above).
            None if this.guest.is_some() => Poll::Pending,
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.guest.is_none() && !self.failed && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts request-body bytes on their way to the guest and fails the
/// stream once the component's limit is passed.
pub(super) struct LimitedBody<B> {
    pub(super) inner: B,
    pub(super) remaining: u64,
    pub(super) shared: Arc<RequestShared>,
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > this.remaining {
                this.shared.too_large.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                    Some(this.shared.body_limit),
                ))));
            }
            this.remaining -= len;
            let read = &this.shared.usage.request_bytes;
            read.fetch_add(len, Ordering::Relaxed);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
