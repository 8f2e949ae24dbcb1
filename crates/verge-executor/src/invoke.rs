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
//! - Every request that reached [`LoadedComponent::handle`] reports exactly
//!   one [`Invocation`] to its [`UsageSink`], when it is over. Its CPU time
//!   is summed over every poll of the guest, wherever it ran (connection
//!   task, own task, slow lane): the first poll is timed by the monotonic
//!   clock (nanoseconds to read; the guest yields at the first epoch tick,
//!   so the poll is short, and it is capped at two ticks), every later poll
//!   by the thread CPU clock (a system call, worth it for a guest that
//!   waits or runs long).

mod body;
pub(crate) mod task;
pub(crate) mod trace;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body::Body;
use verge_meter::Invocation;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

pub use self::body::GuestBody;
use self::body::LimitedBody;
use self::task::{GuestFuture, GuestResult, GuestTask, RequestShared, thread_cpu_ns};
pub use self::trace::{GuestTrace, OutboundCall, TraceParent};
use crate::component::LoadedComponent;
use crate::guest_log::GuestOutput;
use crate::host::{Host, HostApis, MemoryLimiter, OutboundGate};

/// Most resources (headers, streams, bodies, ...) one instance may hold in
/// the host. Together with [`MAX_FIELDS_SIZE`] and the body buffer sizes in
/// `host`, this bounds the host memory a guest can claim outside its linear
/// memory (a few tens of MiB in the worst case).
const MAX_RESOURCES: usize = 512;
/// Most bytes of headers one `fields` resource may hold.
const MAX_FIELDS_SIZE: usize = 32 * 1024;
/// Epoch ticks of running wasm after which a guest counts as heavy and moves
/// to the slow lane (with the default 1 ms tick: about 4 ms of computation).
const HEAVY_AFTER_TICKS: u32 = 4;
/// Longest deadline a request can have, whatever its configuration says.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

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

/// Receives what a request used once it is over: the guest finished (or
/// was stopped) and its response was sent (or abandoned).
pub trait UsageSink: Send + Sync + 'static {
    /// Called exactly once per request, on whichever thread ends it, with
    /// the executor's timeline when the request was traced.
    fn finished(&self, invocation: Invocation, trace: Option<GuestTrace>);
}

/// Per-request facts the caller knows.
pub struct RequestContext {
    /// The request's id, for logs.
    pub id: RequestId,
    /// Kept alive exactly as long as the guest runs (for example a
    /// concurrency permit): dropped when the guest finishes, fails, is cut
    /// off or is abandoned, whichever comes first, even if the response body
    /// is still being sent.
    pub hold: Option<Box<dyn std::any::Any + Send>>,
    /// Where the request's usage goes.
    pub usage: Option<Arc<dyn UsageSink>>,
    /// The trace the request belongs to: outbound calls carry
    /// `traceparent`, and a sampled request's timeline is recorded.
    pub trace: Option<TraceParent>,
}

