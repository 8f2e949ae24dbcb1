//! One listener for both planes: `/v1` and below go to the control API,
//! everything else to the node's pipeline.
//!
//! In a cluster, a request for an app that runs only on other nodes is
//! forwarded to the nearest of them ([`crate::forward`]).
//!
//! **Invariant**: apps can never serve under `/v1` on this listener; the
//! control API refuses such routes at deploy time.

use std::sync::Arc;

use axum::extract::ConnectInfo;
use http::{Request, Response};
use hyper::body::Incoming;
use tower::ServiceExt;
use verge_control::Control;
use verge_executor::HandleError;
use verge_ingress::{Conn, Handler};
use verge_node::{Node, NodeBody};

use crate::forward::{FORWARDED_BY, Forwarder};

/// The combined handler.
pub struct Gateway {
    node: Arc<Node>,
    api: axum::Router,
    /// In a cluster: sends requests for apps placed elsewhere on.
    forwarder: Option<Arc<Forwarder>>,
}

impl Gateway {
    /// Serves `control`'s API and `node`'s apps.
    pub(crate) fn new(
        node: Arc<Node>,
        control: Arc<Control>,
        forwarder: Option<Arc<Forwarder>>,
    ) -> Self {
        Self {
            node,
            api: verge_control::router(control),
            forwarder,
        }
    }
}

/// A response body from either plane.
pub enum GatewayBody {
    /// From the node.
    Node(NodeBody),
    /// From the control API.
    Api(axum::body::Body),
    /// From the node that served a forwarded request.
    Forwarded(Incoming),
    /// A short answer of the gateway itself.
    Plain(http_body_util::Full<bytes::Bytes>),
}

/// An error from either body.
#[derive(Debug, thiserror::Error)]
pub enum GatewayBodyError {
    /// The guest's body failed.
    #[error(transparent)]
    Node(#[from] HandleError),
    /// The API's body failed.
    #[error(transparent)]
    Api(#[from] axum::Error),
    /// The forwarded answer failed.
    #[error(transparent)]
    Forwarded(#[from] hyper::Error),
}

impl http_body::Body for GatewayBody {
    type Data = bytes::Bytes;
    type Error = GatewayBodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, GatewayBodyError>>> {
        match self.get_mut() {
            GatewayBody::Node(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            GatewayBody::Api(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            GatewayBody::Forwarded(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            GatewayBody::Plain(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Node(b) => b.is_end_stream(),
            GatewayBody::Api(b) => b.is_end_stream(),
            GatewayBody::Forwarded(b) => b.is_end_stream(),
            GatewayBody::Plain(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            GatewayBody::Node(b) => b.size_hint(),
            GatewayBody::Api(b) => b.size_hint(),
            GatewayBody::Forwarded(b) => b.size_hint(),
            GatewayBody::Plain(b) => b.size_hint(),
        }
    }
}

fn is_api(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

impl Handler for Gateway {
    type Body = GatewayBody;
    type BodyError = GatewayBodyError;

    async fn handle(&self, mut request: Request<Incoming>, conn: Conn) -> Response<GatewayBody> {
        if is_api(request.uri().path()) {
            request.extensions_mut().insert(ConnectInfo(conn.peer));
            let request = request.map(axum::body::Body::new);
            let Ok(response) = self.api.clone().oneshot(request).await;
            return response.map(GatewayBody::Api);
        }
        if let Some(forwarder) = &self.forwarder
            && !request.headers().contains_key(FORWARDED_BY)
        {
            let host = request.uri().host().or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            });
            let path = request.uri().path();
            if self.node.apps().lookup(host, path).is_none() {
                match forwarder.target(host, path) {
                    Some(Ok(node)) => return forwarder.forward(request, conn.peer, &node).await,
                    Some(Err(refusal)) => return refusal,
                    None => {}
                }
            }
        }
        Handler::handle(self.node.as_ref(), request, conn)
            .await
            .map(GatewayBody::Node)
    }
}
