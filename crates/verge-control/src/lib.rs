//! The control plane's HTTP API, under `/v1`: apps and their immutable
//! versions, traffic splits and rollback, secrets and key-value data of
//! apps, scoped tokens of tenants, usage and cost, the audit log, and the
//! nodes of a cluster. Described by `/v1/openapi.json`.
//!
//! The API never sits in the request path of apps. It writes desired state
//! to the [`Store`]; nodes watch the store and serve what it says. Before a
//! version is recorded, the [`DataPlane`] compiles it, so a version that is
//! stored can always be served.
//!
//! **Invariants**
//! - Every route except `/v1/health` and `/v1/openapi.json` needs a valid
//!   bearer token ([`Caller`]).
//! - A tenant sees only its own apps: another tenant's app answers 404,
//!   exactly as a missing one does.
//! - Every mutation is appended to the audit log with its outcome.
//!
//! **API boundary**: no wasmtime and no data-plane types; compilation and
//! serving are behind [`DataPlane`].

mod apps;
pub mod audit;
pub mod auth;
mod deploy;
mod error;
mod kv;
pub mod logs;
pub mod model;
mod nodes;
mod openapi;
mod secrets;
mod tokens;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::routing::{get, post, put};
use verge_store::{BlobStore, Revision, Store};

pub use auth::{Caller, Issued};
pub use error::ApiError;
pub use model::{AppRecord, VersionRecord};

/// Where the data plane is asked to compile and confirms it serves.
#[async_trait]
pub trait DataPlane: Send + Sync + 'static {
    /// Compiles and checks `version` of `app` before it is recorded, and
    /// keeps the result until [`DataPlane::release`]. The error's message
    /// is for the deployer (which component, why).
    async fn prepare(&self, app: &AppRecord, version: &VersionRecord) -> Result<(), PrepareError>;

    /// The deploy or traffic change that prepared `version` of `app` is
    /// over, recorded or not: what it prepared may go unless the store
    /// records it. Called once for every successful `prepare`.
    fn release(&self, app: &AppRecord, version: &VersionRecord);

    /// Waits until the node has applied the store as of `revision`, and
    /// says whether app `key` (`tenant/app`) is served as recorded.
    async fn wait_applied(&self, key: &str, revision: Revision, timeout: Duration) -> Applied;

    /// The nodes of the cluster (`GET /v1/nodes`); a standalone server
    /// lists itself.
    fn nodes(&self) -> Vec<verge_api::NodeStatus>;

    /// In a cluster, waits until every node that is up serves app `key` as
    /// of `revision`, at most `timeout`, and says which do; `None` for a
    /// standalone server.
    async fn wait_fleet(&self, key: &str, revision: Revision, timeout: Duration) -> Option<Fleet>;
}

/// Why the data plane cannot prepare a version; the message says which
/// component and why, in words for the deployer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// The version cannot run as deployed: a component does not compile
    /// or link, or its manifest no longer reads (400).
    #[error("{0}")]
    Invalid(String),
    /// Something it needs is out of reach now, such as a component's blob
    /// on a cluster this node is cut off from (503); trying later may work.
    #[error("{0}")]
    Unavailable(String),
}

impl PrepareError {
    /// The same error, its message starting with `what: `.
    pub fn context(self, what: &str) -> Self {
        match self {
            PrepareError::Invalid(m) => PrepareError::Invalid(format!("{what}: {m}")),
            PrepareError::Unavailable(m) => PrepareError::Unavailable(format!("{what}: {m}")),
        }
    }
}

