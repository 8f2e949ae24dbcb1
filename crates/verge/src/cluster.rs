//! Cluster mode on the command line: the `verge server` flags that join a
//! NATS JetStream cluster, `verge nodes`, and how a deploy reports the
//! nodes that serve it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use verge_cluster::{ClusterConfig, NatsAuth};

use crate::Failure;
use crate::client::Client;
use crate::client::typed;
use crate::env::Env;
use crate::manage::{Output, block_on, print, print_json, table};
use crate::up::parse_duration;

/// Flags of `verge server` for cluster mode.
#[derive(Debug, clap::Args)]
pub(crate) struct ClusterArgs {
    /// Join a cluster through NATS JetStream at this URL (`nats://HOST:4222`,
    /// `tls://...` to require TLS; several comma-separated). The state and
    /// blobs then live in JetStream, and DATA keeps this node's copy to
    /// serve from when NATS is out of reach.
    #[arg(long, value_name = "URL", env = "VERGE_CLUSTER")]
    cluster: Option<String>,

    /// This node's name in the cluster [default: the host name].
    #[arg(long, value_name = "NAME", requires = "cluster")]
    node_name: Option<String>,

    /// Labels of this node for placement, e.g. `region=eu-west,zone=a`.
    #[arg(long, value_name = "K=V,...", requires = "cluster", value_parser = verge_manifest::parse_labels)]
    labels: Option<std::collections::BTreeMap<String, String>>,

    /// NATS user credentials (`.creds` file: user JWT and nkey seed).
    #[arg(
        long,
        value_name = "FILE",
        requires = "cluster",
        conflicts_with = "nats_nkey"
    )]
    nats_creds: Option<PathBuf>,

    /// NATS nkey seed file (`SU...`).
    #[arg(long, value_name = "FILE", requires = "cluster")]
    nats_nkey: Option<PathBuf>,

    /// CA certificate (PEM) that signed the NATS server's certificate;
    /// implies TLS.
    #[arg(long, value_name = "FILE", requires = "cluster")]
    nats_ca: Option<PathBuf>,

    /// Client certificate (PEM) for NATS servers that verify clients
    /// (mutual TLS); with --nats-key.
    #[arg(long, value_name = "FILE", requires_all = ["cluster", "nats_key"])]
    nats_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "nats_cert")]
    nats_key: Option<PathBuf>,

    /// How often this node reports itself; a node silent for three
    /// heartbeats is down.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration, requires = "cluster")]
    heartbeat: Duration,

    /// JetStream replicas of the streams Verge creates (1, 3 or 5; at most
    /// the number of NATS servers).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "cluster")]
    cluster_replicas: usize,

    /// How long a node's first start waits for NATS (later starts serve
    /// from their copy at once).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, requires = "cluster")]
    join_timeout: Duration,

    /// The URL at which other nodes and operators reach this node's
    /// ingress [default: http://LISTEN].
    #[arg(long, value_name = "URL", requires = "cluster")]
    advertise: Option<String>,

    /// How often metered usage is summarised (per app version and minute)
    /// and sent to the other nodes.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration, requires = "cluster")]
    uplink_interval: Duration,
}

impl ClusterArgs {
    /// The cluster settings, or `None` to run standalone. Checked before
    /// the server binds its port; without `--advertise`, the advertised
    /// address is left for [`advertise_bound`] to fill in once the port is
    /// known (`--listen` may ask for any free port).
    pub(crate) fn config(&self, listen: SocketAddr) -> Result<Option<ClusterConfig>, Failure> {
        let Some(url) = &self.cluster else {
            return Ok(None);
        };
        let node_name = match &self.node_name {
            Some(name) => name.clone(),
            None => rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        };
        if verge_manifest::check_name(&node_name).is_err() {
            return Err(Failure::input(anyhow!(
                "--node-name `{node_name}`: use lower-case letters, digits and `-` (a node \
                 name also names its entry in the cluster's registry)"
            )));
        }
        if self.heartbeat < Duration::from_millis(100) || self.heartbeat > Duration::from_secs(60) {
            return Err(Failure::input(anyhow!(
                "--heartbeat must be between 100ms and 60s"
            )));
        }
        if ![1, 3, 5].contains(&self.cluster_replicas) {
            return Err(Failure::input(anyhow!(
                "--cluster-replicas {}: JetStream keeps 1, 3 or 5 replicas (at most the number \
                 of NATS servers)",
                self.cluster_replicas
            )));
        }
        for server in url.split(',').map(str::trim) {
            let parsed = reqwest::Url::parse(server).ok();
            let known = parsed
                .as_ref()
                .is_some_and(|u| matches!(u.scheme(), "nats" | "tls") && u.host_str().is_some());
            if !known {
                return Err(Failure::input(anyhow!(
                    "--cluster: `{}` is not a NATS URL; write nats://HOST:4222 (or tls://, \
                     several comma-separated)",
                    parsed.map_or_else(|| server.to_string(), |u| redact(&u))
                )));
            }
        }
        let files = [
            ("--nats-creds", &self.nats_creds),
            ("--nats-nkey", &self.nats_nkey),
            ("--nats-ca", &self.nats_ca),
            ("--nats-cert", &self.nats_cert),
            ("--nats-key", &self.nats_key),
        ];
        for (flag, file) in files {
            if let Some(file) = file
                && !file.is_file()
            {
                return Err(Failure::input(anyhow!(
                    "{flag} `{}` is not a file",
                    file.display()
                )));
            }
        }
        if let Some(url) = &self.advertise {
            check_advertise(url).map_err(|why| {
                Failure::input(anyhow!(
                    "--advertise `{url}`: {why}; give the URL other nodes reach this node's \
                     ingress at, e.g. http://10.0.0.5:{}",
                    listen.port()
                ))
            })?;
        }
        if self.advertise.is_none() && listen.ip().is_unspecified() {
            return Err(Failure::input(anyhow!(
                "--listen {listen} is every address, which other nodes cannot dial: give the \
                 address they reach this node at with --advertise http://HOST:{}",
                listen.port()
            )));
        }
        let auth = match (&self.nats_creds, &self.nats_nkey) {
            (Some(creds), _) => NatsAuth::Credentials(creds.clone()),
            (None, Some(seed)) => NatsAuth::NkeySeed(seed.clone()),
            (None, None) => NatsAuth::None,
        };
        Ok(Some(ClusterConfig {
            url: url.clone(),
            node_name,
            labels: self.labels.clone().unwrap_or_default(),
            auth,
            tls_ca: self.nats_ca.clone(),
            tls_client: self.nats_cert.clone().zip(self.nats_key.clone()),
            heartbeat: self.heartbeat,
            replicas: self.cluster_replicas,
            join_timeout: self.join_timeout,
            advertise: self.advertise.clone(),
            uplink_interval: self.uplink_interval,
        }))
    }
}

