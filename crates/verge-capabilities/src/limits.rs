//! Resource limits for one component. The defaults are the values a
//! component gets when neither the manifest nor the CLI says otherwise.

use std::time::Duration;

/// Resource limits enforced by the host, never trusted to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest linear memory one instance may grow to, in bytes.
    pub memory: u64,
    /// Wall-clock limit for one request, from routing to the end of the guest's work.
    pub timeout: Duration,
    /// Instances of this component that may run at once; requests beyond
    /// this answer 503 with `Retry-After`.
    pub max_concurrency: u32,
    /// Largest request body accepted, in bytes; larger bodies answer 413.
    pub max_request_body: u64,
}

impl Limits {
    /// Default linear-memory cap per instance: 128 MiB.
    pub const DEFAULT_MEMORY: u64 = 128 * 1024 * 1024;
    /// Default wall-clock limit per request: 30 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default concurrent instances per component.
    pub const DEFAULT_MAX_CONCURRENCY: u32 = 100;
    /// Default largest request body: 32 MiB.
    pub const DEFAULT_MAX_REQUEST_BODY: u64 = 32 * 1024 * 1024;
    /// The largest memory cap a component may ask for: 4 GiB, the 32-bit address space.
    pub const MAX_MEMORY: u64 = 4 * 1024 * 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: Self::DEFAULT_MEMORY,
            timeout: Self::DEFAULT_TIMEOUT,
            max_concurrency: Self::DEFAULT_MAX_CONCURRENCY,
            max_request_body: Self::DEFAULT_MAX_REQUEST_BODY,
        }
    }
}
