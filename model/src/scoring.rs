//! Batched, right-padded scoring: the log-probability of every completion token and their sum
//! per sequence. The lm_head, log-softmax and gather run in row chunks, so the full
//! `(tokens × vocab)` logits of a batch are never held at once.

use burn::prelude::*;
use burn::tensor::{DType, TensorData, activation};

use crate::mistral::{Mistral, attention_mask};

/// A sequence to score: prompt and completion ids, and where the completion starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    /// Prompt ids followed by completion ids.
    pub ids: Vec<u32>,
    /// Index of the first completion token (≥ 1: the first token has no prediction).
    pub completion_start: usize,
}

impl Sequence {
    /// Number of scored (completion) tokens.
    pub fn completion_len(&self) -> usize {
        self.ids.len() - self.completion_start
    }
}

/// Scores of a batch; tensors stay on the autodiff graph when the model's weights are tracked.
pub struct Scores {
    /// Log-prob of every completion token, sequences one after another: `[Σ completion_len]`.
    pub token_logps: Tensor<1>,
    /// Sum of each sequence's completion log-probs: `[sequences]`.
    pub sums: Tensor<1>,
    /// Completion length of each sequence.
    pub counts: Vec<usize>,
}

/// Logit elements per chunk (rows × vocab): 8 M floats, 32 MB.
pub const CHUNK_LOGIT_ELEMENTS: usize = 8 * 1024 * 1024;

/// Scores sequences in one right-padded batch.
pub fn score(model: &Mistral, batch: &[Sequence], device: &Device) -> Scores {
    let len = batch.iter().map(|s| s.ids.len()).max().unwrap_or(1);
    let pad = model
        .config
        .pad_token_id
        .unwrap_or(model.config.eos_token_id);
    let mut ids = Vec::with_capacity(batch.len() * len);
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (b, seq) in batch.iter().enumerate() {
        assert!(
            seq.completion_start >= 1 && seq.completion_start < seq.ids.len(),
            "a scored sequence needs a prompt token and a completion token"
        );
        ids.extend(seq.ids.iter().map(|&i| i as i64));
        ids.extend(std::iter::repeat_n(pad as i64, len - seq.ids.len()));
        for t in seq.completion_start..seq.ids.len() {
            rows.push((b * len + t - 1) as i64);
            targets.push(seq.ids[t] as i64);
        }
    }
    let lengths: Vec<usize> = batch.iter().map(|s| s.ids.len()).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch.len(), len]), device);
    let dtype = model.embed_tokens.dtype();
    let mask = attention_mask(&lengths, len, model.config.sliding_window, device, dtype);
    let hidden = model.hidden_states(ids, &mask);
    let hidden = hidden.reshape([batch.len() * len, model.config.hidden_size]);
    let token_logps = chunked_token_logps(hidden, &model.lm_head_weight(), &rows, &targets, device);
    let counts: Vec<usize> = batch.iter().map(Sequence::completion_len).collect();
    let sums = segment_sums(token_logps.clone(), &counts, device, dtype);
    Scores {
        token_logps,
        sums,
        counts,
    }
}

/// `log_softmax(hidden[rows] · Wᵀ)[targets]`, `rows_per_chunk` rows at a time.
fn chunked_token_logps(
    hidden: Tensor<2>,
    lm_head: &Tensor<2>,
    rows: &[i64],
    targets: &[i64],
    device: &Device,
) -> Tensor<1> {
    let vocab = lm_head.dims()[0];
    let rows_per_chunk = (CHUNK_LOGIT_ELEMENTS / vocab).max(1);
    let head_t = lm_head.clone().transpose();
    let pieces: Vec<Tensor<1>> = rows
        .chunks(rows_per_chunk)
        .zip(targets.chunks(rows_per_chunk))
        .map(|(rows, targets)| {
            let n = rows.len();
            let index = Tensor::<1, Int>::from_data(TensorData::new(rows.to_vec(), [n]), device);
            let target =
                Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), device);
            let logits = hidden.clone().select(0, index).matmul(head_t.clone());
            activation::log_softmax(logits, 1)
                .gather(1, target)
                .reshape([n])
        })
        .collect();
    Tensor::cat(pieces, 0)
}

/// Sums consecutive segments of `values` with the given lengths (a `[segments, n] · [n]` product).
fn segment_sums(values: Tensor<1>, counts: &[usize], device: &Device, dtype: DType) -> Tensor<1> {
    let n: usize = counts.iter().sum();
    let mut indicator = vec![0f32; counts.len() * n];
    let mut start = 0;
    for (s, &count) in counts.iter().enumerate() {
        indicator[s * n + start..s * n + start + count].fill(1.0);
        start += count;
    }
    let indicator = Tensor::<2>::from_data(
        TensorData::new(indicator, [counts.len(), n]),
        (device, dtype),
    );
    indicator
        .matmul(values.reshape([n, 1]))
        .reshape([counts.len()])
}

/// Reads a tensor back as `f64`s, whatever its float dtype.
pub fn to_f64<const D: usize>(tensor: Tensor<D>) -> Vec<f64> {
    tensor
        .into_data_dtype(DType::F64)
        .try_to_vec::<f64>()
        .expect("a float tensor converts to f64")
}
