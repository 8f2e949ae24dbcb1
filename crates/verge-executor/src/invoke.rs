//! Serving one request: a fresh `Store` and instance, the guest's handler
//! driven to a response, and the response body streamed while the guest
//! keeps running.
//!
//! No task is spawned per request: the guest future is polled by the
//! caller until the response head is ready, then owned and polled by the
//! [`GuestBody`]. A request thus stays on the connection's task (and core),
//! and dropping the body (client gone) tears the instance down.
//!
//! **Invariants**
//! - Time: a guest running wasm past its deadline traps at the next epoch
//!   tick; a guest waiting in the host past it is dropped by the timer. Between
//!   ticks a running guest yields, so a loop cannot monopolise a worker.
//! - Nothing a guest does produces a panic or an unwrap in the host: every
//!   failure becomes a [`HandleError`] with its cause.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use crate::component::LoadedComponent;
use crate::guest_log::GuestOutput;
use crate::host::{Host, MemoryLimiter, OutboundGate};

/// Most resources (headers, streams, ...) one instance may hold in the host.
const MAX_RESOURCES: usize = 4096;
/// Most bytes of headers one `fields` resource may hold.
const MAX_FIELDS_SIZE: usize = 64 * 1024;

/// Identifies one request in logs and in the `x-request-id` response header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RequestId(u64);

impl RequestId {
    /// A fresh id, unique within this process and unlikely to repeat across restarts.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let base = *BASE.get_or_init(|| {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(std::process::id())
        });
        // Multiplying by an odd constant spreads consecutive ids apart
        // while staying a bijection, so ids never collide.
        Self(
            base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        )
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Per-request facts the caller knows.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The request's id, for logs.
    pub id: RequestId,
}

/// Why a request did not get a response from the guest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// The request ran past its time limit.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The guest tried to grow its memory past its cap and then failed.
    #[error("memory limit of {limit} bytes exceeded: {detail}")]
    MemoryLimit {
        /// The cap, in bytes.
        limit: u64,
        /// What happened then (usually the trap).
        detail: String,
    },
    /// The guest trapped (panic, unreachable, out-of-bounds access...).
    #[error("guest trapped: {message}")]
    Trap {
        /// The trap itself, one line.
        message: String,
        /// The full error with the guest's wasm backtrace, several lines.
        detail: String,
    },
    /// The guest returned without producing a response.
    #[error("the guest returned without setting a response")]
    NoResponse,
    /// The guest answered with a `wasi:http` error code instead of a response.
    #[error("the guest reported an error: {0}")]
    GuestError(String),
    /// The request body was larger than the component's limit.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// No instance slot was free.
    #[error("no instance slot free: {0}")]
    Overloaded(String),
    /// The request could not be handed to the guest (for example, a header
    /// the guest API cannot represent).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The response stream failed after it started.
    #[error("response body failed: {0}")]
    Body(String),
}

impl HandleError {
    /// The HTTP status a client should get for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            HandleError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            HandleError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HandleError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            HandleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HandleError::MemoryLimit { .. }
            | HandleError::Trap { .. }
            | HandleError::NoResponse
            | HandleError::GuestError(_)
            | HandleError::Body(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Marker error raised from the epoch callback when the deadline passes.
#[derive(Debug)]
struct DeadlineReached;

impl fmt::Display for DeadlineReached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request deadline reached")
    }
}

impl std::error::Error for DeadlineReached {}

/// What the guest future yields when it finishes.
type GuestResult = Result<(), HandleError>;
type GuestFuture = Pin<Box<dyn Future<Output = GuestResult> + Send>>;

