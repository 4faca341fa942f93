//! Grouped-query attention on the host, causal with a sliding window and optional soft-capping,
//! per sequence and query head in blocks of query rows over only the keys they see; the
//! backward pass recomputes the probabilities from the saved log-sum-exps.

use rayon::prelude::*;
use std::ops::Range;

use super::dims::Dims;
use super::ops::split_by_spans;
use super::vector::{Layout, exp_shifted, log_sum_exp, matmul, written_zeros};

/// The keys query `i` of a sequence sees: `i − window < j ≤ i`.
pub(super) fn visible(i: usize, window: usize) -> Range<usize> {
    (i + 1).saturating_sub(window)..i + 1
}

/// Query rows per block of the attention: a block's scores cover only the keys its rows see,
/// which skips most of the masked half of each `len × len` score matrix.
pub(super) const ATTENTION_ROW_BLOCK: usize = 64;

/// The blocks of query rows of a sequence of `len` tokens, each with the keys its rows see.
pub(super) fn attention_blocks(
    len: usize,
    window: usize,
) -> impl Iterator<Item = (Range<usize>, Range<usize>)> {
    (0..len).step_by(ATTENTION_ROW_BLOCK).map(move |first| {
        let end = (first + ATTENTION_ROW_BLOCK).min(len);
        (first..end, visible(first, window).start..end)
    })
}

/// `softmax(q kᵀ / √d) v` per sequence and query head (causal, sliding window, grouped heads):
/// the output `[tokens, heads · head_dim]` and each (token, head)'s log-sum-exp of scores.
pub(super) fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    spans: &[(usize, usize)],
    d: Dims,
) -> (Vec<f32>, Vec<f32>) {
    let tokens = q.len() / d.q_width();
    let mut out = vec![0f32; q.len()];
    let mut lse = vec![0f32; tokens * d.heads];
    split_by_spans(&mut out, spans, d.q_width())
        .into_par_iter()
        .zip(split_by_spans(&mut lse, spans, d.heads))
        .zip(spans.par_iter())
        .for_each(|((out, lse), &(first, len))| {
            let seq = SequenceQkv::of(q, k, v, first, len, d);
            let mut probs = vec![0f32; ATTENTION_ROW_BLOCK * len];
            for h in 0..d.heads {
                for (rows, keys) in attention_blocks(len, d.window) {
                    let block = Layout::dense(rows.len(), keys.len());
                    seq.probabilities(h, (&rows, &keys), &mut probs, None, |i, row| {
                        lse[i * d.heads + h] = log_sum_exp(row);
                        lse[i * d.heads + h]
                    });
                    matmul(
                        (out, seq.q_rows(h, &rows)),
                        (&probs, block),
                        (seq.v, seq.kv_rows(h, &keys)),
                        false,
                        false,
                    );
                }
            }
        });
    (out, lse)
}

/// What the attention's backward pass reads: roped queries and keys, values, log-sum-exps.
pub(super) struct AttentionSaved<'s> {
    pub(super) q: &'s [f32],
    pub(super) k: &'s [f32],
    pub(super) v: &'s [f32],
    pub(super) lse: &'s [f32],
}

/// The backward pass of [`attention_forward`]: the gradients of the (roped) queries, keys and
/// values, from the gradient of its output.
pub(super) fn attention_backward(
    saved: &AttentionSaved,
    d_out: &[f32],
    spans: &[(usize, usize)],
    d: Dims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dq = vec![0f32; saved.q.len()];
    let mut dk = written_zeros(saved.k.len());
    let mut dv = written_zeros(saved.v.len());
    split_by_spans(&mut dq, spans, d.q_width())
        .into_par_iter()
        .zip(split_by_spans(&mut dk, spans, d.kv_width()))
        .zip(split_by_spans(&mut dv, spans, d.kv_width()))
        .zip(spans.par_iter())
        .for_each(|(((dq, dk), dv), &(first, len))| {
            let seq = SequenceQkv::of(saved.q, saved.k, saved.v, first, len, d);
            let d_out = &d_out[first * d.q_width()..(first + len) * d.q_width()];
            let lse = &saved.lse[first * d.heads..(first + len) * d.heads];
            let mut probs = vec![0f32; ATTENTION_ROW_BLOCK * len];
            let mut d_scores = vec![0f32; ATTENTION_ROW_BLOCK * len];
            let mut slopes = d.softcap.map(|_| vec![0f32; ATTENTION_ROW_BLOCK * len]);
            for h in 0..d.heads {
                for (rows, keys) in attention_blocks(len, d.window) {
                    seq.probabilities(
                        h,
                        (&rows, &keys),
                        &mut probs,
                        slopes.as_deref_mut(),
                        |i, _| lse[i * d.heads + h],
                    );
                    let block = Layout::dense(rows.len(), keys.len());
                    let (q_rows, kv_rows) = (seq.q_rows(h, &rows), seq.kv_rows(h, &keys));
                    // dV += Pᵀ dO; dP = dO Vᵀ.
                    matmul(
                        (dv, kv_rows),
                        (&probs, block.t()),
                        (d_out, q_rows),
                        true,
                        false,
                    );
                    matmul(
                        (&mut d_scores, block),
                        (d_out, q_rows),
                        (seq.v, kv_rows.t()),
                        false,
                        false,
                    );
                    // dS = P ⊙ (dP − ⟨P, dP⟩ per row) · scale (· the soft-cap's slope).
                    let width = keys.len();
                    for (r, (p, ds)) in probs
                        .chunks_exact(width)
                        .zip(d_scores.chunks_exact_mut(width))
                        .take(rows.len())
                        .enumerate()
                    {
                        let dot: f32 = p.iter().zip(ds.iter()).map(|(p, g)| p * g).sum();
                        for (g, &p) in ds.iter_mut().zip(p) {
                            *g = p * (*g - dot) * seq.scale;
                        }
                        if let Some(slopes) = &slopes {
                            let slopes = &slopes[r * width..(r + 1) * width];
                            ds.iter_mut().zip(slopes).for_each(|(g, s)| *g *= s);
                        }
                    }
                    // dQ = dS K; dK += dSᵀ Q.
                    matmul(
                        (dq, q_rows),
                        (&d_scores, block),
                        (seq.k, kv_rows),
                        false,
                        false,
                    );
                    matmul(
                        (dk, kv_rows),
                        (&d_scores, block.t()),
                        (seq.q, q_rows),
                        true,
                        false,
                    );
                }
            }
        });
    (dq, dk, dv)
}

