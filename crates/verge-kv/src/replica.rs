//! Key-value stores across a cluster: each tenant's changes are entries of
//! a log the cluster orders (a [`Replicator`]; JetStream in
//! `verge-cluster`), and every node that serves the tenant applies the
//! log to its own database, which all reads use.
//!
//! A store has one of two consistencies, declared in `verge.toml`:
//! - **strict** (the default): a write is appended to the log and takes
//!   effect when the log delivers it, on every node in the same order, so
//!   `increment` and batches stay exact cluster-wide. The writer waits for
//!   its own node to apply it and gets that result. A node that cannot
//!   reach the cluster refuses the write ([`KvError::Unavailable`]); nothing
//!   is half-done.
//! - **edge-local**: a write is applied at once to the local database,
//!   stamped with a hybrid logical clock ([`Hlc`]), and queued (durably, in
//!   the same transaction) for the log. Other nodes apply it if its stamp
//!   is newer than what they hold for the key: last writer wins, per key.
//!   Writes never fail for want of the cluster; concurrent writes to one
//!   key on both sides of a partition keep only the later one, and an
//!   `increment` travels as the value it produced, so increments made
//!   concurrently on two sides count once.
//!
//! **Invariants**
//! - Each node applies a tenant's log in order, each entry once (the last
//!   applied sequence is stored in the same transaction as its effects).
//! - An edge-local write is in the outbox if and only if it is in the
//!   local data: both are written in one transaction, so a `kill -9` loses
//!   neither the write nor its way to the other nodes.
//! - Deleted edge-local keys leave a tombstone with their stamp, so an
//!   older write arriving late cannot bring them back.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::KvError;
use crate::db::TenantDb;
use crate::writer::{Write, Written};

/// How a store's writes travel between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Ordered by the cluster; refused when it cannot be reached.
    #[default]
    Strict,
    /// Accepted locally; reconciled last-writer-wins by hybrid logical
    /// clock.
    EdgeLocal,
}

/// A boxed future, as the [`Replicator`] returns them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Applies one entry of a tenant's log (its sequence and bytes).
pub type Applier = Arc<dyn Fn(u64, Vec<u8>) -> BoxFuture<Result<(), KvError>> + Send + Sync>;

/// Carries tenants' logs through the cluster.
pub trait Replicator: Send + Sync + 'static {
    /// This node's name (it tags the entries it writes).
    fn node(&self) -> &str;

    /// Appends `entry` to `tenant`'s log; resolves once the cluster stored
    /// it, or fails with [`KvError::Unavailable`].
    fn publish(&self, tenant: &str, entry: Vec<u8>) -> BoxFuture<Result<(), KvError>>;

    /// Delivers `tenant`'s entries after sequence `after`, in order, to
    /// `apply`, for as long as the process lives (resuming after the last
    /// entry applied when the link returns).
    fn follow(&self, tenant: &str, after: u64, apply: Applier);
}

/// A hybrid logical clock: milliseconds since the epoch in the high bits,
/// a counter in the low 16, never going backwards and always past every
/// stamp seen from other nodes.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    /// A stamp later than every stamp made or seen before.
    pub fn now(&self) -> u64 {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX >> 16)
        }) << 16;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Takes a stamp from another node into account.
    pub fn observe(&self, stamp: u64) {
        self.last.fetch_max(stamp, Ordering::Relaxed);
    }
}

/// One entry of a tenant's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Random, so the writer can find its own entry's result.
    pub(crate) id: u64,
    /// The node that wrote it.
    pub(crate) origin: String,
    /// Its HLC stamp for an edge-local write; 0 for a strict one.
    pub(crate) hlc: u64,
    pub(crate) app: String,
    pub(crate) store: String,
    pub(crate) op: Write,
}

const FORMAT: u8 = 1;

