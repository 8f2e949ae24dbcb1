//! The node as the control API sees it ([`DataPlane`]): compile a version
//! before it is recorded, and tell when the store has been applied.
//!
//! Compiled versions are kept by app, version number and digest, so the
//! sync that follows a deploy swaps in the very runtime the deploy
//! compiled: traffic moves only to a version that is ready.
//!
//! In a cluster it also keeps the catalog of every app's placement and
//! routes (the routes of apps placed elsewhere, for forwarding), reports
//! what the node serves to the registry, and answers which nodes serve a
//! change ([`DataPlane::wait_fleet`]) and the node list.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use verge_control::{AppRecord, Applied, DataPlane, Fleet, PrepareError, VersionRecord};
use verge_manifest::Manifest;
use verge_node::{AppConfig, AppRuntime, ComponentConfig, Node};
use verge_store::{BlobId, BlobStore, Revision};

use arc_swap::ArcSwap;
use verge_cluster::{LocalState, NodeReport, NodeStatus, Registry};
use verge_manifest::Placement;
use verge_router::{Route, RouteTable};

use crate::prepared::{Prepared, PreparedKey};
use crate::secrets::Vaults;

/// The node behind the control API.
pub(crate) struct NodePlane {
    pub(crate) node: Arc<Node>,
    blobs: Arc<dyn BlobStore>,
    prepared: Prepared<Arc<AppRuntime>>,
    applied: watch::Sender<Revision>,
    /// Per app, the revision of its last change and why it failed, if it
    /// did.
    outcomes: Mutex<HashMap<String, (Revision, Option<String>)>>,
    /// Decrypted secrets by app.
    pub(crate) vaults: Vaults,
    /// The cluster's nodes; `None` for a standalone server.
    pub(crate) registry: Option<Arc<Registry>>,
    /// This node's labels in a cluster; `None` (standalone) runs every app.
    labels: Option<BTreeMap<String, String>>,
    /// Every app the store records, with where it runs.
    catalog: Mutex<HashMap<String, Catalogued>>,
    /// Routes of the apps placed on other nodes, to forward their requests.
    remote: ArcSwap<RouteTable<String>>,
    /// When the process started (Unix seconds), for a standalone
    /// server's own entry in `GET /v1/nodes`.
    started: u64,
}

/// Where the runtime of `version` of `record` is kept.
fn prepared_key(record: &AppRecord, version: &VersionRecord) -> PreparedKey {
    (app_id(record), version.number, version.digest.clone())
}

/// The identity of an app on a node, `tenant/app` (its store key is
/// `apps/tenant/app`, see `verge_control::model::app_key`).
pub(crate) fn app_id(record: &AppRecord) -> String {
    format!("{}/{}", record.tenant, record.name)
}

impl NodePlane {
    pub(crate) fn new(
        node: Arc<Node>,
        blobs: Arc<dyn BlobStore>,
        vaults: Vaults,
        cluster: Option<(Arc<Registry>, BTreeMap<String, String>)>,
    ) -> Arc<Self> {
        let (registry, labels) = cluster.unzip();
        Arc::new(Self {
            vaults,
            registry,
            labels,
            catalog: Mutex::new(HashMap::new()),
            remote: ArcSwap::default(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            node,
            blobs,
            prepared: Prepared::new(),
            applied: watch::Sender::new(0),
            outcomes: Mutex::new(HashMap::new()),
        })
    }

    /// The runtime of `version`, compiling it unless already prepared.
    pub(crate) async fn runtime(
        &self,
        record: &AppRecord,
        version: &VersionRecord,
    ) -> Result<Arc<AppRuntime>, PrepareError> {
        let key = app_id(record);
        let cache_key = prepared_key(record, version);
        if let Some(rt) = self.prepared.get(&cache_key) {
            return Ok(rt);
        }
        let (config, paths) = self.app_config(record, version).await?;
        let node = self.node.clone();
        let label = format!("v{}", version.number);
        let runtime = tokio::task::spawn_blocking(move || {
            let apps = node.apps();
            let previous = apps
                .get(&key)
                .and_then(|slot| slot.versions().first().map(|(rt, _)| rt.clone()));
            node.prepare_version(&config, Some(label), previous.as_deref())
        })
        .await
        .map_err(|e| PrepareError::Invalid(format!("compiling failed: {e}")))?
        .map_err(|e| {
            // Blob paths are internal; name the component files instead.
            let mut message = e.to_string();
            for (path, name) in &paths {
                message = message.replace(&path.display().to_string(), &format!("{name}.wasm"));
            }
            PrepareError::Invalid(message)
        })?;
        Ok(self.prepared.insert(cache_key, Arc::new(runtime)))
    }

    /// The store records exactly `keep` as the live versions of app `key`:
    /// forgets its other prepared runtimes, except those a deploy or
    /// traffic change under way still holds.
    pub(crate) fn retain(&self, key: &str, keep: &[(u32, String)]) {
        self.prepared.retain(key, keep);
    }

    /// Apps whose last change could not be applied.
    pub(crate) fn failed(&self) -> Vec<String> {
        let outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        outcomes.keys().cloned().collect()
    }

    /// Records how applying app `key` at `revision` went.
    pub(crate) fn set_outcome(&self, key: &str, revision: Revision, error: Option<String>) {
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            None => outcomes.remove(key),
            Some(e) => outcomes.insert(key.to_string(), (revision, Some(e))),
        };
    }

