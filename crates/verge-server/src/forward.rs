//! Nearest-node forwarding: a request for an app this node does not run
//! goes to the healthy node that runs it with the lowest measured
//! round-trip time.
//!
//! Round trips are measured continuously: every [`PROBE_EVERY`] the node
//! asks each other node's `/v1/health` over a kept-alive connection and
//! feeds the time into the registry's average. Nothing is configured.
//!
//! The request keeps its method, headers (but hop-by-hop ones) and
//! streamed body. `Forwarded` gains this hop (the client's address, this
//! node, the protocol and host), and `verge-forwarded-by` names this node.
//!
//! **Invariant**: a request is forwarded at most once. One that arrives
//! with `verge-forwarded-by` is served here or refused, never sent on, so
//! nodes whose views of the cluster disagree cannot bounce it in a loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use verge_cluster::{NodeStatus, Registry};

use crate::background::Background;
use crate::gateway::GatewayBody;
use crate::plane::NodePlane;

/// The header naming the node that forwarded a request.
pub(crate) const FORWARDED_BY: HeaderName = HeaderName::from_static("verge-forwarded-by");

/// The header naming the node that served a forwarded request.
const SERVED_BY: HeaderName = HeaderName::from_static("verge-served-by");

/// How often round trips to the other nodes are measured.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Headers that describe one connection, not the request.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Forwards requests for apps placed on other nodes.
pub(crate) struct Forwarder {
    registry: Arc<Registry>,
    plane: Arc<NodePlane>,
    client: Client<HttpConnector, Incoming>,
}

impl Forwarder {
    /// Starts measuring round trips to the other nodes.
    pub(crate) fn start(
        registry: Arc<Registry>,
        plane: Arc<NodePlane>,
        background: &Background,
    ) -> Arc<Self> {
        let forwarder = Arc::new(Self {
            registry,
            plane,
            client: Client::builder(TokioExecutor::new()).build(connector()),
        });
        let prober = forwarder.registry.clone();
        background.spawn(probe(prober));
        forwarder
    }

    /// The node to forward a request for `host` and `path` to, if another
    /// node runs the app; `Err` with a response when one should but none
    /// is reachable.
    pub(crate) fn target(
        &self,
        host: Option<&str>,
        path: &str,
    ) -> Option<Result<NodeStatus, Response<GatewayBody>>> {
        let (key, placement, revision) = self.plane.remote(host, path)?;
        // Nodes serving the current revision first; during a deploy, until
        // they do, the placed nodes still serving the one before.
        let best = self
            .registry
            .nodes()
            .into_iter()
            .filter(|n| {
                !n.this_node
                    && n.status == "up"
                    && n.report.addr.is_some()
                    && placement.matches(&n.report.labels)
                    && !n.report.failed.contains_key(&key)
            })
            .min_by(|a, b| {
                let rank =
                    |n: &NodeStatus| (!n.serves(&key, revision), n.rtt_ms.unwrap_or(f64::MAX));
                let (ra, rb) = (rank(a), rank(b));
                ra.0.cmp(&rb.0)
                    .then(ra.1.total_cmp(&rb.1))
                    .then(a.report.name.cmp(&b.report.name))
            });
        Some(best.ok_or_else(|| {
            tracing::warn!(app = %key, "no reachable node serves the app");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "no reachable node of the cluster serves this app now\n",
            )
        }))
    }

    /// Sends `request` to `node` and streams its answer back.
    pub(crate) async fn forward(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        node: &NodeStatus,
    ) -> Response<GatewayBody> {
        let Some(uri) = target_uri(node, request.uri()) else {
            return plain(StatusCode::BAD_GATEWAY, "the node's address is invalid\n");
        };
        let me = self.registry.node_name().to_string();
        let host = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            });
        let headers = request.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(host) = &host
            && !headers.contains_key(header::HOST)
            && let Ok(value) = HeaderValue::from_str(host)
        {
            headers.insert(header::HOST, value);
        }
        let hop = forwarded_hop(peer, &me, host.as_deref());
        let value = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {hop}"),
            None => hop,
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(header::FORWARDED, value);
        }
        if let Ok(value) = HeaderValue::from_str(&me) {
            headers.insert(FORWARDED_BY, value);
        }
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        match self.client.request(request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                if let Ok(value) = HeaderValue::from_str(&node.report.name) {
                    parts.headers.insert(SERVED_BY, value);
                }
                Response::from_parts(parts, GatewayBody::Forwarded(body))
            }
            Err(e) => {
                tracing::warn!(node = %node.report.name, "forwarding failed: {e}");
                plain(
                    StatusCode::BAD_GATEWAY,
                    "the node serving this app could not be reached\n",
                )
            }
        }
    }
}

fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    connector
}

/// `http://NODE-ADDR/PATH?QUERY`.
fn target_uri(node: &NodeStatus, original: &Uri) -> Option<Uri> {
    let base: Uri = node.report.addr.as_deref()?.parse().ok()?;
    let path = original.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme(base.scheme()?.clone())
        .authority(base.authority()?.clone())
        .path_and_query(path)
        .build()
        .ok()
}

/// One element of `Forwarded` (RFC 7239) for this hop.
fn forwarded_hop(peer: SocketAddr, me: &str, host: Option<&str>) -> String {
    let host = host
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        })
        .map(|h| format!(";host=\"{h}\""))
        .unwrap_or_default();
    format!("for=\"{peer}\";by=\"{me}\";proto=http{host}")
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::Plain(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Measures the round trip to every other node that is up, for as long as
/// the process lives.
async fn probe(registry: Arc<Registry>) {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector());
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        for node in registry.nodes() {
            if node.this_node || node.status != "up" {
                continue;
            }
            let Some(addr) = &node.report.addr else {
                continue;
            };
            let Ok(uri) = format!("{}/v1/health", addr.trim_end_matches('/')).parse::<Uri>() else {
                continue;
            };
            let start = Instant::now();
            let answer = tokio::time::timeout(Duration::from_secs(2), async {
                let response = client.get(uri).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                Ok::<bool, Box<dyn std::error::Error + Send + Sync>>(ok)
            })
            .await;
            if let Ok(Ok(true)) = answer {
                registry.record_rtt(&node.report.name, start.elapsed());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_others_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-end-to-end"]);
    }

    #[test]
    fn the_hop_names_client_node_and_a_safe_host() {
        let peer: SocketAddr = "[::1]:4000".parse().expect("addr");
        assert_eq!(
            forwarded_hop(peer, "a", Some("shop.example.com")),
            "for=\"[::1]:4000\";by=\"a\";proto=http;host=\"shop.example.com\""
        );
        // A host that would break the quoting is left out.
        assert_eq!(
            forwarded_hop(peer, "a", Some("x\";for=evil")),
            "for=\"[::1]:4000\";by=\"a\";proto=http"
        );
    }
}
