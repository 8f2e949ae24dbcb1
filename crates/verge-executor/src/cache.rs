//! On-disk cache of compiled components, keyed by the SHA-256 of the
//! component's bytes and by a hash of the engine's compilation settings, so
//! a restart (or a second process) never recompiles the same component and
//! a changed engine never loads an incompatible artifact.
//!
//! **Invariant (safety)**: loading a cached artifact maps native code into
//! the process, so only files this user wrote may be loaded:
//! - the folder is created with mode 0700, resolved once to its canonical
//!   path (so re-pointing a symlink later changes nothing), and refused (the
//!   cache is disabled, with a warning) if another user owns it, anyone else
//!   may write to it, or any folder above it lets others replace it;
//! - an artifact is opened without following symlinks and used only if it is
//!   a regular file owned by this user that nobody else may write.
//!
//! Files are written to a temporary name and renamed, so a crash never
//! leaves a torn artifact under a final name; wasmtime additionally checks
//! the header and refuses an artifact built by a different engine, which
//! counts as a miss.
#![allow(unsafe_code)]

use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub(crate) struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

/// Feeds `Hash` output into SHA-256, giving a hash that is stable across
/// processes (unlike `DefaultHasher`'s randomised keys).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const_hex::encode(bytes)
}

impl CompileCache {
    /// Opens (creating if needed) the cache folder, or returns `None` with a
    /// warning when it cannot be used safely.
    pub(crate) fn open(dir: &Path, engine: &Engine) -> Option<Self> {
        if let Err(e) = create_private_dir(dir) {
            tracing::warn!(dir = %dir.display(), "compile cache disabled: {e}");
            return None;
        }
        let dir = match std::fs::canonicalize(dir)
            .map_err(|e| e.to_string())
            .and_then(|d| check_private(&d).map(|()| d))
        {
            Ok(d) => d,
            Err(why) => {
                tracing::warn!(dir = %dir.display(), "compile cache disabled: {why}");
                return None;
            }
        };
        let mut hasher = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        hasher.0.update(env!("CARGO_PKG_VERSION").as_bytes());
        let engine_key = hex(&hasher.0.finalize()[..12]);
        Some(Self { dir, engine_key })
    }

    fn path_for(&self, component_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{component_hash}-{}.cwasm", self.engine_key))
    }

    /// The cached compilation of `component_hash`, if present and usable.
    pub(crate) fn get(&self, engine: &Engine, component_hash: &str) -> Option<Component> {
        let path = self.path_for(component_hash);
        let bytes = match read_private_file(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(why) => {
                tracing::warn!(path = %path.display(), "ignoring compiled artifact: {why}");
                return None;
            }
        };
        // SAFETY: the bytes come from a regular file owned by this user and
        // writable by nobody else, in a folder only this user can change
        // (checked in `open`), written by `put` from wasmtime's own
        // `precompile_component`; wasmtime verifies the header and engine
        // compatibility before use.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unusable compiled artifact: {e:#}");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores compiled `artifact` and loads it back (memory-mapped).
    pub(crate) fn put(
        &self,
        engine: &Engine,
        component_hash: &str,
        artifact: &[u8],
    ) -> std::io::Result<Component> {
        let path = self.path_for(component_hash);
        let (tmp, mut file) = tempfile_in(&self.dir)?;
        let written = file
            .write_all(artifact)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        load_fresh(engine, artifact).map_err(|e| std::io::Error::other(format!("{e:#}")))
    }
}

/// Loads an artifact `Engine::precompile_component` just produced.
pub(crate) fn load_fresh(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` is wasmtime's own output for this engine, produced
    // in this process and never written anywhere others could change it.
    unsafe { Component::deserialize(engine, artifact) }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = format!(
        ".tmp-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    Ok((path, file))
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Reads `path` if it is a regular file owned by this user and writable by
/// nobody else, without following a symlink. `Ok(None)` when it is absent.
fn read_private_file(path: &Path) -> Result<Option<Vec<u8>>, String> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(format!("cannot open it safely: {e}")),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| e.to_string())?;
    let mode = stat.st_mode;
    if rustix::fs::FileType::from_raw_mode(mode) != rustix::fs::FileType::RegularFile {
        return Err("not a regular file".to_string());
    }
    if stat.st_uid != current_uid() || mode & 0o022 != 0 {
        return Err("owned by another user or writable by others".to_string());
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(Some(bytes))
}

/// The cache folder (canonical path) must be ours and private, and no folder
/// above it may let another user replace it: each must be owned by us or
/// root and not writable by others, unless sticky (like `/tmp`).
fn check_private(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let uid = current_uid();
    for ancestor in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor).map_err(|e| e.to_string())?;
        let others_write = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        let trusted_owner = meta.uid() == uid || meta.uid() == 0;
        if !trusted_owner || (others_write && !sticky) {
            return Err(format!(
                "{} could be changed by another user (owner uid {}, mode {:o})",
                ancestor.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
    }
    check_private_dir(dir)
}

fn check_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
    let uid = current_uid();
    if meta.uid() != uid {
        return Err(format!(
            "the folder is owned by uid {}, not by this user (uid {uid})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "the folder is writable by others (mode {:o}); run `chmod go-w` on it",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}
