//! Secrets, variables and key-value data on `verge server`: sealed at
//! rest under the master key, write-only through the API, visible only to
//! the components that declare them, never in any log; the master key's
//! failure modes and rotation; `verge kv` for operators.

use std::path::Path;

use crate::control::Plane;
use crate::support::{Up, guests, repo, toml_path};

/// An app of two components built from `state-programs`: `/a` declares the
/// secret, the store and a variable; `/b` declares nothing.
fn write_app(dir: &Path) {
    let state = toml_path(&guests().state);
    std::fs::write(
        dir.join("verge.toml"),
        format!(
            r#"name = "vault"

[variables]
greeting = "hello"

[environments.prod.variables]
greeting = "hello from prod"

[component.a]
source = {state}
routes = ["/a"]
secrets = ["api_key"]
variables = ["greeting"]
key_value_stores = ["default"]

[component.b]
source = {state}
routes = ["/b"]
"#
        ),
    )
    .expect("manifest");
}

fn deploy(plane: &Plane, token: &str, dir: &Path, extra: &[&str]) -> crate::support::Run {
    let mut args = vec!["deploy"];
    args.extend_from_slice(extra);
    let run = plane.cli_in(token, &args, dir, None);
    assert!(
        run.status.success(),
        "deploy: {}\n{}",
        run.stdout,
        run.stderr
    );
    run
}

