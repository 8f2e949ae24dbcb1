//! `wasi:keyvalue` 0.2.0-draft on [`verge_kv`]: `open` hands out only the
//! stores the component declared; every operation is durable when it
//! returns to the guest.

use wasmtime::component::Resource;

use super::KvFailure;
use super::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::host::Host;

/// Keys returned by one `list-keys` call.
const LIST_PAGE: usize = 1000;

/// A store the guest opened.
#[allow(unreachable_pub)]
pub struct BucketHandle(verge_kv::Bucket);

fn other(e: impl std::fmt::Display) -> KvFailure {
    KvFailure::Other(e.to_string())
}

/// The guest's view of an engine error: storage failures are logged here
/// and reach the guest without details (paths, SQLite messages).
fn from_kv(e: verge_kv::KvError) -> KvFailure {
    if let verge_kv::KvError::Storage(detail) = &e {
        tracing::error!("key-value storage failed: {detail}");
    }
    KvFailure::Other(e.public_message())
}

impl Host {
    /// The bucket behind `handle`; every key-value operation goes through
    /// here, so this is where they are counted.
    fn bucket(&self, handle: &Resource<BucketHandle>) -> Result<verge_kv::Bucket, KvFailure> {
        let ops = &self.shared().usage.kv_ops;
        ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.table.get(handle).map(|b| b.0.clone()).map_err(other)
    }
}

impl store::Host for Host {
    async fn open(&mut self, identifier: String) -> Result<Resource<BucketHandle>, KvFailure> {
        let Some(bucket) = self.apis.grants.stores.get(&identifier).cloned() else {
            self.log_denied(
                "key-value store denied: not in key_value_stores",
                &identifier,
            );
            return Err(KvFailure::AccessDenied);
        };
        self.table.push(BucketHandle(bucket)).map_err(other)
    }

    fn convert_error(&mut self, err: KvFailure) -> wasmtime::Result<store::Error> {
        Ok(match err {
            KvFailure::AccessDenied => store::Error::AccessDenied,
            KvFailure::Other(message) => store::Error::Other(message),
        })
    }
}

impl store::HostBucket for Host {
    async fn get(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<Option<Vec<u8>>, KvFailure> {
        self.bucket(&bucket)?.get(&key).await.map_err(from_kv)
    }

    async fn set(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvFailure> {
        self.bucket(&bucket)?.set(key, value).await.map_err(from_kv)
    }

    async fn delete(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<(), KvFailure> {
        self.bucket(&bucket)?.delete(key).await.map_err(from_kv)
    }

    async fn exists(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<bool, KvFailure> {
        self.bucket(&bucket)?.exists(&key).await.map_err(from_kv)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<BucketHandle>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvFailure> {
        let page = self
            .bucket(&bucket)?
            .list_keys(cursor, LIST_PAGE)
            .await
            .map_err(from_kv)?;
        Ok(store::KeyResponse {
            keys: page.keys,
            cursor: page.cursor,
        })
    }

    async fn drop(&mut self, bucket: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for Host {
    async fn increment(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        delta: u64,
    ) -> Result<u64, KvFailure> {
        self.bucket(&bucket)?
            .increment(key, delta)
            .await
            .map_err(from_kv)
    }
}

impl batch::Host for Host {
    async fn get_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvFailure> {
        let values = self
            .bucket(&bucket)?
            .get_many(keys.clone())
            .await
            .map_err(from_kv)?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    async fn set_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvFailure> {
        self.bucket(&bucket)?
            .set_many(key_values)
            .await
            .map_err(from_kv)
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> Result<(), KvFailure> {
        self.bucket(&bucket)?
            .delete_many(keys)
            .await
            .map_err(from_kv)
    }
}
