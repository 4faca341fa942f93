//! Scoring on the host path: [`HostScorer`] runs every layer on host slices in f32 (the
//! fastest reference scorer on the CPU), and [`HostHead`] is the output layer on the host that
//! the tensor path's [`super::Scorer`] and generation use.

use rayon::prelude::*;

use super::ScoreValues;
use crate::arch::ModelConfig;
use crate::device::to_f32;
use crate::error::Result;
use crate::host::HostModel;
use crate::host::head::HeadView;
use crate::sequence::Sequence;
use crate::tensor::model::Model;

/// Scores without gradients entirely on the host, in f32 ([`HostModel::token_logps`]).
pub struct HostScorer {
    config: ModelConfig,
    weights: Vec<Vec<f32>>,
}

impl HostScorer {
    /// Copies the model's weights to the host (the model itself is dropped).
    pub fn new(model: Model) -> HostScorer {
        let config = model.config.clone();
        let weights = model
            .weights()
            .into_iter()
            .map(|(_, w)| to_f32(w))
            .collect();
        HostScorer { config, weights }
    }

    /// Scores one batch (the sequences need no padding).
    pub fn score(&self, batch: &[Sequence]) -> Result<ScoreValues> {
        let weights = self.weights.iter().map(Vec::as_slice).collect();
        let logps = HostModel::new(&self.config, weights)?.token_logps(batch)?;
        let counts: Vec<usize> = batch.iter().map(Sequence::completion_len).collect();
        Ok(ScoreValues::of_tokens(logps, &counts))
    }
}

/// The output layer on the host: `log_softmax(h · Wᵀ)[target]` for rows of hidden states.
pub struct HostHead {
    /// `[vocab, hidden]`, row-major.
    weight: Vec<f32>,
    vocab: usize,
    hidden: usize,
    softcap: Option<f32>,
}

impl HostHead {
    /// Copies the model's lm_head.
    pub fn new(model: &Model) -> HostHead {
        let weight = model.lm_head_weight();
        let [vocab, hidden] = weight.dims();
        let weight = to_f32(weight);
        HostHead {
            weight,
            vocab,
            hidden,
            softcap: model.config.final_logit_softcapping.map(|c| c as f32),
        }
    }

    /// The logits `W·h` of one hidden state (soft-capped where the family does it).
    pub fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        self.weight
            .par_chunks(self.hidden)
            .map(|w| {
                let logit: f32 = w.iter().zip(hidden).map(|(a, b)| a * b).sum();
                match self.softcap {
                    Some(cap) => (logit / cap).tanh() * cap,
                    None => logit,
                }
            })
            .collect()
    }

    /// Log-prob of `targets[i]` under row `i` of `rows` (`[n, hidden]` row-major); see
    /// [`HeadView::token_logps`].
    pub fn token_logps(&self, rows: &[f32], targets: &[i64]) -> Vec<f32> {
        self.view().token_logps(rows, targets)
    }

    /// The weight borrowed as a [`HeadView`].
    pub fn view(&self) -> HeadView<'_> {
        HeadView {
            weight: &self.weight,
            vocab: self.vocab,
            hidden: self.hidden,
            softcap: self.softcap,
        }
    }
}
