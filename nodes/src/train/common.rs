//! What `dpo.train` and `sft.train` share: the params every training node has (declared once in
//! [`training_params!`]), their checks, loading the model and datasets, the metrics log that
//! survives a kill, and writing the trained model.

use flow_engine::node::{NodeContext, NodeError, ParamError};
use flow_model::checkpoint::safetensors::SaveDtype;
use flow_model::tensor::lora::{self, LoraConfig};
use flow_model::tokenize::PreferenceTokenizer;
use flow_model::train::optim::AdamWConfig;
use flow_model::train::schedule::{LrScheduler, warmup_from_ratio};
use flow_model::train::{Example, Objective, Observer, Record, Schedule, TrainConfig, Trainer};
use flow_model::{Model, ModelConfig, ModelError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

use crate::compute::{DeviceSpec, Precision, run_blocking};
use crate::preference::read_pairs;
use crate::tokenization::{LengthParams, Tokenized, tokenize_pairs};
use crate::train::init::copy_tokenizer_files;

/// LoRA settings (PEFT's names where it has one).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraParams {
    /// Rank.
    pub r: usize,
    /// Scale numerator (the update is scaled by `alpha / r`); default `2 r`.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Dropout on the adapter input.
    #[serde(default)]
    pub dropout: f64,
    /// Projections to adapt: any of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    /// rsLoRA: scale the update by `alpha / √r` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
}

fn default_targets() -> Vec<String> {
    ["q_proj", "k_proj", "v_proj", "o_proj"]
        .map(String::from)
        .to_vec()
}

impl LoraParams {
    /// The model core's adapter config.
    pub fn config(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            alpha: self.alpha.unwrap_or(2.0 * self.r as f64),
            dropout: self.dropout,
            targets: self.targets.clone(),
            use_rslora: self.use_rslora,
        }
    }
}

/// What the `model` output holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SaveMode {
    /// The LoRA adapter alone, in PEFT's format.
    Adapter,
    /// The base model with the adapter merged in.
    Merged,
    /// Every weight (merged when training LoRA).
    Full,
}

