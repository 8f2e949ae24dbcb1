//! Quotas: windows, sharing between tenant and app, reporting once.

use std::sync::atomic::AtomicUsize;

use super::*;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn limits(rpm: Option<u64>, cpu: Option<u64>) -> QuotaLimits {
    QuotaLimits {
        requests_per_minute: rpm,
        cpu_seconds_per_day: cpu,
    }
}

#[test]
fn requests_per_minute_are_exact_and_reset_with_the_minute() {
    let reports = Arc::new(AtomicUsize::new(0));
    let counted = reports.clone();
    let book = QuotaBook::new(
        QuotaConfig {
            apps: [("t/a".to_string(), limits(Some(3), None))].into(),
            ..QuotaConfig::default()
        },
        Some(Arc::new(move |_: &Exceeded| {
            counted.fetch_add(1, Ordering::SeqCst);
        })),
    );
    let quota = book.for_app("t", "a").expect("has a quota");
    assert!(book.for_app("t", "other").is_none(), "no default quota");
    let minute = 1_000 * 60;
    for _ in 0..3 {
        quota.admit(at(minute + 10)).expect("under the limit");
    }
    let refused = quota.admit(at(minute + 15)).expect_err("fourth");
    assert_eq!(refused.kind, QuotaKind::RequestsPerMinute);
    assert_eq!(refused.retry_after, Duration::from_secs(45));
    assert_eq!(refused.scope(), "app t/a");
    quota
        .admit(at(minute + 59))
        .expect_err("still the same minute");
    assert_eq!(
        reports.load(Ordering::SeqCst),
        1,
        "reported once per window"
    );
    quota.admit(at(minute + 60)).expect("a new minute");
    // Another version of the same app shares the count.
    let again = book.for_app("t", "a").expect("quota");
    for _ in 0..2 {
        again.admit(at(minute + 61)).expect("shared count");
    }
    quota.admit(at(minute + 62)).expect_err("shared limit");
    assert_eq!(reports.load(Ordering::SeqCst), 2);
}

#[test]
fn a_zero_limit_refuses_everything_and_refusals_take_no_slot() {
    let book = QuotaBook::new(
        QuotaConfig {
            apps: [
                ("t/zero".to_string(), limits(Some(0), Some(0))),
                ("t/one".to_string(), limits(Some(1), None)),
            ]
            .into(),
            tenants: [("t".to_string(), limits(Some(2), None))].into(),
            ..QuotaConfig::default()
        },
        None,
    );
    let zero = book.for_app("t", "zero").expect("quota");
    for second in [0, 60, 120] {
        zero.admit(at(second)).expect_err("a zero limit refuses");
    }
    let one = book.for_app("t", "one").expect("quota");
    one.admit(at(0)).expect("the app's one request");
    // The app refuses the next one: the tenant's count must not move.
    one.admit(at(1)).expect_err("the app's limit");
    let other = book.for_app("t", "other").expect("tenant quota");
    other.admit(at(2)).expect("the tenant has one request left");
    // Now the tenant refuses: the app slot taken first is given back.
    let other_app = book.for_app("t", "third").expect("quota");
    let refused = other_app.admit(at(3)).expect_err("tenant used up");
    assert_eq!(refused.scope(), "tenant t");
    // A request refused by a later limit gives its slots back.
    let fresh = QuotaBook::new(
        QuotaConfig {
            apps: [("t/a".to_string(), limits(Some(1), None))].into(),
            ..QuotaConfig::default()
        },
        None,
    );
    let a = fresh.for_app("t", "a").expect("quota");
    a.admit(at(5)).expect("first");
    a.refund(at(5));
    a.admit(at(6)).expect("the refunded slot is free again");
}

#[test]
fn the_day_and_its_cpu_change_together() {
    let book = QuotaBook::new(
        QuotaConfig {
            apps: [("t/a".to_string(), limits(None, Some(1)))].into(),
            ..QuotaConfig::default()
        },
        None,
    );
    let quota = book.for_app("t", "a").expect("quota");
    let day = 20_000 * SECS_PER_DAY;
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..1000 {
                    quota.add_cpu(Duration::from_micros(250), at(day + 10));
                }
            });
        }
    });
    // Exactly one second: refused, never lost in a race.
    quota
        .admit(at(day + 11))
        .expect_err("4 x 1000 x 250 us = 1 s");
    // The first CPU of the next day replaces yesterday's, atomically.
    quota.add_cpu(Duration::from_micros(1), at(day + SECS_PER_DAY));
    quota.admit(at(day + SECS_PER_DAY + 1)).expect("a new day");
}

#[test]
fn a_tenant_quota_covers_all_its_apps() {
    let book = QuotaBook::new(
        QuotaConfig {
            default: DefaultQuotas {
                tenant: limits(Some(2), None),
                app: QuotaLimits::default(),
            },
            ..QuotaConfig::default()
        },
        None,
    );
    let (a, b) = (
        book.for_app("t", "a").expect("quota"),
        book.for_app("t", "b").expect("quota"),
    );
    a.admit(at(0)).expect("first");
    b.admit(at(0)).expect("second");
    let refused = a.admit(at(1)).expect_err("third for the tenant");
    assert_eq!(refused.scope(), "tenant t");
    book.for_app("u", "a")
        .expect("quota")
        .admit(at(1))
        .expect("another tenant has its own count");
}

#[test]
fn cpu_per_day_refuses_once_used_up_until_midnight() {
    let book = QuotaBook::new(
        QuotaConfig {
            tenants: [("t".to_string(), limits(None, Some(2)))].into(),
            ..QuotaConfig::default()
        },
        None,
    );
    let quota = book.for_app("t", "a").expect("quota");
    let day = 20_000 * SECS_PER_DAY;
    quota.admit(at(day + 5)).expect("nothing used yet");
    quota.add_cpu(Duration::from_millis(1999), at(day + 6));
    quota.admit(at(day + 7)).expect("just under");
    // Seeded usage (a restart) counts too.
    book.seed_cpu("t", "b", Duration::from_millis(1), at(day + 8));
    let refused = quota.admit(at(day + 9)).expect_err("used up");
    assert_eq!(refused.kind, QuotaKind::CpuSecondsPerDay);
    assert_eq!(refused.retry_after, Duration::from_secs(SECS_PER_DAY - 9));
    quota.admit(at(day + SECS_PER_DAY)).expect("a new day");
    quota.add_cpu(Duration::from_millis(10), at(day + SECS_PER_DAY));
    quota
        .admit(at(day + SECS_PER_DAY + 1))
        .expect("the count restarted");
}
