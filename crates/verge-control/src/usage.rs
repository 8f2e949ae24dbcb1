//! `GET /v1/usage`: usage and cost per app and time bucket, one page at a
//! time.
//!
//! A caller sees its own tenant; a caller with `tenants:admin` may ask for
//! any tenant, or all. Usage reaches the database once per flush interval
//! of the node, so the newest minute may still grow.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use verge_api::{Scope, UsagePage, UsageParams};
use verge_meter::{Granularity, UsageCursor, UsageQuery, UsageRow};

use crate::error::ApiError;
use crate::model::rfc3339;
use crate::{Caller, Control};

/// Rows per page unless asked otherwise.
const DEFAULT_PAGE: usize = 500;
/// Most rows per page.
const MAX_PAGE: usize = 5000;

/// Reads `24h` (back from `now`) or an RFC 3339 time.
fn parse_time(text: &str, now: SystemTime, name: &str) -> Result<SystemTime, ApiError> {
    if let Ok(back) = humantime::parse_duration(text) {
        return Ok(now.checked_sub(back).unwrap_or(SystemTime::UNIX_EPOCH));
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        ApiError::BadRequest(format!(
            "`{name}` must be a duration back from now (`24h`, `7d`) or an RFC 3339 time \
             (`2026-11-26T00:00:00Z`), not `{text}`"
        ))
    })
}

#[utoipa::path(
    get,
    path = "/v1/usage",
    operation_id = "getUsage",
    tag = "usage",
    summary = "Metered usage and cost per app and time bucket",
    description = "Requires the `usage:read` scope. Rows of the caller's tenant; with `tenants:admin`, of any tenant (all by default). Summed over versions per bucket, tenant and app, ordered by bucket, tenant, app. Usage reaches this endpoint once per flush interval of the node.",
    params(UsageParams),
    responses(
        crate::openapi::CommonErrors,
        (status = 200, description = "A page of rows.", body = verge_api::UsagePage, content_type = "application/json"),
        (status = 400, description = "The query string does not parse.", body = verge_api::ErrorBody, content_type = "application/json"),
        (status = 403, description = "The token lacks the required scope (`forbidden`).", body = verge_api::ErrorBody),
    ),
)]
pub(crate) async fn query(
    State(control): State<Arc<Control>>,
    caller: Caller,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<UsagePage>, ApiError> {
    caller.require(Scope::UsageRead, caller.tenant()).await?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Some(db) = control.usage.clone() else {
        return Err(ApiError::Unavailable(
            "this server keeps no usage".to_string(),
        ));
    };
    let tenant = match params.tenant {
        Some(t) if t != caller.tenant() => {
            caller.require(Scope::TenantsAdmin, &t).await?;
            Some(t)
        }
        Some(t) => Some(t),
        None if caller.has(Scope::TenantsAdmin) => None,
        None => Some(caller.tenant().to_string()),
    };
    let now = SystemTime::now();
    let since = parse_time(params.since.as_deref().unwrap_or("24h"), now, "since")?;
    let until = match &params.until {
        Some(text) => parse_time(text, now, "until")?,
        // Include the current minute.
        None => now + Duration::from_secs(60),
    };
    let (since, until) = (
        verge_meter::unix_minute(since),
        verge_meter::unix_minute(until),
    );
    if until <= since {
        return Err(ApiError::BadRequest(
            "`until` must come after `since`".to_string(),
        ));
    }
    let after = params
        .cursor
        .as_deref()
        .map(UsageCursor::decode)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let by = match params.by.unwrap_or(verge_api::Granularity::Hour) {
        verge_api::Granularity::Minute => Granularity::Minute,
        verge_api::Granularity::Hour => Granularity::Hour,
        verge_api::Granularity::Day => Granularity::Day,
    };
    let query = UsageQuery {
        tenant,
        app: params.app,
        since,
        until,
        by,
        after,
        limit: params.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
    };
    let page = tokio::task::spawn_blocking(move || db.query(&query))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let prices = &control.prices;
    Ok(Json(UsagePage {
        by: params.by.unwrap_or(verge_api::Granularity::Hour),
        currency: prices.currency.clone(),
        rows: page.rows.iter().map(|r| row(r, prices)).collect(),
        next: page.next.map(|c| c.encode()),
    }))
}

fn row(r: &UsageRow, prices: &verge_meter::PriceSheet) -> verge_api::UsageRow {
    let t = &r.totals;
    let cost = prices.cost(t);
    verge_api::UsageRow {
        start: rfc3339(r.bucket.saturating_mul(60)),
        tenant: r.tenant.clone(),
        app: r.app.clone(),
        requests: t.requests,
        invocations: t.invocations,
        rejected_quota: t.rejected_quota,
        rejected_limit: t.rejected_limit,
        status_2xx: t.status_2xx,
        status_3xx: t.status_3xx,
        status_4xx: t.status_4xx,
        status_5xx: t.status_5xx,
        cold_starts: t.cold_starts,
        wall_seconds: t.wall_us as f64 / 1e6,
        billed_ms: t.billed_ms,
        cpu_seconds: t.cpu_us as f64 / 1e6,
        gb_seconds: verge_meter::gb_seconds(t),
        peak_memory_bytes: t.peak_memory,
        request_bytes: t.request_bytes,
        response_bytes: t.response_bytes,
        outbound_calls: t.outbound_calls,
        outbound_bytes: t.outbound_bytes,
        outbound_bytes_sent: t.outbound_bytes_sent,
        egress_bytes: verge_meter::egress_bytes(t),
        kv_ops: t.kv_ops,
        ai_tokens: t.ai_tokens,
        cost: verge_api::Cost {
            requests: cost.requests,
            cpu: cost.cpu,
            memory: cost.memory,
            egress: cost.egress,
            total: cost.total,
        },
    }
}
