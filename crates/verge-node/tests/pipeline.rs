//! The node's pipeline in-process: requests built in the test go through
//! `Node::call` (the same path the ingress takes, without a socket) to the
//! real `test-programs` guest, compiled for wasm32-wasip2 by `cargo xtask
//! guests`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use verge_capabilities::{Capabilities, Limits};
use verge_executor::{BodyError, Executor, ExecutorConfig};
use verge_guard::quota::{QuotaBook, QuotaConfig, QuotaLimits};
use verge_ingress::Conn;
use verge_meter::Meter;
use verge_node::{AppConfig, ComponentConfig, Node, Telemetry};
use verge_router::Route;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo")
}

/// The test guest, built by `cargo xtask guests` (once per test binary).
fn test_programs() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
            let status = std::process::Command::new(cargo)
                .current_dir(repo())
                .args(["run", "--quiet", "--package", "xtask", "--", "guests"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "`cargo xtask guests` failed");
            repo().join("crates/test-programs/target/wasm32-wasip2/release/test_programs.wasm")
        })
        .clone()
}

fn component(limits: Limits) -> ComponentConfig {
    ComponentConfig {
        name: "tp".to_string(),
        wasm: test_programs(),
        routes: vec![Route::new(None, "/").expect("route")],
        capabilities: Capabilities::default(),
        limits,
    }
}

/// A node with a meter and `quotas`, serving nothing yet.
fn node(quotas: Option<QuotaConfig>) -> (Arc<Node>, Arc<Meter>) {
    let executor = Executor::new(&ExecutorConfig {
        cache_dir: None,
        max_instances: 20,
        ..ExecutorConfig::default()
    })
    .expect("executor");
    let meter = Meter::new();
    let node = Node::with_telemetry(
        executor,
        Telemetry {
            meter: Some(meter.clone()),
            quotas: quotas.map(|q| QuotaBook::new(q, None)),
            metrics: false,
            tracing: None,
        },
    );
    (node, meter)
}

fn conn() -> Conn {
    Conn {
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        local: SocketAddr::from(([127, 0, 0, 1], 8080)),
    }
}

type TestBody = http_body_util::combinators::MapErr<Full<Bytes>, fn(Infallible) -> BodyError>;

fn body(bytes: impl Into<Bytes>) -> TestBody {
    fn never(e: Infallible) -> BodyError {
        match e {}
    }
    Full::new(bytes.into()).map_err(never as fn(Infallible) -> BodyError)
}

/// An answer: status, the serving version, the text.
struct Answer {
    status: StatusCode,
    version: Option<String>,
    retry_after: Option<String>,
    text: String,
}