impl From<PrepareError> for ApiError {
    fn from(e: PrepareError) -> Self {
        match e {
            PrepareError::Invalid(m) => ApiError::BadRequest(m),
            PrepareError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

/// Versions one deploy or traffic change prepared, released when it is
/// dropped: on failure at once, on success once the node has confirmed
/// (or given up confirming), so what a failed deploy compiled never stays.
pub(crate) struct Prepared {
    data_plane: Arc<dyn DataPlane>,
    held: Vec<(AppRecord, VersionRecord)>,
}

impl Prepared {
    pub(crate) fn new(data_plane: &Arc<dyn DataPlane>) -> Self {
        Self {
            data_plane: data_plane.clone(),
            held: Vec::new(),
        }
    }

    /// Prepares `version` of `app`, held until this is dropped.
    pub(crate) async fn prepare(
        &mut self,
        app: &AppRecord,
        version: &VersionRecord,
    ) -> Result<(), PrepareError> {
        self.data_plane.prepare(app, version).await?;
        // Only the identity of the app matters to a release.
        let app = AppRecord {
            versions: Vec::new(),
            traffic: Vec::new(),
            ..app.clone()
        };
        self.held.push((app, version.clone()));
        Ok(())
    }

    /// Whether this change prepared `version` already.
    pub(crate) fn holds(&self, version: &VersionRecord) -> bool {
        self.held
            .iter()
            .any(|(_, v)| v.number == version.number && v.digest == version.digest)
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        for (app, version) in &self.held {
            self.data_plane.release(app, version);
        }
    }
}

pub use verge_api::Fleet;

/// What the node did with a recorded change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// It serves the change.
    Serving,
    /// It could not (the reason is for the operator's log and the caller).
    Failed(String),
    /// It did not confirm within the time allowed.
    TimedOut,
}

impl Applied {
    /// What an answer says of it: whether the change is served, and the
    /// reason when not.
    pub(crate) fn confirmation(&self) -> verge_api::Confirmation {
        let problem = match self {
            Applied::Serving => None,
            Applied::Failed(reason) => Some(reason.clone()),
            Applied::TimedOut => {
                Some("the node did not confirm in time; it may still be loading".to_string())
            }
        };
        verge_api::Confirmation {
            serving: *self == Applied::Serving,
            problem,
            nodes: None,
        }
    }
}

/// Settings of the control API.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Largest component upload accepted; larger ones get 413.
    pub max_upload: u64,
    /// How long a deploy waits for the node to serve the new version.
    pub apply_timeout: Duration,
    /// How often a `logs?follow=true` stream checks that its token and
    /// app still exist.
    pub log_recheck: Duration,
    /// Makes deploys stop forever at this stage (`validated`, `prepared`,
    /// `recorded`) so a crash test can kill the process there.
    pub pause_deploys_at: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            max_upload: 64 * 1024 * 1024,
            apply_timeout: Duration::from_secs(30),
            log_recheck: Duration::from_secs(15),
            pause_deploys_at: None,
        }
    }
}

/// The shared state of the API.
pub struct Control {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) data_plane: Arc<dyn DataPlane>,
    pub(crate) config: ControlConfig,
    pub(crate) auth_limiter: auth::AuthLimiter,
    pub(crate) logs: Arc<logs::LogHub>,
    /// Open `logs?follow=true` streams.
    pub(crate) followers: Arc<std::sync::atomic::AtomicUsize>,
    /// Serialises audit appends.
    audit_lock: tokio::sync::Mutex<()>,
    /// Serialises deploys and traffic changes, so route claims are checked
    /// and recorded as one step.
    pub(crate) deploy_lock: tokio::sync::Mutex<()>,
    /// Seals secret values.
    pub(crate) keyring: Arc<verge_secrets::Keyring>,
    /// Apps' key-value stores, for `verge kv`.
    pub(crate) key_value: Option<Arc<verge_kv::KeyValue>>,
    /// Metered usage, for `verge usage`.
    pub(crate) usage: Option<Arc<verge_meter::UsageDb>>,
    /// Turns usage into cost.
    pub(crate) prices: verge_meter::PriceSheet,
}

