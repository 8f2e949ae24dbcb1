//! Loading a component: read, hash, compile (or fetch from the compile
//! cache), check that it is a `wasi:http` handler whose imports Verge
//! provides, and pre-instantiate it.
//!
//! **Invariant**: a [`LoadedComponent`] can always be instantiated: every
//! import is satisfied and the `wasi:http/incoming-handler` export exists.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use verge_capabilities::{Capabilities, Limits, OutboundPolicy};
use wasmtime::component::Component;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::apis::{Grants, SecretSource};
use crate::cache::hex;
use crate::engine::Executor;
use crate::host::Host;

const HANDLER_EXPORT: &str = "wasi:http/incoming-handler@0.2";

/// A compiled, checked and pre-instantiated component, ready to serve.
pub struct LoadedComponent {
    pub(crate) app: Arc<str>,
    pub(crate) name: Arc<str>,
    pub(crate) hash: String,
    pub(crate) pre: Arc<ProxyPre<Host>>,
    pub(crate) executor: Executor,
    pub(crate) outbound: Arc<OutboundPolicy>,
    pub(crate) env: Arc<[(String, String)]>,
    pub(crate) limits: Limits,
    pub(crate) grants: Arc<Grants>,
    from_cache: bool,
    /// Whether a request was served already (the first one is cold).
    pub(crate) served: std::sync::atomic::AtomicBool,
}

/// The app a component is loaded for, and what the node supplies to it
/// besides its [`Capabilities`].
#[derive(Clone)]
pub struct AppContext {
    /// The node's key for the app; tags every log line.
    pub key: String,
    /// The tenant owning the app's key-value data.
    pub tenant: String,
    /// The app's name within its tenant.
    pub app: String,
    /// The version label (`v3`), for log lines.
    pub version: Option<String>,
    /// Where the values of the app's secrets come from.
    pub secrets: Option<Arc<dyn SecretSource>>,
}

impl AppContext {
    /// An app of a single-tenant node (`verge up`).
    pub fn local(app: &str) -> Self {
        Self {
            key: app.to_string(),
            tenant: "local".to_string(),
            app: app.to_string(),
            version: None,
            secrets: None,
        }
    }
}

/// Why a component could not be loaded. Messages name the file and say
/// what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The component file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The bytes are not WebAssembly at all, or fail validation.
    #[error("`{path}` is not a valid WebAssembly component: {reason}")]
    Invalid {
        /// The component file.
        path: PathBuf,
        /// What the validator said.
        reason: String,
    },
    /// A core module, not a component.
    #[error(
        "`{path}` is a core WebAssembly module, not a component; build it for the \
         `wasm32-wasip2` target, or wrap it with `wasm-tools component new`"
    )]
    CoreModule {
        /// The component file.
        path: PathBuf,
    },
    /// A component that does not export the HTTP handler.
    #[error(
        "`{path}` is not an HTTP handler: it exports {} instead of `wasi:http/incoming-handler@0.2.x`; \
         build it as a wasi:http component (for Rust: the `wasip2::http::proxy::export!` macro)",
        describe_exports(.exports)
    )]
    NotAHandler {
        /// The component file.
        path: PathBuf,
        /// What it exports instead.
        exports: Vec<String>,
    },
    /// A key-value store the component declares cannot be opened.
    #[error("key-value store `{store}`: {reason}")]
    Store {
        /// The store's name.
        store: String,
        /// Why.
        reason: String,
    },
    /// The component declares `verge:ai` models, indexes or classifiers
    /// and this node has none to give.
    #[error("the component declares AI models, vector indexes or classifiers, but {0}")]
    NoAi(&'static str),
    /// An import Verge does not provide.
    #[error("`{path}` cannot run on Verge: {reason}")]
    Unlinkable {
        /// The component file.
        path: PathBuf,
        /// The linker's explanation, naming the missing import.
        reason: String,
    },
}

