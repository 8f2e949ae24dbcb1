//! What the node measures and limits per app version: its usage series
//! (billing, and the per-app Prometheus counts kept with it) and its
//! quotas.
//!
//! Everything is resolved once, when a version is prepared, so a request
//! only touches an `Arc` it already has; with nothing configured (`verge
//! up`), an app has no [`AppUsage`] and a request pays nothing for it.

use std::sync::Arc;
use std::time::SystemTime;

use verge_executor::{AppContext, GuestTrace, Invocation, UsageSink};
use verge_guard::quota::{AppQuota, QuotaBook};
use verge_meter::{Meter, Rejected, Series, SeriesKey};

/// What a node measures and limits besides serving.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// Usage per app version and minute, for billing.
    pub meter: Option<Arc<Meter>>,
    /// Quotas per tenant and app.
    pub quotas: Option<Arc<QuotaBook>>,
    /// Whether to keep the node-wide Prometheus metrics (a recorder must be
    /// installed; per-app metrics come from the meter).
    pub metrics: bool,
    /// OpenTelemetry spans per request, when exported.
    pub tracing: Option<Arc<crate::trace::Tracing>>,
}

/// The usage handles of one app version.
#[derive(Debug)]
pub(crate) struct AppUsage {
    series: Option<Arc<Series>>,
    pub(crate) quota: Option<AppQuota>,
}

impl AppUsage {
    /// The handles for `app`; `None` when the node measures nothing.
    pub(crate) fn new(telemetry: &Telemetry, app: &AppContext) -> Option<Arc<Self>> {
        let usage = Self {
            series: telemetry.meter.as_ref().map(|meter| {
                meter.series(SeriesKey {
                    tenant: app.tenant.clone(),
                    app: app.app.clone(),
                    version: app.version.clone().unwrap_or_else(|| "-".to_string()),
                })
            }),
            quota: telemetry
                .quotas
                .as_ref()
                .and_then(|book| book.for_app(&app.tenant, &app.app)),
        };
        let any = usage.series.is_some() || usage.quota.is_some();
        any.then(|| Arc::new(usage))
    }

    /// Counts a request turned away before its guest ran.
    pub(crate) fn rejected(&self, reason: Rejected, status: u16) {
        if let Some(series) = &self.series {
            series.record(&Invocation::rejected(reason, status));
        }
    }
}

impl UsageSink for AppUsage {
    fn finished(&self, invocation: Invocation, _trace: Option<GuestTrace>) {
        // One clock read for the usage minute and the quota day.
        let now = SystemTime::now();
        if let Some(series) = &self.series {
            series.record_at(&invocation, verge_meter::unix_minute(now));
        }
        if let Some(quota) = &self.quota {
            quota.add_cpu(invocation.cpu, now);
        }
    }
}
