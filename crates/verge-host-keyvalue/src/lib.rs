//! `wasi:keyvalue` 0.2.0-draft for guests, on [`verge_kv`]: `open` hands
//! out only the stores the component declared; every operation is durable
//! when it returns to the guest.
//!
//! The executor adds this API to its linker with [`add_to_linker`] and
//! gives each call a [`KeyValueView`] of the request's store data, the way
//! `wasmtime-wasi-keyvalue` does.
//!
//! **Invariants**
//! - Opening a store the component did not declare fails inside the guest
//!   with `access-denied`; nothing is created.
//! - Every operation on an open store is counted in the request's usage.
//! - Storage failures (paths, SQLite messages) go to the node log; the
//!   guest gets a message without them.
//!
//! **API boundary**: knows wasmtime's component model and `verge-kv`, not
//! HTTP, requests or how a denial is logged ([`Denials`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use verge_capabilities::{Capabilities, Denials};
pub use verge_kv::KeyValue;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::BucketHandle,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => crate::KvFailure,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// Keys returned by one `list-keys` call.
const LIST_PAGE: usize = 1000;

/// The stores one loaded component declared, opened.
#[derive(Default)]
pub struct Stores(HashMap<String, verge_kv::Bucket>);

/// A declared store that could not be opened when the component loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot open key-value store `{store}`: {reason}")]
pub struct OpenError {
    /// The store's name.
    pub store: String,
    /// Why, without storage details (those go to the node log).
    pub reason: String,
}

impl Stores {
    /// Opens every store `capabilities` declares for `tenant`'s `app`
    /// (`key` names the app in log lines). `key_value` is `None` on a node
    /// without key-value storage, where declaring a store is an error.
    pub fn open(
        key_value: Option<&KeyValue>,
        tenant: &str,
        app: &str,
        key: &str,
        capabilities: &Capabilities,
    ) -> Result<Self, OpenError> {
        let mut stores = HashMap::new();
        for store in &capabilities.key_value_stores {
            let kv = key_value.ok_or_else(|| OpenError {
                store: store.clone(),
                reason: "this node has no key-value storage".to_owned(),
            })?;
            let consistency = if capabilities.edge_local_stores.contains(store) {
                verge_kv::Consistency::EdgeLocal
            } else {
                verge_kv::Consistency::Strict
            };
            let bucket = kv
                .bucket_with(tenant, app, store, consistency)
                .map_err(|e| {
                    // Storage details (paths) go to the node log, not to the deployer.
                    tracing::error!(app = %key, store = %store, "cannot open key-value store: {e}");
                    OpenError {
                        store: store.clone(),
                        reason: e.public_message(),
                    }
                })?;
            stores.insert(store.clone(), bucket);
        }
        Ok(Self(stores))
    }
}

/// What one call sees of the request's store data.
pub struct KeyValueView<'a> {
    /// The component's declared stores.
    pub stores: &'a Stores,
    /// The request's resource table (open buckets live there).
    pub table: &'a mut ResourceTable,
    /// The request's count of key-value operations.
    pub ops: &'a AtomicU32,
    /// Where a refused store is reported.
    pub denials: &'a mut dyn Denials,
}

/// Marks [`KeyValueView`] as the data the bindings borrow from the store.
struct KeyValueData;

impl HasData for KeyValueData {
    type Data<'a> = KeyValueView<'a>;
}

/// Adds `wasi:keyvalue/store`, `atomics` and `batch` to `linker`; `view`
/// borrows the request's part of the store data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, KeyValueData>(linker, view)?;
    atomics::add_to_linker::<T, KeyValueData>(linker, view)?;
    batch::add_to_linker::<T, KeyValueData>(linker, view)?;
    Ok(())
}

/// A store the guest opened.
pub struct BucketHandle(verge_kv::Bucket);

/// The error a `wasi:keyvalue` call returns to the guest.
#[derive(Debug)]
pub struct KvFailure(Failure);

#[derive(Debug)]
enum Failure {
    /// The component did not declare the store.
    AccessDenied,
    /// Anything else, with a message for the guest.
    Other(String),
}

fn other(e: impl std::fmt::Display) -> KvFailure {
    KvFailure(Failure::Other(e.to_string()))
}

/// The guest's view of an engine error: storage failures are logged here
/// and reach the guest without details (paths, SQLite messages).
fn from_kv(e: verge_kv::KvError) -> KvFailure {
    if let verge_kv::KvError::Storage(detail) = &e {
        tracing::error!("key-value storage failed: {detail}");
    }
    KvFailure(Failure::Other(e.public_message()))
}

impl KeyValueView<'_> {
    /// The bucket behind `handle`; every key-value operation goes through
    /// here, so this is where they are counted.
    fn bucket(&self, handle: &Resource<BucketHandle>) -> Result<verge_kv::Bucket, KvFailure> {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.table.get(handle).map(|b| b.0.clone()).map_err(other)
    }
}

impl store::Host for KeyValueView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<BucketHandle>, KvFailure> {
        let Some(bucket) = self.stores.0.get(&identifier).cloned() else {
            self.denials.denied(
                "key-value store denied: not in key_value_stores",
                &identifier,
            );
            return Err(KvFailure(Failure::AccessDenied));
        };
        self.table.push(BucketHandle(bucket)).map_err(other)
    }

    fn convert_error(&mut self, err: KvFailure) -> wasmtime::Result<store::Error> {
        Ok(match err.0 {
            Failure::AccessDenied => store::Error::AccessDenied,
            Failure::Other(message) => store::Error::Other(message),
        })
    }
}

impl store::HostBucket for KeyValueView<'_> {
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

impl atomics::Host for KeyValueView<'_> {
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

impl batch::Host for KeyValueView<'_> {
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
