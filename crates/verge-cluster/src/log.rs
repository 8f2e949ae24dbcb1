//! The cluster's state store: one JetStream stream is the log of every
//! change, and every node applies it in order to its own SQLite replica.
//!
//! A write checks its preconditions against the replica as of sequence
//! `S` and appends one entry with `Nats-Expected-Last-Sequence: S`.
//! JetStream accepts it only if nothing was appended since, so a
//! compare-and-set holds across nodes; otherwise the node catches up and
//! checks again. An [`verge_store::Store::apply`] of several writes is one entry, so it
//! stays atomic, and all its writes share the entry's sequence as their
//! revision.
//!
//! Reads and watches are the replica's: they answer when NATS is gone,
//! which is what lets a node restart into serving with the cluster out of
//! reach.
//!
//! **Invariants**
//! - The replica holds exactly the log's entries up to the sequence it
//!   records, each applied once (an entry at or below it is skipped).
//! - A replica follows one log: the stream's name and creation time are
//!   recorded at the first start, and a recreated stream is refused rather
//!   than mixed with the old state.
//! - A write that JetStream confirmed is in the replica before it is
//!   acknowledged to the caller (or the caller is told it is not yet).
//! - Preconditions are checked only once the replica holds the whole log
//!   as it was just before: a lagging replica never answers a false
//!   conflict.
//! - An entry of a newer format stops the replica (it is not skipped): the
//!   node refuses changes until it is upgraded.
//! - A first start counts as done only once it caught up; interrupted, it
//!   starts over rather than serving a partial copy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{self, StorageType};
use async_trait::async_trait;
use futures::StreamExt;
use verge_store::{Entry, Expect, Op, Revision, SqliteStore, Store, StoreError, Watch};

use crate::{ClusterError, LOG_STREAM, LOG_SUBJECT, Link};

/// Attempts at appending before a write gives up (each lost race means
/// another node's change landed first).
const MAX_ATTEMPTS: usize = 64;

/// How long a write waits for JetStream's confirmation.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Marks the log of a replica whose first start has not caught up yet.
const PENDING: &str = "pending:";

/// How long a confirmed write waits for the replica to apply it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The state store of a cluster node.
pub struct ClusterStore {
    link: Link,
    local: SqliteStore,
    /// One write of this node at a time: they would only race each other.
    writes: tokio::sync::Mutex<()>,
    /// Why the replica cannot follow the cluster's log at all (a recreated
    /// stream); writes are refused with it.
    broken: Mutex<Option<String>>,
}

impl ClusterStore {
    /// Opens the replica; on a first start joins the log and catches up
    /// before returning. Starts following the log in the background.
    pub(crate) async fn open(link: Link, local: SqliteStore) -> Result<Arc<Self>, ClusterError> {
        let store = Arc::new(Self {
            link,
            local,
            writes: tokio::sync::Mutex::new(()),
            broken: Mutex::new(None),
        });
        // A first start interrupted before it caught up is a first start
        // again: a partial copy must not be served.
        let first_start = store
            .local
            .replica()
            .await?
            .is_none_or(|(log, _)| log.starts_with(PENDING));
        if first_start {
            store.join().await?;
        }
        let follower = store.clone();
        store.link.spawn(async move { follower.follow().await });
        if first_start {
            store.catch_up().await?;
            let (log, _) = store.local.replica().await?.unwrap_or_default();
            store
                .local
                .start_replica(log.trim_start_matches(PENDING))
                .await?;
        }
        Ok(store)
    }

    /// The replica this store reads from.
    pub fn replica(&self) -> &SqliteStore {
        &self.local
    }

    /// Whether the node can take writes now.
    pub fn connected(&self) -> bool {
        self.link.connected() && self.broken().is_none()
    }

