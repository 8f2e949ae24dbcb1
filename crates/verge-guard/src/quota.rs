//! Quotas per tenant and per app: requests per minute and CPU-seconds per
//! day, both over fixed UTC windows (the minute, the day), the windows
//! usage is reported in.
//!
//! A [`QuotaBook`] holds the configured limits and one [`Cell`] of counts
//! per tenant and per app, shared by every version of the app. A request
//! is admitted against the app's cell and its tenant's cell before its
//! guest runs; its CPU time is added when it is over.
//!
//! **Invariants**
//! - Requests per minute are exact: the count and its minute change in
//!   one atomic step, and a refused request is not counted (a slot taken
//!   in one cell is given back when another cell, or a later limit,
//!   refuses the request).
//! - CPU per day is checked before a request and added after it, so
//!   requests already running when the quota runs out may pass it by
//!   their own CPU time; the next ones are refused. The day and its CPU
//!   change in one atomic step.
//! - Each quota's refusal is reported (for the audit log) once per window.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The limits of one tenant or app. Unset means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaLimits {
    /// Requests admitted per UTC minute.
    pub requests_per_minute: Option<u64>,
    /// Guest CPU-seconds per UTC day.
    pub cpu_seconds_per_day: Option<u64>,
}

impl QuotaLimits {
    fn is_unlimited(&self) -> bool {
        self.requests_per_minute.is_none() && self.cpu_seconds_per_day.is_none()
    }
}

/// Limits for every tenant and app: specific ones, else the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Limits of every tenant and app without their own.
    #[serde(default)]
    pub default: DefaultQuotas,
    /// Limits by tenant name.
    #[serde(default)]
    pub tenants: HashMap<String, QuotaLimits>,
    /// Limits by app, keyed `TENANT/APP`.
    #[serde(default)]
    pub apps: HashMap<String, QuotaLimits>,
}

/// Default limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultQuotas {
    /// For each tenant (all its apps together).
    #[serde(default)]
    pub tenant: QuotaLimits,
    /// For each app.
    #[serde(default)]
    pub app: QuotaLimits,
}

/// Which quota was used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// Requests per minute.
    RequestsPerMinute,
    /// CPU-seconds per day.
    CpuSecondsPerDay,
}

impl QuotaKind {
    /// The name used in configuration, logs and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            QuotaKind::RequestsPerMinute => "requests_per_minute",
            QuotaKind::CpuSecondsPerDay => "cpu_seconds_per_day",
        }
    }
}

/// A refusal: which quota of whom, and when it resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The tenant whose quota (or whose app's quota) it is.
    pub tenant: Arc<str>,
    /// The app (`TENANT/APP`) for an app's quota; `None` for the tenant's.
    pub app: Option<Arc<str>>,
    /// Which quota.
    pub kind: QuotaKind,
    /// Its limit.
    pub limit: u64,
    /// Until the window ends.
    pub retry_after: Duration,
}

impl Exceeded {
    /// `app TENANT/APP` or `tenant NAME`: whose quota, for logs and the
    /// audit log.
    pub fn scope(&self) -> String {
        match &self.app {
            Some(app) => format!("app {app}"),
            None => format!("tenant {}", self.tenant),
        }
    }
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            QuotaKind::RequestsPerMinute => "requests per minute",
            QuotaKind::CpuSecondsPerDay => "CPU-seconds per day",
        };
        write!(
            f,
            "the {} quota of {} {what} is used up",
            self.scope(),
            self.limit
        )
    }
}

/// Counts of one tenant or app.
#[derive(Debug)]
pub struct Cell {
    tenant: Arc<str>,
    /// `TENANT/APP` for an app's cell.
    app: Option<Arc<str>>,
    limits: QuotaLimits,
    /// Minute in the high 32 bits, requests admitted in it in the low 32.
    window: AtomicU64,
    /// Day in the high 16 bits, CPU microseconds used in it in the low 48.
    cpu: AtomicU64,
    /// Last minute and day whose refusal was reported.
    reported_minute: AtomicU64,
    reported_day: AtomicU64,
}

const SECS_PER_DAY: u64 = 86_400;

