//! `verge up --watch`: rebuild and hot-swap components when their sources
//! change.
//!
//! What is watched: for a component with a build command and `watch` globs,
//! the files matching them (relative to the build's `workdir`; only the
//! globs' literal folders are watched, so build output elsewhere is not);
//! for any other component, its `.wasm` file, reloaded without running a
//! build (a build rewriting its own output would otherwise trigger itself);
//! and the manifest, whose change reloads the whole app. Events that concern
//! nothing are ignored; the rest are debounced, handled one batch at a time,
//! and a failed build or an invalid component only logs: the last good
//! version keeps serving.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use verge_manifest::{BuildSpec, Manifest};
use verge_node::Node;

use crate::up::{Target, UpArgs};

/// Quiet period after a change before acting on it.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Keeps watching until dropped.
pub(crate) struct Watching {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A component and what triggers its reload.
struct Item {
    component: String,
    /// The build to run, for components with `watch` globs.
    build: Option<(BuildSpec, GlobSet)>,
    source: PathBuf,
}

impl Item {
    fn affected_by(&self, path: &Path) -> bool {
        match &self.build {
            Some((build, globs)) => path
                .strip_prefix(&build.workdir)
                .is_ok_and(|rel| globs.is_match(rel)),
            None => path == self.source,
        }
    }

    /// Folders to watch (and whether recursively) for this item.
    fn folders(&self) -> Vec<(PathBuf, bool)> {
        match &self.build {
            Some((build, _)) => build
                .watch
                .iter()
                .map(|pattern| literal_root(&build.workdir, pattern))
                .collect(),
            None => self
                .source
                .parent()
                .map(|p| vec![(p.to_path_buf(), false)])
                .unwrap_or_default(),
        }
    }
}

/// The folder a glob can match under: its leading components without glob
/// characters. A plain file path gives its folder, watched alone; a glob
/// gives its literal prefix, watched recursively.
fn literal_root(workdir: &Path, pattern: &str) -> (PathBuf, bool) {
    let mut root = workdir.to_path_buf();
    let parts: Vec<&str> = pattern
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for (i, part) in parts.iter().enumerate() {
        if part.contains(['*', '?', '[', '{']) {
            return (root, true);
        }
        if i + 1 < parts.len() {
            root.push(part);
        }
    }
    (root, false)
}

pub(crate) fn start(target: &Target, node: Arc<Node>, args: UpArgs) -> anyhow::Result<Watching> {
    let (tx, rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })
    .context("cannot start watching files")?;

    let (items, manifest_path) = match target {
        Target::Component(path) => {
            let source = std::path::absolute(path)?;
            let name = node
                .current()
                .and_then(|app| app.component_names().into_iter().next())
                .unwrap_or_default();
            (
                vec![Item {
                    component: name,
                    build: None,
                    source,
                }],
                None,
            )
        }
        Target::App(manifest) => (items_of(manifest)?, Some(manifest.path.clone())),
    };

    let mut watched = BTreeMap::new();
    rewatch(
        &mut watcher,
        &mut watched,
        folders(&items, manifest_path.as_deref()),
    );
    tracing::info!("watching {} folder(s) for changes", watched.len());

    let task = tokio::spawn(react(
        Watch {
            rx,
            watcher,
            watched,
            items,
            manifest_path,
        },
        node,
        Arc::new(args),
    ));
    Ok(Watching { task })
}

/// The folders to watch, each once, recursively if any item needs it.
fn folders(items: &[Item], manifest_path: Option<&Path>) -> BTreeMap<PathBuf, bool> {
    let mut dirs: BTreeMap<PathBuf, bool> = BTreeMap::new();
    let wanted = items.iter().flat_map(Item::folders).chain(
        manifest_path
            .and_then(Path::parent)
            .map(|p| (p.to_path_buf(), false)),
    );
    for (dir, recursive) in wanted {
        *dirs.entry(dir).or_default() |= recursive;
    }
    dirs
}

/// Makes the watched set equal to `wanted` (a folder whose mode changes is
/// watched again). A folder that does not exist yet is skipped with a warning.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeMap<PathBuf, bool>,
    wanted: BTreeMap<PathBuf, bool>,
) {
    for (dir, recursive) in watched.iter() {
        if wanted.get(dir) != Some(recursive) {
            let _ = watcher.unwatch(dir);
        }
    }
    let mut now = BTreeMap::new();
    for (dir, recursive) in wanted {
        if watched.get(&dir) != Some(&recursive) {
            let mode = if recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            if let Err(e) = watcher.watch(&dir, mode) {
                tracing::warn!("not watching {}: {e}", dir.display());
                continue;
            }
        }
        now.insert(dir, recursive);
    }
    *watched = now;
}

