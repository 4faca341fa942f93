//! Checkpoint names: every weight of a model with its name in the checkpoint, its shape there,
//! the 2-D shape flow holds it in, and its [`Role`] — the one place a family's tensor names are
//! mapped. Both execution paths (`host` and `tensor`) and the checkpoint readers take the
//! weights in this order and find them by role.

use super::config::ModelConfig;
use super::family::Family;

/// What a weight does in a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerRole {
    /// The norm before attention (`input_layernorm`).
    AttentionNorm,
    /// Query projection weight.
    Q,
    /// Key projection weight.
    K,
    /// Value projection weight.
    V,
    /// Output projection weight.
    O,
    /// Query projection bias.
    QBias,
    /// Key projection bias.
    KBias,
    /// Value projection bias.
    VBias,
    /// Output projection bias.
    OBias,
    /// Per-head RMSNorm of the queries (Qwen3 `q_norm`).
    QNorm,
    /// Per-head RMSNorm of the keys (Qwen3 `k_norm`).
    KNorm,
    /// The norm on the attention output (Gemma 2 `post_attention_layernorm`).
    AttentionOutputNorm,
    /// The norm before the MLP (`post_attention_layernorm`; Gemma 2 `pre_feedforward_layernorm`).
    MlpNorm,
    /// The norm on the MLP output (Gemma 2 `post_feedforward_layernorm`).
    MlpOutputNorm,
    /// Gate projection weight.
    Gate,
    /// Up projection weight.
    Up,
    /// Down projection weight.
    Down,
    /// Gate projection bias.
    GateBias,
    /// Up projection bias.
    UpBias,
    /// Down projection bias.
    DownBias,
}

/// What a weight is in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Token embeddings `[vocab, hidden]`.
    Embedding,
    /// A weight of decoder layer `.0`.
    Layer(usize, LayerRole),
    /// The final norm.
    FinalNorm,
    /// The output layer `[vocab, hidden]` (absent when tied to the embeddings).
    LmHead,
}

impl LayerRole {
    /// Whether this is an RMSNorm weight.
    pub fn is_norm(self) -> bool {
        matches!(
            self,
            LayerRole::AttentionNorm
                | LayerRole::QNorm
                | LayerRole::KNorm
                | LayerRole::AttentionOutputNorm
                | LayerRole::MlpNorm
                | LayerRole::MlpOutputNorm
        )
    }
}

/// A checkpoint tensor: its name, its shape in the file, and the 2-D shape the model holds.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightSpec {
    /// Name in the checkpoint (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Shape in the checkpoint.
    pub file_shape: Vec<usize>,
    /// Shape in the model (`[1, n]` for 1-D weights).
    pub shape: [usize; 2],
    /// What it does.
    pub role: Role,
}

impl WeightSpec {
    /// Whether this is an RMSNorm weight (stored as `w` of `1 + w` in Gemma 2).
    pub fn is_norm(&self) -> bool {
        match self.role {
            Role::FinalNorm => true,
            Role::Layer(_, role) => role.is_norm(),
            Role::Embedding | Role::LmHead => false,
        }
    }
}

fn spec(name: String, file_shape: &[usize], role: Role) -> WeightSpec {
    let shape = match file_shape {
        [n] => [1, *n],
        [rows, cols] => [*rows, *cols],
        _ => unreachable!("decoder weights are 1-D or 2-D"),
    };
    WeightSpec {
        name,
        file_shape: file_shape.to_vec(),
        shape,
        role,
    }
}

/// Every weight of a model with this config, in checkpoint order.
pub fn weight_specs(c: &ModelConfig) -> Vec<WeightSpec> {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    let gemma = c.family == Family::Gemma2;
    let mut specs = vec![spec(
        "model.embed_tokens.weight".into(),
        &[v, h],
        Role::Embedding,
    )];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let mut push = |name: &str, shape: &[usize], role: LayerRole| {
            specs.push(spec(format!("{p}.{name}"), shape, Role::Layer(l, role)));
        };
        use LayerRole::*;
        push("input_layernorm.weight", &[h], AttentionNorm);
        for (proj, out, weight, bias) in
            [("q", q, Q, QBias), ("k", kv, K, KBias), ("v", kv, V, VBias)]
        {
            push(&format!("self_attn.{proj}_proj.weight"), &[out, h], weight);
            if c.qkv_bias() {
                push(&format!("self_attn.{proj}_proj.bias"), &[out], bias);
            }
        }
        push("self_attn.o_proj.weight", &[h, q], O);
        if c.o_bias() {
            push("self_attn.o_proj.bias", &[h], OBias);
        }
        if c.traits().qk_norm {
            push("self_attn.q_norm.weight", &[c.head_dim], QNorm);
            push("self_attn.k_norm.weight", &[c.head_dim], KNorm);
        }
        if gemma {
            push("post_attention_layernorm.weight", &[h], AttentionOutputNorm);
            push("pre_feedforward_layernorm.weight", &[h], MlpNorm);
            push("post_feedforward_layernorm.weight", &[h], MlpOutputNorm);
        } else {
            push("post_attention_layernorm.weight", &[h], MlpNorm);
        }
        for (proj, shape, weight, bias) in [
            ("gate", [i, h], Gate, GateBias),
            ("up", [i, h], Up, UpBias),
            ("down", [h, i], Down, DownBias),
        ] {
            push(&format!("mlp.{proj}_proj.weight"), &shape, weight);
            if c.mlp_biases() {
                push(&format!("mlp.{proj}_proj.bias"), &shape[..1], bias);
            }
        }
    }
    specs.push(spec("model.norm.weight".into(), &[h], Role::FinalNorm));
    if !c.tie_word_embeddings {
        specs.push(spec("lm_head.weight".into(), &[v, h], Role::LmHead));
    }
    specs
}

impl ModelConfig {
    /// Parameter count.
    pub fn parameter_count(&self) -> usize {
        weight_specs(self)
            .iter()
            .map(|s| s.file_shape.iter().product::<usize>())
            .sum()
    }
}

/// Where each role's weight sits in [`weight_specs`] order, for one model.
#[derive(Clone, Debug)]
pub struct WeightIndex {
    layers: Vec<std::collections::HashMap<LayerRole, usize>>,
    final_norm: usize,
    lm_head: usize,
}

impl WeightIndex {
    /// The index of `c`'s weights.
    pub fn of(c: &ModelConfig) -> WeightIndex {
        let mut index = WeightIndex {
            layers: vec![Default::default(); c.num_hidden_layers],
            final_norm: 0,
            lm_head: 0,
        };
        for (n, s) in weight_specs(c).iter().enumerate() {
            match s.role {
                Role::Embedding => {}
                Role::Layer(l, role) => {
                    index.layers[l].insert(role, n);
                }
                Role::FinalNorm => index.final_norm = n,
                Role::LmHead => index.lm_head = n,
            }
        }
        index
    }

    /// The position of layer `l`'s weight `role`, if the model has one.
    pub fn layer(&self, l: usize, role: LayerRole) -> Option<usize> {
        self.layers[l].get(&role).copied()
    }

    /// The position of the embeddings.
    pub fn embedding(&self) -> usize {
        0
    }

    /// The position of the final norm.
    pub fn final_norm(&self) -> usize {
        self.final_norm
    }

    /// The position of the output layer's weight (the embeddings when tied).
    pub fn lm_head(&self) -> usize {
        self.lm_head
    }
}