impl Cell {
    fn new(tenant: &str, app: Option<&str>, limits: QuotaLimits) -> Self {
        Self {
            tenant: tenant.into(),
            app: app.map(Arc::from),
            limits,
            window: AtomicU64::new(0),
            cpu: AtomicU64::new(0),
            reported_minute: AtomicU64::new(u64::MAX),
            reported_day: AtomicU64::new(u64::MAX),
        }
    }

    fn check_cpu(&self, now: u64) -> Result<(), (Exceeded, bool)> {
        let Some(limit) = self.limits.cpu_seconds_per_day else {
            return Ok(());
        };
        let day = now / SECS_PER_DAY;
        let (seen, used) = unpack_cpu(self.cpu.load(Ordering::Acquire));
        let used = if seen == day & DAY_MASK { used } else { 0 };
        if used < limit.saturating_mul(1_000_000) {
            return Ok(());
        }
        let first = self.reported_day.swap(day, Ordering::Relaxed) != day;
        Err((
            Exceeded {
                tenant: self.tenant.clone(),
                app: self.app.clone(),
                kind: QuotaKind::CpuSecondsPerDay,
                limit,
                retry_after: Duration::from_secs((day + 1) * SECS_PER_DAY - now),
            },
            first,
        ))
    }

    fn take_request(&self, now: u64) -> Result<(), (Exceeded, bool)> {
        let Some(limit) = self.limits.requests_per_minute else {
            return Ok(());
        };
        let minute = now / 60;
        let limit32 = limit.min(0xffff_ffff);
        let taken = self
            .window
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (m, n) = (w >> 32, w & 0xffff_ffff);
                let n = if m == minute & 0xffff_ffff { n } else { 0 };
                (n < limit32).then(|| ((minute & 0xffff_ffff) << 32) | (n + 1))
            });
        if taken.is_ok() {
            return Ok(());
        }
        let first = self.reported_minute.swap(minute, Ordering::Relaxed) != minute;
        Err((
            Exceeded {
                tenant: self.tenant.clone(),
                app: self.app.clone(),
                kind: QuotaKind::RequestsPerMinute,
                limit,
                retry_after: Duration::from_secs((minute + 1) * 60 - now),
            },
            first,
        ))
    }

    /// Gives back a request slot taken at `now` (the request was refused
    /// after all).
    fn return_request(&self, now: u64) {
        if self.limits.requests_per_minute.is_none() {
            return;
        }
        let minute = (now / 60) & 0xffff_ffff;
        let _ = self
            .window
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w >> 32 == minute && w & 0xffff_ffff > 0).then(|| w - 1)
            });
    }

    fn add_cpu(&self, cpu_us: u64, now: u64) {
        if self.limits.cpu_seconds_per_day.is_none() {
            return;
        }
        let day = (now / SECS_PER_DAY) & DAY_MASK;
        let _ = self
            .cpu
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (seen, used) = unpack_cpu(w);
                // A new day starts over.
                let used = if seen == day { used } else { 0 };
                Some((day << 48) | used.saturating_add(cpu_us).min(CPU_MASK))
            });
    }
}

/// Days fit 16 bits until 2149; CPU microseconds 48 bits (78 hours a day,
/// the most a quota may allow).
const DAY_MASK: u64 = 0xffff;
const CPU_MASK: u64 = (1 << 48) - 1;

/// Largest `cpu_seconds_per_day` a quota can count to.
pub const MAX_CPU_SECONDS_PER_DAY: u64 = CPU_MASK / 1_000_000;

fn unpack_cpu(w: u64) -> (u64, u64) {
    (w >> 48, w & CPU_MASK)
}

/// Called once per quota and window when a quota starts refusing.
pub type OnExceeded = Arc<dyn Fn(&Exceeded) + Send + Sync>;

/// Every configured limit and the counts against them.
pub struct QuotaBook {
    config: QuotaConfig,
    cells: Mutex<HashMap<String, Arc<Cell>>>,
    on_exceeded: Option<OnExceeded>,
}

impl fmt::Debug for QuotaBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaBook")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The quotas one app is admitted against.
#[derive(Clone)]
pub struct AppQuota {
    cells: Vec<Arc<Cell>>,
    on_exceeded: Option<OnExceeded>,
}

