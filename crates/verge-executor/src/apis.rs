//! Host APIs beyond WASI 0.2 and `wasi:http`: `wasi:keyvalue` (store,
//! atomics, batch), `wasi:config/store`, `wasi:logging` and `verge:ai`,
//! generated from the WIT in the repository's `wit/` folder.
//!
//! What a component may reach through them is fixed when it is loaded
//! ([`Grants`]): the stores, variables, secrets, AI model and vector
//! indexes its manifest entry declares. Everything else is invisible or denied.
//!
//! **Invariants**
//! - Opening a store the component did not declare fails inside the guest
//!   with `access-denied`; nothing is created.
//! - A secret value lives only in the node's secret source and in the
//!   guest's memory; it is never logged or put in an error.

mod ai;
mod config;
mod keyvalue;
mod logging;

use std::collections::HashMap;
use std::sync::Arc;

// Public because the generated bindings re-export it.
pub(crate) use self::ai::AiGrant;
#[allow(unreachable_pub)]
pub use self::ai::IndexHandle;
#[allow(unreachable_pub)]
pub use self::keyvalue::BucketHandle;
pub(crate) use self::logging::LogState;

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "verge:platform/host-apis",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::apis::BucketHandle,
            "verge:ai/vectors.index": crate::apis::IndexHandle,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => crate::apis::KvFailure,
        },
    });
}

impl crate::host::Host {
    /// Logs a denied store, model or index: once per request, the name cut
    /// short, so a guest retrying in a loop cannot flood the log.
    pub(crate) fn log_denied(&mut self, message: &str, name: &str) {
        if std::mem::replace(&mut self.apis.denied_logged, true) {
            return;
        }
        let shown: String = name.chars().take(64).collect();
        tracing::warn!(
            request_id = %self.shared().id,
            app = %self.apis.app,
            component = %self.shared().component,
            name = %shown.escape_debug(),
            "{message}"
        );
    }
}

/// The error a `wasi:keyvalue` call returns to the guest.
#[derive(Debug)]
pub(crate) enum KvFailure {
    /// The component did not declare the store.
    AccessDenied,
    /// Anything else, with a message for the guest.
    Other(String),
}

/// The current values of an app's secrets, kept by the node and updated
/// when an operator sets or deletes one.
pub trait SecretSource: Send + Sync {
    /// The value of secret `name`, if it is set.
    fn secret(&self, name: &str) -> Option<Arc<str>>;
}

/// What one loaded component may reach through the host APIs.
#[derive(Default)]
pub(crate) struct Grants {
    /// Declared key-value stores, opened.
    pub(crate) stores: HashMap<String, verge_kv::Bucket>,
    /// Declared variables with their values.
    pub(crate) variables: HashMap<String, String>,
    /// Declared secret names.
    pub(crate) secrets: Vec<String>,
    /// Where secret values come from.
    pub(crate) vault: Option<Arc<dyn SecretSource>>,
    /// What `verge:ai` may reach, if the component declared a model or index.
    pub(crate) ai: Option<AiGrant>,
    /// Version label for log lines.
    pub(crate) version: Option<Arc<str>>,
}

/// Adds the host APIs to `linker`.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<crate::host::Host>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    type H = HasSelf<crate::host::Host>;
    bindings::wasi::keyvalue::store::add_to_linker::<_, H>(linker, |h| h)?;
    bindings::wasi::keyvalue::atomics::add_to_linker::<_, H>(linker, |h| h)?;
    bindings::wasi::keyvalue::batch::add_to_linker::<_, H>(linker, |h| h)?;
    bindings::wasi::config::store::add_to_linker::<_, H>(linker, |h| h)?;
    bindings::wasi::logging::logging::add_to_linker::<_, H>(linker, |h| h)?;
    bindings::verge::ai::types::add_to_linker::<_, H>(linker, |h| h)?;
    bindings::verge::ai::embeddings::add_to_linker::<_, H>(linker, |h| h)?;
    bindings::verge::ai::vectors::add_to_linker::<_, H>(linker, |h| h)?;
    bindings::verge::ai::classify::add_to_linker::<_, H>(linker, |h| h)?;
    Ok(())
}
