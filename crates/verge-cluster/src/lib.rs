//! Verge's cluster mode: many nodes sharing one control plane through NATS
//! JetStream, each able to serve on its own when the cluster is out of
//! reach.
//!
//! [`Cluster::join`] connects to NATS and gives the server three things
//! that replace their standalone counterparts:
//! - [`ClusterStore`], a [`verge_store::Store`]: every change is an entry
//!   of one JetStream stream (the log), appended with an expected last
//!   sequence so compare-and-set holds across nodes; every node applies
//!   the log, in order, to its own SQLite replica, and reads from it.
//! - [`ClusterBlobs`], a [`verge_store::BlobStore`]: component blobs in the
//!   JetStream Object Store, fetched once into the node's blob folder and
//!   verified by sha256 there.
//! - [`KvLog`]: apps' key-value writes, one subject per tenant, for
//!   `verge-kv`'s strict and edge-local stores.
//! - [`Uplink`]: usage summaries per app version and minute, sent to
//!   the other nodes instead of events.
//! - [`Registry`]: node reports (labels, version, load, what the node
//!   serves) in a JetStream KV bucket, sent every heartbeat and at once
//!   after a change is applied; a node not heard from for
//!   [`DOWN_AFTER_BEATS`] heartbeats is down.
//!
//! **Invariants**
//! - Replication, ordering and durability are JetStream's; Verge adds no
//!   consensus of its own.
//! - A node that cannot reach NATS keeps serving from its replica and
//!   blob folder, and refuses writes with [`StoreError::Unavailable`]
//!   rather than accepting what it could not order.
//! - A write is acknowledged only once this node's replica holds it
//!   (read-your-writes on the node that wrote).
//!
//! **API boundary**: knows NATS and the store traits; nothing of apps,
//! HTTP or wasmtime.

mod blobs;
mod kv;
mod log;
mod nodes;
mod usage;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use async_nats::jetstream;
use verge_store::{FsBlobs, SqliteStore, StoreError};

pub use blobs::ClusterBlobs;
pub use kv::KvLog;
pub use log::ClusterStore;
pub use nodes::{DOWN_AFTER_BEATS, LocalState, NodeReport, NodeStatus, Registry};
pub use usage::Uplink;

/// How to reach the cluster and who this node is.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs, comma-separated (`nats://`, or `tls://` to require
    /// TLS).
    pub url: String,
    /// This node's name, unique in the cluster.
    pub node_name: String,
    /// Labels for placement (`region=eu-west`).
    pub labels: BTreeMap<String, String>,
    /// How the node authenticates to NATS.
    pub auth: NatsAuth,
    /// A CA certificate (PEM) to trust for the NATS server's TLS.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for NATS servers that
    /// verify clients (mutual TLS).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// How often the node reports itself.
    pub heartbeat: Duration,
    /// JetStream replicas of the streams Verge creates (1, 3 or 5).
    pub replicas: usize,
    /// How long the first start of a node waits for NATS (a node with a
    /// replica does not wait: it serves from it).
    pub join_timeout: Duration,
    /// The URL other nodes and operators reach this node's ingress at.
    pub advertise: Option<String>,
    /// How often metered usage is summarised and sent to the cluster.
    pub uplink_interval: Duration,
}

