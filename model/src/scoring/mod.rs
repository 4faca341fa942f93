//! Scoring: the log-probability of every completion token of a batch of sequences and their
//! sum per sequence, on either path — the host ([`host`]) or the tensor library ([`tensor`],
//! differentiable for training) — the output layer where the trunk ran ([`head`]), and
//! [`ReferenceScorer`], which picks the faster one a model allows. This room reads models; it
//! never changes weights.

pub mod head;
pub mod host;
pub mod tensor;

use burn::tensor::DType;

pub use crate::sequence::Sequence;
pub use head::{DeviceHead, OutputHead};
pub use host::{HostHead, HostScorer};
pub use tensor::{CHUNK_LOGIT_ELEMENTS, Scorer, Scores, score};

use crate::Device;
use crate::tensor::model::Model;

/// Log-probs as plain numbers (no gradients).
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreValues {
    /// Log-prob of every completion token, sequences one after another.
    pub token_logps: Vec<f64>,
    /// Sum per sequence.
    pub sums: Vec<f64>,
}

impl ScoreValues {
    /// The values of sequences with `counts` completion tokens from their tokens' log-probs.
    pub(crate) fn of_tokens(
        token_logps: impl IntoIterator<Item = f32>,
        counts: &[usize],
    ) -> ScoreValues {
        let token_logps: Vec<f64> = token_logps.into_iter().map(f64::from).collect();
        let mut sums = Vec::with_capacity(counts.len());
        let mut start = 0;
        for &count in counts {
            sums.push(token_logps[start..start + count].iter().sum());
            start += count;
        }
        ScoreValues { token_logps, sums }
    }
}

/// A scorer for reference log-probs: on the host ([`HostScorer`]) when the model is f32 on
/// the CPU without LoRA adapters, else the model's own device and dtype ([`Scorer`]).
pub enum ReferenceScorer {
    /// Every layer on the host.
    Host(Box<HostScorer>),
    /// The trunk through the tensor library.
    Tensor(Box<Scorer>),
}

impl ReferenceScorer {
    /// The fastest scorer `model` allows.
    pub fn new(model: Model) -> ReferenceScorer {
        let host = model.embed_tokens.dtype() == DType::F32
            && crate::device::is_host(&model.embed_tokens.device())
            && crate::tensor::lora::adapter_tensors(&model).is_empty();
        if host {
            ReferenceScorer::Host(Box::new(HostScorer::new(model)))
        } else {
            ReferenceScorer::Tensor(Box::new(Scorer::new(model)))
        }
    }

    /// Scores one batch; an error names a sequence that cannot be scored.
    pub fn score(&self, batch: &[Sequence], device: &Device) -> crate::error::Result<ScoreValues> {
        match self {
            ReferenceScorer::Host(scorer) => scorer.score(batch),
            ReferenceScorer::Tensor(scorer) => scorer.score(batch, device),
        }
    }
}
