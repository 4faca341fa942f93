//! The training loop of `dpo.train` and `sft.train`: batches in a seeded order, forward and
//! backward through the policy, gradient accumulation, global-norm clipping, AdamW with a
//! learning-rate schedule, per-step metrics with TRL's names, and atomic checkpoints that a
//! killed run resumes from with bit-identical results.
//!
//! Everything random is a function of `(seed, step)`: the data order of epoch `e` is a shuffle
//! seeded by `seed + e`, LoRA dropout masks are seeded by `(seed, step, micro-batch)`. So a
//! checkpoint needs only the step besides weights and optimizer moments to continue exactly.

use burn::prelude::*;
use burn::tensor::{DType, GradientCheckpointingStrategy, TensorData};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backprop::HostMistral;
use crate::config::MistralConfig;
use crate::dpo::{LossConfig, PairLogps, PreferenceMetrics, preference_loss};
use crate::error::{ModelError, Result, io_at};
use crate::lora::{self, LoraConfig};
use crate::mistral::Mistral;
use crate::optim::{AdamW, AdamWConfig, HostGrad, Param, clip_coefficient, global_norm};
use crate::schedule::{BetaSchedule, LrScheduler};
use crate::scoring::{ReferenceScorer, Scores, Sequence, score, to_f32, to_f64};
use crate::tokenize::TokenizedPair;
use crate::vector::written_zeros;
use crate::weights::{Checkpoint, NamedTensor, SaveDtype, save_safetensors_file};

/// Optimisation settings shared by DPO and SFT.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Learning-rate schedule.
    pub lr_scheduler: LrScheduler,
    /// Warm-up steps.
    pub warmup_steps: usize,
    /// Optimizer steps; `None`: `epochs` passes over the data.
    pub max_steps: Option<usize>,
    /// Passes over the data when `max_steps` is unset.
    pub epochs: usize,
    /// Pairs per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Global-norm clipping threshold.
    pub max_grad_norm: Option<f64>,
    /// AdamW hyper-parameters.
    pub adam: AdamWConfig,
    /// Seed of data order, adapter init and dropout.
    pub seed: u64,
    /// Train LoRA adapters instead of all weights.
    pub lora: Option<LoraConfig>,
    /// Recompute memory-bound activations in the backward pass.
    pub gradient_checkpointing: bool,
    /// Precision of the forward and backward passes: `F32`, or `BF16` for mixed precision
    /// (bf16 weights and activations; f32 master weights, optimizer state, loss and
    /// log-softmax).
    pub compute_dtype: DType,
}

impl TrainConfig {
    /// Micro-batches in one pass over `examples` examples.
    fn micro_batches_per_epoch(&self, examples: usize) -> usize {
        examples.div_ceil(self.batch_size)
    }

    /// Optimizer steps in one pass (the last one may accumulate fewer micro-batches).
    pub fn steps_per_epoch(&self, examples: usize) -> usize {
        self.micro_batches_per_epoch(examples)
            .div_ceil(self.grad_accum)
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self, examples: usize) -> usize {
        self.max_steps
            .unwrap_or(self.epochs * self.steps_per_epoch(examples))
    }
}

/// What is optimised.
#[derive(Clone, Debug)]
pub enum Objective {
    /// A preference loss with a β schedule.
    Dpo {
        /// The loss.
        loss: LossConfig,
        /// β per step.
        beta: BetaSchedule,
    },
    /// Next-token loss on the chosen completions (mean over completion tokens).
    Sft,
}

/// A training example: a tokenized pair and, when known, its reference log-probs.
#[derive(Clone, Debug)]
pub struct Example {
    /// The pair's id (named in errors).
    pub id: String,
    /// Prompt, chosen and rejected ids.
    pub pair: TokenizedPair,
    /// Summed reference log-probs `[chosen, rejected]`, e.g. from `model.ref_logprobs`.
    pub reference: Option<[f64; 2]>,
}

/// One metrics line: named values in a fixed order (TRL's names).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record(pub Vec<(String, f64)>);

impl Record {
    fn push(&mut self, name: &str, value: f64) {
        self.0.push((name.to_string(), value));
    }

