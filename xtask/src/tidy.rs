//! Repository conventions, checked by `cargo xtask tidy` and by the test
//! below under `cargo test` (rust-analyzer's `tidy.rs` pattern):
//! every Rust module opens with a `//!` comment saying what it owns.

use std::path::{Path, PathBuf};

use anyhow::bail;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') && name != "templates" {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Checks the conventions, listing every offending file.
pub(crate) fn check(root: &Path) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "examples", "bench"] {
        let dir = root.join(dir);
        if dir.is_dir() {
            rust_files(&dir, &mut files)?;
        }
    }
    let mut missing = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            missing.push(
                file.strip_prefix(root)
                    .unwrap_or(file)
                    .display()
                    .to_string(),
            );
        }
    }
    if !missing.is_empty() {
        bail!(
            "these files do not open with a `//!` comment saying what the module owns:\n  {}",
            missing.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_module_says_what_it_owns() {
        if let Err(e) = super::check(&crate::root()) {
            panic!("{e}");
        }
    }
}
