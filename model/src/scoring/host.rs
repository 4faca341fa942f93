//! Scoring on the host path: [`HostScorer`] runs every layer on host slices in f32 (the
//! fastest reference scorer on the CPU), and [`HostHead`] is the output layer on the host that
//! the tensor path's [`super::Scorer`] and generation use.

use rayon::prelude::*;

use super::ScoreValues;
use crate::arch::MistralConfig;
use crate::device::to_f32;
use crate::host::HostMistral;
use crate::host::head::HeadView;
use crate::sequence::Sequence;
use crate::tensor::mistral::Mistral;

/// Scores without gradients entirely on the host, in f32 ([`HostMistral::token_logps`]).
pub struct HostScorer {
    config: MistralConfig,
    weights: Vec<Vec<f32>>,
}

impl HostScorer {
    /// Copies the model's weights to the host (the model itself is dropped).
    pub fn new(model: Mistral) -> HostScorer {
        let config = model.config.clone();
        let weights = model
            .weights()
            .into_iter()
            .map(|(_, w)| to_f32(w))
            .collect();
        HostScorer { config, weights }
    }

    /// Scores one batch (the sequences need no padding).
    pub fn score(&self, batch: &[Sequence]) -> ScoreValues {
        let weights = self.weights.iter().map(Vec::as_slice).collect();
        let logps = HostMistral::new(&self.config, weights).token_logps(batch);
        let counts: Vec<usize> = batch.iter().map(Sequence::completion_len).collect();
        ScoreValues::of_tokens(logps, &counts)
    }
}

/// The output layer on the host: `log_softmax(h · Wᵀ)[target]` for rows of hidden states.
pub struct HostHead {
    /// `[vocab, hidden]`, row-major.
    weight: Vec<f32>,
    vocab: usize,
    hidden: usize,
}

impl HostHead {
    /// Copies the model's lm_head.
    pub fn new(model: &Mistral) -> HostHead {
        let weight = model.lm_head_weight();
        let [vocab, hidden] = weight.dims();
        let weight = to_f32(weight);
        HostHead {
            weight,
            vocab,
            hidden,
        }
    }

    /// The logits `W·h` of one hidden state.
    pub fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        self.weight
            .par_chunks(self.hidden)
            .map(|w| w.iter().zip(hidden).map(|(a, b)| a * b).sum())
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
        }
    }
}
