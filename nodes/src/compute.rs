//! What node types that do tensor work share: device and dtype params, and running blocking
//! work off the async runtime with cooperative cancellation.

use flow_engine::node::{NodeContext, NodeError};
use flow_model::{DType, Device, ModelError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use tokio_util::sync::CancellationToken;

/// Where tensor work runs: `cpu`, `auto` (CUDA when built with it and present, else CPU) or `cuda:N`.
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
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    format!("invalid device `{other}`: expected `cpu`, `auto` or `cuda:N`")
                }),
        }
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        match d {
            DeviceSpec::Cpu => "cpu".into(),
            DeviceSpec::Auto => "auto".into(),
            DeviceSpec::Cuda(n) => format!("cuda:{n}"),
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
            "pattern": "^(cpu|auto|cuda(:[0-9]+)?)$",
            "description": "`cpu`, `auto` or `cuda:N`"
        })
    }
}

impl DeviceSpec {
    /// The burn device: `auto` is CUDA device 0 when this build has CUDA and the machine a
    /// usable GPU, else the CPU; CUDA without the `cuda` feature is an error naming the feature.
    pub fn resolve(&self) -> Result<Device, NodeError> {
        match self {
            DeviceSpec::Cpu => Ok(flow_model::cpu()),
            DeviceSpec::Auto => Ok(cuda_device(0).unwrap_or_else(|_| flow_model::cpu())),
            DeviceSpec::Cuda(n) => cuda_device(*n),
        }
    }
}

/// CUDA device `index`, checked.
#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<Device, NodeError> {
    flow_model::cuda(index).map_err(model_error)
}

/// Without the `cuda` feature: an error that says how to get it.
#[cfg(not(feature = "cuda"))]
fn cuda_device(index: usize) -> Result<Device, NodeError> {
    Err(NodeError::new(format!(
        "device `cuda:{index}` needs flow built with the `cuda` feature (cargo build --release --features cuda); use `device: cpu` here"
    )))
}

impl DeviceSpec {}

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
