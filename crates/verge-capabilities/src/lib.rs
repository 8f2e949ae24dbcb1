//! The capabilities and limits granted to one component.
//!
//! Everything here is **deny-by-default**: an empty [`Capabilities`] grants no
//! outbound host, no environment variable, no directory, no socket, no
//! key-value store, no variable, no secret, no AI model and no vector
//! index. The
//! manifest (`verge-manifest`) and the CLI produce these values; the executor
//! (`verge-executor`) enforces them.
//!
//! **API boundary**: this crate is plain data plus matching logic. It knows
//! nothing about TOML, HTTP servers or wasmtime, so every layer can share it.

mod denials;
mod limits;
mod outbound;

pub use denials::Denials;
pub use limits::Limits;
pub use outbound::{HostPattern, HostPatternError, OutboundPolicy};

/// Key-value store names: 1 to 63 of `a-z`, `0-9`, `-` and `_` (so a name
/// is always a safe path segment and URL segment).
pub fn check_store_name(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("use 1 to 63 lower-case letters, digits, `-` and `_`")
    }
}

/// AI models a component may declare in `ai_models` (the models `verge ai
/// pull` can install).
pub const AI_MODELS: &[&str] = &["all-minilm-l6-v2"];

/// Everything one component is allowed to reach or read besides its own memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Hosts the component may call with `wasi:http/outgoing-handler`.
    pub outbound: OutboundPolicy,
    /// Environment variables visible through `wasi:cli/environment`, in order.
    /// The host's own environment is never inherited.
    pub env: Vec<(String, String)>,
    /// Key-value stores (`wasi:keyvalue`) the component may open, by name.
    pub key_value_stores: Vec<String>,
    /// Variables readable through `wasi:config/store`, with their values for
    /// the selected environment.
    pub variables: Vec<(String, String)>,
    /// Names of the app's secrets readable through `wasi:config/store`. The
    /// values are not here: the node resolves them when the guest asks.
    pub secrets: Vec<String>,
    /// AI models the component may use through `verge:ai` (embeddings,
    /// classification), by name.
    pub ai_models: Vec<String>,
    /// Vector indexes the component may open through `verge:ai/vectors`.
    pub vector_indexes: Vec<String>,
    /// Trained classifiers (`verge ai train`) the component may use through
    /// `verge:ai/classify.classify-with`.
    pub classifiers: Vec<String>,
    /// Those of `key_value_stores` declared `edge-local` (in a cluster,
    /// written locally and reconciled last-writer-wins); the others are
    /// strict.
    pub edge_local_stores: Vec<String>,
}
