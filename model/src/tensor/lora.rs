//! LoRA (Hu et al. 2021) as PEFT implements it: on a target linear layer `W` (`[out, in]`),
//! `y = x Wᵀ + (α/r) · dropout(x) Aᵀ Bᵀ` with `A` `[r, in]` (Kaiming-uniform) and `B` `[out, r]`
//! (zeros, so a fresh adapter leaves the model unchanged). Adapters are saved in PEFT's format:
//! `adapter_config.json` and `adapter_model.safetensors` with names
//! `base_model.model.<module>.lora_A.weight`, which `PeftModel.from_pretrained` loads unchanged.

use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::checkpoint::safetensors::{Checkpoint, NamedTensor, SaveDtype};
use crate::error::{ModelError, Result, io_at};
use crate::rng::SplitMix64;
use crate::tensor::model::Model;

pub use super::adapter::LoraAdapter;

/// The projections LoRA can target in a Mistral.
pub const TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Adapter hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank.
    pub r: usize,
    /// Scale numerator: the update is multiplied by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input during training.
    pub dropout: f64,
    /// Projection names to adapt (see [`TARGETS`]).
    pub targets: Vec<String>,
    /// rsLoRA (Kalajdzievski 2023): scale by `alpha / √r` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
}

impl LoraConfig {
    /// Checks rank, dropout and targets against the Mistral's projections.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.r == 0 {
            return Err("lora.r must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!(
                "lora.dropout must be in [0, 1), got {}",
                self.dropout
            ));
        }
        if self.targets.is_empty() {
            return Err("lora.targets must name at least one projection".into());
        }
        match self.targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
            Some(bad) => Err(format!(
                "lora target `{bad}` is not a module of a Mistral model; targets: {}",
                TARGETS.join(", ")
            )),
            None => Ok(()),
        }
    }

    /// The factor the update is multiplied by: `alpha / r`, or `alpha / √r` with rsLoRA (as
    /// PEFT's `LoraLayer.update_layer`).
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    fn targets_module(&self, module: &str) -> bool {
        let leaf = module.rsplit('.').next().unwrap_or(module);
        self.targets.iter().any(|t| t == leaf)
    }
}

/// Attaches fresh adapters (A Kaiming-uniform as PEFT draws it, B zero) to the targeted layers.
pub fn attach(model: &mut Model, config: &LoraConfig, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let dtype = model.embed_tokens.dtype();
    for (module, linear) in model.linears_mut() {
        if !config.targets_module(&module) {
            continue;
        }
        let [out, inp] = linear.weight.dims();
        let device = linear.weight.device();
        // kaiming_uniform_(a=√5): bound = 1/√fan_in.
        let bound = 1.0 / (inp as f64).sqrt();
        let a: Vec<f32> = (0..config.r * inp)
            .map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32)
            .collect();
        linear.lora = Some(LoraAdapter {
            a: Tensor::<2>::from_data(TensorData::new(a, [config.r, inp]), (&device, dtype)),
            b: Tensor::<2>::zeros([out, config.r], (&device, dtype)),
            scale: config.scale(),
            dropout: config.dropout,
            dropout_key: None,
        });
    }
}

/// Where an attached adapter sits and how it scales: what the host path needs of it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdapterPlace {
    /// Position of the adapted projection's weight in [`crate::arch::weight_specs`] order.
    pub position: usize,
    /// Rank.
    pub rank: usize,
    /// The update's factor.
    pub scale: f64,
    /// Dropout probability of the adapter's input.
    pub dropout: f64,
}

/// Every attached adapter's place, in [`adapter_tensors`] order.
pub fn adapter_places(model: &Model) -> Vec<AdapterPlace> {
    let specs = crate::arch::weight_specs(&model.config);
    let mut model = model.clone();
    let mut places = Vec::new();
    for (module, linear) in model.linears_mut() {
        if let Some(lora) = &linear.lora {
            let name = format!("{module}.weight");
            places.push(AdapterPlace {
                position: specs
                    .iter()
                    .position(|s| s.name == name)
                    .expect("every projection is a weight"),
                rank: lora.a.dims()[0],
                scale: lora.scale,
                dropout: lora.dropout,
            });
        }
    }
    places
}

/// Every adapter tensor with its PEFT name, A before B, layers in checkpoint order.
pub fn adapter_tensors(model: &Model) -> Vec<(String, Tensor<2>)> {
    let mut model = model.clone();
    let mut all = Vec::new();
    for (module, linear) in model.linears_mut() {
        if let Some(lora) = &linear.lora {
            all.push((peft_name(&module, "lora_A"), lora.a.clone()));
            all.push((peft_name(&module, "lora_B"), lora.b.clone()));
        }
    }
    all
}

