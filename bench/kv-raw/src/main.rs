//! The ceiling for `bench/kv.py`: key-value operations straight on SQLite
//! with the settings `verge-kv` uses (WAL, `synchronous = FULL`, the same
//! table), no HTTP, no WebAssembly, no thread hand-off.
//!
//! Prints one line per operation: `NAME OPS_PER_SEC P99_MICROS`.
//! - `get`: point reads of existing keys, one connection.
//! - `set`: one durable transaction (one fsync) per write.
//! - `set-batch-N`: N writes per durable transaction (what group commit
//!   reaches when N writers queue at once); ops/s counts writes, p99 is per
//!   transaction.
//! - `incr`: read, add and write back, one durable transaction each;
//!   `incr-batch-64`: 64 of them per transaction.
//! - `engine-OP-cN`: the same through `verge-kv` with N concurrent tasks.
//!
//! Usage: `kv-raw [SECONDS per operation, default 3] [DIR]`

use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};

const SCHEMA: &str = "
    CREATE TABLE kv (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        app TEXT NOT NULL, store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
        UNIQUE (app, store, key));
    CREATE INDEX kv_by_id ON kv (app, store, id);";

fn main() -> rusqlite::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let dir = match args.next() {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let mut conn = Connection::open(dir.path().join("raw.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(SCHEMA)?;
    let value = vec![b'v'; 100];
    {
        let tx = conn.transaction()?;
        for i in 0..10_000 {
            tx.execute(
                "INSERT INTO kv (app, store, key, value) VALUES ('bench', 'default', ?1, ?2)",
                params![format!("k{i}"), value],
            )?;
        }
        tx.commit()?;
    }
    let budget = Duration::from_secs_f64(seconds);

    let mut i = 0u64;
    report("get", 1, budget, || {
        i += 1;
        let v: Option<Vec<u8>> = conn
            .prepare_cached(
                "SELECT value FROM kv WHERE app = 'bench' AND store = 'default' AND key = ?1",
            )?
            .query_row(params![format!("k{}", i % 10_000)], |r| r.get(0))
            .optional()?;
        assert!(v.is_some());
        Ok(())
    })?;

    for batch in [1usize, 16, 64] {
        let name = if batch == 1 {
            "set".to_string()
        } else {
            format!("set-batch-{batch}")
        };
        let mut n = 0u64;
        report(&name, batch, budget, || {
            let tx = conn.transaction()?;
            for _ in 0..batch {
                n += 1;
                tx.prepare_cached(
                    "INSERT INTO kv (app, store, key, value) VALUES ('bench', 'default', ?1, ?2)
                     ON CONFLICT (app, store, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![format!("w{n}"), value])?;
            }
            tx.commit()
        })?;
    }

    for batch in [1usize, 64] {
        let name = if batch == 1 {
            "incr".to_string()
        } else {
            format!("incr-batch-{batch}")
        };
        report(&name, batch, budget, || {
            let tx = conn.transaction()?;
            for _ in 0..batch {
                incr(&tx)?;
            }
            tx.commit()
        })?;
    }
    engine(dir.path(), budget);
    Ok(())
}

/// One increment inside `tx`, the raw way.
fn incr(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    {
        let current: Option<Vec<u8>> = tx
            .prepare_cached(
                "SELECT value FROM kv WHERE app = 'bench' AND store = 'default' AND key = 'hits'",
            )?
            .query_row([], |r| r.get(0))
            .optional()?;
        let n: u64 = current
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        tx.prepare_cached(
            "INSERT INTO kv (app, store, key, value) VALUES ('bench', 'default', 'hits', ?1)
             ON CONFLICT (app, store, key) DO UPDATE SET value = excluded.value",
        )?
        .execute(params![(n + 1).to_string().into_bytes()])?;
        Ok(())
    }
}

/// The same operations through `verge-kv` (its writer thread, group
/// commit and read pool), from async tasks as the host calls it: one at a
/// time (`engine-*-c1`) and 64 at once (`engine-*-c64`).
fn engine(dir: &std::path::Path, budget: Duration) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let quotas = verge_kv::Quotas {
        max_keys: u64::MAX,
        max_store_bytes: u64::MAX,
        ..verge_kv::Quotas::default()
    };
    let kv = verge_kv::KeyValue::open(&dir.join("engine"), quotas);
    let bucket = kv.bucket("bench", "bench", "default").expect("bucket");
    rt.block_on(async {
        bucket
            .set_many(
                (0..1000)
                    .map(|i| (format!("k{i}"), vec![b'v'; 100]))
                    .collect(),
            )
            .await
            .expect("fill");
        for op in ["get", "set", "incr"] {
            for tasks in [1usize, 64] {
                let started = Instant::now();
                let workers: Vec<_> = (0..tasks)
                    .map(|t| {
                        let bucket = bucket.clone();
                        tokio::spawn(async move {
                            let mut samples = Vec::new();
                            let mut i = 0u64;
                            while started.elapsed() < budget {
                                i += 1;
                                let t0 = Instant::now();
                                match op {
                                    "get" => drop(
                                        bucket.get(&format!("k{}", i % 1000)).await.expect("get"),
                                    ),
                                    "set" => bucket
                                        .set(format!("e{t}-{i}"), vec![b'v'; 100])
                                        .await
                                        .expect("set"),
                                    _ => drop(
                                        bucket.increment("hits".into(), 1).await.expect("incr"),
                                    ),
                                }
                                samples.push(t0.elapsed());
                            }
                            samples
                        })
                    })
                    .collect();
                let mut samples = Vec::new();
                for w in workers {
                    samples.extend(w.await.expect("worker"));
                }
                let elapsed = started.elapsed().as_secs_f64();
                samples.sort_unstable();
                let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
                println!(
                    "engine-{op}-c{tasks} {:.0} {}",
                    samples.len() as f64 / elapsed,
                    p99.as_micros()
                );
            }
        }
    });
}

/// Runs `op` for `budget`; prints operations per second (`per` operations
/// per call) and the 99th percentile of one call, in microseconds.
fn report(
    name: &str,
    per: usize,
    budget: Duration,
    mut op: impl FnMut() -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < budget {
        let t = Instant::now();
        op()?;
        samples.push(t.elapsed());
    }
    let elapsed = started.elapsed().as_secs_f64();
    samples.sort_unstable();
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    println!(
        "{name} {:.0} {}",
        (samples.len() * per) as f64 / elapsed,
        p99.as_micros()
    );
    Ok(())
}
