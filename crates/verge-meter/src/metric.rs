//! Every Prometheus metric Verge exports, named and described once.
//!
//! Code elsewhere never writes a metric name. Per-app metrics come from
//! the meter's [`Cumulative`] counts, rendered here at scrape time;
//! node-wide ones are typed `metrics` handles ([`NodeMetrics`]).
//! The anomaly detection reads these names, so they are stable: rename
//! one only with a migration note.
//!
//! Node-wide handles record into whatever `metrics` recorder the binary
//! installed; with none installed they are no-ops.

#![allow(clippy::disallowed_macros)] // The one place metric macros are used.

use metrics::{Counter, Gauge, Unit};

use crate::invocation::{Invocation, Rejected};

/// A metric's name and help text.
#[derive(Debug, Clone, Copy)]
pub struct Def {
    /// The Prometheus name.
    pub name: &'static str,
    /// Its `# HELP` text.
    pub help: &'static str,
}

/// Requests answered, by app and status class.
pub const REQUESTS: Def = Def {
    name: "verge_requests_total",
    help: "Requests answered, by app and status class (1xx..5xx), rejected ones included.",
};
/// Request durations, by app and status class.
pub const REQUEST_DURATION: Def = Def {
    name: "verge_request_duration_seconds",
    help: "Time from arrival to the end of the response, for requests whose guest ran.",
};
/// Requests turned away before their guest ran.
pub const REJECTIONS: Def = Def {
    name: "verge_rejections_total",
    help: "Requests turned away before their guest ran, by app and reason (quota, limit).",
};
/// Guest CPU time.
pub const GUEST_CPU: Def = Def {
    name: "verge_guest_cpu_microseconds_total",
    help: "CPU time spent running guests, by app, in microseconds (thread CPU clock).",
};
/// Requests that matched no app.
pub const UNROUTED: Def = Def {
    name: "verge_unrouted_requests_total",
    help: "Requests that matched no route of any app (404).",
};
/// Instances in use.
pub const INSTANCES_ACTIVE: Def = Def {
    name: "verge_instances_active",
    help: "Instances in use: requests whose guest runs or whose response is being sent.",
};
/// Instance slots of the pool.
pub const INSTANCE_SLOTS: Def = Def {
    name: "verge_instance_slots",
    help: "Instances that may exist at once (the pooling allocator's size).",
};
/// Compile cache hits.
pub const COMPILE_CACHE_HITS: Def = Def {
    name: "verge_compile_cache_hits_total",
    help: "Components loaded without compiling (from the compile cache or shared in memory).",
};
/// Compile cache misses.
pub const COMPILE_CACHE_MISSES: Def = Def {
    name: "verge_compile_cache_misses_total",
    help: "Components compiled.",
};
/// App versions loaded.
pub const APPS_LOADED: Def = Def {
    name: "verge_app_versions_loaded",
    help: "App versions the node serves.",
};
/// Linear memories in use in the pool.
pub const POOL_MEMORIES: Def = Def {
    name: "verge_pool_memories_in_use",
    help: "Linear memories of the pooling allocator in use by instances.",
};
/// Warm memory kept resident for reuse.
pub const POOL_WARM_BYTES: Def = Def {
    name: "verge_pool_warm_memory_bytes",
    help: "Resident bytes of unused linear memories kept warm for reuse (keep_resident).",
};
/// Resident memory of the process.
pub const RESIDENT_MEMORY: Def = Def {
    name: "verge_process_resident_memory_bytes",
    help: "Resident memory of the verge process.",
};

