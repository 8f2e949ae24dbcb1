//! The node registry: who is in the cluster, what each node serves, and
//! whether it is alive.
//!
//! Each node puts a [`NodeReport`] under its name in the KV bucket
//! `VERGE_NODES` every heartbeat, and at once when it has applied a change
//! (so a deploy learns quickly that a node serves it). Every node watches
//! the bucket and keeps the latest report of each node with the time it
//! arrived.
//!
//! **Invariants**
//! - Liveness is judged by this node's clock at arrival, never by the
//!   sender's, so clock skew between nodes cannot make a dead node look
//!   alive or a live one dead (reports replayed at start are dated by when
//!   NATS stored them).
//! - A node is down when nothing arrived from it for [`DOWN_AFTER_BEATS`]
//!   heartbeats; a node cut off from NATS cannot judge others, and says so
//!   (`unknown`) rather than calling them down.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use verge_store::Revision;

use crate::{Link, NODES_BUCKET};

/// Heartbeats missed before a node is down.
pub const DOWN_AFTER_BEATS: u32 = 3;

/// What a node says of itself every heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeReport {
    /// The node's name.
    pub name: String,
    /// Its placement labels.
    pub labels: BTreeMap<String, String>,
    /// The Verge version it runs.
    pub version: String,
    /// Where its ingress is reached, if advertised.
    pub addr: Option<String>,
    /// When it started (Unix seconds).
    pub started: u64,
    /// When it sent this report (Unix milliseconds, its own clock).
    pub sent: u64,
    /// The state revision it serves: every change up to it is applied.
    pub applied: Revision,
    /// Apps it serves.
    pub apps: usize,
    /// Apps (`tenant/app`) it could not load, with the revision that failed.
    pub failed: BTreeMap<String, Revision>,
    /// The host's one-minute load average.
    pub load: f64,
    /// Bytes of usage summaries sent to the cluster since the node started.
    #[serde(default)]
    pub uplink_bytes: u64,
}

/// What the node itself knows for its report.
#[derive(Debug, Clone, Default)]
pub struct LocalState {
    /// The revision applied.
    pub applied: Revision,
    /// Apps served.
    pub apps: usize,
    /// Apps that failed to load.
    pub failed: BTreeMap<String, Revision>,
    /// Bytes of usage summaries sent since start.
    pub uplink_bytes: u64,
}

/// A node as this node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Its latest report.
    #[serde(flatten)]
    pub report: NodeReport,
    /// `up`, `down`, `degraded` (this node, cut off from the cluster) or
    /// `unknown` (another node, while this one is cut off).
    pub status: &'static str,
    /// Milliseconds since its last report arrived.
    pub seen_ms: u64,
    /// Whether it is the node answering.
    pub this_node: bool,
    /// Round trip from the node answering, averaged (milliseconds); `None`
    /// until measured.
    pub rtt_ms: Option<f64>,
}

impl NodeStatus {
    /// Whether the node is serving as far as this node knows.
    pub fn is_up(&self) -> bool {
        matches!(self.status, "up" | "degraded")
    }

    /// Whether the node serves app `key` as of `revision`.
    pub fn serves(&self, key: &str, revision: Revision) -> bool {
        self.report.applied >= revision
            && self
                .report
                .failed
                .get(key)
                .is_none_or(|failed| *failed < revision)
    }
}

type Reporter = Box<dyn Fn() -> LocalState + Send + Sync>;

/// The cluster's nodes, as seen from this one.
pub struct Registry {
    link: Link,
    started: u64,
    seen: Mutex<HashMap<String, (NodeReport, Instant)>>,
    poke: tokio::sync::Notify,
    reporter: OnceLock<Reporter>,
    bucket: tokio::sync::OnceCell<kv::Store>,
    /// Averaged round trips to other nodes, in milliseconds.
    rtt: Mutex<HashMap<String, f64>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

impl Registry {
    pub(crate) fn start(link: Link) -> Arc<Self> {
        let registry = Arc::new(Self {
            link,
            started: unix_ms() / 1000,
            seen: Mutex::new(HashMap::new()),
            poke: tokio::sync::Notify::new(),
            reporter: OnceLock::new(),
            bucket: tokio::sync::OnceCell::new(),
            rtt: Mutex::new(HashMap::new()),
        });
        let watcher = registry.clone();
        watcher
            .link
            .clone()
            .spawn(async move { watcher.watch().await });
        registry
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.link.config.node_name
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        self.link.config.heartbeat
    }

    /// Starts reporting this node every heartbeat, with what `state` says.
    /// Only the first call has an effect.
    pub fn start_heartbeats(
        self: &Arc<Self>,
        state: impl Fn() -> LocalState + Send + Sync + 'static,
    ) {
        if self.reporter.set(Box::new(state)).is_err() {
            return;
        }
        let registry = self.clone();
        self.link.spawn(async move { registry.beat().await });
    }

    /// Feeds a measured round trip to `node` into its average.
    pub fn record_rtt(&self, node: &str, rtt: Duration) {
        let ms = rtt.as_secs_f64() * 1000.0;
        let mut averages = self.rtt.lock().unwrap_or_else(|p| p.into_inner());
        averages
            .entry(node.to_string())
            .and_modify(|avg| *avg = 0.7 * *avg + 0.3 * ms)
            .or_insert(ms);
    }

