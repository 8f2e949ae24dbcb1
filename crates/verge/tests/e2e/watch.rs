//! `verge up --watch`: components are rebuilt and swapped on change, a
//! failed build or a broken component keeps the last good version serving,
//! and requests in flight during a swap finish on the version they started on.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// Replaces `to` atomically, as editors and compilers do.
fn replace(from_bytes: &[u8], to: &Path) {
    let tmp = to.with_extension("tmp-write");
    std::fs::write(&tmp, from_bytes).expect("write");
    std::fs::rename(&tmp, to).expect("rename");
}

async fn wait_for_body(verge: &Verge, path: &str, expected: &str) {
    for _ in 0..600 {
        if get(verge.addr, path).await.text() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never answered {expected:?}:\n{}", verge.log());
}

#[tokio::test]
async fn a_changed_component_file_is_swapped_in_and_a_broken_one_is_not() {
    let g = guests();
    let dir = app_dir("[component.app]\nsource = \"app.wasm\"\nroutes = [\"/\"]\n");
    let wasm = dir.path().join("app.wasm");
    std::fs::copy(&g.hello, &wasm).expect("copy");
    let verge = Up::new(&["--watch"]).dir(dir.path()).start();
    assert_eq!(get(verge.addr, "/").await.text(), "Hello, world!\n");

    replace(&std::fs::read(&g.test_programs).expect("read"), &wasm);
    wait_for_body(&verge, "/", "hello from test-programs\n").await;
    verge.wait_for_log("reloaded; new requests use the new version");

    replace(b"\0asm broken", &wasm);
    verge.wait_for_log("still serving the last good version");
    assert_eq!(
        get(verge.addr, "/").await.text(),
        "hello from test-programs\n"
    );
}

const BUILD_SCRIPT: &str = r#"
choice=$(cat which.txt)
case "$choice" in
  hello) cp "$HELLO_WASM" out.wasm ;;
  tp) cp "$TP_WASM" out.wasm ;;
  *) echo "unknown choice: $choice" >&2; exit 1 ;;
esac
"#;

fn build_app() -> tempfile::TempDir {
    let dir = app_dir(
        "[component.app]\nsource = \"out.wasm\"\nroutes = [\"/\"]\nbuild = { command = \"sh build.sh\", watch = [\"which.txt\"] }\n",
    );
    std::fs::write(dir.path().join("build.sh"), BUILD_SCRIPT).expect("script");
    std::fs::write(dir.path().join("which.txt"), "hello\n").expect("choice");
    dir
}

fn start_build_app(dir: &Path) -> Verge {
    let g = guests();
    Up::new(&["--watch"])
        .dir(dir)
        .env("HELLO_WASM", g.hello.to_str().expect("utf-8"))
        .env("TP_WASM", g.test_programs.to_str().expect("utf-8"))
        .start()
}

#[tokio::test]
async fn a_source_change_rebuilds_and_a_failed_build_keeps_the_last_good_version() {
    let dir = build_app();
    let verge = start_build_app(dir.path());
    assert_eq!(get(verge.addr, "/").await.text(), "Hello, world!\n");

    std::fs::write(dir.path().join("which.txt"), "tp\n").expect("edit");
    wait_for_body(&verge, "/", "hello from test-programs\n").await;

    std::fs::write(dir.path().join("which.txt"), "nonsense\n").expect("edit");
    verge.wait_for_log("unknown choice: nonsense");
    verge.wait_for_log("still serving the last good version");
    assert_eq!(
        get(verge.addr, "/").await.text(),
        "hello from test-programs\n"
    );
}

#[tokio::test]
async fn requests_in_flight_during_a_swap_finish_on_their_version() {
    let dir = build_app();
    std::fs::write(dir.path().join("which.txt"), "tp\n").expect("choice");
    let verge = start_build_app(dir.path());
    let addr = verge.addr;
    let slow = tokio::spawn(async move { get(addr, "/sleep?ms=2000").await });
    verge.wait_for_sleepers(1).await;
    std::fs::write(dir.path().join("which.txt"), "hello\n").expect("edit");
    wait_for_body(&verge, "/", "Hello, world!\n").await;
    let r = slow.await.expect("task");
    assert_eq!((r.status, r.text().as_str()), (200, "slept 2000ms\n"));
}

#[tokio::test]
async fn an_edited_manifest_reloads_the_app() {
    let g = guests();
    let dir = app_dir(&format!(
        "[component.app]\nsource = {}\nroutes = [\"/\"]\n",
        toml_path(&g.hello)
    ));
    let verge = Up::new(&["--watch"]).dir(dir.path()).start();
    assert_eq!(get(verge.addr, "/").await.status, 200);
    replace(
        format!(
            "[component.app]\nsource = {}\nroutes = [\"/v2\"]\n",
            toml_path(&g.hello)
        )
        .as_bytes(),
        &dir.path().join("verge.toml"),
    );
    verge.wait_for_log("manifest changed: app reloaded");
    assert_eq!(get(verge.addr, "/v2").await.status, 200);
    assert_eq!(get(verge.addr, "/").await.status, 404);
    // A broken manifest is reported and changes nothing.
    replace(b"[component.app\n", &dir.path().join("verge.toml"));
    verge.wait_for_log("manifest changed but cannot be used");
    assert_eq!(get(verge.addr, "/v2").await.status, 200);
}

#[tokio::test]
async fn a_reload_keeps_counting_requests_still_running_on_the_old_version() {
    let dir = build_app();
    std::fs::write(dir.path().join("which.txt"), "tp\n").expect("choice");
    let manifest = std::fs::read_to_string(dir.path().join("verge.toml")).expect("read");
    std::fs::write(
        dir.path().join("verge.toml"),
        format!("{manifest}limits = {{ max_concurrency = 1 }}\n"),
    )
    .expect("write");
    let verge = start_build_app(dir.path());
    let addr = verge.addr;
    let slow = tokio::spawn(async move { get(addr, "/sleep?ms=3000").await });
    verge.wait_for_sleepers(1).await;
    std::fs::write(dir.path().join("which.txt"), "hello\n").expect("edit");
    verge.wait_for_log("reloaded; new requests use the new version");
    // The old version's request still holds the only slot.
    assert_eq!(get(addr, "/").await.status, 503);
    assert_eq!(slow.await.expect("task").status, 200);
    assert_eq!(get(addr, "/").await.text(), "Hello, world!\n");
}

#[tokio::test]
async fn a_build_without_watch_globs_is_not_rerun_by_its_own_output() {
    let g = guests();
    let dir = app_dir(
        "[component.app]\nsource = \"out.wasm\"\nroutes = [\"/\"]\nbuild = { command = \"cp \\\"$HELLO_WASM\\\" out.wasm\" }\n",
    );
    let verge = Up::new(&["--watch"])
        .dir(dir.path())
        .env("HELLO_WASM", g.hello.to_str().expect("utf-8"))
        .start();
    assert_eq!(get(verge.addr, "/").await.text(), "Hello, world!\n");
    // A new file is reloaded as it is: no build runs (it would overwrite it).
    replace(
        &std::fs::read(&g.test_programs).expect("read"),
        &dir.path().join("out.wasm"),
    );
    wait_for_body(&verge, "/", "hello from test-programs\n").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = verge.log();
    let builds: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Building app") && l.contains("done in"))
        .collect();
    assert_eq!(builds.len(), 1, "{log}");
    assert_eq!(
        get(verge.addr, "/").await.text(),
        "hello from test-programs\n"
    );
}
