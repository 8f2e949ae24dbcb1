//! Every Prometheus metric Verge exports, named and described once.
//!
//! Code elsewhere never writes a metric name: it holds the typed handles
//! made here ([`AppMetrics`] per app version, [`NodeMetrics`] per node).
//! The anomaly detection reads these names, so they are stable: rename
//! one only with a migration note.
//!
//! Recording goes to whatever `metrics` recorder the binary installed; with
//! none installed every handle is a no-op.

#![allow(clippy::disallowed_macros)] // The one place metric macros are used.

use metrics::{Counter, Gauge, Histogram, Unit};

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

/// Registers the help text and unit of every metric with the recorder.
pub fn describe() {
    for def in [
        REQUESTS,
        REJECTIONS,
        UNROUTED,
        COMPILE_CACHE_HITS,
        COMPILE_CACHE_MISSES,
    ] {
        metrics::describe_counter!(def.name, def.help);
    }
    metrics::describe_counter!(GUEST_CPU.name, Unit::Microseconds, GUEST_CPU.help);
    metrics::describe_histogram!(REQUEST_DURATION.name, Unit::Seconds, REQUEST_DURATION.help);
    for def in [INSTANCES_ACTIVE, INSTANCE_SLOTS, APPS_LOADED] {
        metrics::describe_gauge!(def.name, def.help);
    }
    metrics::describe_gauge!(RESIDENT_MEMORY.name, Unit::Bytes, RESIDENT_MEMORY.help);
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The handles of one app, made when a version is loaded so a request only
/// touches atomics.
#[derive(Debug, Clone)]
pub struct AppMetrics {
    requests: [Counter; 5],
    duration: [Histogram; 5],
    rejected_quota: Counter,
    rejected_limit: Counter,
    cpu: Counter,
}

impl AppMetrics {
    /// Handles labelled with `app` (`tenant/app`).
    pub fn new(app: &str) -> Self {
        let requests = CLASSES
            .map(|c| metrics::counter!(REQUESTS.name, "app" => app.to_string(), "status" => c));
        let duration = CLASSES.map(
            |c| metrics::histogram!(REQUEST_DURATION.name, "app" => app.to_string(), "status" => c),
        );
        Self {
            requests,
            duration,
            rejected_quota: metrics::counter!(REJECTIONS.name, "app" => app.to_string(), "reason" => "quota"),
            rejected_limit: metrics::counter!(REJECTIONS.name, "app" => app.to_string(), "reason" => "limit"),
            cpu: metrics::counter!(GUEST_CPU.name, "app" => app.to_string()),
        }
    }

    /// Counts one request.
    pub fn record(&self, inv: &Invocation) {
        let class = usize::from((inv.status / 100).clamp(1, 5)) - 1;
        self.requests[class].increment(1);
        match inv.rejected {
            Some(Rejected::Quota) => self.rejected_quota.increment(1),
            Some(Rejected::Limit) => self.rejected_limit.increment(1),
            None => {
                self.duration[class].record(inv.wall.as_secs_f64());
                self.cpu
                    .increment(u64::try_from(inv.cpu.as_micros()).unwrap_or(u64::MAX));
            }
        }
    }
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
    }
}