impl ClusterConfig {
    /// The NATS URLs without any user or password in them, for messages
    /// and logs.
    pub fn display_url(&self) -> String {
        self.url
            .split(',')
            .map(|url| match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    format!("{}{}", &url[..scheme + 3], &url[at + 1..])
                }
                (None, Some(at)) => url[at + 1..].to_string(),
                _ => url.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Credentials for NATS.
#[derive(Debug, Clone, Default)]
pub enum NatsAuth {
    /// None (a NATS server without authorization, for development).
    #[default]
    None,
    /// A `.creds` file: a user JWT and its nkey seed.
    Credentials(PathBuf),
    /// A file holding an nkey seed (`SU...`).
    NkeySeed(PathBuf),
}

/// Why the node could not join.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The settings are unusable.
    #[error("{0}")]
    Config(String),
    /// NATS is out of reach and the node has nothing cached to serve.
    #[error("{0}")]
    Unreachable(String),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The stream holding the log of changes.
pub(crate) const LOG_STREAM: &str = "VERGE_STATE";
/// The subject log entries are published on.
pub(crate) const LOG_SUBJECT: &str = "verge.state.log";
/// The Object Store bucket of component blobs.
pub(crate) const BLOB_BUCKET: &str = "VERGE_BLOBS";
/// The KV bucket of node reports.
pub(crate) const NODES_BUCKET: &str = "VERGE_NODES";

/// This node's connection to the cluster.
pub struct Cluster {
    /// The state store every control-plane read and write goes through.
    pub store: Arc<ClusterStore>,
    /// Component blobs.
    pub blobs: Arc<ClusterBlobs>,
    /// Node reports.
    pub registry: Arc<Registry>,
    /// Apps' key-value writes (give it to `verge_kv::KeyValue::replicate`).
    pub kv: Arc<KvLog>,
    link: Link,
}

/// The NATS connection and JetStream context, shared by the parts.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) config: Arc<ClusterConfig>,
    /// The last error NATS or the client reported (an authorization
    /// violation, a TLS failure), to say why the link is down.
    last_error: Arc<Mutex<Option<String>>>,
    /// Where the cluster's background tasks run: the server that joined
    /// stops and joins them at shutdown.
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Link {
    /// Runs `task` in the background until it ends or the server stops.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            stop.run_until_cancelled(task).await;
        });
    }

    /// Whether the connection is up now.
    pub(crate) fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The error a write gets while the link is down.
    pub(crate) fn unreachable(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "this node cannot reach the cluster (NATS at {}); it keeps serving what it has, \
             but changes are refused until the link returns: try again, or use another node",
            self.config.display_url()
        ))
    }

    /// Why the link is down, if NATS or the client said.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Opens the stream `config` names, creating it with this cluster's
    /// replica count if it does not exist yet.
    pub(crate) async fn stream(
        &self,
        config: jetstream::stream::Config,
    ) -> Result<jetstream::stream::Stream, String> {
        let name = config.name.clone();
        self.js
            .get_or_create_stream(jetstream::stream::Config {
                num_replicas: self.config.replicas,
                ..config
            })
            .await
            .map_err(|e| format!("cannot open the stream {name} (is JetStream on?): {e}"))
    }

    /// The messages of `stream` on `filter` after sequence `after`, in
    /// order, each with its stream sequence (an ordered consumer: no acks,
    /// recreated by the client if it falls behind).
    pub(crate) async fn read_after(
        &self,
        stream: &jetstream::stream::Stream,
        filter: &str,
        after: u64,
    ) -> Result<
        impl futures::Stream<Item = Result<(u64, jetstream::Message), String>> + use<>,
        String,
    > {
        use futures::StreamExt;
        let consumer = stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: filter.to_string(),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot read {filter}: {e}"))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| format!("cannot read {filter}: {e}"))?;
        Ok(messages.map(|message| {
            let message = message.map_err(|e| format!("reading: {e}"))?;
            let seq = message
                .info()
                .map_err(|e| format!("a message without metadata: {e}"))?
                .stream_sequence;
            Ok((seq, message))
        }))
    }

    /// Waits until connected, at most `timeout`.
    pub(crate) async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.connected() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}

