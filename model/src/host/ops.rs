//! Whole-activation operations of the host path, each with its backward pass: linear layers
//! through the strided GEMM, RMSNorm, SwiGLU and RoPE over every row in parallel. The tensor
//! path's host loops (reference scoring without gradients) call the same functions.

use rayon::prelude::*;

use super::vector::{
    Layout, matmul, rms_norm_backward, rms_norm_in_place, rms_norm_with_scale,
    rotate_half_in_place, swiglu_in_place, written_zeros,
};

/// Elements per parallel task of the elementwise loops.
pub(super) const ELEMENTWISE_CHUNK: usize = 16 * 1024;

/// `x · Wᵀ` for `x` `[n, in]` and `W` `[out, in]`.
pub(super) fn linear(x: &[f32], weight: &[f32], out: usize) -> Vec<f32> {
    let input = weight.len() / out;
    let n = x.len() / input;
    let mut y = vec![0f32; n * out];
    matmul(
        (&mut y, Layout::dense(n, out)),
        (x, Layout::dense(n, input)),
        (weight, Layout::dense(out, input).t()),
        false,
        true,
    );
    y
}

/// The backward pass of [`linear`] for `x` `[n, input]`: adds `dyᵀ · x` to `d_weight` and
/// returns `dy · W`.
pub(super) fn linear_backward(
    dy: &[f32],
    x: &[f32],
    weight: &[f32],
    input: usize,
    d_weight: &mut [f32],
) -> Vec<f32> {
    let mut dx = written_zeros(x.len());
    linear_backward_into(dy, x, weight, input, &mut dx, d_weight);
    dx
}

/// [`linear_backward`] adding `dy · W` to `dx` instead of returning it.
pub(super) fn linear_backward_into(
    dy: &[f32],
    x: &[f32],
    weight: &[f32],
    input: usize,
    dx: &mut [f32],
    d_weight: &mut [f32],
) {
    let (rows, out) = (x.len() / input, weight.len() / input);
    matmul(
        (dx, Layout::dense(rows, input)),
        (dy, Layout::dense(rows, out)),
        (weight, Layout::dense(out, input)),
        true,
        true,
    );
    matmul(
        (d_weight, Layout::dense(out, input)),
        (dy, Layout::dense(rows, out).t()),
        (x, Layout::dense(rows, input)),
        true,
        true,
    );
}

/// `a += b` elementwise.
pub(super) fn add_in_place(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(b.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// `silu(gate) · up`.
pub(super) fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = gate.to_vec();
    swiglu_rows_in_place(&mut out, up);
    out
}

/// `gate ← silu(gate) · up` over whole activations, in parallel (also the host path of
/// the tensor path's MLP).
pub(crate) fn swiglu_rows_in_place(gate: &mut [f32], up: &[f32]) {
    gate.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(up.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(g, u)| swiglu_in_place(g, u));
}

/// RMSNorm of every row: the normed rows and each row's scale.
pub(super) fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let mut normed = x.to_vec();
    let scales = rms_norm_rows_in_place(&mut normed, weight, eps);
    (normed, scales)
}

/// RMSNorm of every row of `x` in place, in parallel; returns each row's scale (also the host
/// path of the tensor path's norms).
pub(crate) fn rms_norm_rows_in_place(x: &mut [f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut scales = vec![0f32; x.len() / weight.len()];
    x.par_chunks_mut(weight.len())
        .zip(scales.par_iter_mut())
        .for_each(|(row, scale)| *scale = rms_norm_in_place(row, weight, eps));
    scales
}

/// The rows [`rms_norm_rows`] gave, again from the saved scales.
pub(super) fn rms_norm_rows_with(x: &[f32], scales: &[f32], weight: &[f32]) -> Vec<f32> {
    let mut normed = x.to_vec();
    normed
        .par_chunks_mut(weight.len())
        .zip(scales.par_iter())
        .for_each(|(row, &scale)| rms_norm_with_scale(row, weight, scale));
    normed
}

/// The backward pass of [`rms_norm_rows`]: adds the input's gradient to `dx` and the weight's
/// to `d_weight`.
pub(super) fn rms_norm_rows_backward(
    dy: &[f32],
    x: &[f32],
    scales: &[f32],
    weight: &[f32],
    dx: &mut [f32],
    d_weight: &mut [f32],
) {
    let width = weight.len();
    let rows_per_task = (ELEMENTWISE_CHUNK / width).max(1);
    let partial = dx
        .par_chunks_mut(rows_per_task * width)
        .zip(dy.par_chunks(rows_per_task * width))
        .zip(x.par_chunks(rows_per_task * width))
        .zip(scales.par_chunks(rows_per_task))
        .map(|(((dx, dy), x), scales)| {
            let mut d_weight = vec![0f32; width];
            for (((dx, dy), x), &scale) in dx
                .chunks_exact_mut(width)
                .zip(dy.chunks_exact(width))
                .zip(x.chunks_exact(width))
                .zip(scales)
            {
                rms_norm_backward(dy, x, scale, weight, dx, &mut d_weight);
            }
            d_weight
        })
        .reduce(
            || vec![0f32; width],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    d_weight.iter_mut().zip(&partial).for_each(|(a, b)| *a += b);
}

/// Rows `rows` of the row-major `[_, width]` matrix `x`, in that order.
pub(super) fn gather_rows(x: &[f32], rows: &[usize], width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        out.extend_from_slice(&x[r * width..(r + 1) * width]);
    }
    out
}

/// `x` split into the rows of each sequence (`width` values per row).
pub(super) fn split_by_spans<'s>(
    mut x: &'s mut [f32],
    spans: &[(usize, usize)],
    width: usize,
) -> Vec<&'s mut [f32]> {
    let mut parts = Vec::with_capacity(spans.len());
    for &(_, len) in spans {
        let (part, rest) = x.split_at_mut(len * width);
        parts.push(part);
        x = rest;
    }
    parts
}

/// RoPE on every head of every row: `x` is `[tokens, heads · head_dim]`, a token's position is
/// its index in its sequence, and `tables` are `(cos, sin)` `[positions, head_dim]`.
pub(super) fn apply_rope(
    x: &mut [f32],
    spans: &[(usize, usize)],
    head_dim: usize,
    tables: (&[f32], &[f32]),
) {
    let width = x.len() / spans.iter().map(|s| s.1).sum::<usize>().max(1);
    split_by_spans(x, spans, width)
        .into_par_iter()
        .for_each(|sequence| {
            for (pos, row) in sequence.chunks_exact_mut(width).enumerate() {
                let cos = &tables.0[pos * head_dim..(pos + 1) * head_dim];
                let sin = &tables.1[pos * head_dim..(pos + 1) * head_dim];
                for head in row.chunks_exact_mut(head_dim) {
                    rotate_half_in_place(head, cos, sin);
                }
            }
        });
}
