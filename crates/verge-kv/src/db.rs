//! One tenant's database: the schema, the read pool and the [`Bucket`]
//! handle that guests and the control API use.
//!
//! Rows are `(id, app, store, key, value)`; `id` only grows, so a guest's
//! `list-keys` cursor (a `u64`) is the last id it saw and stays valid while
//! keys come and go. A `usage` row per store keeps its key count and bytes
//! in the same transaction as the data.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::replica::Replication;
use crate::writer::{Job, Kind, Write, Written};
use crate::{KvError, Quotas, storage};

/// Read connections kept open per tenant between reads.
const IDLE_READERS: usize = 4;
/// Most bytes one `get_many` may return.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Most keys in one batch call.
pub const MAX_BATCH_KEYS: usize = 1000;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS kv (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        app TEXT NOT NULL,
        store TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        UNIQUE (app, store, key)
    );
    CREATE INDEX IF NOT EXISTS kv_by_id ON kv (app, store, id);
    CREATE TABLE IF NOT EXISTS usage (
        app TEXT NOT NULL,
        store TEXT NOT NULL,
        keys INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (app, store)
    ) WITHOUT ROWID;
";

/// Schema 2: what replication across a cluster needs (see `replica`): the
/// stamp of each value, tombstones of deleted edge-local keys, the outbox
/// of edge-local writes, and the position in the tenant's log.
const SCHEMA_2: &str = "
    ALTER TABLE kv ADD COLUMN hlc INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE kv ADD COLUMN origin TEXT NOT NULL DEFAULT '';
    CREATE TABLE tombstones (
        app TEXT NOT NULL,
        store TEXT NOT NULL,
        key TEXT NOT NULL,
        hlc INTEGER NOT NULL,
        origin TEXT NOT NULL,
        PRIMARY KEY (app, store, key)
    ) WITHOUT ROWID;
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        entry BLOB NOT NULL
    );
    CREATE TABLE replica (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        applied INTEGER NOT NULL
    );
";

/// The schema version this Verge writes.
const SCHEMA_VERSION: i64 = 2;

/// A tenant's database: the writer thread's queue and idle readers.
pub(crate) struct TenantDb {
    path: PathBuf,
    writes: std::sync::mpsc::Sender<Job>,
    readers: Mutex<Vec<Connection>>,
    /// Woken when an edge-local write lands in the outbox.
    outbox: tokio::sync::Notify,
}

