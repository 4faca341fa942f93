//! `model.init`: a new Mistral model directory from shape params and a tokenizer.

use flow_engine::node::{Node, NodeContext, NodeError, OutputSpec};
use flow_model::checkpoint::safetensors::SaveDtype;
use flow_model::{Mistral, MistralConfig};
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::compute::{model_error, run_blocking};

/// Creates a randomly initialised Mistral.
pub struct ModelInit;

/// Params of `model.init`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelInitParams {
    /// Tokenizer directory (`tokenizer.json`, `tokenizer_config.json`), e.g. `${tok.tokenizer}`; it sets the vocabulary size and is copied into the model.
    pub tokenizer: PathBuf,
    /// Model width.
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    /// SwiGLU inner width.
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    /// Decoder layers.
    #[serde(default = "defaults::num_layers")]
    pub num_layers: usize,
    /// Query heads.
    #[serde(default = "defaults::num_heads")]
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention); must divide `num_heads`.
    #[serde(default = "defaults::num_kv_heads")]
    pub num_kv_heads: usize,
    /// Longest sequence.
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// RoPE base.
    #[serde(default = "defaults::rope_theta")]
    pub rope_theta: f64,
    /// Sliding attention window (null: full causal attention).
    #[serde(default = "defaults::sliding_window")]
    pub sliding_window: Option<usize>,
    /// Share the embedding matrix with the output layer.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Standard deviation of the normal initialisation.
    #[serde(default = "defaults::init_std")]
    pub init_std: f64,
    /// Random seed.
    #[serde(default)]
    pub seed: u64,
}

mod defaults {
    pub fn hidden_size() -> usize {
        64
    }
    pub fn intermediate_size() -> usize {
        128
    }
    pub fn num_layers() -> usize {
        2
    }
    pub fn num_heads() -> usize {
        4
    }
    pub fn num_kv_heads() -> usize {
        2
    }
    pub fn max_position_embeddings() -> usize {
        2048
    }
    pub fn rope_theta() -> f64 {
        10000.0
    }
    pub fn sliding_window() -> Option<usize> {
        Some(4096)
    }
    pub fn init_std() -> f64 {
        0.02
    }
}

/// Files of a tokenizer directory copied into model directories.
pub const TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Copies the tokenizer files that exist in `from` into `to`.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<(), NodeError> {
    for name in TOKENIZER_FILES {
        let source = from.join(name);
        if source.is_file() {
            std::fs::copy(&source, to.join(name))
                .map_err(|e| NodeError::new(format!("{}: {e}", source.display())))?;
        }
    }
    Ok(())
}

impl ModelInitParams {
    fn config(&self, vocab_size: usize, bos: u32, eos: u32) -> Result<MistralConfig, NodeError> {
        let config = MistralConfig {
            vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_layers,
            num_attention_heads: self.num_heads,
            num_key_value_heads: self.num_kv_heads,
            head_dim: self.hidden_size / self.num_heads.max(1),
            rms_norm_eps: 1e-5,
            rope_theta: self.rope_theta,
            sliding_window: self.sliding_window,
            tie_word_embeddings: self.tie_word_embeddings,
            max_position_embeddings: self.max_position_embeddings,
            bos_token_id: bos,
            eos_token_id: eos,
            pad_token_id: Some(eos),
            dtype: "float32".into(),
        };
        config.validate().map_err(NodeError::new)?;
        Ok(config)
    }
}

impl Node for ModelInit {
    type Params = ModelInitParams;
    const TYPE: &'static str = "model.init";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Creates a new Mistral model directory (config.json, generation_config.json, model.safetensors and the tokenizer files) with seeded random weights: normal(0, init_std) for embeddings and linear layers, ones for norms. The offline default workflow builds its small base model with it.";
    const OUTPUTS: &'static [OutputSpec] = &[OutputSpec {
        name: "model",
        description: "a Hugging Face model directory that transformers loads",
    }];

    fn external_files(params: &ModelInitParams) -> Vec<PathBuf> {
        vec![params.tokenizer.clone()]
    }

    async fn run(&self, ctx: NodeContext, params: ModelInitParams) -> Result<(), NodeError> {
        let out = ctx.output_dir("model")?.to_path_buf();
        let log = ctx.log().clone();
        run_blocking(&ctx, move |_| {
            let tokenizer = flow_model::tokenize::PreferenceTokenizer::load(&params.tokenizer).map_err(model_error)?;
            let vocab = tokenizer.inner().get_vocab_size(true);
            let bos = tokenizer.inner().token_to_id("<s>").unwrap_or(1);
            let config = params.config(vocab, bos, tokenizer.eos_id)?;
            let model = Mistral::random(&config, params.seed, params.init_std, &flow_model::cpu());
            model.save(&out, SaveDtype::F32).map_err(model_error)?;
            let generation = serde_json::json!({ "bos_token_id": bos, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.eos_id });
            std::fs::write(out.join("generation_config.json"), generation.to_string()).map_err(|e| NodeError::new(e.to_string()))?;
            copy_tokenizer_files(&params.tokenizer, &out)?;
            log.line(&format!("initialised a {}-parameter Mistral (vocab {vocab}, seed {})", config.parameter_count(), params.seed));
            Ok(())
        })
        .await
    }
}
