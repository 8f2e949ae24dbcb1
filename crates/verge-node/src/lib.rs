//! A data-plane node: the apps it serves and the request pipeline
//! `router → guard → executor` behind the ingress.
//!
//! The node holds its [`Apps`] behind an atomic pointer: every app with the
//! versions that take traffic and their weights, and one route table over
//! all of them. Loading an app version compiles every component first
//! ([`Node::prepare`]); changing what is served swaps the whole set in one
//! step; replacing one component (hot reload) builds a new runtime that
//! shares the untouched components. In-flight requests keep the runtime they
//! started with, so a swap never drops or mixes requests.
//!
//! **Invariants**
//! - Requests under `/.well-known/verge/` are answered by the node itself and
//!   never reach a guest.
//! - Error responses carry a status, a short reason and the request id,
//!   never guest traps, paths or backtraces; those go to the log.
//!
//! **API boundary**: the node does not parse manifests or run builds; the CLI
//! (or later the control plane) hands it an [`AppConfig`].

mod apps;
mod body;
mod builder;
mod pipeline;
mod trace;
mod usage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use verge_capabilities::{Capabilities, Limits};
use verge_executor::{AppContext, Executor, LoadError, LoadedComponent, SecretSource};
use verge_guard::ConcurrencyLimit;
use verge_router::{Route, RouteError, RouteTable};

pub use apps::{AppSlot, Apps};
pub use body::NodeBody;
pub use builder::{AiSettings, BuiltNode, NodeSettings, build};
pub use trace::Tracing;
pub use usage::Telemetry;

use usage::AppUsage;

/// Where node-internal endpoints live.
pub const INTERNAL_PREFIX: &str = "/.well-known/verge/";

/// An app to serve, already validated.
#[derive(Clone)]
pub struct AppConfig {
    /// The node's key for the app (`tenant/app` on a server); tags its logs.
    pub name: String,
    /// The tenant owning the app's key-value data.
    pub tenant: String,
    /// The app's name within its tenant.
    pub app: String,
    /// Where the values of the app's secrets come from.
    pub secrets: Option<Arc<dyn SecretSource>>,
    /// Its components.
    pub components: Vec<ComponentConfig>,
}

impl AppConfig {
    /// An app of a single-tenant node (`verge up`), without secrets.
    pub fn local(name: &str, components: Vec<ComponentConfig>) -> Self {
        Self {
            name: name.to_string(),
            tenant: "local".to_string(),
            app: name.to_string(),
            secrets: None,
            components,
        }
    }
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConfig")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("app", &self.app)
            .field("components", &self.components)
            .finish_non_exhaustive()
    }
}

/// One component of an [`AppConfig`].
#[derive(Debug, Clone)]
pub struct ComponentConfig {
    /// Unique name within the app.
    pub name: String,
    /// The `.wasm` file.
    pub wasm: PathBuf,
    /// Routes it serves.
    pub routes: Vec<Route>,
    /// What it may reach.
    pub capabilities: Capabilities,
    /// Its limits.
    pub limits: Limits,
}

/// Why an app could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A component failed to load.
    #[error("component `{component}`: {source}")]
    Load {
        /// The component's name.
        component: String,
        /// Why.
        source: LoadError,
    },
    /// The routes conflict.
    #[error(transparent)]
    Routes(#[from] RouteError),
    /// The named component is not part of the current app.
    #[error("no component named `{0}` in the running app")]
    UnknownComponent(String),
}

/// A component ready to serve, with its admission state.
pub struct ComponentRuntime {
    pub(crate) config: ComponentConfig,
    pub(crate) loaded: Arc<LoadedComponent>,
    pub(crate) limit: ConcurrencyLimit,
}

