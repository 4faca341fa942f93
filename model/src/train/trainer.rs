//! The state of a training run and its loop: the trained tensors and their optimizer state,
//! the examples, the reference scorer while references are missing, and [`Trainer::run`],
//! which steps, evaluates and checkpoints as scheduled.

use burn::prelude::*;
use burn::tensor::DType;

use super::optim::{AdamW, Param};
use super::{Example, Objective, Observer, Schedule, TrainConfig};
use crate::arch::ModelConfig;
use crate::error::{ModelError, Result};
use crate::scoring::ReferenceScorer;
use crate::tensor::lora;
use crate::tensor::model::Model;

/// Whether steps run on [`HostModel`]: full fine-tuning in f32 on the CPU, without
/// gradient checkpointing (LoRA, bf16, CUDA and checkpointing go through burn's autodiff).
pub(super) fn trains_on_host(config: &TrainConfig, device: &Device) -> bool {
    config.lora.is_none()
        && config.compute_dtype == DType::F32
        && *device == crate::device::cpu()
        && !config.gradient_checkpointing
}

/// What the trained tensors are plugged into.
pub(super) enum Base {
    /// Host training ([`HostModel`]): every weight is trained, so the config is all that is
    /// kept of the model.
    Host(Box<ModelConfig>),
    /// burn's autodiff: the model (with its LoRA adapters) in the compute dtype.
    Tensors(Box<Model>),
}

/// The state of a training run.
pub struct Trainer {
    pub(super) config: TrainConfig,
    pub(super) objective: Objective,
    pub(super) base: Base,
    pub(super) params: Vec<Param>,
    pub(super) optimizer: AdamW,
    pub(super) reference: Option<ReferenceScorer>,
    pub(super) train: Vec<Example>,
    pub(super) eval: Vec<Example>,
    pub(super) device: Device,
    pub(super) step: usize,
    pub(super) num_tokens: usize,
}

impl Trainer {
    /// A run of `objective` on `model` (LoRA adapters are attached here when configured).
    pub fn new(
        mut model: Model,
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
        for example in train.iter().chain(&eval) {
            for sequence in example.pair.sequences() {
                sequence
                    .check(0, model.config.vocab_size)
                    .map_err(|e| ModelError::Argument(format!("example `{}`: {e}", example.id)))?;
            }
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
            Base::Host(Box::new(model.config.clone()))
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
    pub fn policy(&self) -> Model {
        let mut tensors = self.params.iter().map(|p| p.tensor(&self.device));
        match &self.base {
            Base::Host(config) => Model::from_fn(config, |_| {
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
                let record = self.evaluate()?;
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
}

/// The tensors a run trains: every weight, or only the LoRA adapters.
pub(super) fn trainable(model: &Model, lora: bool) -> Vec<(String, Tensor<2>)> {
    if lora {
        lora::adapter_tensors(model)
    } else {
        model.weights()
    }
}

/// `model` with its trained tensors replaced by `values` (in [`trainable`] order).
pub(super) fn with_trainable(model: &Model, lora: bool, values: Vec<Tensor<2>>) -> Model {
    if lora {
        let mut model = model.clone();
        lora::set_adapter_tensors(&mut model, values.into_iter());
        model
    } else {
        let mut values = values.into_iter();
        model.map_weights(|_, _| values.next().expect("one value per weight"))
    }
}
