//! Bad input gets a clear error naming the file (and line and column) and
//! what to do, exits with code 2, and binds no port: each case below holds
//! the port it passes with `--listen`, so a bind attempt would fail with a
//! different error.

use std::net::TcpListener;
use std::path::Path;

use crate::support::*;

struct Refused {
    stderr: String,
    stdout: String,
}

/// Runs `verge up ARGS --listen <held port>` in `dir` and checks it was
/// refused as bad input.
fn refused(dir: &Path, args: &[&str]) -> Refused {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = held.local_addr().expect("addr").to_string();
    let mut all = vec!["up"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--listen", &listen]);
    let run = run_verge(&all, dir);
    assert_eq!(run.status.code(), Some(2), "stderr:\n{}", run.stderr);
    assert!(!run.stdout.contains("Serving"), "{}", run.stdout);
    assert!(!run.stderr.contains("cannot listen"), "{}", run.stderr);
    Refused {
        stderr: run.stderr,
        stdout: run.stdout,
    }
}

fn manifest_refused(manifest: &str) -> String {
    let dir = app_dir(manifest);
    refused(dir.path(), &[]).stderr
}

/// Serves a component file holding `bytes`, which must be refused.
fn component_refused(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(name), bytes).expect("write");
    refused(dir.path(), &[name]).stderr
}

#[test]
fn manifest_syntax_error() {
    let err = manifest_refused("name = \"x\"\n[component.a\nsource = \"a.wasm\"\n");
    assert!(err.contains("error: unclosed table, expected `]`"), "{err}");
    assert!(err.contains("--> verge.toml:2:13"), "{err}");
    assert!(err.contains("2 | [component.a"), "{err}");
}

#[test]
fn manifest_unknown_field() {
    let err = manifest_refused(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\nmemory = \"1MiB\"\n",
    );
    assert!(err.contains("unknown field `memory`"), "{err}");
    assert!(err.contains("--> verge.toml:4:1"), "{err}");
    assert!(
        err.contains("help: remove the field or fix its spelling"),
        "{err}"
    );
}

#[test]
fn manifest_bad_duration() {
    let err = manifest_refused(
        "[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\nlimits = { timeout = \"ten seconds\" }\n",
    );
    assert!(
        err.contains("invalid `timeout`: `ten seconds` is not a duration"),
        "{err}"
    );
    assert!(err.contains("--> verge.toml:4:22"), "{err}");
}

#[test]
fn manifest_route_conflict() {
    let tp = toml_path(&guests().test_programs);
    let err = manifest_refused(&format!(
        "[component.a]\nsource = {tp}\nroutes = [\"/api\"]\n[component.b]\nsource = {tp}\nroutes = [\"/api/\"]\n"
    ));
    assert!(
        err.contains("route `/api` is already served by component `a`"),
        "{err}"
    );
    assert!(err.contains("--> verge.toml:6:11"), "{err}");
}

#[test]
fn manifest_missing_component_file() {
    let err =
        manifest_refused("[component.a]\nsource = \"build/missing.wasm\"\nroutes = [\"/\"]\n");
    assert!(err.contains("component `a`: file `"), "{err}");
    assert!(err.contains("build/missing.wasm` does not exist"), "{err}");
    assert!(err.contains("--> verge.toml:2:10"), "{err}");
}

#[test]
fn missing_manifest_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = refused(dir.path(), &[]).stderr;
    assert!(err.contains("no verge.toml in this folder"), "{err}");
    assert!(err.contains("verge new NAME"), "{err}");
    let err = refused(dir.path(), &["nothing-here.wasm"]).stderr;
    assert!(err.contains("`nothing-here.wasm` does not exist"), "{err}");
}

#[test]
fn a_file_that_is_not_wasm() {
    let err = component_refused("junk.wasm", b"this is not webassembly");
    assert!(
        err.contains("`junk.wasm` is not a valid WebAssembly component"),
        "{err}"
    );
    assert!(err.contains("magic bytes"), "{err}");
}

#[test]
fn a_truncated_component() {
    let bytes = std::fs::read(&guests().hello).expect("read");
    let err = component_refused("cut.wasm", &bytes[..bytes.len() / 2]);
    assert!(
        err.contains("`cut.wasm` is not a valid WebAssembly component"),
        "{err}"
    );
}

#[test]
fn a_core_module_instead_of_a_component() {
    let err = component_refused("core.wasm", b"\0asm\x01\0\0\0");
    assert!(
        err.contains("`core.wasm` is a core WebAssembly module, not a component"),
        "{err}"
    );
    assert!(err.contains("wasm32-wasip2"), "{err}");
}

#[test]
fn a_component_that_is_not_an_http_handler() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = guests().not_a_handler.to_str().expect("utf-8").to_string();
    let err = refused(dir.path(), &[&path]).stderr;
    assert!(
        err.contains("not-a-handler.wasm` is not an HTTP handler: it exports `wasi:cli/run@0.2."),
        "{err}"
    );
    assert!(
        err.contains("instead of `wasi:http/incoming-handler@0.2.x`"),
        "{err}"
    );
}