impl fmt::Debug for AppQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppQuota")
            .field("cells", &self.cells)
            .finish_non_exhaustive()
    }
}

fn unix_secs(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl AppQuota {
    /// Admits a request arriving at `now`, or says which quota refuses it.
    /// A request admitted here but refused later must be handed to
    /// [`AppQuota::refund`] with the same `now`.
    pub fn admit(&self, now: SystemTime) -> Result<(), Exceeded> {
        let secs = unix_secs(now);
        let mut result = self.cells.iter().try_for_each(|c| c.check_cpu(secs));
        if result.is_ok() {
            for (i, cell) in self.cells.iter().enumerate() {
                if let Err(refused) = cell.take_request(secs) {
                    // Give back the slots the other cells gave.
                    for taken in &self.cells[..i] {
                        taken.return_request(secs);
                    }
                    result = Err(refused);
                    break;
                }
            }
        }
        result.map_err(|(exceeded, first)| {
            if first && let Some(report) = &self.on_exceeded {
                report(&exceeded);
            }
            exceeded
        })
    }

    /// Gives back the request slots of a request admitted at `now` and then
    /// refused by a later check (a component limit).
    pub fn refund(&self, now: SystemTime) {
        let secs = unix_secs(now);
        for cell in &self.cells {
            cell.return_request(secs);
        }
    }

    /// Counts CPU time used by a request that ended at `now`.
    pub fn add_cpu(&self, cpu: Duration, now: SystemTime) {
        let now = unix_secs(now);
        let us = u64::try_from(cpu.as_micros()).unwrap_or(u64::MAX);
        for cell in &self.cells {
            cell.add_cpu(us, now);
        }
    }
}

impl QuotaBook {
    /// A book with `config`'s limits; `on_exceeded` hears of each refusing
    /// quota once per window.
    pub fn new(config: QuotaConfig, on_exceeded: Option<OnExceeded>) -> Arc<Self> {
        Arc::new(Self {
            config,
            cells: Mutex::default(),
            on_exceeded,
        })
    }

    /// Whether any quota is configured at all.
    pub fn is_empty(&self) -> bool {
        self.config.default.tenant.is_unlimited()
            && self.config.default.app.is_unlimited()
            && self.config.tenants.values().all(QuotaLimits::is_unlimited)
            && self.config.apps.values().all(QuotaLimits::is_unlimited)
    }

    /// The cell of `app` (`TENANT/APP`), or of the tenant when `None`.
    fn cell(&self, tenant: &str, app: Option<&str>, limits: QuotaLimits) -> Option<Arc<Cell>> {
        if limits.is_unlimited() {
            return None;
        }
        let key = match app {
            Some(app) => format!("app {app}"),
            None => format!("tenant {tenant}"),
        };
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        let cell = cells
            .entry(key)
            .or_insert_with(|| Arc::new(Cell::new(tenant, app, limits)));
        Some(cell.clone())
    }

    fn cells_of(&self, tenant: &str, app: &str) -> Vec<Arc<Cell>> {
        let app_key = format!("{tenant}/{app}");
        let app_limits = self
            .config
            .apps
            .get(&app_key)
            .copied()
            .unwrap_or(self.config.default.app);
        let tenant_limits = self
            .config
            .tenants
            .get(tenant)
            .copied()
            .unwrap_or(self.config.default.tenant);
        [
            self.cell(tenant, Some(&app_key), app_limits),
            self.cell(tenant, None, tenant_limits),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The quotas of app `app` of `tenant`; `None` when it has none.
    pub fn for_app(&self, tenant: &str, app: &str) -> Option<AppQuota> {
        let cells = self.cells_of(tenant, app);
        (!cells.is_empty()).then(|| AppQuota {
            cells,
            on_exceeded: self.on_exceeded.clone(),
        })
    }

    /// Counts CPU used earlier today (read back from usage after a restart).
    pub fn seed_cpu(&self, tenant: &str, app: &str, cpu: Duration, now: SystemTime) {
        if let Some(quota) = self.for_app(tenant, app) {
            quota.add_cpu(cpu, now);
        }
    }
}

#[cfg(test)]
mod tests;
