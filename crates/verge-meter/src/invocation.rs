//! One request as the meter sees it.

use std::time::Duration;

/// What one request used. Built by the node when the request is over
/// (response sent and guest finished), or when it was turned away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// From arrival at the executor until the guest finished and the
    /// response was sent.
    pub wall: Duration,
    /// CPU time spent on the guest's behalf on the threads that ran it
    /// (instantiation, wasm, host calls made inline), from the thread CPU
    /// clock. Time spent waiting (sleep, I/O) is not in it.
    pub cpu: Duration,
    /// Largest linear memory the instance had, summed over its memories.
    pub peak_memory: u64,
    /// Request body bytes read by the guest.
    pub request_bytes: u64,
    /// Response body bytes sent.
    pub response_bytes: u64,
    /// Outbound HTTP requests the guest made.
    pub outbound_calls: u32,
    /// Outbound body bytes, sent and received.
    pub outbound_bytes: u64,
    /// Of those, the bytes sent (request bodies): egress.
    pub outbound_bytes_sent: u64,
    /// Key-value operations (each call of `wasi:keyvalue` counts one).
    pub kv_ops: u32,
    /// Tokens embedded through `verge:ai` (embeddings, classification).
    pub ai_tokens: u64,
    /// The status the client got.
    pub status: u16,
    /// The first request served by this version on this node (after a
    /// deploy, a reload or a restart).
    pub cold: bool,
    /// Set when the request was turned away before the guest ran.
    pub rejected: Option<Rejected>,
}

/// Why a request was turned away before its guest ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Over a requests-per-minute or CPU-per-day quota (429).
    Quota,
    /// Over a limit of the component: concurrency, declared body size (503, 413).
    Limit,
}

impl Invocation {
    /// A request turned away before its guest ran.
    pub fn rejected(reason: Rejected, status: u16) -> Self {
        Self {
            status,
            rejected: Some(reason),
            ..Self::default()
        }
    }
}
