//! Secrets at rest: sealing and opening secret values under the node's
//! master key, and finding that key.
//!
//! A secret is sealed with XChaCha20-Poly1305 (random 192-bit nonce) and the
//! secret's identity (tenant, app, name) as associated data, so a sealed
//! value copied onto another secret's record fails to open. Each sealed
//! value names the id of the key that sealed it, which is how rotation
//! knows what to re-seal.
//!
//! The master key is 32 random bytes written as 64 hexadecimal characters,
//! in a file only its owner can read (mode 0600) or in the environment
//! (`VERGE_MASTER_KEY`), see [`Keyring::load`].
//!
//! **Invariants**
//! - No value, key or plaintext is ever part of an error message or a
//!   `Debug` output; key material is zeroed when dropped.
//! - A key that cannot be read or parsed is an error, never replaced: a new
//!   key is only created where no key and no secret exist yet.
//!
//! **API boundary**: no knowledge of the state store or HTTP; the server
//! decides where sealed values are kept.

mod keyring;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use keyring::{KeySource, Keyring, LoadedKeys};

/// Largest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// What a secret is sealed for; bound into the ciphertext.
#[derive(Clone, Copy, Debug)]
pub struct SecretId<'a> {
    /// The owning tenant.
    pub tenant: &'a str,
    /// The app within the tenant.
    pub app: &'a str,
    /// The secret's name within the app.
    pub name: &'a str,
}

impl SecretId<'_> {
    fn associated_data(&self) -> Vec<u8> {
        format!(
            "verge-secret-v1\0{}\0{}\0{}",
            self.tenant, self.app, self.name
        )
        .into_bytes()
    }
}

/// A sealed secret value, as stored.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sealed {
    /// Id of the master key that sealed it.
    pub key_id: String,
    /// The nonce, base64.
    pub nonce: String,
    /// Ciphertext and tag, base64.
    pub ciphertext: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Why a secret could not be sealed or opened, or a key not loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The value is too large.
    #[error("a secret can be at most {MAX_SECRET_BYTES} bytes")]
    TooLarge,
    /// No key with the sealed value's key id is loaded.
    #[error("sealed with master key {0}, which is not loaded")]
    UnknownKey(String),
    /// Authentication failed: wrong key, damaged record, or a record moved
    /// to another secret.
    #[error("cannot be decrypted with master key {0}: the key is wrong or the record is damaged")]
    Undecryptable(String),
    /// A master key that cannot be used.
    #[error("{0}")]
    Key(String),
    /// A master key file could not be read or written.
    #[error("master key file `{}`: cannot {action} it", path.display())]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// What was tried ("read", "create", ...).
        action: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The random source failed.
    #[error("no randomness available")]
    Random(#[source] getrandom::Error),
}

/// A 256-bit master key and its id.
pub struct MasterKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> Result<Self, SecretError> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut()).map_err(SecretError::Random)?;
        Ok(Self::from_bytes(key))
    }

    fn from_bytes(key: Zeroizing<[u8; 32]>) -> Self {
        let digest = Sha256::new()
            .chain_update(b"verge-master-key-id\0")
            .chain_update(key.as_ref())
            .finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self { id, key }
    }

    /// Parses 64 hexadecimal characters (surrounding whitespace ignored).
    /// The error never repeats the input.
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SecretError::Key(format!(
                "expected 64 hexadecimal characters (32 bytes), found {} characters{}",
                text.chars().count(),
                if text.bytes().all(|b| b.is_ascii_hexdigit()) {
                    ""
                } else {
                    " including non-hexadecimal ones"
                }
            )));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        for (i, byte) in key.iter_mut().enumerate() {
            let pair = &text[2 * i..2 * i + 2];
            *byte = u8::from_str_radix(pair, 16)
                .map_err(|_| SecretError::Key("invalid hexadecimal".into()))?;
        }
        Ok(Self::from_bytes(key))
    }

    /// The key as 64 hexadecimal characters, for writing its file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A short public id: the first 8 bytes of a hash of the key.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.key.as_ref().into())
    }

    /// Seals `value` for secret `id`.
    pub fn seal(&self, id: SecretId<'_>, value: &[u8]) -> Result<Sealed, SecretError> {
        if value.len() > MAX_SECRET_BYTES {
            return Err(SecretError::TooLarge);
        }
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(SecretError::Random)?;
        let aad = id.associated_data();
        let ciphertext = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Key("encryption failed".into()))?;
        Ok(Sealed {
            key_id: self.id.clone(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        })
    }

    fn open(&self, id: SecretId<'_>, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let undecryptable = || SecretError::Undecryptable(self.id.clone());
        let nonce = B64.decode(&sealed.nonce).map_err(|_| undecryptable())?;
        if nonce.len() != 24 {
            return Err(undecryptable());
        }
        let ciphertext = B64
            .decode(&sealed.ciphertext)
            .map_err(|_| undecryptable())?;
        let aad = id.associated_data();
        self.cipher()
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| undecryptable())
    }
}

#[cfg(test)]
mod tests;
