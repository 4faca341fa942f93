//! Which examples each optimizer step sees: a seeded shuffle per epoch cut into micro-batches,
//! `grad_accum` of them per step, and what one micro-batch's loss needs.

use burn::prelude::*;

use super::dpo::{LossConfig, PairLogps, PreferenceMetrics, preference_loss};
use super::optim::HostGrad;
use super::{Example, Objective, TrainConfig};
use crate::device::to_f64;
use crate::rng::shuffle;
use crate::scoring::{Scores, Sequence};

/// The micro-batches (example indices) of optimizer step `step` (1-based) over `n` examples:
/// epoch `e`'s order is a shuffle seeded by `seed + e`.
pub fn micro_batches(config: &TrainConfig, n: usize, step: usize) -> Vec<Vec<usize>> {
    let per_epoch = config.steps_per_epoch(n);
    let (epoch, local) = ((step - 1) / per_epoch, (step - 1) % per_epoch);
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, config.seed.wrapping_add(epoch as u64));
    let micro: Vec<&[usize]> = order.chunks(config.batch_size).collect();
    let first = local * config.grad_accum;
    let last = (first + config.grad_accum).min(micro.len());
    micro[first..last].iter().map(|m| m.to_vec()).collect()
}

/// Gradients and metrics of one optimizer step before the update.
pub(super) struct Accumulated {
    pub(super) grads: Vec<HostGrad>,
    pub(super) preference: Vec<(PreferenceMetrics, usize)>,
    pub(super) sft_loss: f64,
    pub(super) tokens: usize,
}

impl Accumulated {
    pub(super) fn loss(&self, objective: &Objective) -> f64 {
        match objective {
            Objective::Dpo { .. } => PreferenceMetrics::weighted_mean(&self.preference).loss,
            Objective::Sft => self.sft_loss,
        }
    }
}

/// One micro-batch of a step: its examples and what its loss needs.
pub(super) struct MicroBatch<'t> {
    pub(super) examples: Vec<&'t Example>,
    /// Micro-batches in the step (each contributes its mean loss over this many).
    pub(super) of: usize,
    /// Completion tokens of the whole step (SFT's loss is their mean).
    pub(super) sft_tokens: usize,
    pub(super) beta: f64,
}

impl MicroBatch<'_> {
    /// The sequences the policy scores: both completions of each pair for DPO, the chosen
    /// one for SFT.
    pub(super) fn sequences(&self, objective: &Objective) -> Vec<Sequence> {
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
    pub(super) fn loss(
        &self,
        objective: &Objective,
        scores: Scores,
        acc: &mut Accumulated,
    ) -> Tensor<1> {
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
pub(super) fn dpo_loss(
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
pub(super) fn pair_tokens(examples: &[&Example]) -> usize {
    examples
        .iter()
        .map(|e| 2 * e.pair.prompt_ids.len() + e.pair.chosen_ids.len() + e.pair.rejected_ids.len())
        .sum()
}