impl LoadedComponent {
    /// Serves `request` in a fresh instance. Returns once the guest has set
    /// the response head; the guest keeps running while the returned body
    /// streams.
    pub async fn handle<B>(
        self: &Arc<Self>,
        request: http::Request<B>,
        cx: RequestContext,
    ) -> Result<http::Response<GuestBody>, HandleError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let limits = self.limits;
        let deadline = Instant::now() + limits.timeout;
        let too_large = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| LimitedBody {
            inner: body,
            remaining: limits.max_request_body,
            limit: limits.max_request_body,
            too_large: too_large.clone(),
        });
        let mut store = self.new_store(cx.id, deadline);
        let (sender, mut receiver) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let run = async move {
            let proxy = match this.pre.instantiate_async(&mut store).await {
                Ok(p) => p,
                Err(e) => return Err(classify(&store, e, limits.memory)),
            };
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, request)
                .map_err(|e| HandleError::BadRequest(format!("{e:#}")))?;
            let out = store
                .data_mut()
                .http()
                .new_response_outparam(sender)
                .map_err(|e| HandleError::Overloaded(format!("{e:#}")))?;
            match proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
            {
                Ok(()) => Ok(()),
                Err(e) => Err(classify(&store, e, limits.memory)),
            }
        };
        let timeout = limits.timeout;
        let mut guest: GuestFuture = Box::pin(async move {
            match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(result) => result,
                Err(_) => Err(HandleError::Timeout(timeout)),
            }
        });

        // Drive the guest until it sets the response or finishes.
        let head = std::future::poll_fn(|task| {
            if let Poll::Ready(r) = Pin::new(&mut receiver).poll(task) {
                return Poll::Ready(Head::Response(r.ok()));
            }
            if let Poll::Ready(done) = guest.as_mut().poll(task) {
                return Poll::Ready(Head::Finished(done, receiver.try_recv().ok()));
            }
            Poll::Pending
        })
        .await;

        let too_large_now = || too_large.load(Ordering::Acquire);
        let response = match head {
            Head::Finished(Err(e), _) => {
                return Err(if too_large_now() {
                    HandleError::BodyTooLarge(limits.max_request_body)
                } else {
                    e
                });
            }
            Head::Finished(Ok(()), None) if too_large_now() => {
                return Err(HandleError::BodyTooLarge(limits.max_request_body));
            }
            Head::Finished(Ok(()), None) => return Err(HandleError::NoResponse),
            Head::Finished(Ok(()), Some(response)) => {
                return respond(
                    response,
                    None,
                    &too_large,
                    limits.max_request_body,
                    self,
                    cx.id,
                );
            }
            Head::Response(None) => {
                // The guest dropped its response-outparam: wait for it to
                // finish to learn why.
                return Err(match guest.await {
                    Err(e) => e,
                    Ok(()) if too_large_now() => HandleError::BodyTooLarge(limits.max_request_body),
                    Ok(()) => HandleError::NoResponse,
                });
            }
            Head::Response(Some(response)) => response,
        };
        respond(
            response,
            Some(guest),
            &too_large,
            limits.max_request_body,
            self,
            cx.id,
        )
    }

    fn new_store(&self, id: RequestId, deadline: Instant) -> Store<Host> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(&self.env)
            .stdout(GuestOutput::new(self.name.clone(), id, "stdout"))
            .stderr(GuestOutput::new(self.name.clone(), id, "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELDS_SIZE);
        let host = Host {
            table,
            wasi: wasi.build(),
            http,
            hooks: OutboundGate {
                policy: self.outbound.clone(),
                component: self.name.clone(),
                request_id: id,
            },
            limiter: MemoryLimiter::new(self.limits.memory),
        };
        let mut store = Store::new(&self.executor.inner.engine, host);
        store.limiter(|h| &mut h.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::new(DeadlineReached))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

enum Head {
    Response(Option<Result<http::Response<HyperOutgoingBody>, ErrorCode>>),
    Finished(
        GuestResult,
        Option<Result<http::Response<HyperOutgoingBody>, ErrorCode>>,
    ),
}

fn respond(
    response: Result<http::Response<HyperOutgoingBody>, ErrorCode>,
    guest: Option<GuestFuture>,
    too_large: &Arc<AtomicBool>,
    limit: u64,
    component: &LoadedComponent,
    id: RequestId,
) -> Result<http::Response<GuestBody>, HandleError> {
    if too_large.load(Ordering::Acquire) {
        return Err(HandleError::BodyTooLarge(limit));
    }
    let response = response.map_err(|code| HandleError::GuestError(format!("{code:?}")))?;
    Ok(response.map(|inner| GuestBody {
        inner,
        guest,
        too_large: too_large.clone(),
        component: component.name.clone(),
        id,
        failed: false,
    }))
}

/// Turns a wasmtime error into the cause a user can act on.
fn classify(store: &Store<Host>, error: wasmtime::Error, memory_limit: u64) -> HandleError {
    if error.chain().any(|e| e.is::<DeadlineReached>()) {
        return HandleError::Timeout(Duration::ZERO);
    }
    if store.data().limiter.exceeded {
        return HandleError::MemoryLimit {
            limit: memory_limit,
            detail: error.root_cause().to_string(),
        };
    }
    if error
        .chain()
        .any(|e| e.is::<wasmtime::PoolConcurrencyLimitError>())
    {
        return HandleError::Overloaded(format!("{error:#}"));
    }
    HandleError::Trap {
        message: error.root_cause().to_string(),
        detail: format!("{error:#}"),
    }
}

/// The guest's response body. Polling it also drives the guest, which may
/// still be writing; it ends when both the body and the guest are done.
pub struct GuestBody {
    inner: HyperOutgoingBody,
    guest: Option<GuestFuture>,
    too_large: Arc<AtomicBool>,
    component: Arc<str>,
    id: RequestId,
    failed: bool,
}

impl GuestBody {
    fn fail(&mut self, error: HandleError) -> Poll<Option<Result<Frame<Bytes>, HandleError>>> {
        self.failed = true;
        self.guest = None;
        tracing::warn!(
            request_id = %self.id,
            component = %self.component,
            "response aborted after it started: {error}"
        );
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
        if let Some(guest) = this.guest.as_mut()
            && let Poll::Ready(result) = guest.as_mut().poll(cx)
        {
            this.guest = None;
            if let Err(e) = result {
                return this.fail(e);
            }
        }
        if this.too_large.load(Ordering::Acquire) {
            return this.fail(HandleError::BodyTooLarge(0));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(e)) => this.fail(HandleError::Body(e.to_string())),
            // The body is complete but the guest is still running: wait for it
            // (its waker is registered by the poll above).
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
struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    too_large: Arc<AtomicBool>,
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
                this.too_large.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                    Some(this.limit),
                ))));
            }
            this.remaining -= len;
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
