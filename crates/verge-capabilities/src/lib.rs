//! The capabilities and limits granted to one component.
//!
//! Everything here is **deny-by-default**: an empty [`Capabilities`] grants no
//! outbound host, no environment variable, no directory and no socket. The
//! manifest (`verge-manifest`) and the CLI produce these values; the executor
//! (`verge-executor`) enforces them.
//!
//! **API boundary**: this crate is plain data plus matching logic. It knows
//! nothing about TOML, HTTP servers or wasmtime, so every layer can share it.

mod limits;
mod outbound;

pub use limits::Limits;
pub use outbound::{HostPattern, HostPatternError, OutboundPolicy};

/// Everything one component is allowed to reach or read besides its own memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Hosts the component may call with `wasi:http/outgoing-handler`.
    pub outbound: OutboundPolicy,
    /// Environment variables visible through `wasi:cli/environment`, in order.
    /// The host's own environment is never inherited.
    pub env: Vec<(String, String)>,
}
