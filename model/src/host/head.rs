//! The output layer on the host: `log_softmax(h · Wᵀ)[target]` for rows of hidden states (logits
//! soft-capped where the family does it), fused
//! over L2-sized vocabulary tiles (no full logits in memory), and its backward pass (from logits
//! the forward pass kept, or recomputed block by block).

use rayon::prelude::*;

use super::attention::soft_cap;
use super::vector::{Layout, exp_shifted_scaled, log_add_exp, log_sum_exp, matmul};

/// Rows of the output layer's logits recomputed at once in the backward pass (256 × 32,000
/// f32 = 32 MB).
const HEAD_BACKWARD_ROWS: usize = 256;

/// Most logits (rows × vocab) the forward pass keeps for the backward pass: 48 Mi f32 = 192
/// MiB, a batch of 1,536 completion tokens at a vocabulary of 32,768. Beyond that they are
/// computed again, which costs one more `rows × hidden × vocab` product.
const KEPT_LOGITS: usize = 48 << 20;

/// An output layer's `[vocab, hidden]` row-major weight, borrowed from wherever it is kept.
#[derive(Clone, Copy)]
pub struct HeadView<'a> {
    /// `[vocab, hidden]`, row-major.
    pub weight: &'a [f32],
    /// Vocabulary size.
    pub vocab: usize,
    /// Width of the hidden states.
    pub hidden: usize,
    /// Logits become `c · tanh(l / c)` (Gemma 2's `final_logit_softcapping`).
    pub softcap: Option<f32>,
}

impl HeadView<'_> {
    /// Log-prob of `targets[i]` under row `i` of `rows` (`[n, hidden]` row-major).
    pub fn token_logps(&self, rows: &[f32], targets: &[i64]) -> Vec<f32> {
        let (target_logits, lse) = self.target_logits_and_lse(rows, targets);
        target_logits.iter().zip(&lse).map(|(t, l)| t - l).collect()
    }

    /// The logit of `targets[i]` and the log-sum-exp of all logits of row `i`.
    ///
    /// Fused: each thread takes a block of rows and walks the vocabulary in tiles small enough
    /// to stay in its core's L2 cache, folding every logits tile into a running log-sum-exp
    /// right after the GEMM wrote it, so no logits ever travel to memory and back.
    pub fn target_logits_and_lse(&self, rows: &[f32], targets: &[i64]) -> (Vec<f32>, Vec<f32>) {
        let n = targets.len();
        let block = n
            .div_ceil(rayon::current_num_threads())
            .clamp(1, HEAD_ROW_BLOCK);
        rows.par_chunks(block * self.hidden)
            .zip(targets.par_chunks(block))
            .flat_map_iter(|(rows, targets)| self.block_target_logits_and_lse(rows, targets))
            .unzip()
    }

    /// [`HeadView::target_logits_and_lse`] of one block of rows, on the calling thread.
    fn block_target_logits_and_lse(&self, rows: &[f32], targets: &[i64]) -> Vec<(f32, f32)> {
        let m = targets.len();
        let mut tile = vec![0f32; m * HEAD_VOCAB_TILE];
        let mut lse = vec![f32::NEG_INFINITY; m];
        let mut target_logits = vec![0f32; m];
        for first in (0..self.vocab).step_by(HEAD_VOCAB_TILE) {
            let width = HEAD_VOCAB_TILE.min(self.vocab - first);
            let weight = Layout::columns(width, self.hidden, self.hidden, first * self.hidden);
            matmul(
                (&mut tile, Layout::dense(m, width)),
                (rows, Layout::dense(m, self.hidden)),
                (self.weight, weight.t()),
                false,
                false,
            );
            for (i, row) in tile[..m * width].chunks_exact_mut(width).enumerate() {
                if let Some(cap) = self.softcap {
                    soft_cap(row, cap, None);
                }
                lse[i] = log_add_exp(lse[i], log_sum_exp(row));
                if let Some(offset) = (targets[i] as usize).checked_sub(first)
                    && offset < width
                {
                    target_logits[i] = row[offset];
                }
            }
        }
        target_logits.into_iter().zip(lse).collect()
    }
}

/// Rows per block of the fused host head (a block's tile is rows × [`HEAD_VOCAB_TILE`]).
const HEAD_ROW_BLOCK: usize = 256;

/// Vocabulary entries per logits tile: 256 rows × 1024 f32 = 1 MiB, inside one core's L2.
const HEAD_VOCAB_TILE: usize = 1024;

/// The output layer's part of the backward pass: its rows, targets, log-sum-exps, the logits
/// when the forward pass kept them, and the gradient of the loss with respect to each row's
/// log-prob.
pub(super) struct HeadGradients<'s> {
    pub(super) rows: &'s [f32],
    pub(super) targets: &'s [i64],
    pub(super) lse: &'s [f32],
    pub(super) logits: Option<Vec<f32>>,
    pub(super) grads: &'s [f32],
}

/// The output layer forward: each row's log-prob of its target and log-sum-exp, and, with
/// `keep`, the logits themselves when `rows × vocab` is at most [`KEPT_LOGITS`] (then the
/// backward pass does not compute them again).
pub(super) fn head_forward(
    head: HeadView,
    rows: &[f32],
    targets: &[i64],
    keep: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let n = targets.len();
    if !keep || n * head.vocab > KEPT_LOGITS {
        let (target_logits, lse) = head.target_logits_and_lse(rows, targets);
        let logps = target_logits.iter().zip(&lse).map(|(t, l)| t - l).collect();
        return (logps, lse, None);
    }
    let logits = head_logits(head, rows);
    let (logps, lse) = logits
        .par_chunks(head.vocab)
        .zip(targets.par_iter())
        .map(|(row, &target)| {
            let lse = log_sum_exp(row);
            (row[target as usize] - lse, lse)
        })
        .unzip();
    (logps, lse, Some(logits))
}

