//! Preference losses (Rafailov et al. 2023 and its variants) as TRL's `DPOTrainer` computes them,
//! with TRL's metrics. Formulas, with `Δ = (π_c − π_r) − (ref_c − ref_r)` the difference of
//! log-ratios and σ the logistic function:
//!
//! | loss | per pair |
//! |---|---|
//! | `sigmoid` | `−log σ(βΔ)` |
//! | `hinge` | `max(0, 1 − βΔ)` |
//! | `ipo` | `(Δ − 1/(2β))²`, log-probs averaged per completion token |
//! | `robust` | `(−(1−ε) log σ(βΔ) + ε log σ(−βΔ)) / (1 − 2ε)` |
//! | `cdpo` | `−(1−ε) log σ(βΔ) − ε log σ(−βΔ)` |
//! | `sigmoid_norm` | `−log σ(βΔ)`, log-probs averaged per completion token |
//! | `simpo` | `−log σ(β(π̄_c − π̄_r) − γ)`, averaged log-probs, no reference |
//! | `reference_free` | `−log σ(β(π_c − π_r))` |
//!
//! The loss of a batch is the mean over its pairs. Rewards are `β(π − ref)` with the same
//! (summed or averaged) log-probs the loss uses; `logps/*` are the summed policy log-probs.

use burn::prelude::*;
use burn::tensor::{TensorData, activation};
use serde::{Deserialize, Serialize};

use crate::device::to_f64;

/// Which preference loss.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// DPO's logistic loss.
    #[default]
    Sigmoid,
    /// Identity preference optimisation (Azar et al. 2023).
    Ipo,
    /// SLiC's hinge loss.
    Hinge,
    /// Robust DPO for noisy labels (Chowdhury et al. 2024), with `label_smoothing`.
    Robust,
    /// Conservative DPO, with `label_smoothing`.
    Cdpo,
    /// DPO on length-normalised log-probs.
    SigmoidNorm,
    /// SimPO (Meng et al. 2024): length-normalised, margin `simpo_gamma`, no reference.
    Simpo,
    /// DPO without a reference model.
    ReferenceFree,
}

impl LossType {
    /// Whether log-probs are averaged per completion token.
    pub fn length_normalized(self) -> bool {
        matches!(
            self,
            LossType::Ipo | LossType::SigmoidNorm | LossType::Simpo
        )
    }

    /// Whether the loss uses reference log-probs.
    pub fn uses_reference(self) -> bool {
        !matches!(self, LossType::Simpo | LossType::ReferenceFree)
    }
}

/// A loss and its fixed hyper-parameters (β may change per step, so it is passed separately).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossConfig {
    /// Which loss.
    pub loss: LossType,
    /// ε of `robust` and `cdpo`, in [0, 0.5).
    pub label_smoothing: f64,
    /// γ of `simpo`.
    pub simpo_gamma: f64,
}

impl LossConfig {
    /// Checks the hyper-parameters.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(format!(
                "label_smoothing must be in [0, 0.5), got {}",
                self.label_smoothing
            ));
        }
        if !self.simpo_gamma.is_finite() {
            return Err("simpo_gamma must be a finite number".into());
        }
        Ok(())
    }
}

/// Log-probs of a batch of pairs: the policy's on the autodiff graph, the reference's as numbers.
pub struct PairLogps {
    /// Summed policy log-probs of the chosen completions, `[pairs]`.
    pub policy_chosen: Tensor<1>,
    /// Summed policy log-probs of the rejected completions, `[pairs]`.
    pub policy_rejected: Tensor<1>,
    /// Summed reference log-probs `[chosen, rejected]` per pair (ignored by reference-free losses).
    pub reference: Vec<[f64; 2]>,
    /// Completion lengths `[chosen, rejected]` per pair.
    pub lengths: Vec<[usize; 2]>,
}

/// TRL's metrics of one batch (means over pairs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PreferenceMetrics {
    /// The loss.
    pub loss: f64,
    /// `β(π_c − ref_c)`.
    pub rewards_chosen: f64,
    /// `β(π_r − ref_r)`.
    pub rewards_rejected: f64,
    /// Fraction of pairs whose chosen reward exceeds the rejected one.
    pub rewards_accuracies: f64,
    /// Chosen minus rejected reward.
    pub rewards_margins: f64,
    /// Summed policy log-probs of chosen completions.
    pub logps_chosen: f64,
    /// Summed policy log-probs of rejected completions.
    pub logps_rejected: f64,
}