impl Entry {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT];
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.hlc.to_be_bytes());
        for text in [&self.origin, &self.app, &self.store] {
            put(&mut out, text.as_bytes());
        }
        match &self.op {
            Write::Set(items) => {
                out.push(0);
                out.extend_from_slice(&(items.len() as u32).to_be_bytes());
                for (key, value) in items {
                    put(&mut out, key.as_bytes());
                    put(&mut out, value);
                }
            }
            Write::Delete(keys) => {
                out.push(1);
                out.extend_from_slice(&(keys.len() as u32).to_be_bytes());
                for key in keys {
                    put(&mut out, key.as_bytes());
                }
            }
            Write::Increment(key, delta) => {
                out.push(2);
                put(&mut out, key.as_bytes());
                out.extend_from_slice(&delta.to_be_bytes());
            }
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader(bytes);
        if r.take(1)? != [FORMAT] {
            return Err("unknown entry format (a newer Verge?)".to_string());
        }
        let id = r.u64()?;
        let hlc = r.u64()?;
        let origin = r.text()?;
        let app = r.text()?;
        let store = r.text()?;
        let op = match r.take(1)? {
            [0] => {
                let n = r.u32()?;
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push((r.text()?, r.bytes()?.to_vec()));
                }
                Write::Set(items)
            }
            [1] => {
                let n = r.u32()?;
                let mut keys = Vec::new();
                for _ in 0..n {
                    keys.push(r.text()?);
                }
                Write::Delete(keys)
            }
            [2] => Write::Increment(r.text()?, r.u64()?),
            _ => return Err("unknown operation".to_string()),
        };
        if !r.0.is_empty() {
            return Err("trailing bytes".to_string());
        }
        Ok(Self {
            id,
            origin,
            hlc,
            app,
            store,
            op,
        })
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated entry".to_string());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn text(&mut self) -> Result<String, String> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_string)
            .map_err(|_| "text that is not UTF-8".to_string())
    }
}

/// How long a strict write waits for its own node to apply it once the
/// cluster stored it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's side of replication: who waits for which entry, which
/// tenants are followed, and the clock.
pub(crate) struct Replication {
    pub(crate) replicator: Arc<dyn Replicator>,
    /// The quotas strict entries are applied with.
    quotas: crate::Quotas,
    pub(crate) hlc: Hlc,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Result<Written, KvError>>>>,
    followed: Mutex<HashSet<String>>,
}

impl Replication {
    pub(crate) fn new(replicator: Arc<dyn Replicator>, quotas: crate::Quotas) -> Arc<Self> {
        Arc::new(Self {
            replicator,
            quotas,
            hlc: Hlc::default(),
            waiting: Mutex::new(HashMap::new()),
            followed: Mutex::new(HashSet::new()),
        })
    }

