//! New models on the tensor path: a deterministic random initialisation (as transformers' `_init_weights`:
//! normal(0, `init_std`) for embeddings and linear layers, ones for norms), the same on every
//! machine for the same seed.

use burn::prelude::*;
use burn::tensor::TensorData;

use super::model::Model;
use crate::arch::ModelConfig;
use crate::rng::SplitMix64;

impl Model {
    /// A freshly initialised model: norms the identity (weight one, or zero where the family
    /// scales by `1 + w`), biases zero, everything else normal(0, `std`), seeded.
    pub fn random(config: &ModelConfig, seed: u64, std: f64, device: &Device) -> Model {
        let mut rng = SplitMix64::new(seed);
        let norm_init = if config.traits().norm_unit_offset {
            0.0
        } else {
            1.0
        };
        Model::from_fn(config, |spec| {
            let count = spec.shape[0] * spec.shape[1];
            let values: Vec<f32> = if spec.is_norm() {
                vec![norm_init; count]
            } else if spec.name.ends_with(".bias") {
                vec![0.0; count]
            } else {
                (0..count)
                    .map(|_| (rng.next_normal() * std) as f32)
                    .collect()
            };
            Ok(Tensor::<2>::from_data(
                TensorData::new(values, spec.shape),
                device,
            ))
        })
        .expect("random init cannot fail")
    }
}
