//! Scoring on the tensor path: batched, right-padded, differentiable when the weights are
//! tracked (training through burn's autodiff), and [`Scorer`] (the trunk on the model's
//! device, the output layer where [`OutputHead`] puts it) for evaluation. The lm_head,
//! log-softmax and gather run in row chunks, so the full `(tokens × vocab)` logits of a batch
//! are never held at once; on a GPU they never leave it.

use burn::prelude::*;
use burn::tensor::{DType, TensorData, activation};
use rayon::prelude::*;

use super::ScoreValues;
use super::head::OutputHead;
use crate::device::{is_host, to_f32};
use crate::error::Result;
use crate::host::vector::softmax_in_place;
use crate::sequence::Sequence;
use crate::tensor::model::Model;

/// Scores of a batch; tensors stay on the autodiff graph when the model's weights are tracked.
pub struct Scores {
    /// Log-prob of every completion token, sequences one after another: `[Σ completion_len]`.
    pub token_logps: Tensor<1>,
    /// Sum of each sequence's completion log-probs: `[sequences]`.
    pub sums: Tensor<1>,
    /// Completion length of each sequence.
    pub counts: Vec<usize>,
}

impl Scores {
    /// The scores of `sequences` from the log-probs of their completion tokens (one after
    /// another): the per-sequence sums are taken on the same graph.
    pub fn of_tokens(token_logps: Tensor<1>, sequences: &[Sequence]) -> Scores {
        let counts: Vec<usize> = sequences.iter().map(Sequence::completion_len).collect();
        let (device, dtype) = (token_logps.device(), token_logps.dtype());
        Scores {
            sums: segment_sums(token_logps.clone(), &counts, &device, dtype),
            token_logps,
            counts,
        }
    }
}

/// Logit elements per chunk (rows × vocab): 8 M floats, 32 MB.
pub const CHUNK_LOGIT_ELEMENTS: usize = 8 * 1024 * 1024;

/// A batch laid out for the model: right-padded ids, the rows of the hidden states that predict
/// completion tokens, and those tokens.
struct Prepared {
    /// Hidden states of the rows that predict completion tokens: `[Σ completion_len, hidden]`.
    rows: Tensor<2>,
    targets: Vec<i64>,
    counts: Vec<usize>,
}

/// Runs the trunk once for the whole batch and selects the rows that predict completion tokens;
/// an error names the first sequence that cannot be scored.
fn prepare(model: &Model, batch: &[Sequence], device: &Device) -> Result<Prepared> {
    for (n, seq) in batch.iter().enumerate() {
        seq.check(n, model.config.vocab_size)?;
    }
    let len = batch.iter().map(|s| s.ids.len()).max().unwrap_or(1);
    let pad = model
        .config
        .pad_token_id
        .unwrap_or(model.config.eos_token_id());
    let mut ids = Vec::with_capacity(batch.len() * len);
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (b, seq) in batch.iter().enumerate() {
        ids.extend(seq.ids.iter().map(|&i| i as i64));
        ids.extend(std::iter::repeat_n(pad as i64, len - seq.ids.len()));
        for t in seq.completion_start..seq.ids.len() {
            rows.push((b * len + t - 1) as i64);
            targets.push(seq.ids[t] as i64);
        }
    }
    let lengths: Vec<usize> = batch.iter().map(|s| s.ids.len()).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch.len(), len]), device);
    let hidden = model
        .hidden_states(ids, &lengths)
        .reshape([batch.len() * len, model.config.hidden_size]);
    let n = rows.len();
    let rows = hidden.select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), device),
    );
    Ok(Prepared {
        rows,
        targets,
        counts: batch.iter().map(Sequence::completion_len).collect(),
    })
}

/// Scores sequences in one right-padded batch, differentiably (for training).
pub fn score(model: &Model, batch: &[Sequence], device: &Device) -> Result<Scores> {
    let prepared = prepare(model, batch, device)?;
    let token_logps = chunked_token_logps(
        prepared.rows,
        &model.lm_head_weight(),
        model.config.final_logit_softcapping,
        &prepared.targets,
        device,
    );
    let dtype = token_logps.dtype();
    let sums = segment_sums(token_logps.clone(), &prepared.counts, device, dtype);
    Ok(Scores {
        token_logps,
        sums,
        counts: prepared.counts,
    })
}

/// Scores without gradients: the trunk on the model's device, then the lm_head, log-sum-exp and
/// gather by [`OutputHead`] (fused tile by tile on the host for the CPU, on the device for a GPU).
pub struct Scorer {
    model: Model,
    head: OutputHead,
}

