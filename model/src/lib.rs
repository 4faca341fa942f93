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
pub use burn::tensor::DType;
pub use config::MistralConfig;
pub use error::{ModelError, Result};
pub use mistral::Mistral;

/// The CPU device (burn's Flex backend).
pub fn cpu() -> Device {
    Device::flex()
}

/// Whether this build can use CUDA devices (the `cuda` cargo feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// CUDA device `index`, checked by running one tiny kernel on it: a machine without a driver
/// or without that GPU gets an error here rather than a panic in the middle of the work.
/// burn's CUDA backend loads the driver and compiles kernels (NVRTC) at run time, so this
/// builds on machines with no CUDA toolkit.
#[cfg(feature = "cuda")]
pub fn cuda(index: usize) -> Result<Device> {
    let device = Device::cuda(index);
    let probe = device.clone();
    let checked = quietly(move || Tensor::<1>::ones([4], &probe).sum().into_data());
    match checked {
        Ok(_) => Ok(device),
        Err(why) => Err(ModelError::Device(format!(
            "CUDA device {index} is not usable: {why}"
        ))),
    }
}

/// Runs `work`, turning a panic into its message without printing it.
#[cfg(feature = "cuda")]
fn quietly<T>(work: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(work);
    std::panic::set_hook(hook);
    outcome.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the CUDA runtime failed to start".to_string())
    })
}
