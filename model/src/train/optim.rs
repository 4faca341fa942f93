//! AdamW with PyTorch's semantics (`torch.optim.AdamW`, Loshchilov & Hutter 2019) and global-norm
//! gradient clipping (`torch.nn.utils.clip_grad_norm_`), on named 2-D tensors.
//!
//! One update, for step `t` (counted from 1) and learning rate `lr`, in f32 as PyTorch does it:
//! `p ← p·(1 − lr·wd)`, `m ← m + (1−β₁)(g − m)`, `v ← β₂v + (1−β₂)g²`,
//! `p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)`.
//!
//! The moments live on the host and the update is one fused pass per tensor (parallel over
//! chunks), instead of a dozen whole-tensor passes through the tensor library.

use burn::prelude::*;
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::host::vector::written_zeros;

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

/// A trainable tensor with its name and optimizer state, kept on the host in f32 (the master
/// weights: the update runs here, and the model computes with a copy in its device and dtype).
#[derive(Clone, Debug)]
pub struct Param {
    /// Name (checkpoint or PEFT name).
    pub name: String,
    /// Shape (`[1, n]` for 1-D weights).
    pub shape: [usize; 2],
    /// Current value, row-major.
    pub value: Vec<f32>,
    /// First moment, row-major.
    pub m: Vec<f32>,
    /// Second moment, row-major.
    pub v: Vec<f32>,
    /// Whether weight decay applies (not to norm weights, as transformers' Trainer decides).
    pub decay: bool,
}

impl Param {
    /// A parameter with zero moments, its value read from `value`.
    pub fn new(name: String, value: Tensor<2>) -> Param {
        let shape = value.dims();
        let len = shape[0] * shape[1];
        Param {
            m: written_zeros(len),
            v: written_zeros(len),
            decay: !is_norm_weight(&name),
            name,
            shape,
            value: crate::device::to_f32(value),
        }
    }

    /// The value as an f32 tensor on `device`.
    pub fn tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(self.value.clone(), self.shape), device)
    }
}

/// transformers' Trainer excludes biases and normalisation weights from weight decay.
pub fn is_norm_weight(name: &str) -> bool {
    name.contains("norm") || name.ends_with("bias")
}

/// A gradient on the host, row-major f32.
pub type HostGrad = Vec<f32>;

/// AdamW over a set of parameters.
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Updates applied so far.
    pub step: u64,
}

/// Per-update scalars, in f32 as PyTorch applies them to f32 tensors.
#[derive(Clone, Copy)]
struct Scalars {
    decay: f32,
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    bias2_sqrt: f32,
    eps: f32,
    step_size: f32,
    grad_scale: f32,
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> AdamW {
        AdamW { config, step: 0 }
    }

    /// Applies one update with learning rate `lr` to every parameter; `grads[i]` belongs to
    /// `params[i]` and is multiplied by `grad_scale` first (the clipping coefficient).
    pub fn update(&mut self, params: &mut [Param], grads: Vec<HostGrad>, lr: f64, grad_scale: f64) {
        self.step += 1;
        let (b1, b2) = self.config.betas;
        let scalars = |decay: bool| Scalars {
            decay: if decay {
                (1.0 - lr * self.config.weight_decay) as f32
            } else {
                1.0
            },
            one_minus_b1: (1.0 - b1) as f32,
            b2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
            bias2_sqrt: (1.0 - b2.powi(self.step as i32)).sqrt() as f32,
            eps: self.config.eps as f32,
            step_size: (lr / (1.0 - b1.powi(self.step as i32))) as f32,
            grad_scale: grad_scale as f32,
        };
        for (p, g) in params.iter_mut().zip(grads) {
            let s = scalars(p.decay);
            const CHUNK: usize = 1 << 14;
            p.value
                .par_chunks_mut(CHUNK)
                .zip(p.m.par_chunks_mut(CHUNK))
                .zip(p.v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((w, m), v), g)| update_chunk(w, m, v, g, s));
        }
    }
}

fn update_chunk(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: Scalars) {
    for i in 0..w.len() {
        let g = g[i] * s.grad_scale;
        let p = w[i] * s.decay;
        m[i] += s.one_minus_b1 * (g - m[i]);
        v[i] = v[i] * s.b2 + s.one_minus_b2 * g * g;
        let denom = v[i].sqrt() / s.bias2_sqrt + s.eps;
        w[i] = p - s.step_size * (m[i] / denom);
    }
}

/// The L2 norm of all gradients together.
pub fn global_norm(grads: &[HostGrad]) -> f64 {
    grads
        .par_iter()
        .map(|g| g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
        .sum::<f64>()
        .sqrt()
}

/// The clipping coefficient of `clip_grad_norm_`: `max_norm / (norm + 1e-6)`, capped at 1
/// (1 without a threshold).
pub fn clip_coefficient(norm: f64, max_norm: Option<f64>) -> f64 {
    max_norm.map_or(1.0, |max| (max / (norm + 1e-6)).min(1.0))
}