    fn broken(&self) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// First start: waits for NATS, creates the log if this is the first
    /// node, and records which log the replica follows.
    async fn join(&self) -> Result<(), ClusterError> {
        let config = &self.link.config;
        tracing::info!(url = %config.display_url(), "joining the cluster");
        if !self.link.wait_connected(config.join_timeout).await {
            let why = self
                .link
                .last_error()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default();
            return Err(ClusterError::Unreachable(format!(
                "cannot reach NATS at {} within {}s{why}, and this node has no state from an \
                 earlier start to serve: start NATS (with JetStream, `nats-server -js`), check \
                 --cluster and the credentials, or raise --join-timeout",
                config.display_url(),
                config.join_timeout.as_secs()
            )));
        }
        let stream = self.stream().await.map_err(ClusterError::Unreachable)?;
        self.local
            .start_replica(&format!("{PENDING}{}", log_id(&stream)))
            .await?;
        Ok(())
    }

    /// Waits until the replica holds the whole log as it is now.
    async fn catch_up(&self) -> Result<(), ClusterError> {
        let last = self
            .stream()
            .await
            .map_err(ClusterError::Unreachable)?
            .cached_info()
            .state
            .last_sequence;
        if last > 0 {
            tracing::info!(entries = last, "reading the cluster's state");
        }
        if !self
            .local
            .wait_for(last, self.link.config.join_timeout)
            .await
        {
            return Err(ClusterError::Unreachable(format!(
                "could not read the cluster's {last} state entries within {}s",
                self.link.config.join_timeout.as_secs()
            )));
        }
        Ok(())
    }

    /// The log stream, created by the first node to need it.
    async fn stream(&self) -> Result<stream::Stream, String> {
        self.link
            .stream(stream::Config {
                name: LOG_STREAM.to_string(),
                subjects: vec![LOG_SUBJECT.to_string()],
                storage: StorageType::File,
                description: Some("Verge control-plane state: one entry per change".to_string()),
                ..Default::default()
            })
            .await
    }

