//! The data each request's `Store` carries: WASI and `wasi:http` contexts,
//! the resource table, the outbound-call gate and the memory limiter.

use std::sync::Arc;

use http_body_util::BodyExt;
use verge_capabilities::OutboundPolicy;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::invoke::RequestId;

/// Per-request store data.
pub(crate) struct Host {
    pub(crate) table: ResourceTable,
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) hooks: OutboundGate,
    pub(crate) limiter: MemoryLimiter,
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
pub(crate) struct OutboundGate {
    pub(crate) policy: Arc<OutboundPolicy>,
    pub(crate) component: Arc<str>,
    pub(crate) request_id: RequestId,
}

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
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https");
        let host = uri.host().unwrap_or("");
        let port = uri.port_u16();
        if !self.policy.allows(scheme, host, port) {
            tracing::warn!(
                request_id = %self.request_id,
                component = %self.component,
                destination = %format_args!("{scheme}://{}", uri.authority().map(|a| a.as_str()).unwrap_or("")),
                "outbound request denied: host not in allowed_outbound_hosts"
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        tracing::debug!(
            request_id = %self.request_id,
            component = %self.component,
            uri = %uri,
            "outbound request"
        );
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Caps linear memory per instance and remembers whether the cap was hit,
/// so a later trap can be reported as "memory limit exceeded".
pub(crate) struct MemoryLimiter {
    pub(crate) cap: usize,
    pub(crate) peak: usize,
    pub(crate) exceeded: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(cap: u64) -> Self {
        Self {
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
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
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            // Growth fails inside the guest (memory.grow returns -1); most
            // toolchains then abort, which surfaces as a trap we attribute
            // to this limit.
            self.exceeded = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
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
