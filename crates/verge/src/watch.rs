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

/// Keeps watching until dropped.
pub(crate) struct Watching {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.task.abort();
    }
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

    let mut watched = BTreeSet::new();
    rewatch(
        &mut watcher,
        &mut watched,
        folders(&items, manifest_path.as_deref()),
    )?;
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

/// The folders to watch: build workdirs (recursively) for components with
/// watch globs, the folder of the `.wasm` otherwise, and the manifest's.
fn folders(items: &[Item], manifest_path: Option<&Path>) -> BTreeSet<(PathBuf, bool)> {
    let mut dirs = BTreeSet::new();
    for item in items {
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
    if let Some(parent) = manifest_path.and_then(Path::parent) {
        dirs.insert((parent.to_path_buf(), false));
    }
    dirs
}

/// Makes the watched set equal to `wanted`.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<(PathBuf, bool)>,
    wanted: BTreeSet<(PathBuf, bool)>,
) -> anyhow::Result<()> {
    for (dir, _) in watched.difference(&wanted) {
        let _ = watcher.unwatch(dir);
    }
    for (dir, recursive) in wanted.difference(watched) {
        let mode = if *recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        watcher
            .watch(dir, mode)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
    }
    *watched = wanted;
    Ok(())
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

/// Everything the watch loop owns.
struct Watch {
    rx: mpsc::UnboundedReceiver<PathBuf>,
    watcher: notify::RecommendedWatcher,
    watched: BTreeSet<(PathBuf, bool)>,
    items: Vec<Item>,
    manifest_path: Option<PathBuf>,
}

async fn react(mut w: Watch, node: Arc<Node>, args: Arc<UpArgs>) {
    let build = !args.no_build;
    while let Some(first) = w.rx.recv().await {
        let mut changed = BTreeSet::from([first]);
        // Debounce: editors and compilers write in bursts.
        loop {
            match tokio::time::timeout(DEBOUNCE, w.rx.recv()).await {
                Ok(Some(path)) => {
                    changed.insert(path);
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }

        if let Some(path) = w.manifest_path.clone()
            && changed.contains(&path)
        {
            if let Some(items) = reload_app(&path, &node, &args).await {
                let wanted = folders(&items, Some(&path));
                if let Err(e) = rewatch(&mut w.watcher, &mut w.watched, wanted) {
                    tracing::error!("{e:#}");
                }
                w.items = items;
            }
            continue;
        }

        let affected: Vec<&Item> = w
            .items
            .iter()
            .filter(|item| changed.iter().any(|p| item.affected_by(p)))
            .collect();
        for item in affected {
            rebuild(item, &node, build).await;
        }
    }
}

async fn rebuild(item: &Item, node: &Arc<Node>, run_build: bool) {
    let name = item.component.clone();
    let build = item.build.clone().filter(|_| run_build);
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
        let app = args
            .app_config(&target, !args.no_build)
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
