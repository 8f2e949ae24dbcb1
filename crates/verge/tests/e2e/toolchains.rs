//! Components from other toolchains run unmodified: a Python handler built
//! with componentize-py imports all of WASI 0.2 (filesystem, sockets, cli)
//! and still gets nothing the manifest does not grant.

use crate::support::*;

#[tokio::test]
async fn a_componentize_py_handler_runs_with_deny_by_default_wasi() {
    let verge = Up::new(&[
        guests().python.to_str().expect("utf-8"),
        "--env",
        "MODE=test",
    ])
    .env("VERGE_HOST_ONLY", "secret")
    .start();
    let r = get(verge.addr, "/py?x=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let text = r.text();
    assert!(
        text.starts_with("Hello from Python! path=/py?x=1\n"),
        "{text}"
    );
    assert!(
        text.contains("env=[MODE=test]\n"),
        "only the given variable: {text}"
    );
    assert!(text.contains("files=denied"), "{text}");
    assert!(text.contains("socket=denied"), "{text}");
    // A second request gets a fresh instance and works the same.
    assert_eq!(get(verge.addr, "/py?x=2").await.status, 200);
}
