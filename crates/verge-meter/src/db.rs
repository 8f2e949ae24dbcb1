//! The usage database: one SQLite file (`DATA/usage.db`, WAL,
//! `synchronous = FULL`) with one row per tenant, app, version and minute.
//!
//! **Invariants**
//! - Rows only grow: [`UsageDb::add`] adds deltas in one transaction, so a
//!   batch is stored whole or not at all.
//! - A query never holds more than one page in memory: pages are keyed by
//!   (bucket, tenant, app) and the caller follows the cursor. Each page
//!   groups the range window by window (a day of minutes, a week of hours,
//!   a month of days), jumping over stretches without usage, so a page over
//!   years of data costs what its rows cost, not the whole range.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use crate::aggregate::{Totals, UsageDelta};

/// Why the usage database failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// SQLite failed.
    #[error("usage database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A query was malformed (a bad cursor, an empty range).
    #[error("{0}")]
    Query(String),
}

/// The width of the buckets a query sums into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One row per minute.
    Minute,
    /// One row per hour.
    Hour,
    /// One row per (UTC) day.
    Day,
}

impl Granularity {
    /// Minutes per bucket.
    pub fn minutes(self) -> u64 {
        match self {
            Granularity::Minute => 1,
            Granularity::Hour => 60,
            Granularity::Day => 1440,
        }
    }

    /// Minutes grouped by one query of a page (a whole number of buckets).
    fn window(self) -> u64 {
        match self {
            Granularity::Minute => 1440,
            Granularity::Hour => 7 * 1440,
            Granularity::Day => 31 * 1440,
        }
    }
}

/// Where the next page of a query starts (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCursor {
    /// The bucket (minutes since the epoch) of the last row returned.
    pub bucket: u64,
    /// Its tenant.
    pub tenant: String,
    /// Its app.
    pub app: String,
}

impl UsageCursor {
    /// The cursor as one opaque token for a URL.
    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.bucket, hex(&self.tenant), hex(&self.app))
    }

    /// Reads a token made by [`UsageCursor::encode`].
    pub fn decode(token: &str) -> Result<Self, UsageError> {
        let bad =
            || UsageError::Query("the page cursor is malformed; start again without it".into());
        let mut parts = token.split('.');
        let (Some(bucket), Some(tenant), Some(app), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Self {
            bucket: bucket.parse().map_err(|_| bad())?,
            tenant: unhex(tenant).ok_or_else(bad)?,
            app: unhex(app).ok_or_else(bad)?,
        })
    }
}

fn hex(s: &str) -> String {
    const_hex::encode(s)
}

/// A name back from [`hex`]; bounded, since cursors come from clients.
fn unhex(s: &str) -> Option<String> {
    if s.len() > 512 {
        return None;
    }
    String::from_utf8(const_hex::decode(s).ok()?).ok()
}

/// What to sum.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this app.
    pub app: Option<String>,
    /// First minute included.
    pub since: u64,
    /// First minute excluded.
    pub until: u64,
    /// Bucket width.
    pub by: Granularity,
    /// Continue after this row.
    pub after: Option<UsageCursor>,
    /// Most rows in the page.
    pub limit: usize,
}

/// One bucket of one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// Start of the bucket, minutes since the epoch.
    pub bucket: u64,
    /// The tenant.
    pub tenant: String,
    /// The app.
    pub app: String,
    /// Sums over all versions in the bucket.
    pub totals: Totals,
}

/// One page of a query.
#[derive(Debug, Clone)]
pub struct UsagePage {
    /// The rows, ordered by bucket, tenant, app.
    pub rows: Vec<UsageRow>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<UsageCursor>,
}

/// The usage database.
#[derive(Debug)]
pub struct UsageDb {
    conn: Mutex<Connection>,
    /// Whether additions are also queued for the cluster.
    uplink: std::sync::atomic::AtomicBool,
}

