//! Component blobs of a cluster: the JetStream Object Store holds every
//! blob once for all nodes; each node keeps the blobs it serves in its own
//! blob folder.
//!
//! A blob uploaded to a node is written to its folder (hashed and checked
//! there), then put into the Object Store under its sha256; the upload is
//! acknowledged only after both. A node asked for a blob it lacks fetches
//! it from the Object Store into its folder, where it is hashed again
//! before use: a damaged or substituted object is refused, never served.
//!
//! **Invariant**: [`BlobStore::local_path`] returns only files whose bytes
//! hash to their name (the folder's own guarantee), so a node serves a
//! version only once every one of its blobs is whole on local disk.

use std::path::PathBuf;
use std::sync::Arc;

use async_nats::jetstream::object_store::{self, ObjectStore};
use async_nats::jetstream::stream::StorageType;
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use tokio::io::AsyncReadExt;
use verge_store::{BlobError, BlobId, BlobStore, BlobWriter, FsBlobs};

use crate::{BLOB_BUCKET, Link};

/// Blobs in the cluster's Object Store, cached in the node's folder.
#[derive(Clone)]
pub struct ClusterBlobs {
    link: Link,
    local: FsBlobs,
    bucket: Arc<tokio::sync::OnceCell<ObjectStore>>,
}

impl ClusterBlobs {
    pub(crate) fn new(link: Link, local: FsBlobs) -> Self {
        Self {
            link,
            local,
            bucket: Arc::default(),
        }
    }

    fn unreachable(&self, what: &str) -> BlobError {
        BlobError::Unavailable(format!(
            "cannot {what} the cluster's blob store (NATS at {}): the link is down",
            self.link.config.display_url()
        ))
    }

    async fn bucket(&self) -> Result<&ObjectStore, BlobError> {
        if !self.link.connected() {
            return Err(self.unreachable("reach"));
        }
        self.bucket
            .get_or_try_init(|| async {
                if let Ok(bucket) = self.link.js.get_object_store(BLOB_BUCKET).await {
                    return Ok(bucket);
                }
                self.link
                    .js
                    .create_object_store(object_store::Config {
                        bucket: BLOB_BUCKET.to_string(),
                        description: Some("Verge component blobs, named by sha256".to_string()),
                        storage: StorageType::File,
                        num_replicas: self.link.config.replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        BlobError::Unavailable(format!("cannot open the blob bucket: {e}"))
                    })
            })
            .await
    }

    /// Puts the local blob `id` into the Object Store unless it is there,
    /// whole (a damaged copy is replaced).
    async fn publish(&self, id: &BlobId) -> Result<(), BlobError> {
        let bucket = self.bucket().await?;
        let digest = const_hex::decode(id.as_str())
            .map(|bytes| format!("SHA-256={}", URL_SAFE.encode(bytes)))
            .ok();
        if bucket
            .info(id.as_str())
            .await
            .is_ok_and(|info| info.digest.is_some() && info.digest == digest)
        {
            return Ok(());
        }
        let path = self.local.local_path(id).await?;
        let mut file = tokio::fs::File::open(&path).await?;
        bucket
            .put(id.as_str(), &mut file)
            .await
            .map_err(|e| BlobError::Unavailable(format!("cannot store blob {id}: {e}")))?;
        Ok(())
    }

    /// Copies blob `id` from the Object Store into the local folder,
    /// verifying it on the way.
    async fn fetch(&self, id: &BlobId) -> Result<(), BlobError> {
        let bucket = self.bucket().await?;
        let mut object = match bucket.get(id.as_str()).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                return Err(BlobError::Missing(id.clone()));
            }
            Err(e) => {
                return Err(BlobError::Unavailable(format!(
                    "cannot fetch blob {id}: {e}"
                )));
            }
        };
        let mut writer = self.local.writer().await?;
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = object
                .read(&mut buf)
                .await
                .map_err(|e| BlobError::Unavailable(format!("fetching blob {id}: {e}")))?;
            if n == 0 {
                break;
            }
            writer.write(&buf[..n]).await?;
        }
        match writer.finish(Some(id)).await {
            Ok(_) => {
                tracing::info!(blob = %id, "blob fetched from the cluster");
                Ok(())
            }
            Err(BlobError::Mismatch { .. }) => {
                tracing::error!(blob = %id, "the cluster's copy of the blob is damaged");
                Err(BlobError::Corrupt(id.clone()))
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl BlobStore for ClusterBlobs {
    async fn writer(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        if !self.link.connected() {
            return Err(self.unreachable("upload to"));
        }
        Ok(Box::new(ClusterWriter {
            local: self.local.writer().await?,
            blobs: self.clone(),
        }))
    }

    async fn local_path(&self, id: &BlobId) -> Result<PathBuf, BlobError> {
        match self.local.local_path(id).await {
            Err(BlobError::Missing(_)) => {
                self.fetch(id).await?;
                self.local.local_path(id).await
            }
            other => other,
        }
    }

    async fn list(&self) -> Result<Vec<BlobId>, BlobError> {
        self.local.list().await
    }

    /// Removes the node's copy only: other nodes may serve the blob.
    async fn remove(&self, id: &BlobId) -> Result<(), BlobError> {
        self.local.remove(id).await
    }
}

struct ClusterWriter {
    local: Box<dyn BlobWriter>,
    blobs: ClusterBlobs,
}

#[async_trait]
impl BlobWriter for ClusterWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.local.write(chunk).await
    }

    fn len(&self) -> u64 {
        self.local.len()
    }

    async fn finish(self: Box<Self>, expected: Option<&BlobId>) -> Result<BlobId, BlobError> {
        let id = self.local.finish(expected).await?;
        self.blobs.publish(&id).await?;
        Ok(id)
    }
}
