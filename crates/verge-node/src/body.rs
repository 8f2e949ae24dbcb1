//! The response body the node hands to the ingress: either a guest's
//! streaming body (holding the component's concurrency permit until the
//! body is done) or a small body the node wrote itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use verge_executor::{GuestBody, HandleError};
use verge_guard::Permit;

/// A response body produced by the node.
pub enum NodeBody {
    /// Streamed from a guest; the permit is released when the body is dropped.
    Guest {
        /// The guest's body.
        body: GuestBody,
        /// The component's concurrency slot.
        permit: Permit,
    },
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
            NodeBody::Guest { body, .. } => Pin::new(body).poll_frame(cx),
            NodeBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            NodeBody::Guest { body, .. } => body.is_end_stream(),
            NodeBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            NodeBody::Guest { body, .. } => body.size_hint(),
            NodeBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            NodeBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
