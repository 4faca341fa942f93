//! AdamW with PyTorch's semantics (`torch.optim.AdamW`, Loshchilov & Hutter 2019) and global-norm
//! gradient clipping (`torch.nn.utils.clip_grad_norm_`), on named 2-D tensors.
//!
//! One update, for step `t` (counted from 1) and learning rate `lr`:
//! `p ← p·(1 − lr·wd)`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
//! `p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)`.

use burn::prelude::*;

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// β₁, β₂.
    pub betas: (f64, f64),
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// transformers' `TrainingArguments` defaults: betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        AdamWConfig {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// A trainable tensor with its name and optimizer state.
#[derive(Clone, Debug)]
pub struct Param {
    /// Name (checkpoint or PEFT name).
    pub name: String,
    /// Current value.
    pub value: Tensor<2>,
    /// First moment.
    pub m: Tensor<2>,
    /// Second moment.
    pub v: Tensor<2>,
    /// Whether weight decay applies (not to norm weights, as transformers' Trainer decides).
    pub decay: bool,
}

impl Param {
    /// A parameter with zero moments.
    pub fn new(name: String, value: Tensor<2>) -> Param {
        let decay = !is_norm_weight(&name);
        Param {
            m: value.zeros_like(),
            v: value.zeros_like(),
            name,
            value,
            decay,
        }
    }
}

/// transformers' Trainer excludes biases and normalisation weights from weight decay.
pub fn is_norm_weight(name: &str) -> bool {
    name.contains("norm") || name.ends_with("bias")
}

/// AdamW over a set of parameters.
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Updates applied so far.
    pub step: u64,
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> AdamW {
        AdamW { config, step: 0 }
    }

    /// Applies one update with learning rate `lr`; `grads[i]` belongs to `params[i]`.
    pub fn update(&mut self, params: &mut [Param], grads: Vec<Tensor<2>>, lr: f64) {
        self.step += 1;
        let (b1, b2) = self.config.betas;
        let bias1 = 1.0 - b1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - b2.powi(self.step as i32)).sqrt();
        let step_size = lr / bias1;
        for (p, g) in params.iter_mut().zip(grads) {
            let mut value = p.value.clone();
            if p.decay && self.config.weight_decay != 0.0 {
                value = value.mul_scalar(1.0 - lr * self.config.weight_decay);
            }
            // torch: m.lerp_(g, 1−β₁) is m + (1−β₁)(g − m).
            p.m = p.m.clone() + (g.clone() - p.m.clone()).mul_scalar(1.0 - b1);
            p.v = p.v.clone().mul_scalar(b2) + g.square().mul_scalar(1.0 - b2);
            let denom =
                p.v.clone()
                    .sqrt()
                    .div_scalar(bias2_sqrt)
                    .add_scalar(self.config.eps);
            p.value = value - (p.m.clone() / denom).mul_scalar(step_size);
        }
    }
}

/// The L2 norm of all gradients together.
pub fn global_norm(grads: &[Tensor<2>]) -> f64 {
    let squares: f64 = grads
        .iter()
        .map(|g| crate::scoring::to_f64(g.clone().square().sum())[0])
        .sum();
    squares.sqrt()
}

/// Scales gradients so their global norm is at most `max_norm` (as `clip_grad_norm_`:
/// coefficient `max_norm / (norm + 1e-6)`, capped at 1). Returns the norm before clipping.
pub fn clip_global_norm(grads: &mut [Tensor<2>], max_norm: Option<f64>) -> f64 {
    let norm = global_norm(grads);
    if let Some(max) = max_norm {
        let coefficient = (max / (norm + 1e-6)).min(1.0);
        if coefficient < 1.0 {
            for g in grads.iter_mut() {
                *g = g.clone().mul_scalar(coefficient);
            }
        }
    }
    norm
}