async fn send<B>(node: &Node, request: Request<B>) -> Answer
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BodyError>,
{
    let response = node.call(request, conn()).await;
    let (status, version, retry_after) = {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        (
            response.status(),
            header("x-verge-version"),
            header("retry-after"),
        )
    };
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        version,
        retry_after,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get(node: &Node, path: &str) -> Answer {
    let request = Request::get(path)
        .header("host", "node.test")
        .body(body(Bytes::new()))
        .expect("request");
    send(node, request).await
}

/// Totals the meter has for every app, drained.
fn drained(meter: &Meter) -> verge_meter::Totals {
    let mut total = verge_meter::Totals::default();
    for delta in meter.drain() {
        total.merge(&delta.totals);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_fresh_instance() {
    let (node, _) = node(None);
    let app = node
        .prepare(&AppConfig::local("tp", vec![component(Limits::default())]))
        .expect("loads");
    node.install(app);
    for _ in 0..20 {
        let answer = get(&node, "/count").await;
        assert_eq!(
            (answer.status, answer.text.as_str()),
            (StatusCode::OK, "1\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_versions_are_picked_exactly_in_every_cycle() {
    let (node, _) = node(None);
    let config = AppConfig::local("tp", vec![component(Limits::default())]);
    let v1 = node
        .prepare_version(&config, Some("v1".to_string()), None)
        .expect("v1");
    let v2 = node
        .prepare_version(&config, Some("v2".to_string()), None)
        .expect("v2");
    node.set_app("local/tp", vec![(Arc::new(v1), 75), (Arc::new(v2), 25)])
        .expect("routes");
    node.mark_ready();
    let mut picks = Vec::new();
    for _ in 0..40 {
        picks.push(get(&node, "/").await.version.expect("a version"));
    }
    // 75:25 reduces to 3:1: every cycle of four has three v1 and one v2.
    for (i, cycle) in picks.chunks(4).enumerate() {
        let v2 = cycle.iter().filter(|v| *v == "v2").count();
        assert_eq!((cycle.len() - v2, v2), (3, 1), "cycle {i}: {cycle:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_come_before_the_concurrency_cap_and_refusals_cost_nothing() {
    // The quota counts per UTC minute: a run that crosses a minute starts
    // over on a fresh node (at most twice in a row).
    for _ in 0..3 {
        let minute = unix_minute();
        let outcome = quota_scenario().await;
        if unix_minute() == minute {
            return outcome.check();
        }
    }
    panic!("three runs in a row crossed a minute");
}

fn unix_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

/// What the quota scenario saw.
struct QuotaOutcome {
    busy: Answer,
    held: Answer,
    c: Answer,
    d: Answer,
    totals: verge_meter::Totals,
}

impl QuotaOutcome {
    fn check(self) {
        let Self {
            busy,
            held,
            c,
            d,
            totals,
        } = self;
        // B, within quota, found no slot: 503, and took none of the quota.
        assert_eq!(
            busy.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            busy.text
        );
        assert_eq!(busy.retry_after.as_deref(), Some("1"));
        assert_eq!(held.status, StatusCode::OK, "{}", held.text);
        // A and C used the quota of 2; D was refused by it: 429.
        assert_eq!(c.status, StatusCode::OK, "{}", c.text);
        assert_eq!(d.status, StatusCode::TOO_MANY_REQUESTS, "{}", d.text);
        assert!(d.retry_after.is_some());
        assert_eq!(totals.invocations, 2, "{totals:?}");
        assert_eq!(totals.rejected_limit, 1, "{totals:?}");
        assert_eq!(totals.rejected_quota, 1, "{totals:?}");
    }
}

async fn quota_scenario() -> QuotaOutcome {
    let mut quotas = QuotaConfig::default();
    quotas.apps.insert(
        "local/tp".to_string(),
        QuotaLimits {
            requests_per_minute: Some(2),
            ..QuotaLimits::default()
        },
    );
    let (node, meter) = node(Some(quotas));
    let limits = Limits {
        max_concurrency: 1,
        ..Limits::default()
    };
    let app = node
        .prepare(&AppConfig::local("tp", vec![component(limits)]))
        .expect("loads");
    node.install(app);
    // A holds the only slot: its guest waits for a body that the test
    // sends only later. The body's first read says the guest runs.
    let (running, guest_runs) = tokio::sync::oneshot::channel::<()>();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BodyError>>(1);
    let request = Request::post("/consume")
        .header("host", "node.test")
        .body(StreamBody::new(stream_from(rx, running)))
        .expect("request");
    let holder = tokio::spawn({
        let node = node.clone();
        async move { send(&node, request).await }
    });
    guest_runs.await.expect("the guest reads its body");
    // B, within quota, finds no slot.
    let busy = get(&node, "/").await;
    drop(tx);
    let held = holder.await.expect("holder");
    // A and C use the quota of 2; D is over it.
    let c = get(&node, "/").await;
    let d = get(&node, "/").await;
    QuotaOutcome {
        busy,
        held,
        c,
        d,
        totals: drained(&meter),
    }
}

/// A body stream fed by a channel, which says when it is first read.
fn stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<http_body::Frame<Bytes>, BodyError>>,
    first_read: tokio::sync::oneshot::Sender<()>,
) -> impl futures::Stream<Item = Result<http_body::Frame<Bytes>, BodyError>> + Unpin {
    let mut first_read = Some(first_read);
    futures::stream::poll_fn(move |cx| {
        if let Some(tx) = first_read.take() {
            let _ = tx.send(());
        }
        rx.poll_recv(cx)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused_declared_or_streamed() {
    let (node, meter) = node(None);
    let limits = Limits {
        max_request_body: 1024,
        ..Limits::default()
    };
    let app = node
        .prepare(&AppConfig::local("tp", vec![component(limits)]))
        .expect("loads");
    node.install(app);
    // Declared too large: refused before any instance.
    let declared = Request::post("/consume")
        .header("host", "node.test")
        .header("content-length", "4096")
        .body(body(vec![b'x'; 4096]))
        .expect("request");
    let answer = send(&node, declared).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.text
    );
    assert_eq!(drained(&meter).invocations, 0);
    // Within the limit: the guest reads it all.
    let small = Request::post("/consume")
        .header("host", "node.test")
        .body(body(vec![b'x'; 1000]))
        .expect("request");
    let answer = send(&node, small).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    // Undeclared and too large: cut off while streaming.
    let streamed = Request::post("/consume")
        .header("host", "node.test")
        .body(body(vec![b'x'; 4096]))
        .expect("request");
    let answer = send(&node, streamed).await;
    assert_ne!(answer.status, StatusCode::OK, "{}", answer.text);
    assert!(
        answer.status.is_client_error(),
        "{}: {}",
        answer.status,
        answer.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_is_counted_from_the_first_poll() {
    let (node, meter) = node(None);
    let app = node
        .prepare(&AppConfig::local("tp", vec![component(Limits::default())]))
        .expect("loads");
    node.install(app);
    // A guest that answers within its first poll never leaves the
    // connection's task: its CPU must still be billed.
    assert_eq!(get(&node, "/").await.status, StatusCode::OK);
    let first = drained(&meter);
    assert_eq!(first.invocations, 1);
    assert!(first.cpu_us > 0, "{first:?}");
    // A guest that runs long enough to move to the slow lane is billed
    // for its whole run there too: more than the quick one.
    assert_eq!(
        get(&node, "/burn?iters=50000000").await.status,
        StatusCode::OK
    );
    let burned = drained(&meter);
    assert_eq!(burned.invocations, 1);
    assert!(burned.cpu_us > first.cpu_us, "{burned:?} vs {first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_endpoints_and_unrouted_paths() {
    let (node, _) = node(None);
    let health = get(&node, "/.well-known/verge/health").await;
    assert_eq!(
        health.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready yet"
    );
    let app = node
        .prepare(&AppConfig::local("tp", vec![component(Limits::default())]))
        .expect("loads");
    node.install(app);
    assert_eq!(
        get(&node, "/.well-known/verge/health").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&node, "/.well-known/verge/nothing").await.status,
        StatusCode::NOT_FOUND
    );
}

/// A node from the builder `verge up` and `verge server` share, over
/// `state`.
fn built(state: &std::path::Path) -> Arc<Node> {
    verge_node::build(verge_node::NodeSettings {
        state_dir: state.to_path_buf(),
        cache_dir: None,
        max_instances: 20,
        kv_quotas: verge_kv::Quotas::default(),
        ai: verge_node::AiSettings::new(state.join("models")),
        telemetry: Telemetry::default(),
    })
    .expect("node")
    .node
}

fn declaring(capabilities: Capabilities) -> AppConfig {
    AppConfig::local(
        "tp",
        vec![ComponentConfig {
            capabilities,
            ..component(Limits::default())
        }],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_gives_guests_key_value_and_ai_only_when_built_in() {
    let state = tempfile::tempdir().expect("tempdir");
    let stores = Capabilities {
        key_value_stores: vec!["cache".to_string()],
        ..Capabilities::default()
    };
    let ai = Capabilities {
        ai_models: vec!["all-minilm-l6-v2".to_string()],
        ..Capabilities::default()
    };

    // A bare executor has no storage: a declared store is refused at load.
    let (bare, _) = node(None);
    let refused = bare
        .prepare(&declaring(stores.clone()))
        .err()
        .expect("refused");
    assert!(
        refused
            .to_string()
            .contains("this node has no key-value storage"),
        "{refused}"
    );
    let refused = bare.prepare(&declaring(ai.clone())).err().expect("refused");
    assert!(refused.to_string().contains("AI"), "{refused}");

    // The builder's node has storage, and AI exactly when built with it.
    let node = built(state.path());
    // Building creates nothing on disk.
    assert_eq!(std::fs::read_dir(state.path()).expect("state").count(), 0);
    let app = node
        .prepare(&declaring(stores))
        .expect("a declared store loads");
    node.install(app);
    assert_eq!(get(&node, "/count").await.status, StatusCode::OK);
    let with_ai = node.prepare(&declaring(ai));
    if cfg!(feature = "ai") {
        with_ai.expect("a declared model loads; it is read at the first call");
    } else {
        let refused = with_ai.err().expect("refused without the ai feature");
        assert!(
            refused.to_string().contains("built without AI"),
            "{refused}"
        );
    }
    // The declared store was opened at load; no index was declared.
    assert!(state.path().join("kv").exists());
    assert!(!state.path().join("ai").exists());
}
