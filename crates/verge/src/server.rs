//! `verge server`: a node and its control plane in one process, with all
//! state in a data folder (SQLite and a blob folder; no external service).
//!
//! On the first start it creates an admin token and shows it once: on
//! stdout, or in `--admin-token-file` (mode 0600) for automation. Then a
//! `Metrics http://ADDR/metrics` line for the admin listener, and, as with
//! `verge up`, exactly one `Serving http://ADDR` line goes to stdout.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use std::sync::Arc;

use verge_control::ControlConfig;
use verge_control::logs::LogHub;
use verge_server::{Server, ServerConfig};

use crate::Failure;
use crate::client::write_private;
use crate::env::{Env, default_data_dir};
use crate::up::{bind, parse_duration, parse_size, serve_until_signal, worker_runtime};

/// Arguments of `verge server`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Folder for all state (SQLite database, component blobs, compile
    /// cache) [default: $VERGE_DATA_DIR, else $XDG_DATA_HOME/verge, else
    /// ~/.local/share/verge].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,

    /// Address for apps and the control API (under `/v1`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// On first start, write the admin token to this file (mode 0600)
    /// instead of printing it.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,

    /// Largest component upload accepted, e.g. `64MiB`; larger get 413.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    max_upload: u64,

    /// Compile cache folder [default: DATA/compiled].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Instances that may exist at once across all apps.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_instances: u32,

    /// Longest time a client may take to send request headers.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,

    /// On SIGTERM or Ctrl-C, how long in-flight requests may take to finish.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    shutdown_grace: Duration,

    /// Issue a new admin token at this start, shown like the first one
    /// (for an operator who lost it; tokens already issued stay valid).
    #[arg(long)]
    issue_admin_token: bool,

    /// The master key file that seals secrets [default: DATA/master.key],
    /// created (mode 0600) on first start. `VERGE_MASTER_KEY` (64 hex
    /// digits) takes precedence; while rotating, `VERGE_MASTER_KEY_PREVIOUS`
    /// holds the old key.
    #[arg(long, value_name = "FILE")]
    master_key_file: Option<PathBuf>,

    /// Rotate the master key file before serving: a new key is created and
    /// every secret re-sealed under it, then the old key file is replaced.
    #[arg(long)]
    rotate_master_key: bool,

    /// Most keys in one key-value store.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    kv_max_keys: u64,

    /// Largest value in a key-value store, e.g. `1MiB` (at most 64MiB).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_kv_value)]
    kv_max_value: u64,

    /// Most bytes (keys plus values) in one key-value store, e.g. `256MiB`.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    kv_max_store: u64,

    /// Tokens each tenant may embed per minute through `verge:ai` (0: no
    /// limit).
    #[cfg(feature = "ai")]
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    ai_tokens_per_minute: u64,

    /// Most texts in one `embed` call.
    #[cfg(feature = "ai")]
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    ai_max_texts: u32,

    #[command(flatten)]
    models: crate::env::ModelsDir,

    #[command(flatten)]
    cluster: crate::cluster::ClusterArgs,

    /// Server configuration file (TOML): the price sheet (`[prices]`) and
    /// quotas (`[quotas]`); see docs/metering.md.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address of the admin listener (Prometheus metrics at `/metrics`).
    /// On a loopback address it is open to local scrapers; on any other,
    /// scrapers need a token with the `metrics:read` scope.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    admin_listen: SocketAddr,

    /// How often metered usage is written to DATA/usage.db; a `kill -9`
    /// loses at most this much usage.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    usage_flush_interval: Duration,

    /// Export OpenTelemetry traces over OTLP/HTTP (JSON) to this URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces`. A W3C `traceparent` on incoming
    /// requests is continued and passed on to outbound calls.
    #[arg(long, value_name = "URL", value_parser = parse_endpoint)]
    otlp_endpoint: Option<String>,

    /// Share of new traces (requests without `traceparent`) recorded, from
    /// 0 to 1; requests with one follow its sampled flag.
    #[arg(long, value_name = "RATIO", default_value_t = 1.0, value_parser = parse_ratio)]
    otlp_sample_ratio: f64,

    /// Benchmark hook: serve without metering usage or keeping metrics,
    /// to measure what they cost (bench/metering.py).
    #[arg(long, hide = true)]
    no_metering: bool,

    /// Test hook: make deploys stop forever at a stage (`validated`,
    /// `prepared`, `recorded`) so crash tests can kill the server there.
    #[arg(long, value_name = "STAGE", hide = true)]
    pause_deploys_at: Option<String>,
}

