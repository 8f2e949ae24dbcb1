//! Versioned schema migrations, tracked in SQLite's `user_version`.
//!
//! **Invariant**: migrations are append-only; an applied migration is never
//! edited. Each runs in its own transaction together with the version bump.

use std::path::Path;

use rusqlite::Connection;

use crate::StoreError;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE kv (
        key      TEXT PRIMARY KEY NOT NULL,
        value    BLOB,
        revision INTEGER NOT NULL,
        deleted  INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX kv_revision ON kv (revision);
",
    "
    -- Set only on a replica of a cluster's log (see `SqliteStore::replica`):
    -- which log it follows and the last sequence applied.
    CREATE TABLE replica (
        id       INTEGER PRIMARY KEY CHECK (id = 0),
        log      TEXT NOT NULL,
        applied  INTEGER NOT NULL
    ) STRICT;
",
];

pub(super) fn apply(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let backend = |e: rusqlite::Error| StoreError::Backend(format!("`{}`: {e}", path.display()));
    let version: usize = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(backend)?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "`{}` has schema version {version}, newer than this Verge understands ({}); \
             run a newer Verge or restore a backup",
            path.display(),
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        tx.pragma_update(None, "user_version", i + 1)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        tracing::info!(path = %path.display(), "state store migrated to schema {}", i + 1);
    }
    Ok(())
}
