//! New models on the tensor path: a deterministic random initialisation (as transformers' `_init_weights`:
//! normal(0, `init_std`) for embeddings and linear layers, ones for norms), the same on every
//! machine for the same seed.

use burn::prelude::*;
use burn::tensor::TensorData;

use super::mistral::Mistral;
use crate::arch::MistralConfig;
use crate::rng::SplitMix64;

impl Mistral {
    /// A freshly initialised model: norms one, everything else normal(0, `std`), seeded.
    pub fn random(config: &MistralConfig, seed: u64, std: f64, device: &Device) -> Mistral {
        let mut rng = SplitMix64::new(seed);
        Mistral::from_fn(config, |spec| {
            let count = spec.shape[0] * spec.shape[1];
            let values: Vec<f32> = if spec.name.ends_with("norm.weight") {
                vec![1.0; count]
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