/// Declares a training node's params struct: the shared params below, then the node's own.
/// The shared ones are reachable through [`TrainingParams::common`].
#[macro_export]
macro_rules! training_params {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Base model directory (config.json, safetensors, tokenizer.json), e.g. `${base.model}`.
            pub model: std::path::PathBuf,
            /// Preference dataset (a directory with `data.jsonl`, or a JSONL file).
            pub dataset: std::path::PathBuf,
            /// Held-out preference dataset for `eval_*` metrics.
            #[serde(default)]
            pub eval_dataset: Option<std::path::PathBuf>,
            /// Peak learning rate.
            #[serde(default = "crate::train::common::default_learning_rate")]
            pub learning_rate: f64,
            /// `constant`, `constant_with_warmup`, `linear`, `cosine` or `cosine_with_restarts` (transformers' multipliers).
            #[serde(default)]
            pub lr_scheduler: flow_model::train::schedule::LrScheduler,
            /// Warm-up steps (or use `warmup_ratio`).
            #[serde(default)]
            pub warmup_steps: Option<usize>,
            /// Warm-up as a fraction of all steps, rounded up.
            #[serde(default)]
            pub warmup_ratio: Option<f64>,
            /// Optimizer steps (or use `epochs`).
            #[serde(default)]
            pub max_steps: Option<usize>,
            /// Passes over the dataset when `max_steps` is unset (default 1).
            #[serde(default)]
            pub epochs: Option<usize>,
            /// Pairs per micro-batch.
            #[serde(default = "crate::train::common::default_batch_size")]
            pub batch_size: usize,
            /// Micro-batches per optimizer step.
            #[serde(default = "crate::train::common::default_one")]
            pub grad_accum: usize,
            /// Clip the global gradient norm to this (null: no clipping).
            #[serde(default = "crate::train::common::default_max_grad_norm")]
            pub max_grad_norm: Option<f64>,
            /// AdamW decoupled weight decay (not applied to norm weights).
            #[serde(default)]
            pub weight_decay: f64,
            /// AdamW β₁, β₂.
            #[serde(default = "crate::train::common::default_adam_betas")]
            pub adam_betas: [f64; 2],
            /// AdamW ε.
            #[serde(default = "crate::train::common::default_adam_eps")]
            pub adam_eps: f64,
            /// Seed of data order, adapter init and dropout: same seed, same data, same result.
            #[serde(default = "crate::train::common::default_seed")]
            pub seed: u64,
            /// Longest prompt + completion in tokens (default: the model's `max_position_embeddings`; larger is an error). Longer sequences are cut as `truncation` says; a pair whose prompt alone fills it is dropped with `keep_start`.
            #[serde(default)]
            pub max_length: Option<usize>,
            /// Longest prompt in tokens (its start kept with `keep_start`, its end with `keep_end`).
            #[serde(default)]
            pub max_prompt_length: Option<usize>,
            /// Longest completion in tokens (its start kept).
            #[serde(default)]
            pub max_completion_length: Option<usize>,
            /// How to cut longer sequences: `keep_start` (cut their end) or `keep_end` (cut their start), as TRL's `truncation_mode`.
            #[serde(default)]
            pub truncation: $crate::tokenization::TruncationMode,
            /// Train LoRA adapters instead of all weights.
            #[serde(default)]
            pub lora: Option<$crate::train::common::LoraParams>,
            /// A PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`) on `model` to continue training, e.g. an SFT adapter into DPO; its rank, alpha, dropout and targets are the run's (do not also give `lora`). The DPO reference is `model` with the adapter off, as TRL's for a new adapter; to make the SFT model the reference, save it `merged` and pass it as `model` with fresh `lora` instead.
            #[serde(default)]
            pub adapter: Option<std::path::PathBuf>,
            /// What the `model` output holds: `adapter`, `merged` or `full` (default: `adapter` with LoRA, else `full`).
            #[serde(default)]
            pub save: Option<$crate::train::common::SaveMode>,
            /// Write a resumable checkpoint every this many steps.
            #[serde(default)]
            pub checkpoint_every: Option<usize>,
            /// Evaluate on `eval_dataset` every this many steps (and always after the last).
            #[serde(default)]
            pub eval_every: Option<usize>,
            /// Device.
            #[serde(default)]
            pub device: $crate::compute::DeviceSpec,
            /// Precision.
            #[serde(default)]
            pub dtype: $crate::compute::Precision,
            /// Recompute activations in the backward pass to save memory.
            #[serde(default)]
            pub gradient_checkpointing: bool,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $crate::train::common::TrainingParams for $name {
            fn common(&self) -> $crate::train::common::Common<'_> {
                $crate::train::common::Common {
                    model: &self.model,
                    dataset: &self.dataset,
                    eval_dataset: self.eval_dataset.as_deref(),
                    learning_rate: self.learning_rate,
                    lr_scheduler: self.lr_scheduler,
                    warmup_steps: self.warmup_steps,
                    warmup_ratio: self.warmup_ratio,
                    max_steps: self.max_steps,
                    epochs: self.epochs,
                    batch_size: self.batch_size,
                    grad_accum: self.grad_accum,
                    max_grad_norm: self.max_grad_norm,
                    weight_decay: self.weight_decay,
                    adam_betas: self.adam_betas,
                    adam_eps: self.adam_eps,
                    seed: self.seed,
                    lengths: $crate::tokenization::LengthParams {
                        max_length: self.max_length,
                        max_prompt_length: self.max_prompt_length,
                        max_completion_length: self.max_completion_length,
                        truncation: self.truncation,
                    },
                    lora: self.lora.as_ref(),
                    adapter: self.adapter.as_deref(),
                    save: self.save,
                    checkpoint_every: self.checkpoint_every,
                    eval_every: self.eval_every,
                    device: &self.device,
                    dtype: self.dtype,
                    gradient_checkpointing: self.gradient_checkpointing,
                }
            }
        }
    };
}

/// The shared params of a training node, borrowed.
#[allow(missing_docs)]
pub struct Common<'a> {
    pub model: &'a Path,
    pub dataset: &'a Path,
    pub eval_dataset: Option<&'a Path>,
    pub learning_rate: f64,
    pub lr_scheduler: LrScheduler,
    pub warmup_steps: Option<usize>,
    pub warmup_ratio: Option<f64>,
    pub max_steps: Option<usize>,
    pub epochs: Option<usize>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_grad_norm: Option<f64>,
    pub weight_decay: f64,
    pub adam_betas: [f64; 2],
    pub adam_eps: f64,
    pub seed: u64,
    pub lengths: LengthParams,
    pub lora: Option<&'a LoraParams>,
    pub adapter: Option<&'a Path>,
    pub save: Option<SaveMode>,
    pub checkpoint_every: Option<usize>,
    pub eval_every: Option<usize>,
    pub device: &'a DeviceSpec,
    pub dtype: Precision,
    pub gradient_checkpointing: bool,
}

