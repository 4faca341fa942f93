//! Devices and values between them and the host: the CPU, CUDA GPUs and wgpu devices (Vulkan,
//! Metal) checked by a probe kernel before use, and tensors read back as plain `f32`/`f64`
//! vectors.

use burn::prelude::*;
use burn::tensor::DType;

use crate::error::{ModelError, Result};

/// The CPU device (burn's Flex backend).
pub fn cpu() -> Device {
    Device::flex()
}

/// Whether `device` is the CPU, where the host paths (fused loops over host slices) run; on
/// any other device the work stays there and only results come back.
pub fn is_host(device: &Device) -> bool {
    *device == cpu()
}

/// Whether this build can use CUDA devices (the `cuda` cargo feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Whether this build can use wgpu devices (the `wgpu` cargo feature).
pub const WGPU_BUILT: bool = cfg!(feature = "wgpu");

/// CUDA device `index`, checked with [`checked_device`]. burn's CUDA backend loads the driver
/// and compiles kernels (NVRTC) at run time, so no CUDA toolkit is needed to build it.
#[cfg(feature = "cuda")]
pub fn cuda(index: usize) -> Result<Device> {
    checked_device(Device::cuda(index), &format!("CUDA device {index}"))
}

/// The default wgpu device (burn's wgpu backend: Vulkan on Linux and Windows, Metal on macOS;
/// `CUBECL_WGPU_DEFAULT_DEVICE` picks another adapter), checked with [`checked_device`].
#[cfg(feature = "wgpu")]
pub fn wgpu() -> Result<Device> {
    checked_device(
        Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        "the wgpu device (Vulkan or Metal)",
    )
}

/// A hardware GPU through wgpu, for `auto`: the first discrete GPU, else the first integrated
/// one (Apple silicon), each checked; never a software adapter (lavapipe, on the CPU, is slower
/// than the CPU path itself), which only an explicit [`wgpu`] uses.
#[cfg(feature = "wgpu")]
pub fn wgpu_hardware() -> Result<Device> {
    use burn::tensor::DeviceKind;
    checked_device(
        Device::wgpu(DeviceKind::DiscreteGpu(0)),
        "a discrete GPU (wgpu)",
    )
    .or_else(|_| {
        checked_device(
            Device::wgpu(DeviceKind::IntegratedGpu(0)),
            "an integrated GPU (wgpu)",
        )
    })
}

/// `device` after one tiny kernel ran on it: a machine without a driver or without that GPU
/// gets an error naming `what` here, rather than a panic in the middle of the work.
pub fn checked_device(device: Device, what: &str) -> Result<Device> {
    let probe = device.clone();
    match quietly(move || Tensor::<1>::ones([4], &probe).sum().into_data()) {
        Ok(_) => Ok(device),
        Err(why) => Err(ModelError::Device(format!(
            "{what} is not usable: {}",
            plain_cause(&why)
        ))),
    }
}

/// A runtime's panic message in a user's words where one is known: cudarc's list of the 34
/// library names it tried becomes "the NVIDIA driver (libcuda.so) was not found".
fn plain_cause(why: &str) -> String {
    let missing = |library: &str| why.contains(&format!("dynamically load the \"{library}\""));
    if missing("cuda") {
        "the NVIDIA driver (libcuda.so) was not found".to_string()
    } else if missing("nvrtc") {
        "NVRTC (libnvrtc.so) was not found: add the CUDA toolkit's or the nvidia-cuda-nvrtc wheel's lib directory to LD_LIBRARY_PATH".to_string()
    } else {
        why.lines().next().unwrap_or(why).to_string()
    }
}

/// Runs `work`, turning a panic into its message without printing it. A runtime that fails on
/// its own thread (a CUDA driver that does not load) panics there first and the caller only
/// sees a closed channel: the first message any thread panicked with is the one reported.
fn quietly<T>(work: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let first = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let hook = std::panic::take_hook();
    let seen = first.clone();
    std::panic::set_hook(Box::new(move |info| {
        let mut seen = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.get_or_insert_with(|| panic_message(info.payload()));
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    std::panic::set_hook(hook);
    outcome.map_err(|payload| {
        let first = first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        first.unwrap_or_else(|| panic_message(payload.as_ref()))
    })
}

/// The text a panic carried.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "its runtime failed to start".to_string())
}

/// Reads a tensor back as row-major `f32`s, whatever its float dtype.
pub fn to_f32<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data_dtype(DType::F32)
        .try_into_vec::<f32>()
        .expect("a float tensor converts to f32")
}

/// Reads a tensor back as `f64`s, whatever its float dtype.
pub fn to_f64<const D: usize>(tensor: Tensor<D>) -> Vec<f64> {
    tensor
        .into_data_dtype(DType::F64)
        .try_to_vec::<f64>()
        .expect("a float tensor converts to f64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_device_passes_the_check_and_a_failing_one_is_an_error() {
        assert!(checked_device(cpu(), "the CPU").is_ok());
        let failed = quietly(|| -> u32 { panic!("no driver") }).unwrap_err();
        assert_eq!(failed, "no driver");
        assert_eq!(quietly(|| 7).unwrap(), 7);
    }
}
