//! `GET /v1/usage`: tenant scoping, paging, cost, and refused queries.

use verge_meter::{SeriesKey, Totals, UsageDelta};

use super::*;

fn delta(tenant: &str, app: &str, minute: u64, invocations: u64) -> UsageDelta {
    UsageDelta {
        key: SeriesKey {
            tenant: tenant.into(),
            app: app.into(),
            version: "v1".into(),
        },
        minute,
        totals: Totals {
            requests: invocations + 1,
            invocations,
            rejected_quota: 1,
            cpu_us: 250_000,
            ..Totals::default()
        },
    }
}

impl Api {
    /// Every row of a usage query, following the cursor; also the pages.
    async fn usage_rows(&self, token: &str, query: &str) -> (Vec<Value>, usize) {
        let (mut rows, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/usage?{query}&cursor={c}"),
                None => format!("/v1/usage?{query}"),
            };
            let (status, body) = self.call(Method::GET, &path, token, Value::Null).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            pages += 1;
            rows.extend(body["rows"].as_array().expect("rows").iter().cloned());
            match body["next"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return (rows, pages),
            }
        }
    }
}

#[tokio::test]
async fn tenants_see_their_own_usage_in_pages_with_cost() {
    let api = api().await;
    let now = verge_meter::unix_minute(std::time::SystemTime::now());
    let mut deltas = Vec::new();
    for m in 0..30 {
        deltas.push(delta("acme", "shop", now - 100 + m, 2));
        deltas.push(delta("other", "blog", now - 100 + m, 5));
    }
    api.usage.add(&deltas).expect("add");

    let acme = api.token("acme", &["usage:read"]).await;
    let (rows, pages) = api.usage_rows(&acme, "since=3h&by=minute&limit=7").await;
    assert_eq!(rows.len(), 30, "only its own tenant");
    assert_eq!(pages, 5);
    assert!(rows.iter().all(|r| r["tenant"] == "acme"));
    let first = &rows[0];
    assert_eq!(first["invocations"], 2);
    assert_eq!(first["requests"], 3);
    assert_eq!(first["rejected_quota"], 1);
    assert_eq!(first["cpu_seconds"], 0.25);
    // A million per million requests: 2 invocations cost 2 (rejected ones are free).
    assert_eq!(first["cost"]["requests"], 2.0);

    // Another tenant's usage needs tenants:admin.
    let (status, _) = api
        .call(Method::GET, "/v1/usage?tenant=other", &acme, Value::Null)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // An operator sees everyone, summed per day.
    let (rows, _) = api.usage_rows(&api.admin, "since=3h&by=day").await;
    let apps: Vec<_> = rows
        .iter()
        .map(|r| r["app"].as_str().expect("app"))
        .collect();
    assert!(apps.contains(&"shop") && apps.contains(&"blog"), "{apps:?}");
    let total: u64 = rows
        .iter()
        .map(|r| r["invocations"].as_u64().expect("n"))
        .sum();
    assert_eq!(total, 30 * 2 + 30 * 5);
    // A range without usage is empty, not an error.
    let (rows, _) = api
        .usage_rows(
            &api.admin,
            "since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z",
        )
        .await;
    assert!(rows.is_empty());
}

#[tokio::test]
async fn malformed_usage_queries_are_refused_with_a_reason() {
    let api = api().await;
    let no_scope = api.token("acme", &["apps:read"]).await;
    let (status, _) = api
        .call(Method::GET, "/v1/usage", &no_scope, Value::Null)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for (query, needle) in [
        ("since=yesterday", "since"),
        ("until=soon", "until"),
        ("since=1h&until=2h", "after"),
        ("by=week", "by"),
        ("cursor=zz", "cursor"),
        ("colour=blue", "colour"),
    ] {
        let (status, body) = api
            .call(
                Method::GET,
                &format!("/v1/usage?{query}"),
                &api.admin,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body.to_string().contains(needle), "{query}: {body}");
    }
}