/// Fills in the advertised address of a node started without
/// `--advertise`: the address its ingress is bound to.
pub(crate) fn advertise_bound(config: &mut ClusterConfig, bound: SocketAddr) {
    if config.advertise.is_none() {
        config.advertise = Some(format!("http://{bound}"));
    }
}

/// A URL for messages: without user or password.
fn redact(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// Why `url` cannot be dialled by other nodes, if it cannot: it must be an
/// `http://` URL of a host and port, without a path, query or user, and
/// not the unspecified address. (Nodes forward to each other over plain
/// HTTP until they speak TLS to each other.)
fn check_advertise(url: &str) -> Result<(), &'static str> {
    let parsed = reqwest::Url::parse(url).map_err(|_| "it is not a URL")?;
    if parsed.scheme() != "http" {
        return Err("it must start with http:// (nodes do not reach each other over TLS yet)");
    }
    if parsed.port() == Some(0) {
        return Err("port 0 is not an address other nodes can dial");
    }
    let host = parsed.host_str().ok_or("it has no host")?;
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    if ip
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err("the unspecified address cannot be dialled");
    }
    if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("it must not have a path, query or fragment");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("it must not carry credentials");
    }
    Ok(())
}

/// `verge nodes`.
pub(crate) fn nodes(output: Output, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    let answer = block_on(client.get("/v1/nodes"))?;
    if output.json {
        print_json(&answer);
        return Ok(());
    }
    let nodes: verge_api::NodeList = typed(answer)?;
    let rows = nodes
        .nodes
        .iter()
        .map(|n| {
            let mut name = n.name.clone();
            if n.this_node {
                name.push_str(" *");
            }
            let labels = n
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let apps = match n.failed.len() {
                0 => n.apps.to_string(),
                failed => format!("{} ({failed} failing)", n.apps),
            };
            vec![
                name,
                n.status.as_str().to_string(),
                labels,
                n.version.clone(),
                format!("{:.2}", n.load),
                apps,
                n.applied.to_string(),
                seen(n.seen_ms),
                n.rtt_ms
                    .map_or_else(|| "-".to_string(), |ms| format!("{ms:.1}ms")),
                n.addr.clone().unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    print(&table(
        &[
            "NODE", "STATUS", "LABELS", "VERSION", "LOAD", "APPS", "REVISION", "SEEN", "RTT",
            "ADDRESS",
        ],
        rows,
    ));
    Ok(())
}

fn seen(ms: u64) -> String {
    if ms < 1000 {
        "now".to_string()
    } else {
        format!("{}s ago", ms / 1000)
    }
}

/// After a deploy: which nodes serve it. Nodes up but not serving in time
/// fail the command (exit 1); nodes down only warn: they catch up when
/// they return.
pub(crate) fn report_fleet(out: &mut impl Write, fleet: &verge_api::Fleet) -> Result<(), Failure> {
    let (ready, lagging, down) = (&fleet.ready, &fleet.lagging, &fleet.down);
    let _ = writeln!(
        out,
        "  ready on {} of {} node(s) up: {}",
        ready.len(),
        ready.len() + lagging.len(),
        ready.join(", ")
    );
    if !down.is_empty() {
        eprintln!(
            "warning: node(s) down or out of reach will catch up when they return: {}",
            down.join(", ")
        );
    }
    if !lagging.is_empty() {
        return Err(Failure::runtime(anyhow!(
            "node(s) up but not serving the version in time: {}; see `verge nodes` and \
             their logs",
            lagging.join(", ")
        )));
    }
    if let Some(min) = fleet.min_replicas
        && ready.len() < min as usize
    {
        return Err(Failure::runtime(anyhow!(
            "the version is served by {} node(s), fewer than `min_replicas = {min}`: start or \
             label more nodes that match its [placement]",
            ready.len()
        )));
    }
    Ok(())
}
