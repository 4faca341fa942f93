//! `flow bench logprobs`: reference scoring throughput and peak memory on random weights and ids.

use serde::Serialize;
use std::time::Instant;

use crate::arch::{Family, ModelConfig};
use crate::rng::SplitMix64;
use crate::scoring::{ReferenceScorer, Sequence};
use crate::tensor::model::Model;
use crate::tokenize::TokenizedPair;
use crate::train::dpo::{LossConfig, LossType};
use crate::train::schedule::{BetaSchedule, LrScheduler};
use crate::train::{Example, Objective, TrainConfig, Trainer};

/// The model and batch shape to measure.
#[derive(Clone, Debug)]
pub struct BenchShape {
    /// Model family.
    pub family: Family,
    /// Model width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Preference pairs (two sequences each).
    pub pairs: usize,
    /// Tokens per sequence (prompt = first quarter).
    pub seq: usize,
    /// Timed repetitions after one warm-up.
    pub repeats: usize,
}

/// Where and how a benchmark computes.
#[derive(Clone, Debug)]
pub struct BenchRun {
    /// The device (the CPU, or a CUDA GPU with the `cuda` feature).
    pub device: crate::Device,
    /// Compute precision (`F32`, or `BF16` mixed precision).
    pub dtype: crate::DType,
    /// LoRA rank on all seven projections (alpha = 2r); 0 trains every weight.
    pub lora_r: usize,
    /// Recompute activations in the backward pass.
    pub gradient_checkpointing: bool,
}

impl Default for BenchRun {
    fn default() -> Self {
        BenchRun {
            device: crate::cpu(),
            dtype: crate::DType::F32,
            lora_r: 0,
            gradient_checkpointing: false,
        }
    }
}

/// What the benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// Scored tokens (all tokens of all sequences) per second.
    pub tokens_per_s: f64,
    /// Seconds per batch.
    pub batch_s: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
    /// Rayon threads used.
    pub threads: usize,
}

/// A config of the bench's family and shape.
pub fn bench_config(shape: &BenchShape) -> ModelConfig {
    let base = ModelConfig::with_shape(
        shape.vocab,
        shape.hidden,
        shape.intermediate,
        shape.layers,
        shape.heads,
        shape.kv_heads,
    );
    ModelConfig::for_family(shape.family, base)
}

/// `2 × pairs` random sequences of `seq` tokens with the prompt the first quarter.
pub fn bench_batch(shape: &BenchShape, seed: u64) -> Vec<Sequence> {
    let mut rng = SplitMix64::new(seed);
    (0..2 * shape.pairs)
        .map(|_| Sequence {
            ids: (0..shape.seq)
                .map(|_| rng.below(shape.vocab) as u32)
                .collect(),
            completion_start: (shape.seq / 4).max(1),
        })
        .collect()
}

/// Peak resident set size of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Scores random batches with a random model: reference scoring as `model.ref_logprobs` does it.
pub fn bench_logprobs(shape: &BenchShape, run: &BenchRun) -> crate::Result<BenchResult> {
    let device = run.device.clone();
    let model = Model::random(&bench_config(shape), 0, 0.02, &device).cast(run.dtype);
    let scorer = ReferenceScorer::new(model);
    let batch = bench_batch(shape, 1);
    let batch_s = mean_seconds("batch", shape.repeats, || {
        scorer.score(&batch, &device).map(|_| ())
    })?;
    Ok(BenchResult {
        tokens_per_s: (2 * shape.pairs * shape.seq) as f64 / batch_s,
        batch_s,
        peak_rss_mib: peak_rss_mib(),
        threads: rayon::current_num_threads(),
    })
}

/// What the DPO step benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct StepBenchResult {
    /// Tokens (all positions of all sequences) per second.
    pub tokens_per_s: f64,
    /// Seconds per optimizer step.
    pub step_s: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
    /// Rayon threads used.
    pub threads: usize,
}

/// One full DPO step as `dpo.train` runs it without precomputed references: reference scoring,
/// policy forward and backward, clipping and AdamW, on `pairs` fresh random pairs per step.
pub fn bench_dpo_step(shape: &BenchShape, run: &BenchRun) -> crate::Result<StepBenchResult> {
    let device = run.device.clone();
    let model = Model::random(&bench_config(shape), 0, 0.02, &device);
    let steps = shape.repeats.max(1) + 1;
    let prompt = (shape.seq / 4).max(1);
    let mut rng = SplitMix64::new(1);
    let mut ids =
        |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(shape.vocab) as u32).collect() };
    let examples: Vec<Example> = (0..steps * shape.pairs)
        .map(|i| Example {
            id: i.to_string(),
            pair: TokenizedPair {
                prompt_ids: ids(prompt),
                chosen_ids: ids(shape.seq - prompt),
                rejected_ids: ids(shape.seq - prompt),
                cut: [0, 0],
            },
            reference: None,
        })
        .collect();
    let config = TrainConfig {
        learning_rate: 1e-6,
        lr_scheduler: LrScheduler::Constant,
        warmup_steps: 0,
        max_steps: Some(steps),
        epochs: 1,
        batch_size: shape.pairs,
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        adam: Default::default(),
        seed: 0,
        lora: (run.lora_r > 0).then(|| crate::tensor::lora::LoraConfig {
            r: run.lora_r,
            alpha: 2.0 * run.lora_r as f64,
            dropout: 0.0,
            targets: crate::tensor::lora::TARGETS
                .iter()
                .map(|t| t.to_string())
                .collect(),
            use_rslora: false,
        }),
        gradient_checkpointing: run.gradient_checkpointing,
        compute_dtype: run.dtype,
        autodiff: false,
    };
    let objective = Objective::Dpo {
        loss: LossConfig {
            loss: LossType::Sigmoid,
            label_smoothing: 0.0,
            simpo_gamma: 0.0,
        },
        beta: BetaSchedule::Constant(0.1),
    };
    let mut trainer = Trainer::new(model, config, objective, examples, Vec::new(), device)?;
    let step_s = mean_seconds("step", steps - 1, || trainer.train_step().map(|_| ()))?;
    Ok(StepBenchResult {
        tokens_per_s: (2 * shape.pairs * shape.seq) as f64 / step_s,
        step_s,
        peak_rss_mib: peak_rss_mib(),
        threads: rayon::current_num_threads(),
    })
}

/// Runs `run` once to warm up (kernel compilation, autotuning, allocation), then `repeats`
/// times (at least once), and returns the mean seconds of the timed runs. Each run's seconds go
/// to stderr as it ends, so a benchmark stopped by a time limit still says how far it got.
fn mean_seconds(
    what: &str,
    repeats: usize,
    mut run: impl FnMut() -> crate::Result<()>,
) -> crate::Result<f64> {
    let repeats = repeats.max(1);
    let mut total = 0.0;
    for i in 0..=repeats {
        let start = Instant::now();
        run()?;
        let seconds = start.elapsed().as_secs_f64();
        if i == 0 {
            eprintln!("{what} 0 (warm-up): {seconds:.3} s");
        } else {
            eprintln!("{what} {i} of {repeats}: {seconds:.3} s");
            total += seconds;
        }
    }
    Ok(total / repeats as f64)
}

/// Sets the number of CPU threads tensor work uses (call before any tensor work).
pub fn set_threads(threads: usize) -> Result<(), String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| format!("cannot set {threads} threads: {e}"))
}