const COLUMNS: &[&str] = &[
    "requests",
    "invocations",
    "rejected_quota",
    "rejected_limit",
    "status_2xx",
    "status_3xx",
    "status_4xx",
    "status_5xx",
    "cold_starts",
    "wall_us",
    "billed_ms",
    "cpu_us",
    "memory_kib_ms",
    "peak_memory",
    "request_bytes",
    "response_bytes",
    "outbound_calls",
    "outbound_bytes",
    "kv_ops",
    "outbound_bytes_sent",
    "ai_tokens",
];

fn values(t: &Totals) -> [u64; 21] {
    [
        t.requests,
        t.invocations,
        t.rejected_quota,
        t.rejected_limit,
        t.status_2xx,
        t.status_3xx,
        t.status_4xx,
        t.status_5xx,
        t.cold_starts,
        t.wall_us,
        t.billed_ms,
        t.cpu_us,
        t.memory_kib_ms,
        t.peak_memory,
        t.request_bytes,
        t.response_bytes,
        t.outbound_calls,
        t.outbound_bytes,
        t.kv_ops,
        t.outbound_bytes_sent,
        t.ai_tokens,
    ]
}

fn totals_from(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Totals> {
    let v = |i: usize| -> rusqlite::Result<u64> {
        Ok(u64::try_from(row.get::<_, i64>(first + i)?).unwrap_or(0))
    };
    Ok(Totals {
        requests: v(0)?,
        invocations: v(1)?,
        rejected_quota: v(2)?,
        rejected_limit: v(3)?,
        status_2xx: v(4)?,
        status_3xx: v(5)?,
        status_4xx: v(6)?,
        status_5xx: v(7)?,
        cold_starts: v(8)?,
        wall_us: v(9)?,
        billed_ms: v(10)?,
        cpu_us: v(11)?,
        memory_kib_ms: v(12)?,
        peak_memory: v(13)?,
        request_bytes: v(14)?,
        response_bytes: v(15)?,
        outbound_calls: v(16)?,
        outbound_bytes: v(17)?,
        kv_ops: v(18)?,
        outbound_bytes_sent: v(19)?,
        ai_tokens: v(20)?,
    })
}

/// SQLite integers are signed; usage saturates rather than wraps.
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl UsageDb {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, UsageError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let columns: String = COLUMNS
            .iter()
            .map(|c| format!("{c} INTEGER NOT NULL DEFAULT 0,\n"))
            .collect();
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS usage (
                tenant TEXT NOT NULL,
                app TEXT NOT NULL,
                version TEXT NOT NULL,
                minute INTEGER NOT NULL,
                {columns}
                PRIMARY KEY (tenant, app, version, minute)
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS usage_by_minute ON usage (minute, tenant, app);"
        ))?;
        // Columns added after a database was created (`ai_tokens`) start at 0.
        let existing: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('usage')")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for column in COLUMNS.iter().filter(|c| !existing.iter().any(|e| e == *c)) {
            conn.execute_batch(&format!(
                "ALTER TABLE usage ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
            ))?;
        }
        // The uplink (a cluster node's usage on its way to the others) and
        // the position in the other nodes' usage stream.
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS uplink (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                tenant TEXT NOT NULL,
                app TEXT NOT NULL,
                version TEXT NOT NULL,
                minute INTEGER NOT NULL,
                totals TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS remote (
                id INTEGER PRIMARY KEY CHECK (id = 0),
                applied INTEGER NOT NULL
            );",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
            uplink: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// From now on, every [`UsageDb::add`] also queues its deltas for the
    /// uplink (in the same transaction), for [`UsageDb::uplink_pending`].
    pub fn enable_uplink(&self) {
        self.uplink
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Up to `limit` queued deltas (with ids up to `upto`, if given),
    /// oldest first, with the id of the last (0 when none).
    pub fn uplink_pending(
        &self,
        limit: usize,
        upto: Option<i64>,
    ) -> Result<(Vec<UsageDelta>, i64), UsageError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, tenant, app, version, minute, totals FROM uplink
             WHERE ?2 IS NULL OR id <= ?2 ORDER BY id LIMIT ?1",
        )?;
        let mut last = 0;
        let mut deltas = Vec::new();
        let rows = stmt.query_map(params![signed(limit as u64), upto], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        for row in rows {
            let (id, tenant, app, version, minute, totals) = row?;
            last = id;
            match serde_json::from_str(&totals) {
                Ok(totals) => deltas.push(UsageDelta {
                    key: crate::aggregate::SeriesKey {
                        tenant,
                        app,
                        version,
                    },
                    minute: minute.max(0) as u64,
                    totals,
                }),
                Err(e) => tracing::error!("dropping an unreadable uplink row: {e}"),
            }
        }
        Ok((deltas, last))
    }

    /// Forgets queued deltas up to id `last` (the cluster stored them).
    pub fn uplink_done(&self, last: i64) -> Result<(), UsageError> {
        self.lock()
            .execute("DELETE FROM uplink WHERE id <= ?1", [last])?;
        Ok(())
    }

    /// The last entry of the other nodes' usage stream added here.
    pub fn remote_applied(&self) -> Result<u64, UsageError> {
        let applied: Option<i64> = self
            .lock()
            .query_row("SELECT applied FROM remote", [], |r| r.get(0))
            .optional()?;
        Ok(applied.map_or(0, |a| a.max(0) as u64))
    }

    /// Adds another node's usage, entry `seq` of the stream, once: entries
    /// at or below the last applied are skipped, and the position moves in
    /// the same transaction as the rows.
    pub fn add_remote(&self, seq: u64, deltas: &[UsageDelta]) -> Result<(), UsageError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let applied: Option<i64> = tx
            .query_row("SELECT applied FROM remote", [], |r| r.get(0))
            .optional()?;
        if applied.is_some_and(|a| a.max(0) as u64 >= seq) {
            return Ok(());
        }
        Self::insert(&tx, deltas, false)?;
        tx.execute(
            "INSERT INTO remote (id, applied) VALUES (0, ?1)
             ON CONFLICT (id) DO UPDATE SET applied = excluded.applied",
            [signed(seq)],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `deltas`, all or nothing.
    pub fn add(&self, deltas: &[UsageDelta]) -> Result<(), UsageError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let uplink = self.uplink.load(std::sync::atomic::Ordering::Relaxed);
        Self::insert(&tx, deltas, uplink)?;
        tx.commit()?;
        Ok(())
    }

    /// Adds `deltas` to the usage rows in `tx`, and with `uplink` queues
    /// them for the other nodes too.
    fn insert(
        tx: &rusqlite::Transaction<'_>,
        deltas: &[UsageDelta],
        uplink: bool,
    ) -> Result<(), UsageError> {
        if uplink {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO uplink (tenant, app, version, minute, totals) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for d in deltas {
                let totals = serde_json::to_string(&d.totals)
                    .map_err(|e| UsageError::Query(e.to_string()))?;
                stmt.execute(params![
                    d.key.tenant,
                    d.key.app,
                    d.key.version,
                    signed(d.minute),
                    totals
                ])?;
            }
        }
        {
            let names = COLUMNS.join(", ");
            let marks: String = (5..5 + COLUMNS.len()).map(|i| format!(", ?{i}")).collect();
            let updates = COLUMNS
                .iter()
                .map(|c| match *c {
                    "peak_memory" => format!("{c} = max({c}, excluded.{c})"),
                    _ => format!("{c} = {c} + excluded.{c}"),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT INTO usage (tenant, app, version, minute, {names})
                 VALUES (?1, ?2, ?3, ?4{marks})
                 ON CONFLICT (tenant, app, version, minute) DO UPDATE SET {updates}"
            ))?;
            for d in deltas {
                let mut args: Vec<rusqlite::types::Value> = vec![
                    d.key.tenant.clone().into(),
                    d.key.app.clone().into(),
                    d.key.version.clone().into(),
                    signed(d.minute).into(),
                ];
                args.extend(values(&d.totals).iter().map(|v| signed(*v).into()));
                stmt.execute(rusqlite::params_from_iter(args))?;
            }
        }
        Ok(())
    }

    /// One page of usage summed per bucket, tenant and app.
    pub fn query(&self, q: &UsageQuery) -> Result<UsagePage, UsageError> {
        if q.until <= q.since {
            return Err(UsageError::Query("the time range is empty".into()));
        }
        let width = q.by.minutes();
        let limit = q.limit.clamp(1, 10_000);
        let sums: String = COLUMNS
            .iter()
            .map(|c| match *c {
                "peak_memory" => format!(", max({c})"),
                _ => format!(", sum({c})"),
            })
            .collect();
        let (after_bucket, after_tenant, after_app) = match &q.after {
            Some(c) => (signed(c.bucket), c.tenant.clone(), c.app.clone()),
            None => (-1, String::new(), String::new()),
        };
        let filters = "(?3 IS NULL OR tenant = ?3) AND (?4 IS NULL OR app = ?4)";
        let conn = self.lock();
        let mut next_data = conn.prepare_cached(&format!(
            "SELECT min(minute) FROM usage WHERE minute >= ?1 AND minute < ?2 AND {filters}"
        ))?;
        let mut grouped = conn.prepare_cached(&format!(
            "SELECT (minute / ?5) * ?5 AS bucket, tenant, app{sums}
             FROM usage
             WHERE minute >= ?1 AND minute < ?2 AND {filters}
             GROUP BY bucket, tenant, app
             HAVING (bucket, tenant, app) > (?6, ?7, ?8)
             ORDER BY bucket, tenant, app
             LIMIT ?9"
        ))?;
        // The cursor's bucket bounds the scan; rows of that bucket up to
        // the cursor are skipped after grouping.
        let mut start = q.since.max(u64::try_from(after_bucket).unwrap_or(0));
        let mut rows: Vec<UsageRow> = Vec::new();
        while start < q.until && rows.len() <= limit {
            let first: Option<i64> = next_data.query_row(
                params![signed(start), signed(q.until), q.tenant, q.app],
                |r| r.get(0),
            )?;
            let Some(first) = first.and_then(|m| u64::try_from(m).ok()) else {
                break;
            };
            start = start.max(first);
            // Windows end on bucket boundaries, so no bucket is split.
            let end = (start / width * width)
                .saturating_add(q.by.window())
                .min(q.until);
            let found = grouped
                .query_map(
                    params![
                        signed(start),
                        signed(end),
                        q.tenant,
                        q.app,
                        signed(width),
                        after_bucket,
                        after_tenant,
                        after_app,
                        signed((limit + 1 - rows.len()) as u64),
                    ],
                    |row| {
                        Ok(UsageRow {
                            bucket: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                            tenant: row.get(1)?,
                            app: row.get(2)?,
                            totals: totals_from(row, 3)?,
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            rows.extend(found);
            start = end;
        }
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|r| UsageCursor {
                bucket: r.bucket,
                tenant: r.tenant.clone(),
                app: r.app.clone(),
            })
        } else {
            None
        };
        Ok(UsagePage { rows, next })
    }

    /// CPU microseconds used since minute `since`, per tenant and app: what
    /// a restarted node counts against daily CPU quotas.
    pub fn cpu_since(&self, since: u64) -> Result<Vec<(String, String, u64)>, UsageError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT tenant, app, sum(cpu_us) FROM usage WHERE minute >= ?1 GROUP BY tenant, app",
        )?;
        let rows = stmt
            .query_map(params![signed(since)], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests;
