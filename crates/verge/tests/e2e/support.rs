//! Test support: building guest components, running `verge`, and a small
//! HTTP client (HTTP/1.1 and HTTP/2) with streaming bodies.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper_util::rt::{TokioExecutor, TokioIo};

pub type Body = BoxBody<Bytes, std::io::Error>;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/verge is two levels below the root")
        .to_path_buf()
}

/// Paths of the guest components, built once per test process.
pub struct Guests {
    /// `examples/hello`: answers "Hello, world!".
    pub hello: PathBuf,
    /// `crates/test-programs`: behaviour chosen by path (see its docs).
    pub test_programs: PathBuf,
    /// A WASI command, not an HTTP handler.
    pub not_a_handler: PathBuf,
    /// `crates/test-programs/state`: drives wasi:keyvalue, wasi:config and
    /// wasi:logging (see its docs).
    pub state: PathBuf,
    /// `crates/test-programs/python`: a componentize-py handler.
    pub python: PathBuf,
}

/// Builds every guest with `cargo xtask guests` (a no-op when up to date).
fn build_guests() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .current_dir(repo())
        .args(["run", "--quiet", "--package", "xtask", "--", "guests"])
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "building the guests failed (`cargo xtask guests`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        build_guests();
        let tp = repo().join("crates/test-programs/target/wasm32-wasip2/release");
        Guests {
            hello: repo().join("examples/hello/target/wasm32-wasip2/release/hello.wasm"),
            test_programs: tp.join("test_programs.wasm"),
            not_a_handler: tp.join("not-a-handler.wasm"),
            state: repo().join(
                "crates/test-programs/state/target/wasm32-wasip2/release/state_programs.wasm",
            ),
            python: repo().join("crates/test-programs/python/target/app.wasm"),
        }
    })
}

/// A compile cache shared by the tests, so each component compiles once.
pub fn shared_cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("verge-e2e-cache");
    std::fs::create_dir_all(&dir).expect("cache dir");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    dir
}

pub fn verge_bin() -> &'static str {
    env!("CARGO_BIN_EXE_verge")
}

/// A running `verge` process. Killed when dropped.
pub struct Verge {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The admin listener of `verge server` (metrics).
    pub metrics_addr: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

/// Options for starting `verge up` (or another serving command).
pub struct Up<'a> {
    pub command: &'static str,
    pub args: Vec<String>,
    pub dir: Option<&'a Path>,
    pub cache: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

impl<'a> Up<'a> {
    pub fn new<S: AsRef<str>>(args: &[S]) -> Self {
        Self {
            command: "up",
            args: args.iter().map(|s| s.as_ref().to_string()).collect(),
            dir: None,
            cache: Some(shared_cache()),
            env: Vec::new(),
        }
    }

    pub fn dir(mut self, dir: &'a Path) -> Self {
        self.dir = Some(dir);
        self
    }

    pub fn cache(mut self, cache: Option<PathBuf>) -> Self {
        self.cache = cache;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn start(self) -> Verge {
        Verge::start(self)
    }

    /// `verge server ARGS` instead of `verge up`.
    pub fn server<S: AsRef<str>>(args: &[S]) -> Self {
        Self {
            command: "server",
            ..Self::new(args)
        }
    }
}

fn spawn_reader<R: Read + Send + 'static>(stream: R, sink: impl Fn(String) + Send + 'static) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink(line);
        }
    });
}

impl Verge {
    /// Starts `verge up ARGS --listen 127.0.0.1:0` and waits for `Serving`.
    pub fn up<S: AsRef<str>>(args: &[S]) -> Verge {
        Up::new(args).start()
    }

    fn start(up: Up<'_>) -> Verge {
        let mut cmd = Command::new(verge_bin());
        cmd.arg(up.command).args(&up.args);
        if !up.args.iter().any(|a| a == "--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if up.command == "server" && !up.args.iter().any(|a| a == "--admin-listen") {
            cmd.args(["--admin-listen", "127.0.0.1:0"]);
        }
        match &up.cache {
            Some(dir) => cmd.arg("--cache-dir").arg(dir),
            None if up.command == "up" => cmd.arg("--no-cache"),
            None => &mut cmd,
        };
        if let Some(dir) = up.dir {
            cmd.current_dir(dir);
        }
        cmd.env("VERGE_LOG", "info,verge=debug")
            .envs(up.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("verge starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let stderr = stderr.clone();
            spawn_reader(child.stderr.take().expect("piped"), move |line| {
                let mut s = stderr.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            });
        }
        {
            let stdout = stdout.clone();
            spawn_reader(child.stdout.take().expect("piped"), move |line| {
                stdout.lock().expect("lock").push(line.clone());
                let _ = tx.send(line);
            });
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut metrics_addr = None;
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("Metrics http://") {
                        let addr = url.trim_end_matches("/metrics");
                        metrics_addr = Some(addr.parse().expect("Metrics line has an address"));
                    }
                    if let Some(url) = line.strip_prefix("Serving http://") {
                        break url.parse().expect("Serving line has an address");
                    }
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        std::thread::sleep(Duration::from_millis(200));
                        panic!(
                            "verge exited ({status}) before serving:\n{}",
                            stderr.lock().expect("lock")
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "verge did not start in time:\n{}",
                        stderr.lock().expect("lock")
                    );
                }
            }
        };
        Verge {
            child: Some(child),
            addr,
            metrics_addr,
            stderr,
            stdout,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything written to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Lines written to stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().expect("lock").clone()
    }

