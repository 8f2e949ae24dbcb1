//! Cluster mode end to end: a real `nats-server` with JetStream (Debian's
//! package) and several `verge server` processes on 127.0.0.x, sharing
//! state through it. Faults are real: NATS and nodes are killed with
//! SIGKILL, and a node's link to NATS is cut by a TCP relay between them.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::Value;

use crate::control::get;
use crate::support::{Run, Up, Verge, guests, verge_bin};

/// Heartbeat of the test nodes: down after three missed, under a second.
const HEARTBEAT: &str = "300ms";

/// A master key shared by every node (secrets are sealed cluster-wide).
const MASTER_KEY: &str = "5f0e1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100";

fn nats_server() -> PathBuf {
    if let Some(path) = std::env::var_os("VERGE_NATS_SERVER") {
        return path.into();
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let path = Path::new(dir).join("nats-server");
        if path.is_file() {
            return path;
        }
    }
    panic!("nats-server is not installed: `apt-get install nats-server` (the CI does)");
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// A `nats-server -js` on a fixed port with its store in a folder, so it
/// can be killed and started again with its data.
struct Nats {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let mut nats = Nats {
            child: None,
            port: free_port("127.0.0.1"),
            store: tempfile::tempdir().expect("tempdir"),
        };
        nats.restart();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        assert!(self.child.is_none(), "NATS is running");
        let child = Command::new(nats_server())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        wait_until("NATS listens", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP relay to a local port whose link can be cut (every connection
/// closed, new ones refused) and healed, and which can delay every chunk
/// it passes on (a far-away node).
struct Relay {
    port: u16,
    target: Arc<AtomicU16>,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: u16) -> Relay {
        Self::with_delay(target, Duration::ZERO)
    }

    fn with_delay(target: u16, delay: Duration) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let target = Arc::new(AtomicU16::new(target));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (cut2, open2, target2) = (cut.clone(), open.clone(), target.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target2.load(Ordering::SeqCst)))
                else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (
                        from.try_clone().expect("clone"),
                        to.try_clone().expect("clone"),
                    );
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if !delay.is_zero() {
                                std::thread::sleep(delay);
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
                let mut open = open2.lock().expect("lock");
                open.push(client);
                open.push(server);
            }
        });
        Relay {
            port,
            target,
            cut,
            open,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn retarget(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().expect("lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// One `verge server` of the cluster.
struct Node {
    name: String,
    ip: String,
    nats: String,
    data: PathBuf,
    labels: String,
    extra: Vec<String>,
    verge: Option<Verge>,
}

impl Node {
    fn start(
        name: &str,
        ip: &str,
        nats: &str,
        dir: &Path,
        labels: &str,
        extra: Vec<String>,
    ) -> Node {
        let mut node = Node {
            name: name.to_string(),
            ip: ip.to_string(),
            nats: nats.to_string(),
            data: dir.join(name),
            labels: labels.to_string(),
            extra,
            verge: None,
        };
        node.restart();
        node
    }

    fn restart(&mut self) {
        assert!(self.verge.is_none(), "node {} is running", self.name);
        let mut args = vec![
            "--data".to_string(),
            self.data.display().to_string(),
            "--admin-token-file".to_string(),
            self.data.with_extension("token").display().to_string(),
            "--listen".to_string(),
            format!("{}:0", self.ip),
            "--admin-listen".to_string(),
            format!("{}:0", self.ip),
            "--cluster".to_string(),
            self.nats.clone(),
            "--node-name".to_string(),
            self.name.clone(),
            "--labels".to_string(),
            self.labels.clone(),
            "--heartbeat".to_string(),
            HEARTBEAT.to_string(),
            "--uplink-interval".to_string(),
            "500ms".to_string(),
            "--usage-flush-interval".to_string(),
            "500ms".to_string(),
            "--kv-max-keys".to_string(),
            "50".to_string(),
        ];
        args.extend(self.extra.iter().cloned());
        self.verge = Some(
            Up::server(&args)
                .env("VERGE_MASTER_KEY", MASTER_KEY)
                .start(),
        );
    }

    fn verge(&self) -> &Verge {
        self.verge.as_ref().expect("running")
    }

    fn url(&self) -> String {
        self.verge().url("")
    }

    fn kill(&mut self) {
        if let Some(verge) = self.verge.take() {
            verge.signal(Signal::KILL);
            let _ = verge.wait();
        }
    }

    /// `GET /`: status, body and serving version.
    fn get(&self) -> (u16, String, String) {
        get(&self.url(), "/")
    }
}

/// NATS and nodes `a` (127.0.0.1), `b` (127.0.0.2) and `c` (127.0.0.3);
/// `c` reaches NATS through a relay that can be cut.
struct Cluster {
    nats: Nats,
    relay: Relay,
    nodes: Vec<Node>,
    admin: String,
    config: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        Self::start_with(Vec::new())
    }

    /// With `extra` arguments for node `a`.
    fn start_with(extra: Vec<String>) -> Cluster {
        let nats = Nats::start();
        let relay = Relay::start(nats.port);
        let dir = tempfile::tempdir().expect("tempdir");
        // The first node creates the cluster's state and its admin token.
        let a = Node::start(
            "a",
            "127.0.0.1",
            &nats.url(),
            dir.path(),
            "region=eu-west",
            extra,
        );
        let admin = std::fs::read_to_string(a.data.with_extension("token"))
            .expect("the first node writes the admin token")
            .trim()
            .to_string();
        let b = Node::start(
            "b",
            "127.0.0.2",
            &nats.url(),
            dir.path(),
            "region=us-east",
            Vec::new(),
        );
        let c = Node::start(
            "c",
            "127.0.0.3",
            &relay.url(),
            dir.path(),
            "region=eu-west,zone=b",
            Vec::new(),
        );
        assert!(
            !b.data.with_extension("token").exists(),
            "a node joining a cluster with tokens must not mint another admin token"
        );
        let cluster = Cluster {
            nats,
            relay,
            nodes: vec![a, b, c],
            admin,
            config: tempfile::tempdir().expect("tempdir"),
            _dir: dir,
        };
        cluster.wait_for_nodes(0, &["up", "up", "up"]);
        cluster
    }

    /// Runs `verge ARGS` against node `i` as the admin.
    fn cli(&self, i: usize, args: &[&str]) -> Run {
        self.cli_in(i, args, Path::new("."))
    }

    fn cli_in(&self, i: usize, args: &[&str], dir: &Path) -> Run {
        let output = Command::new(verge_bin())
            .args(args)
            .current_dir(dir)
            .env("VERGE_CONFIG_DIR", self.config.path())
            .env("VERGE_URL", self.nodes[i].url())
            .env("VERGE_TOKEN", &self.admin)
            .stdin(Stdio::null())
            .output()
            .expect("verge runs");
        Run {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `verge nodes --json` through node `i`: name to status.
    fn statuses(&self, i: usize) -> Vec<(String, String)> {
        let run = self.cli(i, &["nodes", "--json"]);
        assert!(run.status.success(), "verge nodes: {}", run.stderr);
        let nodes: Value = serde_json::from_str(&run.stdout).expect("JSON");
        nodes["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().expect("name").to_string(),
                    n["status"].as_str().expect("status").to_string(),
                )
            })
            .collect()
    }

    fn wait_for_nodes(&self, i: usize, expected: &[&str]) -> Duration {
        let names = ["a", "b", "c"];
        let want: Vec<(String, String)> = names
            .iter()
            .zip(expected)
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        let mut last = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            last = self.statuses(i);
            if last == want {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node {i} sees {last:?}, not {want:?}");
    }

    /// Requests to `app` in the last hour, as `verge usage` on node `i`
    /// reports them.
    fn requests(&self, i: usize, app: &str) -> u64 {
        let run = self.cli(
            i,
            &[
                "usage", "--app", app, "--by", "minute", "--format", "json", "--since", "1h",
            ],
        );
        assert!(run.status.success(), "{}", run.stderr);
        let rows: Value = serde_json::from_str(&run.stdout).expect("JSON");
        rows.as_array()
            .expect("rows")
            .iter()
            .map(|r| r["requests"].as_u64().expect("requests"))
            .sum()
    }

    /// Deploys `wasm` as app `site` at `/` through node `i`.
    fn deploy(&self, i: usize, wasm: &Path) -> Run {
        let wasm = wasm.display().to_string();
        self.cli(i, &["deploy", &wasm, "--app", "site", "--route", "/"])
    }
}

/// Hello answers v1, test-programs (a different component) v2.
fn hello_v1(node: &Node) -> bool {
    let (status, body, version) = node.get();
    status == 200 && body == "Hello, world!\n" && version == "v1"
}

/// Requests `GET /` on a node in a loop until stopped; counts answers and
/// keeps the first failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(urls: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let threads = urls
            .into_iter()
            .map(|url| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let (status, body, version) = get(&url, "/");
                        if status == 200 && !body.is_empty() && !version.is_empty() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            let mut failures = failures.lock().expect("lock");
                            if failures.len() < 10 {
                                failures.push(format!("{url}: {status} {body}"));
                            }
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    /// Stops and asserts that every request succeeded.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("load thread");
        }
        let failures = self.failures.lock().expect("lock");
        assert!(failures.is_empty(), "requests failed: {failures:#?}");
        self.ok.load(Ordering::SeqCst)
    }
}

#[test]
fn three_nodes_share_deploys_writes_and_health() {
    let mut cluster = Cluster::start();
    // Any node takes deploys, and the deploy waits for all of them.
    let run = cluster.deploy(1, &guests().hello);
    assert!(
        run.status.success(),
        "deploy: {}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stdout.contains("ready on 3 of 3 node(s) up: a, b, c"),
        "{}",
        run.stdout
    );
    for node in &cluster.nodes {
        assert!(
            hello_v1(node),
            "node {} does not serve v1: {:?}",
            node.name,
            node.get()
        );
    }
    // The fleet as an operator sees it.
    let run = cluster.cli(2, &["nodes"]);
    assert!(run.status.success(), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("NODE"), "{}", run.stdout);
    assert!(
        lines[1].starts_with("a ") && lines[1].contains("region=eu-west"),
        "{}",
        run.stdout
    );
    assert!(
        lines[3].starts_with("c *") && lines[3].contains("zone=b"),
        "{}",
        run.stdout
    );
    let json = cluster.cli(0, &["nodes", "--json"]);
    let nodes: Value = serde_json::from_str(&json.stdout).expect("JSON");
    for node in nodes["nodes"].as_array().expect("nodes") {
        assert_eq!(node["apps"], 1, "{node}");
        assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            node["addr"]
                .as_str()
                .expect("addr")
                .starts_with("http://127.0.0.")
        );
    }
    // A tenant's token does not see the fleet.
    let tenant = cluster.cli(
        0,
        &[
            "tokens",
            "create",
            "--tenant",
            "t1",
            "--scopes",
            "apps:read",
        ],
    );
    assert!(tenant.status.success(), "{}", tenant.stderr);
    let denied = Command::new(verge_bin())
        .args(["nodes"])
        .env("VERGE_CONFIG_DIR", cluster.config.path())
        .env("VERGE_URL", cluster.nodes[0].url())
        .env("VERGE_TOKEN", tenant.stdout.trim())
        .output()
        .expect("runs");
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("tenants:admin"));

    // Writes through different nodes at once: compare-and-set holds across
    // the cluster, so the audit chain stays whole and nothing is lost.
    let writers: Vec<_> = (0..3)
        .map(|i| {
            let url = cluster.nodes[i].url();
            let (admin, config) = (cluster.admin.clone(), cluster.config.path().to_path_buf());
            std::thread::spawn(move || {
                for n in 0..5 {
                    let out = Command::new(verge_bin())
                        .args([
                            "tokens",
                            "create",
                            "--tenant",
                            &format!("w{i}-{n}"),
                            "--scopes",
                            "apps:read",
                        ])
                        .env("VERGE_CONFIG_DIR", &config)
                        .env("VERGE_URL", &url)
                        .env("VERGE_TOKEN", &admin)
                        .output()
                        .expect("runs");
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let tokens = cluster.cli(1, &["tokens", "list", "--json"]);
    let tokens: Value = serde_json::from_str(&tokens.stdout).expect("JSON");
    let made = tokens["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter(|t| t["tenant"].as_str().is_some_and(|t| t.starts_with('w')))
        .count();
    assert_eq!(made, 15, "every token created through any node exists");
    let verify = cluster.cli(2, &["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}\n{}",
        verify.stdout,
        verify.stderr
    );
    assert!(verify.stdout.contains("intact"), "{}", verify.stdout);

    // Kill a node under load: the others' clients see no error, and it is
    // marked down within the heartbeat window.
    let load = Load::start(vec![cluster.nodes[0].url(), cluster.nodes[1].url()]);
    std::thread::sleep(Duration::from_millis(300));
    cluster.nodes[2].kill();
    let took = cluster.wait_for_nodes(0, &["up", "up", "down"]);
    eprintln!("node c marked down {} ms after kill -9", took.as_millis());
    assert!(took < Duration::from_secs(5), "marked down after {took:?}");
    std::thread::sleep(Duration::from_millis(300));
    let served = load.finish();
    assert!(served > 20, "only {served} requests");
    // A deploy now waits only for the nodes that are up, naming the other.
    let run = cluster.deploy(0, &guests().test_programs);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stdout.contains("ready on 2 of 2 node(s) up: a, b"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("catch up when they return: c"),
        "{}",
        run.stderr
    );
    // It does catch up when restarted.
    cluster.nodes[2].restart();
    wait_until("c serves v2", Duration::from_secs(20), || {
        cluster.nodes[2].get().2 == "v2"
    });
}

#[test]
fn nodes_serve_through_a_nats_outage_and_converge_after() {
    let mut cluster = Cluster::start();
    let run = cluster.deploy(0, &guests().hello);
    assert!(run.status.success(), "{}", run.stderr);
    // b is restarted below (on a new port): its load starts after that.
    let load = Load::start(vec![cluster.nodes[0].url(), cluster.nodes[2].url()]);
    std::thread::sleep(Duration::from_millis(300));
    cluster.nats.kill();
    std::thread::sleep(Duration::from_millis(500));
    // Changes are refused with a reason; nothing changes.
    let refused = cluster.deploy(0, &guests().test_programs);
    assert_eq!(refused.status.code(), Some(1), "{}", refused.stdout);
    assert!(
        refused.stderr.contains("cannot reach") || refused.stderr.contains("link is down"),
        "{}",
        refused.stderr
    );
    let nodes = cluster.statuses(0);
    assert_eq!(nodes[0], ("a".to_string(), "degraded".to_string()));
    // A node restarted meanwhile serves from its own copy.
    cluster.nodes[1].kill();
    cluster.nodes[1].restart();
    assert!(hello_v1(&cluster.nodes[1]), "{:?}", cluster.nodes[1].get());
    let load2 = Load::start(vec![cluster.nodes[1].url()]);
    std::thread::sleep(Duration::from_millis(500));
    // NATS returns: the nodes relink and a deploy reaches all of them.
    cluster.nats.restart();
    let back = Instant::now();
    wait_until("every node relinks", Duration::from_secs(20), || {
        cluster.statuses(0).iter().all(|(_, s)| s == "up") && cluster.statuses(0).len() == 3
    });
    let run = cluster.deploy(0, &guests().test_programs);
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("ready on 3 of 3"), "{}", run.stdout);
    for node in &cluster.nodes {
        assert_eq!(node.get().2, "v2", "node {}", node.name);
    }
    eprintln!(
        "NATS back to a deploy served by 3 nodes: {} ms",
        back.elapsed().as_millis()
    );
    let served = load.finish() + load2.finish();
    assert!(served > 50, "only {served} requests");
}

#[test]
fn a_node_cut_off_keeps_serving_and_catches_up() {
    let cluster = Cluster::start();
    let run = cluster.deploy(0, &guests().hello);
    assert!(run.status.success(), "{}", run.stderr);
    let load = Load::start(vec![cluster.nodes[2].url()]);
    cluster.relay.cut();
    // c knows it is cut off and says what it cannot know.
    cluster.wait_for_nodes(2, &["unknown", "unknown", "degraded"]);
    let refused = cluster.deploy(2, &guests().test_programs);
    assert_eq!(refused.status.code(), Some(1));
    assert!(refused.stderr.contains("cannot"), "{}", refused.stderr);
    // The rest of the cluster marks it down and deploys without it.
    cluster.wait_for_nodes(0, &["up", "up", "down"]);
    let run = cluster.deploy(0, &guests().test_programs);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(hello_v1(&cluster.nodes[2]), "c still serves what it had");
    // Healed: c catches up with the deploy made meanwhile.
    cluster.relay.heal();
    let took = wait_until("c serves v2", Duration::from_secs(30), || {
        cluster.nodes[2].get().2 == "v2"
    });
    eprintln!("link healed to v2 served on c: {} ms", took.as_millis());
    assert!(load.finish() > 20);
    cluster.wait_for_nodes(2, &["up", "up", "up"]);
    // The usage c metered while cut off reaches the others.
    wait_until("a counts c's requests", Duration::from_secs(30), || {
        let at_c = cluster.requests(2, "site");
        at_c > 20 && cluster.requests(0, "site") == at_c
    });
}

#[test]
fn kill_9_during_deploys_never_serves_a_half_installed_version() {
    let mut cluster = Cluster::start();
    let run = cluster.deploy(0, &guests().hello);
    assert!(run.status.success(), "{}", run.stderr);
    // Each round starts a deploy and kills NATS or a node at a different
    // point in it; every answer any node gives must be a whole version.
    let wasm = [&guests().test_programs, &guests().hello];
    for round in 0..4u64 {
        let deployer = {
            let url = cluster.nodes[0].url();
            let (admin, config) = (cluster.admin.clone(), cluster.config.path().to_path_buf());
            let wasm = wasm[(round % 2) as usize].display().to_string();
            std::thread::spawn(move || {
                Command::new(verge_bin())
                    .args(["deploy", &wasm, "--app", "site", "--route", "/"])
                    .env("VERGE_CONFIG_DIR", &config)
                    .env("VERGE_URL", &url)
                    .env("VERGE_TOKEN", &admin)
                    .output()
                    .expect("runs")
            })
        };
        std::thread::sleep(Duration::from_millis(40 * round));
        let victim = round as usize % 3;
        if victim == 0 {
            cluster.nats.kill();
        } else {
            cluster.nodes[victim].kill();
        }
        let _ = deployer.join();
        for node in cluster.nodes.iter().filter(|n| n.verge.is_some()) {
            check_whole(node);
        }
        if victim == 0 {
            cluster.nats.restart();
        } else {
            cluster.nodes[victim].restart();
            check_whole(&cluster.nodes[victim]);
        }
    }
    // In the end every node converges on one version.
    let want = cluster.nodes[0].get().2;
    for node in &cluster.nodes {
        wait_until("the nodes agree", Duration::from_secs(30), || {
            node.get().2 == want
        });
        check_whole(node);
    }
}

/// The node's answer is one of the two components, whole.
fn check_whole(node: &Node) {
    let (status, body, version) = node.get();
    assert!(!version.is_empty(), "node {}: {status} {body}", node.name);
    assert_eq!(status, 200, "node {}: {body}", node.name);
    assert!(
        body == "Hello, world!\n" || body == "hello from test-programs\n",
        "node {}: {body:?}",
        node.name
    );
}

#[test]
fn a_first_start_without_nats_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port("127.0.0.1");
    let output = Command::new(verge_bin())
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data")
        .arg(dir.path().join("data"))
        .args([
            "--cluster",
            &format!("nats://127.0.0.1:{port}"),
            "--node-name",
            "x",
        ])
        .args(["--join-timeout", "1s"])
        .env("VERGE_MASTER_KEY", MASTER_KEY)
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach NATS"), "{stderr}");
    assert!(stderr.contains("nats-server -js"), "{stderr}");
    // Bad flags are input errors.
    let output = Command::new(verge_bin())
        .args(["server", "--cluster", "nats://x", "--labels", "region"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not key=value"));
    let output = Command::new(verge_bin())
        .args(["server", "--labels", "region=eu"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2), "labels need --cluster");
}

/// `GET path` on `node` with extra headers: status, the serving node
/// (`verge-served-by`) and the body.
fn get_via(node: &Node, path: &str, headers: &str) -> (u16, String, String) {
    let (status, head, body) = exchange(
        node,
        &format!("GET {path} HTTP/1.0\r\nHost: geo.example\r\n{headers}\r\n"),
    );
    let served_by = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("verge-served-by: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (status, served_by, body)
}

/// Sends `request` on a fresh connection to `node`: status, head, body.
fn exchange(node: &Node, request: &str) -> (u16, String, String) {
    let addr = node.url().trim_start_matches("http://").to_string();
    let raw = crate::support::raw_exchange(addr.parse().expect("address"), request.as_bytes())
        .unwrap_or_default();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

#[test]
fn apps_run_where_placed_and_requests_go_to_the_nearest_node() {
    // Node a is reached through a relay that delays every chunk: it is
    // "far" from b, and c is near.
    let far = Relay::with_delay(0, Duration::from_millis(15));
    let advertise = format!("http://127.0.0.1:{}", far.port);
    let mut cluster = Cluster::start_with(vec!["--advertise".to_string(), advertise]);
    far.retarget(cluster.nodes[0].verge().addr.port());

    let app = tempfile::tempdir().expect("tempdir");
    let manifest = |placement: &str| {
        format!(
            "name = \"geo\"\n[component.web]\nsource = \"{}\"\nroutes = [\"/\"]\n\n[placement]\n{placement}\n",
            guests().test_programs.display()
        )
    };
    std::fs::write(
        app.path().join("verge.toml"),
        manifest("region = [\"eu-west\"]"),
    )
    .expect("manifest");
    let run = cluster.cli_in(1, &["deploy"], app.path());
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("ready on 2 of 2 node(s) up: a, c"),
        "{}",
        run.stdout
    );
    // a and c run it; b does not, and forwards to the nearer one once it
    // has measured both.
    for (i, runs) in [(0, true), (1, false), (2, true)] {
        let json = cluster.cli(i, &["nodes", "--json"]);
        let nodes: Value = serde_json::from_str(&json.stdout).expect("JSON");
        let me = nodes["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["this_node"] == true)
            .cloned()
            .expect("me");
        assert_eq!(me["apps"], if runs { 1 } else { 0 }, "node {i}: {me}");
    }
    wait_until("b measures a and c", Duration::from_secs(20), || {
        let json = cluster.cli(1, &["nodes", "--json"]);
        let nodes: Value = serde_json::from_str(&json.stdout).expect("JSON");
        let rtt = |name: &str| {
            nodes["nodes"]
                .as_array()
                .expect("nodes")
                .iter()
                .find(|n| n["name"] == name)
                .and_then(|n| n["rtt_ms"].as_f64())
        };
        matches!((rtt("a"), rtt("c")), (Some(a), Some(c)) if a > c + 10.0)
    });
    let (status, served_by, body) = get_via(&cluster.nodes[1], "/headers", "");
    assert_eq!((status, served_by.as_str()), (200, "c"), "{body}");
    // The guest sees the client's address, the hop and the original host.
    let forwarded = body
        .lines()
        .find(|l| l.starts_with("forwarded: "))
        .expect("Forwarded header");
    assert!(
        forwarded.contains("for=\"127.0.0.1:") && forwarded.contains("by=\"b\""),
        "{forwarded}"
    );
    assert!(forwarded.contains("host=\"geo.example\""), "{forwarded}");
    assert!(body.contains("verge-forwarded-by: b"), "{body}");
    assert!(body.contains("method=Method::Get"), "{body}");
    // Bodies stream through both ways.
    let payload = crate::support::pseudo_random(2 * 1024 * 1024, 7);
    let addr = cluster.nodes[1]
        .url()
        .trim_start_matches("http://")
        .to_string();
    let mut raw = format!(
        "POST /echo HTTP/1.0\r\nHost: geo.example\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    )
    .into_bytes();
    raw.extend_from_slice(&payload);
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream.write_all(&raw).expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head")
        + 4;
    assert!(answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"));
    assert_eq!(answer.len() - split, payload.len(), "the echo is whole");
    assert!(answer[split..] == payload[..], "the echo is the same bytes");
    // A request already forwarded once is never sent on.
    let (status, served_by, _) =
        get_via(&cluster.nodes[1], "/headers", "verge-forwarded-by: x\r\n");
    assert_eq!((status, served_by.as_str()), (404, ""));
    // The nearest node dies: requests go to the other one.
    cluster.nodes[2].kill();
    cluster.wait_for_nodes(1, &["up", "up", "down"]);
    let (status, served_by, _) = get_via(&cluster.nodes[1], "/headers", "");
    assert_eq!((status, served_by.as_str()), (200, "a"));

    // A placement no node matches: the deploy says so, and requests get a
    // clear 503 rather than a 404.
    std::fs::write(
        app.path().join("verge.toml"),
        manifest("region = [\"ap-south\"]\nmin_replicas = 1"),
    )
    .expect("manifest");
    let run = cluster.cli_in(0, &["deploy"], app.path());
    assert_eq!(run.status.code(), Some(1), "{}", run.stdout);
    assert!(
        run.stderr.contains("fewer than `min_replicas = 1`"),
        "{}",
        run.stderr
    );
    wait_until("no node serves geo", Duration::from_secs(10), || {
        get_via(&cluster.nodes[1], "/headers", "").0 == 503
    });
}

/// `METHOD path` with `body` on `node`: status and body.
fn call(node: &Node, method: &str, path: &str, body: &str) -> (u16, String) {
    let addr = node.url().trim_start_matches("http://").to_string();
    let (status, _, body) = exchange(
        node,
        &format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    (status, body)
}

fn kv_get(node: &Node, store: &str, key: &str) -> Option<String> {
    match call(node, "GET", &format!("/kv-get?store={store}&key={key}"), "") {
        (200, body) => Some(body),
        (404, _) => None,
        other => panic!("kv-get on {}: {other:?}", node.name),
    }
}

fn kv_set(node: &Node, store: &str, key: &str, value: &str) -> (u16, String) {
    call(
        node,
        "POST",
        &format!("/kv-set?store={store}&key={key}"),
        value,
    )
}

fn wait_for_value(node: &Node, store: &str, key: &str, want: Option<&str>) -> Duration {
    let mut last = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        last = kv_get(node, store, key);
        if last.as_deref() == want {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "node {}: {store}/{key} is {last:?}, not {want:?}",
        node.name
    );
}

#[test]
fn key_value_stores_keep_their_consistency_through_a_partition() {
    let mut cluster = Cluster::start();
    let app = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        app.path().join("verge.toml"),
        format!(
            "name = \"kvapp\"\n[component.state]\nsource = \"{}\"\nroutes = [\"/\"]\n\
             key_value_stores = [\"strict\", \"edge\"]\n\n[key_value.edge]\nconsistency = \"edge-local\"\n",
            guests().state.display()
        ),
    )
    .expect("manifest");
    let run = cluster.cli_in(0, &["deploy"], app.path());
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    let [a, b, c] = [0, 1, 2];

    // Strict: ordered by the cluster, exact across nodes.
    assert_eq!(kv_set(&cluster.nodes[a], "strict", "k", "1").0, 204);
    wait_for_value(&cluster.nodes[b], "strict", "k", Some("1"));
    let counters: Vec<_> = [a, b, c]
        .into_iter()
        .map(|i| {
            let url = cluster.nodes[i].url();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let (status, body, _) = get(&url, "/kv-incr?store=strict&key=n&delta=1");
                    assert_eq!(status, 200, "{body}");
                }
            })
        })
        .collect();
    for t in counters {
        t.join().expect("incrementer");
    }
    for i in [a, b, c] {
        wait_for_value(&cluster.nodes[i], "strict", "n", Some("30"));
    }
    // Quotas hold cluster-wide: a strict batch over the store's 50 keys is
    // refused whole, on every node.
    let (status, body) = call(
        &cluster.nodes[b],
        "POST",
        "/kv-set-many?store=strict&prefix=q&n=60&size=1",
        "",
    );
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("quota"), "{body}");
    std::thread::sleep(Duration::from_millis(200));
    for i in [a, b, c] {
        assert_eq!(kv_get(&cluster.nodes[i], "strict", "q0"), None);
    }
    // Edge-local values written before the partition reach everyone.
    assert_eq!(kv_set(&cluster.nodes[a], "edge", "d", "0").0, 204);
    wait_for_value(&cluster.nodes[c], "edge", "d", Some("0"));

    cluster.relay.cut();
    cluster.wait_for_nodes(2, &["unknown", "unknown", "degraded"]);
    // Strict writes on the cut-off node are refused and leave nothing.
    let (status, body) = kv_set(&cluster.nodes[c], "strict", "k", "from-c");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("cannot reach the cluster"), "{body}");
    assert_eq!(
        kv_get(&cluster.nodes[c], "strict", "k").as_deref(),
        Some("1")
    );
    // ... while the connected side goes on.
    assert_eq!(kv_set(&cluster.nodes[a], "strict", "k", "2").0, 204);
    // Edge-local writes are taken on both sides; the later one wins per key.
    let step = || std::thread::sleep(Duration::from_millis(30));
    assert_eq!(kv_set(&cluster.nodes[c], "edge", "x", "from-c").0, 204);
    step();
    assert_eq!(kv_set(&cluster.nodes[a], "edge", "x", "from-a").0, 204);
    assert_eq!(kv_set(&cluster.nodes[a], "edge", "w", "from-a").0, 204);
    step();
    assert_eq!(kv_set(&cluster.nodes[c], "edge", "w", "from-c").0, 204);
    assert_eq!(
        call(&cluster.nodes[a], "POST", "/kv-delete?store=edge&key=d", "").0,
        204
    );
    assert_eq!(kv_set(&cluster.nodes[c], "edge", "z", "only-c").0, 204);
    assert_eq!(
        kv_get(&cluster.nodes[c], "edge", "x").as_deref(),
        Some("from-c")
    );
    // The cut-off node's writes survive a kill -9 before the link heals.
    cluster.nodes[c].kill();
    cluster.nodes[c].restart();
    assert_eq!(
        kv_get(&cluster.nodes[c], "edge", "z").as_deref(),
        Some("only-c")
    );

    cluster.relay.heal();
    let took = wait_for_value(&cluster.nodes[c], "strict", "k", Some("2"));
    eprintln!(
        "partition healed: strict value on c after {} ms",
        took.as_millis()
    );
    for i in [a, b, c] {
        let node = &cluster.nodes[i];
        wait_for_value(node, "edge", "x", Some("from-a"));
        wait_for_value(node, "edge", "w", Some("from-c"));
        wait_for_value(node, "edge", "z", Some("only-c"));
        wait_for_value(node, "edge", "d", None);
        assert_eq!(kv_get(node, "strict", "n").as_deref(), Some("30"));
    }
    // The refused strict write never appears.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        kv_get(&cluster.nodes[a], "strict", "k").as_deref(),
        Some("2")
    );
}

#[test]
fn usage_travels_as_summaries_and_every_node_sees_the_cluster_total() {
    let cluster = Cluster::start();
    let run = cluster.deploy(0, &guests().hello);
    assert!(run.status.success(), "{}", run.stderr);
    for (node, n) in [(0, 40), (1, 60)] {
        for _ in 0..n {
            assert!(hello_v1(&cluster.nodes[node]));
        }
    }
    // c served nothing, yet reports the cluster's 100 requests.
    let requests = |i: usize| cluster.requests(i, "site");
    let took = wait_until("c sees 100 requests", Duration::from_secs(30), || {
        requests(2) == 100
    });
    eprintln!(
        "usage reached the node that served nothing in {} ms",
        took.as_millis()
    );
    assert_eq!(requests(0), 100);
    assert_eq!(requests(1), 100);
    // Summaries, not events: a few hundred bytes for 100 requests. (The
    // count arrives with the nodes' next heartbeat.)
    let sent_by = || -> Vec<u64> {
        let json = cluster.cli(2, &["nodes", "--json"]);
        let nodes: Value = serde_json::from_str(&json.stdout).expect("JSON");
        nodes["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["uplink_bytes"].as_u64().expect("uplink_bytes"))
            .collect()
    };
    wait_until(
        "a and b report what they sent",
        Duration::from_secs(10),
        || {
            let sent = sent_by();
            sent[0] > 0 && sent[1] > 0
        },
    );
    let sent = sent_by();
    assert_eq!(sent[2], 0, "c had no usage to send");
    let sent = |name: &str| sent[usize::from(name.as_bytes()[0] - b'a')];
    let total = sent("a") + sent("b");
    assert!(
        total < 100 * 100,
        "{total} bytes for 100 requests is not a summary"
    );
}

/// Two nodes deploying apps whose routes collide, at the same moment, 50
/// times: exactly one deploy of each pair wins, whatever node it went
/// through, and no route ends up claimed by two apps on any node.
#[test]
fn deploys_racing_for_one_route_on_two_nodes_let_exactly_one_win() {
    let cluster = Cluster::start();
    let hello = guests().hello.display().to_string();
    let cluster = &cluster;
    for i in 0..50 {
        let route = format!("/r{i}");
        let (a, b) = std::thread::scope(|s| {
            let deploy = |node: usize, app: String| {
                let (hello, route) = (hello.clone(), route.clone());
                s.spawn(move || {
                    cluster.cli(node, &["deploy", &hello, "--app", &app, "--route", &route])
                })
            };
            let a = deploy(0, format!("a{i}"));
            let b = deploy(1, format!("b{i}"));
            (a.join().expect("deploy a"), b.join().expect("deploy b"))
        });
        let won: Vec<&Run> = [&a, &b]
            .into_iter()
            .filter(|r| r.status.success())
            .collect();
        assert_eq!(won.len(), 1, "pair {i}:\na: {}\nb: {}", a.stderr, b.stderr);
        let lost = if a.status.success() { &b } else { &a };
        assert_eq!(lost.status.code(), Some(2), "{}", lost.stderr);
        assert!(
            lost.stderr
                .contains(&format!("route `{route}` is already served by app")),
            "{}",
            lost.stderr
        );
    }
    // Every node sees 50 apps, one per route.
    for i in 0..3 {
        let run = cluster.cli(i, &["apps", "--json"]);
        assert!(run.status.success(), "{}", run.stderr);
        let apps: Value = serde_json::from_str(&run.stdout).expect("JSON");
        let mut routes: Vec<String> = apps["apps"]
            .as_array()
            .expect("apps")
            .iter()
            .flat_map(|a| a["routes"].as_array().expect("routes").clone())
            .map(|r| r.as_str().expect("route").to_string())
            .collect();
        routes.sort();
        let count = routes.len();
        routes.dedup();
        assert_eq!((count, routes.len()), (50, 50), "node {i}: {routes:?}");
    }
}
