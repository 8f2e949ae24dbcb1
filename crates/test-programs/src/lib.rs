//! `test-programs`: one wasi:http component whose behaviour is chosen by the
//! request path, so the end-to-end tests can exercise every host feature
//! (streaming, limits, traps, outbound calls, WASI deny-by-default) with a
//! single build. Each route is documented on its handler.

use std::io::{Read, Write};

use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct Guest;

wasip2::http::proxy::export!(Guest);

impl wasip2::exports::http::incoming_handler::Guest for Guest {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = match path_with_query.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (path_with_query.clone(), String::new()),
        };
        // Routes may be mounted under a prefix (`/tp/...`): dispatch on the last segment.
        let route = path.rsplit('/').next().unwrap_or("").to_string();
        match route.as_str() {
            "echo" => echo(request, out),
            "consume" => consume(request, out),
            "big" => big(&query, out),
            "loop" => spin_forever(),
            "stream-loop" => stream_then_spin(out),
            "respond-then-trap" => respond_then_trap(out),
            "sleep" => sleep(&query, out),
            "burn" => burn(&query, out),
            "bomb" => memory_bomb(),
            "alloc" => alloc(&query, out),
            "trap" => panic!("test-programs: trap requested"),
            "outbound" => outbound(&query, out),
            "fanout" => fanout(&query, out),
            "env" => env(out),
            "stdio" => stdio(out),
            "fs" => fs(out),
            "socket" => socket(&query, out),
            "headers" => headers(&request, &path_with_query, out),
            "status" => status(&query, out),
            "count" => count(out),
            "no-response" => {}
            _ => respond(
                out,
                200,
                &[("content-type", "text/plain")],
                b"hello from test-programs\n",
            ),
        }
    }
}

/// Requests this instance has handled, itself included: always 1 when
/// every request gets a fresh instance.
static HANDLED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// `/count`: answers how many requests this instance has handled.
fn count(out: ResponseOutparam) {
    let n = HANDLED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    respond(
        out,
        200,
        &[("content-type", "text/plain")],
        format!("{n}\n").as_bytes(),
    );
}

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, &value.as_bytes().to_vec())
            .expect("valid header");
    }
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = outgoing.write().expect("stream");
    stream.write_all(body).expect("write body");
    stream.flush().expect("flush body");
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finish body");
}

/// `/echo`: streams the request body back chunk by chunk without buffering it.
fn echo(request: IncomingRequest, out: ResponseOutparam) {
    let headers = Fields::new();
    if let Some(ct) = request.headers().get("content-type").into_iter().next() {
        headers.append("content-type", &ct).expect("header");
    }
    let response = OutgoingResponse::new(headers);
    let outgoing = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let incoming = request.consume().expect("consume");
    let mut input = incoming.stream().expect("input stream");
    let mut output = outgoing.write().expect("output stream");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match Read::read(&mut input, &mut buf) {
            Ok(0) => break,
            Ok(n) => output.write_all(&buf[..n]).expect("write"),
            Err(e) => {
                eprintln!("echo: request body failed: {e}");
                return;
            }
        }
    }
    output.flush().expect("flush");
    drop(output);
    drop(input);
    OutgoingBody::finish(outgoing, None).expect("finish");
}

/// `/consume`: reads the whole request body first, then answers with its length.
fn consume(request: IncomingRequest, out: ResponseOutparam) {
    let incoming = request.consume().expect("consume");
    let mut input = incoming.stream().expect("input stream");
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match Read::read(&mut input, &mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => {
                return respond(
                    out,
                    400,
                    &[],
                    format!("body failed after {total} bytes: {e}\n").as_bytes(),
                );
            }
        }
    }
    respond(
        out,
        200,
        &[],
        format!("received {total} bytes\n").as_bytes(),
    );
}

