//! The writer thread of one tenant's database, with group commit.
//!
//! The thread takes the first queued job, then everything else already
//! queued (up to [`MAX_GROUP`]), and applies them in one immediate
//! transaction, each job inside its own savepoint: a job that fails (a
//! quota, a bad counter) is rolled back alone and the others still commit.
//! Replies are sent only after the commit, so an acknowledged write is on
//! disk. One fsync thus serves every writer that queued during the
//! previous commit.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::{KvError, Quotas, storage};

/// Most jobs committed together.
const MAX_GROUP: usize = 512;

/// A write to one store.
pub(crate) enum Write {
    /// Set every pair, all or nothing.
    Set(Vec<(String, Vec<u8>)>),
    /// Delete every key, all or nothing.
    Delete(Vec<String>),
    /// Add to a decimal counter.
    Increment(String, u64),
}

/// What a successful write returns.
pub(crate) enum Written {
    Done,
    Counter(u64),
}

pub(crate) struct Job {
    pub(crate) app: Arc<str>,
    pub(crate) store: Arc<str>,
    pub(crate) quotas: Quotas,
    pub(crate) op: Write,
    pub(crate) reply: oneshot::Sender<Result<Written, KvError>>,
}

/// Starts the writer thread; it ends when every sender is gone.
pub(crate) fn start(conn: Connection, tenant: &str) -> Result<Sender<Job>, KvError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("verge-kv-{tenant}"))
        .spawn(move || run(conn, rx))
        .map_err(storage)?;
    Ok(tx)
}

fn run(mut conn: Connection, rx: Receiver<Job>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Ok(first) = rx.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let results = commit(&mut conn, &group);
        for (job, result) in group.drain(..).zip(results) {
            // A caller that went away (request cancelled) no longer needs
            // the answer; the write itself stands.
            let _ = job.reply.send(result);
        }
    }
}

/// Applies the group in one transaction; on a failed commit every job fails.
fn commit(conn: &mut Connection, group: &[Job]) -> Vec<Result<Written, KvError>> {
    let failed = |e: KvError| group.iter().map(|_| Err(e.clone())).collect();
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return failed(storage(e)),
    };
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        let result = apply_one(&mut tx, job);
        // On some errors (disk full, I/O) SQLite rolls the whole
        // transaction back by itself: the jobs before this one are gone,
        // and a savepoint now would open (and commit) a transaction of its
        // own. Fail the whole group instead.
        if result.is_err() && tx.is_autocommit() {
            tracing::error!("key-value transaction rolled back by SQLite");
            return failed(KvError::Storage(
                "the write was rolled back; try again".to_string(),
            ));
        }
        results.push(result);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => {
            tracing::error!("key-value commit failed: {e}");
            failed(storage(e))
        }
    }
}

fn apply_one(tx: &mut Transaction<'_>, job: &Job) -> Result<Written, KvError> {
    let sp = tx.savepoint().map_err(storage)?;
    let mut usage = Usage::read(&sp, job)?;
    let written = match &job.op {
        Write::Set(items) => {
            for (key, value) in items {
                set(&sp, job, &mut usage, key, value)?;
            }
            Written::Done
        }
        Write::Delete(keys) => {
            for key in keys {
                delete(&sp, job, &mut usage, key)?;
            }
            Written::Done
        }
        Write::Increment(key, delta) => {
            let current: Option<Vec<u8>> = sp
                .prepare_cached("SELECT value FROM kv WHERE app = ?1 AND store = ?2 AND key = ?3")
                .and_then(|mut s| {
                    s.query_row(params![&*job.app, &*job.store, key], |r| r.get(0))
                        .optional()
                })
                .map_err(storage)?;
            let current = match current {
                None => 0,
                Some(bytes) => std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| KvError::NotACounter(key.clone()))?,
            };
            let next = current
                .checked_add(*delta)
                .ok_or_else(|| KvError::Overflow(key.clone()))?;
            set(&sp, job, &mut usage, key, next.to_string().as_bytes())?;
            Written::Counter(next)
        }
    };
    usage.write(&sp, job)?;
    sp.commit().map_err(storage)?;
    Ok(written)
}

/// A store's key count and bytes while a job changes them.
struct Usage {
    keys: u64,
    bytes: u64,
}

impl Usage {
    fn read(conn: &Connection, job: &Job) -> Result<Self, KvError> {
        let row: Option<(i64, i64)> = conn
            .prepare_cached("SELECT keys, bytes FROM usage WHERE app = ?1 AND store = ?2")
            .and_then(|mut s| {
                s.query_row(params![&*job.app, &*job.store], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(storage)?;
        let (keys, bytes) = row.unwrap_or((0, 0));
        Ok(Self {
            keys: keys.max(0) as u64,
            bytes: bytes.max(0) as u64,
        })
    }

    fn write(&self, conn: &Connection, job: &Job) -> Result<(), KvError> {
        conn.prepare_cached(
            "INSERT INTO usage (app, store, keys, bytes) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (app, store) DO UPDATE SET keys = excluded.keys, bytes = excluded.bytes",
        )
        .and_then(|mut s| {
            s.execute(params![
                &*job.app,
                &*job.store,
                self.keys as i64,
                self.bytes as i64
            ])
        })
        .map(drop)
        .map_err(storage)
    }
}

/// Length of the value stored at `key`, if any.
fn stored_len(conn: &Connection, job: &Job, key: &str) -> Result<Option<u64>, KvError> {
    conn.prepare_cached("SELECT length(value) FROM kv WHERE app = ?1 AND store = ?2 AND key = ?3")
        .and_then(|mut s| {
            s.query_row(params![&*job.app, &*job.store, key], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map(|len| len.map(|l| l.max(0) as u64))
        .map_err(storage)
}

fn set(
    conn: &Connection,
    job: &Job,
    usage: &mut Usage,
    key: &str,
    value: &[u8],
) -> Result<(), KvError> {
    let old = stored_len(conn, job, key)?;
    let quotas = job.quotas;
    let keys = usage.keys + u64::from(old.is_none());
    if keys > quotas.max_keys {
        return Err(KvError::QuotaExceeded(format!(
            "store `{}` already holds {} keys, its limit",
            job.store, quotas.max_keys
        )));
    }
    let freed = old.map_or(0, |len| len + key.len() as u64);
    let bytes = (usage.bytes.saturating_sub(freed)) + key.len() as u64 + value.len() as u64;
    if bytes > quotas.max_store_bytes {
        return Err(KvError::QuotaExceeded(format!(
            "store `{}` would hold {bytes} bytes, over its limit of {} bytes",
            job.store, quotas.max_store_bytes
        )));
    }
    conn.prepare_cached(
        "INSERT INTO kv (app, store, key, value) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (app, store, key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute(params![&*job.app, &*job.store, key, value]))
    .map_err(storage)?;
    usage.keys = keys;
    usage.bytes = bytes;
    Ok(())
}

fn delete(conn: &Connection, job: &Job, usage: &mut Usage, key: &str) -> Result<(), KvError> {
    let Some(len) = stored_len(conn, job, key)? else {
        return Ok(());
    };
    conn.prepare_cached("DELETE FROM kv WHERE app = ?1 AND store = ?2 AND key = ?3")
        .and_then(|mut s| s.execute(params![&*job.app, &*job.store, key]))
        .map_err(storage)?;
    usage.keys = usage.keys.saturating_sub(1);
    usage.bytes = usage.bytes.saturating_sub(len + key.len() as u64);
    Ok(())
}
