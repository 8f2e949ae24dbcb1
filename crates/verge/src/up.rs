//! `verge up`: serve one component, or a whole app from `verge.toml`, on
//! this machine.
//!
//! Order matters: flags, manifest, builds and components are all checked
//! (and compiled) before the port is bound, so every input error is reported
//! before anything listens. When serving starts, exactly one line
//! `Serving http://ADDR` goes to stdout; everything else goes to stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use verge_capabilities::{Capabilities, HostPattern, Limits, OutboundPolicy};
use verge_ingress::{Ingress, IngressConfig};
use verge_manifest::{MANIFEST_FILE, Manifest};
use verge_node::{AppConfig, ComponentConfig, Node, NodeError};
use verge_router::Route;

use crate::Failure;
use crate::build::{self, Step};
use crate::env::{Env, default_cache_dir};

/// Arguments of `verge up`.
#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    source: AppSource,

    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,

    /// Wall-clock limit per request, e.g. `30s` [default: 30s]. With a
    /// manifest, overrides every component's `limits.timeout`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,

    /// Linear-memory cap per instance, e.g. `128MiB` [default: 128MiB]. With a
    /// manifest, overrides every component's `limits.memory`.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    memory: Option<u64>,

    /// Instances of a component that may run at once; more requests get 503
    /// [default: 100]. With a manifest, overrides every component.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_concurrency: Option<u32>,

    /// Largest request body accepted, e.g. `10MiB`; larger bodies get 413
    /// [default: 32MiB]. With a manifest, overrides every component.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_request_body: Option<u64>,

    /// An environment variable for the guest, `KEY=VALUE` (repeatable). With
    /// a manifest, added to every component.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// A host the guest may call over HTTP, `[scheme://]host[:port]`
    /// (repeatable). With a manifest, added to every component.
    #[arg(long = "allow-outbound", value_name = "HOST", value_parser = parse_host)]
    allow_outbound: Vec<HostPattern>,

    /// Rebuild and reload components when their sources change.
    #[arg(long)]
    watch: bool,

    /// Skip the manifest's build commands and serve the files as they are.
    #[arg(long)]
    pub(crate) no_build: bool,

    /// Folder for compiled components [default: $VERGE_CACHE_DIR, else
    /// $XDG_CACHE_HOME/verge/compiled, else ~/.cache/verge/compiled].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Do not read or write the compile cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,

    /// Longest time a client may take to send request headers.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,

    /// On SIGTERM or Ctrl-C, how long in-flight requests may take to finish.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    shutdown_grace: Duration,

    /// Instances that may exist at once across all components.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_instances: u32,

    /// Folder for the app's key-value stores [default: `.verge` beside
    /// verge.toml, or in the current folder for a single component].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    #[command(flatten)]
    models: crate::env::ModelsDir,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let d = verge_manifest::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() || d > DAY {
        return Err("the duration must be above zero and at most 24h".to_string());
    }
    Ok(d)
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    verge_manifest::parse_size(s).map_err(|e| e.to_string())
}

fn parse_memory(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    if (64 * 1024..=Limits::MAX_MEMORY).contains(&bytes) {
        Ok(bytes)
    } else {
        Err("the memory cap must be between 64KiB and 4GiB".to_string())
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn parse_host(s: &str) -> Result<HostPattern, String> {
    s.parse()
        .map_err(|e: verge_capabilities::HostPatternError| e.to_string())
}

/// What `verge up` was asked to serve.
pub(crate) enum Target {
    /// One component file, served at `/`.
    Component(PathBuf),
    /// An app manifest.
    App(Box<Manifest>),
}

/// What `verge up` and `verge deploy` are pointed at.
#[derive(Debug, clap::Args)]
pub(crate) struct AppSource {
    /// A component (`.wasm`, served at `/` unless told otherwise), or a
    /// folder holding verge.toml [default: ./verge.toml].
    #[arg(value_name = "WASM_OR_DIR")]
    target: Option<PathBuf>,

    /// The app manifest.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "VERGE_TOML",
        conflicts_with = "target"
    )]
    file: Option<PathBuf>,

    /// The manifest environment whose variables to use
    /// (`[environments.NAME]`).
    #[arg(long, value_name = "NAME")]
    pub(crate) environment: Option<String>,
}