    /// The value called `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    fn push_preference(&mut self, prefix: &str, m: &PreferenceMetrics) {
        self.push(&format!("{prefix}loss"), m.loss);
        self.push(&format!("{prefix}rewards/chosen"), m.rewards_chosen);
        self.push(&format!("{prefix}rewards/rejected"), m.rewards_rejected);
        self.push(&format!("{prefix}rewards/accuracies"), m.rewards_accuracies);
        self.push(&format!("{prefix}rewards/margins"), m.rewards_margins);
        self.push(&format!("{prefix}logps/chosen"), m.logps_chosen);
        self.push(&format!("{prefix}logps/rejected"), m.logps_rejected);
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            if name == "step" {
                map.serialize_entry(name, &(*value as u64))?;
            } else {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// Receives what the loop produces and says when to stop.
pub trait Observer {
    /// A training step's or an evaluation's metrics.
    fn record(&mut self, record: &Record) -> Result<()>;
    /// A checkpoint of `step` is durable on disk.
    fn checkpointed(&mut self, _step: usize) -> Result<()> {
        Ok(())
    }
    /// Whether to stop now (checked between steps).
    fn cancelled(&self) -> bool {
        false
    }
}

/// When to checkpoint and evaluate during [`Trainer::run`].
#[derive(Clone, Debug, Default)]
pub struct Schedule {
    /// Directory for checkpoints (`checkpoint-<step>/` and a `latest` pointer).
    pub checkpoint_dir: Option<PathBuf>,
    /// Checkpoint every this many steps (and never at the end: the result is saved instead).
    pub checkpoint_every: Option<usize>,
    /// Evaluate every this many steps; with an eval set, always after the last step.
    pub eval_every: Option<usize>,
}

/// Gradients and metrics of one optimizer step before the update.
struct Accumulated {
    grads: Vec<HostGrad>,
    preference: Vec<(PreferenceMetrics, usize)>,
    sft_loss: f64,
    tokens: usize,
}

impl Accumulated {
    fn loss(&self, objective: &Objective) -> f64 {
        match objective {
            Objective::Dpo { .. } => PreferenceMetrics::weighted_mean(&self.preference).loss,
            Objective::Sft => self.sft_loss,
        }
    }
}

/// Whether steps run on [`HostMistral`]: full fine-tuning in f32 on the CPU, without
/// gradient checkpointing (LoRA, bf16, CUDA and checkpointing go through burn's autodiff).
fn trains_on_host(config: &TrainConfig, device: &Device) -> bool {
    config.lora.is_none()
        && config.compute_dtype == DType::F32
        && *device == crate::cpu()
        && !config.gradient_checkpointing
}

/// What the trained tensors are plugged into.
enum Base {
    /// Host training ([`HostMistral`]): every weight is trained, so the config is all that is
    /// kept of the model.
    Host(MistralConfig),
    /// burn's autodiff: the model (with its LoRA adapters) in the compute dtype.
    Tensors(Box<Mistral>),
}

/// The state of a training run.
pub struct Trainer {
    config: TrainConfig,
    objective: Objective,
    base: Base,
    params: Vec<Param>,
    optimizer: AdamW,
    reference: Option<ReferenceScorer>,
    train: Vec<Example>,
    eval: Vec<Example>,
    device: Device,
    step: usize,
    num_tokens: usize,
}

impl Trainer {
    /// A run of `objective` on `model` (LoRA adapters are attached here when configured).
    pub fn new(
        mut model: Mistral,
        config: TrainConfig,
        objective: Objective,
        train: Vec<Example>,
        eval: Vec<Example>,
        device: Device,
    ) -> Result<Trainer> {
        if train.is_empty() {
            return Err(ModelError::Argument(
                "no training examples left (all dropped or the dataset is empty)".into(),
            ));
        }
        if config.batch_size == 0 || config.grad_accum == 0 {
            return Err(ModelError::Argument(
                "batch_size and grad_accum must be at least 1".into(),
            ));
        }
        if let Some(lora) = &config.lora {
            lora::attach(&mut model, lora, config.seed);
        }
        let needs_reference = match &objective {
            Objective::Dpo { loss, .. } => loss.loss.uses_reference(),
            Objective::Sft => false,
        };
        let missing = train.iter().chain(&eval).any(|e| e.reference.is_none());
        // The trained tensors stay in f32 (master weights); the model computes in its dtype.
        let params = trainable(&model, config.lora.is_some())
            .into_iter()
            .map(|(name, value)| Param::new(name, value))
            .collect();
        let model = model.cast(config.compute_dtype);
        let reference = (needs_reference && missing)
            .then(|| ReferenceScorer::new(lora::without_adapters(&model)));
        let base = if trains_on_host(&config, &device) {
            Base::Host(model.config.clone())
        } else {
            Base::Tensors(Box::new(model))
        };
        Ok(Trainer {
            optimizer: AdamW::new(config.adam),
            config,
            objective,
            base,
            params,
            reference,
            train,
            eval,
            device,
            step: 0,
            num_tokens: 0,
        })
    }

    /// Optimizer steps taken.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> usize {
        self.config.total_steps(self.train.len())
    }

    /// The trained tensors with their names (all weights, or the LoRA adapters).
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The current policy in f32 (with its adapters, when training LoRA).
    pub fn policy(&self) -> Mistral {
        let mut tensors = self.params.iter().map(|p| p.tensor(&self.device));
        match &self.base {
            Base::Host(config) => Mistral::from_fn(config, |_| {
                Ok(tensors.next().expect("one trained tensor per weight"))
            })
            .expect("the tensors are the weights"),
            Base::Tensors(model) => with_trainable(
                &model.cast(DType::F32),
                self.config.lora.is_some(),
                tensors.collect(),
            ),
        }
    }

    /// Runs the remaining steps, checkpointing and evaluating as scheduled.
    pub fn run(&mut self, schedule: &Schedule, observer: &mut dyn Observer) -> Result<()> {
        let total = self.total_steps();
        while self.step < total {
            if observer.cancelled() {
                return Err(ModelError::Cancelled);
            }
            let record = self.train_step()?;
            observer.record(&record)?;
            let step = self.step;
            let due = |every: Option<usize>| every.is_some_and(|n| step.is_multiple_of(n));
            if !self.eval.is_empty() && (due(schedule.eval_every) || step == total) {
                let record = self.evaluate();
                observer.record(&record)?;
            }
            if let Some(dir) = &schedule.checkpoint_dir
                && due(schedule.checkpoint_every)
                && step < total
            {
                self.save_checkpoint(dir)?;
                observer.checkpointed(self.step)?;
            }
        }
        Ok(())
    }

    /// The micro-batches (example indices) of optimizer step `step` (1-based).
    fn micro_batches(&self, step: usize) -> Vec<Vec<usize>> {
        let n = self.train.len();
        let per_epoch = self.config.steps_per_epoch(n);
        let (epoch, local) = ((step - 1) / per_epoch, (step - 1) % per_epoch);
        let mut order: Vec<usize> = (0..n).collect();
        crate::init::shuffle(&mut order, self.config.seed.wrapping_add(epoch as u64));
        let micro: Vec<&[usize]> = order.chunks(self.config.batch_size).collect();
        let first = local * self.config.grad_accum;
        let last = (first + self.config.grad_accum).min(micro.len());
        micro[first..last].iter().map(|m| m.to_vec()).collect()
    }

    /// β of the next step (0 for SFT).
    fn beta(&self) -> f64 {
        match &self.objective {
            Objective::Dpo { beta, .. } => beta.at(self.step, self.total_steps()),
            Objective::Sft => 0.0,
        }
    }

    /// The loss and unclipped gradients of the next step's batch, without updating anything.
    pub fn gradients(&mut self) -> Result<(Record, Vec<(String, HostGrad)>)> {
        let step = self.step + 1;
        let batches = self.micro_batches(step);
        let acc = self.accumulate(step, &batches, self.beta())?;
        let mut record = Record::default();
        record.push("loss", acc.loss(&self.objective));
        record.push("grad_norm", global_norm(&acc.grads));
        let names = self.params.iter().map(|p| p.name.clone());
        Ok((record, names.zip(acc.grads).collect()))
    }

    /// One optimizer step; returns its metrics.
    pub fn train_step(&mut self) -> Result<Record> {
        let started = Instant::now();
        let step = self.step + 1;
        let total = self.total_steps();
        let batches = self.micro_batches(step);
        let beta = self.beta();
        let acc = self.accumulate(step, &batches, beta)?;
        let grad_norm = global_norm(&acc.grads);
        let loss = acc.loss(&self.objective);
        if !loss.is_finite() || !grad_norm.is_finite() {
            let ids: Vec<&str> = batches
                .iter()
                .flatten()
                .map(|&i| self.train[i].id.as_str())
                .collect();
            return Err(ModelError::NonFinite {
                step,
                what: if loss.is_finite() { "gradient" } else { "loss" },
                ids: ids.join(", "),
            });
        }
        let multiplier =
            self.config
                .lr_scheduler
                .multiplier(self.step, self.config.warmup_steps, total);
        let lr = self.config.learning_rate * multiplier;
        let scale = clip_coefficient(grad_norm, self.config.max_grad_norm);
        self.optimizer
            .update(&mut self.params, acc.grads, lr, scale);
        self.step = step;
        self.num_tokens += acc.tokens;
        let seconds = started.elapsed().as_secs_f64();
        let mut record = Record::default();
        record.push("step", step as f64);
        record.push(
            "epoch",
            step as f64 / self.config.steps_per_epoch(self.train.len()) as f64,
        );
        match self.objective {
            Objective::Dpo { .. } => {
                record.push_preference("", &PreferenceMetrics::weighted_mean(&acc.preference));
                record.push("beta", beta);
            }
            Objective::Sft => record.push("loss", loss),
        }
        record.push("learning_rate", lr);
        record.push("grad_norm", grad_norm);
        record.push("num_tokens", self.num_tokens as f64);
        record.push("tokens_per_s", acc.tokens as f64 / seconds.max(1e-9));
        Ok(record)
    }

    /// Forward and backward over the micro-batches of one step; gradients summed and scaled so
    /// they are those of the step's loss.
    fn accumulate(
        &mut self,
        step: usize,
        batches: &[Vec<usize>],
        beta: f64,
    ) -> Result<Accumulated> {
        let mut acc = Accumulated {
            grads: Vec::new(),
            preference: Vec::new(),
            sft_loss: 0.0,
            tokens: 0,
        };
        let sft_tokens: usize = batches
            .iter()
            .flatten()
            .map(|&i| self.train[i].pair.chosen_ids.len())
            .sum();
        for (m, batch) in batches.iter().enumerate() {
            self.fill_reference(batch, false);
            let micro = MicroBatch {
                examples: batch.iter().map(|&i| &self.train[i]).collect(),
                of: batches.len(),
                sft_tokens,
                beta,
            };
            match &self.base {
                Base::Host(config) => self.host_backward(config, &micro, &mut acc),
                Base::Tensors(model) => {
                    let key = self.config.seed ^ ((step as u64) << 32) ^ ((m as u64) << 16);
                    self.tape_backward(model, &micro, key, &mut acc);
                }
            }
        }
        Ok(acc)
    }

    /// One micro-batch through [`HostMistral`]: its loss from the host log-probs, the
    /// log-probs' gradients from that loss, the weights' gradients from the host backward pass.
    fn host_backward(&self, config: &MistralConfig, micro: &MicroBatch, acc: &mut Accumulated) {
        let weights = self.params.iter().map(|p| p.value.as_slice()).collect();
        let model = HostMistral::new(config, weights);
        let sequences = micro.sequences(&self.objective);
        let forward = model.forward(&sequences);
        let n = forward.token_logps.len();
        let token_logps = Tensor::<1>::from_data(
            TensorData::new(forward.token_logps.clone(), [n]),
            &self.device,
        )
        .autodiff()
        .require_grad();
        let scores = Scores::of_tokens(token_logps.clone(), &sequences);
        let loss = micro.loss(&self.objective, scores, acc);
        let token_grads = token_logps
            .grad(&loss.backward())
            .map_or_else(|| vec![0.0; n], to_f32);
        if acc.grads.is_empty() {
            acc.grads = self
                .params
                .iter()
                .map(|p| written_zeros(p.value.len()))
                .collect();
        }
        model.backward(forward, &token_grads, &mut acc.grads);
    }

    /// One micro-batch through burn's autodiff (with LoRA dropout keyed by `dropout_key`).
    fn tape_backward(
        &self,
        base: &Mistral,
        micro: &MicroBatch,
        dropout_key: u64,
        acc: &mut Accumulated,
    ) {
        let tracked: Vec<Tensor<2>> = self
            .params
            .iter()
            .map(|p| self.track(p.tensor(&self.device)))
            .collect();
        let dtype = self.config.compute_dtype;
        let computed = tracked.iter().map(|t| match t.dtype() == dtype {
            true => t.clone(),
            false => t.clone().cast(dtype),
        });
        let mut policy = with_trainable(base, self.config.lora.is_some(), computed.collect());
        lora::set_dropout_key(&mut policy, Some(dropout_key));
        let device = tracked[0].device();
        let scores = score(&policy, &micro.sequences(&self.objective), &device);
        let gradients = micro.loss(&self.objective, scores, acc).backward();
        let grads = tracked.iter().map(|t| {
            let [rows, cols] = t.dims();
            t.grad(&gradients)
                .map_or_else(|| vec![0.0; rows * cols], to_f32)
        });
        if acc.grads.is_empty() {
            acc.grads = grads.collect();
        } else {
            for (sum, g) in acc.grads.iter_mut().zip(grads) {
                sum.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
            }
        }
    }

    /// A trainable tensor as an autodiff leaf.
    fn track(&self, value: Tensor<2>) -> Tensor<2> {
        let leaf = value.autodiff();
        let leaf = if self.config.gradient_checkpointing {
            leaf.with_gradient_checkpointing_strategy(GradientCheckpointingStrategy::Balanced)
        } else {
            leaf
        };
        leaf.require_grad()
    }

    /// Scores the reference log-probs the batch's examples lack and keeps them with the
    /// examples; once every example has them, the reference model is dropped.
    fn fill_reference(&mut self, batch: &[usize], eval: bool) {
        let Some(scorer) = &self.reference else {
            return;
        };
        let examples = if eval {
            &mut self.eval
        } else {
            &mut self.train
        };
        let missing: Vec<usize> = batch
            .iter()
            .copied()
            .filter(|&i| examples[i].reference.is_none())
            .collect();
        if missing.is_empty() {
            return;
        }
        let sequences: Vec<Sequence> = missing
            .iter()
            .flat_map(|&i| examples[i].pair.sequences())
            .collect();
        let sums = scorer.score(&sequences, &self.device).sums;
        for (&i, pair) in missing.iter().zip(sums.chunks(2)) {
            examples[i].reference = Some([pair[0], pair[1]]);
        }
        if self
            .train
            .iter()
            .chain(&self.eval)
            .all(|e| e.reference.is_some())
        {
            self.reference = None;
        }
    }

    /// Metrics on the eval set, without gradients or dropout, prefixed `eval_`.
    pub fn evaluate(&mut self) -> Record {
        let mut record = Record::default();
        record.push("step", self.step as f64);
        if self.eval.is_empty() {
            return record;
        }
        let policy = self.policy();
        let batches: Vec<Vec<usize>> = (0..self.eval.len())
            .collect::<Vec<_>>()
            .chunks(self.config.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        let total = self.total_steps();
        match self.objective.clone() {
            Objective::Dpo { loss, beta } => {
                let beta = beta.at(self.step.saturating_sub(1), total);
                let mut parts = Vec::new();
                for batch in &batches {
                    self.fill_reference(batch, true);
                    let examples: Vec<&Example> = batch.iter().map(|&i| &self.eval[i]).collect();
                    let sequences: Vec<Sequence> =
                        examples.iter().flat_map(|e| e.pair.sequences()).collect();
                    let sums = score(&policy, &sequences, &self.device).sums;
                    let (_, metrics) = dpo_loss(sums, &examples, &loss, beta);
                    parts.push((metrics, batch.len()));
                }
                record.push_preference("eval_", &PreferenceMetrics::weighted_mean(&parts));
            }
            Objective::Sft => {
                let sequences: Vec<Sequence> =
                    self.eval.iter().map(|e| e.pair.chosen_sequence()).collect();
                let (mut nll, mut count) = (0.0, 0);
                for chunk in sequences.chunks(self.config.batch_size) {
                    let logps = to_f64(score(&policy, chunk, &self.device).token_logps);
                    nll -= logps.iter().sum::<f64>();
                    count += logps.len();
                }
                record.push("eval_loss", nll / count.max(1) as f64);
            }
        }
        record
    }

    /// Writes `dir/checkpoint-<step>/` (trained tensors, optimizer moments, trainer state)
    /// through a temporary directory and a rename, then points `dir/latest` at it and removes
    /// older checkpoints.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let name = format!("checkpoint-{}", self.step);
        let tmp = dir.join(format!("{name}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_at(&tmp))?;
        let values = self
            .params
            .iter()
            .map(|p| NamedTensor {
                name: p.name.clone(),
                shape: p.shape.to_vec(),
                values: p.value.clone(),
            })
            .collect::<Vec<_>>();
        save_safetensors_file(&tmp.join("trainable.safetensors"), &values, SaveDtype::F32)?;
        let moment = |p: &Param, suffix: &str, values: &[f32]| NamedTensor {
            name: format!("{}{suffix}", p.name),
            shape: p.shape.to_vec(),
            values: values.to_vec(),
        };
        let mut moments: Vec<NamedTensor> = self
            .params
            .iter()
            .map(|p| moment(p, ".exp_avg", &p.m))
            .collect();
        moments.extend(self.params.iter().map(|p| moment(p, ".exp_avg_sq", &p.v)));
        save_safetensors_file(&tmp.join("optimizer.safetensors"), &moments, SaveDtype::F32)?;
        let state = serde_json::json!({
            "step": self.step,
            "optimizer_step": self.optimizer.step,
            "num_tokens": self.num_tokens,
            "total_steps": self.total_steps(),
            "seed": self.config.seed,
            "data_position": {
                "epoch": self.step / self.config.steps_per_epoch(self.train.len()),
                "step_in_epoch": self.step % self.config.steps_per_epoch(self.train.len()),
            },
            "rng": "stateless: data order seeded by seed + epoch, dropout by (seed, step, micro-batch)",
        });
        write_synced(
            &tmp.join("trainer_state.json"),
            &serde_json::to_string_pretty(&state).expect("JSON"),
        )?;
        let target = dir.join(&name);
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&tmp, &target).map_err(io_at(&target))?;
        let latest_tmp = dir.join("latest.tmp");
        write_synced(&latest_tmp, &name)?;
        std::fs::rename(&latest_tmp, dir.join("latest")).map_err(io_at(dir))?;
        remove_older_checkpoints(dir, &name);
        Ok(())
    }

    /// Continues from the checkpoint `dir/latest` names, if any; returns its step.
    pub fn resume(&mut self, dir: &Path) -> Result<Option<usize>> {
        let Ok(name) = std::fs::read_to_string(dir.join("latest")) else {
            return Ok(None);
        };
        let checkpoint = dir.join(name.trim());
        let path = checkpoint.join("trainer_state.json");
        let text = std::fs::read_to_string(&path).map_err(io_at(&path))?;
        let state: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
                path: path.clone(),
                message: format!("not JSON: {e}"),
            })?;
        let field = |key: &str| {
            state[key].as_u64().ok_or_else(|| ModelError::Invalid {
                path: path.clone(),
                message: format!("missing `{key}`"),
            })
        };
        let (step, optimizer_step, num_tokens) = (
            field("step")?,
            field("optimizer_step")?,
            field("num_tokens")?,
        );
        let values = Checkpoint::open_file(&checkpoint.join("trainable.safetensors"))?;
        let moments = Checkpoint::open_file(&checkpoint.join("optimizer.safetensors"))?;
        for p in &mut self.params {
            let shape = p.shape;
            p.value = values.read_f32(&p.name, &shape)?;
            p.m = moments.read_f32(&format!("{}.exp_avg", p.name), &shape)?;
            p.v = moments.read_f32(&format!("{}.exp_avg_sq", p.name), &shape)?;
        }
        self.step = step as usize;
        self.optimizer.step = optimizer_step;
        self.num_tokens = num_tokens as usize;
        Ok(Some(self.step))
    }
}

