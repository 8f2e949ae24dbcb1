//! The basics of serving: hello, streaming in both directions, large
//! bodies, HTTP/2, the health endpoint and request ids.

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};

use crate::support::*;

#[tokio::test]
async fn hello_is_served_and_ready_line_is_printed_once() {
    let verge = Verge::up(&[guests().hello.to_str().expect("utf-8 path")]);
    let response = get(verge.addr, "/").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "Hello, world!\n");
    assert_eq!(response.header("content-type"), Some("text/plain"));
    let id = response.header("x-request-id").expect("request id header");
    assert_eq!(id.len(), 16, "{id}");
    // Any path is served by a component mounted at `/`.
    assert_eq!(get(verge.addr, "/some/path?q=1").await.status, 200);
    assert_eq!(
        verge.stdout(),
        vec![format!("Serving http://{}", verge.addr)]
    );
}

#[tokio::test]
async fn health_endpoint_is_answered_by_the_node() {
    let verge = Verge::up(&[guests().hello.to_str().expect("utf-8 path")]);
    let response = get(verge.addr, "/.well-known/verge/health").await;
    assert_eq!((response.status, response.text().as_str()), (200, "ok\n"));
    let unknown = get(verge.addr, "/.well-known/verge/nope").await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn streaming_echo_of_a_10_mib_body() {
    let verge = Verge::up(&[guests().test_programs.to_str().expect("utf-8 path")]);
    let data = pseudo_random(10 * 1024 * 1024, 7);
    // Sent in 64 KiB chunks with chunked transfer encoding: a stream, not one buffer.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = BodyExt::boxed(StreamBody::new(futures::stream::iter(chunks)));
    let response = send(
        verge.addr,
        http::Request::builder()
            .method("POST")
            .uri("/echo")
            .header("host", "localhost")
            .header("content-type", "application/x-test")
            .body(body)
            .expect("request"),
    )
    .await
    .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-test")
    );
    let mut stream = response.into_body().into_data_stream();
    let mut received = Vec::with_capacity(data.len());
    let mut frames = 0;
    while let Some(chunk) = stream.next().await {
        received.extend_from_slice(&chunk.expect("body chunk"));
        frames += 1;
    }
    assert_eq!(received.len(), data.len());
    assert!(received == data, "echoed bytes differ");
    assert!(
        frames > 1,
        "the response arrived in {frames} frame(s): not streamed"
    );
}

#[tokio::test]
async fn a_16_mib_streamed_response() {
    let verge = Verge::up(&[guests().test_programs.to_str().expect("utf-8 path")]);
    let response = get(verge.addr, "/big").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 16 * 1024 * 1024);
    let expected = (0..64 * 1024).map(|i| (i % 251) as u8);
    assert!(
        response.body[..64 * 1024].iter().copied().eq(expected),
        "pattern differs"
    );
    assert_eq!(
        response.body[..64 * 1024],
        response.body[16 * 1024 * 1024 - 64 * 1024..]
    );
}

#[tokio::test]
async fn http2_with_prior_knowledge() {
    let verge = Verge::up(&[guests().test_programs.to_str().expect("utf-8 path")]);
    let request = http::Request::builder()
        .uri(format!("http://{}/headers", verge.addr))
        .header("x-custom", "h2 works")
        .body(empty())
        .expect("request");
    let response = buffer(send_h2(verge.addr, request).await.expect("h2 response"))
        .await
        .expect("body");
    assert_eq!(response.status, 200);
    let text = response.text();
    assert!(text.contains("x-custom: h2 works"), "{text}");
    assert!(
        text.contains(&format!("authority={}", verge.addr)),
        "{text}"
    );
}

#[tokio::test]
async fn request_line_and_headers_reach_the_guest() {
    let verge = Verge::up(&[guests().test_programs.to_str().expect("utf-8 path")]);
    let response = buffer(
        send(
            verge.addr,
            http::Request::builder()
                .method("PUT")
                .uri("/a/b/headers?x=1&y=2")
                .header("host", "example.test:8080")
                .header("x-one", "1")
                .body(full("ignored"))
                .expect("request"),
        )
        .await
        .expect("response"),
    )
    .await
    .expect("body");
    let text = response.text();
    assert!(text.contains("method=Method::Put"), "{text}");
    assert!(text.contains("path=/a/b/headers?x=1&y=2"), "{text}");
    assert!(text.contains("authority=example.test:8080"), "{text}");
    assert!(text.contains("x-one: 1"), "{text}");
    assert_eq!(response.header("x-test"), Some("headers"));
    // Status codes chosen by the guest pass through.
    assert_eq!(get(verge.addr, "/status?code=418").await.status, 418);
}

#[test]
fn an_http_1_0_request_without_host_is_served() {
    let verge = Verge::up(&[guests().test_programs.to_str().expect("utf-8 path")]);
    let answer = raw_exchange(verge.addr, b"GET /headers HTTP/1.0\r\n\r\n").expect("answer");
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    // The guest sees the address the client connected to as the authority.
    assert!(
        answer.contains(&format!("authority={}", verge.addr)),
        "{answer}"
    );
}
