//! Key-value stores for guests: the engine behind `wasi:keyvalue` and
//! `verge kv`.
//!
//! A store is named by (tenant, app, store name). Each tenant has its own
//! SQLite file (`DIR/TENANT.db`, WAL), so tenants never share a write lock
//! and one tenant's data is never in another's file. Writes go to one
//! writer thread per tenant that commits whatever has queued up in a single
//! transaction (group commit): under concurrency many writes share one
//! fsync. Reads use a small pool of read connections: a point read (`get`,
//! `exists`) runs on the calling thread, since SQLite answers it from its
//! cache in microseconds; scans and batches run on the blocking pool.
//!
//! **Invariants**
//! - Durable on return: `synchronous = FULL`; a write is acknowledged only
//!   after its transaction committed.
//! - Writes to one tenant are serialised, so `increment` never loses an
//!   update, and a batch (`set_many`, `delete_many`) applies all or nothing.
//! - Quotas ([`Quotas`]) are checked inside the transaction that would break
//!   them; usage per store is kept in the same transaction as the data.
//! - Errors never contain values.
//!
//! **API boundary**: no knowledge of wasmtime, HTTP or manifests. Who may
//! open which store is decided by the caller (the executor checks the
//! component's declared stores, the control API checks tokens).

mod db;
mod replica;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use db::TenantDb;
pub use db::{Bucket, KeyPage, MAX_BATCH_KEYS};
pub use replica::{Applier, BoxFuture, Consistency, Hlc, Replicator};

/// Limits on one store (one tenant's app's store name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Largest key, in bytes of UTF-8.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most keys in one store.
    pub max_keys: u64,
    /// Most bytes (keys plus values) in one store.
    pub max_store_bytes: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
            max_keys: 100_000,
            max_store_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Why a key-value operation failed. Messages say what to do and never
/// include a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The key is empty, too long or otherwise unusable.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A store name that is not allowed.
    #[error("invalid store name `{0}`: use 1 to 63 of a-z, 0-9, `-` and `_`")]
    InvalidStore(String),
    /// A tenant name that is not allowed.
    #[error("invalid tenant `{0}`")]
    InvalidTenant(String),
    /// The write would exceed a quota of the store.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// `increment` on a value that is not a decimal counter.
    #[error("the value of `{0}` is not a decimal unsigned integer, so it cannot be incremented")]
    NotACounter(String),
    /// `increment` past `u64::MAX`.
    #[error("incrementing `{0}` would overflow a 64-bit unsigned integer")]
    Overflow(String),
    /// The database failed (disk full, I/O error, ...).
    #[error("key-value storage failed: {0}")]
    Storage(String),
    /// A strict store's write could not reach the cluster (nothing was
    /// written), or has not reached this node yet.
    #[error("{0}")]
    Unavailable(String),
}

impl KvError {
    /// The message for whoever asked (a guest, a deployer): a storage
    /// failure says only that it happened, since its detail (paths, SQLite's
    /// words) belongs in the node log; every other error is the caller's
    /// to fix and says how.
    pub fn public_message(&self) -> String {
        match self {
            KvError::Storage(_) => "key-value storage failed; the node log has details".into(),
            other => other.to_string(),
        }
    }
}

pub(crate) fn storage(e: impl std::fmt::Display) -> KvError {
    KvError::Storage(e.to_string())
}

/// All key-value data of one node: a folder of per-tenant databases.
pub struct KeyValue {
    dir: PathBuf,
    quotas: Quotas,
    tenants: Mutex<HashMap<String, Arc<TenantDb>>>,
    /// In a cluster: how stores reach the other nodes.
    replication: std::sync::OnceLock<Arc<replica::Replication>>,
}

impl KeyValue {
    /// Uses `dir` for the databases; it is created (mode 0700) when the
    /// first store is opened.
    pub fn open(dir: &Path, quotas: Quotas) -> Arc<Self> {
        Arc::new(Self {
            dir: dir.to_path_buf(),
            quotas,
            tenants: Mutex::new(HashMap::new()),
            replication: std::sync::OnceLock::new(),
        })
    }

    /// Replicates every store through `replicator` (a cluster node); only
    /// the first call has an effect, and it must come before any store is
    /// opened.
    pub fn replicate(&self, replicator: Arc<dyn Replicator>) {
        let _ = self
            .replication
            .set(replica::Replication::new(replicator, self.quotas));
    }

    /// The quotas every store gets.
    pub fn quotas(&self) -> Quotas {
        self.quotas
    }

    /// Store `store` of `app` of `tenant`. Opens the tenant's database on
    /// first use, which blocks: call it from a blocking context (loading a
    /// component, `spawn_blocking`).
    pub fn bucket(&self, tenant: &str, app: &str, store: &str) -> Result<Bucket, KvError> {
        self.bucket_with(tenant, app, store, Consistency::Strict)
    }

    /// As [`KeyValue::bucket`], with the store's declared consistency
    /// (which matters only in a cluster). In a cluster, the first store of
    /// a tenant starts following the tenant's log.
    pub fn bucket_with(
        &self,
        tenant: &str,
        app: &str,
        store: &str,
        consistency: Consistency,
    ) -> Result<Bucket, KvError> {
        check_store_name(store)?;
        let db = self.tenant(tenant)?;
        let mode = match self.replication.get() {
            None => db::Mode::Local,
            Some(replication) => {
                replication.follow(tenant, &db)?;
                match consistency {
                    Consistency::Strict => db::Mode::Strict(replication.clone(), tenant.into()),
                    Consistency::EdgeLocal => db::Mode::EdgeLocal(replication.clone()),
                }
            }
        };
        Ok(Bucket::new(db, app, store, self.quotas, mode))
    }

    /// The database of `tenant`, opened on first use (blocking).
    fn tenant(&self, tenant: &str) -> Result<Arc<TenantDb>, KvError> {
        let valid = !tenant.is_empty()
            && tenant.len() <= 63
            && tenant
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid {
            return Err(KvError::InvalidTenant(tenant.to_string()));
        }
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = tenants.get(tenant) {
            return Ok(db.clone());
        }
        create_private_dir(&self.dir).map_err(|e| {
            KvError::Storage(format!("cannot create `{}`: {e}", self.dir.display()))
        })?;
        let db = TenantDb::open(&self.dir.join(format!("{tenant}.db")), tenant)?;
        tenants.insert(tenant.to_string(), db.clone());
        Ok(db)
    }
}

impl std::fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyValue")
            .field("dir", &self.dir)
            .field("quotas", &self.quotas)
            .finish_non_exhaustive()
    }
}

/// Store names: 1 to 63 of `a-z`, `0-9`, `-`, `_`
/// ([`verge_capabilities::check_store_name`]).
pub fn check_store_name(name: &str) -> Result<(), KvError> {
    verge_capabilities::check_store_name(name).map_err(|_| KvError::InvalidStore(name.to_string()))
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests;
