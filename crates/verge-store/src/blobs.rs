//! Content-addressed blobs: component files named by the sha256 of their
//! bytes.
//!
//! [`FsBlobs`] keeps them under `DIR/sha256/ab/abcdef…`. A write goes to
//! `DIR/tmp/` first, is hashed while it streams, synced, checked against the
//! expected name and only then renamed into place; a crash leaves at most a
//! temporary file, which [`FsBlobs::open`] removes.
//!
//! **Invariant**: [`BlobStore::local_path`] returns a path only after
//! re-hashing the file, so a blob edited or corrupted on disk is refused,
//! never served.

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// The sha256 of a blob, as 64 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(String);

impl BlobId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("{:x}", Sha256::digest(bytes)))
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BlobId {
    type Err = BlobError;

    fn from_str(s: &str) -> Result<Self, BlobError> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(hex.to_string()))
        } else {
            Err(BlobError::InvalidId(s.chars().take(80).collect()))
        }
    }
}

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// Not a sha256 in hex.
    #[error("`{0}` is not a sha256 digest (64 lower-case hex digits)")]
    InvalidId(String),
    /// The bytes written do not hash to the expected id.
    #[error("the uploaded bytes hash to {actual}, not {expected}")]
    Mismatch {
        /// The id the writer claimed.
        expected: BlobId,
        /// What the bytes hash to.
        actual: BlobId,
    },
    /// No blob with this id.
    #[error("blob {0} is missing")]
    Missing(BlobId),
    /// The stored bytes no longer match their id.
    #[error("blob {0} is corrupt: its bytes no longer match its digest")]
    Corrupt(BlobId),
    /// The filesystem failed.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
    /// The blob lives elsewhere (a cluster) and cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
}

/// Immutable blobs addressed by content.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Starts writing a new blob.
    async fn writer(&self) -> Result<Box<dyn BlobWriter>, BlobError>;

    /// A verified local copy of the blob, to read or map.
    async fn local_path(&self, id: &BlobId) -> Result<PathBuf, BlobError>;

    /// Every stored blob.
    async fn list(&self) -> Result<Vec<BlobId>, BlobError>;

    /// Removes a blob; removing an absent one is not an error.
    async fn remove(&self, id: &BlobId) -> Result<(), BlobError>;
}

/// A blob being written.
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError>;

    /// Bytes written so far.
    fn len(&self) -> u64;

    /// Whether nothing was written yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the blob durable and visible; with `expected`, only if the
    /// bytes hash to it. An unfinished writer leaves nothing behind.
    async fn finish(self: Box<Self>, expected: Option<&BlobId>) -> Result<BlobId, BlobError>;
}

/// Blobs in a local folder.
#[derive(Debug, Clone)]
pub struct FsBlobs {
    root: PathBuf,
}

impl FsBlobs {
    /// Opens (creating) the folder and removes unfinished writes.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root.join("sha256"))?;
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        self.root.join("sha256").join(&id.0[..2]).join(&id.0)
    }
}

#[async_trait]
impl BlobStore for FsBlobs {
    async fn writer(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        let tmp = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(self.root.join("tmp"))?;
        let (file, path) = tmp.into_parts();
        Ok(Box::new(FsWriter {
            blobs: self.clone(),
            file: tokio::fs::File::from_std(file),
            path,
            hasher: Sha256::new(),
            len: 0,
        }))
    }

    async fn local_path(&self, id: &BlobId) -> Result<PathBuf, BlobError> {
        let path = self.path(id);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::Missing(id.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        let digest = tokio::task::spawn_blocking(move || BlobId::of(&bytes))
            .await
            .map_err(std::io::Error::other)?;
        if &digest != id {
            tracing::error!(blob = %id, "blob content does not match its digest; refusing it");
            return Err(BlobError::Corrupt(id.clone()));
        }
        Ok(path)
    }

    async fn list(&self) -> Result<Vec<BlobId>, BlobError> {
        let root = self.root.join("sha256");
        tokio::task::spawn_blocking(move || {
            let mut ids = Vec::new();
            for shard in std::fs::read_dir(root)? {
                for file in std::fs::read_dir(shard?.path())? {
                    if let Ok(id) = file?.file_name().to_string_lossy().parse() {
                        ids.push(id);
                    }
                }
            }
            ids.sort();
            Ok(ids)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn remove(&self, id: &BlobId) -> Result<(), BlobError> {
        match tokio::fs::remove_file(self.path(id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

struct FsWriter {
    blobs: FsBlobs,
    file: tokio::fs::File,
    path: tempfile::TempPath,
    hasher: Sha256,
    len: u64,
}

#[async_trait]
impl BlobWriter for FsWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
        self.file.write_all(chunk).await?;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    async fn finish(self: Box<Self>, expected: Option<&BlobId>) -> Result<BlobId, BlobError> {
        let FsWriter {
            blobs,
            mut file,
            path,
            hasher,
            ..
        } = *self;
        let actual = BlobId(format!("{:x}", hasher.finalize()));
        if let Some(expected) = expected
            && expected != &actual
        {
            return Err(BlobError::Mismatch {
                expected: expected.clone(),
                actual,
            });
        }
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        let target = blobs.path(&actual);
        let shard = target.parent().map(Path::to_path_buf);
        let id = actual.clone();
        let checked = actual.clone();
        tokio::task::spawn_blocking(move || -> Result<(), BlobError> {
            let Some(shard) = shard else {
                return Err(std::io::Error::other("blob path without a folder").into());
            };
            if !shard.exists() {
                std::fs::create_dir_all(&shard)?;
                // The new shard folder itself must survive a power loss.
                if let Some(root) = shard.parent() {
                    std::fs::File::open(root)?.sync_all()?;
                }
            }
            // Same bytes already stored: keep the existing file, unless it
            // was damaged on disk, then the upload repairs it.
            if target.exists() {
                if BlobId::of(&std::fs::read(&target)?) == checked {
                    return Ok(());
                }
                tracing::warn!(blob = %checked, "replacing a damaged stored blob with uploaded bytes");
            }
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o400))?;
            path.persist(&target).map_err(|e| e.error)?;
            std::fs::File::open(&shard)?.sync_all()?;
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(id)
    }
}