    /// Applies the log to the replica, for as long as the process lives,
    /// resuming after the last entry applied whenever the link returns.
    async fn follow(&self) {
        let mut reported = false;
        loop {
            if !self.link.wait_connected(Duration::from_secs(1)).await {
                continue;
            }
            match self.follow_once().await {
                Ok(()) => {}
                Err(e) if self.broken().is_some() => {
                    tracing::error!("{e}");
                    return;
                }
                Err(e) if !reported => {
                    tracing::warn!("cannot follow the cluster's state: {e}; retrying");
                    reported = true;
                }
                Err(e) => tracing::debug!("cannot follow the cluster's state: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Refuses (for good) a log that is not the one the replica follows:
    /// NATS lost or recreated its JetStream data.
    async fn check_identity(&self, stream: &stream::Stream) -> Result<(), StoreError> {
        let id = log_id(stream);
        let followed = self.local.replica().await?.map(|(log, _)| log);
        match followed {
            Some(followed) if followed.trim_start_matches(PENDING) != id => {
                let message = format!(
                    "the cluster's log {id} is not the one this node's state came from \
                     ({followed}): NATS lost or recreated its JetStream data. This node keeps \
                     serving what it has and refuses changes; restore NATS's data, or give the \
                     node a new --data folder to start over from the cluster"
                );
                self.set_broken(message.clone());
                Err(StoreError::Unavailable(message))
            }
            _ => Ok(()),
        }
    }

    fn set_broken(&self, message: String) {
        *self.broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }

    async fn follow_once(&self) -> Result<(), String> {
        let stream = self.stream().await?;
        self.check_identity(&stream)
            .await
            .map_err(|e| e.to_string())?;
        let applied = self.local.revision().await.map_err(|e| e.to_string())?;
        let mut messages =
            std::pin::pin!(self.link.read_after(&stream, LOG_SUBJECT, applied).await?);
        while let Some(message) = messages.next().await {
            let (seq, message) = message?;
            let ops = match decode(&message.payload) {
                Ok(ops) => ops,
                Err(Undecodable::Newer(format)) => {
                    // Skipping it would let this replica drift from the
                    // others: stop here until this node is upgraded.
                    let message = format!(
                        "entry {seq} of the cluster's log has format {format}, written by a newer \
                         Verge: upgrade this node; it serves what it has and refuses changes"
                    );
                    self.set_broken(message.clone());
                    return Err(message);
                }
                Err(Undecodable::Damaged(e)) => {
                    // Not written by Verge: skipped, but counted as applied
                    // so the replica's position stays the log's.
                    tracing::error!(seq, "skipping log entry {seq}: {e}");
                    Vec::new()
                }
            };
            self.local
                .apply_replicated(seq, ops)
                .await
                .map_err(|e| format!("cannot apply log entry {seq}: {e}"))?;
        }
        Err("the log's consumer ended".to_string())
    }

    /// Appends `ops` as one entry if their preconditions hold.
    async fn append(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        for op in &ops {
            verge_store::check_key(&op.key)?;
        }
        if let Some(reason) = self.broken() {
            return Err(StoreError::Unavailable(reason));
        }
        let payload = encode(&ops);
        let _serial = self.writes.lock().await;
        for _ in 0..MAX_ATTEMPTS {
            if !self.link.connected() {
                return Err(self.link.unreachable());
            }
            if let Some(reason) = self.broken() {
                return Err(StoreError::Unavailable(reason));
            }
            // Catch up with the log as it is now, so the preconditions are
            // checked against the latest state (a replica lagging behind
            // would answer a false conflict or a false "nothing to do"),
            // and make sure it is still the log this replica came from.
            let stream = self.stream().await.map_err(StoreError::Unavailable)?;
            self.check_identity(&stream).await?;
            let last = stream.cached_info().state.last_sequence;
            if !self.local.wait_for(last, APPLY_TIMEOUT).await {
                return Err(StoreError::Unavailable(format!(
                    "this node has not caught up with the cluster's state (entry {last}) within \
                     {}s; try again",
                    APPLY_TIMEOUT.as_secs()
                )));
            }
            let expected = self.local.revision().await?;
            // The log takes the entry only if it is still at `expected`.
            if !self.local.check(ops.clone()).await? {
                return Ok(expected);
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                expected.to_string().as_str(),
            );
            let publish = async {
                self.link
                    .js
                    .publish_with_headers(LOG_SUBJECT, headers, payload.clone().into())
                    .await?
                    .await
            };
            match tokio::time::timeout(ACK_TIMEOUT, publish).await {
                Ok(Ok(ack)) => {
                    if !self.local.wait_for(ack.sequence, APPLY_TIMEOUT).await {
                        return Err(StoreError::Unavailable(format!(
                            "the change is stored in the cluster (entry {}), but this node has \
                             not applied it within {}s; it will shortly",
                            ack.sequence,
                            APPLY_TIMEOUT.as_secs()
                        )));
                    }
                    return Ok(ack.sequence);
                }
                // Another node appended first: catch up and check again.
                Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => {}
                Ok(Err(e)) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    return Err(StoreError::Backend(format!(
                        "a change of {} bytes is larger than NATS accepts (max_payload)",
                        payload.len()
                    )));
                }
                Ok(Err(e)) if self.link.connected() => {
                    return Err(StoreError::Backend(format!("the cluster's log: {e}")));
                }
                Ok(Err(_)) => return Err(self.link.unreachable()),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "the cluster did not confirm the change within {}s; it may still be \
                         applied, so look before trying again",
                        ACK_TIMEOUT.as_secs()
                    )));
                }
            }
        }
        Err(StoreError::Backend(format!(
            "gave up after {MAX_ATTEMPTS} attempts: other nodes kept changing the state first"
        )))
    }
}

/// Names one incarnation of the log stream.
fn log_id(stream: &stream::Stream) -> String {
    let info = stream.cached_info();
    format!(
        "{}@{}",
        info.config.name,
        info.created.unix_timestamp_nanos()
    )
}

