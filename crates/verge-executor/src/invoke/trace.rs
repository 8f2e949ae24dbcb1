//! What the executor records for a traced request: when the instance was
//! ready, when the guest finished, and each outbound call with the span id
//! it carried in its `traceparent` header. The node turns this into
//! OpenTelemetry spans once the request is over.
//!
//! **Invariant**: nothing here is allocated or touched for a request that
//! is not traced.

use std::sync::Mutex;
use std::time::Instant;

use crate::cache::hex;

/// Most outbound calls recorded per request; later ones are still
/// propagated but not recorded.
const MAX_RECORDED_CALLS: usize = 64;

/// The trace a request belongs to, as the node decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// W3C trace id.
    pub trace_id: [u8; 16],
    /// The parent of the guest's outbound calls: the span of the guest's
    /// execution when recorded, else the caller's span (passed on).
    pub span_id: [u8; 8],
    /// Whether the request is recorded. An unsampled one records nothing
    /// but still passes its context on, flagged unsampled.
    pub sampled: bool,
}

impl TraceParent {
    /// The `traceparent` header for a child span `span_id`.
    pub fn header_for(&self, span_id: [u8; 8]) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!("00-{}-{}-{flags}", hex(&self.trace_id), hex(&span_id))
    }
}

/// One outbound HTTP call of a traced request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundCall {
    /// The span id sent in its `traceparent`.
    pub span_id: [u8; 8],
    /// Request method.
    pub method: String,
    /// Destination `scheme://authority`.
    pub destination: String,
    /// When it was sent.
    pub started: Instant,
    /// When its response head arrived (or it failed).
    pub ended: Option<Instant>,
    /// Response status, if one came.
    pub status: Option<u16>,
}

/// The executor's timeline of one traced request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestTrace {
    /// When the executor took the request.
    pub started: Instant,
    /// When the instance was ready (instantiation done).
    pub instantiated: Option<Instant>,
    /// When the guest's handler returned (or failed).
    pub finished: Option<Instant>,
    /// Outbound calls, in order.
    pub outbound: Vec<OutboundCall>,
}

/// The recorder shared by the guest's future and its outbound calls.
#[derive(Debug)]
pub(crate) struct TraceRecorder(Mutex<GuestTrace>);

impl TraceRecorder {
    pub(crate) fn new(started: Instant) -> Self {
        Self(Mutex::new(GuestTrace {
            started,
            instantiated: None,
            finished: None,
            outbound: Vec::new(),
        }))
    }

    fn with<R>(&self, f: impl FnOnce(&mut GuestTrace) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn instantiated(&self) {
        self.with(|t| t.instantiated = Some(Instant::now()));
    }

    pub(crate) fn finished(&self) {
        self.with(|t| t.finished = Some(Instant::now()));
    }

    /// Records a call; returns its index for [`TraceRecorder::call_ended`].
    pub(crate) fn call_started(&self, call: OutboundCall) -> Option<usize> {
        self.with(|t| {
            (t.outbound.len() < MAX_RECORDED_CALLS).then(|| {
                t.outbound.push(call);
                t.outbound.len() - 1
            })
        })
    }

    pub(crate) fn call_ended(&self, index: usize, status: Option<u16>) {
        self.with(|t| {
            if let Some(call) = t.outbound.get_mut(index) {
                call.ended = Some(Instant::now());
                call.status = status;
            }
        });
    }

    /// The timeline, moved out (the request is over).
    pub(crate) fn take(&self) -> GuestTrace {
        self.with(|t| GuestTrace {
            outbound: std::mem::take(&mut t.outbound),
            ..*t
        })
    }
}

/// A fresh random span id (never all zero).
pub fn new_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    while id == [0; 8] {
        if getrandom::fill(&mut id).is_err() {
            // No entropy source: fall back to a counter, still unique here.
            use std::sync::atomic::{AtomicU64, Ordering};
            static NEXT: AtomicU64 = AtomicU64::new(1);
            id = NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        }
    }
    id
}
