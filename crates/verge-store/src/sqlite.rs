//! The embedded [`Store`]: one SQLite database in WAL mode.
//!
//! All keys live in one table with their revision and a tombstone flag;
//! the store's revision is the highest revision in it. Every write runs in
//! an immediate transaction that checks the [`Expect`] precondition, so a
//! compare-and-set is atomic even across processes sharing the file.
//! Watchers are woken through an in-process channel and then read the
//! table, so a slow watcher can never miss a change.
//!
//! **Invariant**: `synchronous = FULL`: when a write returns, it is on disk.

mod migrations;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::watch;

use crate::{Change, Entry, Expect, Op, Revision, Store, StoreError, Watch, check_key};

/// The SQLite-backed store.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    latest: watch::Sender<Revision>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The largest valid UTF-8 character: every key with a prefix sorts below
/// `prefix + MAX_CHAR`.
const MAX_CHAR: char = '\u{10FFFF}';

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies
    /// pending migrations. Refuses a database written by a newer Verge.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("cannot open `{}`: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(backend)?;
        migrations::apply(&mut conn, path)?;
        let revision = current_revision(&conn)?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                latest: watch::Sender::new(revision),
            }),
        })
    }

    /// Runs `f` with the connection on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(backend)?
    }

    fn notify(&self, revision: Revision) {
        self.inner.latest.send_if_modified(|latest| {
            let newer = revision > *latest;
            if newer {
                *latest = revision;
            }
            newer
        });
    }

    async fn write(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        expect: Expect,
    ) -> Result<Revision, StoreError> {
        self.write_all(vec![Op {
            key: key.to_string(),
            value,
            expect,
        }])
        .await
    }

    /// Applies `ops` in one immediate transaction: all or nothing.
    async fn write_all(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        for op in &ops {
            check_key(&op.key)?;
        }
        let revision = self
            .with(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend)?;
                let mut revision = current_revision(&tx)?;
                for op in ops {
                    let current = check(&tx, &op)?;
                    if op.value.is_none() && current.is_none() {
                        continue;
                    }
                    revision += 1;
                    tx.execute(
                        "INSERT INTO kv (key, value, revision, deleted) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(key) DO UPDATE SET value = ?2, revision = ?3, deleted = ?4",
                        params![op.key, op.value, revision, op.value.is_none()],
                    )
                    .map_err(backend)?;
                }
                tx.commit().map_err(backend)?;
                Ok(revision)
            })
            .await?;
        self.notify(revision);
        Ok(revision)
    }
}

/// Checks `op`'s precondition; returns the key's current revision.
fn check(conn: &Connection, op: &Op) -> Result<Option<Revision>, StoreError> {
    let current: Option<Revision> = conn
        .query_row(
            "SELECT revision FROM kv WHERE key = ?1 AND deleted = 0",
            [&op.key],
            |row| row.get(0),
        )
        .optional()
        .map_err(backend)?;
    let holds = match op.expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Revision(r) => current == Some(r),
    };
    if holds {
        Ok(current)
    } else {
        Err(StoreError::Conflict {
            key: op.key.clone(),
            current,
        })
    }
}

/// The highest revision written, or on a replica the last log sequence
/// applied if higher (an entry may change nothing).
fn current_revision(conn: &Connection) -> Result<Revision, StoreError> {
    conn.query_row(
        "SELECT MAX(COALESCE((SELECT MAX(revision) FROM kv), 0),
                    COALESCE((SELECT applied FROM replica), 0))",
        [],
        |row| row.get(0),
    )
    .map_err(backend)
}

/// The prefix of a replica's log name while its first catch-up runs.
const PENDING: &str = "pending:";