impl AppSource {
    /// Resolves `-f FILE`, a folder holding a manifest, a manifest, a
    /// `.wasm` component, or `./verge.toml`. `usage` ends the message shown
    /// when there is nothing to find.
    pub(crate) fn resolve(&self, usage: &str) -> Result<Target, Failure> {
        let (file, target) = (self.file.as_deref(), self.target.as_deref());
        let manifest_path = match (file, target) {
            (Some(file), _) => file.to_path_buf(),
            (None, Some(t)) if t.is_dir() => t.join(MANIFEST_FILE),
            (None, Some(t)) => {
                if !t.exists() {
                    return Err(Failure::input(anyhow::anyhow!(
                        "`{}` does not exist; give a `.wasm` component or a folder with a {MANIFEST_FILE}",
                        t.display()
                    )));
                }
                if t.file_name().is_some_and(|n| n == MANIFEST_FILE) {
                    t.to_path_buf()
                } else {
                    if self.environment.is_some() {
                        return Err(Failure::input(anyhow::anyhow!(
                            "`--environment` selects variables of a verge.toml; `{}` is a component",
                            t.display()
                        )));
                    }
                    return Ok(Target::Component(t.to_path_buf()));
                }
            }
            (None, None) => PathBuf::from(MANIFEST_FILE),
        };
        if !manifest_path.exists() && file.is_none() && target.is_none() {
            return Err(Failure::input(anyhow::anyhow!(
                "no {MANIFEST_FILE} in this folder; {usage}"
            )));
        }
        let mut manifest = Manifest::load(&manifest_path).map_err(Failure::input)?;
        if let Some(env) = &self.environment {
            manifest
                .select_environment(env)
                .map_err(|e| Failure::input(anyhow::anyhow!(e)))?;
        }
        Ok(Target::App(Box::new(manifest)))
    }
}

impl UpArgs {
    fn target(&self) -> Result<Target, Failure> {
        self.source.resolve(&format!(
            "run `verge up path/to/component.wasm`, `verge up -f path/to/{MANIFEST_FILE}`, \
                 or create an app with `verge new NAME`"
        ))
    }

    /// Loads the manifest at `path` with the selected environment (on reload).
    pub(crate) fn load_manifest(&self, path: &Path) -> Result<Manifest, String> {
        let mut manifest = Manifest::load(path).map_err(|e| e.to_string())?;
        if let Some(env) = &self.source.environment {
            manifest
                .select_environment(env)
                .map_err(|e| e.to_string())?;
        }
        Ok(manifest)
    }

    /// Applies command-line limits: explicit flags win over the manifest.
    fn limits(&self, base: Limits) -> Limits {
        Limits {
            memory: self.memory.unwrap_or(base.memory),
            timeout: self.timeout.unwrap_or(base.timeout),
            max_concurrency: self.max_concurrency.unwrap_or(base.max_concurrency),
            max_request_body: self.max_request_body.unwrap_or(base.max_request_body),
        }
    }

    fn capabilities(&self, base: &Capabilities) -> Capabilities {
        let mut patterns = base.outbound.patterns().to_vec();
        patterns.extend(self.allow_outbound.iter().cloned());
        let mut env = base.env.clone();
        env.extend(self.env.iter().cloned());
        Capabilities {
            outbound: OutboundPolicy::new(patterns),
            env,
            ..base.clone()
        }
    }

    /// The app to serve, after running builds (unless `--no-build`).
    pub(crate) fn app_config(
        &self,
        target: &Target,
        build: bool,
        env: &dyn Env,
    ) -> Result<AppConfig, Failure> {
        match target {
            Target::Component(path) => Ok(AppConfig::local(
                &component_name(path),
                vec![ComponentConfig {
                    name: component_name(path),
                    wasm: path.clone(),
                    routes: vec![Route::new(None, "/").map_err(Failure::input)?],
                    capabilities: self.capabilities(&Capabilities::default()),
                    limits: self.limits(Limits::default()),
                }],
            )),
            Target::App(manifest) => {
                build::prepare(manifest, build)?;
                let mut app = AppConfig::local(
                    &manifest.name,
                    manifest
                        .components
                        .iter()
                        .map(|c| ComponentConfig {
                            name: c.name.clone(),
                            wasm: c.source.clone(),
                            routes: c.routes.clone(),
                            capabilities: self.capabilities(&c.capabilities),
                            limits: self.limits(c.limits),
                        })
                        .collect(),
                );
                app.secrets = Some(Arc::new(EnvSecrets::read(manifest, env)));
                Ok(app)
            }
        }
    }
}

/// Secrets for `verge up`, read once from `VERGE_SECRET_<NAME>` environment
/// variables (name upper-cased) for every secret the manifest declares.
struct EnvSecrets(std::collections::HashMap<String, Arc<str>>);

impl EnvSecrets {
    fn read(manifest: &Manifest, env: &dyn Env) -> Self {
        let mut values = std::collections::HashMap::new();
        for name in manifest
            .components
            .iter()
            .flat_map(|c| &c.capabilities.secrets)
        {
            if let Some(value) = env.var(&format!("VERGE_SECRET_{}", name.to_ascii_uppercase())) {
                values.insert(name.clone(), Arc::from(value));
            }
        }
        Self(values)
    }
}

