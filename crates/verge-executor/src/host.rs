//! The data each request's `Store` carries: WASI and `wasi:http` contexts,
//! the resource table, the outbound-call gate and the memory limiter.
//!
//! **Invariant**: what the guest uses through the host (outbound calls and
//! bytes, key-value operations, peak memory) is added to the request's
//! usage counters as it happens; peak memory when the store is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use verge_capabilities::OutboundPolicy;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::invoke::task::RequestShared;

/// Per-request store data.
pub(crate) struct Host {
    pub(crate) table: ResourceTable,
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) hooks: OutboundGate,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) apis: HostApis,
}

/// Per-request state of the host APIs (`apis`).
pub(crate) struct HostApis {
    /// The app's key, for log lines.
    pub(crate) app: Arc<str>,
    /// What the component may reach.
    pub(crate) grants: Arc<crate::apis::Grants>,
    /// What the request has logged through `wasi:logging`.
    pub(crate) log: crate::apis::LogState,
    /// Where refused stores, models and indexes are logged.
    pub(crate) denials: crate::apis::DenialLog,
}

impl Host {
    /// The request's shared facts and usage counters.
    pub(crate) fn shared(&self) -> &RequestShared {
        &self.hooks.shared
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let peak = u64::try_from(self.limiter.peak).unwrap_or(u64::MAX);
        self.shared()
            .usage
            .peak_memory
            .fetch_max(peak, Ordering::Relaxed);
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Lets an outbound request through only if the component's policy allows
/// its destination; a refused call fails inside the guest with
/// `HTTP-request-denied`, never in the host.
///
/// It also bounds what a guest can make the host hold: outbound connections
/// open at once (per request and per process; over either the guest gets
/// `connection-limit-reached`) and the host-side buffer of every outgoing
/// body (one chunk of [`BODY_CHUNK`] bytes).
pub(crate) struct OutboundGate {
    pub(crate) policy: Arc<OutboundPolicy>,
    /// Connections the whole process may have open (shared).
    pub(crate) process_slots: Arc<Semaphore>,
    /// Connections this request may have open, created on first use.
    pub(crate) request_slots: Option<Arc<Semaphore>>,
    /// The request (its id and component, for logs) and where outbound
    /// calls and bytes are counted.
    pub(crate) shared: Arc<RequestShared>,
}

/// Largest chunk of an outgoing body buffered in the host.
const BODY_CHUNK: usize = 64 * 1024;
/// Outbound connections one request may have open at once.
const OUTBOUND_PER_REQUEST: usize = 16;

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundGate {
    fn send_request(
        &mut self,
        mut request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https");
        let host = uri.host().unwrap_or("");
        let port = uri.port_u16();
        if !self.policy.allows(scheme, host, port) {
            tracing::warn!(
                request_id = %self.shared.id,
                component = %self.shared.component,
                destination = %format_args!("{scheme}://{}", uri.authority().map(|a| a.as_str()).unwrap_or("")),
                "outbound request denied: host not in allowed_outbound_hosts"
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let request_slots = self
            .request_slots
            .get_or_insert_with(|| Arc::new(Semaphore::new(OUTBOUND_PER_REQUEST)))
            .clone();
        let (Ok(request_slot), Ok(process_slot)) = (
            request_slots.try_acquire_owned(),
            self.process_slots.clone().try_acquire_owned(),
        ) else {
            tracing::warn!(
                request_id = %self.shared.id,
                component = %self.shared.component,
                "outbound request refused: too many connections open"
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::ConnectionLimitReached) });
        };
        tracing::debug!(
            request_id = %self.shared.id,
            component = %self.shared.component,
            uri = %uri,
            "outbound request"
        );
        self.shared
            .usage
            .outbound_calls
            .fetch_add(1, Ordering::Relaxed);
        // Trace context: a recorded request names the call's own span; an
        // unsampled one passes its caller's context on, flagged unsampled.
        let traced = self.shared.traceparent.map(|parent| {
            let span_id = match &self.shared.trace {
                Some(_) => crate::invoke::trace::new_span_id(),
                None => parent.span_id,
            };
            // The guest's own trace context, if it set one, wins.
            if !request.headers().contains_key("traceparent")
                && let Ok(value) = http::HeaderValue::from_str(&parent.header_for(span_id))
            {
                request.headers_mut().insert("traceparent", value);
            }
            let uri = request.uri();
            let call = crate::invoke::OutboundCall {
                span_id,
                method: request.method().to_string(),
                destination: format!(
                    "{}://{}",
                    uri.scheme_str().unwrap_or("https"),
                    uri.authority().map_or("", |a| a.as_str())
                ),
                started: std::time::Instant::now(),
                ended: None,
                status: None,
            };
            self.shared
                .trace
                .as_ref()
                .and_then(|t| t.call_started(call))
        });
        let shared = self.shared.clone();
        let request = request.map(|inner| {
            CountingBody {
                inner,
                shared: shared.clone(),
                sent: true,
            }
            .boxed_unsync()
        });
        Box::new(async move {
            let sent = wasmtime_wasi_http::default_send_request(request, options).await;
            if let (Some(trace), Some(Some(index))) = (&shared.trace, traced) {
                trace.call_ended(index, sent.as_ref().ok().map(|(r, _)| r.status().as_u16()));
            }
            let (response, io) = sent?;
            let response = response.map(|inner| CountingBody {
                inner,
                shared,
                sent: false,
            });
            // The slots are held for as long as the connection lives.
            let io = async move {
                let result = io.await;
                drop((request_slot, process_slot));
                result
            };
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK
    }
}

/// Adds the bytes of an outbound body (either way) to the request's usage.
struct CountingBody<B> {
    inner: B,
    shared: Arc<RequestShared>,
    /// A request body (sent: egress) rather than a response body.
    sent: bool,
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(data) = frame.data_ref()
        {
            let usage = &self.shared.usage;
            let len = data.len() as u64;
            usage.outbound_bytes.fetch_add(len, Ordering::Relaxed);
            if self.sent {
                usage.outbound_bytes_sent.fetch_add(len, Ordering::Relaxed);
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Caps the linear memory of an instance, summed over all its memories (a
/// component may have several), and remembers whether the cap was hit, so a
/// later trap can be reported as "memory limit exceeded".
pub(crate) struct MemoryLimiter {
    pub(crate) cap: usize,
    pub(crate) total: usize,
    pub(crate) peak: usize,
    pub(crate) exceeded: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(cap: u64) -> Self {
        Self {
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            total: 0,
            peak: 0,
            exceeded: false,
        }
    }
}

/// Most table elements one instance may use; tables hold function
/// references, so this bounds host memory a guest can claim through them.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_add(desired.saturating_sub(current));
        if total > self.cap {
            // Growth fails inside the guest (memory.grow returns -1); most
            // toolchains then abort, which surfaces as a trap we attribute
            // to this limit.
            self.exceeded = true;
            return Ok(false);
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cap_covers_all_memories_of_an_instance() {
        let mut limiter = MemoryLimiter::new(10 * 65536);
        // Two memories of 4 pages each fit under 10 pages.
        assert!(limiter.memory_growing(0, 4 * 65536, None).expect("ok"));
        assert!(limiter.memory_growing(0, 4 * 65536, None).expect("ok"));
        // Growing the first by 3 pages would make 11: refused.
        assert!(
            !limiter
                .memory_growing(4 * 65536, 7 * 65536, None)
                .expect("ok")
        );
        assert!(limiter.exceeded);
        // Growing it by 2 makes exactly 10: allowed.
        assert!(
            limiter
                .memory_growing(4 * 65536, 6 * 65536, None)
                .expect("ok")
        );
        assert_eq!(limiter.peak, 10 * 65536);
    }
}
