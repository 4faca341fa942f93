//! Grouped-query attention on the host, causal with a sliding window and optional soft-capping,
//! per group of rows ([`super::packing`]) and query head, in blocks of query rows over only the
//! keys they see; the backward pass recomputes the probabilities from the saved log-sum-exps.
//!
//! A group's prefix attends to itself; each tail attends to the prefix's keys and values and its
//! own (gathered into one buffer, positions continuing the prefix's), so a shared prompt is
//! computed once and its key and value gradients collect every tail's share.

use rayon::prelude::*;
use std::borrow::Cow;
use std::ops::Range;

use super::dims::Dims;
use super::packing::{Group, split_by_groups};
use super::vector::{Layout, exp_shifted, log_sum_exp, matmul, written_zeros};

/// The keys query position `i` sees: `i − window < j ≤ i`.
pub(super) fn visible(i: usize, window: usize) -> Range<usize> {
    (i + 1).saturating_sub(window)..i + 1
}

/// Query rows per block of the attention: a block's scores cover only the keys its rows see,
/// which skips most of the masked half of each `len × len` score matrix.
pub(super) const ATTENTION_ROW_BLOCK: usize = 64;

/// The blocks of query positions `start..end`, each with the keys its positions see.
fn attention_blocks(
    start: usize,
    end: usize,
    window: usize,
) -> impl Iterator<Item = (Range<usize>, Range<usize>)> {
    (start..end).step_by(ATTENTION_ROW_BLOCK).map(move |first| {
        let last = (first + ATTENTION_ROW_BLOCK).min(end);
        (first..last, visible(first, window).start..last)
    })
}

/// The parts of a group: `(first row in the group, rows, position of the first row)` of the
/// prefix and of each tail.
fn parts(group: &Group) -> Vec<(usize, usize, usize)> {
    let mut parts = vec![(0, group.prefix, 0)];
    let mut row = group.prefix;
    for &tail in &group.tails {
        parts.push((row, tail, group.prefix));
        row += tail;
    }
    parts
}

/// The keys (or values) a part attends to: the prefix's rows then the part's own, `width`
/// values per row (borrowed when the part is the prefix itself).
fn keys_of<'s>(
    x: &'s [f32],
    (row, len, start): (usize, usize, usize),
    width: usize,
) -> Cow<'s, [f32]> {
    if start == 0 {
        return Cow::Borrowed(&x[row * width..(row + len) * width]);
    }
    let mut keys = Vec::with_capacity((start + len) * width);
    keys.extend_from_slice(&x[..start * width]);
    keys.extend_from_slice(&x[row * width..(row + len) * width]);
    Cow::Owned(keys)
}

