//! Adding invocations up: per app version, per minute, in memory; and the
//! cumulative counts Prometheus reads, kept under the same lock.
//!
//! A series is split in a few shards, each behind its own lock on its own
//! cache line; a thread always records into the same shard, so the two
//! workers of a small node never contend for one lock per request.
//!
//! **Invariants**
//! - Every recorded invocation is in exactly one delta returned by
//!   [`Meter::drain`] (or still in its series); nothing is dropped or
//!   handed out twice.
//! - Cumulative counts only grow, per app, even when versions come and go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::invocation::{Invocation, Rejected};
use crate::metric::Cumulative;

/// Which usage rows an invocation adds to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    /// The tenant that owns the app.
    pub tenant: String,
    /// The app within its tenant.
    pub app: String,
    /// The version label (`v3`), or `-` when unversioned (`verge up`).
    pub version: String,
}

/// Sums over the invocations of one series and minute. Every field only
/// grows, except `peak_memory`, the largest seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Every request, rejected or not.
    pub requests: u64,
    /// Requests whose guest ran: the billed ones.
    pub invocations: u64,
    /// Requests turned away by a quota (429).
    pub rejected_quota: u64,
    /// Requests turned away by a component limit (concurrency, body size).
    pub rejected_limit: u64,
    /// Responses by status class.
    pub status_2xx: u64,
    /// 3xx responses.
    pub status_3xx: u64,
    /// 4xx responses.
    pub status_4xx: u64,
    /// 5xx responses.
    pub status_5xx: u64,
    /// First requests of a version on a node.
    pub cold_starts: u64,
    /// Wall time of invocations, in microseconds.
    pub wall_us: u64,
    /// Billed duration: each invocation's wall time rounded up to the
    /// millisecond, summed.
    pub billed_ms: u64,
    /// Guest CPU time, in microseconds.
    pub cpu_us: u64,
    /// Memory over time: each invocation's peak memory (KiB) times its
    /// billed milliseconds, summed. `/ 1024² / 1000` gives GB-seconds.
    pub memory_kib_ms: u64,
    /// Largest peak memory of one invocation, in bytes.
    pub peak_memory: u64,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// Outbound HTTP calls.
    pub outbound_calls: u64,
    /// Outbound body bytes, both ways.
    pub outbound_bytes: u64,
    /// Outbound body bytes sent.
    pub outbound_bytes_sent: u64,
    /// Key-value operations.
    pub kv_ops: u64,
    /// Tokens embedded through `verge:ai`.
    pub ai_tokens: u64,
}

