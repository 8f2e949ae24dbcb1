//! Usage across the cluster: each node meters locally and ships summaries,
//! not events.
//!
//! The node's usage flusher already sums invocations per app version and
//! minute into `usage.db`; with the uplink on, each addition is also
//! queued there (same transaction). Every [`UplinkConfig::interval`] the
//! queue is merged into one row per series and minute and published as
//! one message on `verge.usage.NODE` (stream `VERGE_USAGE`). Every node
//! adds the other nodes' messages to its own `usage.db`, so `verge usage`
//! on any node shows the whole cluster.
//!
//! **Invariants**
//! - Queued usage leaves the queue only after JetStream stored it; a node
//!   cut off keeps queueing and ships when the link returns (a `kill -9`
//!   loses nothing that reached `usage.db`).
//! - Another node's message is added once: the stream position is stored
//!   in the same transaction as its rows, and a message sent again (a lost
//!   acknowledgement, a crash before the queue was cleared) carries the
//!   same `Nats-Msg-Id`, so JetStream drops the copy (within its duplicate
//!   window, two minutes by default).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::stream::{self, StorageType};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use verge_meter::{SeriesKey, Totals, UsageDb, UsageDelta};

use crate::Link;

/// The stream of every node's usage summaries.
const USAGE_STREAM: &str = "VERGE_USAGE";

/// Most queued rows merged into one message (about 400 bytes each, well
/// under NATS's default 1 MiB payload).
const MAX_ROWS: usize = 1_000;

/// One message: a node's usage, one row per series and minute.
#[derive(Debug, Serialize, Deserialize)]
struct Summary {
    node: String,
    rows: Vec<(String, String, String, u64, Totals)>,
}

/// A node's usage uplink.
pub struct Uplink {
    link: Link,
    db: Arc<UsageDb>,
    interval: Duration,
    stream: tokio::sync::OnceCell<stream::Stream>,
    /// Bytes of summaries the cluster stored, since start.
    bytes: AtomicU64,
}

impl Uplink {
    /// Queues `db`'s usage for the cluster, ships it every `interval`, and
    /// adds the other nodes' usage to `db`.
    pub(crate) fn start(link: Link, db: Arc<UsageDb>, interval: Duration) -> Arc<Self> {
        db.enable_uplink();
        let uplink = Arc::new(Self {
            link,
            db,
            interval,
            stream: tokio::sync::OnceCell::new(),
            bytes: AtomicU64::new(0),
        });
        let shipper = uplink.clone();
        uplink.link.spawn(async move { shipper.ship().await });
        let follower = uplink.clone();
        uplink.link.spawn(async move { follower.follow().await });
        uplink
    }

    /// Bytes of usage summaries sent upstream since start.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    async fn stream(&self) -> Result<&stream::Stream, String> {
        self.stream
            .get_or_try_init(|| async {
                self.link
                    .stream(stream::Config {
                        name: USAGE_STREAM.to_string(),
                        subjects: vec!["verge.usage.>".to_string()],
                        storage: StorageType::File,
                        // A node joining later reads a month of history.
                        max_age: Duration::from_secs(31 * 24 * 3600),
                        description: Some("Verge usage summaries, per node and minute".into()),
                        ..Default::default()
                    })
                    .await
            })
            .await
    }

    async fn ship(&self) {
        let mut failing = false;
        // The rows of a message that may have been stored: sent again as
        // the same message, so JetStream can drop a copy.
        let mut retry = None;
        loop {
            tokio::time::sleep(self.interval).await;
            if !self.link.connected() {
                continue;
            }
            loop {
                match self.ship_once(&mut retry).await {
                    Ok(true) => continue,
                    Ok(false) => {
                        if failing {
                            tracing::info!("usage reaches the cluster again");
                            failing = false;
                        }
                    }
                    Err(e) if !failing => {
                        tracing::warn!("usage waits for the cluster: {e}");
                        failing = true;
                    }
                    Err(_) => {}
                }
                break;
            }
        }
    }

    /// Ships one message of queued usage; `Ok(true)` if more is queued.
    async fn ship_once(&self, retry: &mut Option<i64>) -> Result<bool, String> {
        let db = self.db.clone();
        let upto = *retry;
        let (deltas, last) = tokio::task::spawn_blocking(move || db.uplink_pending(MAX_ROWS, upto))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if last == 0 {
            *retry = None;
            return Ok(false);
        }
        *retry = Some(last);
        let queued = deltas.len();
        let summary = Summary {
            node: self.link.config.node_name.clone(),
            rows: merge(deltas),
        };
        let payload = serde_json::to_vec(&summary).map_err(|e| e.to_string())?;
        let len = payload.len() as u64;
        if !summary.rows.is_empty() {
            self.stream().await?;
            let subject = format!("verge.usage.{}", self.link.config.node_name);
            let publish = async { self.link.js.publish(subject, payload.into()).await?.await };
            tokio::time::timeout(Duration::from_secs(5), publish)
                .await
                .map_err(|_| "the cluster did not confirm in time".to_string())?
                .map_err(|e| e.to_string())?;
            self.bytes.fetch_add(len, Ordering::Relaxed);
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.uplink_done(last))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        *retry = None;
        Ok(queued >= MAX_ROWS)
    }

    async fn follow(&self) {
        loop {
            if self.link.wait_connected(Duration::from_secs(1)).await {
                if let Err(e) = self.follow_once().await {
                    tracing::debug!("other nodes' usage: {e}");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    async fn follow_once(&self) -> Result<(), String> {
        let after = self.db.remote_applied().map_err(|e| e.to_string())?;
        let stream = self.stream().await?;
        let mut messages =
            std::pin::pin!(self.link.read_after(stream, "verge.usage.>", after).await?);
        let own = format!("verge.usage.{}", self.link.config.node_name);
        while let Some(message) = messages.next().await {
            let (seq, message) = message?;
            let deltas = if message.subject.as_str() == own {
                // This node's own usage is in its database already.
                Vec::new()
            } else {
                match serde_json::from_slice::<Summary>(&message.payload) {
                    Ok(summary) => summary
                        .rows
                        .into_iter()
                        .map(|(tenant, app, version, minute, totals)| UsageDelta {
                            key: SeriesKey {
                                tenant,
                                app,
                                version,
                            },
                            minute,
                            totals,
                        })
                        .collect(),
                    Err(e) => {
                        tracing::error!(seq, "skipping an unreadable usage summary: {e}");
                        Vec::new()
                    }
                }
            };
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || db.add_remote(seq, &deltas))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        Err("the usage consumer ended".to_string())
    }
}

/// One row per series and minute.
fn merge(deltas: Vec<UsageDelta>) -> Vec<(String, String, String, u64, Totals)> {
    let mut merged: BTreeMap<(SeriesKey, u64), Totals> = BTreeMap::new();
    for d in deltas {
        merged
            .entry((d.key, d.minute))
            .or_default()
            .merge(&d.totals);
    }
    merged
        .into_iter()
        .map(|((key, minute), totals)| (key.tenant, key.app, key.version, minute, totals))
        .collect()
}