/// Buckets of [`REQUEST_DURATION`], in seconds: fine below a millisecond,
/// where most requests are.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Registers the help text and unit of the node-wide metrics with the
/// `metrics` recorder (the per-app ones are rendered by [`render_apps`]).
pub fn describe() {
    for def in [UNROUTED, COMPILE_CACHE_HITS, COMPILE_CACHE_MISSES] {
        metrics::describe_counter!(def.name, def.help);
    }
    for def in [INSTANCES_ACTIVE, INSTANCE_SLOTS, APPS_LOADED, POOL_MEMORIES] {
        metrics::describe_gauge!(def.name, def.help);
    }
    for def in [RESIDENT_MEMORY, POOL_WARM_BYTES] {
        metrics::describe_gauge!(def.name, Unit::Bytes, def.help);
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Duration buckets plus `+Inf`.
const BUCKETS: usize = DURATION_BUCKETS.len() + 1;

/// Counts of one app since the node started, for the per-app metrics.
/// Kept by the meter's series under the lock that also keeps usage, so a
/// request pays one lock for billing and metrics together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cumulative {
    /// Requests by status class (`1xx`..`5xx`).
    pub requests: [u64; 5],
    /// Requests whose guest ran, by status class and duration bucket (not
    /// cumulative: one bucket per request).
    pub durations: [[u64; BUCKETS]; 5],
    /// Sum of their durations, microseconds, by status class.
    pub duration_us: [u64; 5],
    /// Turned away by a quota.
    pub rejected_quota: u64,
    /// Turned away by a component limit.
    pub rejected_limit: u64,
    /// Guest CPU, microseconds.
    pub cpu_us: u64,
}

impl Cumulative {
    /// Counts one request.
    pub fn add(&mut self, inv: &Invocation) {
        let class = usize::from((inv.status / 100).clamp(1, 5)) - 1;
        self.requests[class] += 1;
        match inv.rejected {
            Some(Rejected::Quota) => self.rejected_quota += 1,
            Some(Rejected::Limit) => self.rejected_limit += 1,
            None => {
                let secs = inv.wall.as_secs_f64();
                let bucket = DURATION_BUCKETS.partition_point(|le| *le < secs);
                self.durations[class][bucket] += 1;
                let us = u64::try_from(inv.wall.as_micros()).unwrap_or(u64::MAX);
                self.duration_us[class] = self.duration_us[class].saturating_add(us);
                let cpu = u64::try_from(inv.cpu.as_micros()).unwrap_or(u64::MAX);
                self.cpu_us = self.cpu_us.saturating_add(cpu);
            }
        }
    }

    /// Adds other counts.
    pub fn merge(&mut self, o: &Cumulative) {
        for c in 0..5 {
            self.requests[c] += o.requests[c];
            self.duration_us[c] = self.duration_us[c].saturating_add(o.duration_us[c]);
            for b in 0..BUCKETS {
                self.durations[c][b] += o.durations[c][b];
            }
        }
        self.rejected_quota += o.rejected_quota;
        self.rejected_limit += o.rejected_limit;
        self.cpu_us = self.cpu_us.saturating_add(o.cpu_us);
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format asks.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, def: Def, kind: &str) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {} {}", def.name, def.help);
    let _ = writeln!(out, "# TYPE {} {kind}", def.name);
}

/// The per-app metrics in Prometheus text format, from the meter's
/// cumulative counts (`(tenant/app, counts)`, sorted by app).
pub fn render_apps(apps: &[(String, Cumulative)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    header(&mut out, REQUESTS, "counter");
    for (app, c) in apps {
        let app = label(app);
        for (class, n) in CLASSES.iter().zip(c.requests) {
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{}{{app=\"{app}\",status=\"{class}\"}} {n}",
                    REQUESTS.name
                );
            }
        }
    }
    header(&mut out, REQUEST_DURATION, "histogram");
    for (app, c) in apps {
        let app = label(app);
        for (i, class) in CLASSES.iter().enumerate() {
            let count: u64 = c.durations[i].iter().sum();
            if count == 0 {
                continue;
            }
            let name = REQUEST_DURATION.name;
            let labels = format!("app=\"{app}\",status=\"{class}\"");
            let mut running = 0;
            for (b, n) in c.durations[i].iter().enumerate() {
                running += n;
                let le = DURATION_BUCKETS
                    .get(b)
                    .map_or_else(|| "+Inf".to_string(), |v| v.to_string());
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {running}");
            }
            let sum = c.duration_us[i] as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
    }
    header(&mut out, REJECTIONS, "counter");
    for (app, c) in apps {
        let app = label(app);
        for (reason, n) in [("quota", c.rejected_quota), ("limit", c.rejected_limit)] {
            let _ = writeln!(
                out,
                "{}{{app=\"{app}\",reason=\"{reason}\"}} {n}",
                REJECTIONS.name
            );
        }
    }
    header(&mut out, GUEST_CPU, "counter");
    for (app, c) in apps {
        let _ = writeln!(
            out,
            "{}{{app=\"{}\"}} {}",
            GUEST_CPU.name,
            label(app),
            c.cpu_us
        );
    }
    out
}

/// Node-wide handles.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    /// Requests that matched no route.
    pub unrouted: Counter,
    instances_active: Gauge,
    instance_slots: Gauge,
    cache_hits: Counter,
    cache_misses: Counter,
    apps_loaded: Gauge,
    resident_memory: Gauge,
    pool_memories: Gauge,
    pool_warm: Gauge,
}

/// Node-wide values read when metrics are scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeSnapshot {
    /// Instances in use.
    pub instances_active: u64,
    /// Instance slots.
    pub instance_slots: u64,
    /// Compile cache hits so far.
    pub compile_cache_hits: u64,
    /// Compile cache misses so far.
    pub compile_cache_misses: u64,
    /// App versions served.
    pub app_versions: u64,
    /// Resident memory, bytes.
    pub resident_memory: u64,
    /// Pool memories in use.
    pub pool_memories: u64,
    /// Warm, unused pool memory kept resident, bytes.
    pub pool_warm_bytes: u64,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            unrouted: metrics::counter!(UNROUTED.name),
            instances_active: metrics::gauge!(INSTANCES_ACTIVE.name),
            instance_slots: metrics::gauge!(INSTANCE_SLOTS.name),
            cache_hits: metrics::counter!(COMPILE_CACHE_HITS.name),
            cache_misses: metrics::counter!(COMPILE_CACHE_MISSES.name),
            apps_loaded: metrics::gauge!(APPS_LOADED.name),
            resident_memory: metrics::gauge!(RESIDENT_MEMORY.name),
            pool_memories: metrics::gauge!(POOL_MEMORIES.name),
            pool_warm: metrics::gauge!(POOL_WARM_BYTES.name),
        }
    }
}

