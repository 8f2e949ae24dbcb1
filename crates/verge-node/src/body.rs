//! The response body the node hands to the ingress: either a guest's
//! streaming body or a small body the node wrote itself. (The component's
//! concurrency permit lives with the running guest, not with the body: it
//! is released when the guest is done, even if a slow client is still
//! reading.)

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use verge_executor::{GuestBody, HandleError};

/// A response body produced by the node.
pub enum NodeBody {
    /// Streamed from a guest.
    Guest(GuestBody),
    /// A complete body written by the node (errors, health).
    Full(Option<Bytes>),
}

impl NodeBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        NodeBody::Full(Some(bytes.into()))
    }
}

impl Body for NodeBody {
    type Data = Bytes;
    type Error = HandleError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HandleError>>> {
        match self.get_mut() {
            NodeBody::Guest(body) => Pin::new(body).poll_frame(cx),
            NodeBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            NodeBody::Guest(body) => body.is_end_stream(),
            NodeBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            NodeBody::Guest(body) => body.size_hint(),
            NodeBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            NodeBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
