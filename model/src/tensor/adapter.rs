//! One LoRA adapter on one linear layer (Hu et al. 2021, as PEFT computes it): the update
//! `(α/r) · dropout(x) Aᵀ Bᵀ` and its merge `(α/r) · B A`. Which layers get one, and the PEFT
//! files, are the `lora` module's.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::rng::SplitMix64;

/// One adapter.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    /// `[r, in]`.
    pub a: Tensor<2>,
    /// `[out, r]`.
    pub b: Tensor<2>,
    /// `alpha / r`.
    pub scale: f64,
    /// Dropout probability.
    pub dropout: f64,
    /// Seed of this forward's dropout mask; `None` turns dropout off (evaluation, scoring).
    pub dropout_key: Option<u64>,
}

impl LoraAdapter {
    /// `scale · dropout(x) Aᵀ Bᵀ` for `x` `[n, in]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = match self.dropout_key {
            Some(key) if self.dropout > 0.0 => x.clone() * dropout_mask(&x, self.dropout, key),
            _ => x,
        };
        x.matmul(self.a.clone().transpose())
            .matmul(self.b.clone().transpose())
            .mul_scalar(self.scale)
    }

    /// `scale · B A`, the `[out, in]` update a merge adds to the weight.
    pub fn delta(&self) -> Tensor<2> {
        self.b.clone().matmul(self.a.clone()).mul_scalar(self.scale)
    }
}

/// Inverted dropout: each element kept with probability `1 − p` and scaled by `1 / (1 − p)`;
/// the mask is a function of `key` alone, so a resumed run draws the same masks.
fn dropout_mask(x: &Tensor<2>, p: f64, key: u64) -> Tensor<2> {
    let shape = x.dims();
    let mut rng = SplitMix64::new(key);
    let keep = (1.0 / (1.0 - p)) as f32;
    let values: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| if rng.next_f64() > p { keep } else { 0.0 })
        .collect();
    Tensor::<2>::from_data(TensorData::new(values, shape), (&x.device(), x.dtype()))
}
