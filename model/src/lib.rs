#![warn(missing_docs)]
//! flow's model core: a Mistral on burn that reproduces transformers' log-probs, checkpoint and
//! tokenizer loading, TRL-exact DPO tokenization and batched scoring. Kept out of the engine's
//! build: only node types that do tensor work depend on it.

pub mod bench;
pub mod config;
pub mod dpo;
pub mod error;
pub mod generate;
pub mod init;
pub mod lora;
pub mod mistral;
pub mod optim;
pub mod schedule;
pub mod scoring;
pub mod tokenize;
pub mod tokenizer_train;
pub mod train;
pub mod weights;

pub use burn::prelude::{Device, Int, Tensor};
pub use config::MistralConfig;
pub use error::{ModelError, Result};
pub use mistral::Mistral;

/// The CPU device (burn's Flex backend).
pub fn cpu() -> Device {
    Device::flex()
}
