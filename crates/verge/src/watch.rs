//! `verge up --watch`: rebuild and hot-swap components when their sources
//! change.
//!
//! What is watched: for a component with a build command, the files matching
//! its `watch` globs (relative to the build's `workdir`); for a component
//! without one, its `.wasm` file; and the manifest itself, whose change
//! reloads the whole app. Events are debounced, builds run one at a time,
//! and a failed build or an invalid component only logs: the last good
//! version keeps serving.

use std::collections::BTreeSet;
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

/// Keeps the watcher alive; dropping it stops watching.
pub(crate) struct Watching {
    _watcher: notify::RecommendedWatcher,
}

struct Item {
    component: String,
    build: Option<BuildSpec>,
    globs: Option<GlobSet>,
    source: PathBuf,
}

impl Item {
    fn affected_by(&self, path: &Path) -> bool {
        match (&self.build, &self.globs) {
            (Some(build), Some(globs)) => path
                .strip_prefix(&build.workdir)
                .is_ok_and(|rel| globs.is_match(rel)),
            // With a build but no globs, and without a build, the component
            // file itself is what counts.
            _ => path == self.source,
        }
    }
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
                    globs: None,
                    source,
                }],
                None,
            )
        }
        Target::App(manifest) => (items_of(manifest)?, Some(manifest.path.clone())),
    };

    let mut dirs: BTreeSet<(PathBuf, bool)> = BTreeSet::new();
    for item in &items {
        match (&item.build, &item.globs) {
            (Some(build), Some(_)) => {
                dirs.insert((build.workdir.clone(), true));
            }
            _ => {
                if let Some(parent) = item.source.parent() {
                    dirs.insert((parent.to_path_buf(), false));
                }
            }
        }
    }
    if let Some(parent) = manifest_path.as_ref().and_then(|p| p.parent()) {
        dirs.insert((parent.to_path_buf(), false));
    }
    for (dir, recursive) in &dirs {
        let mode = if *recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        watcher
            .watch(dir, mode)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
    }
    tracing::info!("watching {} folder(s) for changes", dirs.len());

    tokio::spawn(react(rx, items, manifest_path, node, Arc::new(args)));
    Ok(Watching { _watcher: watcher })
}

fn items_of(manifest: &Manifest) -> anyhow::Result<Vec<Item>> {
    manifest
        .components
        .iter()
        .map(|c| {
            let globs = match &c.build {
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
                    Some(set.build()?)
                }
                _ => None,
            };
            Ok(Item {
                component: c.name.clone(),
                build: c.build.clone(),
                globs,
                source: c.source.clone(),
            })
        })
        .collect()
}

async fn react(
    mut rx: mpsc::UnboundedReceiver<PathBuf>,
    mut items: Vec<Item>,
    manifest_path: Option<PathBuf>,
    node: Arc<Node>,
    args: Arc<UpArgs>,
) {
    while let Some(first) = rx.recv().await {
        let mut changed = BTreeSet::from([first]);
        // Debounce: editors and compilers write in bursts.
        loop {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(path)) => {
                    changed.insert(path);
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }

        if manifest_path.as_ref().is_some_and(|m| changed.contains(m)) {
            if let Some(path) = &manifest_path
                && let Some(new_items) = reload_app(path, &node, &args).await
            {
                items = new_items;
            }
            continue;
        }

        let affected: Vec<&Item> = items
            .iter()
            .filter(|item| changed.iter().any(|p| item.affected_by(p)))
            .collect();
        for item in affected {
            rebuild(item, &node).await;
        }
    }
}

async fn rebuild(item: &Item, node: &Arc<Node>) {
    let name = item.component.clone();
    let build = item.build.clone();
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
        let manifest = Manifest::load(&path).map_err(|e| e.to_string())?;
        let items = items_of(&manifest).map_err(|e| format!("{e:#}"))?;
        let target = Target::App(Box::new(manifest));
        let app = args.app_config(&target, true).map_err(|e| e.to_string())?;
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
