//! Outbound HTTP from guests: denied unless the host is allowed, and the
//! denial is an error inside the guest, never a host failure.

use crate::support::*;

#[tokio::test]
async fn allowed_host_is_reachable_and_others_are_denied() {
    let upstream = Verge::up(&[guests().hello.to_str().expect("utf-8")]);
    let other = Verge::up(&[guests().hello.to_str().expect("utf-8")]);
    let verge = Verge::up(&[
        guests().test_programs.to_str().expect("utf-8"),
        "--allow-outbound",
        &format!("127.0.0.1:{}", upstream.addr.port()),
    ]);

    let ok = get(
        verge.addr,
        &format!("/outbound?url=http://{}/", upstream.addr),
    )
    .await;
    assert_eq!(
        (ok.status, ok.text().as_str()),
        (200, "upstream 200: Hello, world!\n")
    );

    // Same host, other port: denied.
    let denied = get(verge.addr, &format!("/outbound?url=http://{}/", other.addr)).await;
    assert_eq!(denied.status, 502);
    assert_eq!(
        denied.text(),
        "outbound refused: ErrorCode::HttpRequestDenied\n"
    );
    verge.wait_for_log(&format!(
        "outbound request denied: host not in allowed_outbound_hosts request_id={}",
        denied.header("x-request-id").expect("id")
    ));

    // Other host names are denied without any network access.
    let denied = get(verge.addr, "/outbound?url=https://example.com/").await;
    assert_eq!(denied.status, 502);
}

#[tokio::test]
async fn without_any_allowed_host_everything_is_denied() {
    let upstream = Verge::up(&[guests().hello.to_str().expect("utf-8")]);
    let verge = Verge::up(&[guests().test_programs.to_str().expect("utf-8")]);
    let denied = get(
        verge.addr,
        &format!("/outbound?url=http://{}/", upstream.addr),
    )
    .await;
    assert_eq!(
        denied.text(),
        "outbound refused: ErrorCode::HttpRequestDenied\n"
    );
}

#[tokio::test]
async fn manifest_allowlist_applies_per_component() {
    let upstream = Verge::up(&[guests().hello.to_str().expect("utf-8")]);
    let tp = toml_path(&guests().test_programs);
    let dir = app_dir(&format!(
        r#"
[component.allowed]
source = {tp}
routes = ["/allowed"]
allowed_outbound_hosts = ["http://127.0.0.1:{port}"]

[component.denied]
source = {tp}
routes = ["/denied"]
"#,
        port = upstream.addr.port()
    ));
    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();
    let url = format!("url=http://{}/", upstream.addr);
    assert_eq!(
        get(verge.addr, &format!("/allowed/outbound?{url}"))
            .await
            .status,
        200
    );
    assert_eq!(
        get(verge.addr, &format!("/denied/outbound?{url}"))
            .await
            .status,
        502
    );
    // `https://` only: plain http to the same host is refused.
    let dir2 = app_dir(&format!(
        "[component.a]\nsource = {tp}\nroutes = [\"/\"]\nallowed_outbound_hosts = [\"https://127.0.0.1:{}\"]\n",
        upstream.addr.port()
    ));
    let strict = Up::new::<&str>(&[]).dir(dir2.path()).start();
    assert_eq!(
        get(strict.addr, &format!("/outbound?{url}")).await.status,
        502
    );
}

#[tokio::test]
async fn an_allowed_upstream_that_is_gone_is_an_error_inside_the_guest() {
    let gone = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = gone.local_addr().expect("addr").port();
    drop(gone);
    let verge = Verge::up(&[
        guests().test_programs.to_str().expect("utf-8"),
        "--allow-outbound",
        &format!("127.0.0.1:{port}"),
    ]);
    let r = get(
        verge.addr,
        &format!("/outbound?url=http://127.0.0.1:{port}/"),
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "outbound refused: ErrorCode::ConnectionRefused\n");
    assert_eq!(get(verge.addr, "/").await.status, 200);
}

#[tokio::test]
async fn outbound_connections_per_request_are_capped() {
    let upstream = Verge::up(&[guests().hello.to_str().expect("utf-8")]);
    let verge = Verge::up(&[
        guests().test_programs.to_str().expect("utf-8"),
        "--allow-outbound",
        &format!("127.0.0.1:{}", upstream.addr.port()),
    ]);
    let r = get(
        verge.addr,
        &format!("/fanout?n=20&url=http://{}/", upstream.addr),
    )
    .await;
    assert_eq!(
        r.text(),
        "ok=16 errors=[\"ErrorCode::ConnectionLimitReached\"]\n"
    );
    verge.wait_for_log("outbound request refused: too many connections open");
    // The slots come back when the connections close.
    let r = get(
        verge.addr,
        &format!("/fanout?n=16&url=http://{}/", upstream.addr),
    )
    .await;
    assert_eq!(r.text(), "ok=16 errors=[]\n");
}