/// One sequence's queries, keys and values (row-major, `[len, heads · head_dim]` and
/// `[len, kv_heads · head_dim]`).
pub(super) struct SequenceQkv<'s> {
    pub(super) q: &'s [f32],
    pub(super) k: &'s [f32],
    pub(super) v: &'s [f32],
    pub(super) scale: f32,
    pub(super) d: Dims,
}

impl<'s> SequenceQkv<'s> {
    fn of(
        q: &'s [f32],
        k: &'s [f32],
        v: &'s [f32],
        first: usize,
        len: usize,
        d: Dims,
    ) -> SequenceQkv<'s> {
        SequenceQkv {
            q: &q[first * d.q_width()..(first + len) * d.q_width()],
            k: &k[first * d.kv_width()..(first + len) * d.kv_width()],
            v: &v[first * d.kv_width()..(first + len) * d.kv_width()],
            scale: d.scale,
            d,
        }
    }

    /// Query head `h` of the tokens `rows`, `[rows, head_dim]`.
    fn q_rows(&self, h: usize, rows: &Range<usize>) -> Layout {
        let width = self.d.q_width();
        let first = rows.start * width + h * self.d.head_dim;
        Layout::columns(rows.len(), self.d.head_dim, width, first)
    }

    /// The key (or value) head that query head `h` reads, of the tokens `rows`.
    fn kv_rows(&self, h: usize, rows: &Range<usize>) -> Layout {
        let group = h / (self.d.heads / self.d.kv_heads);
        let width = self.d.kv_width();
        let first = rows.start * width + group * self.d.head_dim;
        Layout::columns(rows.len(), self.d.head_dim, width, first)
    }

    /// Fills `probs` (dense `[rows, keys]`) with head `h`'s attention probabilities of the
    /// query rows over the keys given (zero where a key is not visible); `lse(i, scores)` gives
    /// query `i`'s log-sum-exp of its visible scores. With soft-capping, `slopes` (same layout)
    /// receives each visible score's `∂capped/∂raw` for the backward pass.
    fn probabilities(
        &self,
        h: usize,
        (rows, keys): (&Range<usize>, &Range<usize>),
        probs: &mut [f32],
        mut slopes: Option<&mut [f32]>,
        mut lse: impl FnMut(usize, &[f32]) -> f32,
    ) {
        let width = keys.len();
        matmul(
            (probs, Layout::dense(rows.len(), width)),
            (self.q, self.q_rows(h, rows)),
            (self.k, self.kv_rows(h, keys).t()),
            false,
            false,
        );
        for (r, (i, row)) in rows.clone().zip(probs.chunks_exact_mut(width)).enumerate() {
            let seen = visible(i, self.d.window);
            let seen = seen.start - keys.start..seen.end - keys.start;
            let scores = &mut row[seen.clone()];
            scores.iter_mut().for_each(|s| *s *= self.scale);
            if let Some(cap) = self.d.softcap {
                let slopes = slopes
                    .as_deref_mut()
                    .map(|s| &mut s[r * width..(r + 1) * width]);
                soft_cap(scores, cap, slopes.map(|s| &mut s[seen.clone()]));
            }
            let shift = lse(i, scores);
            exp_shifted(scores, shift);
            row[..seen.start].fill(0.0);
            row[seen.end..].fill(0.0);
        }
    }
}

/// `s ← c · tanh(s / c)` (Gemma 2's soft-capping, in the order transformers divides, takes the
/// tanh and multiplies); with `slopes`, also `∂capped/∂s = 1 − tanh²`.
pub(super) fn soft_cap(scores: &mut [f32], cap: f32, slopes: Option<&mut [f32]>) {
    match slopes {
        Some(slopes) => {
            for (s, slope) in scores.iter_mut().zip(slopes) {
                let t = (*s / cap).tanh();
                *s = t * cap;
                *slope = 1.0 - t * t;
            }
        }
        None => scores.iter_mut().for_each(|s| *s = (*s / cap).tanh() * cap),
    }
}
