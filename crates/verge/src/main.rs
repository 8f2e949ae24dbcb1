//! `verge`: the command-line entry point. It only parses arguments, sets up
//! logging and the runtime, and hands over to one module per command; the
//! work itself lives in the library crates.
//!
//! Exit codes: 0 success, 1 failure at run time, 2 bad usage or bad input
//! (manifest, component, flags), reported before any port is bound.

#[cfg(feature = "ai")]
mod ai;
mod build;
mod client;
mod cluster;
mod deploy;
mod env;
mod manage;
mod new;
mod server;
mod server_config;
mod state;
mod up;
mod usage;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Verge runs WebAssembly components (wasi:http) as serverless functions.
#[derive(Debug, Parser)]
#[command(name = "verge", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a component or an app (verge.toml) on this machine.
    Up(up::UpArgs),
    /// Create a new app from a template.
    New(new::NewArgs),
    /// Run a node with its control plane (apps are deployed to it).
    Server(Box<server::ServerArgs>),
    /// Save a server URL and token for the commands below.
    Login(manage::LoginArgs),
    /// Build an app and deploy it as a new version.
    Deploy(deploy::DeployArgs),
    /// Show the server and the token in use.
    Status(manage::Output),
    /// List your apps.
    Apps(manage::Output),
    /// List an app's versions, newest first.
    Versions(manage::AppArg),
    /// Split an app's traffic between versions, e.g. `v3=90 v4=10`.
    Traffic(manage::TrafficArgs),
    /// Serve an earlier version again, at once.
    Rollback(manage::RollbackArgs),
    /// Stop serving an app and forget it.
    Delete(manage::DeleteArgs),
    /// Show an app's log lines (guest output, failed requests); `-f` follows.
    Logs(manage::LogsArgs),
    /// Create, list and revoke tokens.
    #[command(subcommand)]
    Tokens(manage::TokensCommand),
    /// Read the audit log, or verify its hash chain.
    Audit(manage::AuditArgs),
    /// Show metered usage and its cost, per app and hour (or minute, day).
    Usage(usage::UsageArgs),
    /// Set, list and delete an app's secrets (values are write-only).
    #[command(subcommand)]
    Secrets(state::SecretsCommand),
    /// Read and change an app's key-value data.
    #[command(subcommand)]
    Kv(state::KvCommand),
    /// List the cluster's nodes: health, labels, load, what they serve.
    Nodes(manage::Output),
    /// Install models; embed texts and search vector indexes locally.
    #[cfg(feature = "ai")]
    #[command(subcommand)]
    Ai(ai::AiCommand),
}

/// An error with the exit code it should produce.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    /// Bad input: a manifest, component or flag the user must fix (exit 2).
    pub(crate) fn input(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 2,
            error: error.into(),
        }
    }

    /// A failure at run time (exit 1).
    pub(crate) fn runtime(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 1,
            error: error.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = env::ProcessEnv;
    let logs = verge_control::logs::LogHub::new();
    init_logging(&env, &logs);
    let result = match cli.command {
        Command::Up(args) => up::run(args, &env),
        Command::New(args) => new::run(&args),
        Command::Server(args) => server::run(*args, &env, logs),
        Command::Login(args) => manage::login(args, &env),
        Command::Deploy(args) => deploy::run(args, &env),
        Command::Status(args) => manage::status(args, &env),
        Command::Apps(args) => manage::apps(args, &env),
        Command::Versions(args) => manage::versions(args, &env),
        Command::Traffic(args) => manage::traffic(args, &env),
        Command::Rollback(args) => manage::rollback(args, &env),
        Command::Delete(args) => manage::delete(args, &env),
        Command::Logs(args) => manage::logs(args, &env),
        Command::Tokens(args) => manage::tokens(args, &env),
        Command::Audit(args) => manage::audit(args, &env),
        Command::Usage(args) => usage::run(args, &env),
        Command::Secrets(command) => state::secrets(command, &env),
        Command::Kv(command) => state::kv(command, &env),
        #[cfg(feature = "ai")]
        Command::Ai(command) => ai::run(command, &env),
        Command::Nodes(args) => cluster::nodes(args, &env),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}

/// Logs go to stderr (stdout is reserved for the `Serving ...` line and
/// command output). `VERGE_LOG` takes a tracing filter, default `info`.
/// Whatever the filter, app-tagged lines at info and above also reach
/// `logs`, for `verge logs`.
fn init_logging(env: &dyn env::Env, logs: &std::sync::Arc<verge_control::logs::LogHub>) {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter, filter_fn};
    use tracing_subscriber::prelude::*;
    let filter = env
        .var("VERGE_LOG")
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            EnvFilter::new(
                // async-nats logs every connection event at info; Verge logs
                // the ones that matter (link lost, link back) itself.
                "info,wasmtime=warn,cranelift=warn,async_nats=warn",
            )
        });
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(filter);
    // The level hint keeps debug and trace call sites statically off.
    let apps = logs.layer().with_filter(
        filter_fn(|meta| *meta.level() <= LevelFilter::INFO && meta.target().starts_with("verge"))
            .with_max_level_hint(LevelFilter::INFO),
    );
    tracing_subscriber::registry()
        .with(stderr)
        .with(apps)
        .init();
}