    /// Starts following `tenant`'s log into `db` and sending its outbox,
    /// once per tenant.
    pub(crate) fn follow(
        self: &Arc<Self>,
        tenant: &str,
        db: &Arc<TenantDb>,
    ) -> Result<(), KvError> {
        if !self
            .followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.to_string())
        {
            return Ok(());
        }
        let after = db.replica_applied()?;
        // The clock lives in memory: after a restart on a host whose clock
        // is behind the stamps already held, it must still move past them.
        self.hlc.observe(db.max_hlc()?);
        let (me, db2) = (self.clone(), db.clone());
        let apply: Applier = Arc::new(move |seq, bytes| {
            let (me, db) = (me.clone(), db2.clone());
            Box::pin(async move { me.apply(&db, seq, bytes).await })
        });
        self.replicator.follow(tenant, after, apply);
        let (me, db, tenant) = (self.clone(), db.clone(), tenant.to_string());
        tokio::spawn(async move { me.send_outbox(&tenant, &db).await });
        Ok(())
    }

    /// Applies entry `seq` to `db`; hands the result to the writer waiting
    /// for it, if it is on this node.
    async fn apply(&self, db: &Arc<TenantDb>, seq: u64, bytes: Vec<u8>) -> Result<(), KvError> {
        let entry = match Entry::decode(&bytes) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::error!(seq, "skipping key-value log entry {seq}: {e}");
                return db.apply_logged(seq, None, self.quotas).await.map(drop);
            }
        };
        if entry.hlc > 0 {
            self.hlc.observe(entry.hlc);
        }
        let id = entry.id;
        let result = db.apply_logged(seq, Some(entry), self.quotas).await;
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match (result, waiter) {
            (Ok(written), Some(waiter)) => {
                let _ = waiter.send(written.unwrap_or(Ok(Written::Done)));
                Ok(())
            }
            (Ok(_), None) => Ok(()),
            (Err(e), waiter) => {
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Err(e.clone()));
                }
                Err(e)
            }
        }
    }

    /// A strict write: appended to the log, answered once applied here.
    pub(crate) async fn write_strict(
        &self,
        tenant: &str,
        app: &str,
        store: &str,
        op: Write,
    ) -> Result<Written, KvError> {
        let entry = Entry {
            id: random_id(),
            origin: self.replicator.node().to_string(),
            hlc: 0,
            app: app.to_string(),
            store: store.to_string(),
            op,
        };
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.id, tx);
        if let Err(e) = self.replicator.publish(tenant, entry.encode()).await {
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&entry.id);
            return Err(e);
        }
        match tokio::time::timeout(APPLY_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            _ => {
                self.waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&entry.id);
                Err(KvError::Unavailable(
                    "the cluster stored the write, but this node has not applied it yet; it \
                     will take effect shortly"
                        .to_string(),
                ))
            }
        }
    }

    /// Sends the tenant's outbox (edge-local writes) to the log, oldest
    /// first, whenever there is something to send and the link is up.
    async fn send_outbox(&self, tenant: &str, db: &Arc<TenantDb>) {
        let mut failing = false;
        loop {
            let notified = db.outbox_notify().notified();
            match db.outbox_batch(64).await {
                Ok(batch) if batch.is_empty() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
                    continue;
                }
                Ok(batch) => {
                    let mut sent = None;
                    for (id, entry) in batch {
                        match self.replicator.publish(tenant, entry).await {
                            Ok(()) => sent = Some(id),
                            Err(e) => {
                                if !failing {
                                    tracing::warn!(
                                        tenant,
                                        "edge-local writes wait for the cluster: {e}"
                                    );
                                    failing = true;
                                }
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                break;
                            }
                        }
                    }
                    if let Some(id) = sent {
                        if failing {
                            tracing::info!(tenant, "sending edge-local writes again");
                            failing = false;
                        }
                        if let Err(e) = db.outbox_done(id).await {
                            tracing::error!(tenant, "key-value outbox: {e}");
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(tenant, "key-value outbox: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

pub(crate) fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // A fresh random SipHash key per call: unique enough for ids that live
    // for one write.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        for op in [
            Write::Set(vec![("k".into(), b"v".to_vec()), ("e".into(), Vec::new())]),
            Write::Delete(vec!["a".into(), "b".into()]),
            Write::Increment("n".into(), 7),
        ] {
            let entry = Entry {
                id: 42,
                origin: "node-a".into(),
                hlc: 99,
                app: "shop".into(),
                store: "carts".into(),
                op,
            };
            let bytes = entry.encode();
            assert_eq!(Entry::decode(&bytes), Ok(entry));
            for cut in 0..bytes.len() {
                assert!(
                    Entry::decode(&bytes[..cut]).is_err(),
                    "prefix of {cut} bytes"
                );
            }
        }
        assert!(Entry::decode(b"{\"json\":true}").is_err());
    }

    #[test]
    fn the_clock_never_goes_back_and_passes_what_it_sees() {
        let hlc = Hlc::default();
        let a = hlc.now();
        let b = hlc.now();
        assert!(b > a);
        hlc.observe(b + (1 << 30));
        assert!(
            hlc.now() > b + (1 << 30),
            "a stamp from a node ahead is passed"
        );
    }
}
