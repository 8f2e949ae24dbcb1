//! `verge new`: the starter app builds for wasm32-wasip2 and runs with
//! `verge up`, and the command never overwrites anything.

use crate::support::*;

#[tokio::test]
async fn the_starter_app_builds_and_serves() {
    let parent = tempfile::tempdir().expect("tempdir");
    let run = run_verge(&["new", "hello-app"], parent.path());
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.contains("cd hello-app"), "{}", run.stdout);
    let app = parent.path().join("hello-app");
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "verge.toml",
        ".gitignore",
        "README.md",
    ] {
        assert!(app.join(file).is_file(), "{file} missing");
    }
    // `verge up` runs the build command from verge.toml, then serves, even
    // for a developer whose CARGO_TARGET_DIR points elsewhere.
    let elsewhere = parent.path().join("shared-target");
    let verge = Up::new::<&str>(&[])
        .dir(&app)
        .env("CARGO_TARGET_DIR", elsewhere.to_str().expect("utf-8"))
        .start();
    let r = get(verge.addr, "/greet?x=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from hello-app! You asked for /greet?x=1\n");
}

#[test]
fn new_refuses_to_overwrite_and_checks_the_name() {
    let parent = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(parent.path().join("taken")).expect("dir");
    std::fs::write(parent.path().join("taken/keep.txt"), "mine").expect("file");
    let run = run_verge(&["new", "taken"], parent.path());
    assert_eq!(run.status.code(), Some(2));
    assert!(
        run.stderr.contains("already exists and is not empty"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(parent.path().join("taken/keep.txt")).expect("kept"),
        "mine"
    );

    let run = run_verge(&["new", "Bad_Name"], parent.path());
    assert_eq!(run.status.code(), Some(2));
    assert!(
        run.stderr.contains("invalid app name `Bad_Name`"),
        "{}",
        run.stderr
    );

    let run = run_verge(&["new", "x", "--template", "nope"], parent.path());
    assert_eq!(run.status.code(), Some(2));
    assert!(
        run.stderr.contains("http-rust"),
        "lists the templates: {}",
        run.stderr
    );
}