fn parse_endpoint(s: &str) -> Result<String, String> {
    match reqwest::Url::parse(s) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(s.to_string())
        }
        _ => Err("give the collector's full http(s) URL, e.g. \
                  http://127.0.0.1:4318/v1/traces"
            .to_string()),
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("a ratio is a number from 0 to 1, e.g. 0.1".to_string()),
    }
}

fn parse_kv_value(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    if bytes <= 64 * 1024 * 1024 {
        Ok(bytes)
    } else {
        Err("a value can be at most 64MiB".to_string())
    }
}

pub(crate) fn run(args: ServerArgs, env: &dyn Env, logs: Arc<LogHub>) -> Result<(), Failure> {
    let data = args
        .data
        .clone()
        .or_else(|| default_data_dir(env))
        .ok_or_else(|| {
            Failure::input(anyhow!(
                "give a data folder with --data DIR (HOME is not set)"
            ))
        })?;
    if let Some(file) = &args.admin_token_file
        && file
            .parent()
            .is_some_and(|p| !p.as_os_str().is_empty() && !p.is_dir())
    {
        return Err(Failure::input(anyhow!(
            "--admin-token-file `{}`: its folder does not exist",
            file.display()
        )));
    }
    let master_key = match env.var("VERGE_MASTER_KEY") {
        Some(current) => verge_secrets::KeySource::Env {
            current: zeroize::Zeroizing::new(current),
            previous: env
                .var("VERGE_MASTER_KEY_PREVIOUS")
                .map(zeroize::Zeroizing::new),
        },
        None => verge_secrets::KeySource::File(
            args.master_key_file
                .clone()
                .unwrap_or_else(|| data.join("master.key")),
        ),
    };
    let file = match &args.config {
        Some(path) => crate::server_config::load(path)?,
        None => crate::server_config::ServerFile::default(),
    };
    let models_dir = args
        .models
        .resolve(env)
        .unwrap_or_else(|_| data.join("models"));
    let rt = worker_runtime()?;
    let result = rt.block_on(serve(args, data, master_key, logs, file, models_dir));
    rt.shutdown_timeout(Duration::from_secs(1));
    // Dropping the server writes the last usage.
    let server = result?;
    drop(server);
    tracing::info!("stopped");
    Ok(())
}