    /// Reports this node now (it applied a change).
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (NodeReport, Instant)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self) -> Option<NodeReport> {
        let state = (self.reporter.get()?)();
        let config = &self.link.config;
        Some(NodeReport {
            name: config.node_name.clone(),
            labels: config.labels.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            addr: config.advertise.clone(),
            started: self.started,
            sent: unix_ms(),
            applied: state.applied,
            apps: state.apps,
            failed: state.failed,
            load: load_average(),
            uplink_bytes: state.uplink_bytes,
        })
    }

    async fn bucket(&self) -> Result<&kv::Store, String> {
        self.bucket
            .get_or_try_init(|| async {
                // The bucket's stream is created as `nats kv add` would;
                // async-nats's own helper asks for account details that
                // nats-server 2.9 does not send.
                self.link
                    .stream(stream::Config {
                        name: format!("KV_{NODES_BUCKET}"),
                        description: Some("Verge node reports".to_string()),
                        subjects: vec![format!("$KV.{NODES_BUCKET}.>")],
                        max_messages_per_subject: 1,
                        // A node gone for a day is forgotten.
                        max_age: Duration::from_secs(24 * 3600),
                        storage: StorageType::File,
                        allow_rollup: true,
                        deny_delete: true,
                        allow_direct: true,
                        discard: DiscardPolicy::New,
                        ..Default::default()
                    })
                    .await?;
                self.link
                    .js
                    .get_key_value(NODES_BUCKET)
                    .await
                    .map_err(|e| format!("cannot open the node registry: {e}"))
            })
            .await
    }

    async fn beat(&self) {
        let mut failing = false;
        loop {
            let Some(report) = self.report() else { return };
            // This node knows itself even when cut off.
            self.lock()
                .insert(report.name.clone(), (report.clone(), Instant::now()));
            if self.link.connected() {
                match self.send(&report).await {
                    Ok(()) if failing => {
                        tracing::info!("reporting to the cluster again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        tracing::warn!("cannot report to the cluster: {e}");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.heartbeat()) => {}
                () = self.poke.notified() => {
                    // Changes come in bursts: report once they settle.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    async fn send(&self, report: &NodeReport) -> Result<(), String> {
        let bucket = self.bucket().await?;
        let body = serde_json::to_vec(report).map_err(|e| e.to_string())?;
        let put = bucket.put(&report.name, body.into());
        match tokio::time::timeout(self.heartbeat().max(Duration::from_secs(2)), put).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        }
    }

    /// Follows the bucket for as long as the process lives.
    async fn watch(&self) {
        loop {
            if !self.link.wait_connected(Duration::from_secs(1)).await {
                continue;
            }
            if let Err(e) = self.watch_once().await {
                tracing::debug!("node registry: {e}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn watch_once(&self) -> Result<(), String> {
        let bucket = self.bucket().await?;
        let mut entries = bucket
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| e.to_string())?;
            if entry.key == self.link.config.node_name {
                continue;
            }
            match entry.operation {
                Operation::Put => {
                    let Ok(report) = serde_json::from_slice::<NodeReport>(&entry.value) else {
                        tracing::warn!(node = %entry.key, "ignoring a malformed node report");
                        continue;
                    };
                    // Reports replayed at start (more are pending) are as
                    // old as NATS says it stored them; live ones arrived
                    // now, whatever the sender's clock says.
                    let arrived = if entry.delta > 0 {
                        let stored = entry.created.unix_timestamp_nanos() / 1_000_000;
                        let age = u64::try_from(i128::from(unix_ms()) - stored).unwrap_or(0);
                        Instant::now()
                            .checked_sub(Duration::from_millis(age))
                            .unwrap_or_else(Instant::now)
                    } else {
                        Instant::now()
                    };
                    self.lock().insert(entry.key.clone(), (report, arrived));
                }
                Operation::Delete | Operation::Purge => {
                    self.lock().remove(&entry.key);
                }
            }
        }
        Err("the registry watch ended".to_string())
    }

    /// Every node known, sorted by name.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let window = self.heartbeat() * DOWN_AFTER_BEATS;
        let connected = self.link.connected();
        let me = &self.link.config.node_name;
        let rtt = self.rtt.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut nodes: Vec<NodeStatus> = self
            .lock()
            .values()
            .map(|(report, arrived)| {
                let this_node = &report.name == me;
                let seen = arrived.elapsed();
                let status = match (this_node, connected) {
                    (true, true) => "up",
                    (true, false) => "degraded",
                    (false, false) => "unknown",
                    (false, true) if seen <= window => "up",
                    (false, true) => "down",
                };
                NodeStatus {
                    report: report.clone(),
                    status,
                    seen_ms: u64::try_from(seen.as_millis()).unwrap_or(u64::MAX),
                    this_node,
                    rtt_ms: rtt.get(&report.name).copied(),
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.report.name.cmp(&b.report.name));
        nodes
    }

    /// Waits until `done` holds for the nodes, checking every 50 ms, at
    /// most `timeout`; returns the nodes as last seen.
    pub async fn wait_until(
        &self,
        done: impl Fn(&[NodeStatus]) -> bool,
        timeout: Duration,
    ) -> Vec<NodeStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let nodes = self.nodes();
            if done(&nodes) || tokio::time::Instant::now() >= deadline {
                return nodes;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
