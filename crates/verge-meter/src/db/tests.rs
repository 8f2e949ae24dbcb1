//! Usage database: additive writes, grouping, paging.

use super::*;
use crate::aggregate::SeriesKey;

fn delta(tenant: &str, app: &str, version: &str, minute: u64, requests: u64) -> UsageDelta {
    UsageDelta {
        key: SeriesKey {
            tenant: tenant.into(),
            app: app.into(),
            version: version.into(),
        },
        minute,
        totals: Totals {
            requests,
            invocations: requests,
            cpu_us: requests * 10,
            peak_memory: requests * 1000,
            ..Totals::default()
        },
    }
}

fn query(db: &UsageDb, by: Granularity, limit: usize) -> Vec<UsageRow> {
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let page = db
            .query(&UsageQuery {
                tenant: None,
                app: None,
                since: 0,
                until: u64::MAX / 2,
                by,
                after,
                limit,
            })
            .expect("query");
        assert!(page.rows.len() <= limit);
        rows.extend(page.rows);
        match page.next {
            // The cursor survives its text form.
            Some(next) => after = Some(UsageCursor::decode(&next.encode()).expect("decodes")),
            None => return rows,
        }
    }
}

#[test]
fn deltas_add_up_and_versions_sum_into_their_app() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = UsageDb::open(&dir.path().join("usage.db")).expect("open");
    db.add(&[delta("t", "a", "v1", 60, 2), delta("t", "a", "v2", 61, 3)])
        .expect("add");
    db.add(&[delta("t", "a", "v1", 60, 5)]).expect("add");
    drop(db);
    // Survives reopening.
    let db = UsageDb::open(&dir.path().join("usage.db")).expect("reopen");
    let minutes = query(&db, Granularity::Minute, 100);
    let got: Vec<_> = minutes
        .iter()
        .map(|r| {
            (
                r.bucket,
                r.totals.requests,
                r.totals.cpu_us,
                r.totals.peak_memory,
            )
        })
        .collect();
    assert_eq!(got, vec![(60, 7, 70, 5000), (61, 3, 30, 3000)]);
    let hours = query(&db, Granularity::Hour, 100);
    assert_eq!(hours.len(), 1);
    assert_eq!((hours[0].bucket, hours[0].totals.requests), (60, 10));
    assert_eq!(
        hours[0].totals.peak_memory, 5000,
        "peak is a max, not a sum"
    );
}

#[test]
fn paging_returns_every_row_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = UsageDb::open(&dir.path().join("usage.db")).expect("open");
    let mut deltas = Vec::new();
    for minute in 0..50 {
        for app in ["a", "b", "c"] {
            for tenant in ["x", "y"] {
                deltas.push(delta(tenant, app, "v1", minute, 1));
            }
        }
    }
    db.add(&deltas).expect("add");
    for limit in [1, 7, 300, 301] {
        let rows = query(&db, Granularity::Minute, limit);
        assert_eq!(rows.len(), 300, "limit {limit}");
        let keys: Vec<_> = rows
            .iter()
            .map(|r| (r.bucket, r.tenant.clone(), r.app.clone()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted, "limit {limit}: ordered, no repeats");
    }
}

#[test]
fn pages_span_windows_and_gaps_without_splitting_buckets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = UsageDb::open(&dir.path().join("usage.db")).expect("open");
    // Usage on three days years apart, two apps, a row every 7 minutes.
    let mut deltas = Vec::new();
    for day in [10_000u64, 10_001, 12_345] {
        for m in (0..1440).step_by(7) {
            for app in ["a", "b"] {
                deltas.push(delta("t", app, "v1", day * 1440 + m, 1));
            }
        }
    }
    db.add(&deltas).expect("add");
    let per_day = 2 * 1440_u64.div_ceil(7);
    for (by, rows) in [
        (Granularity::Minute, 3 * per_day),
        (Granularity::Hour, 3 * 24 * 2),
        (Granularity::Day, 3 * 2),
    ] {
        for limit in [1, 50, 10_000] {
            let got = query(&db, by, limit);
            assert_eq!(got.len() as u64, rows, "{by:?} limit {limit}");
            let total: u64 = got.iter().map(|r| r.totals.requests).sum();
            assert_eq!(total, 3 * per_day, "{by:?} limit {limit}: every row once");
            let mut keys: Vec<_> = got.iter().map(|r| (r.bucket, r.app.clone())).collect();
            let n = keys.len();
            keys.dedup();
            assert_eq!(
                keys.len(),
                n,
                "{by:?} limit {limit}: no bucket split or repeated"
            );
        }
    }
}

