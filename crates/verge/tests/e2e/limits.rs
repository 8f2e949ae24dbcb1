//! Limits enforced by the engine: time, memory, traps, body size and
//! concurrency. After each failure the next request is served normally,
//! and the cause is logged with the request id.

use std::time::Duration;

use crate::support::*;

fn tp() -> String {
    guests().test_programs.display().to_string()
}

#[tokio::test]
async fn a_looping_guest_is_cut_off_while_another_component_keeps_answering() {
    let g = guests();
    let dir = app_dir(&format!(
        r#"
[component.tp]
source = {tp}
routes = ["/tp"]
limits = {{ timeout = "2s" }}

[component.hello]
source = {hello}
routes = ["/"]
"#,
        tp = toml_path(&g.test_programs),
        hello = toml_path(&g.hello),
    ));
    let verge = Up::new::<&str>(&[]).dir(dir.path()).start();
    let addr = verge.addr;

    // Two loops, as many as this machine has cores.
    let loops: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "/tp/loop").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While they spin, the other component answers every request.
    for _ in 0..20 {
        let r = get(addr, "/").await;
        assert_eq!(r.text(), "Hello, world!\n");
    }
    for l in loops {
        let r = l.await.expect("task");
        assert_eq!(r.status, 504, "{}", r.text());
        assert!(
            r.text().contains("did not finish within 2s"),
            "{}",
            r.text()
        );
        let id = r.header("x-request-id").expect("id").to_string();
        verge.wait_for_log(&format!(
            "request cut off: no response within 2s request_id={id}"
        ));
    }
    assert_eq!(
        get(addr, "/tp/").await.status,
        200,
        "the component still serves"
    );
}

#[tokio::test]
async fn a_guest_sleeping_in_the_host_is_cut_off_too() {
    let verge = Verge::up(&[tp().as_str(), "--timeout", "1s"]);
    let r = get(verge.addr, "/sleep?ms=5000").await;
    assert_eq!(r.status, 504);
    assert_eq!(get(verge.addr, "/sleep?ms=10").await.status, 200);
}

#[tokio::test]
async fn a_memory_bomb_gets_500_and_the_next_request_is_fine() {
    let verge = Verge::up(&[tp().as_str(), "--memory", "32MiB"]);
    let r = get(verge.addr, "/bomb").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains("exceeded its memory limit"),
        "{}",
        r.text()
    );
    // (Waiting for the line itself: another line of the same request may
    // be logged first.)
    verge.wait_for_log("guest exceeded its memory limit of 33554432 bytes");
    let id = r.header("x-request-id").expect("id").to_string();
    assert!(verge.log().lines().any(|l| {
        l.contains("guest exceeded its memory limit") && l.contains(&format!("request_id={id}"))
    }));
    // Under the cap is fine, over it is not.
    assert_eq!(get(verge.addr, "/alloc?mb=16").await.status, 200);
    assert_eq!(get(verge.addr, "/alloc?mb=40").await.status, 500);
    assert_eq!(get(verge.addr, "/").await.status, 200);
}

#[tokio::test]
async fn a_trap_gets_500_with_the_cause_logged() {
    let verge = Verge::up(&[tp().as_str()]);
    let r = get(verge.addr, "/trap").await;
    assert_eq!(r.status, 500);
    // The client learns nothing about the guest's internals.
    assert!(!r.text().contains("unreachable"), "{}", r.text());
    let id = r.header("x-request-id").expect("id").to_string();
    verge.wait_for_log(&format!(
        "guest trapped: wasm trap: wasm `unreachable` instruction executed request_id={id}"
    ));
    // The guest's panic message reached the log through its stderr.
    verge.wait_for_log("test-programs: trap requested");
    assert_eq!(get(verge.addr, "/").await.status, 200);
}