/// `softmax(cap(q kᵀ · scale)) v` per group and query head (causal, sliding window, grouped
/// heads): the output `[tokens, heads · head_dim]` and each (token, head)'s log-sum-exp.
pub(super) fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    groups: &[Group],
    d: Dims,
) -> (Vec<f32>, Vec<f32>) {
    let tokens = q.len() / d.q_width();
    let mut out = vec![0f32; q.len()];
    let mut lse = vec![0f32; tokens * d.heads];
    split_by_groups(&mut out, groups, d.q_width())
        .into_par_iter()
        .zip(split_by_groups(&mut lse, groups, d.heads))
        .zip(groups.par_iter())
        .for_each(|((out, lse), group)| {
            let rows = group.first..group.first + group.rows();
            let (q, k, v) = (
                &q[rows.start * d.q_width()..rows.end * d.q_width()],
                &k[rows.start * d.kv_width()..rows.end * d.kv_width()],
                &v[rows.start * d.kv_width()..rows.end * d.kv_width()],
            );
            for part in parts(group) {
                let (row, len, start) = part;
                let (keys, values) = (
                    keys_of(k, part, d.kv_width()),
                    keys_of(v, part, d.kv_width()),
                );
                let window = QueryWindow {
                    q: &q[row * d.q_width()..(row + len) * d.q_width()],
                    k: &keys,
                    v: &values,
                    start,
                    d,
                };
                let out = &mut out[row * d.q_width()..(row + len) * d.q_width()];
                let lse = &mut lse[row * d.heads..(row + len) * d.heads];
                window.forward(out, lse);
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
    groups: &[Group],
    d: Dims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dq = vec![0f32; saved.q.len()];
    let mut dk = written_zeros(saved.k.len());
    let mut dv = written_zeros(saved.v.len());
    let (qw, kw) = (d.q_width(), d.kv_width());
    split_by_groups(&mut dq, groups, qw)
        .into_par_iter()
        .zip(split_by_groups(&mut dk, groups, kw))
        .zip(split_by_groups(&mut dv, groups, kw))
        .zip(groups.par_iter())
        .for_each(|(((dq, dk), dv), group)| {
            let rows = group.first..group.first + group.rows();
            let (q, k, v) = (
                &saved.q[rows.start * qw..rows.end * qw],
                &saved.k[rows.start * kw..rows.end * kw],
                &saved.v[rows.start * kw..rows.end * kw],
            );
            let d_out = &d_out[rows.start * qw..rows.end * qw];
            let lse = &saved.lse[rows.start * d.heads..rows.end * d.heads];
            for part in parts(group) {
                let (row, len, start) = part;
                let (keys, values) = (keys_of(k, part, kw), keys_of(v, part, kw));
                let window = QueryWindow {
                    q: &q[row * qw..(row + len) * qw],
                    k: &keys,
                    v: &values,
                    start,
                    d,
                };
                let (mut d_keys, mut d_values) = (vec![0f32; keys.len()], vec![0f32; values.len()]);
                window.backward(
                    &d_out[row * qw..(row + len) * qw],
                    &lse[row * d.heads..(row + len) * d.heads],
                    &mut dq[row * qw..(row + len) * qw],
                    (&mut d_keys, &mut d_values),
                );
                // The first `start` key rows are the prefix's; the rest the part's own.
                for (grads, d_part) in [(&mut *dk, &d_keys), (&mut *dv, &d_values)] {
                    let (prefix, own) = d_part.split_at(start * kw);
                    add(&mut grads[..start * kw], prefix);
                    add(&mut grads[row * kw..(row + len) * kw], own);
                }
            }
        });
    (dq, dk, dv)
}

/// `a += b`.
fn add(a: &mut [f32], b: &[f32]) {
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
}

/// Query rows at positions `start..start + len` over keys and values at positions
/// `0..start + len` (row-major, `[len, heads · head_dim]` and `[start + len, kv_heads · head_dim]`).
struct QueryWindow<'s> {
    q: &'s [f32],
    k: &'s [f32],
    v: &'s [f32],
    start: usize,
    d: Dims,
}

impl QueryWindow<'_> {
    fn len(&self) -> usize {
        self.q.len() / self.d.q_width()
    }

    /// The attention output of every query row into `out` and its log-sum-exps into `lse`.
    fn forward(&self, out: &mut [f32], lse: &mut [f32]) {
        let (d, end) = (self.d, self.start + self.len());
        let mut probs = vec![0f32; ATTENTION_ROW_BLOCK * end];
        for h in 0..d.heads {
            for (rows, keys) in attention_blocks(self.start, end, d.window) {
                let block = Layout::dense(rows.len(), keys.len());
                self.probabilities(h, (&rows, &keys), &mut probs, None, |i, row| {
                    let at = (i - self.start) * d.heads + h;
                    lse[at] = log_sum_exp(row);
                    lse[at]
                });
                matmul(
                    (out, self.q_rows(h, &rows)),
                    (&probs, block),
                    (self.v, self.kv_rows(h, &keys)),
                    false,
                    false,
                );
            }
        }
    }

    /// Adds the gradients of the queries to `dq` and of the keys and values to `d_kv`, from the
    /// gradient of the output `d_out` and the forward's log-sum-exps.
    fn backward(
        &self,
        d_out: &[f32],
        lse: &[f32],
        dq: &mut [f32],
        (dk, dv): (&mut [f32], &mut [f32]),
    ) {
        let (d, end) = (self.d, self.start + self.len());
        let mut probs = vec![0f32; ATTENTION_ROW_BLOCK * end];
        let mut d_scores = vec![0f32; ATTENTION_ROW_BLOCK * end];
        let mut slopes = d.softcap.map(|_| vec![0f32; ATTENTION_ROW_BLOCK * end]);
        for h in 0..d.heads {
            for (rows, keys) in attention_blocks(self.start, end, d.window) {
                self.probabilities(
                    h,
                    (&rows, &keys),
                    &mut probs,
                    slopes.as_deref_mut(),
                    |i, _| lse[(i - self.start) * d.heads + h],
                );
                let block = Layout::dense(rows.len(), keys.len());
                let (q_rows, kv_rows) = (self.q_rows(h, &rows), self.kv_rows(h, &keys));
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
                    (self.v, kv_rows.t()),
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
                        *g = p * (*g - dot) * d.scale;
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
                    (self.k, kv_rows),
                    false,
                    false,
                );
                matmul(
                    (dk, kv_rows),
                    (&d_scores, block.t()),
                    (self.q, q_rows),
                    true,
                    false,
                );
            }
        }
    }

    /// Query head `h` of the query positions `rows`, `[rows, head_dim]`.
    fn q_rows(&self, h: usize, rows: &Range<usize>) -> Layout {
        let width = self.d.q_width();
        let first = (rows.start - self.start) * width + h * self.d.head_dim;
        Layout::columns(rows.len(), self.d.head_dim, width, first)
    }

    /// The key (or value) head that query head `h` reads, of the key positions `rows`.
    fn kv_rows(&self, h: usize, rows: &Range<usize>) -> Layout {
        let group = h / (self.d.heads / self.d.kv_heads);
        let width = self.d.kv_width();
        let first = rows.start * width + group * self.d.head_dim;
        Layout::columns(rows.len(), self.d.head_dim, width, first)
    }

    /// Fills `probs` (dense `[rows, keys]`) with head `h`'s attention probabilities of the
    /// query positions over the keys given (zero where a key is not visible); `lse(i, scores)`
    /// gives position `i`'s log-sum-exp of its visible scores. With soft-capping, `slopes`
    /// (same layout) receives each visible score's `∂capped/∂raw` for the backward pass.
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
            scores.iter_mut().for_each(|s| *s *= self.d.scale);
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
