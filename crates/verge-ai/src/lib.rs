//! AI on the node's CPU, with no external service: text embeddings
//! (`embed`), vector indexes (`index`) and classification built on the
//! embeddings (`classify`), for the `verge:ai` host API and `verge ai`.
//!
//! - `model`: the model folder (install from a wheel, verify, list).
//! - `backend`: the [`Backend`] trait and the candle BERT implementation.
//! - `embed`: [`Embedder`], a bounded pool of inference threads that batches
//!   texts from concurrent callers, fair between tenants, with per-tenant
//!   limits.
//! - `index`: [`Indexes`], per-tenant vector indexes (HNSW in memory,
//!   SQLite on disk).
//! - `classify`: zero-shot labels by similarity of embeddings.
//!
//! **API boundary**: knows nothing about HTTP, wasmtime or manifests; who
//! may use which model or index is the caller's decision.

mod backend;
pub mod classify;
mod embed;
mod error;
pub mod index;
pub mod model;

pub use backend::{Backend, BertBackend, Embedded};
pub use classify::LabelScore;
pub use embed::{EmbedLimits, Embedder, Embedding};
pub use error::AiError;
pub use index::{Filter, Indexes, Match, VectorIndex};
pub use model::{DEFAULT_MODEL, KnownModel, ModelDir};

/// What a node gives components through `verge:ai`: the inference pool of
/// the default model and the vector indexes.
pub struct AiServices {
    /// The inference pool.
    pub embedder: Embedder,
    /// Every tenant's vector indexes.
    pub indexes: Indexes,
}

impl std::fmt::Debug for AiServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiServices")
            .field("model", &self.embedder.model())
            .finish_non_exhaustive()
    }
}

impl AiServices {
    /// Dimensions of the pool's model (and of the indexes it creates).
    pub fn dimensions(&self) -> usize {
        model::known(self.embedder.model()).map_or(model::MINILM.dimensions, |m| m.dimensions)
    }
}
