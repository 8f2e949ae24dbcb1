//! Usage pages, as `usage.rs` of `verge-control` answers them.

use serde_json::json;

use super::{check_wire, read, refused};
use crate::*;

/// `row()` of `verge-control/src/usage.rs`: the durations are `f64`
/// (`wall_us as f64 / 1e6`), so they are JSON numbers with a fraction even
/// when whole.
fn row(tenant: &str, app: &str) -> serde_json::Value {
    let (wall_us, cpu_us) = (500_000u64, 250_000u64);
    json!({
        "start": "2026-12-01T10:00:00Z",
        "tenant": tenant,
        "app": app,
        "requests": 3,
        "invocations": 2,
        "rejected_quota": 1,
        "rejected_limit": 0,
        "status_2xx": 2,
        "status_3xx": 0,
        "status_4xx": 1,
        "status_5xx": 0,
        "cold_starts": 1,
        "wall_seconds": wall_us as f64 / 1e6,
        "billed_ms": 501,
        "cpu_seconds": cpu_us as f64 / 1e6,
        "gb_seconds": 0.0,
        "peak_memory_bytes": 1_048_576,
        "request_bytes": 10,
        "response_bytes": 20,
        "outbound_calls": 0,
        "outbound_bytes": 0,
        "outbound_bytes_sent": 0,
        "egress_bytes": 20,
        "kv_ops": 4,
        "ai_tokens": 0,
        "cost": {"requests": 2.0, "cpu": 0.0, "memory": 0.0, "egress": 0.0, "total": 2.0},
    })
}

#[test]
fn usage_pages_keep_their_shape() {
    let page: UsagePage = check_wire(json!({
        "by": "hour",
        "currency": "USD",
        "rows": [row("acme", "shop"), row("acme", "blog")],
        "next": "eyJiIjo",
    }));
    assert_eq!(page.by, Granularity::Hour);
    assert_eq!(page.rows[0].cpu_seconds, 0.25);
    assert_eq!(page.rows[0].cost.requests, 2.0);
    let last: UsagePage =
        check_wire(json!({"by": "minute", "currency": "EUR", "rows": [], "next": null}));
    assert_eq!((last.by, last.next), (Granularity::Minute, None));
    check_wire::<Granularity>(json!("day"));
}

#[test]
fn usage_params_refuse_unknown_ones() {
    let params: UsageParams = check_wire(json!({
        "since": "24h", "until": "2026-12-02T00:00:00Z", "by": "day",
        "tenant": "acme", "app": "shop", "cursor": "eyJiIjo", "limit": 500,
    }));
    assert_eq!(params.by, Some(Granularity::Day));
    let params: UsageParams = check_wire(json!({}));
    assert_eq!(params, UsageParams::default());
    let e = refused::<UsageParams>(json!({"since": "24h", "from": "1h"}));
    assert!(e.contains("unknown field `from`"), "{e}");
    let e = refused::<UsageParams>(json!({"by": "week"}));
    assert!(e.contains("unknown variant `week`"), "{e}");
    let params: UsageParams = read(&json!({"app": "shop"}));
    assert_eq!(params.app.as_deref(), Some("shop"));
}
