//! [`AiError`]: every way an AI call fails, with a message that is safe to
//! show the guest or the operator (no file contents, no vectors).

use std::path::{Path, PathBuf};

/// An AI call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AiError {
    /// The model is not installed on this node.
    #[error("model `{model}` is not installed in {}; install it with `verge ai pull {model}`", dir.display())]
    ModelMissing {
        /// The model asked for.
        model: String,
        /// The model folder searched.
        dir: PathBuf,
    },
    /// No model of that name exists.
    #[error("unknown model `{0}`; known models: all-minilm-l6-v2")]
    UnknownModel(String),
    /// A model or index file failed its check.
    #[error("{0}")]
    Corrupt(String),
    /// The input was refused (too many texts, a bad vector, ...).
    #[error("{0}")]
    Invalid(String),
    /// A per-tenant limit is used up; try again after the given seconds.
    #[error("{what}; try again in {retry_after} s")]
    Limited {
        /// Which limit.
        what: String,
        /// Seconds until the window resets.
        retry_after: u64,
    },
    /// The index does not exist.
    #[error("no vector index `{0}`")]
    NoIndex(String),
    /// The inference pool is stopping or gone.
    #[error("the inference pool is not running")]
    Stopped,
    /// Inference itself failed.
    #[error("inference failed: {0}")]
    Inference(String),
    /// Reading or writing a file or database failed.
    #[error("{0}")]
    Storage(String),
}

impl AiError {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        Self::Storage(format!("{}: {e}", path.display()))
    }

    pub(crate) fn sql(e: rusqlite::Error) -> Self {
        Self::Storage(format!("vector store: {e}"))
    }

    /// The message for a guest: storage details (paths, SQLite) are left out.
    pub fn public_message(&self) -> String {
        match self {
            Self::Storage(_) => "storage failed on the node".to_owned(),
            Self::Corrupt(_) => "the model on this node failed its integrity check".to_owned(),
            Self::ModelMissing { model, .. } => {
                format!("model `{model}` is not installed on this node (`verge ai pull {model}`)")
            }
            other => other.to_string(),
        }
    }
}