impl Scorer {
    /// A scorer for `model` (on the CPU, copies the lm_head to the host once).
    pub fn new(model: Model) -> Scorer {
        let head = OutputHead::new(&model);
        Scorer { model, head }
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The output layer.
    pub fn head(&self) -> &OutputHead {
        &self.head
    }

    /// Scores one right-padded batch.
    pub fn score(&self, batch: &[Sequence], device: &Device) -> Result<ScoreValues> {
        let prepared = prepare(&self.model, batch, device)?;
        let token_logps = self.head.token_logps(prepared.rows, &prepared.targets);
        Ok(ScoreValues::of_tokens(token_logps, &prepared.counts))
    }
}

/// `log_softmax(rows · Wᵀ)[targets]`, a chunk of rows at a time, differentiable in `rows` and `W`.
///
/// In f32 the logits never enter the autodiff graph: they are computed without it, and the
/// log-sum-exp and softmax `P` on the host (vectorised) for the CPU, on the device for a GPU
/// (nothing of the vocabulary's width leaves it). The graph sees only the surrogate
/// `rows · (W[targets] − P W)` per row, whose gradients are exactly those of
/// `log_softmax(rows Wᵀ)[targets]` (`onehot − P` for the logits), plus a constant that makes its
/// value the log-prob. That saves the dozen whole-logits passes of a generic log-softmax and its
/// backward. Other dtypes (f64 in gradient checks) and soft-capped logits (Gemma 2:
/// `c · tanh(l / c)`) take the plain composition of tensor ops.
fn chunked_token_logps(
    rows: Tensor<2>,
    lm_head: &Tensor<2>,
    softcap: Option<f64>,
    targets: &[i64],
    device: &Device,
) -> Tensor<1> {
    // Half-precision models (bf16 weights and activations) score in f32 from here on: the
    // logits, log-sum-exp and log-probs are accumulated in f32, as mixed precision asks.
    let half = matches!(rows.dtype(), DType::BF16 | DType::F16);
    let (rows, lm_head) = if half {
        (rows.cast(DType::F32), lm_head.clone().cast(DType::F32))
    } else {
        (rows, lm_head.clone())
    };
    let lm_head = &lm_head;
    let vocab = lm_head.dims()[0];
    let rows_per_chunk = (CHUNK_LOGIT_ELEMENTS / vocab).max(1);
    let fast = lm_head.dtype() == DType::F32 && softcap.is_none();
    let head_t = if fast {
        lm_head.clone().inner().transpose()
    } else {
        lm_head.clone().transpose()
    };
    let pieces: Vec<Tensor<1>> = targets
        .chunks(rows_per_chunk)
        .enumerate()
        .map(|(c, targets)| {
            let chunk = rows.clone().narrow(0, c * rows_per_chunk, targets.len());
            if fast {
                surrogate_token_logps(chunk, lm_head, &head_t, targets, device)
            } else {
                composed_token_logps(chunk, &head_t, softcap, targets, device)
            }
        })
        .collect();
    Tensor::cat(pieces, 0)
}

/// `log_softmax(cap(rows · head_t))[targets]` as tensor ops.
fn composed_token_logps(
    rows: Tensor<2>,
    head_t: &Tensor<2>,
    softcap: Option<f64>,
    targets: &[i64],
    device: &Device,
) -> Tensor<1> {
    let n = targets.len();
    let target = Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), device);
    let mut logits = rows.matmul(head_t.clone());
    if let Some(cap) = softcap {
        logits = logits.div_scalar(cap).tanh().mul_scalar(cap);
    }
    activation::log_softmax(logits, 1)
        .gather(1, target)
        .reshape([n])
}

/// The surrogate described at [`chunked_token_logps`], for one chunk of f32 rows.
fn surrogate_token_logps(
    rows: Tensor<2>,
    lm_head: &Tensor<2>,
    head_t: &Tensor<2>,
    targets: &[i64],
    device: &Device,
) -> Tensor<1> {
    let n = targets.len();
    let logits = rows.clone().inner().matmul(head_t.clone());
    let (probs, values) = if is_host(device) {
        softmax_on_host(logits, targets, device)
    } else {
        softmax_on_device(logits, targets, device)
    };
    let target = Tensor::<1, Int>::from_data(TensorData::new(targets.to_vec(), [n]), device);
    let direction = lm_head.clone().select(0, target) - probs.matmul(lm_head.clone());
    let surrogate = (rows * direction).sum_dim(1).reshape([n]);
    let offsets = values - surrogate.clone().inner();
    surrogate + offsets
}

/// `(softmax(logits), log_softmax(logits)[targets])` of `[n, vocab]` logits computed outside
/// autodiff, both outside autodiff: vectorised on the host, one row per thread.
fn softmax_on_host(logits: Tensor<2>, targets: &[i64], device: &Device) -> (Tensor<2>, Tensor<1>) {
    let [n, vocab] = logits.dims();
    let mut probs = to_f32(logits);
    let mut values = vec![0f32; n];
    probs
        .par_chunks_mut(vocab)
        .zip(values.par_iter_mut())
        .zip(targets.par_iter())
        .for_each(|((row, value), &target)| {
            let logit = row[target as usize];
            *value = logit - softmax_in_place(row);
        });
    (
        Tensor::<2>::from_data(TensorData::new(probs, [n, vocab]), device).inner(),
        Tensor::<1>::from_data(TensorData::new(values, [n]), device).inner(),
    )
}

/// [`softmax_on_host`] as tensor operations on the logits' device.
fn softmax_on_device(
    logits: Tensor<2>,
    targets: &[i64],
    device: &Device,
) -> (Tensor<2>, Tensor<1>) {
    let n = targets.len();
    let target = Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), device);
    let logps = activation::log_softmax(logits, 1);
    let values = logps.clone().gather(1, target).reshape([n]);
    (logps.exp(), values)
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
