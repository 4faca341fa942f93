//! The state of a training run and its loop: the trained tensors and their optimizer state,
//! the examples, the reference scorer while references are missing, and [`Trainer::run`],
//! which steps, evaluates and checkpoints as scheduled.

use burn::prelude::*;
use burn::tensor::DType;

use super::optim::{AdamW, Param};
use super::{Example, Objective, Observer, Schedule, TrainConfig};
use burn::tensor::TensorData;

use crate::arch::ModelConfig;
use crate::device::to_f32;
use crate::error::{ModelError, Result};
use crate::scoring::ReferenceScorer;
use crate::tensor::lora::{self, AdapterPlace};
use crate::tensor::model::Model;

/// Whether steps run on the host path ([`crate::host::HostModel`]): f32 on the CPU, full
/// fine-tuning or LoRA, with or without gradient checkpointing (bf16 and GPUs go through
/// burn's autodiff).
pub(super) fn trains_on_host(config: &TrainConfig, device: &Device) -> bool {
    config.compute_dtype == DType::F32 && crate::device::is_host(device) && !config.autodiff
}

/// What the trained tensors are plugged into.
pub(super) enum Base {
    /// Host full fine-tuning: every weight is trained, so the config is all that is kept of the
    /// model.
    Host(Box<ModelConfig>),
    /// Host LoRA: the frozen base weights, once (the reference scores with them too), and where
    /// each trained adapter sits.
    HostLora(Box<HostLora>),
    /// burn's autodiff: the model (with its LoRA adapters) in the compute dtype.
    Tensors(Box<Model>),
}

/// The frozen base of a host LoRA run.
pub(super) struct HostLora {
    pub(super) config: ModelConfig,
    pub(super) weights: Vec<Vec<f32>>,
    pub(super) places: Vec<AdapterPlace>,
}

/// Where missing reference log-probs come from.
pub(super) enum Reference {
    /// A scorer holding the reference model.
    Scorer(ReferenceScorer),
    /// The frozen base of a host LoRA run, with its adapters off.
    Base,
}

/// The state of a training run.
pub struct Trainer {
    pub(super) config: TrainConfig,
    pub(super) objective: Objective,
    pub(super) base: Base,
    pub(super) params: Vec<Param>,
    pub(super) optimizer: AdamW,
    pub(super) reference: Option<Reference>,
    pub(super) train: Vec<Example>,
    pub(super) eval: Vec<Example>,
    pub(super) device: Device,
    pub(super) step: usize,
    pub(super) num_tokens: usize,
}

impl Trainer {
    /// A run of `objective` on `model`. With `config.lora`, fresh adapters are attached unless
    /// `model` already has some (loaded with [`lora::load_peft`]: training continues from them).
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
        // A model that already carries adapters (a PEFT adapter to continue training) keeps them.
        if let Some(lora) = &config.lora
            && lora::adapter_tensors(&model).is_empty()
        {
            lora::attach(&mut model, lora, config.seed);
        }
        let needs_reference = match &objective {
            Objective::Dpo { loss, .. } => loss.loss.uses_reference(),
            Objective::Sft => false,
        };
        let missing = train.iter().chain(&eval).any(|e| e.reference.is_none());
        let reference_needed = needs_reference && missing;
        let (base, params, reference) = match (trains_on_host(&config, &device), &config.lora) {
            (true, lora) => host_base(model, lora.is_some(), reference_needed),
            (false, lora) => {
                // The trained tensors stay in f32 (master weights); the model computes in its
                // dtype.
                let params = params_of(trainable(&model, lora.is_some()));
                let model = model.cast(config.compute_dtype);
                let reference = reference_needed.then(|| {
                    Reference::Scorer(ReferenceScorer::new(lora::without_adapters(&model)))
                });
                (Base::Tensors(Box::new(model)), params, reference)
            }
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
            Base::HostLora(base) => {
                let mut weights = base.weights.iter().enumerate();
                let mut model = Model::from_fn(&base.config, |spec| {
                    let (_, values) = weights.next().expect("one base weight per spec");
                    Ok(Tensor::from_data(
                        TensorData::new(values.clone(), spec.shape),
                        &self.device,
                    ))
                })
                .expect("the base weights fit their specs");
                let lora = self.config.lora.as_ref().expect("a LoRA run");
                lora::attach(&mut model, lora, self.config.seed);
                lora::set_adapter_tensors(&mut model, tensors);
                model
            }
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

/// Optimizer parameters (f32 values, zero moments) of named tensors, each tensor freed once
/// copied.
fn params_of(tensors: Vec<(String, Tensor<2>)>) -> Vec<Param> {
    tensors
        .into_iter()
        .map(|(name, value)| Param::new(name, value))
        .collect()
}

/// The base, trained parameters and reference source of a host run, made from `model` one
/// tensor at a time so that its weights are never held twice: full fine-tuning turns every
/// weight into a parameter and keeps only the config; LoRA turns the adapters into parameters
/// and keeps the frozen base as f32 (which also scores the reference, adapters off).
fn host_base(
    model: Model,
    lora: bool,
    reference_needed: bool,
) -> (Base, Vec<Param>, Option<Reference>) {
    let config = model.config.clone();
    if !lora {
        let model = model.cast(DType::F32);
        let reference =
            reference_needed.then(|| Reference::Scorer(ReferenceScorer::new(model.clone())));
        let params = params_of(model.into_weights());
        return (Base::Host(Box::new(config)), params, reference);
    }
    let params = params_of(lora::adapter_tensors(&model));
    let places = lora::adapter_places(&model);
    let weights = lora::strip_adapters(model)
        .into_weights()
        .into_iter()
        .map(|(_, w)| to_f32(w))
        .collect();
    let base = HostLora {
        config,
        weights,
        places,
    };
    (
        Base::HostLora(Box::new(base)),
        params,
        reference_needed.then_some(Reference::Base),
    )
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