fn set_secret(plane: &Plane, value: &str) {
    let run = plane.cli_in(
        &plane.admin,
        &["secrets", "set", "vault", "api_key", "--raw"],
        &repo(),
        Some(value),
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(!run.stdout.contains(value) && !run.stderr.contains(value));
}

#[test]
fn secrets_reach_only_declaring_components_and_never_a_log_or_the_disk() {
    let plane = Plane::start();
    let app = tempfile::tempdir().expect("tempdir");
    write_app(app.path());
    let run = deploy(&plane, &plane.admin, app.path(), &[]);
    assert!(
        run.stderr.contains("declares secrets that are not set") && run.stderr.contains("api_key"),
        "{}",
        run.stderr
    );
    assert_eq!(plane.get("/a/config-get?key=api_key").0, 404, "not set yet");
    assert_eq!(plane.get("/a/config-get?key=greeting").1, "hello");

    // A value with NUL bytes and a marker to look for everywhere afterwards.
    let value = "SeCrEt-marker-7f3a\0with\0NULs ✓";
    set_secret(&plane, value);
    let (status, body, _) = plane.get("/a/config-get?key=api_key");
    assert_eq!((status, body.as_str()), (200, value), "declared: visible");
    assert_eq!(
        plane.get("/b/config-get?key=api_key").0,
        404,
        "undeclared: invisible"
    );
    assert_eq!(
        plane.get("/b/config-all").1,
        "",
        "undeclared: not even listed"
    );

    // Deploying again warns no more.
    let run = deploy(&plane, &plane.admin, app.path(), &["--environment", "prod"]);
    assert!(!run.stderr.contains("not set"), "{}", run.stderr);

    // The list shows the name only.
    let run = plane.cli(&["secrets", "list", "vault"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.contains("api_key"), "{}", run.stdout);

    // A 1 MiB value reaches the guest whole; one byte more is refused.
    let big = "x".repeat(1024 * 1024 - 20) + "SeCrEt-marker-7f3a-big";
    let big = &big[big.len() - 1024 * 1024..];
    set_secret(&plane, big);
    let (status, body, _) = plane.get("/a/config-get?key=api_key");
    assert_eq!((status, body.len()), (200, 1024 * 1024));
    assert_eq!(body, big);
    let run = plane.cli_in(
        &plane.admin,
        &["secrets", "set", "vault", "api_key", "--raw"],
        &repo(),
        Some(&format!("{big}y")),
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("at most 1048576 bytes"),
        "{}",
        run.stderr
    );
    set_secret(&plane, value);

    // Not UTF-8: refused (guests read strings), and the old value stays.
    let mut child = std::process::Command::new(crate::support::verge_bin())
        .args(["secrets", "set", "vault", "api_key"])
        .env("VERGE_URL", plane.url())
        .env("VERGE_TOKEN", &plane.admin)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"\xff\xfe").expect("write");
    }
    let out = child.wait_with_output().expect("exits");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be UTF-8 text"));
    assert_eq!(plane.get("/a/config-get?key=api_key").1, value);

    // Deleting makes it unset at once.
    let run = plane.cli(&["secrets", "delete", "vault", "api_key"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(plane.get("/a/config-get?key=api_key").0, 404);
    set_secret(&plane, value);

    // The audit names it without the value.
    let audit = plane.cli(&["audit"]);
    assert!(audit.stdout.contains("secret.set"), "{}", audit.stdout);

    // The marker appears in no log line of the server or any command, and
    // nowhere on disk in clear.
    let log = plane.verge.log() + &plane.verge.stdout().join("\n") + &audit.stdout + &audit.stderr;
    assert!(
        !log.contains("SeCrEt-marker"),
        "a secret leaked into the log"
    );
    for entry in walk(&plane.data) {
        let bytes = std::fs::read(&entry).expect("read");
        assert!(
            !bytes.windows(18).any(|w| w == b"SeCrEt-marker-7f3a"),
            "{} holds the secret in clear",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A data folder (in the returned temp dir) whose server has the app
/// deployed and secret `api_key` set to `value`; the server is stopped.
fn data_with_secret(value: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let plane = Plane::open(&data, &[]);
    let app = tempfile::tempdir().expect("tempdir");
    write_app(app.path());
    deploy(&plane, &plane.admin, app.path(), &[]);
    set_secret(&plane, value);
    (dir, data)
}

#[test]
fn a_missing_damaged_or_exposed_master_key_stops_the_server() {
    let (dir, data) = data_with_secret("v1");

    let key_file = data.join("master.key");
    let good = std::fs::read(&key_file).expect("key");
    let start = |what: &str| {
        let run = crate::support::run_verge(
            &[
                "server",
                "--data",
                &data.display().to_string(),
                "--listen",
                "127.0.0.1:0",
            ],
            dir.path(),
        );
        assert_eq!(run.status.code(), Some(1), "{what}: {}", run.stderr);
        assert!(!run.stdout.contains("Serving"), "{what}: it must not serve");
        run.stderr
    };
    std::fs::write(&key_file, "0123456789abcdef\n").expect("damage");
    let err = start("damaged");
    assert!(
        err.contains("master key file") && err.contains("it is damaged"),
        "{err}"
    );
    assert!(err.contains("restore it from your backup"), "{err}");

    // Right length, wrong key: it does not open the secret.
    std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).expect("replace");
    let err = start("wrong key");
    assert!(
        err.contains("secret `api_key` of app `default/vault`"),
        "{err}"
    );

    std::fs::write(&key_file, &good).expect("restore");
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let err = start("readable by others");
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");

    std::fs::remove_file(&key_file).expect("remove");
    let err = start("missing");
    assert!(
        err.contains("it is missing, but the store holds secrets"),
        "{err}"
    );
    assert!(!key_file.exists(), "no new key is made up");

    std::fs::write(&key_file, &good).expect("restore");
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let plane = Plane::open(&data, &[]);
    assert_eq!(plane.get("/a/config-get?key=api_key").1, "v1");
}

#[test]
fn rotating_the_master_key_reseals_every_secret() {
    let (_dir, data) = data_with_secret("before rotation");
    let key_file = data.join("master.key");
    let old = std::fs::read_to_string(&key_file).expect("key");

    let plane = Plane::open(&data, &["--rotate-master-key"]);
    plane
        .verge
        .wait_for_log("re-sealed secrets under the new master key");
    let new = std::fs::read_to_string(&key_file).expect("key");
    assert_ne!(old, new, "a new key replaced the old one");
    assert!(!data.join("master.key.next").exists());
    assert_eq!(plane.get("/a/config-get?key=api_key").1, "before rotation");
    let audit = plane.cli(&["audit"]);
    assert!(audit.stdout.contains("secrets.reseal"), "{}", audit.stdout);
    drop(plane);

    // The new key alone opens everything; the old one no longer does.
    let plane = Plane::open(&data, &[]);
    assert_eq!(plane.get("/a/config-get?key=api_key").1, "before rotation");
    drop(plane);

    // Keys from the environment: the new one current, the old one previous.
    let env_key = "cd".repeat(32);
    let verge = Up::server(&["--data", &data.display().to_string()])
        .env("VERGE_MASTER_KEY", &env_key)
        .env("VERGE_MASTER_KEY_PREVIOUS", new.trim())
        .start();
    verge.wait_for_log("re-sealed secrets under the new master key");
    let (_, body, _) = crate::control::get(&verge.url(""), "/a/config-get?key=api_key");
    assert_eq!(body, "before rotation");
    assert!(!verge.log().contains(&env_key), "the key is never logged");
    drop(verge);
    let verge = Up::server(&["--data", &data.display().to_string()])
        .env("VERGE_MASTER_KEY", &env_key)
        .start();
    let (_, body, _) = crate::control::get(&verge.url(""), "/a/config-get?key=api_key");
    assert_eq!(
        body, "before rotation",
        "the environment key alone suffices"
    );
}

#[test]
fn environments_select_variables_per_deploy() {
    let plane = Plane::start();
    let app = tempfile::tempdir().expect("tempdir");
    write_app(app.path());
    deploy(&plane, &plane.admin, app.path(), &["--environment", "prod"]);
    assert_eq!(plane.get("/a/config-get?key=greeting").1, "hello from prod");
    deploy(&plane, &plane.admin, app.path(), &[]);
    assert_eq!(plane.get("/a/config-get?key=greeting").1, "hello");
    let run = plane.cli_in(
        &plane.admin,
        &["deploy", "--environment", "qa"],
        app.path(),
        None,
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("has no environment `qa`; it has: prod"),
        "{}",
        run.stderr
    );
}

#[test]
fn operators_manage_key_value_data_per_tenant() {
    let plane = Plane::start();
    let app = tempfile::tempdir().expect("tempdir");
    write_app(app.path());
    deploy(&plane, &plane.admin, app.path(), &[]);

    // What the guest writes, the operator reads, and the other way round.
    let (status, ..) = plane.get("/a/kv-incr?store=default&key=visits&delta=3");
    assert_eq!(status, 200);
    let run = plane.cli(&["kv", "get", "vault", "default", "visits"]);
    assert_eq!(
        (run.status.code(), run.stdout.as_str()),
        (Some(0), "3"),
        "{}",
        run.stderr
    );
    let run = plane.cli_in(
        &plane.admin,
        &["kv", "set", "vault", "default", "greeting/ü ?&"],
        &repo(),
        Some("from stdin\0bytes"),
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        plane
            .get("/a/kv-get?store=default&key=greeting%2F%C3%BC%20%3F%26")
            .1,
        "from stdin\0bytes"
    );
    let run = plane.cli(&["kv", "list", "vault", "default"]);
    assert_eq!(run.stdout, "greeting/ü ?&\nvisits\n", "{}", run.stderr);

    // Keys a guest wrote reach the terminal escaped.
    let (status, ..) = plane.get("/a/kv-set?store=default&key=evil%0A%1B%5B2Jline");
    assert_eq!(status, 204);
    let run = plane.cli(&["kv", "list", "vault", "default"]);
    assert!(
        run.stdout.contains("evil\\n\\u{1b}[2Jline\n"),
        "{:?}",
        run.stdout
    );
    let run = plane.cli(&["kv", "delete", "vault", "default", "evil\n\u{1b}[2Jline"]);
    assert!(run.status.success(), "{}", run.stderr);

    // Only stores the app declares; names that would bend the URL are refused.
    let run = plane.cli(&["kv", "get", "vault", "undeclared", "k"]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("declares no key-value store"),
        "{}",
        run.stderr
    );
    for args in [["vault", "..", "traffic"], ["vault", "default", ".."]] {
        let mut all = vec!["kv", "get"];
        all.extend(args);
        let run = plane.cli(&all);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {}", run.stderr);
    }

    // The same app name in another tenant is another store.
    let other = plane.token("other", "apps:deploy,apps:read,kv:read,kv:write");
    let other_app = tempfile::tempdir().expect("tempdir");
    write_app(other_app.path());
    std::fs::write(
        other_app.path().join("verge.toml"),
        std::fs::read_to_string(other_app.path().join("verge.toml"))
            .expect("manifest")
            .replace("\"/a\"", "\"/other-a\"")
            .replace("\"/b\"", "\"/other-b\""),
    )
    .expect("manifest");
    deploy(&plane, &other, other_app.path(), &[]);
    let run = plane.cli_as(&other, &["kv", "get", "vault", "default", "visits"]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("has no key"), "{}", run.stderr);
    let run = plane.cli_as(&other, &["kv", "list", "vault", "default"]);
    assert_eq!(run.stdout, "", "{}", run.stderr);

    // Bad input: a key that is not UTF-8 never leaves the CLI; an empty
    // key and an oversized value are refused by the server.
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"\xff\xfe");
    let out = std::process::Command::new(crate::support::verge_bin())
        .args(["kv", "get", "vault", "default"])
        .arg(bad)
        .env("VERGE_URL", plane.url())
        .env("VERGE_TOKEN", &plane.admin)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid UTF-8"));
    let run = plane.cli(&["kv", "set", "vault", "default", "", "v"]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let big = "v".repeat(1024 * 1024 + 1);
    let run = plane.cli_in(
        &plane.admin,
        &["kv", "set", "vault", "default", "big"],
        &repo(),
        Some(&big),
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("at most 1048576 bytes"),
        "{}",
        run.stderr
    );

    let run = plane.cli(&["kv", "delete", "vault", "default", "visits"]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(plane.get("/a/kv-get?store=default&key=visits").0, 404);
    // Changes by operators are audited with the key.
    let audit = plane.cli(&["audit"]);
    assert!(audit.stdout.contains("kv.delete"), "{}", audit.stdout);
}

#[test]
fn guest_log_records_reach_verge_logs_with_their_tags() {
    let plane = Plane::start();
    let app = tempfile::tempdir().expect("tempdir");
    write_app(app.path());
    deploy(&plane, &plane.admin, app.path(), &[]);
    let (status, ..) = plane.get("/a/log?level=critical&context=payments&message=card%20declined");
    assert_eq!(status, 204);
    let run = plane.cli(&["logs", "vault"]);
    assert!(run.status.success(), "{}", run.stderr);
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("card declined"))
        .unwrap_or_else(|| panic!("no guest record in:\n{}", run.stdout));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("a@v1"), "component and version: {line}");
    assert!(line.contains("[payments] card declined"), "{line}");
    // Another tenant's token sees none of it.
    let other = plane.token("other", "apps:read");
    let run = plane.cli_as(&other, &["logs", "vault"]);
    assert!(!run.stdout.contains("card declined"));
}

#[test]
fn a_secret_typed_at_a_terminal_is_not_echoed() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::io::{Read, Write};

    let plane = Plane::start();
    let app = tempfile::tempdir().expect("tempdir");
    write_app(app.path());
    deploy(&plane, &plane.admin, app.path(), &[]);

    // `verge secrets set` on a pseudo-terminal, as when a person types.
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let tty = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().expect("utf-8"))
            .expect("open the terminal")
    };
    let mut child = std::process::Command::new(crate::support::verge_bin())
        .args(["secrets", "set", "vault", "api_key"])
        .env("VERGE_URL", plane.url())
        .env("VERGE_TOKEN", &plane.admin)
        .stdin(tty())
        .stdout(tty())
        .stderr(tty())
        .spawn()
        .expect("runs");
    let mut terminal = std::fs::File::from(master);
    let mut seen = Vec::new();
    let read_until = |seen: &mut Vec<u8>, terminal: &mut std::fs::File, needle: &[u8]| {
        let mut buf = [0u8; 1024];
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let n = terminal.read(&mut buf).expect("read the terminal");
            assert!(
                n > 0,
                "the terminal closed: {}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    };
    read_until(&mut seen, &mut terminal, b"(not shown): ");
    terminal.write_all(b"typed-s3cret\n").expect("type");
    read_until(&mut seen, &mut terminal, b"Set secret api_key of vault");
    assert!(child.wait().expect("exits").success());
    let shown = String::from_utf8_lossy(&seen);
    assert!(!shown.contains("typed-s3cret"), "echoed: {shown:?}");
    assert_eq!(plane.get("/a/config-get?key=api_key").1, "typed-s3cret");
}