#[tokio::test]
async fn a_guest_that_never_responds_gets_500() {
    let verge = Verge::up(&[tp().as_str()]);
    let r = get(verge.addr, "/no-response").await;
    assert_eq!(r.status, 500);
    verge.wait_for_log("the guest returned without setting a response");
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let verge = Verge::up(&[tp().as_str(), "--max-request-body", "1MiB"]);
    // Declared too large: refused before the guest runs.
    let r = post(verge.addr, "/consume", full(vec![0u8; 1024 * 1024 + 1])).await;
    assert_eq!(r.status, 413, "{}", r.text());
    verge.wait_for_log(
        "request rejected: request body of 1048577 bytes exceeds the limit of 1048576 bytes",
    );
    // Streamed without a length: cut off while the guest reads it.
    let chunks: Vec<Result<http_body::Frame<bytes::Bytes>, std::io::Error>> = (0..40)
        .map(|_| {
            Ok(http_body::Frame::data(bytes::Bytes::from(vec![
                1u8;
                64 * 1024
            ])))
        })
        .collect();
    let stream = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(
        futures::stream::iter(chunks),
    ));
    let r = post(verge.addr, "/consume", stream).await;
    assert_eq!(r.status, 413, "{}", r.text());
    // At the limit is fine.
    let r = post(verge.addr, "/consume", full(vec![0u8; 1024 * 1024])).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "received 1048576 bytes\n")
    );
    // A malformed length is a client error, not a crash.
    let answer = raw_exchange(
        verge.addr,
        b"POST /consume HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n",
    )
    .expect("answer");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(get(verge.addr, "/").await.status, 200);
}

#[tokio::test]
async fn over_the_concurrency_cap_gets_503_with_retry_after() {
    let verge = Verge::up(&[tp().as_str(), "--max-concurrency", "1"]);
    let addr = verge.addr;
    // The slow request may itself lose the race for the slot to one of the
    // probes below: it retries until it holds it.
    let slow = tokio::spawn(async move {
        loop {
            let r = get(addr, "/sleep?ms=3000").await;
            if r.status != 503 {
                return r;
            }
        }
    });
    // Wait until the slow request holds the only slot.
    let mut rejected = None;
    for _ in 0..300 {
        let r = get(addr, "/").await;
        if r.status == 503 {
            rejected = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = rejected.expect("a request was rejected while the slot was taken");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(slow.await.expect("task").status, 200);
    assert_eq!(get(addr, "/").await.status, 200, "the slot is free again");
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_keep_the_instance() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let verge = Verge::up(&[tp().as_str(), "--max-concurrency", "1", "--timeout", "2s"]);
    // An HTTP/2 client that grants no flow-control window: the response head
    // arrives, but not one byte of the body can be sent.
    let stream = tokio::net::TcpStream::connect(verge.addr)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let stalled = sender
        .send_request(
            http::Request::builder()
                .uri(format!("http://{}/big?size=1048576", verge.addr))
                .body(empty())
                .expect("request"),
        )
        .await
        .expect("response head");
    assert_eq!(stalled.status(), 200);
    // The guest is cut off at its deadline and its slot freed, even though
    // nobody can poll its response body.
    let mut answered = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if get(verge.addr, "/").await.status == 200 {
            answered = true;
            break;
        }
    }
    assert!(answered, "the slot was never freed:\n{}", verge.log());
    drop(stalled);
}

#[tokio::test]
async fn a_guest_that_loops_after_its_response_started_moves_to_the_slow_lane() {
    let verge = Verge::up(&[tp().as_str(), "--timeout", "2s"]);
    let r = send(
        verge.addr,
        request("GET", verge.addr, "/stream-loop", empty()),
    )
    .await
    .expect("response head");
    assert_eq!(r.status(), 200);
    let id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("id")
        .to_string();
    verge.wait_for_log(&format!("guest moved to the slow lane request_id={id}"));
    // The body is cut off at the deadline, not completed.
    assert!(
        buffer(r).await.is_err(),
        "a looping guest's response looked complete"
    );
    verge.wait_for_log(&format!(
        "guest failed after its response started: timed out after 2s request_id={id}"
    ));
    assert_eq!(get(verge.addr, "/").await.status, 200);
}

#[tokio::test]
async fn a_guest_keeps_working_after_a_complete_response_and_its_failure_is_logged() {
    let verge = Verge::up(&[tp().as_str()]);
    let r = get(verge.addr, "/respond-then-trap").await;
    assert_eq!((r.status, r.text().as_str()), (200, "done\n"));
    let id = r.header("x-request-id").expect("id").to_string();
    verge.wait_for_log("test-programs: trap after the response");
    verge.wait_for_log(&format!(
        "guest failed after its response started: guest trapped: wasm trap: wasm `unreachable` instruction executed request_id={id}"
    ));
}
