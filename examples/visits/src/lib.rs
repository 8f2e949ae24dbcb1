//! A visit counter: `GET /` counts a visit and greets the visitor with the
//! count, `GET /count` shows the count, and `POST /reset` with
//! `authorization: Bearer <admin_key>` sets it back to zero.
//!
//! It uses the standard WASI interfaces Verge provides: `wasi:keyvalue`
//! for the counter, `wasi:config` for the greeting (a variable) and the
//! admin key (a secret), and `wasi:logging`. The WIT comes from Verge's
//! `wit/` folder.

use std::io::Write;

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wit_bindgen::generate!({
    path: "../../wit",
    world: "verge:platform/host-apis",
    generate_all,
});

use wasi::config::store as config;
use wasi::keyvalue::{atomics, store};
use wasi::logging::logging::{Level, log};

const COUNTER: &str = "visits";

struct Visits;

wasip2::http::proxy::export!(Visits);

impl wasip2::exports::http::incoming_handler::Guest for Visits {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (status, body) = match (request.method(), path.as_str()) {
            (Method::Get, "/") => visit(),
            (Method::Get, "/count") => count(),
            (Method::Post, "/reset") => reset(&request),
            _ => (404, "not found\n".to_string()),
        };
        respond(out, status, &body);
    }
}

fn bucket() -> Result<store::Bucket, String> {
    store::open("default").map_err(|e| format!("cannot open the store: {e:?}"))
}

fn visit() -> (u16, String) {
    let result = bucket().and_then(|b| {
        atomics::increment(&b, COUNTER, 1).map_err(|e| format!("cannot count: {e:?}"))
    });
    match result {
        Ok(n) => {
            let greeting = config::get("greeting").ok().flatten().unwrap_or_default();
            log(Level::Info, "visits", &format!("visit number {n}"));
            (200, format!("{greeting}, visitor number {n}!\n"))
        }
        Err(e) => {
            log(Level::Error, "visits", &e);
            (500, format!("{e}\n"))
        }
    }
}

fn count() -> (u16, String) {
    match bucket().and_then(|b| b.get(COUNTER).map_err(|e| format!("{e:?}"))) {
        Ok(Some(v)) => (200, format!("{}\n", String::from_utf8_lossy(&v))),
        Ok(None) => (200, "0\n".to_string()),
        Err(e) => (500, format!("{e}\n")),
    }
}

fn reset(request: &IncomingRequest) -> (u16, String) {
    let Some(admin_key) = config::get("admin_key").ok().flatten() else {
        return (
            503,
            "no admin key is set: `verge secrets set visits admin_key`\n".to_string(),
        );
    };
    let given = request
        .headers()
        .get("authorization")
        .into_iter()
        .next()
        .unwrap_or_default();
    let expected = format!("Bearer {admin_key}");
    if !constant_time_eq(&given, expected.as_bytes()) {
        log(Level::Warn, "visits", "reset refused: wrong admin key");
        return (401, "wrong admin key\n".to_string());
    }
    match bucket().and_then(|b| b.delete(COUNTER).map_err(|e| format!("{e:?}"))) {
        Ok(()) => {
            log(Level::Info, "visits", "counter reset");
            (200, "reset\n".to_string())
        }
        Err(e) => (500, format!("{e}\n")),
    }
}

/// Compares without stopping at the first difference, so response times do
/// not reveal how much of the key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn respond(out: ResponseOutparam, status: u16, body: &str) {
    let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
        .expect("static header is valid");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = outgoing.write().expect("stream is taken once");
    stream.write_all(body.as_bytes()).expect("client went away");
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("body finished once");
}