impl Totals {
    /// Adds one invocation.
    pub fn add_invocation(&mut self, inv: &Invocation) {
        self.requests += 1;
        match inv.status / 100 {
            2 => self.status_2xx += 1,
            3 => self.status_3xx += 1,
            4 => self.status_4xx += 1,
            5 => self.status_5xx += 1,
            _ => {}
        }
        match inv.rejected {
            Some(Rejected::Quota) => {
                self.rejected_quota += 1;
                return;
            }
            Some(Rejected::Limit) => {
                self.rejected_limit += 1;
                return;
            }
            None => {}
        }
        let wall_us = u64::try_from(inv.wall.as_micros()).unwrap_or(u64::MAX);
        let billed_ms = wall_us.div_ceil(1000).max(1);
        self.invocations += 1;
        self.cold_starts += u64::from(inv.cold);
        self.wall_us = self.wall_us.saturating_add(wall_us);
        self.billed_ms = self.billed_ms.saturating_add(billed_ms);
        self.cpu_us = self
            .cpu_us
            .saturating_add(u64::try_from(inv.cpu.as_micros()).unwrap_or(u64::MAX));
        self.memory_kib_ms = self
            .memory_kib_ms
            .saturating_add((inv.peak_memory / 1024).saturating_mul(billed_ms));
        self.peak_memory = self.peak_memory.max(inv.peak_memory);
        self.request_bytes = self.request_bytes.saturating_add(inv.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(inv.response_bytes);
        self.outbound_calls += u64::from(inv.outbound_calls);
        self.outbound_bytes = self.outbound_bytes.saturating_add(inv.outbound_bytes);
        self.outbound_bytes_sent = self
            .outbound_bytes_sent
            .saturating_add(inv.outbound_bytes_sent);
        self.kv_ops += u64::from(inv.kv_ops);
        self.ai_tokens = self.ai_tokens.saturating_add(inv.ai_tokens);
    }

    /// Adds other totals (of the same series and minute, or for a report).
    pub fn merge(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.invocations += o.invocations;
        self.rejected_quota += o.rejected_quota;
        self.rejected_limit += o.rejected_limit;
        self.status_2xx += o.status_2xx;
        self.status_3xx += o.status_3xx;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.cold_starts += o.cold_starts;
        self.wall_us = self.wall_us.saturating_add(o.wall_us);
        self.billed_ms = self.billed_ms.saturating_add(o.billed_ms);
        self.cpu_us = self.cpu_us.saturating_add(o.cpu_us);
        self.memory_kib_ms = self.memory_kib_ms.saturating_add(o.memory_kib_ms);
        self.peak_memory = self.peak_memory.max(o.peak_memory);
        self.request_bytes = self.request_bytes.saturating_add(o.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(o.response_bytes);
        self.outbound_calls += o.outbound_calls;
        self.outbound_bytes = self.outbound_bytes.saturating_add(o.outbound_bytes);
        self.outbound_bytes_sent = self
            .outbound_bytes_sent
            .saturating_add(o.outbound_bytes_sent);
        self.kv_ops += o.kv_ops;
        self.ai_tokens = self.ai_tokens.saturating_add(o.ai_tokens);
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }
}

/// Usage of one series in one minute, drained from memory, not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// Whose.
    pub key: SeriesKey,
    /// Minutes since the Unix epoch.
    pub minute: u64,
    /// What was used.
    pub totals: Totals,
}

#[derive(Debug, Default)]
struct SeriesState {
    minute: u64,
    current: Totals,
    /// Earlier minutes not drained yet (usually none).
    closed: Vec<(u64, Totals)>,
    /// Since the series was created, for metrics.
    cumulative: Cumulative,
}

/// Shards per series: enough that each worker thread of a small node has
/// its own.
const SHARDS: usize = 4;

/// A lock alone on its cache line (two lines, for adjacent-line prefetch).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<SeriesState>);

/// The shard the calling thread records into.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// The running totals of one app version.
#[derive(Debug)]
pub struct Series {
    key: SeriesKey,
    shards: [Shard; SHARDS],
}

impl Series {
    /// Adds an invocation that ended now.
    pub fn record(&self, inv: &Invocation) {
        self.record_at(inv, crate::unix_minute(SystemTime::now()));
    }

    /// Adds an invocation to minute `minute`.
    pub fn record_at(&self, inv: &Invocation, minute: u64) {
        let mut state = lock(&self.shards[shard_index()]);
        if state.minute != minute {
            if !state.current.is_empty() {
                let closed = (state.minute, std::mem::take(&mut state.current));
                state.closed.push(closed);
            }
            state.minute = minute;
        }
        state.current.add_invocation(inv);
        state.cumulative.add(inv);
    }

    fn drain_into(&self, out: &mut Vec<UsageDelta>) {
        // Shards may hold the same minute: sum them first.
        let mut minutes: Vec<(u64, Totals)> = Vec::new();
        for shard in &self.shards {
            let mut state = lock(shard);
            let current = std::mem::take(&mut state.current);
            let minute = state.minute;
            let mut taken: Vec<(u64, Totals)> = state.closed.drain(..).collect();
            if !current.is_empty() {
                taken.push((minute, current));
            }
            for (minute, totals) in taken {
                match minutes.iter_mut().find(|(m, _)| *m == minute) {
                    Some((_, sum)) => sum.merge(&totals),
                    None => minutes.push((minute, totals)),
                }
            }
        }
        minutes.sort_by_key(|(m, _)| *m);
        out.extend(minutes.into_iter().map(|(minute, totals)| UsageDelta {
            key: self.key.clone(),
            minute,
            totals,
        }));
    }

