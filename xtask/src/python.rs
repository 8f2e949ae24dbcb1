//! Builds the Python test guest with componentize-py.
//!
//! componentize-py comes from PyPI, pinned, installed into a virtualenv
//! under the guest's own `target/` folder on first use. An exclusive file
//! lock makes concurrent runs (tests run in parallel processes) wait for each
//! other instead of racing on the install or the output file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::Context;

use crate::run;

const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// Builds `dir/app.py` into `dir/target/app.wasm` if it is missing or stale.
pub(crate) fn build(dir: &Path) -> anyhow::Result<()> {
    let target = dir.join("target");
    std::fs::create_dir_all(&target)?;
    let lock = std::fs::File::create(target.join(".lock"))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .context("cannot lock the Python guest build")?;

    let out = target.join("app.wasm");
    if is_fresh(&out, &inputs(dir)?) {
        return Ok(());
    }
    let venv = target.join("venv");
    let tool = venv.join("bin/componentize-py");
    if !tool.is_file() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", COMPONENTIZE_PY]))?;
    }
    let tmp = target.join("app.wasm.tmp");
    run(Command::new(&tool)
        .current_dir(dir)
        .args([
            "--quiet",
            "-d",
            "wit",
            "-w",
            "app",
            "componentize",
            "app",
            "-o",
        ])
        .arg(&tmp))?;
    std::fs::rename(&tmp, &out)?;
    Ok(())
}

fn inputs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = vec![dir.join("app.py"), dir.join("wit/world.wit")];
    for entry in std::fs::read_dir(dir.join("wit/deps"))? {
        files.push(entry?.path());
    }
    Ok(files)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn is_fresh(out: &Path, inputs: &[PathBuf]) -> bool {
    let Some(built) = modified(out) else {
        return false;
    };
    inputs
        .iter()
        .all(|i| modified(i).is_some_and(|m| m <= built))
}
