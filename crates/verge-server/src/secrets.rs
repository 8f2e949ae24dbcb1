//! The node's side of secrets: the master key at start, re-sealing after a
//! rotation, and the decrypted values each app's components read.
//!
//! **Invariants**
//! - The server never serves with a secret it cannot decrypt: at start
//!   every sealed value is opened, and one that fails stops the start.
//! - After a rotation every secret is re-sealed under the new key in one
//!   atomic write (audited) before the old key file is replaced.
//! - Decrypted values live only in memory, in the [`Vault`] of their app;
//!   logs and errors name secrets, never values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use verge_control::audit::{self, Outcome, Record};
use verge_control::model::{SECRETS_PREFIX, SecretRecord};
use verge_secrets::{KeySource, Keyring};
use verge_store::{Expect, Op, Store};

use crate::ServerError;

/// The decrypted secrets of one app (`tenant/app`).
#[derive(Default)]
pub(crate) struct Vault {
    values: RwLock<HashMap<String, Arc<str>>>,
}

impl verge_executor::SecretSource for Vault {
    fn secret(&self, name: &str) -> Option<Arc<str>> {
        let values = self.values.read().unwrap_or_else(|p| p.into_inner());
        values.get(name).cloned()
    }
}

/// Every app's vault, and the keyring that opens sealed values.
pub(crate) struct Vaults {
    keyring: Arc<Keyring>,
    vaults: Mutex<HashMap<String, Arc<Vault>>>,
}

fn key_error(e: impl std::fmt::Display) -> ServerError {
    ServerError::MasterKey(e.to_string())
}

/// Loads the master key, opens every secret in the store with it (the
/// vaults the node starts with), re-seals what an older key sealed, and
/// completes a key-file rotation. Nothing writes to the store before the
/// sync starts, so these vaults are the store's state at its start.
pub(crate) async fn open(
    store: &dyn Store,
    source: &KeySource,
    rotate: bool,
) -> Result<Vaults, ServerError> {
    let secrets = store.list(SECRETS_PREFIX).await?;
    let loaded = Keyring::load(source, !secrets.is_empty(), rotate).map_err(key_error)?;
    let mut keyring = loaded.keyring;
    if loaded.created {
        tracing::info!("created a new master key for secrets");
    }
    let mut ops = Vec::new();
    let mut vaults: HashMap<String, Arc<Vault>> = HashMap::new();
    for entry in &secrets {
        let record = read_record(&entry.key, &entry.value)
            .map_err(|e| ServerError::MasterKey(format!("secret record `{}` {e}", entry.key)))?;
        let value = keyring.open(record.id(), &record.sealed).map_err(|e| {
            ServerError::MasterKey(format!(
                "secret `{}` of app `{}/{}` {e}; start with the master key it was sealed with",
                record.name, record.tenant, record.app
            ))
        })?;
        let text = std::str::from_utf8(&value).map_err(|_| {
            ServerError::MasterKey(format!(
                "secret `{}` of app `{}/{}` is not UTF-8 text",
                record.name, record.tenant, record.app
            ))
        })?;
        vaults
            .entry(format!("{}/{}", record.tenant, record.app))
            .or_default()
            .values
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.name.clone(), Arc::from(text));
        if keyring.is_stale(&record.sealed) {
            let mut fresh = record.clone();
            fresh.sealed = keyring.seal(record.id(), &value).map_err(key_error)?;
            let bytes = serde_json::to_vec(&fresh).map_err(key_error)?;
            ops.push(Op::put(&entry.key, bytes, Expect::Revision(entry.revision)));
        }
    }
    if !ops.is_empty() {
        let count = ops.len();
        audit::append(
            store,
            Record::new("secrets.reseal", "*", Outcome::Ok)
                .actor("-", verge_control::auth::DEFAULT_TENANT)
                .detail(format!(
                    "{count} secret(s) re-sealed under master key {}",
                    keyring.current().id()
                )),
            ops,
        )
        .await?;
        tracing::info!(
            count,
            key = keyring.current().id(),
            "re-sealed secrets under the new master key"
        );
    }
    if keyring.finish_rotation().map_err(key_error)? {
        tracing::info!(
            key = keyring.current().id(),
            "master key rotated; the old key file is replaced"
        );
    } else if keyring.rotating() {
        tracing::info!(
            "every secret is sealed under VERGE_MASTER_KEY; VERGE_MASTER_KEY_PREVIOUS can be removed"
        );
    }
    Ok(Vaults {
        keyring: Arc::new(keyring),
        vaults: Mutex::new(vaults),
    })
}

/// A stored secret record, refused unless it names the very secret its key
/// does: the sealed value is bound to the record's own tenant, app and name,
/// so a record copied under another key must not open as that secret.
fn read_record(store_key: &str, value: &[u8]) -> Result<SecretRecord, String> {
    let record: SecretRecord =
        serde_json::from_slice(value).map_err(|e| format!("is unreadable: {e}"))?;
    let expected = verge_control::model::secret_key(&record.tenant, &record.app, &record.name);
    if expected != store_key {
        return Err(format!("belongs to `{expected}`, not to this key"));
    }
    Ok(record)
}

impl Vaults {
    /// The keyring that opened the vaults, for sealing new secrets.
    pub(crate) fn keyring(&self) -> Arc<Keyring> {
        self.keyring.clone()
    }

    /// The vault of app `key` (`tenant/app`), created empty if needed.
    pub(crate) fn vault(&self, key: &str) -> Arc<Vault> {
        let mut vaults = self.vaults.lock().unwrap_or_else(|p| p.into_inner());
        vaults.entry(key.to_string()).or_default().clone()
    }

    /// Applies a change of the secret at store key `store_key`: `Some`
    /// sealed record, or `None` when deleted.
    pub(crate) fn apply(&self, store_key: &str, value: Option<&[u8]>) {
        let Some(path) = store_key.strip_prefix(SECRETS_PREFIX) else {
            return;
        };
        let Some((app, name)) = path.rsplit_once('/') else {
            return;
        };
        let vault = self.vault(app);
        let mut values = vault.values.write().unwrap_or_else(|p| p.into_inner());
        let Some(value) = value else {
            values.remove(name);
            tracing::info!(app, secret = name, "secret removed");
            return;
        };
        let opened = read_record(store_key, value)
            .and_then(|record| {
                self.keyring
                    .open(record.id(), &record.sealed)
                    .map_err(|e| e.to_string())
            })
            .and_then(|plain| String::from_utf8(plain.to_vec()).map_err(|_| "not UTF-8".into()));
        match opened {
            Ok(text) => {
                values.insert(name.to_string(), Arc::from(text));
                tracing::info!(app, secret = name, "secret updated");
            }
            Err(e) => {
                values.remove(name);
                tracing::error!(
                    app,
                    secret = name,
                    "cannot open secret, leaving it unset: {e}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read_record;

    #[test]
    fn a_record_under_another_key_is_refused() {
        let record = br#"{"tenant":"t1","app":"a1","name":"x","created":"","updated":"",
            "sealed":{"key_id":"k","nonce":"","ciphertext":""}}"#;
        assert!(read_record("secrets/t1/a1/x", record).is_ok());
        let err = read_record("secrets/t2/a2/y", record).expect_err("moved");
        assert!(err.contains("belongs to `secrets/t1/a1/x`"), "{err}");
    }
}
