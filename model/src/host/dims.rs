//! The shapes the host passes share, read once from the config.

use crate::arch::MistralConfig;

/// Shapes the passes share.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub(super) hidden: usize,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) intermediate: usize,
    pub(super) window: usize,
    pub(super) eps: f32,
}

impl Dims {
    pub(super) fn of(c: &MistralConfig) -> Dims {
        Dims {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            intermediate: c.intermediate_size,
            window: c.sliding_window.unwrap_or(usize::MAX),
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
