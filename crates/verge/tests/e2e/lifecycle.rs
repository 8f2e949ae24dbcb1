//! Process lifecycle: graceful shutdown with requests in flight, and slow
//! clients that never finish their headers.

use std::time::Duration;

use rustix::process::Signal;

use crate::support::*;

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let verge = Verge::up(&[guests().test_programs.to_str().expect("utf-8")]);
    let addr = verge.addr;
    let in_flight: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(addr, "/sleep?ms=1500").await }))
        .collect();
    verge.wait_for_sleepers(4).await;
    verge.signal(Signal::TERM);
    verge.wait_for_log("SIGTERM received: finishing in-flight requests");
    // New connections are refused once shutdown started.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
    for r in in_flight {
        let r = r.await.expect("task");
        assert_eq!((r.status, r.text().as_str()), (200, "slept 1500ms\n"));
    }
    let log_so_far = verge.log();
    let status = verge.wait();
    assert!(status.success(), "{status}\n{log_so_far}");
}

#[tokio::test]
async fn shutdown_grace_period_bounds_the_wait() {
    let verge = Verge::up(&[
        guests().test_programs.to_str().expect("utf-8"),
        "--shutdown-grace",
        "500ms",
    ]);
    let addr = verge.addr;
    let stuck = tokio::spawn(async move {
        send(addr, request("GET", addr, "/sleep?ms=20000", empty()))
            .await
            .map(|r| r.status())
    });
    verge.wait_for_sleepers(1).await;
    verge.signal(Signal::INT);
    verge.wait_for_log("shutdown grace period of 500ms ended; closing 1 connection(s)");
    assert!(verge.wait().success());
    // The stuck request's connection was closed rather than answered.
    let outcome = stuck.await.expect("task");
    assert!(outcome.is_err(), "stuck request was answered: {outcome:?}");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let verge = Verge::up(&[
        guests().hello.to_str().expect("utf-8"),
        "--header-read-timeout",
        "1s",
    ]);
    // The server closes the connection (possibly with a 408) instead of waiting forever.
    let text = raw_exchange(verge.addr, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("the server closed the connection");
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[test]
fn a_silent_connection_is_closed_after_the_header_timeout() {
    let verge = Verge::up(&[
        guests().hello.to_str().expect("utf-8"),
        "--header-read-timeout",
        "1s",
    ]);
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let result = raw_exchange(verge.addr, opening);
        assert!(
            result.is_ok(),
            "the server never closed the connection: {result:?}"
        );
    }
}

#[test]
fn a_short_http1_request_may_take_longer_than_the_header_timeout() {
    let verge = Verge::up(&[
        guests().test_programs.to_str().expect("utf-8"),
        "--header-read-timeout",
        "500ms",
    ]);
    // 23 bytes: shorter than the HTTP/2 preface, so the request is over
    // before a naive "first 24 bytes" timer would stop.
    let answer = raw_exchange(verge.addr, b"GET /sleep HTTP/1.1\r\n\r\n").expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("slept 1000ms\n"), "{answer:?}");
}
