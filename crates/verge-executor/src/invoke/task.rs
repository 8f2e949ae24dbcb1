//! The guest's future and where it runs.
//!
//! A request starts on the connection's task: most guests finish well within
//! one epoch tick, and staying there avoids a cross-thread hand-off. A guest
//! still running wasm when a tick passes is *heavy*: at its next yield it is
//! moved to the executor's slow lane, a separate thread pool at lower OS
//! priority, so loops and long computations cannot hold the workers that
//! accept connections and serve everyone else.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use verge_meter::Invocation;

use super::{HandleError, RequestId, UsageSink};

/// What a guest future yields when it finishes.
pub(crate) type GuestResult = Result<(), HandleError>;
pub(crate) type GuestFuture = Pin<Box<dyn Future<Output = GuestResult> + Send>>;

/// Facts about one request, shared by its guest future, its epoch callback,
/// its store, its request body and its response body. It is dropped when
/// the last of them is: the request is over, and its usage is reported.
pub(crate) struct RequestShared {
    /// The request body passed the component's limit.
    pub(crate) too_large: AtomicBool,
    /// The guest was running wasm when an epoch tick passed.
    pub(crate) heavy: AtomicBool,
    /// The component's request-body limit, for messages.
    pub(crate) body_limit: u64,
    /// The request, for logs.
    pub(crate) id: RequestId,
    /// The component, for logs.
    pub(crate) component: Arc<str>,
    /// What the request used so far.
    pub(crate) usage: UsageCounters,
    /// Where the usage goes when the request is over.
    pub(crate) sink: Option<Arc<dyn UsageSink>>,
    /// The request's timeline, when it is traced.
    pub(crate) trace: Option<super::trace::TraceRecorder>,
    /// The trace context outbound calls carry, when the request has one.
    pub(crate) traceparent: Option<super::trace::TraceParent>,
}

/// Usage of one request, added to as it happens.
#[derive(Debug)]
pub(crate) struct UsageCounters {
    pub(crate) started: Instant,
    pub(crate) cpu_ns: AtomicU64,
    pub(crate) peak_memory: AtomicU64,
    pub(crate) request_bytes: AtomicU64,
    pub(crate) response_bytes: AtomicU64,
    pub(crate) outbound_calls: AtomicU32,
    pub(crate) outbound_bytes: AtomicU64,
    pub(crate) outbound_bytes_sent: AtomicU64,
    pub(crate) kv_ops: AtomicU32,
    pub(crate) ai_tokens: AtomicU64,
    pub(crate) status: AtomicU16,
    pub(crate) cold: bool,
    /// The guest never ran: no instance slot, or a request the guest API
    /// cannot represent. Counted, not billed.
    pub(crate) refused: AtomicBool,
}

impl UsageCounters {
    pub(crate) fn new(cold: bool) -> Self {
        Self {
            started: Instant::now(),
            cpu_ns: AtomicU64::new(0),
            peak_memory: AtomicU64::new(0),
            request_bytes: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            outbound_calls: AtomicU32::new(0),
            outbound_bytes: AtomicU64::new(0),
            outbound_bytes_sent: AtomicU64::new(0),
            kv_ops: AtomicU32::new(0),
            ai_tokens: AtomicU64::new(0),
            status: AtomicU16::new(0),
            cold,
            refused: AtomicBool::new(false),
        }
    }

    fn invocation(&self) -> Invocation {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Invocation {
            wall: self.started.elapsed(),
            cpu: Duration::from_nanos(load(&self.cpu_ns)),
            peak_memory: load(&self.peak_memory),
            request_bytes: load(&self.request_bytes),
            response_bytes: load(&self.response_bytes),
            outbound_calls: self.outbound_calls.load(Ordering::Relaxed),
            outbound_bytes: load(&self.outbound_bytes),
            outbound_bytes_sent: load(&self.outbound_bytes_sent),
            kv_ops: self.kv_ops.load(Ordering::Relaxed),
            ai_tokens: load(&self.ai_tokens),
            // No status yet: the client went away before the response
            // head (499, "client closed request", as nginx logs it).
            status: match self.status.load(Ordering::Relaxed) {
                0 => 499,
                status => status,
            },
            cold: self.cold,
            rejected: self
                .refused
                .load(Ordering::Relaxed)
                .then_some(verge_meter::Rejected::Limit),
        }
    }
}