#[test]
fn filters_and_ranges_select_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = UsageDb::open(&dir.path().join("usage.db")).expect("open");
    db.add(&[
        delta("x", "a", "v1", 10, 1),
        delta("x", "b", "v1", 20, 1),
        delta("y", "a", "v1", 30, 1),
    ])
    .expect("add");
    let page = db
        .query(&UsageQuery {
            tenant: Some("x".into()),
            app: None,
            since: 15,
            until: 40,
            by: Granularity::Minute,
            after: None,
            limit: 10,
        })
        .expect("query");
    let apps: Vec<_> = page.rows.iter().map(|r| r.app.as_str()).collect();
    assert_eq!(apps, vec!["b"]);
    let empty = UsageQuery {
        tenant: None,
        app: None,
        since: 5,
        until: 5,
        by: Granularity::Day,
        after: None,
        limit: 10,
    };
    assert!(db.query(&empty).is_err());
    assert_eq!(
        db.cpu_since(15).expect("cpu"),
        vec![("x".into(), "b".into(), 10), ("y".into(), "a".into(), 10)]
    );
}

#[test]
fn malformed_cursors_are_refused() {
    for bad in ["", "1", "1.zz.00", "x.00.00", "1.0.00", "1.00.00.00"] {
        assert!(UsageCursor::decode(bad).is_err(), "{bad:?}");
    }
    let c = UsageCursor {
        bucket: 9,
        tenant: "té/n".into(),
        app: "".into(),
    };
    assert_eq!(UsageCursor::decode(&c.encode()).expect("ok"), c);
}

#[test]
fn the_uplink_queues_what_is_added_and_remote_usage_is_added_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("usage.db");
    let db = UsageDb::open(&path).expect("open");
    db.add(&[delta("t", "a", "v1", 10, 1)]).expect("add");
    assert_eq!(
        db.uplink_pending(10, None).expect("pending").1,
        0,
        "off by default"
    );
    db.enable_uplink();
    db.add(&[delta("t", "a", "v1", 10, 2), delta("t", "b", "v1", 11, 3)])
        .expect("add");
    let (queued, last) = db.uplink_pending(10, None).expect("pending");
    assert_eq!(queued.len(), 2);
    assert_eq!(queued[1].totals.requests, 3);
    // A retry asks for the same rows, even if more were queued meanwhile.
    db.add(&[delta("t", "c", "v1", 12, 4)]).expect("add");
    let (again, again_last) = db.uplink_pending(10, Some(last)).expect("pending");
    assert_eq!((again.len(), again_last), (2, last));
    // The queue survives reopening; done removes what was sent.
    drop(db);
    let db = UsageDb::open(&path).expect("reopen");
    assert_eq!(db.uplink_pending(10, Some(last)).expect("pending").1, last);
    db.uplink_done(last).expect("done");
    assert_eq!(db.uplink_pending(10, None).expect("pending").0.len(), 1);
    let (_, rest) = db.uplink_pending(10, None).expect("pending");
    db.uplink_done(rest).expect("done");
    // Another node's summary counts once, even when delivered again.
    db.add_remote(7, &[delta("t", "a", "v1", 10, 100)])
        .expect("remote");
    db.add_remote(7, &[delta("t", "a", "v1", 10, 100)])
        .expect("again");
    db.add_remote(5, &[delta("t", "a", "v1", 10, 100)])
        .expect("older");
    assert_eq!(db.remote_applied().expect("applied"), 7);
    let rows = query(&db, Granularity::Minute, 100);
    let a: u64 = rows
        .iter()
        .filter(|r| r.app == "a")
        .map(|r| r.totals.requests)
        .sum();
    assert_eq!(a, 103, "1 + 2 here, 100 from the other node once");
    assert_eq!(db.uplink_pending(10, None).expect("pending").0.len(), 0);
    assert!(
        db.uplink_pending(10, None).expect("pending").0.is_empty(),
        "remote usage is not sent on"
    );
}