pub(crate) fn open_connection(path: &Path, read_only: bool) -> Result<Connection, KvError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| KvError::Storage(format!("cannot open `{}`: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(storage)?;
    Ok(conn)
}

impl TenantDb {
    /// Opens (creating) the database at `path` and starts its writer.
    pub(crate) fn open(path: &Path, tenant: &str) -> Result<Arc<Self>, KvError> {
        let conn = open_connection(path, false)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(storage)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(storage)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(storage)?;
        if version > SCHEMA_VERSION {
            return Err(KvError::Storage(format!(
                "`{}` was written by a newer Verge (schema {version}); upgrade Verge",
                path.display()
            )));
        }
        if version < SCHEMA_VERSION {
            let mut conn = conn;
            let tx = conn.transaction().map_err(storage)?;
            tx.execute_batch(SCHEMA).map_err(storage)?;
            tx.execute_batch(SCHEMA_2).map_err(storage)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(storage)?;
            tx.commit().map_err(storage)?;
            return Self::started(conn, path, tenant);
        }
        Self::started(conn, path, tenant)
    }

    fn started(conn: Connection, path: &Path, tenant: &str) -> Result<Arc<Self>, KvError> {
        let writes = crate::writer::start(conn, tenant)?;
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            writes,
            readers: Mutex::new(Vec::new()),
            outbox: tokio::sync::Notify::new(),
        }))
    }

    /// The last entry of the tenant's log applied here (0 for none).
    pub(crate) fn replica_applied(&self) -> Result<u64, KvError> {
        self.read_now(|c| {
            c.query_row("SELECT applied FROM replica", [], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map(|applied| applied.map_or(0, |a| a.max(0) as u64))
    }

    /// Applies entry `seq` of the log (`None`: unreadable, only the
    /// position moves). Returns the entry's own result (for its writer),
    /// or fails if nothing could be committed.
    pub(crate) async fn apply_logged(
        &self,
        seq: u64,
        entry: Option<crate::replica::Entry>,
        quotas: Quotas,
    ) -> Result<Option<Result<Written, KvError>>, KvError> {
        let (reply, rx) = oneshot::channel();
        let job = match entry {
            Some(entry) => {
                // Edge-local entries, this node's own included (a node
                // given a new data folder gets its writes back), apply only
                // where newer than what a key holds; an entry this node
                // already applied has the very stamp the key holds.
                Job {
                    app: entry.app.into(),
                    store: entry.store.into(),
                    // A strict entry takes effect here, in log order, so its
                    // quotas are checked here, alike on every node (given
                    // the same `--kv-max-*`): a refusal reaches its writer.
                    // An edge-local one was checked where it was written;
                    // refusing it here would keep the nodes apart.
                    quotas: if entry.hlc == 0 {
                        quotas
                    } else {
                        Quotas {
                            max_key_bytes: usize::MAX,
                            max_value_bytes: usize::MAX,
                            max_keys: u64::MAX,
                            max_store_bytes: u64::MAX,
                        }
                    },
                    op: entry.op,
                    kind: Kind::Logged {
                        seq,
                        hlc: entry.hlc,
                        origin: entry.origin,
                        apply: true,
                    },
                    reply,
                }
            }
            None => Job {
                app: "".into(),
                store: "".into(),
                quotas: Quotas::default(),
                op: Write::Delete(Vec::new()),
                kind: Kind::Logged {
                    seq,
                    hlc: 0,
                    origin: String::new(),
                    apply: false,
                },
                reply,
            },
        };
        match self.write(job, rx).await {
            Err(KvError::Storage(e)) => Err(KvError::Storage(e)),
            other => Ok(Some(other)),
        }
    }

    /// Woken when an edge-local write is queued.
    pub(crate) fn outbox_notify(&self) -> &tokio::sync::Notify {
        &self.outbox
    }

    /// The oldest `limit` entries waiting in the outbox.
    pub(crate) async fn outbox_batch(
        self: &Arc<Self>,
        limit: usize,
    ) -> Result<Vec<(i64, Vec<u8>)>, KvError> {
        self.read(move |c| {
            c.prepare_cached("SELECT id, entry FROM outbox ORDER BY id LIMIT ?1")?
                .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await
    }

    /// Removes outbox entries up to `id` (the cluster stored them).
    pub(crate) async fn outbox_done(self: &Arc<Self>, id: i64) -> Result<(), KvError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = open_connection(&path, false)?;
            conn.execute("DELETE FROM outbox WHERE id <= ?1", [id])
                .map(drop)
                .map_err(storage)
        })
        .await
        .map_err(storage)?
    }

    /// The latest stamp any value or tombstone holds (0 for none): a clock
    /// restarted behind it must still stamp later writes above it.
    pub(crate) fn max_hlc(&self) -> Result<u64, KvError> {
        self.read_now(|c| {
            c.query_row(
                "SELECT MAX(COALESCE((SELECT MAX(hlc) FROM kv), 0),
                            COALESCE((SELECT MAX(hlc) FROM tombstones), 0))",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|h| h.max(0) as u64)
    }

    /// Runs a short read (one indexed row) on the calling thread with a
    /// pooled read connection: SQLite serves it from its cache in a few
    /// microseconds, far less than handing it to another thread costs.
    fn read_now<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, KvError> {
        let idle = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => open_connection(&self.path, true)?,
        };
        let result = f(&conn).map_err(storage);
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// Runs a longer read (a scan, a batch) on a blocking thread with a
    /// pooled read connection.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, KvError> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.read_now(f))
            .await
            .map_err(storage)?
    }

    async fn write(
        &self,
        job: Job,
        reply: oneshot::Receiver<Result<Written, KvError>>,
    ) -> Result<Written, KvError> {
        self.writes
            .send(job)
            .map_err(|_| KvError::Storage("the key-value writer has stopped".into()))?;
        reply
            .await
            .map_err(|_| KvError::Storage("the key-value writer has stopped".into()))?
    }
}

/// One page of a store's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// Keys, in the page's order.
    pub keys: Vec<String>,
    /// Where the next page starts, if there is one.
    pub cursor: Option<u64>,
}

/// A handle on one store of one app of one tenant. Cheap to clone.
#[derive(Clone)]
pub struct Bucket {
    db: Arc<TenantDb>,
    app: Arc<str>,
    store: Arc<str>,
    quotas: Quotas,
    mode: Mode,
}

/// Where a bucket's writes go.
#[derive(Clone)]
pub(crate) enum Mode {
    /// A standalone node's database.
    Local,
    /// Through the tenant's log (`tenant`).
    Strict(Arc<Replication>, Arc<str>),
    /// Here first, then to the log.
    EdgeLocal(Arc<Replication>),
}

impl Bucket {
    pub(crate) fn new(
        db: Arc<TenantDb>,
        app: &str,
        store: &str,
        quotas: Quotas,
        mode: Mode,
    ) -> Self {
        Self {
            db,
            app: app.into(),
            store: store.into(),
            quotas,
            mode,
        }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.store
    }

    /// The quotas of this store.
    pub fn quotas(&self) -> Quotas {
        self.quotas
    }

    /// Refuses keys that are empty, contain NUL or are over the limit.
    pub fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::InvalidKey("keys cannot be empty".into()));
        }
        if key.len() > self.quotas.max_key_bytes {
            return Err(KvError::InvalidKey(format!(
                "a key of {} bytes is longer than the limit of {} bytes",
                key.len(),
                self.quotas.max_key_bytes
            )));
        }
        if key.contains('\0') {
            return Err(KvError::InvalidKey("keys cannot contain NUL".into()));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() > self.quotas.max_value_bytes {
            return Err(KvError::QuotaExceeded(format!(
                "a value of {} bytes is larger than the limit of {} bytes",
                value.len(),
                self.quotas.max_value_bytes
            )));
        }
        Ok(())
    }

    fn check_batch(n: usize) -> Result<(), KvError> {
        if n > MAX_BATCH_KEYS {
            return Err(KvError::QuotaExceeded(format!(
                "a batch of {n} keys is larger than the limit of {MAX_BATCH_KEYS}"
            )));
        }
        Ok(())
    }

    /// The value of `key`, if set.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(key)?;
        self.db.read_now(|c| {
            c.prepare_cached("SELECT value FROM kv WHERE app = ?1 AND store = ?2 AND key = ?3")?
                .query_row(params![&*self.app, &*self.store, key], |r| r.get(0))
                .optional()
        })
    }

    /// Whether `key` is set.
    pub async fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.check_key(key)?;
        self.db.read_now(|c| {
            c.prepare_cached("SELECT 1 FROM kv WHERE app = ?1 AND store = ?2 AND key = ?3")?
                .exists(params![&*self.app, &*self.store, key])
        })
    }

    /// The values of `keys`, in order (`None` where unset). Refused above
    /// [`MAX_BATCH_KEYS`] keys or 16 MiB of values.
    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        Self::check_batch(keys.len())?;
        for k in &keys {
            self.check_key(k)?;
        }
        let (app, store) = (self.app.clone(), self.store.clone());
        let values = self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT value FROM kv WHERE app = ?1 AND store = ?2 AND key = ?3",
                )?;
                let mut total = 0usize;
                let mut out = Vec::with_capacity(keys.len());
                for k in &keys {
                    let v: Option<Vec<u8>> = stmt
                        .query_row(params![&*app, &*store, k], |r| r.get(0))
                        .optional()?;
                    total += v.as_ref().map_or(0, Vec::len);
                    if total > MAX_BATCH_BYTES {
                        return Ok(None);
                    }
                    out.push(v);
                }
                Ok(Some(out))
            })
            .await?;
        values.ok_or_else(|| {
            KvError::QuotaExceeded(format!(
                "the values of this batch add up to more than {MAX_BATCH_BYTES} bytes; ask for fewer keys at once"
            ))
        })
    }

    /// Sets `key` to `value`; durable when this returns.
    pub async fn set(&self, key: String, value: Vec<u8>) -> Result<(), KvError> {
        self.check_key(&key)?;
        self.check_value(&value)?;
        self.write(Write::Set(vec![(key, value)])).await.map(drop)
    }

    /// Removes `key` (no error if it was not set).
    pub async fn delete(&self, key: String) -> Result<(), KvError> {
        self.check_key(&key)?;
        self.write(Write::Delete(vec![key])).await.map(drop)
    }

    /// Adds `delta` to the decimal counter at `key` (missing counts as 0)
    /// and returns the new value.
    pub async fn increment(&self, key: String, delta: u64) -> Result<u64, KvError> {
        self.check_key(&key)?;
        match self.write(Write::Increment(key, delta)).await? {
            Written::Counter(n) => Ok(n),
            Written::Done => Err(KvError::Storage("increment returned no value".into())),
        }
    }

    /// Sets every pair, all or nothing.
    pub async fn set_many(&self, items: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        Self::check_batch(items.len())?;
        for (k, v) in &items {
            self.check_key(k)?;
            self.check_value(v)?;
        }
        self.write(Write::Set(items)).await.map(drop)
    }

    /// Removes every key, all or nothing.
    pub async fn delete_many(&self, keys: Vec<String>) -> Result<(), KvError> {
        Self::check_batch(keys.len())?;
        for k in &keys {
            self.check_key(k)?;
        }
        self.write(Write::Delete(keys)).await.map(drop)
    }

    /// Up to `limit` keys in insertion order after `cursor` (from a previous
    /// page); what `wasi:keyvalue`'s `list-keys` returns.
    pub async fn list_keys(&self, cursor: Option<u64>, limit: usize) -> Result<KeyPage, KvError> {
        let (app, store) = (self.app.clone(), self.store.clone());
        let after = i64::try_from(cursor.unwrap_or(0)).unwrap_or(i64::MAX);
        let limit = limit.clamp(1, 10_000);
        let mut rows: Vec<(i64, String)> = self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT id, key FROM kv WHERE app = ?1 AND store = ?2 AND id > ?3 ORDER BY id LIMIT ?4",
                )?
                .query_map(params![&*app, &*store, after, limit as i64 + 1], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect()
            })
            .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let cursor = if more {
            rows.last().map(|(id, _)| *id as u64)
        } else {
            None
        };
        Ok(KeyPage {
            keys: rows.into_iter().map(|(_, k)| k).collect(),
            cursor,
        })
    }

    /// Up to `limit` keys in byte order after `after`, and whether more
    /// follow; what operators see with `verge kv list`.
    pub async fn list_sorted(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), KvError> {
        let (app, store) = (self.app.clone(), self.store.clone());
        let limit = limit.clamp(1, 10_000);
        let mut keys: Vec<String> = self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT key FROM kv WHERE app = ?1 AND store = ?2 AND key > ?3 ORDER BY key LIMIT ?4",
                )?
                .query_map(
                    params![&*app, &*store, after.unwrap_or_default(), limit as i64 + 1],
                    |r| r.get(0),
                )?
                .collect()
            })
            .await?;
        let more = keys.len() > limit;
        keys.truncate(limit);
        Ok((keys, more))
    }

    /// Keys and bytes (keys plus values) the store holds.
    pub async fn usage(&self) -> Result<(u64, u64), KvError> {
        let (app, store) = (self.app.clone(), self.store.clone());
        let usage: Option<(i64, i64)> = self
            .db
            .read(move |c| {
                c.prepare_cached("SELECT keys, bytes FROM usage WHERE app = ?1 AND store = ?2")?
                    .query_row(params![&*app, &*store], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .await?;
        let (keys, bytes) = usage.unwrap_or((0, 0));
        Ok((keys.max(0) as u64, bytes.max(0) as u64))
    }

    async fn write(&self, op: Write) -> Result<Written, KvError> {
        let kind = match &self.mode {
            Mode::Local => Kind::Plain,
            Mode::Strict(replication, tenant) => {
                return replication
                    .write_strict(tenant, &self.app, &self.store, op)
                    .await;
            }
            Mode::EdgeLocal(replication) => Kind::EdgeLocal {
                hlc: replication.hlc.now(),
                origin: replication.replicator.node().into(),
                id: crate::replica::random_id(),
            },
        };
        let edge = matches!(kind, Kind::EdgeLocal { .. });
        let (reply, rx) = oneshot::channel();
        let job = Job {
            app: self.app.clone(),
            store: self.store.clone(),
            quotas: self.quotas,
            op,
            kind,
            reply,
        };
        let written = self.db.write(job, rx).await;
        if edge && written.is_ok() {
            self.db.outbox.notify_one();
        }
        written
    }
}