/// One micro-batch of a step: its examples and what its loss needs.
struct MicroBatch<'t> {
    examples: Vec<&'t Example>,
    /// Micro-batches in the step (each contributes its mean loss over this many).
    of: usize,
    /// Completion tokens of the whole step (SFT's loss is their mean).
    sft_tokens: usize,
    beta: f64,
}

impl MicroBatch<'_> {
    /// The sequences the policy scores: both completions of each pair for DPO, the chosen
    /// one for SFT.
    fn sequences(&self, objective: &Objective) -> Vec<Sequence> {
        match objective {
            Objective::Dpo { .. } => self
                .examples
                .iter()
                .flat_map(|e| e.pair.sequences())
                .collect(),
            Objective::Sft => self
                .examples
                .iter()
                .map(|e| e.pair.chosen_sequence())
                .collect(),
        }
    }

    /// This micro-batch's part of the step's loss from the policy's scores of
    /// [`MicroBatch::sequences`]; its metrics and tokens are added to `acc`.
    fn loss(&self, objective: &Objective, scores: Scores, acc: &mut Accumulated) -> Tensor<1> {
        match objective {
            Objective::Dpo { loss, .. } => {
                let (value, metrics) = dpo_loss(scores.sums, &self.examples, loss, self.beta);
                acc.preference.push((metrics, self.examples.len()));
                acc.tokens += pair_tokens(&self.examples);
                value.div_scalar(self.of as f64)
            }
            Objective::Sft => {
                let nll = scores.token_logps.sum().neg();
                let scaled = nll.div_scalar(self.sft_tokens as f64);
                acc.sft_loss += to_f64(scaled.clone().detach())[0];
                acc.tokens += self
                    .examples
                    .iter()
                    .map(|e| e.pair.prompt_ids.len() + e.pair.chosen_ids.len())
                    .sum::<usize>();
                scaled
            }
        }
    }
}

