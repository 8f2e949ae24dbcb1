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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub(crate) kind: Kind,
    pub(crate) reply: oneshot::Sender<Result<Written, KvError>>,
}

/// Where a write comes from, which decides how it is applied.
pub(crate) enum Kind {
    /// A standalone node's write.
    Plain,
    /// A local write to an edge-local store: applied with its stamp, and
    /// queued in the outbox (as an entry with this id and origin).
    EdgeLocal { hlc: u64, origin: Arc<str>, id: u64 },
    /// Entry `seq` of the tenant's log: a strict write (stamp 0), applied
    /// as is, or another node's edge-local write (`hlc`, `origin`),
    /// applied to each key only if newer than what the key holds (so this
    /// node's own write coming back changes nothing). `apply` is false for
    /// an unreadable entry: only the position moves.
    Logged {
        seq: u64,
        hlc: u64,
        origin: String,
        apply: bool,
    },
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
    let Kind::Logged { seq, .. } = &job.kind else {
        return apply_op(tx, job);
    };
    // A log entry's effects may fail (a quota), but it is applied either
    // way: the position moves in the same transaction.
    let result = apply_op(tx, job);
    if tx.is_autocommit() {
        return result;
    }
    tx.execute(
        "INSERT INTO replica (id, applied) VALUES (0, ?1)
         ON CONFLICT (id) DO UPDATE SET applied = excluded.applied",
        [*seq as i64],
    )
    .map_err(storage)?;
    result
}

/// The stamp and origin a write leaves on the keys it touches.
fn stamp(kind: &Kind) -> (u64, &str) {
    match kind {
        Kind::Plain => (0, ""),
        Kind::EdgeLocal { hlc, origin, .. } => (*hlc, origin),
        Kind::Logged { hlc, origin, .. } => (*hlc, origin),
    }
}

fn apply_op(tx: &mut Transaction<'_>, job: &Job) -> Result<Written, KvError> {
    let sp = tx.savepoint().map_err(storage)?;
    let mut usage = Usage::read(&sp, job)?;
    let (hlc, origin) = stamp(&job.kind);
    let remote_edge = matches!(job.kind, Kind::Logged { hlc, .. } if hlc > 0);
    if matches!(job.kind, Kind::Logged { apply: false, .. }) {
        return Ok(Written::Done);
    }
    let written = match &job.op {
        Write::Set(items) => {
            for (key, value) in items {
                if remote_edge && !newer(&sp, job, key, hlc, origin)? {
                    continue;
                }
                set(&sp, job, &mut usage, key, value)?;
                if hlc > 0 {
                    clear_tombstone(&sp, job, key)?;
                }
            }
            Written::Done
        }
        Write::Delete(keys) => {
            for key in keys {
                if remote_edge && !newer(&sp, job, key, hlc, origin)? {
                    continue;
                }
                delete(&sp, job, &mut usage, key)?;
                if hlc > 0 {
                    tombstone(&sp, job, key, hlc, origin)?;
                }
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
            if hlc > 0 {
                clear_tombstone(&sp, job, key)?;
            }
            Written::Counter(next)
        }
    };
    usage.write(&sp, job)?;
    if let Kind::EdgeLocal { hlc, origin, id } = &job.kind {
        // The entry other nodes apply: an increment travels as the value
        // it produced (last writer wins, like every edge-local write).
        let op = match (&job.op, &written) {
            (Write::Increment(key, _), Written::Counter(n)) => {
                Write::Set(vec![(key.clone(), n.to_string().into_bytes())])
            }
            (op, _) => op.clone(),
        };
        let entry = crate::replica::Entry {
            id: *id,
            origin: origin.to_string(),
            hlc: *hlc,
            app: job.app.to_string(),
            store: job.store.to_string(),
            op,
        };
        sp.execute("INSERT INTO outbox (entry) VALUES (?1)", [entry.encode()])
            .map_err(storage)?;
    }
    sp.commit().map_err(storage)?;
    Ok(written)
}

/// Whether a remote edge-local write stamped (`hlc`, `origin`) is newer
/// than what `key` holds (its value's stamp or its tombstone's).
fn newer(conn: &Connection, job: &Job, key: &str, hlc: u64, origin: &str) -> Result<bool, KvError> {
    let held: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT hlc, origin FROM kv WHERE app = ?1 AND store = ?2 AND key = ?3
             UNION ALL
             SELECT hlc, origin FROM tombstones WHERE app = ?1 AND store = ?2 AND key = ?3
             ORDER BY 1 DESC, 2 DESC LIMIT 1",
        )
        .and_then(|mut s| {
            s.query_row(params![&*job.app, &*job.store, key], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(storage)?;
    Ok(match held {
        None => true,
        Some((held_hlc, held_origin)) => (hlc, origin) > (held_hlc as u64, held_origin.as_str()),
    })
}

fn tombstone(
    conn: &Connection,
    job: &Job,
    key: &str,
    hlc: u64,
    origin: &str,
) -> Result<(), KvError> {
    conn.prepare_cached(
        "INSERT INTO tombstones (app, store, key, hlc, origin) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (app, store, key) DO UPDATE SET hlc = excluded.hlc, origin = excluded.origin",
    )
    .and_then(|mut s| s.execute(params![&*job.app, &*job.store, key, hlc as i64, origin]))
    .map(drop)
    .map_err(storage)
}

fn clear_tombstone(conn: &Connection, job: &Job, key: &str) -> Result<(), KvError> {
    conn.prepare_cached("DELETE FROM tombstones WHERE app = ?1 AND store = ?2 AND key = ?3")
        .and_then(|mut s| s.execute(params![&*job.app, &*job.store, key]))
        .map(drop)
        .map_err(storage)
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
    let (hlc, origin) = stamp(&job.kind);
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
        "INSERT INTO kv (app, store, key, value, hlc, origin) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (app, store, key) DO UPDATE
         SET value = excluded.value, hlc = excluded.hlc, origin = excluded.origin",
    )
    .and_then(|mut s| {
        s.execute(params![
            &*job.app,
            &*job.store,
            key,
            value,
            hlc as i64,
            origin
        ])
    })
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