    /// Waits until the log contains `needle`; panics with the log if not.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub fn wait_for_log_count(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?} {count} times:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `count` `/sleep` requests are inside the guest, letting
    /// the test's own tasks (which send them) run meanwhile.
    pub async fn wait_for_sleepers(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.log().matches("sleep started").count() < count {
            assert!(
                Instant::now() < deadline,
                "{count} sleeping request(s) never started:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// CPU time the whole process has used so far (user + system), from
    /// `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        let per_sec = rustix::param::clock_ticks_per_second();
        Duration::from_secs_f64(ticks as f64 / per_sec as f64)
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = self.child.as_ref().expect("running").id();
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("valid pid");
        rustix::process::kill_process(pid, signal).expect("signal delivered");
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "verge did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Verge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Output of a `verge` run that is expected to end on its own.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `verge ARGS` in `dir` to completion.
pub fn run_verge<S: AsRef<std::ffi::OsStr>>(args: &[S], dir: &Path) -> Run {
    let output = Command::new(verge_bin())
        .args(args)
        .current_dir(dir)
        .env("VERGE_CACHE_DIR", shared_cache())
        .stdin(Stdio::null())
        .output()
        .expect("verge runs");
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Writes `bytes` on a fresh TCP connection and reads until the server
/// closes it (at most 30 s). `Err` if the server never closed it.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Result<String, std::io::Error> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.write_all(bytes)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// A buffered HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Sends one request over a fresh HTTP/1.1 connection and returns the
/// streaming response.
pub async fn send(
    addr: SocketAddr,
    request: http::Request<Body>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    send_on(addr, request, false).await
}

/// Sends one request over HTTP/2 with prior knowledge.
pub async fn send_h2(
    addr: SocketAddr,
    request: http::Request<Body>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    send_on(addr, request, true).await
}

async fn send_on(
    addr: SocketAddr,
    request: http::Request<Body>,
    h2: bool,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let io = TokioIo::new(
        tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?,
    );
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(request).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(request).await
    };
    response.map_err(|e| e.to_string())
}

/// Reads a whole response.
pub async fn buffer(response: http::Response<hyper::body::Incoming>) -> Result<Response, String> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

pub fn request(method: &str, addr: SocketAddr, path: &str, body: Body) -> http::Request<Body> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(body)
        .expect("valid request")
}

/// GET `path` and buffer the answer.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    let response = send(addr, request("GET", addr, path, empty()))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    buffer(response)
        .await
        .unwrap_or_else(|e| panic!("GET {path} body: {e}"))
}

/// POST `body` to `path` and buffer the answer.
pub async fn post(addr: SocketAddr, path: &str, body: Body) -> Response {
    let response = send(addr, request("POST", addr, path, body))
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    buffer(response)
        .await
        .unwrap_or_else(|e| panic!("POST {path} body: {e}"))
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a manifest into a fresh temp dir and returns the dir.
pub fn app_dir(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("verge.toml"), manifest).expect("write manifest");
    dir
}

/// A TOML string literal for a path.
pub fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Sends `count` requests for `path_of(i)` over `connections` keep-alive
/// HTTP/1.1 connections at once; returns (i, status, body) in any order.
pub async fn burst(
    addr: SocketAddr,
    connections: usize,
    count: usize,
    method: &'static str,
    path_of: impl Fn(usize) -> String + Send + Sync + 'static,
    body_of: impl Fn(usize) -> Bytes + Send + Sync + 'static,
) -> Vec<(usize, u16, Bytes)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let path_of = Arc::new(path_of);
    let body_of = Arc::new(body_of);
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (next, path_of, body_of) = (next.clone(), path_of.clone(), body_of.clone());
            tokio::spawn(async move {
                let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .expect("handshake");
                tokio::spawn(conn);
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        return out;
                    }
                    sender.ready().await.expect("connection ready");
                    let req = request(method, addr, &path_of(i), full(body_of(i)));
                    let response = sender.send_request(req).await.expect("response");
                    let r = buffer(response).await.expect("body");
                    out.push((i, r.status, r.body));
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all
}
