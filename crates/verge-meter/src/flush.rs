//! Moving usage from memory to the database at a fixed interval.
//!
//! **Invariants**
//! - A delta leaves memory only into a committed transaction: when a write
//!   fails, its deltas are kept and written with the next batch.
//! - Dropping the flusher writes what is left (a clean stop loses nothing).

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::aggregate::{Meter, UsageDelta};
use crate::db::UsageDb;

/// Deltas kept in memory while the database refuses writes; beyond that
/// the oldest are dropped (and the loss logged).
const MAX_PENDING: usize = 100_000;

/// Writes the meter's usage into the database every `interval`, on a
/// thread of its own.
#[derive(Debug)]
pub struct Flusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts flushing `meter` into `db`.
    pub fn start(meter: Arc<Meter>, db: Arc<UsageDb>, interval: Duration) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("verge-usage-flush".into())
            .spawn(move || {
                let mut pending = Vec::new();
                loop {
                    let last = match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => false,
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                    };
                    flush(&meter, &db, &mut pending);
                    if last {
                        if !pending.is_empty() {
                            tracing::error!(
                                rows = pending.len(),
                                "usage could not be written before stopping; it is lost"
                            );
                        }
                        return;
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn flush(meter: &Meter, db: &UsageDb, pending: &mut Vec<UsageDelta>) {
    pending.extend(meter.drain());
    if pending.is_empty() {
        return;
    }
    match db.add(pending) {
        Ok(()) => pending.clear(),
        Err(e) => {
            tracing::error!(rows = pending.len(), "cannot write usage, will retry: {e}");
            if pending.len() > MAX_PENDING {
                let lost = pending.len() - MAX_PENDING;
                pending.drain(..lost);
                tracing::error!(
                    rows = lost,
                    "usage dropped: the database refused writes too long"
                );
            }
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Granularity, Invocation, SeriesKey, UsageQuery};

    #[test]
    fn stopping_writes_what_is_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(UsageDb::open(&dir.path().join("usage.db")).expect("open"));
        let meter = Meter::new();
        let flusher =
            Flusher::start(meter.clone(), db.clone(), Duration::from_secs(3600)).expect("start");
        let series = meter.series(SeriesKey {
            tenant: "t".into(),
            app: "a".into(),
            version: "v1".into(),
        });
        for _ in 0..3 {
            series.record(&Invocation::default());
        }
        drop(flusher);
        let page = db
            .query(&UsageQuery {
                tenant: None,
                app: None,
                since: 0,
                until: u64::MAX / 2,
                by: Granularity::Day,
                after: None,
                limit: 10,
            })
            .expect("query");
        assert_eq!(page.rows.len(), 1);
        assert_eq!(page.rows[0].totals.requests, 3);
    }
}