impl PreferenceMetrics {
    /// The weighted mean of several batches' metrics (weights: pairs per batch).
    pub fn weighted_mean(parts: &[(PreferenceMetrics, usize)]) -> PreferenceMetrics {
        let total: usize = parts.iter().map(|p| p.1).sum();
        let mean = |f: fn(&PreferenceMetrics) -> f64| {
            parts.iter().map(|(m, n)| f(m) * *n as f64).sum::<f64>() / total.max(1) as f64
        };
        PreferenceMetrics {
            loss: mean(|m| m.loss),
            rewards_chosen: mean(|m| m.rewards_chosen),
            rewards_rejected: mean(|m| m.rewards_rejected),
            rewards_accuracies: mean(|m| m.rewards_accuracies),
            rewards_margins: mean(|m| m.rewards_margins),
            logps_chosen: mean(|m| m.logps_chosen),
            logps_rejected: mean(|m| m.logps_rejected),
        }
    }
}

/// The mean loss of a batch (a one-element tensor on the policy's graph) and its metrics.
pub fn preference_loss(
    config: &LossConfig,
    beta: f64,
    batch: &PairLogps,
) -> (Tensor<1>, PreferenceMetrics) {
    let device = batch.policy_chosen.device();
    let dtype = batch.policy_chosen.dtype();
    let n = batch.lengths.len();
    let normalized = config.loss.length_normalized();
    let column =
        |values: Vec<f64>| Tensor::<1>::from_data(TensorData::new(values, [n]), (&device, dtype));
    let per_token = |side: usize| {
        column(
            batch
                .lengths
                .iter()
                .map(|l| {
                    if normalized {
                        1.0 / l[side] as f64
                    } else {
                        1.0
                    }
                })
                .collect(),
        )
    };
    let reference = |side: usize| {
        column(
            batch
                .reference
                .iter()
                .zip(&batch.lengths)
                .map(|(r, l)| match (config.loss.uses_reference(), normalized) {
                    (false, _) => 0.0,
                    (true, true) => r[side] / l[side] as f64,
                    (true, false) => r[side],
                })
                .collect(),
        )
    };
    let chosen = batch.policy_chosen.clone() * per_token(0);
    let rejected = batch.policy_rejected.clone() * per_token(1);
    let chosen_ratio = chosen - reference(0);
    let rejected_ratio = rejected - reference(1);
    let delta = chosen_ratio.clone() - rejected_ratio.clone();
    let losses = pair_losses(config, beta, delta);
    let loss = losses.mean();

    let rewards_chosen = to_f64(chosen_ratio.detach().mul_scalar(beta));
    let rewards_rejected = to_f64(rejected_ratio.detach().mul_scalar(beta));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n.max(1) as f64;
    let margins: Vec<f64> = rewards_chosen
        .iter()
        .zip(&rewards_rejected)
        .map(|(c, r)| c - r)
        .collect();
    let metrics = PreferenceMetrics {
        loss: to_f64(loss.clone().detach())[0],
        rewards_chosen: mean(&rewards_chosen),
        rewards_rejected: mean(&rewards_rejected),
        rewards_accuracies: margins.iter().filter(|m| **m > 0.0).count() as f64 / n.max(1) as f64,
        rewards_margins: mean(&margins),
        logps_chosen: mean(&to_f64(batch.policy_chosen.clone().detach())),
        logps_rejected: mean(&to_f64(batch.policy_rejected.clone().detach())),
    };
    (loss, metrics)
}

/// The loss of each pair from its log-ratio difference `delta`.
fn pair_losses(config: &LossConfig, beta: f64, delta: Tensor<1>) -> Tensor<1> {
    let eps = config.label_smoothing;
    let log_sigmoid = |x: Tensor<1>| activation::log_sigmoid(x);
    let scaled = delta.clone().mul_scalar(beta);
    match config.loss {
        LossType::Sigmoid | LossType::SigmoidNorm | LossType::ReferenceFree => {
            log_sigmoid(scaled).neg()
        }
        LossType::Hinge => activation::relu(scaled.neg().add_scalar(1.0)),
        LossType::Ipo => delta.sub_scalar(1.0 / (2.0 * beta)).square(),
        LossType::Robust => (log_sigmoid(scaled.clone()).mul_scalar(-(1.0 - eps))
            + log_sigmoid(scaled.neg()).mul_scalar(eps))
        .div_scalar(1.0 - 2.0 * eps),
        LossType::Cdpo => {
            log_sigmoid(scaled.clone()).mul_scalar(-(1.0 - eps))
                - log_sigmoid(scaled.neg()).mul_scalar(eps)
        }
        LossType::Simpo => log_sigmoid(scaled.sub_scalar(config.simpo_gamma)).neg(),
    }
}
