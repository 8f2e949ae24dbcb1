//! Keeps the node serving what the store records.
//!
//! At start the sync loads every app from one listing of the store, marks
//! the node ready, and then follows the store's watch from the revision of
//! that listing, so no change is missed in between. Each change to an app
//! builds (or reuses) the runtimes of the versions taking traffic and swaps
//! them in at once; a version that fails to load leaves the app as it was.
//!
//! An app that failed to load (a damaged blob, an I/O error) is tried
//! again every few seconds. In a cluster, an app whose placement does not
//! select this node is catalogued (for forwarding) but not loaded.
//!
//! **Invariant**: the applied revision only moves forward, after the node
//! reflects every change up to it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use verge_control::AppRecord;
use verge_control::model::{APPS_PREFIX, SECRETS_PREFIX};
use verge_store::{BlobStore, Change, Entry, Revision, Store, StoreError};

use crate::ServerError;
use crate::background::Background;
use crate::plane::{NodePlane, app_id};

/// Loads every app, then follows the store in a background task. Before
/// loading, removes the blobs no version refers to; nothing is uploading
/// yet, since the API starts after this. With `own_store` (standalone) it
/// also removes the records of such uploads; a cluster's store is shared,
/// and another node may be between an upload and its deploy.
pub(crate) async fn start(
    store: Arc<dyn Store>,
    blobs: &dyn BlobStore,
    plane: Arc<NodePlane>,
    own_store: bool,
    background: &Background,
) -> Result<(), ServerError> {
    let revision = store.revision().await?;
    // (The vaults already hold every secret: `secrets::open` read them.)
    let entries = store.list(APPS_PREFIX).await?;
    collect_garbage(store.as_ref(), blobs, &entries, own_store).await?;
    for entry in &entries {
        apply_put(&plane, &entry.key, &entry.value, entry.revision).await;
    }
    plane.set_applied(revision);
    plane.node.mark_ready();
    tracing::info!(
        apps = entries.len(),
        revision,
        "node in step with the store"
    );
    // One watch over the whole store, so the applied revision covers apps
    // and secrets alike.
    let mut watch = store.watch("", revision).await?;
    background.spawn(async move {
        // Failed apps are retried on a timer: a busy store (audit entries,
        // key-value changes) must not postpone them forever.
        let mut last_retry = tokio::time::Instant::now();
        loop {
            if last_retry.elapsed() >= RETRY_EVERY {
                retry_failed(&store, &plane).await;
                last_retry = tokio::time::Instant::now();
            }
            match watch.next(RETRY_EVERY).await {
                Ok(changes) if changes.is_empty() => {}
                Ok(changes) => {
                    for change in &changes {
                        match change {
                            Change::Put(e) if e.key.starts_with(SECRETS_PREFIX) => {
                                plane.vaults.apply(&e.key, Some(&e.value));
                            }
                            Change::Delete { key, .. } if key.starts_with(SECRETS_PREFIX) => {
                                plane.vaults.apply(key, None);
                            }
                            Change::Put(e) if e.key.starts_with(APPS_PREFIX) => {
                                apply_put(&plane, &e.key, &e.value, e.revision).await
                            }
                            Change::Put(_) => {}
                            Change::Delete { key, .. } => {
                                if let Some(k) = key.strip_prefix(APPS_PREFIX) {
                                    plane.uncatalog(k);
                                    plane.node.remove_app(k);
                                    plane.retain(k, &[]);
                                    plane.set_outcome(k, change.revision(), None);
                                    tracing::info!(app = k, "app removed");
                                }
                            }
                        }
                    }
                    if let Some(last) = changes.last() {
                        plane.set_applied(last.revision());
                    }
                }
                Err(e) => {
                    tracing::error!("cannot follow the state store: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(())
}

/// How often apps that failed to load are tried again (a blob repaired on
/// disk, a transient I/O error).
const RETRY_EVERY: Duration = Duration::from_secs(5);

async fn retry_failed(store: &Arc<dyn Store>, plane: &NodePlane) {
    for key in plane.failed() {
        match store.get(&format!("{APPS_PREFIX}{key}")).await {
            Ok(Some(entry)) => {
                tracing::info!(app = %key, "trying again to load the app");
                apply_put(plane, &entry.key, &entry.value, entry.revision).await;
            }
            Ok(None) => plane.set_outcome(&key, 0, None),
            Err(e) => tracing::warn!(app = %key, "cannot read the app record: {e}"),
        }
    }
}

/// Serves the app recorded under `store_key`; on failure the node keeps
/// what it served before, and the failure is recorded for the API.
async fn apply_put(plane: &NodePlane, store_key: &str, value: &[u8], revision: Revision) {
    let record: AppRecord = match serde_json::from_slice(value) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(key = store_key, "unreadable app record, not served: {e}");
            if let Some(k) = store_key.strip_prefix(APPS_PREFIX) {
                plane.set_outcome(k, revision, Some("the app record is unreadable".into()));
            }
            return;
        }
    };
    let key = app_id(&record);
    match plane.catalog(&key, revision, &record) {
        Ok(true) => {}
        Ok(false) => {
            // Placed on other nodes: requests for it are forwarded there.
            if plane.node.apps().get(&key).is_some() {
                plane.node.remove_app(&key);
                tracing::info!(app = %key, "app placed on other nodes; no longer served here");
            }
            plane.retain(&key, &[]);
            plane.set_outcome(&key, revision, None);
            return;
        }
        Err(e) => {
            tracing::error!(app = %key, "unreadable manifest, keeping the previous state: {e}");
            plane.set_outcome(&key, revision, Some(e));
            return;
        }
    }
    let mut versions = Vec::new();
    for (version, weight) in record.live() {
        match plane.runtime(&record, version).await {
            Ok(rt) => versions.push((rt, weight)),
            Err(e) => {
                tracing::error!(app = %key, version = version.number, "cannot load version, keeping the previous state: {e}");
                plane.set_outcome(&key, revision, Some(format!("v{}: {e}", version.number)));
                return;
            }
        }
    }
    if let Err(e) = plane.node.set_app(&key, versions) {
        tracing::error!(app = %key, "cannot serve app, keeping the previous state: {e}");
        plane.set_outcome(&key, revision, Some(e.to_string()));
        return;
    }
    plane.set_outcome(&key, revision, None);
    let live: Vec<(u32, String)> = record
        .live()
        .map(|(v, _)| (v.number, v.digest.clone()))
        .collect();
    plane.retain(&key, &live);
    let split = record
        .traffic
        .iter()
        .map(|s| format!("v{}={}", s.version, s.weight))
        .collect::<Vec<_>>()
        .join(" ");
    tracing::info!(app = %key, traffic = %split, "serving");
}

/// Removes blobs no version refers to (left by uploads whose deploy never
/// happened, or by versions pruned or deleted). Runs before the API
/// starts, so no upload is in flight.
async fn collect_garbage(
    store: &dyn Store,
    blobs: &dyn BlobStore,
    apps: &[Entry],
    own_store: bool,
) -> Result<(), ServerError> {
    let mut referenced = HashSet::new();
    for entry in apps {
        let record: AppRecord = serde_json::from_slice(&entry.value)
            .map_err(|e| StoreError::Backend(format!("`{}`: {e}", entry.key)))?;
        for v in &record.versions {
            referenced.extend(v.components.values().cloned());
        }
    }
    let mut removed = 0;
    for id in blobs.list().await? {
        if !referenced.contains(id.as_str()) {
            blobs.remove(&id).await?;
            removed += 1;
        }
    }
    // A tenant's record of an upload goes with the blob.
    let uploads = if own_store {
        store.list("uploads/").await?
    } else {
        Vec::new()
    };
    for entry in uploads {
        let digest = entry.key.rsplit('/').next().unwrap_or("");
        if !referenced.contains(digest) {
            store.delete(&entry.key, verge_store::Expect::Any).await?;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed blobs no version refers to");
    }
    Ok(())
}
