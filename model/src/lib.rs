#![warn(missing_docs)]
//! flow's model core: decoder models that reproduce transformers' log-probs, TRL-exact DPO
//! tokenization and training, checkpoint and tokenizer loading. Kept out of the engine's build:
//! only node types that do tensor work depend on it.
//!
//! Rooms, lowest first (a room imports only rooms above it in this list):
//! - [`error`], [`device`], [`rng`], [`sequence`]: errors, devices and host values, the seeded
//!   generator, the scored sequence.
//! - [`arch`]: what a model is — config, checkpoint names and shapes, RoPE tables — read by
//!   both execution paths.
//! - [`checkpoint`]: safetensors files (single or sharded) in and out.
//! - [`host`]: the host path — the model over host slices with a hand-written backward pass
//!   (full fine-tuning and reference scoring on the CPU in f32) and its vectorised loops.
//! - [`tensor`]: the tensor path on burn — the model as modules, LoRA adapters in PEFT's
//!   layout, initialisation — for autodiff, bf16, GPUs and KV-cached decoding.
//! - [`scoring`]: log-probs of sequences on either path, and the reference scorer that picks.
//! - [`generate`]: KV-cached decoding.
//! - [`tokenize`]: TRL-exact preference-pair tokenization and BPE training.
//! - [`train`]: the training loop (batches, step, evaluation, checkpoints), preference losses,
//!   AdamW and schedules.
//! - [`bench`]: `flow bench logprobs` and `flow bench dpo-step`.

pub mod arch;
pub mod bench;
pub mod checkpoint;
pub mod device;
pub mod error;
pub mod generate;
pub mod host;
pub mod rng;
pub mod scoring;
pub mod sequence;
pub mod tensor;
pub mod tokenize;
pub mod train;

#[cfg(test)]
mod tests;

pub use arch::ModelConfig;
pub use burn::prelude::{Device, Int, Tensor};
pub use burn::tensor::DType;
#[cfg(feature = "cuda")]
pub use device::cuda;
pub use device::{CUDA_BUILT, WGPU_BUILT, checked_device, cpu, is_host};
#[cfg(feature = "wgpu")]
pub use device::{wgpu, wgpu_hardware};
pub use error::{ModelError, Result};
pub use tensor::model::Model;