/// `rows · Wᵀ`: the logits `[rows, vocab]`.
pub(super) fn head_logits(head: HeadView, rows: &[f32]) -> Vec<f32> {
    let n = rows.len() / head.hidden;
    let mut logits = vec![0f32; n * head.vocab];
    matmul(
        (&mut logits, Layout::dense(n, head.vocab)),
        (rows, Layout::dense(n, head.hidden)),
        (head.weight, Layout::dense(head.vocab, head.hidden).t()),
        false,
        true,
    );
    if let Some(cap) = head.softcap {
        logits
            .par_chunks_mut(head.vocab)
            .for_each(|row| soft_cap(row, cap, None));
    }
    logits
}

/// The backward pass of `log_softmax(rows · Wᵀ)[targets]`: with `g` the gradient of each row's
/// log-prob, the logits' gradient is `g · (onehot(target) − softmax)`; adds `dlogitsᵀ · rows`
/// to `d_weight` (when the weight is trained) and writes `dlogits · W` to `d_rows`. Logits the forward pass did not keep
/// are computed again [`HEAD_BACKWARD_ROWS`] rows at a time, so the whole `[rows, vocab]`
/// matrix never exists.
pub(super) fn head_backward(
    head: HeadView,
    mut h: HeadGradients,
    d_rows: &mut [f32],
    mut d_weight: Option<&mut [f32]>,
) {
    let hidden = head.hidden;
    let n = h.targets.len();
    let kept = h.logits.take();
    let block = if kept.is_some() {
        n.max(1)
    } else {
        HEAD_BACKWARD_ROWS
    };
    let mut kept = kept.unwrap_or_default();
    for first in (0..n).step_by(block) {
        let m = block.min(n - first);
        let rows = &h.rows[first * hidden..(first + m) * hidden];
        let mut computed;
        let logits = if kept.is_empty() {
            computed = head_logits(head, rows);
            &mut computed
        } else {
            &mut kept[first * head.vocab..(first + m) * head.vocab]
        };
        logits_backward(logits, head.vocab, head.softcap, &h, first);
        matmul(
            (
                &mut d_rows[first * hidden..(first + m) * hidden],
                Layout::dense(m, hidden),
            ),
            (logits, Layout::dense(m, head.vocab)),
            (head.weight, Layout::dense(head.vocab, hidden)),
            false,
            true,
        );
        if let Some(d_weight) = d_weight.as_deref_mut() {
            matmul(
                (d_weight, Layout::dense(head.vocab, hidden)),
                (logits, Layout::dense(m, head.vocab).t()),
                (rows, Layout::dense(m, hidden)),
                true,
                true,
            );
        }
    }
}

/// Turns the logits of rows `first..` (`vocab` per row) into their gradients
/// `g · (onehot(target) − softmax)`, in place (times `1 − tanh²` of the soft-cap when the logits
/// are capped: they hold `c · tanh(l / c)`).
pub(super) fn logits_backward(
    logits: &mut [f32],
    vocab: usize,
    softcap: Option<f32>,
    h: &HeadGradients,
    first: usize,
) {
    logits
        .par_chunks_mut(vocab)
        .enumerate()
        .for_each(|(i, row)| {
            let g = h.grads[first + i];
            let slopes = softcap.map(|cap| {
                row.iter()
                    .map(|l| 1.0 - (l / cap) * (l / cap))
                    .collect::<Vec<f32>>()
            });
            exp_shifted_scaled(row, h.lse[first + i], -g);
            row[h.targets[first + i] as usize] += g;
            if let Some(slopes) = slopes {
                row.iter_mut().zip(&slopes).for_each(|(d, s)| *d *= s);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// The output layer's backward pass gives the same gradients from kept logits as from
    /// logits it computes again block by block.
    #[test]
    fn head_backward_from_kept_or_recomputed_logits_agrees() {
        let (vocab, hidden, n) = (301, 16, HEAD_BACKWARD_ROWS + 37);
        let mut rng = SplitMix64::new(5);
        let mut normal =
            |count: usize| -> Vec<f32> { (0..count).map(|_| rng.next_normal() as f32).collect() };
        let (weight, rows, grads) = (normal(vocab * hidden), normal(n * hidden), normal(n));
        let targets: Vec<i64> = (0..n as i64).map(|i| (i * 7) % vocab as i64).collect();
        let head = HeadView {
            weight: &weight,
            vocab,
            hidden,
            softcap: None,
        };
        let (_, lse, logits) = head_forward(head, &rows, &targets, true);
        assert!(logits.is_some());
        let run = |logits: Option<Vec<f32>>| {
            let (mut d_rows, mut d_weight) = (vec![0f32; n * hidden], vec![0f32; vocab * hidden]);
            let h = HeadGradients {
                rows: &rows,
                targets: &targets,
                lse: &lse,
                logits,
                grads: &grads,
            };
            head_backward(head, h, &mut d_rows, Some(&mut d_weight));
            (d_rows, d_weight)
        };
        let (kept, recomputed) = (run(logits), run(None));
        for (a, b) in kept
            .0
            .iter()
            .chain(&kept.1)
            .zip(recomputed.0.iter().chain(&recomputed.1))
        {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
