//! Learning-rate and β schedules.
//!
//! Learning-rate multipliers are the ones transformers' `get_scheduler` gives (a `LambdaLR` whose
//! step `k` is the number of optimizer steps already taken: the first update uses `k = 0`).
//! β schedules are flow's own: no DPO trainer offers one.

use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// transformers' learning-rate scheduler types.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduler {
    /// Always 1.
    Constant,
    /// Linear warm-up, then 1.
    ConstantWithWarmup,
    /// Linear warm-up, then linear decay to 0 at the last step.
    #[default]
    Linear,
    /// Linear warm-up, then a half cosine down to 0.
    Cosine,
    /// Linear warm-up, then one cosine cycle (transformers' default `num_cycles = 1`, so one hard restart at the end).
    CosineWithRestarts,
}

impl LrScheduler {
    /// The multiplier of the base learning rate after `step` optimizer steps.
    pub fn multiplier(self, step: usize, warmup: usize, total: usize) -> f64 {
        let (step_f, warmup_f, total_f) = (step as f64, warmup as f64, total as f64);
        if self != LrScheduler::Constant && step < warmup {
            return step_f / warmup_f.max(1.0);
        }
        let progress = (step_f - warmup_f) / (total_f - warmup_f).max(1.0);
        match self {
            LrScheduler::Constant | LrScheduler::ConstantWithWarmup => 1.0,
            LrScheduler::Linear => ((total_f - step_f) / (total_f - warmup_f).max(1.0)).max(0.0),
            LrScheduler::Cosine => (0.5 * (1.0 + (PI * progress).cos())).max(0.0),
            LrScheduler::CosineWithRestarts => {
                if progress >= 1.0 {
                    0.0
                } else {
                    (0.5 * (1.0 + (PI * (progress % 1.0)).cos())).max(0.0)
                }
            }
        }
    }
}

/// Warm-up steps from a ratio of the total, as transformers rounds it (up).
pub fn warmup_from_ratio(ratio: f64, total: usize) -> usize {
    (ratio * total as f64).ceil() as usize
}

/// The shape of a β schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BetaShape {
    /// `from` throughout.
    Constant,
    /// Straight from `from` to `to` over `steps`.
    Linear,
    /// A half cosine from `from` to `to` over `steps`.
    Cosine,
    /// Straight lines between `points`.
    Piecewise,
}

/// β per optimizer step: a constant or a schedule.
#[derive(Clone, Debug, PartialEq)]
pub enum BetaSchedule {
    /// The same β every step.
    Constant(f64),
    /// `from` → `to` over `steps` (the whole run when unset), then `to`.
    Ramp {
        /// Linear or cosine.
        shape: BetaShape,
        /// β at step 0.
        from: f64,
        /// β from `steps` on.
        to: f64,
        /// Length of the ramp; `None`: the whole run.
        steps: Option<usize>,
    },
    /// Linear interpolation between `(step, β)` points (sorted by step), constant outside them.
    Piecewise(Vec<(usize, f64)>),
}

impl BetaSchedule {
    /// β for the update after `step` optimizer steps, of `total`.
    pub fn at(&self, step: usize, total: usize) -> f64 {
        match self {
            BetaSchedule::Constant(beta) => *beta,
            BetaSchedule::Ramp {
                shape,
                from,
                to,
                steps,
            } => {
                let length = steps.unwrap_or(total.saturating_sub(1)).max(1);
                let t = (step as f64 / length as f64).min(1.0);
                let fraction = match shape {
                    BetaShape::Cosine => 0.5 * (1.0 - (PI * t).cos()),
                    BetaShape::Constant => 0.0,
                    _ => t,
                };
                from + (to - from) * fraction
            }
            BetaSchedule::Piecewise(points) => piecewise(points, step),
        }
    }

    /// Every β the schedule can take is positive (checked before training).
    pub fn check(&self) -> Result<(), String> {
        let values: Vec<f64> = match self {
            BetaSchedule::Constant(beta) => vec![*beta],
            BetaSchedule::Ramp { from, to, .. } => vec![*from, *to],
            BetaSchedule::Piecewise(points) => {
                if points.is_empty() {
                    return Err("a piecewise β schedule needs at least one point".into());
                }
                if points.windows(2).any(|w| w[0].0 >= w[1].0) {
                    return Err("β schedule points must have increasing steps".into());
                }
                points.iter().map(|p| p.1).collect()
            }
        };
        match values.iter().find(|b| !(b.is_finite() && **b > 0.0)) {
            Some(bad) => Err(format!("β must be a positive number, got {bad}")),
            None => Ok(()),
        }
    }
}

fn piecewise(points: &[(usize, f64)], step: usize) -> f64 {
    let (first, last) = (points[0], points[points.len() - 1]);
    if step <= first.0 {
        return first.1;
    }
    if step >= last.0 {
        return last.1;
    }
    let right = points.iter().position(|p| p.0 >= step).expect("inside");
    let ((s0, b0), (s1, b1)) = (points[right - 1], points[right]);
    b0 + (b1 - b0) * (step - s0) as f64 / (s1 - s0) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_schedules_ramp_and_interpolate() {
        let linear = BetaSchedule::Ramp {
            shape: BetaShape::Linear,
            from: 0.5,
            to: 0.1,
            steps: Some(4),
        };
        let values: Vec<f64> = (0..6).map(|s| linear.at(s, 10)).collect();
        let expected = [0.5, 0.4, 0.3, 0.2, 0.1, 0.1];
        for (v, e) in values.iter().zip(expected) {
            assert!((v - e).abs() < 1e-12, "{values:?}");
        }
        let cosine = BetaSchedule::Ramp {
            shape: BetaShape::Cosine,
            from: 1.0,
            to: 0.0,
            steps: None,
        };
        assert_eq!(
            (cosine.at(0, 11), cosine.at(10, 11)),
            (1.0, 0.0),
            "whole run"
        );
        assert!((cosine.at(5, 11) - 0.5).abs() < 1e-12);
        let points = BetaSchedule::Piecewise(vec![(2, 0.1), (6, 0.5), (8, 0.3)]);
        let values: Vec<f64> = [0, 2, 4, 6, 7, 8, 20]
            .iter()
            .map(|&s| points.at(s, 20))
            .collect();
        let expected = [0.1, 0.1, 0.3, 0.5, 0.4, 0.3, 0.3];
        for (v, e) in values.iter().zip(expected) {
            assert!((v - e).abs() < 1e-12, "{values:?}");
        }
        assert!(BetaSchedule::Constant(-0.1).check().is_err());
        assert!(
            BetaSchedule::Piecewise(vec![(3, 0.1), (3, 0.2)])
                .check()
                .is_err()
        );
    }
}
