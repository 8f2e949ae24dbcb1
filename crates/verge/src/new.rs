//! `verge new`: create an app from a template embedded in the binary.
//!
//! **Invariant**: never overwrites anything: the target folder must not
//! exist or must be empty.

use std::path::PathBuf;

use anyhow::anyhow;

use crate::Failure;

/// Arguments of `verge new`.
#[derive(Debug, clap::Args)]
pub(crate) struct NewArgs {
    /// The app's name: lower-case letters, digits and `-`.
    name: String,

    /// The template to start from.
    #[arg(long, short = 't', default_value = "http-rust", value_parser = template_names())]
    template: String,

    /// Folder to create [default: ./NAME].
    #[arg(long, value_name = "DIR")]
    path: Option<PathBuf>,
}

struct Template {
    name: &'static str,
    description: &'static str,
    files: &'static [(&'static str, &'static str)],
}

const TEMPLATES: &[Template] = &[Template {
    name: "http-rust",
    description: "an HTTP function in Rust (wasi:http, wasm32-wasip2)",
    files: &[
        (
            "Cargo.toml",
            include_str!("../templates/http-rust/Cargo.toml.tmpl"),
        ),
        (
            "src/lib.rs",
            include_str!("../templates/http-rust/src/lib.rs.tmpl"),
        ),
        (
            "verge.toml",
            include_str!("../templates/http-rust/verge.toml.tmpl"),
        ),
        (
            ".gitignore",
            include_str!("../templates/http-rust/gitignore.tmpl"),
        ),
        (
            "README.md",
            include_str!("../templates/http-rust/README.md.tmpl"),
        ),
    ],
}];

fn template_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        TEMPLATES
            .iter()
            .map(|t| clap::builder::PossibleValue::new(t.name).help(t.description)),
    )
}

pub(crate) fn run(args: &NewArgs) -> Result<(), Failure> {
    verge_manifest::check_name(&args.name)
        .map_err(|why| Failure::input(anyhow!("invalid app name `{}`: {why}", args.name)))?;
    let template = TEMPLATES
        .iter()
        .find(|t| t.name == args.template)
        .ok_or_else(|| Failure::input(anyhow!("unknown template `{}`", args.template)))?;
    let dir = args
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        let empty = dir
            .read_dir()
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(Failure::input(anyhow!(
                "`{}` already exists and is not empty; choose another name or --path",
                dir.display()
            )));
        }
    }
    // Cargo turns `-` into `_` in artifact names.
    let crate_name = args.name.replace('-', "_");
    for (file, text) in template.files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                Failure::runtime(anyhow!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let text = text
            .replace("{{name}}", &args.name)
            .replace("{{crate}}", &crate_name);
        std::fs::write(&path, text)
            .map_err(|e| Failure::runtime(anyhow!("cannot write {}: {e}", path.display())))?;
    }
    println!(
        "Created `{}` from template {} in {}",
        args.name,
        template.name,
        dir.display()
    );
    println!();
    println!("Next:");
    println!("  cd {}", dir.display());
    println!("  rustup target add wasm32-wasip2   # once per machine");
    println!("  verge up                          # build and serve on http://127.0.0.1:3000");
    Ok(())
}
