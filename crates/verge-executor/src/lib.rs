//! The executor: runs `wasi:http` components on wasmtime.
//!
//! One [`Executor`] per process owns the wasmtime `Engine` (pooling allocator,
//! copy-on-write memory images, epoch interruption always on), the `Linker`
//! with all of WASI 0.2 plus `wasi:http`, the on-disk compile cache and the
//! epoch ticker. [`Executor::load`] turns a `.wasm` file into a
//! [`LoadedComponent`] (compiled, checked, pre-instantiated);
//! [`LoadedComponent::handle`] serves one request in a fresh `Store`.
//!
//! **Invariants**
//! - Every request gets a new `Store` and instance: no guest state survives a
//!   request, and nothing one request does is visible to another.
//! - Limits are enforced by the engine: linear memory by a resource limiter,
//!   time by epoch deadlines plus a host timer. A guest that traps, loops or
//!   exhausts memory gets a [`HandleError`]; the host never panics for it.
//! - Guests get no ambient authority: no inherited environment, no
//!   preopened directory, no socket, and outbound HTTP only to hosts the
//!   component's [`verge_capabilities::OutboundPolicy`] allows.
//!
//! **API boundary**: the executor knows nothing about routing, manifests or
//! listeners; it takes an `http::Request` and returns an `http::Response`.

mod apis;
mod cache;
mod component;
mod engine;
mod guest_log;
mod host;
mod invoke;
mod lane;

pub use apis::SecretSource;
pub use component::{AppContext, LoadError, LoadedComponent};
pub use engine::{Executor, ExecutorConfig, ExecutorError, ExecutorStats};
pub use invoke::trace::new_span_id;
pub use invoke::{
    GuestBody, GuestTrace, HandleError, OutboundCall, RequestContext, RequestId, TraceParent,
    UsageSink,
};
pub use verge_meter::Invocation;
/// The error a request body may yield to the executor (a guest sees it as
/// a failed read of its body).
pub use wasmtime_wasi_http::Error as BodyError;
