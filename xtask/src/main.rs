//! `cargo xtask`: project automation that plain cargo cannot express
//! (rust-analyzer's pattern). Run `cargo xtask help` for the list.
//!
//! - `test`: everything CI checks, in order: the tools it needs (checked,
//!   and installed where possible, before anything is built), guest
//!   builds, `cargo fmt --check`, `cargo clippy -D warnings`, `cargo doc`
//!   with warnings denied, then all tests with `cargo nextest`.
//! - `guests`: build the example and test guests: the Rust ones for
//!   wasm32-wasip2, the Python one with componentize-py (installed into a
//!   private virtualenv on first use). Safe to run from several processes at
//!   once; does nothing when everything is up to date.
//! - `preflight`: only the check of the tools `test` needs.
//! - `tidy`: repository conventions (also run as a test).

mod preflight;
mod python;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let task = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "help".to_string());
    let root = root();
    match task.as_str() {
        "test" => test(&root),
        "guests" => guests(&root),
        "preflight" => preflight::check().map(|()| println!("preflight: ok")),
        "tidy" => tidy::check(&root).map(|_| println!("tidy: ok")),
        _ => {
            println!("usage: cargo xtask <test|guests|preflight|tidy>");
            println!("  test       check tools, build guests, fmt, clippy, doc, all tests");
            println!("  guests     build examples/ and crates/test-programs for wasm32-wasip2");
            println!("  preflight  check (and install where possible) the tools tests need");
            println!("  tidy       check repository conventions");
            Ok(())
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Every guest crate: the examples and the test programs.
fn guest_manifests(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut manifests = vec![
        root.join("crates/test-programs/Cargo.toml"),
        root.join("crates/test-programs/state/Cargo.toml"),
    ];
    for entry in std::fs::read_dir(root.join("examples"))? {
        let manifest = entry?.path().join("Cargo.toml");
        if manifest.is_file() {
            manifests.push(manifest);
        }
    }
    manifests.sort();
    Ok(manifests)
}

fn ensure_wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to install the wasm32-wasip2 target")?;
    if !String::from_utf8_lossy(&installed.stdout).contains("wasm32-wasip2") {
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
    }
    Ok(())
}

fn guests(root: &Path) -> anyhow::Result<()> {
    ensure_wasm_target()?;
    for manifest in guest_manifests(root)? {
        run(cargo()
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
            .arg("--manifest-path")
            .arg(&manifest)
            // Host settings must not leak into guest builds.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"))?;
    }
    python::build(&root.join("crates/test-programs/python"))
}

fn test(root: &Path) -> anyhow::Result<()> {
    preflight::check()?;
    guests(root)?;
    run(cargo().current_dir(root).args(["fmt", "--all", "--check"]))?;
    for manifest in guest_manifests(root)? {
        run(cargo()
            .args(["fmt", "--check", "--manifest-path"])
            .arg(&manifest))?;
    }
    run(cargo().current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // A node without AI (the `ai` feature off) must keep building: it is
    // the quick first build, and the feature's seams are easy to break.
    run(cargo().current_dir(root).args([
        "clippy",
        "--package",
        "verge",
        "--no-default-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .current_dir(root)
        .args(["doc", "--no-deps", "--workspace"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    // The AI tests use the real model, installed the way users install it
    // (a no-op when it is installed and intact).
    run(cargo().current_dir(root).args([
        "run",
        "--quiet",
        "--package",
        "verge",
        "--",
        "ai",
        "pull",
    ]))?;
    run(cargo()
        .current_dir(root)
        .args(["nextest", "run", "--workspace", "--no-fail-fast"]))?;
    // The node's tests once more without AI: what a node built without it
    // refuses, and that everything else still works.
    run(cargo().current_dir(root).args([
        "nextest",
        "run",
        "--package",
        "verge-node",
        "--no-default-features",
        "--no-fail-fast",
    ]))?;
    Ok(())
}
