//! A node and its control plane in one process (`verge server`).
//!
//! [`Server::start`] opens the data folder (the SQLite store, the blob
//! folder and the compile cache), loads every app the store describes,
//! and keeps the node in step with the store through a watch of the store.
//! The [`Gateway`] answers `/v1/...` with the control API and everything
//! else with the node.
//!
//! **Invariants**
//! - The node only ever serves what the store records; the API never
//!   changes the node directly, it asks the node plane to compile
//!   a version and then waits until the sync has applied the store.
//! - One process owns a data folder at a time (an exclusive lock).
//!
//! With [`ServerConfig::cluster`] the node joins a cluster on NATS
//! JetStream (`verge-cluster`): the store, blobs and key-value stores
//! replicate through it (the data folder keeps this node's copies, which
//! it serves from when the cluster is out of reach), the node reports
//! itself every heartbeat, runs the apps its labels are placed for, and
//! forwards requests for the others to the nearest node that runs them.
//!
//! Usage is metered per app version and minute into `DATA/usage.db`
//! (flushed every [`TelemetryConfig::usage_flush`]); quotas refuse requests
//! before their guest runs, and each refusing quota is audited once per
//! window; [`admin`] serves Prometheus metrics.
//!
//! **API boundary**: no argument parsing or printing; the CLI wires flags
//! to a [`ServerConfig`].

pub mod admin;
mod background;
mod forward;
mod gateway;
pub mod otel;
mod plane;
mod prepared;
mod secrets;
mod sync;

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::{Duration, SystemTime};
use verge_control::audit;
use verge_control::logs::LogHub;
use verge_control::{Control, ControlConfig, Issued};
use verge_guard::quota::{Exceeded, QuotaBook, QuotaConfig};
use verge_kv::Quotas;
use verge_meter::{Flusher, Meter, PriceSheet, UsageDb};
use verge_node::{Node, Telemetry};
use verge_secrets::KeySource;
use verge_store::{BlobStore, FsBlobs, SqliteStore, Store};

use crate::background::Background;

pub use gateway::{Gateway, GatewayBody, GatewayBodyError};

/// Where the state lives and how the server behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data folder: `state.db`, `blobs/`, and by default `compiled/`.
    pub data_dir: PathBuf,
    /// Compile cache folder; `None` for `DATA/compiled`.
    pub cache_dir: Option<PathBuf>,
    /// Instances that may exist at once across all apps.
    pub max_instances: u32,
    /// Limits of every key-value store (`DATA/kv/TENANT.db`).
    pub kv_quotas: Quotas,
    /// Where the master key that seals secrets comes from.
    pub master_key: KeySource,
    /// Rotate the master key at start (a key file only): every secret is
    /// re-sealed under a new key before the old key file is replaced.
    pub rotate_master_key: bool,
    /// Control API settings.
    pub control: ControlConfig,
    /// Issue a new admin token even if tokens exist (the first start
    /// always issues one).
    pub issue_admin_token: bool,
    /// Where app log lines are collected for `verge logs` (install its
    /// layer in the process's `tracing` subscriber).
    pub logs: Arc<LogHub>,
    /// Metering, prices, quotas and metrics.
    pub telemetry: TelemetryConfig,
    /// `verge:ai`: where models are installed and the embedding limits.
    /// Vector indexes live in `DATA/ai/TENANT.db`.
    pub ai: verge_node::AiSettings,
    /// Join a cluster: state and blobs on NATS JetStream, `DATA/state.db`
    /// and `DATA/blobs` become this node's copies; `None` runs standalone.
    pub cluster: Option<verge_cluster::ClusterConfig>,
}

