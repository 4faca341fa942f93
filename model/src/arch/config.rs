//! `config.json` of a Mistral checkpoint, in both styles found on the Hub: transformers 4
//! (`rope_theta` at top level, `torch_dtype`) and transformers 5 (`rope_parameters.rope_theta`,
//! `dtype`).

use serde::Deserialize;
use serde_json::{Value as Json, json};
use std::path::Path;

use crate::error::{ModelError, Result, io_at};

/// The shape and numerics of a Mistral model.
#[derive(Clone, Debug, PartialEq)]
pub struct MistralConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Sliding attention window (a query at q sees keys q−W < k ≤ q); `None`: full causal.
    pub sliding_window: Option<usize>,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence token id.
    pub bos_token_id: u32,
    /// End-of-sequence token id.
    pub eos_token_id: u32,
    /// Padding token id, if any.
    pub pad_token_id: Option<u32>,
    /// Storage dtype named in the file (`float32`, `bfloat16`, `float16`).
    pub dtype: String,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    sliding_window: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    bos_token_id: Option<u32>,
    eos_token_id: Option<Json>,
    pad_token_id: Option<u32>,
    hidden_act: Option<String>,
    dtype: Option<String>,
    torch_dtype: Option<String>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_max_positions() -> usize {
    32768
}

impl MistralConfig {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<MistralConfig> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                path,
                what: "the model's config.json".into(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(io_at(&path))?;
        Self::parse(&text).map_err(|message| ModelError::Invalid { path, message })
    }

    /// Parses config.json text.
    pub fn parse(text: &str) -> Result<MistralConfig, String> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| format!("not a model config: {e}"))?;
        match raw.model_type.as_deref() {
            Some("mistral") => {}
            Some(other) => {
                return Err(format!(
                    "unsupported model_type `{other}`: flow's model core implements `mistral`"
                ));
            }
            None => return Err("missing field `model_type` (expected \"mistral\")".into()),
        }
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(format!(
                "unsupported hidden_act `{act}`: Mistral uses `silu`"
            ));
        }
        if let Some(kind) = raw
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.as_deref())
            .filter(|t| *t != "default")
        {
            return Err(format!(
                "unsupported rope_type `{kind}`: only `default` RoPE is implemented"
            ));
        }
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / heads.max(1));
        let rope_theta = raw
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(raw.rope_theta)
            .unwrap_or(10000.0);
        let eos = match &raw.eos_token_id {
            Some(Json::Number(n)) => n.as_u64(),
            Some(Json::Array(ids)) => ids.first().and_then(Json::as_u64),
            _ => None,
        };
        let config = MistralConfig {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            sliding_window: raw.sliding_window,
            tie_word_embeddings: raw.tie_word_embeddings,
            max_position_embeddings: raw.max_position_embeddings,
            bos_token_id: raw.bos_token_id.unwrap_or(1),
            eos_token_id: eos.unwrap_or(2) as u32,
            pad_token_id: raw.pad_token_id,
            dtype: raw
                .dtype
                .or(raw.torch_dtype)
                .unwrap_or_else(|| "float32".into()),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the shape is a valid Mistral: heads a multiple of key/value heads, an even head width.
    pub fn validate(&self) -> Result<(), String> {
        let (heads, kv_heads) = (self.num_attention_heads, self.num_key_value_heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(format!(
                "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})"
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim must be even and positive, got {}",
                self.head_dim
            ));
        }
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.num_hidden_layers == 0
            || self.intermediate_size == 0
        {
            return Err(
                "vocab_size, hidden_size, intermediate_size and num_hidden_layers must be positive"
                    .into(),
            );
        }
        Ok(())
    }

    /// `config.json` as transformers writes it (both RoPE styles, so transformers 4 and 5 read it).
    pub fn to_json(&self) -> Json {
        json!({
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": { "rope_theta": self.rope_theta, "rope_type": "default" },
            "sliding_window": self.sliding_window,
            "tie_word_embeddings": self.tie_word_embeddings,
            "dtype": self.dtype,
            "torch_dtype": self.dtype,
            "use_cache": true,
            "vocab_size": self.vocab_size,
        })
    }

    /// A model of this shape with Mistral-7B's numerics (RMSNorm ε 1e-5, RoPE θ 10,000, a
    /// 4,096-token window, untied embeddings, f32): the benchmarks' and the tests' models.
    pub fn with_shape(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
    ) -> MistralConfig {
        MistralConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: hidden_size / num_attention_heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            sliding_window: Some(4096),
            tie_word_embeddings: false,
            max_position_embeddings: 32768,
            bos_token_id: 1,
            eos_token_id: 2,
            pad_token_id: None,
            dtype: "float32".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_rope_styles() {
        let v5 = r#"{"model_type":"mistral","vocab_size":400,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"rope_parameters":{"rope_theta":500.0,"rope_type":"default"},"sliding_window":4096}"#;
        let v4 = r#"{"model_type":"mistral","vocab_size":32000,"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"rope_theta":10000.0,"torch_dtype":"bfloat16","eos_token_id":2}"#;
        let a = MistralConfig::parse(v5).unwrap();
        assert_eq!(
            (a.rope_theta, a.head_dim, a.sliding_window),
            (500.0, 16, Some(4096))
        );
        let b = MistralConfig::parse(v4).unwrap();
        assert_eq!(
            (b.rope_theta, b.head_dim, b.dtype.as_str()),
            (10000.0, 128, "bfloat16")
        );
        assert_eq!(MistralConfig::parse(&a.to_json().to_string()).unwrap(), a);
    }

    #[test]
    fn rejects_other_architectures() {
        let err = MistralConfig::parse(r#"{"model_type":"gpt2","vocab_size":1,"hidden_size":2,"intermediate_size":2,"num_hidden_layers":1,"num_attention_heads":1}"#).unwrap_err();
        assert!(err.contains("unsupported model_type `gpt2`"), "{err}");
    }
}