/// What the API needs besides the store to manage app state: the keyring
/// that seals secrets and the key-value stores.
pub struct StateAccess {
    /// Seals secret values.
    pub keyring: Arc<verge_secrets::Keyring>,
    /// Apps' key-value stores, for `verge kv`; `None` answers 503.
    pub key_value: Option<Arc<verge_kv::KeyValue>>,
    /// Metered usage, for `verge usage`; `None` answers 503.
    pub usage: Option<Arc<verge_meter::UsageDb>>,
    /// Turns usage into cost.
    pub prices: verge_meter::PriceSheet,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// The API state.
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Arc<dyn BlobStore>,
        data_plane: Arc<dyn DataPlane>,
        logs: Arc<logs::LogHub>,
        config: ControlConfig,
        state: StateAccess,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            blobs,
            data_plane,
            logs,
            followers: Arc::default(),
            config,
            auth_limiter: auth::AuthLimiter::new(),
            audit_lock: tokio::sync::Mutex::new(()),
            deploy_lock: tokio::sync::Mutex::new(()),
            keyring: state.keyring,
            key_value: state.key_value,
            usage: state.usage,
            prices: state.prices,
        })
    }

    /// Appends an entry that records no change (a refusal, a failed
    /// attempt). A failure to append is logged as an error.
    pub async fn audit(&self, record: audit::Record) {
        let _serial = self.audit_lock.lock().await;
        if let Err(e) = audit::append(self.store.as_ref(), record, Vec::new()).await {
            tracing::error!("cannot append to the audit log: {e}");
        }
    }

    /// Makes the change `ops` and appends `record` for it, atomically.
    /// A precondition of `ops` that no longer holds is a 409.
    pub(crate) async fn audited(
        &self,
        record: audit::Record,
        ops: Vec<verge_store::Op>,
    ) -> Result<Revision, ApiError> {
        let _serial = self.audit_lock.lock().await;
        match audit::append(self.store.as_ref(), record, ops).await {
            Ok((_, revision)) => Ok(revision),
            Err(verge_store::StoreError::Conflict { .. }) => Err(ApiError::Conflict(
                "it changed meanwhile; try again".to_string(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes the change `ops` and appends `record` for it, atomically;
    /// `None` (and nothing written) when a precondition of `ops` no longer
    /// holds, for the caller to read again and retry.
    pub(crate) async fn try_audited(
        &self,
        record: audit::Record,
        ops: Vec<verge_store::Op>,
    ) -> Result<Option<Revision>, ApiError> {
        match self.audited(record, ops).await {
            Ok(revision) => Ok(Some(revision)),
            Err(ApiError::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits until the node serves the change at `revision` to app
    /// `target`, then (in a cluster) until the other nodes do, and says so.
    pub(crate) async fn confirm(
        &self,
        target: &str,
        revision: Revision,
    ) -> verge_api::Confirmation {
        let applied = self
            .data_plane
            .wait_applied(target, revision, self.config.apply_timeout)
            .await;
        let mut confirmation = applied.confirmation();
        if applied == Applied::Serving {
            confirmation.nodes = self
                .data_plane
                .wait_fleet(target, revision, self.config.apply_timeout)
                .await;
        }
        confirmation
    }

    pub(crate) async fn pause_if(&self, stage: &str) {
        if self.config.pause_deploys_at.as_deref() == Some(stage) {
            tracing::warn!("deploy paused at stage `{stage}` (test hook)");
            std::future::pending::<()>().await;
        }
    }

    /// Creates the first admin token if the store has no token at all,
    /// or a new one anyway with `force` (the recovery path of an operator
    /// who lost it: whoever can start the server owns its data already).
    pub async fn bootstrap(&self, force: bool) -> Result<Option<Issued>, ApiError> {
        let first = self.store.list("tokens/").await?.is_empty();
        if !first && !force {
            return Ok(None);
        }
        let issued = auth::mint(
            auth::DEFAULT_TENANT,
            auth::ADMIN_SCOPES.iter().map(|s| s.to_string()).collect(),
            if first {
                "admin (created at first start)"
            } else {
                "admin (issued at start by --issue-admin-token)"
            },
            None,
        )?;
        let mut ops = vec![issued.op()?];
        if first {
            // Nodes of a cluster starting together each see no token: the
            // first to record this key mints the token, the others none.
            ops.push(verge_store::Op::put(
                BOOTSTRAP_KEY,
                issued.record.id.clone().into_bytes(),
                verge_store::Expect::Absent,
            ));
        }
        let recorded = self
            .audited(
                audit::Record::new("token.create", auth::DEFAULT_TENANT, audit::Outcome::Ok)
                    .actor("-", auth::DEFAULT_TENANT)
                    .detail(format!(
                        "admin token {} issued at server start",
                        issued.record.id
                    )),
                ops,
            )
            .await;
        match recorded {
            Ok(_) => Ok(Some(issued)),
            Err(ApiError::Conflict(_)) if first && !force => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Recorded with the first admin token, so only one node of a cluster
/// mints it.
const BOOTSTRAP_KEY: &str = "meta/bootstrap";

/// The OpenAPI document describing this API (generated; see `openapi`).
pub fn openapi() -> &'static str {
    openapi::DOCUMENT.as_str()
}

/// The API's routes, all under `/v1`.
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/v1/health", get(openapi::health))
        .route("/v1/openapi.json", get(openapi::openapi_document))
        .route("/v1/status", get(apps::status))
        .route("/v1/apps", get(apps::list))
        .route("/v1/apps/{app}", get(apps::show).delete(apps::delete))
        .route(
            "/v1/apps/{app}/versions",
            get(apps::versions).post(deploy::create_version),
        )
        .route("/v1/apps/{app}/traffic", put(apps::set_traffic))
        .route("/v1/apps/{app}/rollback", post(apps::rollback))
        .route("/v1/apps/{app}/logs", get(apps::logs))
        .route("/v1/apps/{app}/secrets", get(secrets::list))
        .route(
            "/v1/apps/{app}/secrets/{name}",
            put(secrets::set).delete(secrets::delete),
        )
        .route("/v1/apps/{app}/kv/{store}", get(kv::list))
        .route(
            "/v1/apps/{app}/kv/{store}/{key}",
            get(kv::get).put(kv::set).delete(kv::delete),
        )
        .route("/v1/blobs/{digest}", put(deploy::upload_blob))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/v1/usage", get(usage::query))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/audit", get(tokens::audit_list))
        .route("/v1/audit/verify", get(tokens::audit_verify))
        .fallback(|| async { ApiError::NotFound("no such endpoint".to_string()) })
        .with_state(control)
}

#[cfg(test)]
mod tests;