fn describe_exports(exports: &[String]) -> String {
    if exports.is_empty() {
        "nothing".to_string()
    } else {
        exports
            .iter()
            .map(|e| format!("`{e}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Executor {
    /// Loads the component at `path` as component `name` of `app` (both
    /// tag its logs), and opens the key-value stores it declares. This
    /// compiles on a cache miss (seconds for large components), so call it
    /// from a blocking thread.
    pub fn load(
        &self,
        app: &AppContext,
        name: &str,
        path: &Path,
        capabilities: &Capabilities,
        limits: Limits,
    ) -> Result<Arc<LoadedComponent>, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_bytes(app, name, path, &bytes, capabilities, limits)
    }

    /// Loads a component from memory; `path` is only used in messages.
    pub fn load_bytes(
        &self,
        app: &AppContext,
        name: &str,
        path: &Path,
        bytes: &[u8],
        capabilities: &Capabilities,
        limits: Limits,
    ) -> Result<Arc<LoadedComponent>, LoadError> {
        let hash = hex(&Sha256::digest(bytes));
        check_header(path, bytes)?;
        let grants = Arc::new(self.grants(app, capabilities)?);
        let shared = self.shared_pre(&hash);
        let from_cache = shared.is_some();
        if from_cache {
            let hits = &self.inner.stats.cache_hits;
            hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let pre = match shared {
            Some(pre) => {
                tracing::debug!(
                    component = name,
                    hash = &hash[..16],
                    "sharing a component already loaded"
                );
                pre
            }
            None => self.link(name, path, &hash, bytes)?,
        };
        Ok(Arc::new(LoadedComponent {
            app: app.key.as_str().into(),
            name: name.into(),
            hash,
            pre,
            executor: self.clone(),
            outbound: Arc::new(capabilities.outbound.clone()),
            env: capabilities.env.clone().into(),
            limits,
            grants,
            from_cache,
            served: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// What the component may reach through the host APIs: its declared
    /// stores opened (blocking on first use of a tenant), its variables and
    /// secret names.
    fn grants(&self, app: &AppContext, capabilities: &Capabilities) -> Result<Grants, LoadError> {
        let stores = verge_host_keyvalue::Stores::open(
            self.inner.key_value.as_deref(),
            &app.tenant,
            &app.app,
            &app.key,
            capabilities,
        )
        .map_err(|e| LoadError::Store {
            store: e.store,
            reason: e.reason,
        })?;
        #[cfg(feature = "ai")]
        let ai = verge_host_ai::AiGrant::new(
            self.inner.ai.as_ref(),
            &app.tenant,
            &app.app,
            capabilities,
        )
        .map_err(|verge_host_ai::NoAi| LoadError::NoAi("this node has no AI services"))?;
        #[cfg(not(feature = "ai"))]
        if !(capabilities.ai_models.is_empty()
            && capabilities.vector_indexes.is_empty()
            && capabilities.classifiers.is_empty())
        {
            return Err(LoadError::NoAi(
                "this verge was built without AI; build it with the cargo feature `ai` (on by default)",
            ));
        }
        Ok(Grants {
            #[cfg(feature = "ai")]
            ai,
            stores,
            variables: capabilities.variables.iter().cloned().collect(),
            secrets: capabilities.secrets.clone(),
            vault: app.secrets.clone(),
            version: app.version.as_deref().map(Arc::from),
        })
    }

    /// The linked component with this hash if one is loaded already.
    fn shared_pre(&self, hash: &str) -> Option<Arc<ProxyPre<Host>>> {
        let linked = self.inner.linked.lock().unwrap_or_else(|p| p.into_inner());
        linked.get(hash).and_then(std::sync::Weak::upgrade)
    }

    /// Compiles (or reads from the cache), checks and links a component,
    /// and remembers it for other apps with the same bytes.
    fn link(
        &self,
        name: &str,
        path: &Path,
        hash: &str,
        bytes: &[u8],
    ) -> Result<Arc<ProxyPre<Host>>, LoadError> {
        let engine = &self.inner.engine;
        let started = Instant::now();
        let cached = self.inner.cache.as_ref().and_then(|c| c.get(engine, hash));
        let from_cache = cached.is_some();
        let counter = if from_cache {
            &self.inner.stats.cache_hits
        } else {
            &self.inner.stats.cache_misses
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let component = match cached {
            Some(c) => c,
            None => self.compile(path, hash, bytes)?,
        };
        tracing::info!(
            component = name,
            hash = &hash[..16],
            elapsed_ms = started.elapsed().as_millis() as u64,
            "{}",
            if from_cache {
                "loaded compiled component from cache"
            } else {
                "compiled component"
            }
        );

        let exports: Vec<String> = component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        if !exports.iter().any(|e| e.starts_with(HANDLER_EXPORT)) {
            return Err(LoadError::NotAHandler {
                path: path.to_path_buf(),
                exports,
            });
        }
        let instance_pre =
            self.inner
                .linker
                .instantiate_pre(&component)
                .map_err(|e| LoadError::Unlinkable {
                    path: path.to_path_buf(),
                    reason: format!("{e:#}"),
                })?;
        let pre = Arc::new(
            ProxyPre::new(instance_pre).map_err(|e| LoadError::Unlinkable {
                path: path.to_path_buf(),
                reason: format!("{e:#}"),
            })?,
        );
        let mut linked = self.inner.linked.lock().unwrap_or_else(|p| p.into_inner());
        linked.retain(|_, weak| weak.strong_count() > 0);
        linked.insert(hash.to_string(), Arc::downgrade(&pre));
        Ok(pre)
    }

    fn compile(&self, path: &Path, hash: &str, bytes: &[u8]) -> Result<Component, LoadError> {
        let engine = &self.inner.engine;
        let invalid = |e: wasmtime::Error| LoadError::Invalid {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        };
        match &self.inner.cache {
            None => Component::new(engine, bytes).map_err(invalid),
            Some(cache) => {
                let artifact = engine.precompile_component(bytes).map_err(invalid)?;
                match cache.put(engine, hash, &artifact) {
                    Ok(c) => Ok(c),
                    Err(e) => {
                        tracing::warn!("cannot write the compile cache: {e}");
                        crate::cache::load_fresh(engine, &artifact).map_err(invalid)
                    }
                }
            }
        }
    }
}

/// Refuses non-WebAssembly files and core modules with a specific message
/// before spending time in the compiler.
fn check_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::Invalid {
            path: path.to_path_buf(),
            reason: "the file does not start with the WebAssembly magic bytes".to_string(),
        });
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::CoreModule {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

impl LoadedComponent {
    /// The app the component belongs to.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The component's name within its app.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the component's bytes, hex-encoded.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The limits this component runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the compiled code came from the on-disk cache.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }
}
