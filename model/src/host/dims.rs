//! The shapes and attention numerics the host passes share, read once from the config; the
//! window is set per layer.

use crate::arch::ModelConfig;

/// Shapes the passes share.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub(super) hidden: usize,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) intermediate: usize,
    /// This layer's window (`usize::MAX`: full causal attention).
    pub(super) window: usize,
    /// The factor scores are multiplied by (`head_dim^-½` or `query_pre_attn_scalar^-½`).
    pub(super) scale: f32,
    /// Scores become `c · tanh(s / c)` before the softmax (Gemma 2).
    pub(super) softcap: Option<f32>,
    pub(super) eps: f32,
}

impl Dims {
    /// The shapes of `c` with layer `layer`'s window.
    pub(super) fn of(c: &ModelConfig, layer: usize) -> Dims {
        Dims {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            intermediate: c.intermediate_size,
            window: c.window(layer).unwrap_or(usize::MAX),
            scale: c.attention_scale() as f32,
            softcap: c.attn_logit_softcapping.map(|c| c as f32),
            eps: c.rms_norm_eps as f32,
        }
    }

    pub(super) fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    pub(super) fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}
