//! Apps' key-value stores on JetStream: each tenant's writes are entries
//! of the stream `VERGE_KV` on the subject `verge.kv.TENANT`, which every
//! node serving the tenant follows into its own database (the semantics,
//! strict or edge-local, are `verge-kv`'s; see `verge_kv::Consistency`).
//!
//! **Invariant**: a write is acknowledged to `verge-kv` only once
//! JetStream stored it; a node without a link refuses at once rather than
//! queueing it in the NATS client, where it could land after the caller
//! was told it failed.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{self, StorageType};
use futures::StreamExt;
use verge_kv::{Applier, BoxFuture, KvError, Replicator};

use crate::Link;

/// The stream of every tenant's key-value writes.
const KV_STREAM: &str = "VERGE_KV";

/// How long a write waits for JetStream to store it.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Tenants' key-value logs.
#[derive(Clone)]
pub struct KvLog {
    link: Link,
    stream: Arc<tokio::sync::OnceCell<stream::Stream>>,
}

impl KvLog {
    pub(crate) fn new(link: Link) -> Self {
        Self {
            link,
            stream: Arc::default(),
        }
    }

    async fn stream(&self) -> Result<&stream::Stream, String> {
        self.stream
            .get_or_try_init(|| async {
                self.link
                    .stream(stream::Config {
                        name: KV_STREAM.to_string(),
                        subjects: vec!["verge.kv.>".to_string()],
                        storage: StorageType::File,
                        description: Some("Verge apps' key-value writes, by tenant".to_string()),
                        ..Default::default()
                    })
                    .await
            })
            .await
    }

    /// Guests see this message: it names no internal address.
    fn unreachable(&self) -> KvError {
        KvError::Unavailable(
            "this node cannot reach the cluster to order the write, so nothing was written; \
             try again, or declare the store `edge-local` to accept writes during outages"
                .to_string(),
        )
    }

    async fn follow_once(
        &self,
        tenant: &str,
        after: &mut u64,
        apply: &Applier,
    ) -> Result<(), String> {
        let stream = self.stream().await?;
        let filter = format!("verge.kv.{tenant}");
        let mut messages = std::pin::pin!(self.link.read_after(stream, &filter, *after).await?);
        while let Some(message) = messages.next().await {
            let (seq, message) = message?;
            if seq <= *after {
                continue;
            }
            // A storage failure stops here; the entry is read again.
            apply(seq, message.payload.to_vec())
                .await
                .map_err(|e| format!("cannot apply key-value entry {seq}: {e}"))?;
            *after = seq;
        }
        Err("the key-value log's consumer ended".to_string())
    }
}

impl Replicator for KvLog {
    fn node(&self) -> &str {
        &self.link.config.node_name
    }

    fn publish(&self, tenant: &str, entry: Vec<u8>) -> BoxFuture<Result<(), KvError>> {
        let me = self.clone();
        let subject = format!("verge.kv.{tenant}");
        Box::pin(async move {
            if !me.link.connected() {
                return Err(me.unreachable());
            }
            me.stream().await.map_err(KvError::Unavailable)?;
            let publish = async { me.link.js.publish(subject, entry.into()).await?.await };
            match tokio::time::timeout(ACK_TIMEOUT, publish).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) | Err(_) if !me.link.connected() => Err(me.unreachable()),
                Ok(Err(e)) => Err(KvError::Unavailable(format!(
                    "the cluster refused the write: {e}"
                ))),
                Err(_) => Err(KvError::Unavailable(format!(
                    "the cluster did not confirm the write within {}s; it may still be applied",
                    ACK_TIMEOUT.as_secs()
                ))),
            }
        })
    }

    fn follow(&self, tenant: &str, after: u64, apply: Applier) {
        let me = self.clone();
        let tenant = tenant.to_string();
        self.link.spawn(async move {
            let mut after = after;
            let mut reported = false;
            loop {
                if me.link.wait_connected(Duration::from_secs(1)).await {
                    match me.follow_once(&tenant, &mut after, &apply).await {
                        Ok(()) => {}
                        Err(e) if !reported => {
                            tracing::warn!(tenant = %tenant, "{e}; retrying");
                            reported = true;
                        }
                        Err(e) => tracing::debug!(tenant = %tenant, "{e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        });
    }
}