fn items_of(manifest: &Manifest) -> anyhow::Result<Vec<Item>> {
    manifest
        .components
        .iter()
        .map(|c| {
            let build = match &c.build {
                Some(b) if !b.watch.is_empty() => {
                    let mut set = GlobSetBuilder::new();
                    for pattern in &b.watch {
                        set.add(
                            GlobBuilder::new(pattern)
                                .literal_separator(true)
                                .build()
                                .with_context(|| {
                                    format!(
                                        "component `{}`: invalid watch pattern `{pattern}`",
                                        c.name
                                    )
                                })?,
                        );
                    }
                    Some((b.clone(), set.build()?))
                }
                _ => None,
            };
            Ok(Item {
                component: c.name.clone(),
                build,
                source: c.source.clone(),
            })
        })
        .collect()
}

/// Everything the watch loop owns.
struct Watch {
    rx: mpsc::UnboundedReceiver<PathBuf>,
    watcher: notify::RecommendedWatcher,
    watched: BTreeMap<PathBuf, bool>,
    items: Vec<Item>,
    manifest_path: Option<PathBuf>,
}

impl Watch {
    /// Whether a change to `path` concerns anything watched.
    fn relevant(&self, path: &Path) -> bool {
        self.manifest_path.as_deref() == Some(path)
            || self.items.iter().any(|i| i.affected_by(path))
    }
}

async fn react(mut w: Watch, node: Arc<Node>, args: Arc<UpArgs>) {
    let build = !args.no_build;
    let mut changed = BTreeSet::new();
    loop {
        // Wait for a relevant change, then let the burst settle.
        while changed.is_empty() {
            match w.rx.recv().await {
                Some(path) if w.relevant(&path) => {
                    changed.insert(path);
                }
                Some(_) => {}
                None => return,
            }
        }
        loop {
            match tokio::time::timeout(DEBOUNCE, w.rx.recv()).await {
                Ok(Some(path)) if w.relevant(&path) => {
                    changed.insert(path);
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => break,
            }
        }

        // On failure, the component changes of the batch still count; on
        // success the whole app was rebuilt, so they are included.
        if let Some(path) = w.manifest_path.clone()
            && changed.remove(&path)
            && let Some(items) = reload_app(&path, &node, &args).await
        {
            let wanted = folders(&items, Some(&path));
            rewatch(&mut w.watcher, &mut w.watched, wanted);
            w.items = items;
            changed.clear();
        }

        let batch = std::mem::take(&mut changed);
        let affected: Vec<&Item> = w
            .items
            .iter()
            .filter(|item| batch.iter().any(|p| item.affected_by(p)))
            .collect();
        for item in affected {
            rebuild(item, &node, build).await;
        }
    }
}

async fn rebuild(item: &Item, node: &Arc<Node>, run_build: bool) {
    let name = item.component.clone();
    let build = item
        .build
        .as_ref()
        .map(|(b, _)| b.clone())
        .filter(|_| run_build);
    let node = node.clone();
    let result = tokio::task::spawn_blocking(move || {
        if let Some(spec) = &build {
            crate::build::run(&name, spec).map_err(|e| e.to_string())?;
        }
        node.reload_component(&name).map_err(|e| e.to_string())?;
        Ok::<_, String>(name)
    })
    .await;
    match result {
        Ok(Ok(name)) => {
            tracing::info!(component = %name, "reloaded; new requests use the new version")
        }
        Ok(Err(e)) => {
            tracing::error!(component = %item.component, "{e}\nstill serving the last good version")
        }
        Err(e) => tracing::error!("reload task failed: {e}"),
    }
}

async fn reload_app(path: &Path, node: &Arc<Node>, args: &Arc<UpArgs>) -> Option<Vec<Item>> {
    let path = path.to_path_buf();
    let node = node.clone();
    let args = args.clone();
    let result = tokio::task::spawn_blocking(move || {
        let manifest = args.load_manifest(&path)?;
        let items = items_of(&manifest).map_err(|e| format!("{e:#}"))?;
        let target = Target::App(Box::new(manifest));
        let app = args
            .app_config(&target, !args.no_build, &crate::env::ProcessEnv)
            .map_err(|e| e.to_string())?;
        let runtime = node.prepare(&app).map_err(|e| e.to_string())?;
        node.install(runtime);
        Ok::<_, String>(items)
    })
    .await;
    match result {
        Ok(Ok(items)) => {
            tracing::info!("manifest changed: app reloaded");
            Some(items)
        }
        Ok(Err(e)) => {
            tracing::error!(
                "manifest changed but cannot be used:\n{e}\nstill serving the last good version"
            );
            None
        }
        Err(e) => {
            tracing::error!("reload task failed: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_watched_from_their_literal_folder() {
        let w = Path::new("/app");
        let cases = [
            ("src/**/*.rs", ("/app/src", true)),
            ("Cargo.toml", ("/app", false)),
            ("wit/deps/http.wit", ("/app/wit/deps", false)),
            ("**/*.py", ("/app", true)),
            ("./lib/*.js", ("/app/lib", true)),
            ("assets/{a,b}/x.txt", ("/app/assets", true)),
        ];
        for (pattern, (dir, recursive)) in cases {
            assert_eq!(
                literal_root(w, pattern),
                (PathBuf::from(dir), recursive),
                "{pattern}"
            );
        }
    }
}