/// `/big?size=N`: streams N bytes (default 16 MiB) of a repeating pattern.
fn big(query: &str, out: ResponseOutparam) {
    let size: usize = param(query, "size")
        .and_then(|s| s.parse().ok())
        .unwrap_or(16 * 1024 * 1024);
    let fields = Fields::new();
    fields
        .append("content-type", &b"application/octet-stream".to_vec())
        .expect("header");
    let response = OutgoingResponse::new(fields);
    let outgoing = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = outgoing.write().expect("stream");
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n]).expect("write");
        left -= n;
    }
    stream.flush().expect("flush");
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finish");
}

/// `/loop`: never returns; the host's epoch deadline must cut it off.
fn spin_forever() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// `/stream-loop`: sends the response head and a first line, then never returns.
fn stream_then_spin(out: ResponseOutparam) -> ! {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = body.write().expect("stream");
    stream.write_all(b"started\n").expect("write");
    stream.flush().expect("flush");
    spin_forever()
}

/// `/respond-then-trap`: answers "done" with a Content-Length, keeps working
/// for a moment after the response is complete, then traps.
fn respond_then_trap(out: ResponseOutparam) {
    let fields = Fields::new();
    fields.append("content-length", b"5").expect("valid header");
    let response = OutgoingResponse::new(fields);
    let outgoing = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("stream");
    let _ = stream.blocking_write_and_flush(b"done\n");
    // Once the declared length is out the host may close the stream at
    // any moment (the client has the whole response): later errors are
    // expected and not what this route is about.
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
    wasip2::clocks::monotonic_clock::subscribe_duration(200_000_000).block();
    panic!("test-programs: trap after the response");
}

/// `/sleep?ms=N`: waits N milliseconds on the host clock, then answers.
fn sleep(query: &str, out: ResponseOutparam) {
    let ms: u64 = param(query, "ms")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    // Tests wait for this line to know the request is inside the guest.
    println!("sleep started");
    wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
    respond(out, 200, &[], format!("slept {ms}ms\n").as_bytes());
}

/// `/burn?iters=N`: spins through N rounds of integer arithmetic (pure CPU,
/// no host calls) and answers with the result, so tests can bill a known
/// amount of CPU.
fn burn(query: &str, out: ResponseOutparam) {
    let iters: u64 = param(query, "iters")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..iters {
        x = std::hint::black_box(x.rotate_left(7) ^ i).wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    respond(out, 200, &[], format!("burned {iters}: {x:x}\n").as_bytes());
}

/// `/bomb`: allocates and touches memory until the host refuses to grow it.
fn memory_bomb() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 4 * 1024 * 1024]);
        std::hint::black_box(&hoard);
    }
}

/// `/alloc?mb=N`: allocates N MiB, touches it, and answers with its size.
fn alloc(query: &str, out: ResponseOutparam) {
    let mb: usize = param(query, "mb").and_then(|s| s.parse().ok()).unwrap_or(1);
    let v = vec![7u8; mb * 1024 * 1024];
    let sum: usize = v.iter().step_by(4096).map(|b| *b as usize).sum();
    respond(
        out,
        200,
        &[],
        format!("allocated {mb} MiB ({sum})\n").as_bytes(),
    );
}

/// `/outbound?url=http://host:port/path`: performs a GET and relays the result.
/// A refused call answers 502 with the wasi:http error code in the body.
fn outbound(query: &str, out: ResponseOutparam) {
    let Some(url) = param(query, "url") else {
        return respond(out, 400, &[], b"missing url parameter\n");
    };
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((_, rest)) => (Scheme::Http, rest),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Get).expect("method");
    request.set_scheme(Some(&scheme)).expect("scheme");
    request.set_authority(Some(authority)).expect("authority");
    request.set_path_with_query(Some(path)).expect("path");
    let future = match wasip2::http::outgoing_handler::handle(request, None) {
        Ok(f) => f,
        Err(e) => return refused(out, e),
    };
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return refused(out, e),
        other => return respond(out, 500, &[], format!("unexpected: {other:?}\n").as_bytes()),
    };
    let status = response.status();
    let body = response.consume().expect("consume");
    let mut stream = body.stream().expect("stream");
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("read");
    let text = format!("upstream {status}: {}", String::from_utf8_lossy(&bytes));
    respond(out, 200, &[], text.as_bytes());
}

