//! `config.json` of a decoder checkpoint, read as transformers 5 reads it, in both styles found
//! on the Hub: transformers 4 (`rope_theta` and `rope_scaling` at top level, `torch_dtype`) and
//! transformers 5 (`rope_parameters`, `dtype`, `layer_types`). `model_type` picks the
//! [`Family`]; a value flow does not implement (a family, a rope type, an activation, a
//! window) is an error naming the key and what is supported, never read as something else.
//!
//! Rules taken from transformers 5.24's configuration classes:
//! - `rope_scaling` (old style) wins over `rope_parameters`; a top-level `rope_theta` only fills
//!   a missing base; `type` is the old name of `rope_type`.
//! - Mistral: one `sliding_window` for every layer, `null` for full attention. `0` is refused
//!   (transformers masks every key with it).
//! - Qwen2/Qwen3: `sliding_window` counts only with `use_sliding_window: true`; then layers
//!   `≥ max_window_layers` slide, unless `layer_types` lists them.
//! - Gemma 2: `layer_types`, else even layers slide; `sliding_window` must be set.
//! - `head_dim`: the file's, else `hidden_size / num_attention_heads` (Qwen3: 128, Gemma 2: 256).

use serde_json::{Map, Value as Json, json};
use std::path::Path;

use super::family::{Bias, Family, Sliding, Traits};
use super::rope::{Rope, RopeScaling};
use crate::error::{ModelError, Result, io_at};

/// The MLP's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `silu`: SwiGLU, `silu(gate) · up`.
    Silu,
    /// `gelu_pytorch_tanh` (also `gelu_new`): GeGLU with the tanh approximation of GELU.
    GeluTanh,
}

impl Activation {
    fn parse(name: &str) -> Option<Activation> {
        match name {
            "silu" | "swish" => Some(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" => Some(Activation::GeluTanh),
            _ => None,
        }
    }

    /// The name transformers uses.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        }
    }
}

/// The shape and numerics of a decoder model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The family (`model_type`).
    pub family: Family,
    /// Vocabulary size (rows of the embedding matrix; may exceed the tokenizer's).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP inner width.
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
    /// RoPE base and scaling.
    pub rope: Rope,
    /// The window of sliding layers (a query at q sees keys q−W < k ≤ q).
    pub sliding_window: Option<usize>,
    /// Per layer: whether it attends within [`ModelConfig::sliding_window`].
    pub sliding_layers: Vec<bool>,
    /// Biases on the attention projections, where the family reads this flag.
    pub attention_bias: bool,
    /// Biases on the MLP projections, where the family reads this flag.
    pub mlp_bias: bool,
    /// The MLP's activation.
    pub hidden_act: Activation,
    /// Gemma 2: attention scores are scaled by `query_pre_attn_scalar^-½` instead of `head_dim^-½`.
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2: scores become `c · tanh(s / c)` before the mask.
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2: logits become `c · tanh(l / c)`.
    pub final_logit_softcapping: Option<f64>,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence token id, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (the first is the one flow appends and pads with).
    pub eos_token_ids: Vec<u32>,
    /// Padding token id, if any.
    pub pad_token_id: Option<u32>,
    /// Storage dtype named in the file (`float32`, `bfloat16`, `float16`).
    pub dtype: String,
    /// The file as read, written back on save with only the dtype changed (so transformers
    /// loads a trained model exactly as it loaded its base).
    pub source: SourceJson,
}

/// The `config.json` a model was read from; never part of a comparison.
#[derive(Clone, Debug, Default)]
pub struct SourceJson(pub Option<Map<String, Json>>);

impl PartialEq for SourceJson {
    fn eq(&self, _: &SourceJson) -> bool {
        true
    }
}

