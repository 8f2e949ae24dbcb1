//! `verge.toml`: the description of an app.
//!
//! Parsing happens in two layers, as in ripgrep's low-level/high-level args:
//! [`raw`] mirrors the file with serde (`deny_unknown_fields`, spans kept), and
//! `validate` turns it into the typed [`Manifest`] that the rest of Verge uses.
//! Every error is a [`ManifestError`] naming file, line and column, rendered
//! like a compiler diagnostic with a hint of what to do.
//!
//! **Invariant**: a [`Manifest`] value is always valid: names are well-formed,
//! routes parse and do not conflict, limits are in range, paths are absolute.
//! Only the existence of component files is checked separately
//! ([`Manifest::check_sources`]), because build commands create them.
//!
//! **API boundary**: no I/O besides reading the manifest and checking files; no
//! knowledge of wasmtime or HTTP servers.

mod error;
pub mod raw;
mod units;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{Diagnostic, ManifestError};
pub use units::{UnitError, parse_duration, parse_size};
pub use validate::{check_config_name, check_name};
use verge_capabilities::{Capabilities, Limits};
use verge_router::Route;

/// The conventional manifest file name.
pub const MANIFEST_FILE: &str = "verge.toml";

/// A validated app manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Absolute path of the manifest file.
    pub path: PathBuf,
    /// Folder holding the manifest; relative paths in it are resolved from here.
    pub dir: PathBuf,
    /// The app's name.
    pub name: String,
    /// Components in file order.
    pub components: Vec<ComponentSpec>,
    /// App variables with their default values.
    pub variables: std::collections::BTreeMap<String, String>,
    /// Named environments and the variables they override.
    pub environments:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// The environment whose values the components carry, if one was selected.
    pub environment: Option<String>,
    /// Which cluster nodes run the app (every node by default).
    pub placement: Placement,
    text: String,
}

/// Which nodes of a cluster run an app: those whose labels match every
/// selector. A standalone server runs every app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Label name to the values accepted; empty runs everywhere.
    pub labels: std::collections::BTreeMap<String, Vec<String>>,
    /// Fewest nodes that must serve the app for a deploy to succeed.
    pub min_replicas: Option<u32>,
}

/// Whether `text` can be a node label's name or value: 1-63 letters,
/// digits, `-`, `_` or `.`.
pub fn is_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why a node's labels cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelError {
    /// A pair without `=`.
    #[error("label `{0}` is not key=value")]
    NotAPair(String),
    /// A key or value with characters labels cannot have.
    #[error("label `{0}`: keys and values are 1-63 letters, digits, `-`, `_` or `.`")]
    Invalid(String),
    /// The same key twice.
    #[error("label `{0}` is given twice")]
    Repeated(String),
}

/// A node's labels from `key=value,key=value` (`verge server --labels`).
pub fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, LabelError> {
    let mut labels = std::collections::BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| LabelError::NotAPair(pair.to_string()))?;
        if !is_label(key) || !is_label(value) {
            return Err(LabelError::Invalid(pair.to_string()));
        }
        if labels.insert(key.to_string(), value.to_string()).is_some() {
            return Err(LabelError::Repeated(key.to_string()));
        }
    }
    Ok(labels)
}

impl Placement {
    /// Whether a node with `labels` runs the app.
    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.labels
            .iter()
            .all(|(name, values)| labels.get(name).is_some_and(|v| values.contains(v)))
    }
}

/// An environment the manifest does not declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentError {
    /// The manifest.
    pub file: PathBuf,
    /// The environment asked for.
    pub name: String,
    /// The environments it declares.
    pub known: Vec<String>,
}

impl std::fmt::Display for EnvironmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (file, name) = (self.file.display(), &self.name);
        if self.known.is_empty() {
            write!(
                f,
                "`{file}` declares no environment, so `{name}` cannot be selected; add an \
                 `[environments.{name}]` table"
            )
        } else {
            write!(
                f,
                "`{file}` has no environment `{name}`; it has: {}",
                self.known.join(", ")
            )
        }
    }
}

impl std::error::Error for EnvironmentError {}

/// One component of an app.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// Name, unique within the app.
    pub name: String,
    /// Absolute path of the `.wasm` component.
    pub source: PathBuf,
    /// Byte span of the `source` value in the manifest, for later errors.
    source_span: std::ops::Range<usize>,
    /// Routes served by this component.
    pub routes: Vec<Route>,
    /// How to build the component, if it is built from source.
    pub build: Option<BuildSpec>,
    /// What the component may reach.
    pub capabilities: Capabilities,
    /// Resource limits.
    pub limits: Limits,
}

/// A build step run before serving (and again on change with `--watch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// Shell command, run with `sh -c`.
    pub command: String,
    /// Working directory, absolute.
    pub workdir: PathBuf,
    /// Glob patterns, relative to `workdir`, whose changes trigger a rebuild.
    pub watch: Vec<String>,
    /// Longest time the build may take.
    pub timeout: Duration,
}

impl Manifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let path = std::path::absolute(path).map_err(|e| ManifestError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &path)
    }

    /// Validates manifest `text` as if read from `path` (used for messages and
    /// for resolving relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        validate::manifest(text, path)
    }

    /// Checks that every component file exists and is a regular file; call
    /// this after running build commands.
    pub fn check_sources(&self) -> Result<(), ManifestError> {
        for c in &self.components {
            self.check_source(c)?;
        }
        Ok(())
    }

    /// Checks one component's file, as [`Manifest::check_sources`] does.
    pub fn check_source(&self, c: &ComponentSpec) -> Result<(), ManifestError> {
        if c.source.is_file() {
            return Ok(());
        }
        let help = match &c.build {
            Some(_) => "the build command ran but did not produce this file; make `source` \
                        point at the `.wasm` it writes"
                .to_string(),
            None => "build the component first, or fix the path (relative paths start at the \
                     folder holding verge.toml)"
                .to_string(),
        };
        Err(ManifestError::at(
            &self.path,
            &self.text,
            c.source_span.clone(),
            format!(
                "component `{}`: file `{}` does not exist",
                c.name,
                c.source.display()
            ),
            Some(help),
        ))
    }

    /// Selects environment `name`: every component's variables take that
    /// environment's values where it overrides them. Fails, listing the
    /// environments there are, if the manifest has no such environment.
    pub fn select_environment(&mut self, name: &str) -> Result<(), EnvironmentError> {
        let Some(overrides) = self.environments.get(name) else {
            return Err(EnvironmentError {
                file: self.path.clone(),
                name: name.to_string(),
                known: self.environments.keys().cloned().collect(),
            });
        };
        for c in &mut self.components {
            for (var, value) in &mut c.capabilities.variables {
                *value = overrides
                    .get(var)
                    .or_else(|| self.variables.get(var))
                    .cloned()
                    .unwrap_or_default();
            }
        }
        self.environment = Some(name.to_string());
        Ok(())
    }

    /// The component with this name.
    pub fn component(&self, name: &str) -> Option<&ComponentSpec> {
        self.components.iter().find(|c| c.name == name)
    }
}
