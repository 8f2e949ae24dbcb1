//! Metering on `verge server`: CPU billed from the thread CPU clock (within
//! 10% of what the process really spent), sleep not billed, rejected
//! requests counted but not billed, quotas with 429 and one audit entry per
//! window, usage that survives `kill -9` without double counting, the
//! `verge usage` formats, Prometheus metrics on the admin listener, and a
//! bad price sheet refused with its line and column.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::control::Plane;
use crate::support::{guests, raw_exchange};

/// How often the servers of these tests flush usage.
const FLUSH: &str = "150ms";

fn plane(extra: &[&str]) -> Plane {
    let mut args = vec!["--usage-flush-interval", FLUSH];
    args.extend_from_slice(extra);
    Plane::start_with(&args)
}

/// Usage rows of `app` (JSON format of `verge usage`), summed per day.
pub fn usage(plane: &Plane, app: &str) -> Vec<Value> {
    let run = plane.cli(&["usage", "--app", app, "--by", "day", "--format", "json"]);
    assert!(run.status.success(), "{}", run.stderr);
    let rows: Value = serde_json::from_str(&run.stdout).expect("usage JSON");
    rows.as_array().expect("an array").clone()
}

/// One field summed over the rows of `app`.
pub fn total(plane: &Plane, app: &str, field: &str) -> f64 {
    usage(plane, app)
        .iter()
        .map(|r| r[field].as_f64().unwrap_or(0.0))
        .sum()
}