    /// Counts since the series was created.
    fn cumulative(&self) -> Cumulative {
        let mut sum = Cumulative::default();
        for shard in &self.shards {
            sum.merge(&lock(shard).cumulative);
        }
        sum
    }
}

fn lock(shard: &Shard) -> MutexGuard<'_, SeriesState> {
    shard.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every series of the node.
#[derive(Debug, Default)]
pub struct Meter {
    series: Mutex<HashMap<SeriesKey, Arc<Series>>>,
    /// Cumulative counts of series forgotten since, per `tenant/app`, so
    /// an app's counters never go down when a version is unloaded.
    retired: Mutex<HashMap<String, Cumulative>>,
}

impl Meter {
    /// An empty meter.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The series of `key`, created on first use. Versions of an app that
    /// are loaded twice (a reload) share one series.
    pub fn series(&self, key: SeriesKey) -> Arc<Series> {
        let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Series {
                    key,
                    shards: Default::default(),
                })
            })
            .clone()
    }

    /// Cumulative counts per app (`tenant/app`), summed over its versions,
    /// sorted by app: what the per-app Prometheus metrics show.
    pub fn cumulative(&self) -> Vec<(String, Cumulative)> {
        let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_app: HashMap<String, Cumulative> = self
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let series: Vec<Arc<Series>> = map.values().cloned().collect();
        drop(map);
        for s in series {
            let app = format!("{}/{}", s.key.tenant, s.key.app);
            by_app.entry(app).or_default().merge(&s.cumulative());
        }
        let mut out: Vec<_> = by_app.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Takes everything recorded so far. Series nobody holds any more
    /// (their version was unloaded) are forgotten once drained.
    pub fn drain(&self) -> Vec<UsageDelta> {
        let mut out = Vec::new();
        // Lock order: the map, then `retired` (as in `cumulative`), so a
        // scrape never sees a retired series in neither place.
        let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, series| {
            // Decided before draining: nobody else holds it, and nobody can
            // get it while the map is locked, so this drain is its last.
            let held = Arc::strong_count(series) > 1;
            series.drain_into(&mut out);
            if !held {
                let app = format!("{}/{}", series.key.tenant, series.key.app);
                retired.entry(app).or_default().merge(&series.cumulative());
            }
            held
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(app: &str) -> SeriesKey {
        SeriesKey {
            tenant: "t".into(),
            app: app.into(),
            version: "v1".into(),
        }
    }

    #[test]
    fn invocations_add_up_per_minute_and_drain_once() {
        let meter = Meter::new();
        let series = meter.series(key("a"));
        let inv = Invocation {
            wall: Duration::from_micros(1500),
            cpu: Duration::from_micros(700),
            peak_memory: 2 * 1024 * 1024,
            response_bytes: 10,
            status: 200,
            ..Invocation::default()
        };
        series.record_at(&inv, 100);
        series.record_at(&inv, 100);
        series.record_at(&inv, 101);
        series.record_at(&Invocation::rejected(Rejected::Quota, 429), 101);
        let deltas = meter.drain();
        assert_eq!(deltas.len(), 2);
        let first = &deltas[0].totals;
        assert_eq!(
            (deltas[0].minute, first.requests, first.invocations),
            (100, 2, 2)
        );
        // 1.5 ms bills as 2 ms; 2 MiB for 2 ms twice.
        assert_eq!(first.billed_ms, 4);
        assert_eq!(first.memory_kib_ms, 2 * 2048 * 2);
        assert_eq!(first.cpu_us, 1400);
        let second = &deltas[1].totals;
        assert_eq!(
            (second.requests, second.invocations, second.rejected_quota),
            (2, 1, 1)
        );
        assert_eq!(second.status_4xx, 1);
        // Rejected requests bill nothing.
        assert_eq!(second.cpu_us, 700);
        assert!(meter.drain().is_empty(), "drained twice");
    }

    #[test]
    fn shards_of_one_minute_drain_as_one_delta_and_counts_survive_unloading() {
        let meter = Meter::new();
        let series = meter.series(key("a"));
        let ok = Invocation {
            status: 200,
            wall: Duration::from_micros(300),
            ..Invocation::default()
        };
        std::thread::scope(|s| {
            for _ in 0..SHARDS * 2 {
                s.spawn(|| {
                    for _ in 0..100 {
                        series.record_at(&ok, 7);
                    }
                });
            }
        });
        let deltas = meter.drain();
        assert_eq!(deltas.len(), 1, "one row per minute, whatever the shards");
        assert_eq!(deltas[0].totals.requests, (SHARDS * 2 * 100) as u64);
        drop(series);
        assert!(meter.drain().is_empty());
        // The app's counters outlive its unloaded version.
        let counts = meter.cumulative();
        assert_eq!(counts.len(), 1);
        assert_eq!(counts[0].0, "t/a");
        assert_eq!(counts[0].1.requests[1], (SHARDS * 2 * 100) as u64);
        let again = meter.series(key("a"));
        again.record_at(&ok, 8);
        assert_eq!(
            meter.cumulative()[0].1.requests[1],
            (SHARDS * 2 * 100) as u64 + 1
        );
    }

    #[test]
    fn a_series_nobody_holds_is_forgotten_after_its_last_drain() {
        let meter = Meter::new();
        let series = meter.series(key("gone"));
        series.record_at(&Invocation::default(), 5);
        drop(series);
        assert_eq!(meter.drain().len(), 1);
        assert!(meter.series.lock().expect("lock").is_empty());
    }
}