/// A reader of one config object that names the key in every error.
struct Fields<'a>(&'a Map<String, Json>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Json> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn count(&self, key: &str) -> Result<Option<usize>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n >= 0 => Ok(Some(n as usize)),
                _ => Err(format!("`{key}` must be a non-negative integer, found {v}")),
            },
        }
    }

    fn required(&self, key: &str) -> Result<usize, String> {
        self.count(key)?
            .ok_or_else(|| format!("missing field `{key}`"))
    }

    fn number(&self, key: &str) -> Result<Option<f64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("`{key}` must be a number, found {v}")),
        }
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| format!("`{key}` must be true or false, found {v}")),
        }
    }

    fn token(&self, key: &str) -> Result<Option<u32>, String> {
        Ok(self.count(key)?.map(|n| n as u32))
    }

    fn tokens(&self, key: &str) -> Result<Vec<u32>, String> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Json::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|n| n as u32)
                        .ok_or_else(|| format!("`{key}` must hold token ids, found {v}"))
                })
                .collect(),
            Some(_) => Ok(self.token(key)?.into_iter().collect()),
        }
    }
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<ModelConfig> {
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
    pub fn parse(text: &str) -> Result<ModelConfig, String> {
        let json: Json = serde_json::from_str(text.trim_start_matches('\u{feff}'))
            .map_err(|e| format!("not a model config: {e}"))?;
        let Json::Object(map) = json else {
            return Err("not a model config: expected a JSON object".into());
        };
        let f = Fields(&map);
        let family = match f.get("model_type").and_then(Json::as_str) {
            Some(name) => Family::from_model_type(name).ok_or_else(|| {
                format!(
                    "unsupported model_type `{name}`: flow implements {}",
                    Family::supported()
                )
            })?,
            None => {
                return Err(format!(
                    "missing field `model_type` (expected one of {})",
                    Family::supported()
                ));
            }
        };
        let t = family.traits();
        let (hidden, heads) = (
            f.required("hidden_size")?,
            f.required("num_attention_heads")?,
        );
        let layers = f.required("num_hidden_layers")?;
        let head_dim = match (f.count("head_dim")?, t.default_head_dim) {
            (Some(d), _) => d,
            (None, Some(d)) if map.contains_key("head_dim") && family == Family::Qwen3 => {
                return Err(format!(
                    "`head_dim` is null: Qwen3 needs it (transformers' default is {d})"
                ));
            }
            (None, Some(d)) => d,
            (None, None) => hidden / heads.max(1),
        };
        let act_key = t.activation_key;
        let act_name =
            f.get(act_key)
                .and_then(Json::as_str)
                .unwrap_or(if family == Family::Gemma2 {
                    "gelu_pytorch_tanh"
                } else {
                    "silu"
                });
        let hidden_act = Activation::parse(act_name).ok_or_else(|| {
            format!(
                "unsupported {act_key} `{act_name}`: flow implements `silu` and `gelu_pytorch_tanh`"
            )
        })?;
        let max_positions = f.count("max_position_embeddings")?.unwrap_or(32768);
        let (sliding_window, sliding_layers) = sliding(&f, t, layers)?;
        let eos_token_ids = f.tokens("eos_token_id")?;
        let config = ModelConfig {
            family,
            vocab_size: f.required("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: f.required("intermediate_size")?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: f.count("num_key_value_heads")?.unwrap_or(heads),
            head_dim,
            rms_norm_eps: f.number("rms_norm_eps")?.unwrap_or(1e-6),
            rope: rope(&f, max_positions)?,
            sliding_window,
            sliding_layers,
            attention_bias: f.flag("attention_bias")?.unwrap_or(false),
            mlp_bias: f.flag("mlp_bias")?.unwrap_or(false),
            hidden_act,
            query_pre_attn_scalar: match family {
                Family::Gemma2 => Some(f.number("query_pre_attn_scalar")?.unwrap_or(256.0)),
                _ => None,
            },
            attn_logit_softcapping: match family {
                Family::Gemma2 => f.number("attn_logit_softcapping")?,
                _ => None,
            },
            final_logit_softcapping: match family {
                Family::Gemma2 => f.number("final_logit_softcapping")?,
                _ => None,
            },
            tie_word_embeddings: f.flag("tie_word_embeddings")?.unwrap_or(t.default_tied),
            max_position_embeddings: max_positions,
            bos_token_id: f.token("bos_token_id")?,
            eos_token_ids: if eos_token_ids.is_empty() {
                vec![2]
            } else {
                eos_token_ids
            },
            pad_token_id: f.token("pad_token_id")?,
            dtype: f
                .get("dtype")
                .or(f.get("torch_dtype"))
                .and_then(Json::as_str)
                .unwrap_or("float32")
                .to_string(),
            source: SourceJson(Some(map.clone())),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the shape is one the model can run: heads a multiple of key/value heads,
    /// an even positive head width, positive sizes, a positive window.
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
        if self.sliding_layers.len() != self.num_hidden_layers {
            return Err(format!(
                "`layer_types` has {} entries for {} layers",
                self.sliding_layers.len(),
                self.num_hidden_layers
            ));
        }
        if self.sliding_window == Some(0) {
            return Err("`sliding_window` must be positive (null for full attention)".into());
        }
        if self.max_position_embeddings < 2 {
            return Err(format!(
                "`max_position_embeddings` must be at least 2, found {}",
                self.max_position_embeddings
            ));
        }
        let positive = [
            ("rms_norm_eps", Some(self.rms_norm_eps)),
            ("rope_theta", Some(self.rope.theta)),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
        ];
        for (key, value) in positive {
            if let Some(v) = value.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(format!(
                    "`{key}` must be a positive number, found {v} (transformers would compute NaN or divide by it)"
                ));
            }
        }
        self.rope.check()
    }

    /// This family's row of the table.
    pub fn traits(&self) -> Traits {
        self.family.traits()
    }

    /// The window layer `layer` attends within (`None`: full causal attention).
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.sliding_layers[layer])
    }

    /// Whether the q, k and v projections have biases.
    pub fn qkv_bias(&self) -> bool {
        self.flagged(self.traits().qkv_bias, self.attention_bias)
    }

    /// Whether the output projection has a bias.
    pub fn o_bias(&self) -> bool {
        self.flagged(self.traits().o_bias, self.attention_bias)
    }

    /// Whether the MLP projections have biases.
    pub fn mlp_biases(&self) -> bool {
        self.flagged(self.traits().mlp_bias, self.mlp_bias)
    }

    fn flagged(&self, bias: Bias, flag: bool) -> bool {
        match bias {
            Bias::Never => false,
            Bias::Always => true,
            Bias::Flag => flag,
        }
    }

    /// The factor attention scores are multiplied by: `head_dim^-½`, or Gemma 2's
    /// `query_pre_attn_scalar^-½`.
    pub fn attention_scale(&self) -> f64 {
        self.query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .powf(-0.5)
    }

    /// The factor embeddings are multiplied by (Gemma 2: `f32(√hidden)`), else 1.
    pub fn embedding_scale(&self) -> f32 {
        if self.traits().scaled_embeddings {
            (self.hidden_size as f64).sqrt() as f32
        } else {
            1.0
        }
    }

    /// The first end-of-sequence id.
    pub fn eos_token_id(&self) -> u32 {
        self.eos_token_ids[0]
    }

    /// A Mistral of this shape with Mistral-7B's numerics (RMSNorm ε 1e-5, RoPE θ 10,000, a
    /// 4,096-token window, untied embeddings, f32): the benchmarks' and the tests' models.
    pub fn with_shape(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
    ) -> ModelConfig {
        ModelConfig {
            family: Family::Mistral,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: hidden_size / num_attention_heads.max(1),
            rms_norm_eps: 1e-5,
            rope: Rope::plain(10000.0),
            sliding_window: Some(4096),
            sliding_layers: vec![true; num_hidden_layers],
            attention_bias: false,
            mlp_bias: false,
            hidden_act: Activation::Silu,
            query_pre_attn_scalar: None,
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
            tie_word_embeddings: false,
            max_position_embeddings: 32768,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            pad_token_id: None,
            dtype: "float32".into(),
            source: SourceJson(None),
        }
    }

    /// [`ModelConfig::with_shape`] made a member of `family` with that family's usual numerics
    /// (Llama 3: θ 500,000; Qwen: θ 1,000,000, tied, Qwen2's q/k/v biases; Qwen3: q/k norms;
    /// Gemma 2: `(1 + w)` sandwich norms, GeGLU, scaled embeddings, soft-capping 50 / 30,
    /// a 4,096 window on even layers, tied). Special-token ids are the caller's to set.
    pub fn for_family(family: Family, shape: ModelConfig) -> ModelConfig {
        let layers = shape.num_hidden_layers;
        let base = ModelConfig {
            family,
            sliding_window: None,
            sliding_layers: vec![false; layers],
            ..shape
        };
        match family {
            Family::Mistral => ModelConfig {
                sliding_window: Some(4096),
                sliding_layers: vec![true; layers],
                ..base
            },
            Family::Llama => ModelConfig {
                rope: Rope::plain(500000.0),
                ..base
            },
            Family::Qwen2 | Family::Qwen3 => ModelConfig {
                rope: Rope::plain(1_000_000.0),
                rms_norm_eps: 1e-6,
                tie_word_embeddings: true,
                ..base
            },
            Family::Gemma2 => ModelConfig {
                rms_norm_eps: 1e-6,
                hidden_act: Activation::GeluTanh,
                query_pre_attn_scalar: Some(base.head_dim as f64),
                attn_logit_softcapping: Some(50.0),
                final_logit_softcapping: Some(30.0),
                sliding_window: Some(4096),
                sliding_layers: (0..layers).map(|l| l % 2 == 0).collect(),
                tie_word_embeddings: true,
                ..base
            },
        }
    }

    /// `config.json` for this model: the file it was read from with the dtype updated, or, for a
    /// new model, the family's config as transformers 5 writes it (JSON types as transformers'
    /// strict config classes require).
    pub fn to_json(&self) -> Json {
        let mut map = self.source.0.clone().unwrap_or_else(|| self.new_json());
        map.insert("dtype".into(), json!(self.dtype));
        if map.contains_key("torch_dtype") {
            map.insert("torch_dtype".into(), json!(self.dtype));
        }
        Json::Object(map)
    }

    /// The config of a new model, in transformers 5's style.
    fn new_json(&self) -> Map<String, Json> {
        let t = self.traits();
        let mut value = json!({
            "architectures": [t.architecture],
            "model_type": t.model_type,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() {
                [one] => json!(one),
                many => json!(many),
            },
            "pad_token_id": self.pad_token_id,
            "head_dim": self.head_dim,
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": self.rope.to_json(),
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_cache": true,
            "vocab_size": self.vocab_size,
        });
        value[t.activation_key] = json!(self.hidden_act.name());
        let layer_types: Vec<&str> = self
            .sliding_layers
            .iter()
            .map(|&s| {
                if s {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        match self.family {
            Family::Mistral => value["sliding_window"] = json!(self.sliding_window),
            Family::Llama => {
                value["attention_bias"] = json!(self.attention_bias);
                value["mlp_bias"] = json!(self.mlp_bias);
            }
            Family::Qwen2 | Family::Qwen3 => {
                let sliding = self.sliding_window.is_some() && self.sliding_layers.contains(&true);
                value["use_sliding_window"] = json!(sliding);
                value["sliding_window"] = json!(self.sliding_window.filter(|_| sliding));
                value["max_window_layers"] = json!(
                    self.sliding_layers
                        .iter()
                        .position(|&s| s)
                        .unwrap_or(self.num_hidden_layers)
                );
                value["layer_types"] = json!(layer_types);
                if self.family == Family::Qwen3 {
                    value["attention_bias"] = json!(self.attention_bias);
                }
            }
            Family::Gemma2 => {
                value["attention_bias"] = json!(self.attention_bias);
                value["query_pre_attn_scalar"] =
                    json!(self.query_pre_attn_scalar.unwrap_or(256.0) as u64);
                value["attn_logit_softcapping"] = json!(self.attn_logit_softcapping);
                value["final_logit_softcapping"] = json!(self.final_logit_softcapping);
                value["sliding_window"] = json!(self.sliding_window);
                value["layer_types"] = json!(layer_types);
            }
        }
        match value {
            Json::Object(map) => map,
            _ => unreachable!("built as an object"),
        }
    }
}

/// `rope_parameters` (or the old `rope_scaling` + `rope_theta`), as transformers normalises them.
fn rope(f: &Fields, max_positions: usize) -> Result<Rope, String> {
    let key = match f.get("rope_scaling") {
        Some(_) => "rope_scaling",
        None => "rope_parameters",
    };
    let params = f.get(key).cloned().unwrap_or(json!({}));
    let Json::Object(params) = params else {
        return Err(format!("`{key}` must be an object"));
    };
    let p = Fields(&params);
    let theta = p
        .number("rope_theta")?
        .or(f.number("rope_theta")?)
        .unwrap_or(10000.0);
    let kind = p
        .get("rope_type")
        .or(p.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    let factor = || {
        p.number("factor")?
            .ok_or_else(|| format!("rope_type `{kind}` needs `{key}.factor`"))
    };
    let needed = |needed_key: &str| {
        p.number(needed_key)?
            .ok_or_else(|| format!("rope_type `{kind}` needs `{}.{needed_key}`", key))
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "dynamic" => RopeScaling::Dynamic {
            factor: factor()?,
            max_position_embeddings: max_positions,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: needed("low_freq_factor")?,
            high_freq_factor: needed("high_freq_factor")?,
            original_max_position_embeddings: p
                .count("original_max_position_embeddings")?
                .unwrap_or(max_positions),
        },
        other => {
            return Err(format!(
                "unsupported rope_type `{other}` in `{key}`: flow implements `default`, `linear`, `dynamic` and `llama3`"
            ));
        }
    };
    Ok(Rope { theta, scaling })
}

/// The sliding window and which layers use it, by the family's rule.
fn sliding(f: &Fields, t: Traits, layers: usize) -> Result<(Option<usize>, Vec<bool>), String> {
    let window = match f.get("sliding_window") {
        None => None,
        Some(v) => match v.as_i64() {
            Some(w) if w > 0 => Some(w as usize),
            _ => {
                return Err(format!(
                    "`sliding_window` must be a positive integer or null (full attention), found {v}"
                ));
            }
        },
    };
    let listed = match f.get("layer_types") {
        None => None,
        Some(Json::Array(items)) => Some(
            items
                .iter()
                .map(|v| match v.as_str() {
                    Some("full_attention" | "attention") => Ok(false),
                    Some("sliding_attention") => Ok(true),
                    _ => Err(format!(
                        "`layer_types` entries must be \"full_attention\" or \"sliding_attention\", found {v}"
                    )),
                })
                .collect::<Result<Vec<bool>, String>>()?,
        ),
        Some(v) => return Err(format!("`layer_types` must be a list, found {v}")),
    };
    match t.sliding {
        Sliding::Never => Ok((None, vec![false; layers])),
        Sliding::AllWhenSet => Ok((window, vec![window.is_some(); layers])),
        Sliding::QwenLayers => {
            let used = f.flag("use_sliding_window")?.unwrap_or(false);
            let window = window.filter(|_| used);
            let first = f.count("max_window_layers")?.unwrap_or(28);
            let sliding = listed.unwrap_or_else(|| {
                (0..layers)
                    .map(|l| window.is_some() && l >= first)
                    .collect()
            });
            if window.is_none() && sliding.contains(&true) {
                return Err(
                    "`layer_types` lists sliding layers but `use_sliding_window` is false or `sliding_window` is null"
                        .into(),
                );
            }
            Ok((window, sliding))
        }
        Sliding::Alternating => {
            let sliding = listed.unwrap_or_else(|| (0..layers).map(|l| l % 2 == 0).collect());
            if window.is_none() && sliding.contains(&true) {
                return Err("`sliding_window` is null but layers slide (`layer_types`)".into());
            }
            Ok((window, sliding))
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
        let a = ModelConfig::parse(v5).unwrap();
        assert_eq!(
            (a.rope.theta, a.head_dim, a.sliding_window),
            (500.0, 16, Some(4096))
        );
        let b = ModelConfig::parse(v4).unwrap();
        assert_eq!(
            (b.rope.theta, b.head_dim, b.dtype.as_str()),
            (10000.0, 128, "bfloat16")
        );
        assert_eq!(ModelConfig::parse(&a.to_json().to_string()).unwrap(), a);
    }

    #[test]
    fn rejects_other_architectures() {
        let err = ModelConfig::parse(r#"{"model_type":"gpt2","vocab_size":1,"hidden_size":2,"intermediate_size":2,"num_hidden_layers":1,"num_attention_heads":1}"#).unwrap_err();
        assert!(err.contains("unsupported model_type `gpt2`"), "{err}");
        assert!(err.contains("`llama`") && err.contains("`gemma2`"), "{err}");
    }

    const SHAPE: &str = r#""vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":2,"num_attention_heads":2"#;

    fn parse(extra: &str) -> Result<ModelConfig, String> {
        ModelConfig::parse(&format!("{{{SHAPE},{extra}}}"))
    }

    #[test]
    fn windows_follow_each_familys_rule() {
        let mistral = parse(r#""model_type":"mistral","sliding_window":null"#).unwrap();
        assert_eq!((mistral.window(0), mistral.window(1)), (None, None));
        let zero = parse(r#""model_type":"mistral","sliding_window":0"#).unwrap_err();
        assert!(
            zero.contains("`sliding_window` must be a positive integer"),
            "{zero}"
        );
        let negative = parse(r#""model_type":"mistral","sliding_window":-1"#).unwrap_err();
        assert!(negative.contains("`sliding_window`"), "{negative}");
        let off = parse(r#""model_type":"qwen2","sliding_window":4,"max_window_layers":1,"use_sliding_window":false"#).unwrap();
        assert_eq!((off.window(0), off.window(1)), (None, None));
        let on = parse(r#""model_type":"qwen2","sliding_window":4,"max_window_layers":1,"use_sliding_window":true"#).unwrap();
        assert_eq!((on.window(0), on.window(1)), (None, Some(4)));
        let crash = parse(r#""model_type":"qwen3","use_sliding_window":false,"layer_types":["sliding_attention","full_attention"]"#).unwrap_err();
        assert!(crash.contains("use_sliding_window"), "{crash}");
        let gemma = parse(r#""model_type":"gemma2","sliding_window":8"#).unwrap();
        assert_eq!((gemma.window(0), gemma.window(1)), (Some(8), None));
        let unset = parse(r#""model_type":"gemma2","sliding_window":null"#).unwrap_err();
        assert!(unset.contains("`sliding_window` is null"), "{unset}");
        let short =
            parse(r#""model_type":"gemma2","sliding_window":8,"layer_types":["full_attention"]"#)
                .unwrap_err();
        assert!(
            short.contains("`layer_types` has 1 entries for 2 layers"),
            "{short}"
        );
    }

    #[test]
    fn numbers_transformers_would_divide_by_or_take_the_root_of_must_be_positive() {
        for (extra, key) in [
            (
                r#""model_type":"llama","rms_norm_eps":-1"#,
                "`rms_norm_eps`",
            ),
            (r#""model_type":"llama","rope_theta":0"#, "`rope_theta`"),
            (
                r#""model_type":"gemma2","sliding_window":8,"attn_logit_softcapping":0.0"#,
                "`attn_logit_softcapping`",
            ),
            (
                r#""model_type":"gemma2","sliding_window":8,"query_pre_attn_scalar":0"#,
                "`query_pre_attn_scalar`",
            ),
            (
                r#""model_type":"llama","max_position_embeddings":1"#,
                "`max_position_embeddings`",
            ),
            (
                r#""model_type":"llama","rope_parameters":{"rope_type":"llama3","factor":0.0,"low_freq_factor":1.0,"high_freq_factor":4.0}"#,
                "`rope_parameters.factor`",
            ),
            (
                r#""model_type":"llama","rope_parameters":{"rope_type":"llama3","factor":8.0,"low_freq_factor":4.0,"high_freq_factor":4.0}"#,
                "`rope_parameters.high_freq_factor`",
            ),
        ] {
            let err = parse(extra).unwrap_err();
            assert!(err.contains(key), "{extra}: {err}");
        }
    }

    #[test]
    fn rope_types_are_read_or_refused_by_name() {
        let old = parse(r#""model_type":"llama","rope_theta":500000.0,"rope_scaling":{"type":"linear","factor":2.0}"#).unwrap();
        assert_eq!(old.rope.theta, 500000.0);
        assert_eq!(old.rope.scaling, RopeScaling::Linear { factor: 2.0 });
        let yarn = parse(r#""model_type":"qwen2","rope_scaling":{"type":"yarn","factor":4.0}"#)
            .unwrap_err();
        assert!(
            yarn.contains("unsupported rope_type `yarn`") && yarn.contains("`llama3`"),
            "{yarn}"
        );
        let missing =
            parse(r#""model_type":"llama","rope_parameters":{"rope_type":"llama3","factor":8.0}"#)
                .unwrap_err();
        assert!(
            missing.contains("`rope_parameters.low_freq_factor`"),
            "{missing}"
        );
        let act = parse(r#""model_type":"llama","hidden_act":"relu""#).unwrap_err();
        assert!(act.contains("unsupported hidden_act `relu`"), "{act}");
    }

    #[test]
    fn new_models_write_configs_in_each_familys_style() {
        for family in Family::ALL {
            let config =
                ModelConfig::for_family(family, ModelConfig::with_shape(10, 8, 16, 2, 2, 1));
            let again = ModelConfig::parse(&config.to_json().to_string()).unwrap();
            assert_eq!(again, config, "{family:?}");
        }
    }
}
