//! The inference backend: [`Backend`] turns a batch of texts into unit
//! vectors; [`BertBackend`] is the default, a BERT encoder run by candle
//! (pure Rust) on the CPU, with the model's own tokenizer.
//!
//! **Invariants**
//! - Output vectors have the model's dimensions and unit length (mean
//!   pooling over the real tokens, then L2 normalisation), as
//!   sentence-transformers computes them.
//! - A text longer than the model's limit is cut at `max_tokens` and
//!   reported as truncated; it never fails.
//! - The weights are verified (sha256) before they are used.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::AiError;
use crate::model::{ModelDir, known};

/// What one batch produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Embedded {
    /// One unit vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens per text, after truncation (special tokens included).
    pub tokens: Vec<u32>,
    /// Whether each text was cut at the model's limit.
    pub truncated: Vec<bool>,
}

/// Something that embeds texts. Implementations are called from the
/// inference threads only, one batch at a time per thread.
pub trait Backend: Send + Sync {
    /// The model's name.
    fn name(&self) -> &str;
    /// Output dimensions.
    fn dimensions(&self) -> usize;
    /// Embeds `texts`.
    fn embed(&self, texts: &[&str]) -> Result<Embedded, AiError>;
}

/// A BERT sentence encoder (all-MiniLM-L6-v2) on candle's CPU backend.
pub struct BertBackend {
    name: String,
    model: BertModel,
    tokenizer: Tokenizer,
    dimensions: usize,
    device: Device,
}

fn inference(e: impl std::fmt::Display) -> AiError {
    AiError::Inference(e.to_string())
}

impl BertBackend {
    /// Loads installed model `name` from `dir`, verifying every file.
    pub fn load(dir: &ModelDir, name: &str) -> Result<Self, AiError> {
        let model = known(name).ok_or_else(|| AiError::UnknownModel(name.to_owned()))?;
        let installed = dir.installed(name)?;
        let weights = dir.read_verified(&installed, "model.safetensors")?;
        let config = dir.read_verified(&installed, "config.json")?;
        let tokenizer = dir.read_verified(&installed, "tokenizer.json")?;
        let config: Config = serde_json::from_slice(&config)
            .map_err(|e| AiError::Corrupt(format!("{name}: config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_bytes(&tokenizer)
            .map_err(|e| AiError::Corrupt(format!("{name}: tokenizer.json: {e}")))?;
        // The packaged tokenizer pads and cuts every text at 128 tokens;
        // sentence-transformers uses the model's 256 and pads per batch.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: model.max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(inference)?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| AiError::Corrupt(format!("{name}: model.safetensors: {e}")))?;
        let bert = BertModel::load(vb, &config)
            .map_err(|e| AiError::Corrupt(format!("{name}: model.safetensors: {e}")))?;
        Ok(Self {
            name: name.to_owned(),
            model: bert,
            tokenizer,
            dimensions: model.dimensions,
            device,
        })
    }

    fn forward(&self, texts: &[&str]) -> Result<Embedded, AiError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(inference)?;
        let width = encodings.first().map_or(0, |e| e.get_ids().len());
        let rows = encodings.len();
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        let mut tokens = Vec::with_capacity(rows);
        let mut truncated = Vec::with_capacity(rows);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
            tokens.push(e.get_attention_mask().iter().sum::<u32>());
            truncated.push(!e.get_overflowing().is_empty());
        }
        let ids = Tensor::from_vec(ids, (rows, width), &self.device).map_err(inference)?;
        let mask = Tensor::from_vec(mask, (rows, width), &self.device).map_err(inference)?;
        let types = ids.zeros_like().map_err(inference)?;
        let hidden = self
            .model
            .forward(&ids, &types, Some(&mask))
            .map_err(inference)?;
        // Mean over the real tokens, then unit length.
        let mask = mask
            .to_dtype(DType::F32)
            .and_then(|m| m.unsqueeze(2))
            .map_err(inference)?;
        let summed = hidden
            .broadcast_mul(&mask)
            .and_then(|h| h.sum(1))
            .map_err(inference)?;
        let counts = mask.sum(1).map_err(inference)?;
        let mean = summed.broadcast_div(&counts).map_err(inference)?;
        let norms = mean
            .sqr()
            .and_then(|s| s.sum_keepdim(1))
            .and_then(|s| s.sqrt())
            .and_then(|n| n.clamp(1e-12f32, f32::MAX))
            .map_err(inference)?;
        let unit = mean.broadcast_div(&norms).map_err(inference)?;
        let vectors = unit.to_vec2::<f32>().map_err(inference)?;
        Ok(Embedded {
            vectors,
            tokens,
            truncated,
        })
    }
}

impl Backend for BertBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed(&self, texts: &[&str]) -> Result<Embedded, AiError> {
        if texts.is_empty() {
            return Ok(Embedded::default());
        }
        self.forward(texts)
    }
}
