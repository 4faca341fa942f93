//! Training: the loop of `dpo.train` and `sft.train` — batches in a seeded order, forward and
//! backward through the policy, gradient accumulation, global-norm clipping, AdamW with a
//! learning-rate schedule, per-step metrics with TRL's names, and atomic checkpoints that a
//! killed run resumes from with bit-identical results.
//!
//! Everything random is a function of `(seed, step)`: the data order of epoch `e` is a shuffle
//! seeded by `seed + e`, LoRA dropout masks are seeded by `(seed, step, micro-batch)`. So a
//! checkpoint needs only the step besides weights and optimizer moments to continue exactly.
//!
//! Files: [`trainer`] (the state and the loop), [`batching`] (which examples each step sees),
//! `step` (one optimizer step on either path), `evaluation` (metrics on the eval set),
//! `checkpoint` (save and resume), [`record`] (metrics lines and the observer), and the pieces
//! the step is made of: [`dpo`] (preference losses), [`optim`] (AdamW, clipping) and
//! [`schedule`] (learning-rate and β schedules).

pub mod batching;
mod checkpoint;
pub mod dpo;
mod evaluation;
pub mod optim;
pub mod record;
pub mod schedule;
mod step;
pub mod trainer;

use crate::tokenize::TokenizedPair;
use burn::tensor::DType;
use dpo::LossConfig;
use optim::AdamWConfig;
use schedule::{BetaSchedule, LrScheduler};
use std::path::PathBuf;

pub use record::{Observer, Record};
pub use trainer::Trainer;

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
    pub lora: Option<crate::tensor::lora::LoraConfig>,
    /// Recompute memory-bound activations in the backward pass.
    pub gradient_checkpointing: bool,
    /// Precision of the forward and backward passes: `F32`, or `BF16` for mixed precision
    /// (bf16 weights and activations; f32 master weights, optimizer state, loss and
    /// log-softmax).
    pub compute_dtype: DType,
    /// Differentiate through burn's autodiff even where the host path could run: the path bf16
    /// and GPU runs take, for checking it on the CPU.
    pub autodiff: bool,
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