/// Loss and metrics of DPO from the policy's summed log-probs (chosen, rejected per pair) of
/// a batch of examples (references filled in).
fn dpo_loss(
    sums: Tensor<1>,
    examples: &[&Example],
    loss: &LossConfig,
    beta: f64,
) -> (Tensor<1>, PreferenceMetrics) {
    let n = examples.len();
    let sums = sums.reshape([n, 2]);
    let logps = PairLogps {
        policy_chosen: sums.clone().narrow(1, 0, 1).reshape([n]),
        policy_rejected: sums.narrow(1, 1, 1).reshape([n]),
        reference: examples
            .iter()
            .map(|e| e.reference.unwrap_or([0.0, 0.0]))
            .collect(),
        lengths: examples
            .iter()
            .map(|e| [e.pair.chosen_ids.len(), e.pair.rejected_ids.len()])
            .collect(),
    };
    preference_loss(loss, beta, &logps)
}

/// Token positions the policy processes for these pairs (prompt twice, both completions).
fn pair_tokens(examples: &[&Example]) -> usize {
    examples
        .iter()
        .map(|e| 2 * e.pair.prompt_ids.len() + e.pair.chosen_ids.len() + e.pair.rejected_ids.len())
        .sum()
}

/// The tensors a run trains: every weight, or only the LoRA adapters.
fn trainable(model: &Mistral, lora: bool) -> Vec<(String, Tensor<2>)> {
    if lora {
        lora::adapter_tensors(model)
    } else {
        model.weights()
    }
}

/// `model` with its trained tensors replaced by `values` (in [`trainable`] order).
fn with_trainable(model: &Mistral, lora: bool, values: Vec<Tensor<2>>) -> Mistral {
    if lora {
        let mut model = model.clone();
        lora::set_adapter_tensors(&mut model, values.into_iter());
        model
    } else {
        let mut values = values.into_iter();
        model.map_weights(|_, _| values.next().expect("one value per weight"))
    }
}

fn write_synced(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(io_at(path))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(io_at(path))
}

fn remove_older_checkpoints(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("checkpoint-") && name != keep {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