/// Everything needed to route and serve one app version.
pub struct AppRuntime {
    pub(crate) name: String,
    pub(crate) version: Option<String>,
    pub(crate) context: AppContext,
    pub(crate) routes: RouteTable<Arc<ComponentRuntime>>,
    pub(crate) components: HashMap<String, Arc<ComponentRuntime>>,
    /// Usage, metrics and quotas of this version, when the node keeps any.
    pub(crate) usage: Option<Arc<AppUsage>>,
}

impl AppRuntime {
    fn build(
        context: AppContext,
        components: Vec<Arc<ComponentRuntime>>,
        usage: Option<Arc<AppUsage>>,
    ) -> Result<Self, RouteError> {
        let (name, version) = (context.key.clone(), context.version.clone());
        let routes = RouteTable::new(
            components
                .iter()
                .flat_map(|c| c.config.routes.iter().map(move |r| (r.clone(), c.clone()))),
        )?;
        let components = components
            .into_iter()
            .map(|c| (c.config.name.clone(), c))
            .collect();
        Ok(Self {
            name,
            version,
            context,
            routes,
            components,
            usage,
        })
    }

    /// The app's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every route of the app.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().map(|(r, _)| r)
    }

    /// Names of the app's components, sorted.
    pub fn component_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.components.keys().cloned().collect();
        names.sort();
        names
    }
}

/// The node: the apps it serves plus the executor that runs them.
pub struct Node {
    executor: Executor,
    telemetry: Telemetry,
    pub(crate) metrics: Option<verge_meter::metric::NodeMetrics>,
    apps: ArcSwap<Apps>,
    /// Serialises changes to `apps` (readers never take it).
    updating: Mutex<()>,
    ready: AtomicBool,
}

impl Node {
    /// A node with no app yet; it answers 503 on health until it is marked
    /// ready or an app is installed.
    pub fn new(executor: Executor) -> Arc<Self> {
        Self::with_telemetry(executor, Telemetry::default())
    }

    /// A node that measures and limits what `telemetry` says.
    pub fn with_telemetry(executor: Executor, telemetry: Telemetry) -> Arc<Self> {
        Arc::new(Self {
            executor,
            metrics: telemetry
                .metrics
                .then(verge_meter::metric::NodeMetrics::default),
            telemetry,
            apps: ArcSwap::from_pointee(Apps::default()),
            updating: Mutex::new(()),
            ready: AtomicBool::new(false),
        })
    }

    /// Compiles every component of `app` (blocking; seconds on a cache miss)
    /// and returns the runtime without installing it. Components keep the
    /// concurrency counts of the same-named components of the running app.
    pub fn prepare(&self, app: &AppConfig) -> Result<AppRuntime, NodeError> {
        let current = self.current();
        self.prepare_version(app, None, current.as_deref())
    }

    /// Like [`Node::prepare`], for one labelled version of an app served
    /// next to others; its components share concurrency counts with those
    /// of `previous`.
    pub fn prepare_version(
        &self,
        app: &AppConfig,
        version: Option<String>,
        previous: Option<&AppRuntime>,
    ) -> Result<AppRuntime, NodeError> {
        let context = AppContext {
            key: app.name.clone(),
            tenant: app.tenant.clone(),
            app: app.app.clone(),
            version: version.clone(),
            secrets: app.secrets.clone(),
        };
        let mut components = Vec::with_capacity(app.components.len());
        for c in &app.components {
            components.push(Arc::new(self.prepare_component(&context, c, previous)?));
        }
        let usage = AppUsage::new(&self.telemetry, &context);
        Ok(AppRuntime::build(context, components, usage)?)
    }

    fn prepare_component(
        &self,
        app: &AppContext,
        c: &ComponentConfig,
        previous: Option<&AppRuntime>,
    ) -> Result<ComponentRuntime, NodeError> {
        let loaded = self
            .executor
            .load(app, &c.name, &c.wasm, &c.capabilities, c.limits)
            .map_err(|source| NodeError::Load {
                component: c.name.clone(),
                source,
            })?;
        // A new version of a running component shares its concurrency
        // count, so requests still running on the old version keep counting
        // against the cap.
        let limit = previous
            .and_then(|app| app.components.get(&c.name).map(|old| old.limit.clone()))
            .filter(|old| old.limit() == c.limits.max_concurrency)
            .unwrap_or_else(|| ConcurrencyLimit::new(c.limits.max_concurrency));
        Ok(ComponentRuntime {
            config: c.clone(),
            loaded,
            limit,
        })
    }