#[async_trait]
impl Store for ClusterStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.local.get(key).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.local.list_page(prefix, after, limit).await
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.append(ops).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError> {
        self.append(vec![Op::put(key, value, expect)]).await
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<Revision, StoreError> {
        self.append(vec![Op::delete(key, expect)]).await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.local.revision().await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>, StoreError> {
        self.local.watch(prefix, after).await
    }
}

/// The entry format's version byte.
const FORMAT: u8 = 1;

/// One log entry: the format byte, then per write the key's length (u32
/// big-endian) and bytes, and either 0 (delete) or 1, the value's length
/// and bytes. Preconditions are not kept: they held when it was appended.
fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = vec![FORMAT];
    for op in ops {
        push_bytes(&mut out, op.key.as_bytes());
        match &op.value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                push_bytes(&mut out, value);
            }
        }
    }
    out
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys are at most 512 bytes and NATS payloads a few MiB: a length
    // always fits in u32.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Why an entry cannot be read.
#[derive(Debug)]
enum Undecodable {
    /// Written by a newer Verge (its format byte).
    Newer(u8),
    /// Not an entry Verge wrote.
    Damaged(String),
}

fn decode(bytes: &[u8]) -> Result<Vec<Op>, Undecodable> {
    match bytes.first() {
        // Format bytes are small; anything else is not an entry at all.
        Some(&format) if format > FORMAT && format < 32 => Err(Undecodable::Newer(format)),
        _ => decode_ops(bytes).map_err(Undecodable::Damaged),
    }
}

fn decode_ops(mut bytes: &[u8]) -> Result<Vec<Op>, String> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if bytes.len() < n {
            return Err("truncated".to_string());
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn take_len(bytes: &mut &[u8]) -> Result<usize, String> {
        let raw = take(bytes, 4)?;
        let len = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        usize::try_from(len).map_err(|e| e.to_string())
    }
    match take(&mut bytes, 1)? {
        [FORMAT] => {}
        [other] => return Err(format!("unknown entry format {other} (a newer Verge?)")),
        _ => return Err("empty entry".to_string()),
    }
    let mut ops = Vec::new();
    while !bytes.is_empty() {
        let len = take_len(&mut bytes)?;
        let key = std::str::from_utf8(take(&mut bytes, len)?)
            .map_err(|_| "a key is not UTF-8".to_string())?
            .to_string();
        let value = match take(&mut bytes, 1)? {
            [0] => None,
            [1] => {
                let len = take_len(&mut bytes)?;
                Some(take(&mut bytes, len)?.to_vec())
            }
            _ => return Err("a write is neither put nor delete".to_string()),
        };
        ops.push(Op {
            key,
            value,
            expect: Expect::Any,
        });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};
    use verge_store::{Expect, Op};

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let ops = vec![
            Op::put("apps/t/a", b"{\"v\":1}".to_vec(), Expect::Absent),
            Op::delete("tokens/x", Expect::Revision(4)),
            Op::put("empty", Vec::new(), Expect::Any),
        ];
        let bytes = encode(&ops);
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back.len(), 3);
        for (a, b) in ops.iter().zip(&back) {
            assert_eq!(a.key, b.key);
            assert_eq!(a.value, b.value);
            assert_eq!(b.expect, Expect::Any);
        }
        for cut in 1..bytes.len() {
            // Every strict prefix that ends inside a write is refused.
            let prefix = &bytes[..cut];
            if let Ok(ops) = decode(prefix) {
                assert!(ops.len() < 3, "a prefix of {cut} bytes decoded whole");
            }
        }
        assert!(decode(&[]).is_err());
        assert!(matches!(decode(&[9]), Err(super::Undecodable::Newer(9))));
        assert!(matches!(
            decode(b"{\"not\":\"verge\"}"),
            Err(super::Undecodable::Damaged(_))
        ));
    }
}