async fn serve(
    args: ServerArgs,
    data: PathBuf,
    master_key: verge_secrets::KeySource,
    logs: Arc<LogHub>,
    file: crate::server_config::ServerFile,
    models_dir: PathBuf,
) -> Result<Server, Failure> {
    // Every flag is checked before any port is bound (the invariant of
    // both `verge up` and `verge server`): bad input exits 2 without
    // touching the network.
    let mut cluster = args.cluster.config(args.listen)?;
    let traces = match &args.otlp_endpoint {
        Some(url) => Some(
            verge_server::otel::Traces::start(url, args.otlp_sample_ratio)
                .map_err(|e| Failure::input(anyhow!("--otlp-endpoint: {e}")))?,
        ),
        None => None,
    };
    // Then bind, before anything is written: a token issued by a server
    // that then cannot listen would never be shown.
    let ingress = bind(args.listen, args.header_read_timeout, args.shutdown_grace).await?;
    let admin_ingress = bind(
        args.admin_listen,
        args.header_read_timeout,
        Duration::from_secs(1),
    )
    .await
    .map_err(|e| {
        Failure::runtime(anyhow!(
            "admin listener: {:#}; choose another address with --admin-listen",
            e.error
        ))
    })?;
    let metrics = verge_server::admin::install_recorder()
        .map_err(|e| Failure::runtime(anyhow!("cannot keep metrics: {e}")))?;
    let addr = ingress.local_addr().map_err(Failure::runtime)?;
    if let Some(cluster) = &mut cluster {
        crate::cluster::advertise_bound(cluster, addr);
    }
    let (server, issued) = Server::start(ServerConfig {
        cluster,
        data_dir: data.clone(),
        cache_dir: args.cache_dir.clone(),
        max_instances: args.max_instances,
        kv_quotas: verge_kv::Quotas {
            max_value_bytes: args.kv_max_value as usize,
            max_keys: args.kv_max_keys,
            max_store_bytes: args.kv_max_store,
            ..verge_kv::Quotas::default()
        },
        #[cfg(feature = "ai")]
        ai: verge_node::AiSettings {
            tokens_per_minute: args.ai_tokens_per_minute,
            max_texts: args.ai_max_texts as usize,
            ..verge_node::AiSettings::new(models_dir)
        },
        #[cfg(not(feature = "ai"))]
        ai: verge_node::AiSettings::new(models_dir),
        control: ControlConfig {
            max_upload: args.max_upload,
            pause_deploys_at: args.pause_deploys_at.clone(),
            ..ControlConfig::default()
        },
        issue_admin_token: args.issue_admin_token,
        master_key,
        rotate_master_key: args.rotate_master_key,
        logs,
        telemetry: verge_server::TelemetryConfig {
            prices: file.prices,
            quotas: file.quotas,
            usage_flush: args.usage_flush_interval,
            metrics: true,
            tracing: traces.as_ref().map(|t| t.tracing.clone()),
            metering: !args.no_metering,
        },
    })
    .await
    .map_err(Failure::runtime)?;
    let admin_addr = admin_ingress.local_addr().map_err(Failure::runtime)?;
    let admin = Arc::new(verge_server::admin::Admin::new(
        metrics,
        &server,
        admin_addr.ip().is_loopback(),
    ));
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(admin_ingress.serve(admin, async move {
        let _ = admin_stopped.await;
    }));
    tracing::info!(data = %data.display(), "state in {}", data.display());
    {
        let mut stdout = std::io::stdout().lock();
        if let Some(issued) = &issued {
            match &args.admin_token_file {
                Some(file) => {
                    write_private(file, format!("{}\n", issued.text).as_bytes())
                        .map_err(Failure::runtime)?;
                    tracing::info!("first admin token written to {}", file.display());
                }
                None => {
                    let _ = writeln!(
                        stdout,
                        "Admin token (shown only once; keep it secret): {}",
                        issued.text
                    );
                    tracing::info!(
                        "log in with: verge login http://{addr} --token-stdin  (paste the token)"
                    );
                }
            }
        }
        let _ = writeln!(stdout, "Metrics http://{admin_addr}/metrics");
        let _ = writeln!(stdout, "Serving http://{addr}");
        let _ = stdout.flush();
    }
    serve_until_signal(ingress, server.gateway.clone()).await;
    let _ = stop_admin.send(());
    let _ = admin_task.await;
    if let Some(traces) = traces {
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    let node = server.node.clone();
    tokio::task::spawn_blocking(move || node.shutdown())
        .await
        .map_err(Failure::runtime)?;
    // Guests are done: audit what is queued, then stop following the store
    // and the cluster, and join every background task.
    server.shutdown(Duration::from_secs(5)).await;
    // The caller drops the server once the runtime has stopped: guests
    // still finishing on it are metered before the last usage flush.
    Ok(server)
}
