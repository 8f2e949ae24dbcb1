//! Traces on `verge server --otlp-endpoint`: the spans of a request
//! (request, route, instantiate, guest, outbound) continue an incoming
//! `traceparent`, outbound calls carry one naming their own span, a
//! malformed header starts a new trace, and an unsampled one records
//! nothing.
//!
//! The collector here is a small HTTP listener that keeps what it receives
//! (OTLP/HTTP with JSON encoding); no OpenTelemetry collector is installed
//! on the test machines.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::control::Plane;
use crate::support::{guests, raw_exchange, toml_path};

/// Receives OTLP posts on `/v1/traces` and answers `GET /target`,
/// recording the `traceparent` it was sent.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
    traceparents: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let traceparents = Arc::new(Mutex::new(Vec::new()));
        let (s, t) = (spans.clone(), traceparents.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (s, t) = (s.clone(), t.clone());
                std::thread::spawn(move || serve(stream, &s, &t));
            }
        });
        Self {
            addr,
            spans,
            traceparents,
        }
    }

    /// Spans received so far for `trace_id` (hex), by name.
    fn trace(&self, trace_id: &str) -> HashMap<String, Value> {
        self.spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s["traceId"] == trace_id)
            .map(|s| (s["name"].as_str().unwrap_or("").to_string(), s.clone()))
            .collect()
    }

    fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: never received; spans: {:#?}",
                self.spans.lock().expect("lock")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve(stream: TcpStream, spans: &Mutex<Vec<Value>>, traceparents: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "traceparent" => traceparents
                    .lock()
                    .expect("lock")
                    .push(value.trim().to_string()),
                _ => {}
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if target == "/v1/traces" {
            let export: Value = serde_json::from_slice(&body).expect("OTLP JSON");
            let mut all = spans.lock().expect("lock");
            for resource in export["resourceSpans"].as_array().into_iter().flatten() {
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    all.extend(scope["spans"].as_array().into_iter().flatten().cloned());
                }
            }
        }
        let answer = if target == "/v1/traces" {
            "{}"
        } else {
            "target ok"
        };
        let _ = write!(
            writer,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
    }
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

fn get_with(plane: &Plane, path: &str, traceparent: Option<&str>) -> String {
    let header = traceparent.map_or(String::new(), |t| format!("traceparent: {t}\r\n"));
    raw_exchange(
        plane.verge.addr,
        format!("GET {path} HTTP/1.0\r\nHost: x\r\n{header}\r\n").as_bytes(),
    )
    .expect("exchange")
}

#[test]
fn spans_continue_the_callers_trace_and_reach_outbound_calls() {
    let collector = Collector::start();
    let endpoint = format!("http://{}/v1/traces", collector.addr);
    let plane = Plane::start_with(&["--otlp-endpoint", &endpoint]);
    plane.deploy_manifest(&format!(
        "name = \"traced\"\n\n[component.web]\nsource = {}\nroutes = [\"/t\"]\n\
         allowed_outbound_hosts = [\"http://{}\"]\n",
        toml_path(&guests().test_programs),
        collector.addr
    ));

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller = "b7ad6b7169203331";
    let raw = get_with(
        &plane,
        &format!("/t/outbound?url=http://{}/target", collector.addr),
        Some(&format!("00-{trace_id}-{caller}-01")),
    );
    assert!(raw.starts_with("HTTP/1.0 200"), "{raw}");
    collector.wait_for("the outbound span", |c| c.trace(trace_id).len() >= 5);
    let spans = collector.trace(trace_id);
    let request = &spans["request"];
    assert_eq!(
        request["parentSpanId"], caller,
        "continues the caller's span"
    );
    assert_eq!(
        attribute(request, "verge.app").expect("app")["stringValue"],
        "default/traced"
    );
    let request_id = request["spanId"].as_str().expect("span id");
    for child in ["route", "instantiate", "guest"] {
        assert_eq!(spans[child]["parentSpanId"], request_id, "{child}");
    }
    let outbound = &spans["outbound"];
    assert_eq!(outbound["parentSpanId"], spans["guest"]["spanId"]);
    let sent = collector.traceparents.lock().expect("lock").clone();
    assert_eq!(
        sent,
        vec![format!(
            "00-{trace_id}-{}-01",
            outbound["spanId"].as_str().expect("id")
        )],
        "the outbound call names its own span"
    );
    // Spans nest in time: the guest runs within the request.
    let time = |s: &Value, f: &str| {
        s[f].as_str()
            .and_then(|t| t.parse::<u128>().ok())
            .or_else(|| s[f].as_u64().map(u128::from))
            .expect("time")
    };
    assert!(time(request, "startTimeUnixNano") <= time(&spans["guest"], "startTimeUnixNano"));
    assert!(time(&spans["guest"], "endTimeUnixNano") <= time(request, "endTimeUnixNano"));

    // The guest sees its own span as its parent, so a guest that forwards
    // the header it got keeps the tree whole.
    let seen = "3af7651916cd43dd8448eb211c80319c";
    let raw = get_with(
        &plane,
        "/t/headers",
        Some(&format!("00-{seen}-{caller}-01")),
    );
    collector.wait_for("the headers trace", |c| c.trace(seen).contains_key("guest"));
    let guest_span = collector.trace(seen)["guest"]["spanId"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(
        raw.contains(&format!("traceparent: 00-{seen}-{guest_span}-01")),
        "{raw}"
    );

    // Malformed headers are ignored: the request is served, in a new trace.
    let before = collector.spans.lock().expect("lock").len();
    for bad in [
        "00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "nonsense",
    ] {
        let raw = get_with(&plane, "/t/echo", Some(bad));
        assert!(raw.starts_with("HTTP/1.0 200"), "{bad}: {raw}");
    }
    collector.wait_for("four new traces", |c| {
        let all = c.spans.lock().expect("lock");
        all[before..]
            .iter()
            .filter(|s| s["name"] == "request")
            .count()
            >= 4
    });
    for span in collector.spans.lock().expect("lock")[before..].iter() {
        if span["name"] == "request" {
            assert_ne!(span["traceId"], trace_id);
            assert!(
                span["parentSpanId"].as_str().unwrap_or("").is_empty(),
                "{span}"
            );
        }
    }

    // A caller that does not sample is not recorded, but its context is
    // passed on, still unsampled.
    let quiet = "1af7651916cd43dd8448eb211c80319c";
    get_with(&plane, "/t/echo", Some(&format!("00-{quiet}-{caller}-00")));
    let raw = get_with(
        &plane,
        &format!("/t/outbound?url=http://{}/target", collector.addr),
        Some(&format!("00-{quiet}-{caller}-00")),
    );
    assert!(raw.starts_with("HTTP/1.0 200"), "{raw}");
    let sent = collector.traceparents.lock().expect("lock").clone();
    assert_eq!(
        sent.last().map(String::as_str),
        Some(format!("00-{quiet}-{caller}-00").as_str())
    );
    let marker = "2af7651916cd43dd8448eb211c80319c";
    get_with(&plane, "/t/echo", Some(&format!("00-{marker}-{caller}-01")));
    collector.wait_for("the marker trace", |c| {
        c.trace(marker).contains_key("request")
    });
    assert!(
        collector.trace(quiet).is_empty(),
        "an unsampled trace was recorded"
    );
}