impl std::fmt::Debug for RequestShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestShared")
            .field("id", &self.id)
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl Drop for RequestShared {
    fn drop(&mut self) {
        if let Some(sink) = &self.sink {
            let trace = self.trace.as_ref().map(|t| t.take());
            sink.finished(self.usage.invocation(), trace);
        }
    }
}

/// CPU time the calling thread has used, in nanoseconds.
pub(crate) fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

impl RequestShared {
    pub(crate) fn new(
        body_limit: u64,
        id: RequestId,
        component: Arc<str>,
        cold: bool,
        sink: Option<Arc<dyn UsageSink>>,
        traceparent: Option<super::trace::TraceParent>,
    ) -> Self {
        let usage = UsageCounters::new(cold);
        Self {
            too_large: AtomicBool::new(false),
            heavy: AtomicBool::new(false),
            body_limit,
            id,
            component,
            trace: traceparent
                .filter(|t| t.sampled)
                .map(|_| super::trace::TraceRecorder::new(usage.started)),
            usage,
            sink,
            traceparent,
        }
    }

    pub(crate) fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Acquire)
    }
}

/// A guest future, polled in place until it proves heavy, then on the slow lane.
pub(crate) enum GuestTask {
    /// Polled by whoever polls the task.
    Inline(GuestFuture),
    /// On the slow lane, before its response head: stopped if dropped (the
    /// client went away before getting anything).
    Offloaded(AbortOnDrop),
    Finished,
}

impl GuestTask {
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        shared: &RequestShared,
        slow_lane: &tokio::runtime::Handle,
    ) -> Poll<GuestResult> {
        loop {
            match self {
                GuestTask::Inline(future) => match future.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        *self = GuestTask::Finished;
                        return Poll::Ready(result);
                    }
                    Poll::Pending if shared.heavy.load(Ordering::Relaxed) => {
                        self.detach(shared, slow_lane);
                        // Loop to poll the join handle, registering our waker.
                    }
                    Poll::Pending => return Poll::Pending,
                },
                GuestTask::Offloaded(AbortOnDrop(handle)) => {
                    let result = joined(std::task::ready!(Pin::new(handle).poll(cx)));
                    *self = GuestTask::Finished;
                    return Poll::Ready(result);
                }
                GuestTask::Finished => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Moves an inline guest to the slow lane (it proved heavy).
    fn detach(&mut self, shared: &RequestShared, slow_lane: &tokio::runtime::Handle) {
        if let GuestTask::Inline(future) = std::mem::replace(self, GuestTask::Finished) {
            tracing::debug!(
                request_id = %shared.id,
                component = %shared.component,
                "guest moved to the slow lane"
            );
            *self = GuestTask::Offloaded(AbortOnDrop(slow_lane.spawn(future)));
        }
    }

    /// Once the response head is out: gives a guest that is still running a
    /// task of its own (on the current runtime, so usually the same worker),
    /// so its deadline holds even when nobody polls the response body. The
    /// task still moves the guest to the slow lane if it turns heavy, and
    /// logs a failure itself, since nobody may be left to see it. Dropping
    /// the returned handle does not stop the guest: it may keep working once
    /// its response is complete, and its deadline bounds it.
    pub(crate) fn detach_after_head(
        mut self,
        shared: Arc<RequestShared>,
        slow_lane: tokio::runtime::Handle,
    ) -> Option<tokio::task::JoinHandle<GuestResult>> {
        if self.is_finished() {
            return None;
        }
        Some(tokio::spawn(async move {
            let result = std::future::poll_fn(|cx| self.poll(cx, &shared, &slow_lane)).await;
            if let Err(e) = &result {
                tracing::warn!(
                    request_id = %shared.id,
                    component = %shared.component,
                    "guest failed after its response started: {e}"
                );
            }
            result
        }))
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(self, GuestTask::Finished)
    }
}

/// The result of a guest that ran on a task of its own.
pub(crate) fn joined(result: Result<GuestResult, tokio::task::JoinError>) -> GuestResult {
    result.unwrap_or_else(|e| {
        Err(HandleError::Trap {
            message: "the guest's task ended abnormally".to_string(),
            detail: e.to_string(),
        })
    })
}

/// A guest running on the slow lane. Dropping it (the client is gone, the
/// response was abandoned) stops the guest there.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<GuestResult>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
