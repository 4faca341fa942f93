//! What node types that do tensor work share: device and dtype params, and running blocking
//! work off the async runtime with cooperative cancellation.

use flow_engine::node::{NodeContext, NodeError, ParamError};
use flow_model::{DType, Device, ModelError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use tokio_util::sync::CancellationToken;

/// Where tensor work runs: `cpu`, `cuda:N` (NVIDIA GPU N, the `cuda` feature), `wgpu` (the
/// default Vulkan or Metal adapter, software ones included, the `wgpu` feature) or `auto` (CUDA
/// device 0, then a hardware GPU through wgpu, then the CPU: the first this build has and the
/// machine can run).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The CPU (burn's Flex backend).
    #[default]
    Cpu,
    /// The best device available.
    Auto,
    /// CUDA device N.
    Cuda(usize),
    /// The default wgpu adapter (Vulkan, Metal).
    Wgpu,
}

/// What a device param accepts, for errors and the schema.
const DEVICE_FORMS: &str = "`cpu`, `auto`, `cuda:N` or `wgpu`";

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "wgpu" => Ok(DeviceSpec::Wgpu),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("invalid device `{other}`: expected {DEVICE_FORMS}")),
        }
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        match d {
            DeviceSpec::Cpu => "cpu".into(),
            DeviceSpec::Auto => "auto".into(),
            DeviceSpec::Cuda(n) => format!("cuda:{n}"),
            DeviceSpec::Wgpu => "wgpu".into(),
        }
    }
}

impl JsonSchema for DeviceSpec {
    fn schema_name() -> Cow<'static, str> {
        "DeviceSpec".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(cpu|auto|wgpu|cuda(:[0-9]+)?)$",
            "description": DEVICE_FORMS
        })
    }
}

impl DeviceSpec {
    /// The burn device for work in `precision`, checked by a probe kernel: `auto` is the first
    /// of CUDA device 0, a hardware GPU through wgpu (f32 only) and the CPU that this build has
    /// and the machine runs; a device this build lacks is an error naming the cargo feature, and
    /// bf16 on wgpu an error (WGSL has no bf16: cubecl's shader compiler would panic mid-run).
    pub fn resolve(&self, precision: Precision) -> Result<Device, NodeError> {
        match self {
            DeviceSpec::Cpu => Ok(flow_model::cpu()),
            DeviceSpec::Auto => Ok(cuda_device(0)
                .or_else(|e| match precision {
                    Precision::F32 => wgpu_hardware(),
                    Precision::Bf16 => Err(e),
                })
                .unwrap_or_else(|_| flow_model::cpu())),
            DeviceSpec::Cuda(n) => cuda_device(*n),
            DeviceSpec::Wgpu if precision == Precision::Bf16 => Err(NodeError::new(WGPU_BF16)),
            DeviceSpec::Wgpu => wgpu_device(),
        }
    }
}

/// A `device`/`dtype` pair no device can compute (bf16 on wgpu: WGSL has no bf16 type), refused
/// when the params are checked, before anything runs (`flow plan`/`validate` say so too).
pub fn check_device_dtype(device: &DeviceSpec, precision: Precision) -> Result<(), ParamError> {
    if *device == DeviceSpec::Wgpu && precision == Precision::Bf16 {
        return Err(ParamError::at("dtype", WGPU_BF16));
    }
    Ok(())
}

/// Why bf16 is refused on wgpu.
const WGPU_BF16: &str = "dtype bf16 is not supported on device `wgpu`: WGSL has no bf16 type; use `dtype: f32` there, or bf16 on `cuda:N` or the CPU";

/// CUDA device `index`, checked.
#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<Device, NodeError> {
    flow_model::cuda(index).map_err(model_error)
}

/// Without the `cuda` feature: an error that says how to get it.
#[cfg(not(feature = "cuda"))]
fn cuda_device(index: usize) -> Result<Device, NodeError> {
    Err(missing_feature(&format!("cuda:{index}"), "cuda"))
}

/// The wgpu adapter, checked.
#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device, NodeError> {
    flow_model::wgpu().map_err(model_error)
}

/// Without the `wgpu` feature: an error that says how to get it.
#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device, NodeError> {
    Err(missing_feature("wgpu", "wgpu"))
}

/// A hardware GPU through wgpu (for `auto`: never a software adapter).
#[cfg(feature = "wgpu")]
fn wgpu_hardware() -> Result<Device, NodeError> {
    flow_model::wgpu_hardware().map_err(model_error)
}

/// Without the `wgpu` feature, `auto` has no wgpu candidate.
#[cfg(not(feature = "wgpu"))]
fn wgpu_hardware() -> Result<Device, NodeError> {
    wgpu_device()
}

/// The error for a device this build lacks.
#[cfg(not(all(feature = "cuda", feature = "wgpu")))]
fn missing_feature(device: &str, feature: &str) -> NodeError {
    NodeError::new(format!(
        "device `{device}` needs flow built with the `{feature}` feature (cargo build --release --features {feature}); use `device: cpu` here"
    ))
}

/// Floating-point precision of tensor work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats everywhere.
    #[default]
    F32,
    /// bf16 weights and activations with f32 master weights, optimizer state and log-softmax
    /// (on the CPU slower than f32: there it shows what a GPU run will compute).
    Bf16,
}

impl Precision {
    /// The dtype tensor work computes in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// A model-core error as a node error.
pub fn model_error(e: ModelError) -> NodeError {
    NodeError::new(e.to_string())
}

/// Runs `work` on a blocking thread; `work` polls the token it gets and stops when it fires
/// (the run was cancelled, the attempt timed out).
pub async fn run_blocking<T, F>(ctx: &NodeContext, work: F) -> Result<T, NodeError>
where
    T: Send + 'static,
    F: FnOnce(CancellationToken) -> Result<T, NodeError> + Send + 'static,
{
    let token = ctx.cancellation().clone();
    tokio::task::spawn_blocking(move || work(token))
        .await
        .map_err(|e| NodeError::new(format!("tensor work panicked: {e}")))?
}

/// Fails with "cancelled" when the token fired.
pub fn check_cancelled(token: &CancellationToken) -> Result<(), NodeError> {
    if token.is_cancelled() {
        Err(NodeError::new("cancelled"))
    } else {
        Ok(())
    }
}