/// What the server measures and limits.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Turns usage into cost in `verge usage`.
    pub prices: PriceSheet,
    /// Quotas per tenant and app.
    pub quotas: QuotaConfig,
    /// How often usage goes from memory to `DATA/usage.db`; a `kill -9`
    /// loses at most this much usage.
    pub usage_flush: Duration,
    /// Keep Prometheus metrics (a recorder must be installed, see
    /// [`admin::install_recorder`]).
    pub metrics: bool,
    /// Trace requests (see [`otel::Traces`]).
    pub tracing: Option<Arc<verge_node::Tracing>>,
    /// Meter usage (off only to measure what metering costs).
    pub metering: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            prices: PriceSheet::default(),
            quotas: QuotaConfig::default(),
            usage_flush: Duration::from_secs(10),
            metrics: false,
            tracing: None,
            metering: true,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data folder cannot be used.
    #[error("data folder `{path}`: {message}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] verge_store::StoreError),
    /// The blob store failed.
    #[error(transparent)]
    Blobs(#[from] verge_store::BlobError),
    /// The executor could not start.
    #[error(transparent)]
    Executor(#[from] verge_executor::ExecutorError),
    /// The master key is missing, damaged or does not open the secrets.
    #[error("{0}")]
    MasterKey(String),
    /// The first admin token could not be created.
    #[error("cannot create the first admin token: {0}")]
    Bootstrap(#[source] verge_control::ApiError),
    /// The usage database cannot be used.
    #[error("usage database: {0}")]
    Usage(#[from] verge_meter::UsageError),
    /// The thread that writes usage could not start.
    #[error("cannot start the usage flush thread: {0}")]
    Flusher(#[source] std::io::Error),
    /// The node could not join its cluster.
    #[error(transparent)]
    Cluster(#[from] verge_cluster::ClusterError),
}

/// A running server.
pub struct Server {
    /// The data plane.
    pub node: Arc<Node>,
    /// The control plane.
    pub control: Arc<Control>,
    /// What the ingress serves.
    pub gateway: Arc<Gateway>,
    /// Usage and per-app metric counts, when metering is on.
    pub meter: Option<Arc<Meter>>,
    /// Its background tasks, stopped and joined by `shutdown`.
    background: Background,
    /// Writes the last usage when the server is dropped.
    _flusher: Option<Flusher>,
    _lock: File,
}

fn private_dir(path: &Path) -> Result<(), ServerError> {
    let err = |message: String| ServerError::DataDir {
        path: path.to_path_buf(),
        message,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| err(format!("cannot create it: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err(format!("cannot make it private (mode 0700): {e}")))
}

impl Server {
    /// Opens the data folder, loads every app, and starts following the
    /// store. Returns the first admin token when the store had none.
    pub async fn start(config: ServerConfig) -> Result<(Self, Option<Issued>), ServerError> {
        let data = &config.data_dir;
        private_dir(data)?;
        let lock = lock(data)?;
        let background = Background::default();
        let local = SqliteStore::open(&data.join("state.db"))?;
        let local_blobs = FsBlobs::open(&data.join("blobs"))?;
        let (store, blobs, cluster): (Arc<dyn Store>, Arc<dyn BlobStore>, _) =
            match config.cluster.clone() {
                None => (Arc::new(local), Arc::new(local_blobs), None),
                Some(cluster) => {
                    let cluster = verge_cluster::Cluster::join(
                        cluster,
                        local,
                        local_blobs,
                        &background.tasks,
                        &background.stop,
                    )
                    .await?;
                    (cluster.store.clone(), cluster.blobs.clone(), Some(cluster))
                }
            };
        let registry = cluster.as_ref().map(|c| c.registry.clone());
        let vaults =
            secrets::open(store.as_ref(), &config.master_key, config.rotate_master_key).await?;
        let keyring = vaults.keyring();
        let cache_dir = config
            .cache_dir
            .clone()
            .unwrap_or_else(|| data.join("compiled"));
        private_dir(&cache_dir)?;
        let usage = Arc::new(UsageDb::open(&data.join("usage.db"))?);
        let meter = config.telemetry.metering.then(Meter::new);
        let flusher = meter
            .as_ref()
            .map(|meter| Flusher::start(meter.clone(), usage.clone(), config.telemetry.usage_flush))
            .transpose()
            .map_err(ServerError::Flusher)?;
        let (exceeded, mut refusals) = tokio::sync::mpsc::unbounded_channel::<Exceeded>();
        let quotas = quota_book(&config.telemetry.quotas, &usage, exceeded)?;
        let built = verge_node::build(verge_node::NodeSettings {
            state_dir: data.clone(),
            cache_dir: Some(cache_dir),
            max_instances: config.max_instances,
            kv_quotas: config.kv_quotas,
            ai: config.ai.clone(),
            telemetry: Telemetry {
                meter: meter.clone(),
                quotas,
                metrics: config.telemetry.metrics && meter.is_some(),
                tracing: config.telemetry.tracing.clone(),
            },
        })?;
        let (node, key_value) = (built.node, built.key_value);
        if let Some(cluster) = &cluster {
            key_value.replicate(cluster.kv.clone());
        }
        // Vector graphs are rebuilt from SQLite in the background, so the
        // node serves at once and a query rarely waits for a rebuild.
        #[cfg(feature = "ai")]
        {
            let preload = built.ai;
            background.spawn_blocking(move || match preload.indexes.preload() {
                Ok(0) => {}
                Ok(n) => tracing::info!("{n} vector index(es) loaded"),
                Err(e) => tracing::error!("cannot load vector indexes: {e}"),
            });
        }
        let labels = config
            .cluster
            .as_ref()
            .map(|c| c.labels.clone())
            .unwrap_or_default();
        let plane = plane::NodePlane::new(
            node.clone(),
            blobs.clone(),
            vaults,
            registry.clone().map(|r| (r, labels)),
        );
        sync::start(
            store.clone(),
            blobs.as_ref(),
            plane.clone(),
            registry.is_none(),
            &background,
        )
        .await?;
        if let (Some(cluster), Some(registry)) = (&cluster, &registry) {
            let uplink = cluster.start_uplink(usage.clone());
            let reporter = plane.clone();
            registry.start_heartbeats(move || verge_cluster::LocalState {
                uplink_bytes: uplink.bytes_sent(),
                ..reporter.local_state()
            });
        }
        let control = Control::new(
            store,
            blobs,
            plane.clone(),
            config.logs.clone(),
            config.control.clone(),
            verge_control::StateAccess {
                keyring,
                key_value: Some(key_value),
                usage: Some(usage),
                prices: config.telemetry.prices.clone(),
            },
        );
        let auditor = control.clone();
        // At shutdown it stops taking refusals but audits every one queued
        // (before the cluster's followers stop: its writes need them).
        background.spawn_writer(|stop| async move {
            let mut closed = false;
            loop {
                let next = tokio::select! {
                    next = refusals.recv() => next,
                    () = stop.cancelled(), if !closed => {
                        refusals.close();
                        closed = true;
                        continue;
                    }
                };
                let Some(e) = next else { break };
                // An app's quota shows in its live log (`verge logs`).
                match &e.app {
                    Some(app) => tracing::warn!(app = %app, "{e}; refusing until the window ends"),
                    None => {
                        tracing::warn!(tenant = %e.tenant, "{e}; refusing until the window ends")
                    }
                }
                auditor
                    .audit(
                        audit::Record::new("quota.exceeded", &e.scope(), audit::Outcome::Denied)
                            .actor("-", &e.tenant)
                            .detail(format!(
                                "{} limit {} reached; requests get 429 for {}s",
                                e.kind.name(),
                                e.limit,
                                e.retry_after.as_secs()
                            )),
                    )
                    .await;
            }
        });
        let issued = control
            .bootstrap(config.issue_admin_token)
            .await
            .map_err(ServerError::Bootstrap)?;
        let forwarder = registry.map(|r| forward::Forwarder::start(r, plane.clone(), &background));
        let gateway = Arc::new(Gateway::new(node.clone(), control.clone(), forwarder));
        Ok((
            Self {
                node,
                control,
                gateway,
                meter,
                background,
                _flusher: flusher,
                _lock: lock,
            },
            issued,
        ))
    }
}

impl Server {
    /// Stops the server's background tasks and waits for them, at most
    /// `grace`: the store is no longer followed, the cluster no longer
    /// hears from this node, and every quota refusal is audited. Call it
    /// once the ingress has stopped; dropping the server afterwards writes
    /// the last usage. Returns how many tasks were still running.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.background.shutdown(grace).await
    }
}

/// The quota book, with today's CPU read back from usage (so a restart does
/// not reset daily quotas); `None` when no quota is configured.
fn quota_book(
    config: &QuotaConfig,
    usage: &UsageDb,
    exceeded: tokio::sync::mpsc::UnboundedSender<Exceeded>,
) -> Result<Option<Arc<QuotaBook>>, ServerError> {
    let book = QuotaBook::new(
        config.clone(),
        Some(Arc::new(move |e: &Exceeded| {
            let _ = exceeded.send(e.clone());
        })),
    );
    if book.is_empty() {
        return Ok(None);
    }
    let now = SystemTime::now();
    let today = verge_meter::unix_minute(now) / 1440 * 1440;
    let used = usage.cpu_since(today)?;
    for (tenant, app, cpu_us) in used {
        book.seed_cpu(&tenant, &app, Duration::from_micros(cpu_us), now);
    }
    Ok(Some(book))
}

fn lock(data: &Path) -> Result<File, ServerError> {
    let path = data.join("lock");
    let file = File::create(&path).map_err(|e| ServerError::DataDir {
        path: data.to_path_buf(),
        message: format!("cannot create `lock`: {e}"),
    })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| ServerError::DataDir {
            path: data.to_path_buf(),
            message: "another verge server is using it; stop that one first or choose another \
                      --data folder"
                .to_string(),
        },
    )?;
    Ok(file)
}

#[cfg(test)]
mod tests;
