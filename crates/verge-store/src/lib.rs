//! Verge's state store: the one place control-plane state lives.
//!
//! Two traits, shaped after NATS JetStream so that a cluster backend can
//! implement them later without changing any caller:
//! - [`Store`]: keys with values and **revisions**, compare-and-set on
//!   revision ([`Expect`]), prefix listing (whole or paged), and a [`Watch`] that never
//!   misses a key's latest state after a given revision (JetStream KV:
//!   revisions, `update`, `watch`).
//! - [`BlobStore`]: content-addressed immutable blobs named by their sha256,
//!   verified on write and on read (JetStream Object Store).
//!
//! A cluster's store (`verge-cluster`) reads from a [`SqliteStore`] that
//! replicates its log; see [`SqliteStore::apply_replicated`].
//!
//! The embedded default is [`SqliteStore`] (one SQLite file in WAL mode,
//! synchronous=FULL: a write that returned survives `kill -9` and power
//! loss) and [`FsBlobs`] (a folder of files written to a temporary name,
//! synced and renamed).
//!
//! **Invariants**
//! - Revisions are global to a store and strictly increase; every put or
//!   delete gets a new one, except that the writes of one [`Store::apply`]
//!   may share theirs (a cluster log entry holds them all).
//! - A watcher sees, in revision order, the latest change of every key
//!   changed after the revision it started from. A key written twice before
//!   the watcher reads it shows only its second write (as a JetStream KV
//!   watch with a history of one): watchers follow state, not a log.
//! - A deleted key leaves a tombstone so that watchers can learn of it.
//! - A blob is readable under a name only if its bytes hash to that name.
//!
//! **API boundary**: values are opaque bytes; the store knows nothing of
//! apps, tokens or HTTP. No SQL outside this crate.

mod blobs;
mod sqlite;

use std::time::Duration;

use async_trait::async_trait;

pub use blobs::{BlobError, BlobId, BlobStore, BlobWriter, FsBlobs};
pub use sqlite::SqliteStore;

/// A store-wide revision number; 0 means "before anything".
pub type Revision = u64;

/// A key with its current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the last write to this key.
    pub revision: Revision,
}

/// A precondition on a key's current revision, checked atomically with the
/// write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No precondition.
    Any,
    /// The key must not exist (create).
    Absent,
    /// The key's last write must have this revision (update).
    Revision(Revision),
}

/// One write of an atomic [`Store::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The key.
    pub key: String,
    /// The new value, or `None` to delete.
    pub value: Option<Vec<u8>>,
    /// The precondition.
    pub expect: Expect,
}

impl Op {
    /// Writes `value` under `key` if `expect` holds.
    pub fn put(key: impl Into<String>, value: Vec<u8>, expect: Expect) -> Self {
        Self {
            key: key.into(),
            value: Some(value),
            expect,
        }
    }

    /// Deletes `key` if `expect` holds.
    pub fn delete(key: impl Into<String>, expect: Expect) -> Self {
        Self {
            key: key.into(),
            value: None,
            expect,
        }
    }
}

/// One change seen by a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key was written.
    Put(Entry),
    /// A key was deleted.
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        revision: Revision,
    },
}

impl Change {
    /// The key changed.
    pub fn key(&self) -> &str {
        match self {
            Change::Put(e) => &e.key,
            Change::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            Change::Put(e) => e.revision,
            Change::Delete { revision, .. } => *revision,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The [`Expect`] precondition did not hold.
    #[error("key `{key}` changed concurrently (now at revision {current:?})")]
    Conflict {
        /// The key.
        key: String,
        /// Its current revision, or `None` if absent.
        current: Option<Revision>,
    },
    /// The key is not valid (empty, too long or with control characters).
    #[error("invalid key `{0}`")]
    InvalidKey(String),
    /// The backend failed.
    #[error("state store: {0}")]
    Backend(String),
    /// The store cannot take writes now (a cluster store cut off from its
    /// cluster); reads still answer from the local copy.
    #[error("{0}")]
    Unavailable(String),
}

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// Revisioned key-value state with compare-and-set and watch.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`.
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// Every live key starting with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        self.list_page(prefix, None, usize::MAX).await
    }

    /// At most `limit` live keys starting with `prefix` and sorting after
    /// `after` (from the first with `None`), sorted by key: for reading a
    /// long range in bounded memory.
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;

    /// Applies every write of `ops` or none: each precondition is checked
    /// and each write gets its own revision, in order, in one step.
    /// Returns the revision of the last write. (JetStream: an atomic batch
    /// publish.)
    async fn apply(&self, ops: Vec<Op>) -> Result<Revision, StoreError>;

    /// Writes `value` under `key` if `expect` holds; returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError>;

    /// Deletes `key` if `expect` holds; returns the revision of the
    /// deletion. Deleting an absent key with [`Expect::Any`] is a no-op
    /// that returns the current revision.
    async fn delete(&self, key: &str, expect: Expect) -> Result<Revision, StoreError>;

    /// The revision of the last change to the store.
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// Changes to keys starting with `prefix` made after revision `after`.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>, StoreError>;
}

/// A stream of changes, in revision order; intermediate writes of a key
/// may be folded into its latest one.
#[async_trait]
pub trait Watch: Send {
    /// The next batch of changes (never empty). Waits until there is one,
    /// or returns an empty batch after `timeout` so callers can do other
    /// work.
    async fn next(&mut self, timeout: Duration) -> Result<Vec<Change>, StoreError>;
}

/// Refuses an empty key, one over [`MAX_KEY_LEN`] bytes, or one with control
/// characters.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
        return Err(StoreError::InvalidKey(key.escape_debug().to_string()));
    }
    Ok(())
}
