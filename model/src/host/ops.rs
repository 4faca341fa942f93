//! Whole-activation operations of the host path, each with its backward pass: linear layers
//! through the strided GEMM (with biases), RMSNorm, the gated MLP activations (SwiGLU, GeGLU) and
//! RoPE over every row in parallel. The tensor
//! path's host loops (reference scoring without gradients) call the same functions.

use rayon::prelude::*;

use super::vector::{
    Layout, gelu_tanh_glu_backward_in_place, gelu_tanh_glu_in_place, matmul, rms_norm_backward,
    rms_norm_in_place, rms_norm_with_scale, rotate_half_in_place, swiglu_backward_in_place,
    swiglu_in_place,
};
use crate::arch::Activation;

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

/// The backward pass of [`linear`] for `x` `[n, input]`: adds `dy · W` to `dx` and `dyᵀ · x` to
/// `d_weight` (when the weight is trained).
pub(super) fn linear_backward_into(
    dy: &[f32],
    x: &[f32],
    weight: &[f32],
    input: usize,
    dx: &mut [f32],
    d_weight: Option<&mut [f32]>,
) {
    let (rows, out) = (x.len() / input, weight.len() / input);
    matmul(
        (dx, Layout::dense(rows, input)),
        (dy, Layout::dense(rows, out)),
        (weight, Layout::dense(out, input)),
        true,
        true,
    );
    if let Some(d_weight) = d_weight {
        matmul(
            (d_weight, Layout::dense(out, input)),
            (dy, Layout::dense(rows, out).t()),
            (x, Layout::dense(rows, input)),
            true,
            true,
        );
    }
}

/// `a += b` elementwise.
pub(super) fn add_in_place(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(b.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// The MLP's gating `act(gate) · up` as a new buffer.
pub(super) fn glu(gate: &[f32], up: &[f32], act: Activation) -> Vec<f32> {
    let mut out = gate.to_vec();
    glu_rows_in_place(&mut out, up, act);
    out
}

/// `gate ← act(gate) · up` over whole activations, in parallel (SwiGLU for `silu`, GeGLU for
/// `gelu_pytorch_tanh`; also the host path of the tensor path's MLP).
pub(crate) fn glu_rows_in_place(gate: &mut [f32], up: &[f32], act: Activation) {
    gate.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(up.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(g, u)| match act {
            Activation::Silu => swiglu_in_place(g, u),
            Activation::GeluTanh => gelu_tanh_glu_in_place(g, u),
        });
}

/// The backward pass of [`glu`]: `gate ← ∂L/∂gate`, `up ← ∂L/∂up` from `d_out`.
pub(super) fn glu_backward_in_place(
    gate: &mut [f32],
    up: &mut [f32],
    d_out: &[f32],
    act: Activation,
) {
    gate.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(up.par_chunks_mut(ELEMENTWISE_CHUNK))
        .zip(d_out.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|((g, u), d)| match act {
            Activation::Silu => swiglu_backward_in_place(g, u, d),
            Activation::GeluTanh => gelu_tanh_glu_backward_in_place(g, u, d),
        });
}

/// `y += bias` on every row of `y` (a linear layer's bias).
pub(super) fn add_bias(y: &mut [f32], bias: &[f32]) {
    y.par_chunks_mut(bias.len())
        .for_each(|row| row.iter_mut().zip(bias).for_each(|(y, b)| *y += b));
}

/// The bias's gradient: adds the column sums of `dy` (`[rows, bias.len()]`) to `d_bias`.
pub(super) fn bias_backward(dy: &[f32], d_bias: &mut [f32]) {
    for row in dy.chunks_exact(d_bias.len()) {
        d_bias.iter_mut().zip(row).for_each(|(d, g)| *d += g);
    }
}

/// `x · Wᵀ + b` for `x` `[n, in]`, `W` `[out, in]` and an optional bias `[out]`.
pub(super) fn affine(x: &[f32], weight: &[f32], bias: Option<&[f32]>, out: usize) -> Vec<f32> {
    let mut y = linear(x, weight, out);
    if let Some(bias) = bias {
        add_bias(&mut y, bias);
    }
    y
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
/// to `d_weight` (when the weight is trained).
pub(super) fn rms_norm_rows_backward(
    dy: &[f32],
    x: &[f32],
    scales: &[f32],
    weight: &[f32],
    dx: &mut [f32],
    d_weight: Option<&mut [f32]>,
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
    if let Some(d_weight) = d_weight {
        d_weight.iter_mut().zip(&partial).for_each(|(a, b)| *a += b);
    }
}

/// Rows `rows` of the row-major `[_, width]` matrix `x`, in that order.
pub(super) fn gather_rows(x: &[f32], rows: &[usize], width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        out.extend_from_slice(&x[r * width..(r + 1) * width]);
    }
    out
}

/// Rows per parallel task of RoPE.
const ROPE_ROWS: usize = 64;

/// RoPE on every head of every row: `x` is `[tokens, heads · head_dim]`, row `r` is at position
/// `positions[r]`, and `tables` are `(cos, sin)` `[positions, head_dim]`.
pub(super) fn apply_rope(
    x: &mut [f32],
    positions: &[usize],
    head_dim: usize,
    tables: (&[f32], &[f32]),
) {
    let width = x.len() / positions.len().max(1);
    x.par_chunks_mut(ROPE_ROWS * width)
        .zip(positions.par_chunks(ROPE_ROWS))
        .for_each(|(rows, positions)| {
            for (row, &pos) in rows.chunks_exact_mut(width).zip(positions) {
                let cos = &tables.0[pos * head_dim..(pos + 1) * head_dim];
                let sin = &tables.1[pos * head_dim..(pos + 1) * head_dim];
                for head in row.chunks_exact_mut(head_dim) {
                    rotate_half_in_place(head, cos, sin);
                }
            }
        });
}