/// A params struct declared with [`training_params!`].
pub trait TrainingParams {
    /// The shared params.
    fn common(&self) -> Common<'_>;
}

/// Default `learning_rate` (TRL's DPO default is 1e-6; flow's tiny offline models need more, so
/// workflows set it).
pub fn default_learning_rate() -> f64 {
    1e-6
}
/// Default `batch_size`.
pub fn default_batch_size() -> usize {
    4
}
/// 1.
pub fn default_one() -> usize {
    1
}
/// Default `max_grad_norm` (transformers': 1.0).
pub fn default_max_grad_norm() -> Option<f64> {
    Some(1.0)
}
/// Default `adam_betas`.
pub fn default_adam_betas() -> [f64; 2] {
    [0.9, 0.999]
}
/// Default `adam_eps`.
pub fn default_adam_eps() -> f64 {
    1e-8
}
/// Default `seed` (transformers': 42).
pub fn default_seed() -> u64 {
    42
}

impl Common<'_> {
    /// Range and combination checks that need no files.
    pub fn check(&self) -> Result<(), ParamError> {
        let positive = |key: &str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(ParamError::at(
                    key,
                    format!("{key} must be a positive number, got {value}"),
                ))
            }
        };
        crate::compute::check_device_dtype(self.device, self.dtype)?;
        positive("learning_rate", self.learning_rate)?;
        positive("adam_eps", self.adam_eps)?;
        if let Some(norm) = self.max_grad_norm {
            positive("max_grad_norm", norm)?;
        }
        for (key, value) in [
            ("batch_size", Some(self.batch_size)),
            ("grad_accum", Some(self.grad_accum)),
            ("max_steps", self.max_steps),
            ("epochs", self.epochs),
            ("checkpoint_every", self.checkpoint_every),
            ("eval_every", self.eval_every),
        ] {
            if value == Some(0) {
                return Err(ParamError::at(key, format!("{key} must be at least 1")));
            }
        }
        if self.max_steps.is_some() && self.epochs.is_some() {
            return Err(ParamError::at(
                "epochs",
                "give max_steps or epochs, not both",
            ));
        }
        if self.warmup_steps.is_some() && self.warmup_ratio.is_some() {
            return Err(ParamError::at(
                "warmup_ratio",
                "give warmup_steps or warmup_ratio, not both",
            ));
        }
        if let (Some(warmup), Some(max)) = (self.warmup_steps, self.max_steps)
            && warmup > max
        {
            return Err(ParamError::at(
                "warmup_steps",
                format!("warmup_steps ({warmup}) exceeds max_steps ({max})"),
            ));
        }
        if let Some(ratio) = self.warmup_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(ParamError::at(
                "warmup_ratio",
                format!("warmup_ratio must be in [0, 1], got {ratio}"),
            ));
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            return Err(ParamError::at(
                "weight_decay",
                format!("weight_decay must be in [0, 1), got {}", self.weight_decay),
            ));
        }
        if self.adam_betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(ParamError::at(
                "adam_betas",
                "adam_betas must both be in [0, 1)",
            ));
        }
        self.lengths.check()?;
        if let Some(lora) = self.lora {
            lora.config()
                .check()
                .map_err(|m| ParamError::at("lora", m))?;
        }
        if self.lora.is_some() && self.adapter.is_some() {
            return Err(ParamError::at(
                "adapter",
                "give `lora` (fresh adapters) or `adapter` (continue a PEFT adapter), not both",
            ));
        }
        if self.lora.is_none()
            && self.adapter.is_none()
            && matches!(self.save, Some(SaveMode::Adapter | SaveMode::Merged))
        {
            return Err(ParamError::at(
                "save",
                "save `adapter` and `merged` need `lora`",
            ));
        }
        Ok(())
    }

    /// The model core's training config for a dataset of `examples` pairs.
    pub fn train_config(&self, examples: usize) -> Result<TrainConfig, NodeError> {
        let mut config = TrainConfig {
            learning_rate: self.learning_rate,
            lr_scheduler: self.lr_scheduler,
            warmup_steps: 0,
            max_steps: self.max_steps,
            epochs: self.epochs.unwrap_or(1),
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_grad_norm: self.max_grad_norm,
            adam: AdamWConfig {
                betas: (self.adam_betas[0], self.adam_betas[1]),
                eps: self.adam_eps,
                weight_decay: self.weight_decay,
            },
            seed: self.seed,
            lora: self.lora.map(LoraParams::config),
            gradient_checkpointing: self.gradient_checkpointing,
            compute_dtype: self.dtype.compute_dtype(),
            autodiff: false,
        };
        let total = config.total_steps(examples);
        config.warmup_steps = match (self.warmup_steps, self.warmup_ratio) {
            (Some(steps), _) => steps,
            (None, Some(ratio)) => warmup_from_ratio(ratio, total),
            (None, None) => 0,
        };
        if config.warmup_steps > total {
            return Err(NodeError::new(format!(
                "warmup_steps ({}) exceeds the run's {total} steps",
                config.warmup_steps
            )));
        }
        Ok(config)
    }

    /// Tokenizes a dataset as TRL does and fits it to the length limits (`max_length`
    /// defaulting to `model`'s context); dropped rows come back with their reasons.
    pub fn examples(
        &self,
        tokenizer: &PreferenceTokenizer,
        model: &ModelConfig,
        dataset: &Path,
    ) -> Result<(Vec<Example>, Tokenized), NodeError> {
        let lengths = self.lengths.resolve(model)?;
        let mut tokenized = tokenize_pairs(tokenizer, read_pairs(dataset)?, &lengths);
        let examples = std::mem::take(&mut tokenized.kept)
            .into_iter()
            .map(|(id, pair)| Example {
                id,
                pair,
                reference: None,
            })
            .collect();
        Ok((examples, tokenized))
    }

    /// What to save: the explicit `save`, else the adapter for LoRA runs and all weights otherwise.
    pub fn save_mode(&self) -> SaveMode {
        self.save
            .unwrap_or(if self.lora.is_some() || self.adapter.is_some() {
                SaveMode::Adapter
            } else {
                SaveMode::Full
            })
    }
}