    /// Makes `app` the only one served, atomically. Requests already
    /// running finish on the runtime they started with.
    pub fn install(&self, app: AppRuntime) {
        let _updating = self.updating.lock().unwrap_or_else(|p| p.into_inner());
        let key = app.name.clone();
        let apps = Apps::default()
            .with(key, vec![(Arc::new(app), 100)])
            .unwrap_or_default();
        self.apps.store(Arc::new(apps));
        self.mark_ready();
    }

    /// Serves `versions` (runtime and weight) under `key`, next to the other
    /// apps, replacing what `key` served before. Refused, with nothing
    /// changed, if a route would be claimed by two apps.
    pub fn set_app(
        &self,
        key: &str,
        versions: Vec<(Arc<AppRuntime>, u32)>,
    ) -> Result<(), RouteError> {
        let _updating = self.updating.lock().unwrap_or_else(|p| p.into_inner());
        let apps = self.apps.load().with(key.to_string(), versions)?;
        self.apps.store(Arc::new(apps));
        Ok(())
    }

    /// Stops serving `key`; requests already running finish.
    pub fn remove_app(&self, key: &str) {
        let _updating = self.updating.lock().unwrap_or_else(|p| p.into_inner());
        let apps = self.apps.load().without(key);
        self.apps.store(Arc::new(apps));
    }

    /// Everything served now.
    pub fn apps(&self) -> Arc<Apps> {
        self.apps.load_full()
    }

    /// Declares the node ready for traffic even with no app (a server
    /// whose apps are all loaded).
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Reloads one component of the running app from its file (blocking),
    /// keeping every other component as it is. On error the running app is
    /// left untouched.
    pub fn reload_component(&self, name: &str) -> Result<(), NodeError> {
        let current = self
            .current()
            .ok_or_else(|| NodeError::UnknownComponent(name.to_string()))?;
        let old = current
            .components
            .get(name)
            .ok_or_else(|| NodeError::UnknownComponent(name.to_string()))?;
        let fresh =
            Arc::new(self.prepare_component(&current.context, &old.config, Some(&current))?);
        let components = current
            .components
            .values()
            .map(|c| {
                if c.config.name == name {
                    fresh.clone()
                } else {
                    c.clone()
                }
            })
            .collect();
        self.install(AppRuntime::build(
            current.context.clone(),
            components,
            current.usage.clone(),
        )?);
        Ok(())
    }

    /// The app being served by a single-app node (`verge up`): the
    /// heaviest version of the first app.
    pub fn current(&self) -> Option<Arc<AppRuntime>> {
        self.apps.load().first()
    }

    /// Stops background work (the executor's slow lane). Call it from
    /// outside any async context once serving has stopped.
    pub fn shutdown(&self) {
        self.executor.shutdown();
    }

    /// Sets the node-wide metrics to what they are now (before a scrape).
    pub fn update_metrics(&self, resident_memory: u64) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let stats = self.executor.stats();
        metrics.set(&verge_meter::metric::NodeSnapshot {
            instances_active: stats.active_instances,
            instance_slots: stats.instance_slots,
            compile_cache_hits: stats.compile_cache_hits,
            compile_cache_misses: stats.compile_cache_misses,
            app_versions: self.apps.load().version_count() as u64,
            resident_memory,
            pool_memories: stats.pool_memories,
            pool_warm_bytes: stats.pool_warm_bytes,
        });
    }

    /// Whether the node takes traffic: an app is installed or the node
    /// was marked ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
