//! One way to assemble a node: the executor with its host APIs (key-value
//! stores, and `verge:ai` when built with the `ai` feature) over one state
//! folder. `verge up` and `verge server` both build their node here, so the
//! two cannot drift apart in what a guest can reach.
//!
//! **Invariant**: building creates nothing on disk: key-value files appear
//! when a component that declares a store loads, index files when a guest
//! opens an index, and models are read when the first embedding is asked
//! for.

use std::path::PathBuf;
use std::sync::Arc;

use verge_executor::{Executor, ExecutorConfig, ExecutorError};

use crate::{Node, Telemetry};

/// What a node is built from.
#[derive(Clone)]
pub struct NodeSettings {
    /// Key-value data goes to `STATE/kv`, vector indexes to `STATE/ai`.
    pub state_dir: PathBuf,
    /// Compiled components; `None` compiles in memory every time.
    pub cache_dir: Option<PathBuf>,
    /// Instances alive at once across all components.
    pub max_instances: u32,
    /// Limits on each key-value store.
    pub kv_quotas: verge_kv::Quotas,
    /// The `verge:ai` settings (ignored by a node built without AI).
    pub ai: AiSettings,
    /// What the node measures and limits.
    pub telemetry: Telemetry,
}

/// The node's `verge:ai` settings.
#[derive(Debug, Clone)]
pub struct AiSettings {
    /// Where models are installed (`verge ai pull`).
    pub models_dir: PathBuf,
    /// Tokens one tenant may embed per minute (0: no limit).
    pub tokens_per_minute: u64,
    /// Most texts in one embedding call.
    pub max_texts: usize,
    /// Inference threads (each batch also uses the cores in parallel).
    pub threads: usize,
}

impl AiSettings {
    /// Default limits with models in `models_dir`.
    pub fn new(models_dir: PathBuf) -> Self {
        Self {
            models_dir,
            tokens_per_minute: 1_000_000,
            max_texts: 256,
            threads: 1,
        }
    }
}

/// A built node and the host services it shares with the control plane.
pub struct BuiltNode {
    /// The node.
    pub node: Arc<Node>,
    /// The key-value engine behind `wasi:keyvalue` (the control API reads
    /// it for `verge kv`; a cluster replicates it).
    pub key_value: Arc<verge_kv::KeyValue>,
    /// Models and vector indexes behind `verge:ai`.
    #[cfg(feature = "ai")]
    pub ai: Arc<verge_ai::AiServices>,
}

/// Builds the executor, its host APIs and the node from `settings`.
pub fn build(settings: NodeSettings) -> Result<BuiltNode, ExecutorError> {
    let key_value = verge_kv::KeyValue::open(&settings.state_dir.join("kv"), settings.kv_quotas);
    #[cfg(feature = "ai")]
    let ai = Arc::new(verge_ai::AiServices {
        embedder: verge_ai::Embedder::start(
            verge_ai::ModelDir::new(&settings.ai.models_dir),
            verge_ai::DEFAULT_MODEL,
            verge_ai::EmbedLimits {
                tokens_per_minute: settings.ai.tokens_per_minute,
                max_texts: settings.ai.max_texts,
                ..verge_ai::EmbedLimits::default()
            },
            settings.ai.threads,
        ),
        indexes: verge_ai::Indexes::new(settings.state_dir.join("ai")),
    });
    let executor = Executor::new(&ExecutorConfig {
        cache_dir: settings.cache_dir,
        max_instances: settings.max_instances,
        key_value: Some(key_value.clone()),
        #[cfg(feature = "ai")]
        ai: Some(ai.clone()),
        ..ExecutorConfig::default()
    })?;
    Ok(BuiltNode {
        node: Node::with_telemetry(executor, settings.telemetry),
        key_value,
        #[cfg(feature = "ai")]
        ai,
    })
}
