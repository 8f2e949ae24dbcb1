//! A real `nats-server` for the tests, and node settings.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use verge_cluster::{ClusterConfig, NatsAuth};

pub(crate) fn nats_server() -> PathBuf {
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

pub(crate) struct Nats {
    child: Option<Child>,
    pub(crate) port: u16,
    pub(crate) store: tempfile::TempDir,
    config: Option<PathBuf>,
}

impl Nats {
    pub(crate) fn start() -> Nats {
        Self::with_config(None)
    }

    /// With a configuration file (authorization, TLS).
    pub(crate) fn with_config(config: Option<PathBuf>) -> Nats {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut nats = Nats {
            child: None,
            port,
            store: tempfile::tempdir().expect("tempdir"),
            config,
        };
        nats.restart();
        nats
    }

    pub(crate) fn restart(&mut self) {
        let mut command = Command::new(nats_server());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
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
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "NATS did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn kill(&mut self) {
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

pub(crate) fn config(nats: &Nats, name: &str) -> ClusterConfig {
    ClusterConfig {
        url: format!("nats://127.0.0.1:{}", nats.port),
        node_name: name.to_string(),
        labels: Default::default(),
        auth: NatsAuth::None,
        tls_ca: None,
        tls_client: None,
        heartbeat: Duration::from_millis(200),
        replicas: 1,
        join_timeout: Duration::from_secs(10),
        advertise: None,
        uplink_interval: Duration::from_secs(1),
    }
}

/// Joins a cluster with `config`, its background tasks on a tracker the
/// test never joins (they end with the test's runtime).
pub(crate) async fn join_cluster(
    config: ClusterConfig,
    local: verge_store::SqliteStore,
    blobs: verge_store::FsBlobs,
) -> Result<verge_cluster::Cluster, verge_cluster::ClusterError> {
    verge_cluster::Cluster::join(
        config,
        local,
        blobs,
        &tokio_util::task::TaskTracker::new(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
}