impl Cluster {
    /// Connects to NATS and opens the replica `local` and blob folder
    /// `blobs`. The first start of a node (an empty replica) waits up to
    /// [`ClusterConfig::join_timeout`] for NATS and catches up with the
    /// log before returning; a node that has a replica returns at once and
    /// catches up in the background.
    ///
    /// Its background tasks (following the logs, heartbeats, usage) run on
    /// `tasks` and stop when `stop` is cancelled: the caller joins them.
    pub async fn join(
        config: ClusterConfig,
        local: SqliteStore,
        blobs: FsBlobs,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<Self, ClusterError> {
        if !(1..=5).contains(&config.replicas) {
            return Err(ClusterError::Config(format!(
                "--cluster-replicas {} is out of range (1 to 5)",
                config.replicas
            )));
        }
        let config = Arc::new(config);
        let last_error = Arc::new(Mutex::new(None));
        let client = connect(&config, last_error.clone()).await?;
        let link = Link {
            js: jetstream::new(client.clone()),
            client,
            config: config.clone(),
            last_error,
            tasks: tasks.clone(),
            stop: stop.clone(),
        };
        let store = ClusterStore::open(link.clone(), local).await?;
        let blobs = Arc::new(ClusterBlobs::new(link.clone(), blobs));
        let kv = Arc::new(KvLog::new(link.clone()));
        let registry = Registry::start(link.clone());
        Ok(Self {
            store,
            blobs,
            registry,
            kv,
            link,
        })
    }

    /// Ships the usage metered into `db` to the other nodes as summaries,
    /// and adds theirs to it ([`Uplink`]).
    pub fn start_uplink(&self, db: Arc<verge_meter::UsageDb>) -> Arc<Uplink> {
        Uplink::start(self.link.clone(), db, self.link.config.uplink_interval)
    }
}

async fn connect(
    config: &ClusterConfig,
    last_error: Arc<Mutex<Option<String>>>,
) -> Result<async_nats::Client, ClusterError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("verge {}", config.node_name))
        // The node must start (and serve its replica) without NATS.
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(2))
        // Reconnect quickly after an outage so deploys converge soon.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .event_callback({
            let url = config.display_url();
            let last_error = last_error.clone();
            move |event| {
                let url = url.clone();
                let last_error = last_error.clone();
                async move {
                    match event {
                        async_nats::Event::ServerError(e) => {
                            *last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(e.to_string());
                        }
                        async_nats::Event::ClientError(e) => {
                            *last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(e.to_string());
                        }
                        async_nats::Event::Connected => {
                            tracing::info!("linked to the cluster (NATS at {url})");
                        }
                        async_nats::Event::Disconnected => tracing::warn!(
                            "lost the link to the cluster (NATS at {url}); serving from this \
                             node's copy and refusing changes until it returns"
                        ),
                        async_nats::Event::SlowConsumer(_) => {
                            tracing::warn!("falling behind the cluster's messages");
                        }
                        _ => {}
                    }
                }
            }
        });
    options = match &config.auth {
        NatsAuth::None => options,
        NatsAuth::Credentials(path) => options.credentials_file(path).await.map_err(|e| {
            ClusterError::Config(format!("NATS credentials `{}`: {e}", path.display()))
        })?,
        NatsAuth::NkeySeed(path) => {
            let seed = std::fs::read_to_string(path).map_err(|e| {
                ClusterError::Config(format!("NATS nkey seed `{}`: {e}", path.display()))
            })?;
            options.nkey(seed.trim().to_string())
        }
    };
    if let Some(ca) = &config.tls_ca {
        if !ca.is_file() {
            return Err(ClusterError::Config(format!(
                "--nats-ca `{}` is not a file",
                ca.display()
            )));
        }
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &config.tls_client {
        for file in [cert, key] {
            if !file.is_file() {
                return Err(ClusterError::Config(format!(
                    "--nats-cert/--nats-key `{}` is not a file",
                    file.display()
                )));
            }
        }
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    options
        .connect(config.url.as_str())
        .await
        .map_err(|e| ClusterError::Config(format!("NATS URL `{}`: {e}", config.display_url())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_messages_carry_no_credentials() {
        let config = |url: &str| ClusterConfig {
            url: url.to_string(),
            node_name: "a".into(),
            labels: BTreeMap::new(),
            auth: NatsAuth::None,
            tls_ca: None,
            tls_client: None,
            heartbeat: Duration::from_secs(1),
            replicas: 1,
            join_timeout: Duration::from_secs(1),
            advertise: None,
            uplink_interval: Duration::from_secs(60),
        };
        assert_eq!(
            config("nats://user:secret@nats-1:4222,tls://t0ken@nats-2:4222").display_url(),
            "nats://nats-1:4222,tls://nats-2:4222"
        );
        assert_eq!(config("user:pw@host:4222").display_url(), "host:4222");
        assert_eq!(
            config("nats://127.0.0.1:4222").display_url(),
            "nats://127.0.0.1:4222"
        );
    }
}
