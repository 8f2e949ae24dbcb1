//! What `cargo xtask test` needs besides cargo, checked before anything is
//! built, so a fresh machine learns in seconds what is missing instead of
//! after half an hour of compiling.
//!
//! Each tool is installed the way CI installs it when that can be done
//! here (rustup components and targets, `cargo install`, and Debian's
//! packages when running as root or with sudo); otherwise the run stops at
//! once with the exact command to type.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::bail;

use crate::run;

/// A tool the test suite needs.
struct Tool {
    /// What it is called.
    name: &'static str,
    /// Who uses it.
    used_by: &'static str,
    /// Whether it is there.
    present: fn() -> bool,
    /// How it is installed.
    install: Install,
}

enum Install {
    /// `rustup component add` / `rustup target add` arguments.
    Rustup(&'static [&'static str]),
    /// `cargo install --locked` of this crate.
    Cargo(&'static str),
    /// Debian packages.
    Apt(&'static [&'static str]),
}

impl Install {
    fn command(&self) -> String {
        match self {
            Install::Rustup(args) => format!("rustup {}", args.join(" ")),
            Install::Cargo(krate) => format!("cargo install --locked {krate}"),
            Install::Apt(packages) => format!("sudo apt-get install -y {}", packages.join(" ")),
        }
    }
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `program` is on PATH or in the system folders Debian puts
/// daemons in (not always on a user's PATH).
fn on_path(program: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
        .any(|dir| Path::new(dir).join(program).is_file())
}

fn tools() -> Vec<Tool> {
    vec![
        Tool {
            name: "the wasm32-wasip2 target",
            used_by: "every guest component",
            present: || {
                Command::new("rustup")
                    .args(["target", "list", "--installed"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip2"))
            },
            install: Install::Rustup(&["target", "add", "wasm32-wasip2"]),
        },
        Tool {
            name: "rustfmt and clippy",
            used_by: "the format and lint checks",
            present: || {
                succeeds("cargo", &["fmt", "--version"])
                    && succeeds("cargo", &["clippy", "--version"])
            },
            install: Install::Rustup(&["component", "add", "rustfmt", "clippy"]),
        },
        Tool {
            name: "cargo-nextest",
            used_by: "the test runner",
            present: || succeeds("cargo", &["nextest", "--version"]),
            install: Install::Cargo("cargo-nextest"),
        },
        Tool {
            name: "nats-server",
            used_by: "the cluster tests (JetStream)",
            present: || on_path("nats-server"),
            install: Install::Apt(&["nats-server"]),
        },
        Tool {
            name: "python3 with venv and pip",
            used_by: "the Python guest (componentize-py) and `verge ai pull`",
            // Debian's python3 has `venv` without `ensurepip`, which venv
            // needs: only python3-venv brings it.
            present: || {
                succeeds("python3", &["-c", "import ensurepip, venv"])
                    && succeeds("python3", &["-m", "pip", "--version"])
            },
            install: Install::Apt(&["python3-venv", "python3-pip"]),
        },
    ]
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Checks every tool, installing what can be installed here; fails with
/// the commands to type for the rest.
pub(crate) fn check() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let mut apt_updated = false;
    for tool in tools() {
        if (tool.present)() {
            continue;
        }
        eprintln!(
            "preflight: {} is missing ({}); installing it",
            tool.name, tool.used_by
        );
        let installed = match &tool.install {
            Install::Rustup(args) => run(Command::new("rustup").args(*args)).is_ok(),
            Install::Cargo(krate) => {
                run(Command::new("cargo").args(["install", "--locked", krate])).is_ok()
            }
            Install::Apt(packages) => {
                let sudo = !is_root() && succeeds("sudo", &["-n", "true"]);
                if !is_root() && !sudo {
                    false
                } else {
                    let apt = |args: &[&str]| {
                        // sudo resets the environment: pass the setting on
                        // its command line, or a prompt could hang CI.
                        let mut cmd = Command::new(if sudo { "sudo" } else { "apt-get" });
                        if sudo {
                            cmd.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]);
                        }
                        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
                        run(&mut cmd)
                    };
                    (apt_updated || apt(&["update", "-qq"]).is_ok()) && {
                        apt_updated = true;
                        apt(&[&["install", "-y", "-qq"][..], packages].concat()).is_ok()
                    }
                }
            }
        };
        if !installed || !(tool.present)() {
            missing.push(tool);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut message = String::from("the test suite needs tools this machine lacks:\n");
    for tool in &missing {
        message.push_str(&format!(
            "  - {} ({}): {}\n",
            tool.name,
            tool.used_by,
            tool.install.command()
        ));
    }
    message.push_str("install them, then run `cargo xtask test` again");
    bail!(message)
}