impl verge_executor::SecretSource for EnvSecrets {
    fn secret(&self, name: &str) -> Option<Arc<str>> {
        self.0.get(name).cloned()
    }
}

/// A component name derived from a file name: `My_Api.wasm` → `my-api`.
pub(crate) fn component_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-');
    if name.is_empty() {
        "component".to_string()
    } else {
        name.chars().take(63).collect()
    }
}

pub(crate) fn run(args: UpArgs, env: &dyn Env) -> Result<(), Failure> {
    let target = args.target()?;
    let app = args.app_config(&target, !args.no_build, env)?;
    let state_dir = match (&args.state_dir, &target) {
        (Some(dir), _) => dir.clone(),
        (None, Target::App(m)) => m.dir.join(".verge"),
        (None, Target::Component(_)) => PathBuf::from(".verge"),
    };
    let cache_dir = if args.no_cache {
        None
    } else {
        args.cache_dir.clone().or_else(|| default_cache_dir(env))
    };
    // Files are created only when a component that declares a store loads
    // or a guest opens an index.
    let node = verge_node::build(verge_node::NodeSettings {
        ai: verge_node::AiSettings::new(
            args.models
                .resolve(env)
                .unwrap_or_else(|_| state_dir.join("models")),
        ),
        state_dir,
        cache_dir,
        max_instances: args.max_instances,
        kv_quotas: verge_kv::Quotas::default(),
        telemetry: verge_node::Telemetry::default(),
    })
    .map_err(Failure::runtime)?
    .node;
    let step = Step::start(format!(
        "Loading {} component(s) of `{}`",
        app.components.len(),
        app.name
    ));
    let runtime = match node.prepare(&app) {
        Ok(runtime) => {
            step.done();
            runtime
        }
        Err(e) => {
            step.fail();
            return Err(match e {
                NodeError::Routes(_) | NodeError::Load { .. } => Failure::input(e),
                other => Failure::runtime(other),
            });
        }
    };
    node.install(runtime);

    let rt = worker_runtime()?;
    let result = rt.block_on(serve(args, target, app, node.clone()));
    // Guests still on the slow lane use this runtime's timers: stop them first.
    node.shutdown();
    // Work still running on blocking threads (a build, a compile) must not
    // keep the process alive after the server stopped.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(
    args: UpArgs,
    target: Target,
    app: AppConfig,
    node: Arc<Node>,
) -> Result<(), Failure> {
    let ingress = bind(args.listen, args.header_read_timeout, args.shutdown_grace).await?;
    let addr = ingress.local_addr().map_err(Failure::runtime)?;
    for c in &app.components {
        let routes: Vec<String> = c.routes.iter().map(ToString::to_string).collect();
        tracing::info!(component = %c.name, routes = %routes.join(", "), "serving");
    }
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "Serving http://{addr}");
        let _ = stdout.flush();
    }

    let _watcher = if args.watch {
        Some(crate::watch::start(&target, node.clone(), args).map_err(Failure::runtime)?)
    } else {
        None
    };

    serve_until_signal(ingress, node).await;
    tracing::info!("stopped");
    Ok(())
}

/// The multi-threaded runtime of `verge up` and `verge server`.
pub(crate) fn worker_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("verge-worker")
        .build()
        .context("cannot start the async runtime")
        .map_err(Failure::runtime)
}

/// Binds the listener of `verge up` and `verge server`.
pub(crate) async fn bind(
    listen: SocketAddr,
    header_read_timeout: Duration,
    shutdown_grace: Duration,
) -> Result<Ingress, Failure> {
    Ingress::bind(
        listen,
        IngressConfig {
            header_read_timeout,
            shutdown_grace,
            ..IngressConfig::default()
        },
    )
    .await
    .with_context(|| format!("cannot listen on {listen}"))
    .map_err(Failure::runtime)
}

/// Serves until SIGTERM or SIGINT, then drains.
pub(crate) async fn serve_until_signal<H: verge_ingress::Handler>(
    ingress: Ingress,
    handler: Arc<H>,
) {
    let report = ingress.serve(handler, shutdown_signal()).await;
    if report.forced > 0 {
        tracing::warn!(
            "{} connection(s) were closed before their requests finished",
            report.forced
        );
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received: finishing in-flight requests"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received: finishing in-flight requests"),
    }
    // A second signal means "now": stop without waiting for requests.
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::warn!("second signal: exiting without waiting for requests");
        std::process::exit(130);
    });
}
