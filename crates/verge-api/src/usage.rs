//! `GET /v1/usage`: metered usage and its cost per app and time bucket,
//! a page at a time (see docs/metering.md for each measure).
//!
//! **Invariants**
//! - The query refuses unknown parameters.
//! - Durations (`wall_seconds`, `cpu_seconds`, `gb_seconds`) and costs are
//!   JSON numbers with a fraction; every other measure is a whole number.
//! - `next` is always present, null on the last page.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The width of the buckets usage is summed into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One row per minute.
    Minute,
    /// One row per hour.
    Hour,
    /// One row per (UTC) day.
    Day,
}

/// Query of `GET /v1/usage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Start: a duration back from now (`24h`, `7d`) or an RFC 3339 time;
    /// default `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// End (excluded), in the same forms; default: the end of the current
    /// minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Bucket width; default `hour`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Granularity>,
    /// Only this tenant (another tenant's needs `tenants:admin`); default:
    /// the caller's, or every tenant with `tenants:admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Only this app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// At most this many rows (default 500, clamped to 1..5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Answer of `GET /v1/usage`: rows ordered by bucket, tenant and app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsagePage {
    /// The bucket width of the rows.
    pub by: Granularity,
    /// The currency of the costs, e.g. `USD` (a label only).
    pub currency: String,
    /// Usage of one app in one bucket each, summed over its versions.
    pub rows: Vec<UsageRow>,
    /// Cursor of the next page; null on the last.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// Usage of one app in one bucket; see docs/metering.md for each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    /// Start of the bucket (RFC 3339, seconds).
    pub start: String,
    /// The tenant.
    pub tenant: String,
    /// The app.
    pub app: String,
    /// Every request, rejected or not.
    pub requests: u64,
    /// Requests whose guest ran: the billed ones.
    pub invocations: u64,
    /// Requests turned away by a quota (429).
    pub rejected_quota: u64,
    /// Requests turned away by a component limit (concurrency, body size).
    pub rejected_limit: u64,
    /// 2xx responses.
    pub status_2xx: u64,
    /// 3xx responses.
    pub status_3xx: u64,
    /// 4xx responses.
    pub status_4xx: u64,
    /// 5xx responses.
    pub status_5xx: u64,
    /// First requests of a version on a node.
    pub cold_starts: u64,
    /// Wall time of invocations, in seconds.
    pub wall_seconds: f64,
    /// Billed duration: each invocation's wall time rounded up to the
    /// millisecond, summed.
    pub billed_ms: u64,
    /// Guest CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Memory over time: each invocation's peak memory times its billed
    /// duration, in GB-seconds (GB = 2³⁰ bytes).
    pub gb_seconds: f64,
    /// Largest peak memory of one invocation, in bytes.
    pub peak_memory_bytes: u64,
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
    /// Bytes that left the node for the app: responses and outbound bytes
    /// sent.
    pub egress_bytes: u64,
    /// Key-value operations.
    pub kv_ops: u64,
    /// Tokens embedded through `verge:ai`.
    pub ai_tokens: u64,
    /// What it costs, by the server's price sheet.
    pub cost: Cost,
}

/// What some usage costs, by component, in the page's currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Cost {
    /// For invocations.
    pub requests: f64,
    /// For CPU time.
    pub cpu: f64,
    /// For memory over time.
    pub memory: f64,
    /// For egress.
    pub egress: f64,
    /// The sum.
    pub total: f64,
}