/// The metrics log of a run: `metrics.jsonl` in the node's resume directory, appended and synced
/// line by line, cut back to the checkpoint's step when a killed run resumes; progress goes to
/// the node's log and progress bar.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    ctx: NodeContext,
    token: CancellationToken,
    total: usize,
}

impl MetricsLog {
    /// Opens the log, keeping only records up to `resumed_step`.
    pub fn open(
        ctx: &NodeContext,
        token: &CancellationToken,
        resumed_step: usize,
        total: usize,
    ) -> Result<MetricsLog, NodeError> {
        let path = ctx.resume_dir.join("metrics.jsonl");
        let kept: String = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|step| step as usize <= resumed_step)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        std::fs::create_dir_all(&ctx.resume_dir)?;
        std::fs::write(&path, kept)?;
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        Ok(MetricsLog {
            path,
            file,
            ctx: ctx.clone(),
            token: token.clone(),
            total,
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Observer for MetricsLog {
    fn record(&mut self, record: &Record) -> flow_model::Result<()> {
        let line = serde_json::to_string(record).expect("JSON");
        self.file
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(flow_model::error::io_at(&self.path))?;
        let step = record.get("step").unwrap_or(0.0) as u64;
        self.ctx.progress(step, self.total as u64);
        self.ctx.log().line(&line);
        Ok(())
    }

    fn checkpointed(&mut self, step: usize) -> flow_model::Result<()> {
        self.ctx
            .log()
            .line(&format!("checkpoint written at step {step}"));
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// A model-core error during training as a node error.
pub fn training_error(e: ModelError) -> NodeError {
    NodeError::new(e.to_string())
}

/// Writes the trained policy into `out` as `mode` says, with the base's tokenizer and generation files.
pub fn save_trained(
    policy: &Model,
    lora: Option<&LoraConfig>,
    mode: SaveMode,
    base_dir: &Path,
    out: &Path,
) -> Result<(), NodeError> {
    let dtype = SaveDtype::parse(&policy.config.dtype).unwrap_or(SaveDtype::F32);
    match (mode, lora) {
        (SaveMode::Adapter, Some(config)) => {
            lora::save_peft(policy, config, &base_dir.display().to_string(), out)
        }
        _ => lora::merged(policy).save(out, dtype),
    }
    .map_err(training_error)?;
    copy_tokenizer_files(base_dir, out)?;
    let generation = base_dir.join("generation_config.json");
    if generation.is_file() {
        std::fs::copy(&generation, out.join("generation_config.json"))?;
    }
    Ok(())
}

/// Runs a training node: tokenizes the datasets, lets `objective` attach what it needs (reference
/// log-probs) and name the objective, resumes from the last checkpoint of an interrupted attempt,
/// trains, and writes the `model` and `metrics` outputs.
pub async fn run_training<P, F>(ctx: NodeContext, params: P, objective: F) -> Result<(), NodeError>
where
    P: TrainingParams + Send + 'static,
    F: FnOnce(&P, &mut Vec<Example>, &mut Vec<Example>) -> Result<Objective, NodeError>
        + Send
        + 'static,
{
    let device = params.common().device.resolve(params.common().dtype)?;
    let worker = ctx.clone();
    run_blocking(&ctx, move |token| {
        let common = params.common();
        let tokenizer = PreferenceTokenizer::load(common.model).map_err(training_error)?;
        let model_config = ModelConfig::load(common.model).map_err(training_error)?;
        let (mut train, dropped) = common.examples(&tokenizer, &model_config, common.dataset)?;
        dropped.report(worker.log(), "dataset");
        if train.is_empty() {
            dropped.require_some("dataset")?;
        }
        let mut eval = match common.eval_dataset {
            Some(path) => {
                let (eval, dropped) = common.examples(&tokenizer, &model_config, path)?;
                dropped.report(worker.log(), "eval_dataset");
                if eval.is_empty() {
                    worker.log().line(&format!(
                        "eval_dataset: no pair is left to evaluate on ({} dropped): no eval_ metrics will be written",
                        dropped.dropped.len()
                    ));
                }
                eval
            }
            None => {
                if common.eval_every.is_some() {
                    worker.log().line(
                        "eval_every is set but there is no eval_dataset: no eval_ metrics will be written",
                    );
                }
                Vec::new()
            }
        };
        let objective = objective(&params, &mut train, &mut eval)?;
        let mut config = common.train_config(train.len())?;
        let mut model = Model::load(common.model, &device).map_err(training_error)?;
        if let Some(adapter) = common.adapter {
            let loaded = lora::load_peft(&mut model, adapter).map_err(training_error)?;
            worker.log().line(&format!(
                "continuing the PEFT adapter in {} (r {}, alpha {}, targets {})",
                adapter.display(),
                loaded.r,
                loaded.alpha,
                loaded.targets.join(", ")
            ));
            config.lora = Some(loaded);
        }
        let lora = config.lora.clone();
        let mut trainer =
            Trainer::new(model, config, objective, train, eval, device).map_err(training_error)?;
        let checkpoints = worker.resume_dir.join("checkpoints");
        let resumed = trainer.resume(&checkpoints).map_err(training_error)?;
        if let Some(step) = resumed {
            worker
                .log()
                .line(&format!("resuming from the checkpoint of step {step}"));
        }
        let mut log =
            MetricsLog::open(&worker, &token, resumed.unwrap_or(0), trainer.total_steps())?;
        let schedule = Schedule {
            checkpoint_dir: Some(checkpoints),
            checkpoint_every: common.checkpoint_every,
            eval_every: common.eval_every,
        };
        trainer.run(&schedule, &mut log).map_err(training_error)?;
        let model_out = worker.output_dir("model")?;
        save_trained(
            &trainer.policy(),
            lora.as_ref(),
            common.save_mode(),
            common.model,
            model_out,
        )?;
        let metrics_out = worker.output_dir("metrics")?;
        std::fs::copy(log.path(), metrics_out.join("metrics.jsonl"))?;
        crate::eval::curves::draw(log.path(), &metrics_out.join("training_curves.svg"))
    })
    .await
}
