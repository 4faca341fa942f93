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
    config.compute_dtype == DType::F32 && *device == crate::device::cpu() && !config.autodiff
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
        // The trained tensors stay in f32 (master weights); the model computes in its dtype.
        let params = trainable(&model, config.lora.is_some())
            .into_iter()
            .map(|(name, value)| Param::new(name, value))
            .collect();
        let model = model.cast(config.compute_dtype);
        let reference_needed = needs_reference && missing;
        let (base, reference) = match (trains_on_host(&config, &device), &config.lora) {
            (true, Some(_)) => {
                let base = HostLora {
                    config: model.config.clone(),
                    places: lora::adapter_places(&model),
                    weights: lora::without_adapters(&model)
                        .weights()
                        .into_iter()
                        .map(|(_, w)| to_f32(w))
                        .collect(),
                };
                let reference = reference_needed.then_some(Reference::Base);
                (Base::HostLora(Box::new(base)), reference)
            }
            (host, _) => {
                let reference = reference_needed.then(|| {
                    Reference::Scorer(ReferenceScorer::new(lora::without_adapters(&model)))
                });
                let base = match host {
                    true => Base::Host(Box::new(model.config.clone())),
                    false => Base::Tensors(Box::new(model)),
                };
                (base, reference)
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