/// `/fanout?url=http://host:port/path&n=N`: starts N GETs at once, waits for
/// all, and answers with how many succeeded and how each failure was coded.
fn fanout(query: &str, out: ResponseOutparam) {
    let (Some(url), Some(n)) = (
        param(query, "url"),
        param(query, "n").and_then(|n| n.parse::<usize>().ok()),
    ) else {
        return respond(out, 400, &[], b"missing url or n\n");
    };
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut futures = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for _ in 0..n {
        let request = OutgoingRequest::new(Fields::new());
        request.set_scheme(Some(&Scheme::Http)).expect("scheme");
        request.set_authority(Some(authority)).expect("authority");
        request.set_path_with_query(Some(path)).expect("path");
        match wasip2::http::outgoing_handler::handle(request, None) {
            Ok(f) => futures.push(f),
            Err(e) => errors.push(format!("{e:?}")),
        }
    }
    let mut ok = 0;
    for f in futures {
        f.subscribe().block();
        match f.get() {
            Some(Ok(Ok(_))) => ok += 1,
            Some(Ok(Err(e))) => errors.push(format!("{e:?}")),
            other => errors.push(format!("{other:?}")),
        }
    }
    errors.sort();
    errors.dedup();
    respond(
        out,
        200,
        &[],
        format!("ok={ok} errors={errors:?}\n").as_bytes(),
    );
}

fn refused(out: ResponseOutparam, e: ErrorCode) {
    respond(
        out,
        502,
        &[],
        format!("outbound refused: {e:?}\n").as_bytes(),
    );
}

/// `/env`: lists the environment variables the guest can see, one per line.
fn env(out: ResponseOutparam) {
    let mut text = String::new();
    for (k, v) in std::env::vars() {
        text.push_str(&format!("{k}={v}\n"));
    }
    respond(out, 200, &[], text.as_bytes());
}

/// `/stdio`: writes a marker line to stdout and one to stderr.
fn stdio(out: ResponseOutparam) {
    println!("guest-stdout-marker");
    eprintln!("guest-stderr-marker");
    respond(out, 200, &[], b"printed\n");
}

/// `/fs`: tries to read host files; with no preopened directory every attempt must fail.
fn fs(out: ResponseOutparam) {
    let preopens = wasip2::filesystem::preopens::get_directories();
    let read = std::fs::read_to_string("/etc/passwd");
    let text = format!(
        "preopens={} read={}\n",
        preopens.len(),
        match read {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        }
    );
    respond(out, 200, &[], text.as_bytes());
}

/// `/socket?addr=127.0.0.1:PORT`: tries a raw TCP connection, which must be denied.
fn socket(query: &str, out: ResponseOutparam) {
    let addr = param(query, "addr").unwrap_or("127.0.0.1:80");
    let text = match std::net::TcpStream::connect(addr) {
        Ok(_) => "connected\n".to_string(),
        Err(e) => format!("error: {e}\n"),
    };
    respond(out, 200, &[], text.as_bytes());
}

/// `/headers`: echoes method, path, authority and headers as text.
fn headers(request: &IncomingRequest, path_with_query: &str, out: ResponseOutparam) {
    let mut text = format!(
        "method={:?}\npath={path_with_query}\nauthority={}\n",
        request.method(),
        request.authority().unwrap_or_default()
    );
    for (name, value) in request.headers().entries() {
        text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(&value)));
    }
    respond(out, 200, &[("x-test", "headers")], text.as_bytes());
}

/// `/status?code=N`: answers with status N.
fn status(query: &str, out: ResponseOutparam) {
    let code: u16 = param(query, "code")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    respond(out, code, &[], format!("status {code}\n").as_bytes());
}
