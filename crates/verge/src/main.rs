//! `verge`: the command-line entry point. It only parses arguments, sets up
//! logging and the runtime, and hands over to one module per command; the
//! work itself lives in the library crates.
//!
//! Exit codes: 0 success, 1 failure at run time, 2 bad usage or bad input
//! (manifest, component, flags), reported before any port is bound.

mod build;
mod env;
mod new;
mod up;
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
    init_logging(&env);
    let result = match cli.command {
        Command::Up(args) => up::run(args, &env),
        Command::New(args) => new::run(&args),
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
fn init_logging(env: &dyn env::Env) {
    use tracing_subscriber::EnvFilter;
    let filter = env
        .var("VERGE_LOG")
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info,wasmtime=warn,cranelift=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