fn peft_name(module: &str, matrix: &str) -> String {
    format!("base_model.model.{module}.{matrix}.weight")
}

/// Replaces the adapter tensors, in [`adapter_tensors`] order.
pub fn set_adapter_tensors(model: &mut Model, mut tensors: impl Iterator<Item = Tensor<2>>) {
    for (_, linear) in model.linears_mut() {
        if let Some(lora) = &mut linear.lora {
            lora.a = tensors.next().expect("an A per adapter");
            lora.b = tensors.next().expect("a B per adapter");
        }
    }
}

/// Sets (or clears) the dropout key of every adapter: adapter `i` gets `key + i`.
pub fn set_dropout_key(model: &mut Model, key: Option<u64>) {
    for (i, (_, linear)) in model.linears_mut().into_iter().enumerate() {
        if let Some(lora) = &mut linear.lora {
            lora.dropout_key = key.map(|k| k.wrapping_add(i as u64));
        }
    }
}

/// The base model alone (adapters off): the DPO reference of a LoRA run.
pub fn without_adapters(model: &Model) -> Model {
    strip_adapters(model.clone())
}

/// `model` with its adapters dropped (the owned form of [`without_adapters`]).
pub fn strip_adapters(mut model: Model) -> Model {
    for (_, linear) in model.linears_mut() {
        linear.lora = None;
    }
    model
}

/// The model with every adapter merged into its weight (`W + (α/r) B A`) and removed.
pub fn merged(model: &Model) -> Model {
    let mut merged = model.clone();
    for (_, linear) in merged.linears_mut() {
        if let Some(lora) = linear.lora.take() {
            linear.weight = linear.weight.clone() + lora.delta();
        }
    }
    merged
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` as PEFT does.
pub fn save_peft(model: &Model, config: &LoraConfig, base_model: &str, dir: &Path) -> Result<()> {
    let adapter_config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": config.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "use_rslora": config.use_rslora,
        "use_dora": false,
        "layers_to_transform": null,
        "revision": null,
    });
    let path = dir.join("adapter_config.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&adapter_config).expect("JSON"),
    )
    .map_err(io_at(&path))?;
    let tensors = adapter_tensors(model)
        .into_iter()
        .map(|(name, t)| NamedTensor::from_tensor(name, t))
        .collect::<Vec<_>>();
    crate::checkpoint::safetensors::save_safetensors_file(
        &dir.join("adapter_model.safetensors"),
        &tensors,
        SaveDtype::F32,
    )
}

/// Loads a PEFT adapter directory onto `model` (replacing any adapters); returns its config.
pub fn load_peft(model: &mut Model, dir: &Path) -> Result<LoraConfig> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(io_at(&path))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
        path: path.clone(),
        message: format!("not JSON: {e}"),
    })?;
    let invalid = |message: &str| ModelError::Invalid {
        path: path.clone(),
        message: message.to_string(),
    };
    let config = LoraConfig {
        r: json["r"]
            .as_u64()
            .ok_or_else(|| invalid("`r` must be a positive integer"))? as usize,
        alpha: json["lora_alpha"]
            .as_f64()
            .ok_or_else(|| invalid("`lora_alpha` must be a number"))?,
        dropout: json["lora_dropout"].as_f64().unwrap_or(0.0),
        targets: serde_json::from_value(json["target_modules"].clone())
            .map_err(|_| invalid("`target_modules` must be a list of module names"))?,
        use_rslora: json["use_rslora"].as_bool().unwrap_or(false),
    };
    config.check().map_err(|m| invalid(&m))?;
    attach(model, &config, 0);
    let checkpoint = Checkpoint::open_file(&dir.join("adapter_model.safetensors"))?;
    let shapes: Vec<(String, [usize; 2])> = adapter_tensors(model)
        .into_iter()
        .map(|(name, t)| (name, t.dims()))
        .collect();
    let device = model.embed_tokens.device();
    let tensors = shapes
        .into_iter()
        .map(|(name, shape)| {
            let values = checkpoint.read_f32(&name, &shape)?;
            Ok(Tensor::<2>::from_data(
                TensorData::new(values, shape),
                &device,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    set_adapter_tensors(model, tensors.into_iter());
    Ok(config)
}