/// A replica of a cluster's log: the local copy a cluster store reads
/// from and keeps serving from when the cluster is out of reach.
///
/// Entries of the log are applied in order with their sequence number as
/// the revision of every write they hold; their preconditions were checked
/// by the writer against the state just before them (the log accepted the
/// entry only at that position), so they are applied unconditionally.
impl SqliteStore {
    /// The log this store replicates and the last sequence applied, or
    /// `None` if it is not a replica.
    pub async fn replica(&self) -> Result<Option<(String, Revision)>, StoreError> {
        self.with(|conn| {
            conn.query_row("SELECT log, applied FROM replica", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()
            .map_err(backend)
        })
        .await
    }

    /// Makes this store a replica of `log`. Refuses a store that holds
    /// state of its own or replicates another log: their revisions would
    /// not be the log's. A log named `pending:LOG` marks a first start that
    /// has not caught up yet; `start_replica(LOG)` then completes it.
    pub async fn start_replica(&self, log: &str) -> Result<(), StoreError> {
        let log = log.to_string();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let current: Option<String> = tx
                .query_row("SELECT log FROM replica", [], |row| row.get(0))
                .optional()
                .map_err(backend)?;
            match current {
                Some(current) if current == log => return Ok(()),
                // A first start completing its catch-up.
                Some(current) if current.strip_prefix(PENDING) == Some(log.as_str()) => {
                    tx.execute("UPDATE replica SET log = ?1", [&log])
                        .map_err(backend)?;
                    return tx.commit().map_err(backend);
                }
                Some(current) => {
                    return Err(StoreError::Backend(format!(
                        "this data folder follows the cluster log `{current}`, not `{log}`; \
                         give the node a new --data folder to join this cluster"
                    )));
                }
                None => {}
            }
            if current_revision(&tx)? > 0 {
                return Err(StoreError::Backend(
                    "this data folder holds a standalone server's state; a cluster node \
                     needs its own empty --data folder (deploy the apps to the cluster again)"
                        .to_string(),
                ));
            }
            tx.execute(
                "INSERT INTO replica (id, log, applied) VALUES (0, ?1, 0)",
                [&log],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    /// Checks every precondition of `ops` against the current state, as
    /// [`Store::apply`] would. Returns whether the writes change anything
    /// (deleting absent keys does not).
    pub async fn check(&self, ops: Vec<Op>) -> Result<bool, StoreError> {
        self.with(move |conn| {
            let mut changes = false;
            for op in &ops {
                let current = check(conn, op)?;
                changes |= op.value.is_some() || current.is_some();
            }
            Ok(changes)
        })
        .await
    }

    /// Applies entry `seq` of the log. Entries at or below the last one
    /// applied are skipped, so applying again is harmless.
    pub async fn apply_replicated(&self, seq: Revision, ops: Vec<Op>) -> Result<(), StoreError> {
        let applied = self
            .with(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend)?;
                let applied: Revision = tx
                    .query_row("SELECT applied FROM replica", [], |row| row.get(0))
                    .map_err(backend)?;
                if seq <= applied {
                    return Ok(false);
                }
                for op in ops {
                    if check_key(&op.key).is_err() {
                        continue;
                    }
                    tx.execute(
                        "INSERT INTO kv (key, value, revision, deleted) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(key) DO UPDATE SET value = ?2, revision = ?3, deleted = ?4",
                        params![op.key, op.value, seq, op.value.is_none()],
                    )
                    .map_err(backend)?;
                }
                tx.execute("UPDATE replica SET applied = ?1", [seq])
                    .map_err(backend)?;
                tx.commit().map_err(backend)?;
                Ok(true)
            })
            .await?;
        if applied {
            self.notify(seq);
        }
        Ok(())
    }

    /// Waits until the store reaches `revision`; false after `timeout`.
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> bool {
        let mut latest = self.inner.latest.subscribe();
        tokio::time::timeout(timeout, latest.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

fn upper_bound(prefix: &str) -> String {
    let mut upper = prefix.to_string();
    upper.push(MAX_CHAR);
    upper
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let key = key.to_string();
        self.with(move |conn| {
            conn.query_row(
                "SELECT value, revision FROM kv WHERE key = ?1 AND deleted = 0",
                [&key],
                |row| {
                    Ok(Entry {
                        key: key.clone(),
                        value: row.get(0)?,
                        revision: row.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let prefix = prefix.to_string();
        let after = after.map(str::to_string);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key, value, revision FROM kv
                     WHERE key >= ?1 AND key < ?2 AND (?3 IS NULL OR key > ?3) AND deleted = 0
                     ORDER BY key LIMIT ?4",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![prefix, upper_bound(&prefix), after, limit], |row| {
                    Ok(Entry {
                        key: row.get(0)?,
                        value: row.get(1)?,
                        revision: row.get(2)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.write_all(ops).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError> {
        self.write(key, Some(value), expect).await
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<Revision, StoreError> {
        self.write(key, None, expect).await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.with(|conn| current_revision(conn)).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>, StoreError> {
        Ok(Box::new(SqliteWatch {
            store: self.clone(),
            latest: self.inner.latest.subscribe(),
            prefix: prefix.to_string(),
            seen: after,
        }))
    }
}

struct SqliteWatch {
    store: SqliteStore,
    latest: watch::Receiver<Revision>,
    prefix: String,
    seen: Revision,
}

impl SqliteWatch {
    async fn changes_after(&self, after: Revision) -> Result<Vec<Change>, StoreError> {
        let prefix = self.prefix.clone();
        self.store
            .with(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT key, value, revision, deleted FROM kv
                         WHERE revision > ?1 AND key >= ?2 AND key < ?3 ORDER BY revision",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![after, prefix, upper_bound(&prefix)], |row| {
                        let key: String = row.get(0)?;
                        let revision: Revision = row.get(2)?;
                        Ok(if row.get::<_, bool>(3)? {
                            Change::Delete { key, revision }
                        } else {
                            Change::Put(Entry {
                                key,
                                value: row.get(1)?,
                                revision,
                            })
                        })
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }
}

#[async_trait]
impl Watch for SqliteWatch {
    async fn next(&mut self, timeout: Duration) -> Result<Vec<Change>, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Read the table even without a notification: another process
            // may share the file.
            let changes = self.changes_after(self.seen).await?;
            if let Some(last) = changes.last() {
                self.seen = last.revision();
                return Ok(changes);
            }
            let seen = self.seen;
            let woke = tokio::time::timeout_at(deadline, self.latest.wait_for(|r| *r > seen))
                .await
                .map(|r| r.map(|latest| *latest));
            match woke {
                Ok(Ok(latest)) => {
                    // A change elsewhere in the store may not match our
                    // prefix: skip past it rather than re-reading forever.
                    let changes = self.changes_after(self.seen).await?;
                    match changes.last() {
                        Some(last) => {
                            self.seen = last.revision();
                            return Ok(changes);
                        }
                        None => self.seen = latest,
                    }
                }
                Ok(Err(_)) | Err(_) => return Ok(Vec::new()),
            }
        }
    }
}