impl RequestContext {
    /// A context with nothing to hold and no usage sink.
    pub fn new(id: RequestId) -> Self {
        Self {
            id,
            hold: None,
            usage: None,
            trace: None,
        }
    }
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
        // Only the first request of a component is cold; after that the
        // load is a plain read.
        let cold =
            !self.served.load(Ordering::Relaxed) && !self.served.swap(true, Ordering::Relaxed);
        let shared = Arc::new(RequestShared::new(
            self.limits.max_request_body,
            cx.id,
            self.name.clone(),
            cold,
            cx.usage.clone(),
            cx.trace,
        ));
        let result = self.serve(request, cx, shared.clone()).await;
        let status = match &result {
            Ok(response) => response.status(),
            Err(e) => e.status(),
        };
        shared
            .usage
            .status
            .store(status.as_u16(), Ordering::Relaxed);
        if let Err(HandleError::Overloaded(_) | HandleError::BadRequest(_)) = &result {
            shared.usage.refused.store(true, Ordering::Relaxed);
        }
        result
    }

    async fn serve<B>(
        self: &Arc<Self>,
        request: http::Request<B>,
        cx: RequestContext,
        shared: Arc<RequestShared>,
    ) -> Result<http::Response<GuestBody>, HandleError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let limits = self.limits;
        // The request's clock started when its usage did.
        let now = shared.usage.started;
        let deadline = now
            .checked_add(limits.timeout.min(MAX_TIMEOUT))
            .unwrap_or(now);
        let request = request.map(|inner| LimitedBody {
            inner,
            remaining: limits.max_request_body,
            shared: shared.clone(),
        });
        let mut store = self.new_store(cx.id, deadline, shared.clone());
        let (sender, mut receiver) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let run = async move {
            let proxy = match this.pre.instantiate_async(&mut store).await {
                Ok(p) => p,
                Err(e) => return Err(classify(&store, e, &limits)),
            };
            if let Some(trace) = &store.data().shared().trace {
                trace.instantiated();
            }
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
            let result = proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await;
            if let Some(trace) = &store.data().shared().trace {
                trace.finished();
            }
            result.map_err(|e| classify(&store, e, &limits))
        };
        let timeout = limits.timeout;
        let hold = cx.hold;
        let clocked = shared.clone();
        let first_poll_cap = self.executor.inner.first_poll_cap;
        // Nobody reads the usage of a request without a sink: skip timing.
        let timed = shared.sink.is_some();
        // The guest's CPU time, measured around every poll on whichever
        // thread the poll happens. Waiting (sleep, I/O) is not polling, so
        // it is never counted. Most requests finish in their first poll,
        // which is timed by the cheap monotonic clock; the thread CPU
        // clock costs a system call, paid only from the second poll on.
        let run = async move {
            let mut run = std::pin::pin!(run);
            let mut first = true;
            std::future::poll_fn(|task| {
                if !timed {
                    return run.as_mut().poll(task);
                }
                let spent;
                let poll;
                if std::mem::take(&mut first) {
                    let before = Instant::now();
                    poll = run.as_mut().poll(task);
                    let elapsed = before.elapsed().min(first_poll_cap);
                    spent = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
                } else {
                    let before = thread_cpu_ns();
                    poll = run.as_mut().poll(task);
                    spent = thread_cpu_ns().saturating_sub(before);
                }
                clocked.usage.cpu_ns.fetch_add(spent, Ordering::Relaxed);
                poll
            })
            .await
        };
        let future: GuestFuture = Box::pin(async move {
            let result = match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(result) => result,
                Err(_) => Err(HandleError::Timeout(timeout)),
            };
            drop(hold);
            result
        });
        let mut guest = GuestTask::Inline(future);
        let slow_lane = self.executor.inner.slow_lane.handle().clone();

        // Drive the guest until it sets the response or finishes.
        let head = std::future::poll_fn(|task| {
            if let Poll::Ready(r) = Pin::new(&mut receiver).poll(task) {
                return Poll::Ready(Head::Response(r.ok()));
            }
            if let Poll::Ready(done) = guest.poll(task, &shared, &slow_lane) {
                return Poll::Ready(Head::Finished(done, receiver.try_recv().ok()));
            }
            Poll::Pending
        })
        .await;

        let too_large = HandleError::BodyTooLarge(limits.max_request_body);
        let response = match head {
            Head::Finished(Err(_), _) | Head::Finished(Ok(()), None) if shared.too_large() => {
                return Err(too_large);
            }
            Head::Finished(Err(e), _) => return Err(e),
            Head::Finished(Ok(()), None) => return Err(HandleError::NoResponse),
            Head::Finished(Ok(()), Some(response)) => response,
            Head::Response(None) => {
                // The guest dropped its response-outparam: let it finish to learn why.
                let outcome =
                    std::future::poll_fn(|task| guest.poll(task, &shared, &slow_lane)).await;
                return Err(match outcome {
                    _ if shared.too_large() => too_large,
                    Err(e) => e,
                    Ok(()) => HandleError::NoResponse,
                });
            }
            Head::Response(Some(response)) => response,
        };
        if shared.too_large() {
            return Err(too_large);
        }
        let response = response.map_err(|code| HandleError::GuestError(format!("{code:?}")))?;
        // The guest keeps running while the body streams: give it a task of
        // its own so its deadline holds even when nobody polls the body (a
        // client that stops reading).
        let guest = guest.detach_after_head(shared.clone(), slow_lane);
        Ok(response.map(|inner| GuestBody {
            inner,
            guest,
            shared,
            failed: false,
        }))
    }

    fn new_store(
        &self,
        id: RequestId,
        deadline: Instant,
        shared: Arc<RequestShared>,
    ) -> Store<Host> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(&self.env)
            .stdout(GuestOutput::new(
                self.app.clone(),
                self.name.clone(),
                id,
                "stdout",
            ))
            .stderr(GuestOutput::new(
                self.app.clone(),
                self.name.clone(),
                id,
                "stderr",
            ))
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
                process_slots: self.executor.inner.outbound_slots.clone(),
                request_slots: None,
                shared: shared.clone(),
            },
            limiter: MemoryLimiter::new(self.limits.memory),
            apis: HostApis {
                app: self.app.clone(),
                grants: self.grants.clone(),
                log: Default::default(),
                denials: crate::apis::DenialLog {
                    app: self.app.clone(),
                    request: shared.clone(),
                    logged: false,
                },
            },
        };
        let mut store = Store::new(&self.executor.inner.engine, host);
        store.limiter(|h| &mut h.limiter);
        store.set_epoch_deadline(1);
        let mut ticks = 0u32;
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                return Err(wasmtime::Error::new(DeadlineReached));
            }
            // Still running wasm after a few ticks: move to the slow lane at
            // the coming yield (see `task`).
            ticks += 1;
            if ticks >= HEAVY_AFTER_TICKS {
                shared.heavy.store(true, Ordering::Relaxed);
            }
            Ok(UpdateDeadline::Yield(1))
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

/// Turns a wasmtime error into the cause a user can act on.
fn classify(
    store: &Store<Host>,
    error: wasmtime::Error,
    limits: &verge_capabilities::Limits,
) -> HandleError {
    if error.chain().any(|e| e.is::<DeadlineReached>()) {
        return HandleError::Timeout(limits.timeout);
    }
    if store.data().limiter.exceeded {
        return HandleError::MemoryLimit {
            limit: limits.memory,
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