    pub(crate) fn set_applied(&self, revision: Revision) {
        let moved = self.applied.send_if_modified(|r| {
            let newer = revision > *r;
            if newer {
                *r = revision;
            }
            newer
        });
        if moved && let Some(registry) = &self.registry {
            // Tell the cluster at once, so a deploy waiting on this node
            // learns it serves.
            registry.poke();
        }
    }

    /// Where app `key` runs, as the store records it at `revision`;
    /// returns whether it runs on this node.
    pub(crate) fn catalog(
        &self,
        key: &str,
        revision: Revision,
        record: &AppRecord,
    ) -> Result<bool, String> {
        // The newest version taking traffic decides where the app runs;
        // requests are forwarded by the routes of every live version.
        let mut placement = (0, Placement::default());
        let mut routes = Vec::new();
        for (version, _) in record.live() {
            let manifest = manifest_of(version)?;
            if version.number >= placement.0 {
                placement = (version.number, manifest.placement.clone());
            }
            for c in manifest.components {
                routes.extend(c.routes);
            }
        }
        let placement = placement.1;
        let here = self.labels.as_ref().is_none_or(|l| placement.matches(l));
        let entry = Catalogued {
            placement,
            routes,
            revision,
            here,
        };
        self.lock_catalog().insert(key.to_string(), entry);
        self.rebuild_remote();
        Ok(here)
    }

    /// Forgets app `key` (deleted).
    pub(crate) fn uncatalog(&self, key: &str) {
        if self.lock_catalog().remove(key).is_some() {
            self.rebuild_remote();
        }
    }

    fn lock_catalog(&self) -> std::sync::MutexGuard<'_, HashMap<String, Catalogued>> {
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rebuild_remote(&self) {
        if self.labels.is_none() {
            return;
        }
        let catalog = self.lock_catalog();
        let mut seen = std::collections::HashSet::new();
        let mut entries = Vec::new();
        for (key, app) in catalog.iter().filter(|(_, app)| !app.here) {
            for route in &app.routes {
                if seen.insert(route) {
                    entries.push((route.clone(), key.clone()));
                }
            }
        }
        match RouteTable::new(entries) {
            Ok(table) => self.remote.store(Arc::new(table)),
            Err(e) => tracing::error!("cannot route to other nodes' apps: {e}"),
        }
    }

    /// The app on another node serving `host` and `path`, with where it
    /// runs and the revision a node must have applied to serve it.
    pub(crate) fn remote(
        &self,
        host: Option<&str>,
        path: &str,
    ) -> Option<(String, Placement, Revision)> {
        let key = self.remote.load().lookup(host, path)?.1.clone();
        let catalog = self.lock_catalog();
        let app = catalog.get(&key)?;
        Some((key, app.placement.clone(), app.revision))
    }

    /// What the node reports to the cluster.
    pub(crate) fn local_state(&self) -> LocalState {
        let outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        LocalState {
            applied: *self.applied.borrow(),
            apps: self.node.apps().len(),
            failed: outcomes
                .iter()
                .filter(|(_, (_, error))| error.is_some())
                .map(|(key, (revision, _))| (key.clone(), *revision))
                .collect(),
            uplink_bytes: 0,
        }
    }

    async fn app_config(
        &self,
        record: &AppRecord,
        version: &VersionRecord,
    ) -> Result<(AppConfig, Vec<(PathBuf, String)>), PrepareError> {
        let manifest = manifest_of(version).map_err(PrepareError::Invalid)?;
        let mut components = Vec::new();
        let mut paths = Vec::new();
        for c in &manifest.components {
            let digest = version.components.get(&c.name).ok_or_else(|| {
                PrepareError::Invalid(format!("component `{}` has no blob", c.name))
            })?;
            let id: BlobId = digest
                .parse()
                .map_err(|e| PrepareError::Invalid(format!("component `{}`: {e}", c.name)))?;
            let wasm = self.blobs.local_path(&id).await.map_err(|e| {
                let message = format!("component `{}`: {e}", c.name);
                match e {
                    verge_store::BlobError::Unavailable(_) => PrepareError::Unavailable(message),
                    _ => PrepareError::Invalid(message),
                }
            })?;
            paths.push((wasm.clone(), c.name.clone()));
            components.push(ComponentConfig {
                name: c.name.clone(),
                wasm,
                routes: c.routes.clone(),
                capabilities: c.capabilities.clone(),
                limits: c.limits,
            });
        }
        Ok((
            AppConfig {
                // The node's key; it also tags the app's log lines.
                name: app_id(record),
                tenant: record.tenant.clone(),
                app: record.name.clone(),
                secrets: Some(self.vaults.vault(&app_id(record))),
                components,
            },
            paths,
        ))
    }
}