#[test]
fn a_failing_build_shows_its_output() {
    let dir = app_dir(
        "[component.a]\nsource = \"out.wasm\"\nroutes = [\"/\"]\nbuild = { command = \"echo compiling things; echo 'error: the build broke' >&2; exit 3\" }\n",
    );
    let r = refused(dir.path(), &[]);
    assert!(
        r.stderr
            .contains("build of component `a` failed (exit status: 3)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("| error: the build broke"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("| compiling things"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
}

#[test]
fn a_build_that_produces_nothing() {
    let dir = app_dir(
        "[component.a]\nsource = \"out.wasm\"\nroutes = [\"/\"]\nbuild = { command = \"true\" }\n",
    );
    let err = refused(dir.path(), &[]).stderr;
    assert!(err.contains("out.wasm` does not exist"), "{err}");
    assert!(
        err.contains("the build command ran but did not produce this file"),
        "{err}"
    );
}

#[test]
fn bad_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hello = guests().hello.to_str().expect("utf-8").to_string();
    for (flag, value, expected) in [
        ("--timeout", "30", "has no unit"),
        ("--timeout", "1000000000y", "at most 24h"),
        ("--memory", "lots", "is not a size"),
        ("--memory", "8GiB", "between 64KiB and 4GiB"),
        ("--env", "NOEQUALS", "is not KEY=VALUE"),
        (
            "--allow-outbound",
            "http://x.org/path",
            "not a URL with a path",
        ),
    ] {
        let err = refused(dir.path(), &[&hello, flag, value]).stderr;
        assert!(err.contains(expected), "{flag} {value}: {err}");
    }
}

/// `verge server` checks every flag before it binds a port, as `verge up`
/// does: with both its ports held, a bad flag is still reported as bad
/// input (exit 2), never as a port in use, and nothing is written.
#[test]
fn server_flags_are_checked_before_any_port_is_bound() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = held.local_addr().expect("addr").to_string();
    let held_admin = TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = held_admin.local_addr().expect("addr").to_string();
    let cluster = ["--cluster", "nats://127.0.0.1:9"];
    for (flags, expected) in [
        (
            &[&cluster[..], &["--node-name", "Not_A_Name"]].concat(),
            "--node-name `Not_A_Name`",
        ),
        (
            &[&cluster[..], &["--heartbeat", "10ms"]].concat(),
            "--heartbeat must be between",
        ),
        (
            &[&cluster[..], &["--advertise", "http://0.0.0.0:8080"]].concat(),
            "unspecified address",
        ),
        (
            &[&cluster[..], &["--advertise", "nats://node-a:4222"]].concat(),
            "it must start with http://",
        ),
        (
            &[&cluster[..], &["--advertise", "http://node-a:8080/v1"]].concat(),
            "must not have a path",
        ),
        (
            &[&cluster[..], &["--advertise", "not a url"]].concat(),
            "is not a URL",
        ),
        (
            &[&cluster[..], &["--advertise", "https://node-a:8080"]].concat(),
            "nodes do not reach each other over TLS yet",
        ),
        (
            &[&cluster[..], &["--advertise", "http://node-a:0"]].concat(),
            "port 0",
        ),
        (
            &[&cluster[..], &["--cluster-replicas", "2"]].concat(),
            "1, 3 or 5 replicas",
        ),
        (
            &vec!["--cluster", "http://user:secret@nats-a:4222"],
            "is not a NATS URL",
        ),
        (
            &[&cluster[..], &["--nats-ca", "/nonexistent/ca.pem"]].concat(),
            "--nats-ca `/nonexistent/ca.pem` is not a file",
        ),
        (
            &vec!["--otlp-endpoint", "collector:4318"],
            "--otlp-endpoint",
        ),
    ] {
        let data = tempfile::tempdir().expect("tempdir");
        let data_path = data.path().join("data");
        let mut args = vec!["server", "--data", data_path.to_str().expect("utf-8")];
        args.extend_from_slice(&["--listen", &listen, "--admin-listen", &admin]);
        args.extend_from_slice(flags);
        let run = run_verge(&args, data.path());
        let shown = format!("{flags:?}\nstdout: {}\nstderr: {}", run.stdout, run.stderr);
        assert_eq!(run.status.code(), Some(2), "{shown}");
        assert!(run.stderr.contains(expected), "{shown}");
        assert!(!run.stderr.contains("cannot listen"), "{shown}");
        assert!(
            !run.stderr.contains("secret"),
            "credentials in a message: {shown}"
        );
        assert!(run.stdout.is_empty(), "{shown}");
        assert!(
            !data_path.exists(),
            "a refused start created its data folder: {shown}"
        );
    }
}

#[test]
fn a_build_that_leaves_a_process_behind_does_not_hang() {
    let dir = app_dir(&format!(
        "[component.a]\nsource = \"out.wasm\"\nroutes = [\"/\"]\nbuild = {{ command = \"sleep 300 & cp {} out.wasm\" }}\n",
        guests().hello.display()
    ));
    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();
    verge.wait_for_log("done in");
}

#[test]
fn a_port_in_use_is_a_clear_runtime_error() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let hello = guests().hello.to_str().expect("utf-8").to_string();
    let run = run_verge(&["up", &hello, "--listen", &addr], dir.path());
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("error: cannot listen on {addr}")),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
}
