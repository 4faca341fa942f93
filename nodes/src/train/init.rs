//! `model.init`: a new model directory of any supported family from shape params and a
//! tokenizer.

use flow_engine::node::{Node, NodeContext, NodeError, OutputSpec, ParamError};
use flow_model::arch::{Family, Rope};
use flow_model::checkpoint::safetensors::SaveDtype;
use flow_model::{Model, ModelConfig};
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::compute::{model_error, run_blocking};

/// Creates a randomly initialised model.
pub struct ModelInit;

/// Params of `model.init`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelInitParams {
    /// The model family: `mistral`, `llama`, `qwen2`, `qwen3` or `gemma2` (each with its usual numerics: biases, norms, activation, RoPE base, soft-capping, tying).
    #[serde(default = "defaults::architecture")]
    pub architecture: String,
    /// Tokenizer directory (`tokenizer.json`, `tokenizer_config.json`), e.g. `${tok.tokenizer}`; it sets the vocabulary size and is copied into the model.
    pub tokenizer: PathBuf,
    /// Model width.
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    /// MLP inner width.
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
    /// Width of one attention head (default: `hidden_size / num_heads`).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RoPE base (default: the family's, 10,000 for Mistral and Gemma 2, 500,000 for Llama, 1,000,000 for Qwen).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Sliding attention window of the layers that slide (Mistral: every layer; Gemma 2: the even layers; null: full causal attention). Llama and Qwen models are created without sliding layers.
    #[serde(default = "defaults::sliding_window")]
    pub sliding_window: Option<usize>,
    /// Share the embedding matrix with the output layer (default: the family's; tied for Qwen and Gemma 2).
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// Standard deviation of the normal initialisation.
    #[serde(default = "defaults::init_std")]
    pub init_std: f64,
    /// Random seed.
    #[serde(default)]
    pub seed: u64,
}

mod defaults {
    pub fn architecture() -> String {
        "mistral".into()
    }
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
    /// The family named by `architecture`.
    fn family(&self) -> Result<Family, ParamError> {
        Family::from_model_type(&self.architecture).ok_or_else(|| {
            ParamError::at(
                "architecture",
                format!(
                    "unknown architecture `{}`: flow implements {}",
                    self.architecture,
                    Family::supported()
                ),
            )
        })
    }

    fn config(&self, vocab_size: usize, tokens: SpecialTokens) -> Result<ModelConfig, NodeError> {
        let family = self.family().map_err(|e| NodeError::new(e.message))?;
        let mut shape = ModelConfig::with_shape(
            vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_layers,
            self.num_heads,
            self.num_kv_heads,
        );
        shape.head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size / self.num_heads.max(1));
        shape.max_position_embeddings = self.max_position_embeddings;
        let mut config = ModelConfig::for_family(family, shape);
        if let Some(theta) = self.rope_theta {
            config.rope = Rope::plain(theta);
        }
        if config.sliding_layers.contains(&true) {
            config.sliding_window = self.sliding_window;
            if self.sliding_window.is_none() {
                config.sliding_layers = vec![false; self.num_layers];
            }
        }
        if let Some(tied) = self.tie_word_embeddings {
            config.tie_word_embeddings = tied;
        }
        config.bos_token_id = tokens.bos;
        config.eos_token_ids = vec![tokens.eos];
        config.pad_token_id = Some(tokens.pad);
        if family == Family::Mistral {
            config.rms_norm_eps = 1e-5;
        }
        config.validate().map_err(NodeError::new)?;
        Ok(config)
    }
}

/// A tokenizer's special tokens, as the model's config names them.
#[derive(Clone, Copy)]
struct SpecialTokens {
    bos: Option<u32>,
    eos: u32,
    pad: u32,
}

impl SpecialTokens {
    /// BOS is the tokenizer's `bos_token` (or `<s>` when it names none); padding is EOS.
    fn of(tokenizer: &flow_model::tokenize::PreferenceTokenizer) -> SpecialTokens {
        let bos = tokenizer
            .bos_token
            .as_deref()
            .or(Some("<s>"))
            .and_then(|t| tokenizer.inner().token_to_id(t));
        SpecialTokens {
            bos,
            eos: tokenizer.eos_id,
            pad: tokenizer.eos_id,
        }
    }
}

impl Node for ModelInit {
    type Params = ModelInitParams;
    const TYPE: &'static str = "model.init";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Creates a new model directory of a supported family (config.json, generation_config.json, model.safetensors and the tokenizer files) with seeded random weights: normal(0, init_std) for embeddings and linear layers, zero biases, norms that start as the identity. The offline default workflow builds its small base model with it.";
    const OUTPUTS: &'static [OutputSpec] = &[OutputSpec {
        name: "model",
        description: "a Hugging Face model directory that transformers loads",
    }];

    fn check(params: &ModelInitParams) -> Result<(), ParamError> {
        params.family()?;
        for (key, value) in [
            ("hidden_size", params.hidden_size),
            ("intermediate_size", params.intermediate_size),
            ("num_layers", params.num_layers),
            ("num_heads", params.num_heads),
            ("num_kv_heads", params.num_kv_heads),
        ] {
            if value == 0 {
                return Err(ParamError::at(key, "must be at least 1"));
            }
        }
        if !params.num_heads.is_multiple_of(params.num_kv_heads) {
            return Err(ParamError::at(
                "num_kv_heads",
                format!("must divide num_heads ({})", params.num_heads),
            ));
        }
        let head_dim = params
            .head_dim
            .unwrap_or(params.hidden_size / params.num_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(ParamError::at(
                "head_dim",
                format!("must be even and positive (hidden_size / num_heads is {head_dim})"),
            ));
        }
        if params.max_position_embeddings < 2 {
            return Err(ParamError::at(
                "max_position_embeddings",
                "must be at least 2",
            ));
        }
        if params.sliding_window == Some(0) {
            return Err(ParamError::at(
                "sliding_window",
                "must be positive (null: full attention)",
            ));
        }
        for (key, value) in [
            ("init_std", Some(params.init_std)),
            ("rope_theta", params.rope_theta),
        ] {
            if value.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return Err(ParamError::at(key, "must be a positive number"));
            }
        }
        Ok(())
    }

    fn external_files(params: &ModelInitParams) -> Vec<PathBuf> {
        vec![params.tokenizer.clone()]
    }

    async fn run(&self, ctx: NodeContext, params: ModelInitParams) -> Result<(), NodeError> {
        let out = ctx.output_dir("model")?.to_path_buf();
        let log = ctx.log().clone();
        run_blocking(&ctx, move |_| {
            let tokenizer = flow_model::tokenize::PreferenceTokenizer::load(&params.tokenizer).map_err(model_error)?;
            let vocab = tokenizer.inner().get_vocab_size(true);
            let tokens = SpecialTokens::of(&tokenizer);
            let config = params.config(vocab, tokens)?;
            let model = Model::random(&config, params.seed, params.init_std, &flow_model::cpu());
            model.save(&out, SaveDtype::F32).map_err(model_error)?;
            let generation = serde_json::json!({ "bos_token_id": tokens.bos, "eos_token_id": tokens.eos, "pad_token_id": tokens.pad });
            std::fs::write(out.join("generation_config.json"), generation.to_string()).map_err(|e| NodeError::new(e.to_string()))?;
            copy_tokenizer_files(&params.tokenizer, &out)?;
            log.line(&format!("initialised a {}-parameter {} model (vocab {vocab}, seed {})", config.parameter_count(), params.architecture, params.seed));
            Ok(())
        })
        .await
    }
}