/// A node as `GET /v1/nodes` shows it.
fn node_view(node: NodeStatus) -> verge_api::NodeStatus {
    let report = node.report;
    verge_api::NodeStatus {
        name: report.name,
        labels: report.labels,
        version: report.version,
        addr: report.addr,
        started: report.started,
        sent: report.sent,
        applied: report.applied,
        apps: report.apps as u64,
        failed: report.failed,
        load: report.load,
        uplink_bytes: report.uplink_bytes,
        status: match node.status {
            "up" => verge_api::NodeState::Up,
            "degraded" => verge_api::NodeState::Degraded,
            "down" => verge_api::NodeState::Down,
            _ => verge_api::NodeState::Unknown,
        },
        seen_ms: node.seen_ms,
        this_node: node.this_node,
        rtt_ms: node.rtt_ms,
    }
}

/// Where an app runs, as recorded.
struct Catalogued {
    placement: Placement,
    routes: Vec<Route>,
    revision: Revision,
    here: bool,
}

/// The manifest of `version`, in its selected environment.
fn manifest_of(version: &VersionRecord) -> Result<Manifest, String> {
    let mut manifest =
        Manifest::parse(&version.manifest, Path::new("verge.toml")).map_err(|e| e.to_string())?;
    if let Some(env) = &version.environment {
        manifest
            .select_environment(env)
            .map_err(|e| e.to_string())?;
    }
    Ok(manifest)
}

#[async_trait]
impl DataPlane for NodePlane {
    async fn prepare(&self, app: &AppRecord, version: &VersionRecord) -> Result<(), PrepareError> {
        let runtime = self.runtime(app, version).await?;
        self.prepared.hold(prepared_key(app, version), runtime);
        Ok(())
    }

    fn release(&self, app: &AppRecord, version: &VersionRecord) {
        self.prepared.release(&prepared_key(app, version));
    }

    async fn wait_applied(&self, key: &str, revision: Revision, timeout: Duration) -> Applied {
        let mut applied = self.applied.subscribe();
        let reached = tokio::time::timeout(timeout, applied.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            return Applied::TimedOut;
        }
        let outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        match outcomes.get(key) {
            Some((r, Some(error))) if *r >= revision => Applied::Failed(error.clone()),
            _ => Applied::Serving,
        }
    }

    fn nodes(&self) -> Vec<verge_api::NodeStatus> {
        let nodes = match &self.registry {
            Some(registry) => registry.nodes(),
            None => {
                let state = self.local_state();
                vec![NodeStatus {
                    report: NodeReport {
                        name: "standalone".to_string(),
                        labels: Default::default(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        addr: None,
                        started: self.started,
                        sent: 0,
                        applied: state.applied,
                        apps: state.apps,
                        failed: state.failed,
                        load: 0.0,
                        uplink_bytes: 0,
                    },
                    status: "up",
                    seen_ms: 0,
                    this_node: true,
                    rtt_ms: None,
                }]
            }
        };
        nodes.into_iter().map(node_view).collect()
    }

    async fn wait_fleet(&self, key: &str, revision: Revision, timeout: Duration) -> Option<Fleet> {
        let registry = self.registry.as_ref()?;
        let placement = self
            .lock_catalog()
            .get(key)
            .map(|app| app.placement.clone())
            .unwrap_or_default();
        let placed = |n: &NodeStatus| placement.matches(&n.report.labels);
        let nodes = registry
            .wait_until(
                |nodes| {
                    nodes
                        .iter()
                        .filter(|n| n.is_up() && placed(n))
                        .all(|n| n.serves(key, revision))
                },
                timeout,
            )
            .await;
        let mut fleet = Fleet {
            min_replicas: placement.min_replicas,
            ..Fleet::default()
        };
        for node in nodes.iter().filter(|n| placed(n)) {
            let name = node.report.name.clone();
            if !node.is_up() {
                fleet.down.push(name);
            } else if node.serves(key, revision) {
                fleet.ready.push(name);
            } else {
                fleet.lagging.push(name);
            }
        }
        Some(fleet)
    }
}
