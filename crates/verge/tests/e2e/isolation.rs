//! Deny-by-default WASI: no host environment, no files, no sockets; guest
//! output goes to the log tagged with the request id; every request gets a
//! fresh instance.

use crate::support::*;

#[tokio::test]
async fn guests_see_only_the_environment_they_are_given() {
    let verge = Up::new(&[
        guests().test_programs.to_str().expect("utf-8"),
        "--env",
        "GREETING=hi there",
        "--env",
        "EMPTY=",
    ])
    .env("VERGE_HOST_SECRET", "must-not-leak")
    .start();
    let text = get(verge.addr, "/env").await.text();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["EMPTY=", "GREETING=hi there"]);
}

#[tokio::test]
async fn no_directory_is_preopened_and_no_socket_is_allowed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("addr");
    let verge = Verge::up(&[guests().test_programs.to_str().expect("utf-8")]);
    let fs = get(verge.addr, "/fs").await.text();
    assert!(fs.starts_with("preopens=0 read=error:"), "{fs}");
    let socket = get(verge.addr, &format!("/socket?addr={target}"))
        .await
        .text();
    assert!(socket.starts_with("error:"), "{socket}");
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(
        listener.accept().is_err(),
        "the guest reached the host socket"
    );
}

#[tokio::test]
async fn guest_output_is_logged_with_the_request_id() {
    let verge = Verge::up(&[guests().test_programs.to_str().expect("utf-8")]);
    let r = get(verge.addr, "/stdio").await;
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").expect("id").to_string();
    verge.wait_for_log(&format!(
        "guest-stdout-marker request_id={id} app=test-programs component=test-programs stream=\"stdout\""
    ));
    verge.wait_for_log(&format!(
        "guest-stderr-marker request_id={id} app=test-programs component=test-programs stream=\"stderr\""
    ));
    // Nothing a guest prints reaches stdout, which belongs to the `Serving` line.
    assert_eq!(verge.stdout().len(), 1);
}

#[tokio::test]
async fn each_request_gets_a_fresh_instance() {
    // The guest counts requests in a static: an instance that served a
    // request before would answer more than 1.
    let verge = Verge::up(&[guests().test_programs.to_str().expect("utf-8")]);
    for _ in 0..20 {
        let response = get(verge.addr, "/count").await;
        assert_eq!((response.status, response.text()), (200, "1\n".to_string()));
    }
}
