//! Finding the master key: the environment, or a key file in the data
//! folder, and the rotation between an old and a new key.
//!
//! Rotation is crash-safe by construction: the new key is written to
//! `master.key.next` before anything is re-sealed; while that file exists
//! both keys are loaded (the new one current); once every secret is sealed
//! under the new key, `finish` renames it over `master.key`. A crash at any
//! point leaves every secret readable with the keys on disk.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::{MasterKey, Sealed, SecretError, SecretId};

/// Where the master key comes from.
#[derive(Clone)]
pub enum KeySource {
    /// A key file (`DATA/master.key` unless configured), created on first
    /// start. Rotation goes through `FILE.next`.
    File(PathBuf),
    /// Keys given in the environment (hexadecimal): the current one and,
    /// while rotating, the previous one.
    Env {
        /// `VERGE_MASTER_KEY`.
        current: Zeroizing<String>,
        /// `VERGE_MASTER_KEY_PREVIOUS`, if set.
        previous: Option<Zeroizing<String>>,
    },
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(path) => f.debug_tuple("File").field(path).finish(),
            KeySource::Env { previous, .. } => f
                .debug_struct("Env")
                .field("current", &"<redacted>")
                .field("previous", &previous.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// The keys a node can open secrets with; one of them seals new ones.
#[derive(Debug)]
pub struct Keyring {
    current: MasterKey,
    previous: Option<MasterKey>,
    /// With a key file mid-rotation: the `.next` file to rename over the key file.
    pending_rename: Option<(PathBuf, PathBuf)>,
}

/// What [`Keyring::load`] found.
#[derive(Debug)]
pub struct LoadedKeys {
    /// The keys.
    pub keyring: Keyring,
    /// Whether a new key file was created (first start).
    pub created: bool,
}

fn key_error(path: &Path, what: impl std::fmt::Display) -> SecretError {
    SecretError::Key(format!("master key file `{}`: {what}", path.display()))
}

fn key_io(path: &Path, action: &'static str, source: std::io::Error) -> SecretError {
    SecretError::KeyFile {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Reads and checks a key file: owner-only permissions, 64 hex characters.
fn read_key_file(path: &Path) -> Result<MasterKey, SecretError> {
    let meta = std::fs::metadata(path).map_err(|e| key_io(path, "read", e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(key_error(
            path,
            format!(
                "its permissions are {mode:03o}, so other users may read it; run `chmod 600 {}` \
                 (and consider rotating the key)",
                path.display()
            ),
        ));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| key_io(path, "read", e))?);
    MasterKey::from_hex(&text).map_err(|e| {
        key_error(
            path,
            format!("it is damaged: {e}; restore it from your backup (without it the secrets cannot be read)"),
        )
    })
}

/// Writes a new key file with mode 0600, durably and atomically: the key
/// goes to `PATH.tmp`, is synced, and only then renamed to `path`, so a
/// crash never leaves a partial key file behind. Fails if `path` exists.
fn write_key_file(path: &Path, key: &MasterKey) -> Result<(), SecretError> {
    if path.exists() {
        return Err(key_error(path, "it exists already"));
    }
    let tmp = with_suffix(path, ".tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| key_io(path, "create", e))?;
    let mut text = key.to_hex();
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| key_io(path, "write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| key_io(path, "create", e))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), SecretError> {
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| key_io(path, "sync the folder of", e))?;
    }
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn next_path(path: &Path) -> PathBuf {
    with_suffix(path, ".next")
}

impl Keyring {
    /// Loads the keys from `source`.
    ///
    /// With a key file: if `FILE.next` exists (a rotation was started) it is
    /// the current key and `FILE` the previous one. If no key file exists, a
    /// new one is created only when `secrets_exist` is false; otherwise the
    /// node must not start. `rotate` starts a rotation: a new key is written
    /// to `FILE.next` first.
    pub fn load(
        source: &KeySource,
        secrets_exist: bool,
        rotate: bool,
    ) -> Result<LoadedKeys, SecretError> {
        match source {
            KeySource::Env { current, previous } => {
                if rotate {
                    return Err(SecretError::Key(
                        "with the key in VERGE_MASTER_KEY, rotate by setting VERGE_MASTER_KEY to the \
                         new key and VERGE_MASTER_KEY_PREVIOUS to the old one, then restarting"
                            .into(),
                    ));
                }
                let current = MasterKey::from_hex(current)
                    .map_err(|e| SecretError::Key(format!("VERGE_MASTER_KEY: {e}")))?;
                let previous = previous
                    .as_ref()
                    .map(|p| {
                        MasterKey::from_hex(p).map_err(|e| {
                            SecretError::Key(format!("VERGE_MASTER_KEY_PREVIOUS: {e}"))
                        })
                    })
                    .transpose()?;
                Ok(LoadedKeys {
                    keyring: Keyring {
                        current,
                        previous,
                        pending_rename: None,
                    },
                    created: false,
                })
            }
            KeySource::File(path) => {
                let next = next_path(path);
                if !path.exists() && !next.exists() {
                    if secrets_exist {
                        return Err(key_error(
                            path,
                            "it is missing, but the store holds secrets sealed with it; restore it \
                             from your backup (a new key cannot decrypt them)",
                        ));
                    }
                    let key = MasterKey::generate()?;
                    write_key_file(path, &key)?;
                    return Ok(LoadedKeys {
                        keyring: Keyring {
                            current: key,
                            previous: None,
                            pending_rename: None,
                        },
                        created: true,
                    });
                }
                if rotate && !next.exists() {
                    read_key_file(path)?;
                    write_key_file(&next, &MasterKey::generate()?)?;
                }
                if next.exists() {
                    let current = read_key_file(&next)?;
                    let previous = if path.exists() {
                        Some(read_key_file(path)?)
                    } else {
                        None
                    };
                    return Ok(LoadedKeys {
                        keyring: Keyring {
                            current,
                            previous,
                            pending_rename: Some((next, path.clone())),
                        },
                        created: false,
                    });
                }
                Ok(LoadedKeys {
                    keyring: Keyring {
                        current: read_key_file(path)?,
                        previous: None,
                        pending_rename: None,
                    },
                    created: false,
                })
            }
        }
    }

    /// A keyring of one key (tests, tools).
    pub fn single(key: MasterKey) -> Self {
        Self {
            current: key,
            previous: None,
            pending_rename: None,
        }
    }

    /// The key new secrets are sealed with.
    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    /// Whether `sealed` needs re-sealing under the current key.
    pub fn is_stale(&self, sealed: &Sealed) -> bool {
        sealed.key_id != self.current.id
    }

    /// Seals `value` under the current key.
    pub fn seal(&self, id: SecretId<'_>, value: &[u8]) -> Result<Sealed, SecretError> {
        self.current.seal(id, value)
    }

    /// Opens `sealed` with whichever loaded key sealed it.
    pub fn open(
        &self,
        id: SecretId<'_>,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| SecretError::UnknownKey(sealed.key_id.clone()))?;
        key.open(id, sealed)
    }

    /// Completes a key-file rotation once every secret is sealed under the
    /// current key: the new key file replaces the old one.
    pub fn finish_rotation(&mut self) -> Result<bool, SecretError> {
        let Some((next, path)) = self.pending_rename.take() else {
            return Ok(false);
        };
        std::fs::rename(&next, &path).map_err(|e| key_io(&path, "replace with the new key", e))?;
        sync_dir(&path)?;
        self.previous = None;
        Ok(true)
    }

    /// Whether a rotation is in progress (a previous key is loaded).
    pub fn rotating(&self) -> bool {
        self.previous.is_some() || self.pending_rename.is_some()
    }
}