/// Waits until the usage of `app` shows `requests` requests.
fn wait_for_requests(plane: &Plane, app: &str, requests: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = total(plane, app, "requests") as u64;
        if seen == requests {
            return;
        }
        assert!(
            seen < requests,
            "{app}: {seen} requests metered, expected {requests}"
        );
        assert!(
            Instant::now() < deadline,
            "{app}: only {seen} of {requests} requests metered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn deploy(plane: &Plane, app: &str, route: &str) {
    plane.deploy_file(&plane.admin, &guests().test_programs, app, route);
}

#[test]
fn guest_cpu_is_billed_within_ten_percent_and_sleeping_is_not() {
    let plane = plane(&[]);
    deploy(&plane, "burner", "/burner");
    deploy(&plane, "sleeper", "/sleeper");
    // Warm up (the first request of a version is the cold one).
    assert_eq!(plane.get("/burner/burn?iters=1000").0, 200);
    assert_eq!(plane.get("/sleeper/sleep?ms=1").0, 200);
    wait_for_requests(&plane, "burner", 1);
    let before = total(&plane, "burner", "cpu_seconds");

    // What the idle process spends (epoch ticker, flush thread) per second.
    let (idle_start, idle_cpu) = (Instant::now(), plane.verge.cpu_time());
    std::thread::sleep(Duration::from_secs(1));
    let idle_rate =
        (plane.verge.cpu_time() - idle_cpu).as_secs_f64() / idle_start.elapsed().as_secs_f64();

    // Calibrate iterations to about 250 ms of CPU per request.
    let started = (Instant::now(), plane.verge.cpu_time());
    assert_eq!(plane.get("/burner/burn?iters=50000000").0, 200);
    let probe = (plane.verge.cpu_time() - started.1).as_secs_f64().max(0.01);
    let iters = (50_000_000.0 * 0.25 / probe) as u64;

    let (wall_start, cpu_start) = (Instant::now(), plane.verge.cpu_time());
    for _ in 0..8 {
        let (status, body, _) = plane.get(&format!("/burner/burn?iters={iters}"));
        assert_eq!(status, 200, "{body}");
    }
    let spent = (plane.verge.cpu_time() - cpu_start).as_secs_f64()
        - idle_rate * wall_start.elapsed().as_secs_f64();
    wait_for_requests(&plane, "burner", 10);
    // The probe request is billed too: count the process's CPU for it.
    let billed = total(&plane, "burner", "cpu_seconds") - before - probe;
    let error = (billed - spent).abs() / spent;
    eprintln!("CPU billed {billed:.3}s, process spent {spent:.3}s");
    assert!(
        error < 0.10,
        "billed {billed:.3}s of CPU, the process spent {spent:.3}s ({:.1}% off)",
        error * 100.0
    );

    // Sleeping on a timer is waiting, not CPU.
    for _ in 0..3 {
        assert_eq!(plane.get("/sleeper/sleep?ms=400").0, 200);
    }
    wait_for_requests(&plane, "sleeper", 4);
    let rows = usage(&plane, "sleeper");
    let sleeper = &rows[0];
    let cpu = sleeper["cpu_seconds"].as_f64().expect("cpu");
    let wall = sleeper["wall_seconds"].as_f64().expect("wall");
    assert!(
        wall >= 1.2,
        "three 400 ms sleeps take 1.2 s of wall time, got {wall}"
    );
    assert!(cpu < 0.05, "sleeping must not be billed as CPU: {cpu}s");
    assert!(
        sleeper["gb_seconds"].as_f64().expect("gb") > 0.0,
        "memory is billed over time"
    );
    assert!(sleeper["peak_memory_bytes"].as_u64().expect("peak") > 0);
    assert_eq!(sleeper["invocations"], 4);
    assert_eq!(sleeper["cold_starts"], 1);
    assert_eq!(sleeper["status_2xx"], 4);
    assert_eq!(
        sleeper["response_bytes"],
        "slept 1ms\n".len() + 3 * "slept 400ms\n".len()
    );
}

#[test]
fn failing_guests_are_metered_for_what_they_used() {
    let plane = plane(&[]);
    plane.deploy_manifest(&format!(
        "name = \"failing\"\n\n[component.web]\nsource = {}\nroutes = [\"/f\"]\n\n\
         [component.web.limits]\nmemory = \"32MiB\"\ntimeout = \"1s\"\n",
        crate::support::toml_path(&guests().test_programs)
    ));
    assert_eq!(plane.get("/f/trap").0, 500);
    assert_eq!(plane.get("/f/bomb").0, 500);
    // 504 is the deadline cutting the loop off (measured elsewhere).
    assert_eq!(plane.get("/f/loop").0, 504);
    wait_for_requests(&plane, "failing", 3);
    let row = &usage(&plane, "failing")[0];
    assert_eq!(row["status_5xx"], 3, "{row}");
    assert_eq!(
        row["invocations"], 3,
        "failed guests ran, so they are billed"
    );
    // The memory bomb reached (nearly) its cap.
    let peak = row["peak_memory_bytes"].as_u64().expect("peak");
    assert!(
        peak > 24 * 1024 * 1024 && peak <= 32 * 1024 * 1024,
        "{peak}"
    );
    // The loop burned CPU until its 1 s deadline (at lower priority, on a
    // shared machine: at least a good part of it), and no more.
    let cpu = row["cpu_seconds"].as_f64().expect("cpu");
    assert!(cpu > 0.05 && cpu < 1.5, "{cpu}");
    let wall = row["wall_seconds"].as_f64().expect("wall");
    assert!(wall >= 1.0, "{wall}");
}

#[test]
fn outbound_calls_and_key_value_operations_are_metered() {
    let plane = plane(&[]);
    plane.deploy_manifest(&format!(
        "name = \"busy\"\n\n[component.web]\nsource = {}\nroutes = [\"/w\"]\n\
         allowed_outbound_hosts = [\"http://{}\"]\n\n\
         [component.kv]\nsource = {}\nroutes = [\"/kv\"]\nkey_value_stores = [\"default\"]\n",
        crate::support::toml_path(&guests().test_programs),
        plane.verge.addr,
        crate::support::toml_path(&guests().state),
    ));
    // The web component fetches 5,000 bytes from itself: two requests.
    let (status, body, _) = plane.get(&format!(
        "/w/outbound?url=http://{}/w/big?size=5000",
        plane.verge.addr
    ));
    assert_eq!(status, 200, "{body}");
    assert_eq!(plane.get("/kv/kv-set?store=default&key=k").0, 204);
    assert_eq!(plane.get("/kv/kv-get?store=default&key=k").0, 200);
    wait_for_requests(&plane, "busy", 4);
    let row = &usage(&plane, "busy")[0];
    assert_eq!(row["outbound_calls"], 1, "{row}");
    let received = row["outbound_bytes"].as_u64().expect("bytes");
    assert!(received >= 5000, "{row}");
    assert_eq!(row["outbound_bytes_sent"], 0, "a GET sends no body: {row}");
    assert_eq!(row["kv_ops"], 2, "{row}");
    // What was received from the call is not egress; what was sent is.
    assert_eq!(row["egress_bytes"], row["response_bytes"], "{row}");
    assert!(row["response_bytes"].as_u64().expect("bytes") >= 5000);
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("server.toml");
    std::fs::write(&path, text).expect("config");
    path.display().to_string()
}

#[test]
fn quotas_refuse_with_429_are_audited_once_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "[prices]\nper_million_requests = 1000000.0\n\n\
         [quotas.apps.\"default/limited\"]\nrequests_per_minute = 3\n\n\
         [quotas.apps.\"default/hog\"]\ncpu_seconds_per_day = 1\n",
    );
    let data = dir.path().join("data");
    let flags = ["--usage-flush-interval", FLUSH, "--config", &config];
    let plane = Plane::open(&data, &flags);
    deploy(&plane, "limited", "/limited");
    deploy(&plane, "free", "/free");
    deploy(&plane, "hog", "/hog");

    // Requests per minute: 3 pass, the rest get 429 until the minute ends.
    // (A minute boundary in the middle would reset the count: retry then.)
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let raw = raw_exchange(
            plane.verge.addr,
            b"GET /limited/echo HTTP/1.0\r\nHost: x\r\n\r\n",
        )
        .expect("exchange");
        statuses.push(raw.split_whitespace().nth(1).unwrap_or("").to_string());
        if let Some(line) = raw
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("retry-after:"))
        {
            retry_after = line[12..].trim().parse::<u64>().ok();
        }
    }
    let passed = statuses.iter().filter(|s| *s == "200").count();
    let refused = statuses.iter().filter(|s| *s == "429").count();
    assert!(passed >= 3 && passed + refused == 6, "{statuses:?}");
    let retry_after = retry_after.expect("429 carries Retry-After");
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    // A declared body over the component's limit: rejected before the
    // guest, counted, not billed.
    let raw = raw_exchange(
        plane.verge.addr,
        b"POST /free/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\nConnection: close\r\n\r\n",
    )
    .expect("exchange");
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");

    wait_for_requests(&plane, "limited", 6);
    let rows = usage(&plane, "limited");
    assert_eq!(rows[0]["invocations"].as_u64(), Some(passed as u64));
    assert_eq!(rows[0]["rejected_quota"].as_u64(), Some(refused as u64));
    assert_eq!(rows[0]["status_4xx"].as_u64(), Some(refused as u64));
    // A million per million invocations: only the ones that ran are billed.
    assert_eq!(rows[0]["cost"]["requests"].as_f64(), Some(passed as f64));
    wait_for_requests(&plane, "free", 1);
    let free = &usage(&plane, "free")[0];
    assert_eq!(
        (
            free["rejected_limit"].as_u64(),
            free["invocations"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(free["cpu_seconds"].as_f64(), Some(0.0));

    // One audit entry for the whole window, however many refusals.
    let audit = plane.cli(&["audit", "--json", "--limit", "1000"]);
    assert!(audit.status.success(), "{}", audit.stderr);
    let entries: Value = serde_json::from_str(&audit.stdout).expect("audit JSON");
    let quota_entries: Vec<&Value> = entries["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "quota.exceeded")
        .collect();
    assert_eq!(quota_entries.len(), 1, "{quota_entries:?}");
    assert_eq!(quota_entries[0]["target"], "app default/limited");
    // And one line in the app's live log.
    let logs = plane.cli(&["logs", "limited"]);
    assert_eq!(
        logs.stdout.matches("quota").count(),
        1,
        "{}\n{}",
        logs.stdout,
        logs.stderr
    );

    // CPU per day: burn past one second, then the app is refused until midnight.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut status = 200;
    while status == 200 {
        assert!(Instant::now() < deadline, "the CPU quota never refused");
        status = plane.get("/hog/burn?iters=300000000").0;
    }
    assert_eq!(status, 429);
    // Usage reaches the database, then the node dies without warning.
    std::thread::sleep(Duration::from_millis(600));
    plane.verge.signal(rustix::process::Signal::KILL);
    let Plane { verge, .. } = plane;
    let _ = verge.wait();
    let plane = Plane::open(&data, &flags);
    let (status, body, _) = plane.get("/hog/echo");
    assert_eq!(
        status, 429,
        "the day's CPU was read back after the restart: {body}"
    );
    assert!(body.contains("quota"), "{body}");
    assert_eq!(plane.get("/free/echo").0, 200, "other apps are not limited");
}

#[test]
fn usage_survives_kill_9_and_is_never_counted_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let flags = ["--usage-flush-interval", FLUSH];
    let plane = Plane::open(&data, &flags);
    deploy(&plane, "counted", "/counted");
    for _ in 0..40 {
        assert_eq!(plane.get("/counted/echo").0, 200);
    }
    wait_for_requests(&plane, "counted", 40);
    plane.verge.signal(rustix::process::Signal::KILL);
    let Plane { verge, .. } = plane;
    let _ = verge.wait();

    let plane = Plane::open(&data, &flags);
    for _ in 0..25 {
        assert_eq!(plane.get("/counted/echo").0, 200);
    }
    wait_for_requests(&plane, "counted", 65);
    // A clean stop writes what is still in memory: nothing lost.
    let flags_slow = ["--usage-flush-interval", "1h"];
    let Plane { verge, .. } = plane;
    verge.signal(rustix::process::Signal::TERM);
    assert!(verge.wait().success());
    let plane = Plane::open(&data, &flags_slow);
    for _ in 0..10 {
        assert_eq!(plane.get("/counted/echo").0, 200);
    }
    let Plane { verge, .. } = plane;
    verge.signal(rustix::process::Signal::TERM);
    assert!(verge.wait().success());
    let plane = Plane::open(&data, &flags_slow);
    assert_eq!(total(&plane, "counted", "requests"), 75.0);
    assert_eq!(
        total(&plane, "counted", "cold_starts"),
        3.0,
        "one per start"
    );
    // kill -9 loses what was not flushed yet, as documented, and nothing
    // else: one flush interval (here an hour) of usage.
    for _ in 0..7 {
        assert_eq!(plane.get("/counted/echo").0, 200);
    }
    plane.verge.signal(rustix::process::Signal::KILL);
    let Plane { verge, .. } = plane;
    let _ = verge.wait();
    let plane = Plane::open(&data, &flags);
    assert_eq!(total(&plane, "counted", "requests"), 75.0);
}

#[test]
fn verge_usage_prints_table_csv_and_json_over_any_range() {
    let plane = plane(&[]);
    deploy(&plane, "report", "/report");
    for _ in 0..5 {
        assert_eq!(plane.get("/report/echo").0, 200);
    }
    wait_for_requests(&plane, "report", 5);
    let table = plane.cli(&["usage", "--since", "1h", "--by", "minute"]);
    assert!(table.status.success(), "{}", table.stderr);
    assert!(table.stdout.starts_with("START"), "{}", table.stdout);
    assert!(table.stdout.contains("report"), "{}", table.stdout);
    let totals = table.stdout.lines().last().expect("a total line");
    assert!(totals.starts_with("TOTAL"), "{}", table.stdout);
    assert!(totals.contains(" 5 "), "{totals}");

    let csv = plane.cli(&[
        "usage", "--app", "report", "--format", "csv", "--since", "100000d",
    ]);
    assert!(csv.status.success(), "{}", csv.stderr);
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert!(
        lines[0].starts_with("start,tenant,app,requests,"),
        "{}",
        csv.stdout
    );
    assert_eq!(lines.len(), 2, "{}", csv.stdout);
    assert!(lines[1].contains(",default,report,5,5,"), "{}", csv.stdout);

    let empty = plane.cli(&["usage", "--app", "nothing", "--format", "json"]);
    assert_eq!(empty.stdout.trim(), "[]");
    for (args, needle) in [
        (vec!["usage", "--since", "last tuesday"], "since"),
        (vec!["usage", "--by", "week"], "week"),
    ] {
        let run = plane.cli(&args);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{}", run.stderr);
    }
    // A tenant's token sees only its tenant and cannot ask for another.
    let token = plane.token("acme", "usage:read");
    let run = plane.cli_as(&token, &["usage", "--format", "csv"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(!run.stdout.contains("report"), "{}", run.stdout);
    let run = plane.cli_as(&token, &["usage", "--tenant", "default"]);
    assert!(!run.status.success());
    assert!(run.stderr.contains("tenants:admin"), "{}", run.stderr);
}

fn scrape(addr: std::net::SocketAddr, token: Option<&str>) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let raw = raw_exchange(
        addr,
        format!("GET /metrics HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes(),
    )
    .expect("scrape");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The value of the sample line starting with `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn metrics_are_on_the_admin_listener_and_need_a_token_off_loopback() {
    let plane = plane(&[]);
    deploy(&plane, "measured", "/measured");
    for _ in 0..3 {
        assert_eq!(plane.get("/measured/echo").0, 200);
    }
    assert_eq!(plane.get("/measured/trap").0, 500);
    assert_eq!(plane.get("/nowhere").0, 404);
    let admin = plane.verge.metrics_addr.expect("a Metrics line");
    assert!(admin.ip().is_loopback());
    let (status, text) = scrape(admin, None);
    assert_eq!(status, 200, "loopback needs no token: {text}");
    let app = "app=\"default/measured\"";
    assert_eq!(
        sample(
            &text,
            &format!("verge_requests_total{{{app},status=\"2xx\"}}")
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("verge_requests_total{{{app},status=\"5xx\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("verge_request_duration_seconds_count{{{app},status=\"2xx\"}}")
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        text.contains("verge_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(sample(&text, "verge_unrouted_requests_total").is_some_and(|n| n >= 1.0));
    assert_eq!(sample(&text, "verge_instance_slots"), Some(1000.0));
    assert_eq!(sample(&text, "verge_app_versions_loaded"), Some(1.0));
    assert!(sample(&text, "verge_process_resident_memory_bytes").is_some_and(|b| b > 1e6));
    assert!(text.contains("# HELP verge_requests_total"), "{text}");

    // Off loopback, a token with metrics:read is required.
    let dir = tempfile::tempdir().expect("tempdir");
    let open = Plane::open(&dir.path().join("data"), &["--admin-listen", "0.0.0.0:0"]);
    let port = open.verge.metrics_addr.expect("Metrics line").port();
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(scrape(admin, None).0, 401);
    let reader = open.token("default", "apps:read");
    assert_eq!(scrape(admin, Some(&reader)).0, 403);
    open.deploy_file(&open.admin, &guests().test_programs, "mine", "/mine");
    let other = open.token("acme", "apps:deploy");
    open.deploy_file(&other, &guests().test_programs, "theirs", "/theirs");
    assert_eq!(open.get("/mine/echo").0, 200);
    assert_eq!(open.get("/theirs/echo").0, 200);
    let scraper = open.token("default", "metrics:read");
    let (status, text) = scrape(admin, Some(&scraper));
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("verge_instance_slots"), "{text}");
    assert!(text.contains("app=\"default/mine\""), "{text}");
    assert!(
        !text.contains("acme/theirs"),
        "another tenant's apps: {text}"
    );
    let operator = open.token("default", "metrics:read,tenants:admin");
    let (_, text) = scrape(admin, Some(&operator));
    assert!(text.contains("app=\"acme/theirs\""), "{text}");
}

#[test]
fn a_bad_price_sheet_is_refused_with_its_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "[prices]\nper_million_requests = 0.3\nper_request = 1\n",
    );
    let data = dir.path().join("data");
    let run = crate::support::run_verge(
        &[
            "server",
            "--data",
            &data.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--config",
            &config,
        ],
        dir.path(),
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown field `per_request`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("server.toml:3:1"), "{}", run.stderr);
    assert!(!data.exists(), "refused before touching the data folder");
}