impl NodeMetrics {
    /// Sets the node-wide values (called just before rendering).
    pub fn set(&self, s: &NodeSnapshot) {
        self.instances_active.set(s.instances_active as f64);
        self.instance_slots.set(s.instance_slots as f64);
        self.cache_hits.absolute(s.compile_cache_hits);
        self.cache_misses.absolute(s.compile_cache_misses);
        self.apps_loaded.set(s.app_versions as f64);
        self.resident_memory.set(s.resident_memory as f64);
        self.pool_memories.set(s.pool_memories as f64);
        self.pool_warm.set(s.pool_warm_bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn app_metrics_render_as_prometheus_text() {
        let mut counts = Cumulative::default();
        for (wall_us, status) in [(50, 200), (700, 200), (2_000_000, 503)] {
            counts.add(&Invocation {
                wall: Duration::from_micros(wall_us),
                cpu: Duration::from_micros(10),
                status,
                ..Invocation::default()
            });
        }
        counts.add(&Invocation::rejected(Rejected::Quota, 429));
        let text = render_apps(&[("t/a\"b".to_string(), counts)]);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let app = r#"app="t/a\"b""#;
        for expected in [
            format!(r#"verge_requests_total{{{app},status="2xx"}} 2"#),
            format!(r#"verge_requests_total{{{app},status="4xx"}} 1"#),
            format!(r#"verge_request_duration_seconds_bucket{{{app},status="2xx",le="0.0001"}} 1"#),
            format!(r#"verge_request_duration_seconds_bucket{{{app},status="2xx",le="0.001"}} 2"#),
            format!(r#"verge_request_duration_seconds_bucket{{{app},status="2xx",le="+Inf"}} 2"#),
            format!(r#"verge_request_duration_seconds_count{{{app},status="5xx"}} 1"#),
            format!(r#"verge_request_duration_seconds_sum{{{app},status="5xx"}} 2"#),
            format!(r#"verge_rejections_total{{{app},reason="quota"}} 1"#),
            format!(r#"verge_guest_cpu_microseconds_total{{{app}}} 30"#),
        ] {
            assert!(
                lines.contains(&expected.as_str()),
                "missing {expected}:\n{text}"
            );
        }
        // No empty status classes, and no duration for rejected requests.
        assert!(!text.contains(r#"status="1xx""#));
        assert!(!text.contains(r#"duration_seconds_count{app="t/a\"b",status="4xx"}"#));
    }
}
