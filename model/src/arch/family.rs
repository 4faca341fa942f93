//! The model families flow implements, as their differences: one table row per family, read by
//! the config parser, the checkpoint names and both execution paths. A family is data here, not
//! a copy of the model (transformers' modular files and llama.cpp's architecture table do the
//! same).
//!
//! | family | `model_type` | q/k/v bias | o bias | MLP bias | q/k norm | norms per layer | embeddings | attention scale | soft-capping | sliding layers |
//! |---|---|---|---|---|---|---|---|---|---|---|
//! | Mistral | `mistral` | – | – | – | – | 2 | as stored | `head_dim^-½` | – | all, when `sliding_window` is set |
//! | Llama | `llama` | `attention_bias` | `attention_bias` | `mlp_bias` | – | 2 | as stored | `head_dim^-½` | – | none |
//! | Qwen2 | `qwen2` | always | never | – | – | 2 | as stored | `head_dim^-½` | – | `layer_types` (`use_sliding_window`, `max_window_layers`) |
//! | Qwen3 | `qwen3` | `attention_bias` | `attention_bias` | – | RMSNorm per head | 2 | as stored | `head_dim^-½` | – | as Qwen2 |
//! | Gemma 2 | `gemma2` | `attention_bias` | `attention_bias` | – | – | 4 (sandwich), `(1 + w)` | × √hidden | `query_pre_attn_scalar^-½` | attention and final logits | `layer_types` (even layers by default) |

/// A decoder family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `MistralForCausalLM`.
    Mistral,
    /// `LlamaForCausalLM` (Llama 2/3.x, TinyLlama, SmolLM).
    Llama,
    /// `Qwen2ForCausalLM` (Qwen 2 and 2.5).
    Qwen2,
    /// `Qwen3ForCausalLM`.
    Qwen3,
    /// `Gemma2ForCausalLM`.
    Gemma2,
}

/// Where a family puts biases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bias {
    /// Never.
    Never,
    /// Always.
    Always,
    /// When the config's flag (`attention_bias` / `mlp_bias`) says so.
    Flag,
}

/// How a family decides which layers attend within a sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sliding {
    /// No layer.
    Never,
    /// Every layer, when `sliding_window` is set (Mistral).
    AllWhenSet,
    /// `layer_types`, else layers `≥ max_window_layers` when `use_sliding_window` (Qwen).
    QwenLayers,
    /// `layer_types`, else every even layer (Gemma 2).
    Alternating,
}

/// What a family does differently: the one table the rest of flow reads.
#[derive(Clone, Copy, Debug)]
pub struct Traits {
    /// `model_type` in `config.json`.
    pub model_type: &'static str,
    /// The transformers class (`architectures` in `config.json`).
    pub architecture: &'static str,
    /// Bias on the q, k and v projections.
    pub qkv_bias: Bias,
    /// Bias on the output projection.
    pub o_bias: Bias,
    /// Bias on the MLP projections.
    pub mlp_bias: Bias,
    /// RMSNorm over each head of q and k before RoPE (`q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// Norms on the attention and MLP outputs too (`post_attention_layernorm` on the attention
    /// output, `pre_feedforward_layernorm` before the MLP, `post_feedforward_layernorm` after it).
    pub sandwich_norms: bool,
    /// RMSNorm scales by `1 + w` (the stored weight is `w`).
    pub norm_unit_offset: bool,
    /// Embeddings are multiplied by `√hidden` (the output layer uses them unscaled).
    pub scaled_embeddings: bool,
    /// Which layers use the sliding window.
    pub sliding: Sliding,
    /// Key of the MLP activation in `config.json`.
    pub activation_key: &'static str,
    /// `head_dim` when `config.json` has none: `None` means `hidden_size / heads`.
    pub default_head_dim: Option<usize>,
    /// `tie_word_embeddings` when `config.json` has none.
    pub default_tied: bool,
}

impl Family {
    /// Every family flow implements.
    pub const ALL: [Family; 5] = [
        Family::Mistral,
        Family::Llama,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma2,
    ];

    /// The family of a `model_type`, if flow implements it.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        Family::ALL
            .into_iter()
            .find(|f| f.traits().model_type == model_type)
    }

    /// The `model_type` values flow implements, for error messages.
    pub fn supported() -> String {
        Family::ALL
            .map(|f| format!("`{}`", f.traits().model_type))
            .join(", ")
    }

    /// This family's row of the table.
    pub fn traits(self) -> Traits {
        const LLAMA: Traits = Traits {
            model_type: "llama",
            architecture: "LlamaForCausalLM",
            qkv_bias: Bias::Flag,
            o_bias: Bias::Flag,
            mlp_bias: Bias::Flag,
            qk_norm: false,
            sandwich_norms: false,
            norm_unit_offset: false,
            scaled_embeddings: false,
            sliding: Sliding::Never,
            activation_key: "hidden_act",
            default_head_dim: None,
            default_tied: false,
        };
        match self {
            Family::Llama => LLAMA,
            Family::Mistral => Traits {
                model_type: "mistral",
                architecture: "MistralForCausalLM",
                qkv_bias: Bias::Never,
                o_bias: Bias::Never,
                mlp_bias: Bias::Never,
                sliding: Sliding::AllWhenSet,
                ..LLAMA
            },
            Family::Qwen2 => Traits {
                model_type: "qwen2",
                architecture: "Qwen2ForCausalLM",
                qkv_bias: Bias::Always,
                o_bias: Bias::Never,
                mlp_bias: Bias::Never,
                sliding: Sliding::QwenLayers,
                ..LLAMA
            },
            Family::Qwen3 => Traits {
                model_type: "qwen3",
                architecture: "Qwen3ForCausalLM",
                mlp_bias: Bias::Never,
                qk_norm: true,
                sliding: Sliding::QwenLayers,
                default_head_dim: Some(128),
                ..LLAMA
            },
            Family::Gemma2 => Traits {
                model_type: "gemma2",
                architecture: "Gemma2ForCausalLM",
                mlp_bias: Bias::Never,
                sandwich_norms: true,
                norm_unit_offset: true,
                scaled_embeddings: true,
                sliding: Sliding::Alternating,
                activation_key: "hidden_activation",
                default_head_dim: Some(256),
                default_tied: true,
                ..LLAMA
            },
        }
    }
}
