//! One optimizer step: forward and backward over its micro-batches on either path (the host
//! path for full fine-tuning in f32 on the CPU, burn's autodiff otherwise), gradients summed,
//! clipped, and applied by AdamW at the scheduled learning rate.

use burn::prelude::*;
use burn::tensor::{GradientCheckpointingStrategy, TensorData};
use std::time::Instant;

use super::batching::{Accumulated, MicroBatch, micro_batches};
use super::dpo::PreferenceMetrics;
use super::optim::{HostGrad, clip_coefficient, global_norm};
use super::trainer::{Base, with_trainable};
use super::{Objective, Record, Trainer};
use crate::device::to_f32;
use crate::error::{ModelError, Result};
use crate::host::vector::written_zeros;
use crate::host::{HostAdapter, HostModel};
use crate::scoring::{Scores, score};
use crate::tensor::lora;
use crate::tensor::model::Model;

impl Trainer {
    /// β of the next step (0 for SFT).
    pub(super) fn beta(&self) -> f64 {
        match &self.objective {
            Objective::Dpo { beta, .. } => beta.at(self.step, self.total_steps()),
            Objective::Sft => 0.0,
        }
    }

    /// The loss and unclipped gradients of the next step's batch, without updating anything.
    pub fn gradients(&mut self) -> Result<(Record, Vec<(String, HostGrad)>)> {
        let step = self.step + 1;
        let batches = micro_batches(&self.config, self.train.len(), step);
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
        let batches = micro_batches(&self.config, self.train.len(), step);
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
            self.fill_reference(batch, false)?;
            let micro = MicroBatch {
                examples: batch.iter().map(|&i| &self.train[i]).collect(),
                of: batches.len(),
                sft_tokens,
                beta,
            };
            let key = self.config.seed ^ ((step as u64) << 32) ^ ((m as u64) << 16);
            match &self.base {
                Base::Host(config) => {
                    let weights = self.params.iter().map(|p| p.value.as_slice()).collect();
                    let model = HostModel::new(config, weights)?
                        .checkpointing(self.config.gradient_checkpointing);
                    self.host_backward(model, &micro, &mut acc)?
                }
                Base::HostLora(base) => {
                    let weights = base.weights.iter().map(Vec::as_slice).collect();
                    let adapters = base
                        .places
                        .iter()
                        .zip(self.params.chunks(2))
                        .enumerate()
                        .map(|(i, (place, ab))| {
                            let adapter = HostAdapter {
                                a: &ab[0].value,
                                b: &ab[1].value,
                                rank: place.rank,
                                scale: place.scale as f32,
                                dropout: place.dropout as f32,
                                seed: key.wrapping_add(i as u64),
                            };
                            (place.position, adapter)
                        })
                        .collect();
                    let model = HostModel::new(&base.config, weights)?
                        .with_adapters(adapters)
                        .checkpointing(self.config.gradient_checkpointing);
                    self.host_backward(model, &micro, &mut acc)?
                }
                Base::Tensors(model) => self.tape_backward(model, &micro, key, &mut acc)?,
            }
        }
        Ok(acc)
    }

    /// One micro-batch through `model` on the host: its loss from the host log-probs, the
    /// log-probs' gradients from that loss, the trained tensors' gradients (every weight, or the
    /// adapters) from the host backward pass.
    fn host_backward(
        &self,
        model: HostModel,
        micro: &MicroBatch,
        acc: &mut Accumulated,
    ) -> Result<()> {
        let sequences = micro.sequences(&self.objective);
        let forward = model.forward(&sequences)?;
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
        Ok(())
    }

    /// One micro-batch through burn's autodiff (with LoRA dropout keyed by `dropout_key`).
    fn tape_backward(
        &self,
        base: &Model,
        micro: &MicroBatch,
        dropout_key: u64,
        acc: &mut Accumulated,
    ) -> Result<()> {
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
        let scores = score(&policy, &micro.sequences(&self.objective), &device)?;
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
        Ok(())
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
}
