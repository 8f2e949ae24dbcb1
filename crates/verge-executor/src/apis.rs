//! Host APIs beyond WASI 0.2 and `wasi:http`, generated from the WIT in
//! the repository's `wit/` folder: `wasi:config/store` and `wasi:logging`
//! here; `wasi:keyvalue` from `verge-host-keyvalue` and `verge:ai` from
//! `verge-host-ai` (only with the `ai` feature), each added to the linker
//! with a view of the request's store data.
//!
//! What a component may reach through them is fixed when it is loaded
//! ([`Grants`]): the stores, variables, secrets, AI model and vector
//! indexes its manifest entry declares. Everything else is invisible or denied.
//!
//! **Invariants**
//! - A denied name is logged at most once per request ([`DenialLog`]).
//! - A secret value lives only in the node's secret source and in the
//!   guest's memory; it is never logged or put in an error.

mod config;
mod logging;

use std::collections::HashMap;
use std::sync::Arc;

pub(crate) use self::logging::LogState;
use crate::host::Host;
use crate::invoke::task::RequestShared;

pub(crate) mod bindings {
    pub(crate) mod config {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "wasi:config/imports",
            imports: { default: async | trappable },
        });
    }
    pub(crate) mod logging {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "wasi:logging/imports",
            imports: { default: async | trappable },
        });
    }
}

/// Logs what a request was refused: once per request, the name cut short,
/// so a guest retrying in a loop cannot flood the log.
pub(crate) struct DenialLog {
    pub(crate) app: Arc<str>,
    pub(crate) request: Arc<RequestShared>,
    pub(crate) logged: bool,
}

impl verge_capabilities::Denials for DenialLog {
    fn denied(&mut self, message: &str, name: &str) {
        if std::mem::replace(&mut self.logged, true) {
            return;
        }
        let shown: String = name.chars().take(64).collect();
        tracing::warn!(
            request_id = %self.request.id,
            app = %self.app,
            component = %self.request.component,
            name = %shown.escape_debug(),
            "{message}"
        );
    }
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
    pub(crate) stores: verge_host_keyvalue::Stores,
    /// Declared variables with their values.
    pub(crate) variables: HashMap<String, String>,
    /// Declared secret names.
    pub(crate) secrets: Vec<String>,
    /// Where secret values come from.
    pub(crate) vault: Option<Arc<dyn SecretSource>>,
    /// What `verge:ai` may reach, if the component declared a model or index.
    #[cfg(feature = "ai")]
    pub(crate) ai: Option<verge_host_ai::AiGrant>,
    /// Version label for log lines.
    pub(crate) version: Option<Arc<str>>,
}

/// Adds the host APIs to `linker`: each from its own crate, given a view
/// of the request's store data.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<Host>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    type H = HasSelf<Host>;
    bindings::config::wasi::config::store::add_to_linker::<_, H>(linker, |h| h)?;
    bindings::logging::wasi::logging::logging::add_to_linker::<_, H>(linker, |h| h)?;
    verge_host_keyvalue::add_to_linker(linker, |h| verge_host_keyvalue::KeyValueView {
        stores: &h.apis.grants.stores,
        table: &mut h.table,
        ops: &h.hooks.shared.usage.kv_ops,
        denials: &mut h.apis.denials,
    })?;
    #[cfg(feature = "ai")]
    verge_host_ai::add_to_linker(linker, |h| verge_host_ai::AiView {
        grant: h.apis.grants.ai.as_ref(),
        table: &mut h.table,
        tokens: &h.hooks.shared.usage.ai_tokens,
        denials: &mut h.apis.denials,
    })?;
    Ok(())
}
