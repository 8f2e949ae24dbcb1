//! `verge server` and the commands that drive it, end to end: login,
//! deploy, versions, traffic, rollback, delete, tokens and the audit log,
//! tenant isolation, and bad input.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{Run, Up, Verge, guests, repo, verge_bin};

/// A running server with its data folder and admin token.
pub struct Plane {
    pub verge: Verge,
    pub data: PathBuf,
    pub admin: String,
    pub config: tempfile::TempDir,
    _dir: Option<tempfile::TempDir>,
}

impl Plane {
    /// A fresh server on a new data folder.
    pub fn start() -> Plane {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Plane {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut plane = Self::open(&data, extra);
        plane._dir = Some(dir);
        plane
    }

    /// A server on `data`; reads the admin token written at first start.
    pub fn open(data: &Path, extra: &[&str]) -> Plane {
        let token_file = data.with_extension("token");
        let mut args = vec![
            "--data".to_string(),
            data.display().to_string(),
            "--admin-token-file".to_string(),
            token_file.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        // Traces leave in small batches, so tests see them quickly.
        let verge = Up::server(&args)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .start();
        let admin = std::fs::read_to_string(&token_file)
            .expect("the first start writes the admin token")
            .trim()
            .to_string();
        Plane {
            verge,
            data: data.to_path_buf(),
            admin,
            config: tempfile::tempdir().expect("tempdir"),
            _dir: None,
        }
    }

    pub fn url(&self) -> String {
        self.verge.url("")
    }

    /// Runs `verge ARGS` against this server with `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Run {
        self.cli_in(token, args, &repo(), None)
    }

    /// Runs `verge ARGS` as the admin.
    pub fn cli(&self, args: &[&str]) -> Run {
        self.cli_as(&self.admin.clone(), args)
    }

    pub fn cli_in(&self, token: &str, args: &[&str], dir: &Path, stdin: Option<&str>) -> Run {
        let mut cmd = Command::new(verge_bin());
        cmd.args(args)
            .current_dir(dir)
            .env("VERGE_CONFIG_DIR", self.config.path())
            .env("VERGE_URL", self.url())
            .env("VERGE_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().expect("verge runs");
        if let Some(input) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().expect("piped");
            pipe.write_all(input.as_bytes()).expect("stdin");
        }
        let output = child.wait_with_output().expect("verge finishes");
        Run {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Creates a token for `tenant` with `scopes` (comma-separated).
    pub fn token(&self, tenant: &str, scopes: &str) -> String {
        let run = self.cli(&["tokens", "create", "--tenant", tenant, "--scopes", scopes]);
        assert!(run.status.success(), "{}", run.stderr);
        run.stdout.trim().to_string()
    }

    /// Deploys a component file as `app` at `route`, returning its version.
    pub fn deploy_file(&self, token: &str, wasm: &Path, app: &str, route: &str) -> String {
        let wasm = wasm.display().to_string();
        let run = self.cli_as(token, &["deploy", &wasm, "--app", app, "--route", route]);
        assert!(
            run.status.success(),
            "deploy failed:\n{}\n{}",
            run.stdout,
            run.stderr
        );
        version_in(&run.stdout)
    }

    /// Deploys the app `manifest` (a `verge.toml`) describes, as the admin.
    pub fn deploy_manifest(&self, manifest: &str) {
        let app = tempfile::tempdir().expect("tempdir");
        std::fs::write(app.path().join("verge.toml"), manifest).expect("manifest");
        let run = self.cli_in(&self.admin, &["deploy"], app.path(), None);
        assert!(run.status.success(), "deploy failed:\n{}", run.stderr);
    }

    /// `GET path` on the data plane: status, body and the serving version.
    pub fn get(&self, path: &str) -> (u16, String, String) {
        let (status, body, version) = get(&self.url(), path);
        (status, body, version)
    }
}

/// The `vN` a deploy printed.
pub fn version_in(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .find(|w| w.starts_with('v') && w[1..].chars().all(|c| c.is_ascii_digit()) && w.len() > 1)
        .unwrap_or_else(|| panic!("no version in {stdout:?}"))
        .to_string()
}

/// A blocking GET with a fresh HTTP/1.0 connection (no chunked body).
pub fn get(base: &str, path: &str) -> (u16, String, String) {
    let addr = base.trim_start_matches("http://");
    let raw = match crate::support::raw_exchange(
        addr.parse().expect("address"),
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes(),
    ) {
        Ok(raw) => raw,
        Err(e) => return (0, e.to_string(), String::new()),
    };
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let version = raw
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-verge-version: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body, version)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_whole_cli_flow() {
    let g = guests();
    let plane = Plane::start();
    assert_eq!(mode(&plane.data.with_extension("token")), 0o600);
    assert!(plane.admin.starts_with("verge_"), "{}", plane.admin);
    assert!(
        !plane.verge.log().contains(&plane.admin),
        "the token is never logged"
    );

    // Login with the token on stdin, then commands without VERGE_TOKEN.
    let run = plane.cli_in(
        "",
        &["login", &plane.url(), "--token-stdin"],
        &repo(),
        Some(&plane.admin),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let creds = plane.config.path().join("credentials.toml");
    assert_eq!(mode(&creds), 0o600);
    let status = Command::new(verge_bin())
        .arg("status")
        .env("VERGE_CONFIG_DIR", plane.config.path())
        .env_remove("VERGE_TOKEN")
        .env_remove("VERGE_URL")
        .output()
        .expect("status");
    let status_out = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(status_out.contains("tenant default"), "{status_out}");

    // Deploy the hello example from its folder (build included).
    let run = plane.cli_in(
        &plane.admin,
        &["deploy"],
        &repo().join("examples/hello"),
        None,
    );
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("Deployed hello v1"), "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("{}/", plane.url())),
        "{}",
        run.stdout
    );
    assert_eq!(
        plane.get("/"),
        (200, "Hello, world!\n".to_string(), "v1".to_string())
    );

    // A second version, then a split, then rollback.
    let v2 = plane.deploy_file(&plane.admin, &g.test_programs, "hello", "/");
    assert_eq!(v2, "v2");
    assert_eq!(plane.get("/").2, "v2");
    let run = plane.cli(&["traffic", "hello", "v1=50", "v2=50"]);
    assert!(run.status.success(), "{}", run.stderr);
    let served: Vec<String> = (0..40).map(|_| plane.get("/").2).collect();
    let v1 = served.iter().filter(|v| *v == "v1").count();
    assert_eq!(
        (v1, 40 - v1),
        (20, 20),
        "a 50/50 split alternates exactly: {served:?}"
    );
    let run = plane.cli(&["rollback", "hello"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.contains("v1=100"), "{}", run.stdout);
    assert_eq!(plane.get("/").2, "v1");

    let run = plane.cli(&["versions", "hello"]);
    assert!(
        run.stdout.contains("v2") && run.stdout.contains("v1"),
        "{}",
        run.stdout
    );
    let run = plane.cli(&["apps"]);
    assert!(
        run.stdout.contains("hello") && run.stdout.contains("v1=100"),
        "{}",
        run.stdout
    );

    // Restart: same apps, no new admin token, same audit chain.
    drop(plane.verge);
    let token_file = plane.data.with_extension("token");
    let plane2 = Plane::open(&plane.data, &[]);
    assert_eq!(plane2.admin, plane.admin, "the token file is not rewritten");
    assert!(
        !plane2
            .verge
            .stdout()
            .iter()
            .any(|l| l.contains("Admin token"))
    );
    assert_eq!(plane2.get("/").2, "v1");
    let run = plane2.cli_as(&plane.admin, &["delete", "hello"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(plane2.get("/").0, 404);
    let run = plane2.cli_as(&plane.admin, &["audit"]);
    for action in [
        "token.create",
        "app.deploy",
        "app.traffic",
        "app.rollback",
        "app.delete",
    ] {
        assert!(
            run.stdout.contains(action),
            "{action} missing:\n{}",
            run.stdout
        );
    }
    let run = plane2.cli_as(&plane.admin, &["audit", "verify"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.contains("intact"), "{}", run.stdout);
    drop(token_file);
}

#[test]
fn tenants_cannot_see_or_touch_each_other() {
    let g = guests();
    let plane = Plane::start();
    let acme = plane.token("acme", "apps:read,apps:deploy,apps:delete");
    let bravo = plane.token("bravo", "apps:read,apps:deploy,apps:delete");
    plane.deploy_file(&acme, &g.hello, "shop", "/shop");

    let run = plane.cli_as(&bravo, &["apps"]);
    assert!(!run.stdout.contains("shop"), "{}", run.stdout);
    for args in [
        vec!["versions", "shop"],
        vec!["rollback", "shop", "v1"],
        vec!["traffic", "shop", "v1=100"],
        vec!["delete", "shop"],
    ] {
        let run = plane.cli_as(&bravo, &args);
        assert!(!run.status.success(), "{args:?} must fail");
        assert!(
            run.stderr.contains("no app named `shop`"),
            "{args:?}: {}",
            run.stderr
        );
    }
    // Bravo cannot take acme's traffic.
    let run = plane.cli_as(
        &bravo,
        &[
            "deploy",
            &g.hello.display().to_string(),
            "--app",
            "shop",
            "--route",
            "/shop/x",
        ],
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("another tenant"), "{}", run.stderr);
    plane.deploy_file(&bravo, &g.test_programs, "shop", "/bravo");
    assert_eq!(plane.get("/shop").1, "Hello, world!\n");
    assert_eq!(plane.get("/bravo").1, "hello from test-programs\n");
    // A read-only token cannot deploy; a revoked token is refused.
    let reader = plane.token("acme", "apps:read");
    let run = plane.cli_as(&reader, &["delete", "shop"]);
    assert!(
        run.stderr.contains("lacks the `apps:delete` scope"),
        "{}",
        run.stderr
    );
    let id = &reader["verge_".len().."verge_".len() + 16];
    assert!(plane.cli(&["tokens", "revoke", id]).status.success());
    let run = plane.cli_as(&reader, &["apps"]);
    assert_eq!(run.status.code(), Some(1));
    assert!(run.stderr.contains("not valid"), "{}", run.stderr);
    assert_eq!(plane.get("/shop").0, 200, "acme's app still serves");
}

#[test]
fn bad_deploys_leave_the_running_version_alone() {
    let g = guests();
    let plane = Plane::start_with(&["--max-upload", "100KiB"]);
    plane.deploy_file(&plane.admin, &g.hello, "app", "/");

    // Not an HTTP handler: refused by the server, naming the component.
    let run = plane.cli(&[
        "deploy",
        &g.not_a_handler.display().to_string(),
        "--app",
        "app",
    ]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("not-a-handler.wasm") && run.stderr.contains("not an HTTP handler"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("blobs"),
        "internal paths stay internal: {}",
        run.stderr
    );
    // Over the upload limit.
    let run = plane.cli(&[
        "deploy",
        &g.test_programs.display().to_string(),
        "--app",
        "app",
    ]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("upload limit"), "{}", run.stderr);
    // A broken manifest is reported with its line before anything is sent.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("verge.toml"),
        "[component.x]\nsource = \"x.wasm\"\nroutes = [\"nope\"]\n",
    )
    .expect("write");
    let run = plane.cli_in(&plane.admin, &["deploy"], dir.path(), None);
    assert_eq!(run.status.code(), Some(2));
    assert!(run.stderr.contains("verge.toml:3:"), "{}", run.stderr);
    // Wrong token, wrong server.
    let run = plane.cli_as(
        "verge_0000000000000000_0000000000000000000000000000000000000000000000000000000000000000",
        &["apps"],
    );
    assert_eq!(run.status.code(), Some(1));
    assert!(run.stderr.contains("not valid"), "{}", run.stderr);

    assert_eq!(
        plane.get("/"),
        (200, "Hello, world!\n".to_string(), "v1".to_string())
    );
    let run = plane.cli(&["versions", "app"]);
    assert_eq!(
        run.stdout.lines().count(),
        2,
        "only v1 was recorded:\n{}",
        run.stdout
    );
    let run = plane.cli(&["audit"]);
    assert!(
        run.stdout.contains("failed"),
        "failed deploys are audited:\n{}",
        run.stdout
    );
}

#[test]
fn a_hand_edited_audit_log_is_detected() {
    let g = guests();
    let plane = Plane::start();
    plane.deploy_file(&plane.admin, &g.hello, "app", "/");
    plane.cli(&["rollback", "app"]);
    plane.deploy_file(&plane.admin, &g.test_programs, "app", "/");
    assert!(plane.cli(&["audit", "verify"]).status.success());

    // Someone with file access rewrites entry 2 to hide who deployed.
    let db = rusqlite::Connection::open(plane.data.join("state.db")).expect("open");
    let key = "audit/log/0000000000000002";
    let value: Vec<u8> = db
        .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
        .expect("entry 2");
    let mut entry: serde_json::Value = serde_json::from_slice(&value).expect("json");
    entry["actor"] = serde_json::json!("someone-else");
    db.execute(
        "UPDATE kv SET value = ?1 WHERE key = ?2",
        rusqlite::params![serde_json::to_vec(&entry).expect("json"), key],
    )
    .expect("tamper");
    drop(db);

    let run = plane.cli(&["audit", "verify"]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stdout);
    assert!(run.stderr.contains("TAMPERED at entry 2"), "{}", run.stderr);
}

#[test]
fn logs_follow_an_app_and_only_that_app() {
    use std::io::BufRead;
    let g = guests();
    let plane = Plane::start();
    let acme = plane.token("acme", "apps:read,apps:deploy");
    let bravo = plane.token("bravo", "apps:read,apps:deploy");
    plane.deploy_file(&acme, &g.test_programs, "api", "/acme");
    plane.deploy_file(&bravo, &g.test_programs, "api", "/bravo");

    let mut follow = Command::new(verge_bin())
        .args(["logs", "api", "-f", "--json"])
        .env("VERGE_URL", plane.url())
        .env("VERGE_TOKEN", &acme)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("logs -f starts");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = follow.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // The follower is connected once a request's lines reach it; keep
    // sending until then.
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !lines
        .iter()
        .any(|l: &String| l.contains("guest-stderr-marker"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line arrived: {lines:?}"
        );
        get(&plane.url(), "/bravo/stdio");
        get(&plane.url(), "/acme/stdio");
        get(&plane.url(), "/acme/trap");
        while let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            lines.push(line);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let text = lines.join("\n");
    assert!(text.contains("guest-stdout-marker"), "{text}");
    assert!(text.contains("\"component\":\"test-programs\""), "{text}");
    let bravo_requests: Vec<String> = plane
        .verge
        .log()
        .lines()
        .filter(|l| l.contains("app=bravo/api"))
        .filter_map(|l| l.split("request_id=").nth(1))
        .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
        .collect();
    assert!(
        !bravo_requests.is_empty(),
        "bravo's requests are logged by the node"
    );
    for id in &bravo_requests {
        assert!(
            !text.contains(id.as_str()),
            "bravo's line {id} reached acme's follower:\n{text}"
        );
    }
    // Without -f: the recent lines, including the trap.
    let run = plane.cli_as(&acme, &["logs", "api"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.contains("guest trapped"), "{}", run.stdout);
    assert!(run.stdout.contains("guest-stdout-marker"), "{}", run.stdout);
    // Another tenant's app of the same name is not visible.
    let outsider = plane.token("other", "apps:read");
    let run = plane.cli_as(&outsider, &["logs", "api"]);
    assert!(run.stderr.contains("no app named `api`"), "{}", run.stderr);
}

#[test]
fn the_admin_token_is_shown_once_and_can_be_reissued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data").display().to_string();
    let first = Up::server(&["--data", &data]).start();
    let shown: Vec<String> = first
        .stdout()
        .into_iter()
        .filter(|l| l.starts_with("Admin token"))
        .collect();
    assert_eq!(shown.len(), 1, "{:?}", first.stdout());
    let token = shown[0].rsplit(' ').next().expect("token").to_string();
    assert!(
        !first.log().contains(&token),
        "the token never reaches the log"
    );

    // A second server on the same folder refuses to start.
    let second = Command::new(verge_bin())
        .args(["server", "--data", &data, "--listen", "127.0.0.1:0"])
        .output()
        .expect("runs");
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another verge server"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    drop(first);

    let again = Up::server(&["--data", &data]).start();
    assert!(!again.stdout().iter().any(|l| l.starts_with("Admin token")));
    drop(again);
    let reissued = Up::server(&["--data", &data, "--issue-admin-token"]).start();
    let line = reissued
        .stdout()
        .into_iter()
        .find(|l| l.starts_with("Admin token"))
        .expect("a new token is shown");
    let new_token = line.rsplit(' ').next().expect("token").to_string();
    assert_ne!(new_token, token);
    for t in [&token, &new_token] {
        let run = Command::new(verge_bin())
            .arg("status")
            .env("VERGE_URL", reissued.url(""))
            .env("VERGE_TOKEN", t)
            .env("VERGE_CONFIG_DIR", dir.path())
            .output()
            .expect("status");
        assert!(
            run.status.success(),
            "both tokens work: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
}

#[test]
fn app_names_are_checked_before_they_reach_a_url() {
    let plane = Plane::start();
    let run = plane.cli(&["delete", "x/../../tokens/0123456789abcdef"]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("invalid app name"), "{}", run.stderr);
}
