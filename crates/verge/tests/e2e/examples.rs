//! The examples work as the README says: `verge up examples/NAME` builds
//! the example with its manifest's build command and serves it.

use crate::support::*;

#[tokio::test]
async fn verge_up_on_the_hello_example_builds_and_serves_it() {
    let verge = Up::new(&["examples/hello"]).dir(&repo()).start();
    verge.wait_for_log("Building hello");
    let r = get(verge.addr, "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, world!\n"));
}

#[test]
fn every_example_manifest_is_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("examples")).expect("examples/") {
        let manifest = entry.expect("entry").path().join("verge.toml");
        if manifest.is_file() {
            if let Err(e) = verge_manifest::Manifest::load(&manifest) {
                panic!("{e}");
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no example has a verge.toml");
}

#[tokio::test]
async fn the_visits_example_counts_greets_and_guards_its_reset() {
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().display().to_string();
    let verge = Up::new(&["examples/visits", "--state-dir", &state_dir])
        .dir(&repo())
        .env("VERGE_SECRET_ADMIN_KEY", "letmein")
        .start();
    let addr = verge.addr;
    assert_eq!(get(addr, "/").await.text(), "Hello, visitor number 1!\n");
    assert_eq!(get(addr, "/").await.text(), "Hello, visitor number 2!\n");
    assert_eq!(get(addr, "/count").await.text(), "2\n");
    verge.wait_for_log("visit number 2");

    let reset = |key: &'static str| async move {
        let request = http::Request::builder()
            .method("POST")
            .uri("/reset")
            .header("host", addr.to_string())
            .header("authorization", format!("Bearer {key}"))
            .body(empty())
            .expect("request");
        buffer(send(addr, request).await.expect("response"))
            .await
            .expect("body")
    };
    assert_eq!(reset("guess").await.status, 401);
    verge.wait_for_log("reset refused: wrong admin key");
    assert_eq!(reset("letmein").await.status, 200);
    assert_eq!(get(addr, "/count").await.text(), "0\n");

    // The count is durable: a restart keeps it.
    get(addr, "/").await;
    drop(verge);
    let verge = Up::new(&[
        "examples/visits",
        "--state-dir",
        &state_dir,
        "--environment",
        "prod",
    ])
    .dir(&repo())
    .start();
    assert_eq!(
        get(verge.addr, "/").await.text(),
        "Welcome, visitor number 2!\n"
    );
}
