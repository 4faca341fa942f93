//! Full fine-tuning on the CPU in f32 without a tape: the Mistral of [`crate::mistral`] run
//! forward over host slices, keeping only what its backward pass needs, and that backward pass
//! written out layer by layer.
//!
//! Why a second path: burn's autodiff differentiates the model as a chain of generic tensor
//! ops, each saving its inputs (a softmax saves its scores, a SiLU four tensors, the attention
//! its repeated keys and values) and each making a pass over memory. Here every layer saves
//! its input, the RMSNorm scales, the roped queries and keys, the values, the attention's
//! log-sum-exps and output, and the MLP's gate and up projections (the rest is recomputed),
//! the output layer saves nothing but one log-sum-exp per row, and every elementwise step is
//! one vectorised loop. The arithmetic is the model's own: the same RoPE tables, RMSNorm and
//! SwiGLU loops as [`crate::mistral`]'s host path, and the tests compare both the log-probs and
//! the gradients with burn's autodiff.
//!
//! Sequences are not padded: every linear layer runs over the concatenated tokens of the batch
//! and the attention over each sequence on its own (a right-padded batch gives the same values:
//! padding is never attended to).
//!
//! The weights are the trainer's host tensors in [`crate::mistral::weight_specs`] order, and
//! gradients come back in that order too.

use rayon::prelude::*;
use std::ops::Range;

use crate::config::MistralConfig;
use crate::mistral::rope_tables;
use crate::scoring::{HeadView, Sequence};
use crate::vector::{
    Layout, exp_shifted, exp_shifted_scaled, log_sum_exp, matmul, rms_norm_backward,
    rms_norm_in_place, rms_norm_with_scale, rotate_half_in_place, swiglu_backward_in_place,
    swiglu_in_place, written_zeros,
};

/// Weights per decoder layer in [`crate::mistral::weight_specs`] order.
const PER_LAYER: usize = 9;

/// Rows of the output layer's logits recomputed at once in the backward pass (256 × 32,000
/// f32 = 32 MB).
const HEAD_BACKWARD_ROWS: usize = 256;

/// Most logits (rows × vocab) the forward pass keeps for the backward pass: 48 Mi f32 = 192
/// MiB, a batch of 1,536 completion tokens at a vocabulary of 32,768. Beyond that they are
/// computed again, which costs one more `rows × hidden × vocab` product.
const KEPT_LOGITS: usize = 48 << 20;

/// A Mistral whose weights are borrowed host slices.
pub struct HostMistral<'a> {
    config: &'a MistralConfig,
    weights: Vec<&'a [f32]>,
}

/// One decoder layer's weights.
struct LayerWeights<'a> {
    input_norm: &'a [f32],
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    o: &'a [f32],
    post_norm: &'a [f32],
    gate: &'a [f32],
    up: &'a [f32],
    down: &'a [f32],
}

/// What the forward pass keeps for the backward pass, and the log-probs it computed.
pub struct Forward {
    /// Log-prob of every completion token, sequences one after another.
    pub token_logps: Vec<f32>,
    /// Tokens of the batch, concatenated.
    ids: Vec<u32>,
    /// First row and length of each sequence.
    spans: Vec<(usize, usize)>,
    /// RoPE's `(cos, sin)` tables for the longest sequence.
    rope: (Vec<f32>, Vec<f32>),
    layers: Vec<LayerActivations>,
    /// The last layer's output (the final norm's input) and the final norm's scales.
    last: Vec<f32>,
    last_scale: Vec<f32>,
    /// Rows (of the concatenated tokens) that predict completion tokens, and those tokens.
    head_rows: Vec<usize>,
    targets: Vec<i64>,
    /// Log-sum-exp of each head row's logits.
    head_lse: Vec<f32>,
    /// The head rows' logits, when small enough to keep (see [`KEPT_LOGITS`]).
    head_logits: Option<Vec<f32>>,
}

/// One layer's saved activations, `[tokens, …]` row-major.
struct LayerActivations {
    input: Vec<f32>,
    input_scale: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Log-sum-exp of each (token, query head)'s scores, `[tokens, heads]`.
    attention_lse: Vec<f32>,
    attention: Vec<f32>,
    middle: Vec<f32>,
    middle_scale: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

/// Shapes the passes share.
#[derive(Clone, Copy)]
struct Dims {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    window: usize,
    eps: f32,
}

impl Dims {
    fn of(c: &MistralConfig) -> Dims {
        Dims {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            intermediate: c.intermediate_size,
            window: c.sliding_window.unwrap_or(usize::MAX),
            eps: c.rms_norm_eps as f32,
        }
    }

    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

impl<'a> HostMistral<'a> {
    /// The model of `config` over `weights` (one slice per [`crate::mistral::weight_specs`] entry).
    pub fn new(config: &'a MistralConfig, weights: Vec<&'a [f32]>) -> HostMistral<'a> {
        let specs = crate::mistral::weight_specs(config);
        assert_eq!(weights.len(), specs.len(), "one slice per weight");
        for (w, spec) in weights.iter().zip(&specs) {
            assert_eq!(w.len(), spec.shape[0] * spec.shape[1], "{}", spec.name);
        }
        HostMistral { config, weights }
    }

    fn dims(&self) -> Dims {
        Dims::of(self.config)
    }

    fn layer(&self, l: usize) -> LayerWeights<'a> {
        let w = &self.weights[1 + PER_LAYER * l..1 + PER_LAYER * (l + 1)];
        LayerWeights {
            input_norm: w[0],
            q: w[1],
            k: w[2],
            v: w[3],
            o: w[4],
            post_norm: w[5],
            gate: w[6],
            up: w[7],
            down: w[8],
        }
    }

    fn embed(&self) -> &'a [f32] {
        self.weights[0]
    }

    fn final_norm(&self) -> &'a [f32] {
        self.weights[1 + PER_LAYER * self.config.num_hidden_layers]
    }

    /// Index of the output layer's weight (the embeddings when tied).
    fn head_index(&self) -> usize {
        if self.config.tie_word_embeddings {
            0
        } else {
            self.weights.len() - 1
        }
    }

    fn head(&self) -> HeadView<'a> {
        HeadView {
            weight: self.weights[self.head_index()],
            vocab: self.config.vocab_size,
            hidden: self.config.hidden_size,
        }
    }

    /// Runs the batch forward, keeping what [`HostMistral::backward`] needs.
    pub fn forward(&self, batch: &[Sequence]) -> Forward {
        self.run(batch, true)
    }

    /// The log-prob of every completion token of the batch, sequences one after another
    /// (the forward pass keeping nothing: reference scoring).
    pub fn token_logps(&self, batch: &[Sequence]) -> Vec<f32> {
        self.run(batch, false).token_logps
    }

    /// The forward pass; with `keep`, the activations and logits the backward pass needs are
    /// kept, otherwise each layer's are dropped as soon as the next layer has its input.
    fn run(&self, batch: &[Sequence], keep: bool) -> Forward {
        let d = self.dims();
        let mut spans = Vec::with_capacity(batch.len());
        let mut ids = Vec::new();
        let (mut head_rows, mut targets) = (Vec::new(), Vec::new());
        for seq in batch {
            assert!(
                seq.completion_start >= 1 && seq.completion_start < seq.ids.len(),
                "a scored sequence needs a prompt token and a completion token"
            );
            spans.push((ids.len(), seq.ids.len()));
            for t in seq.completion_start..seq.ids.len() {
                head_rows.push(ids.len() + t - 1);
                targets.push(i64::from(seq.ids[t]));
            }
            ids.extend_from_slice(&seq.ids);
        }
        let longest = spans.iter().map(|s| s.1).max().unwrap_or(0);
        let rope = rope_tables(longest, d.head_dim, self.config.rope_theta);
        let mut x = Vec::with_capacity(ids.len() * d.hidden);
        for &id in &ids {
            let id = id as usize;
            x.extend_from_slice(&self.embed()[id * d.hidden..(id + 1) * d.hidden]);
        }
        let mut layers = Vec::with_capacity(self.config.num_hidden_layers);
        for l in 0..self.config.num_hidden_layers {
            let (activations, output) = self.layer_forward(&self.layer(l), x, &spans, &rope);
            if keep {
                layers.push(activations);
            }
            x = output;
        }
        let (normed, last_scale) = rms_norm_rows(&x, self.final_norm(), d.eps);
        let rows = gather_rows(&normed, &head_rows, d.hidden);
        let (token_logps, head_lse, logits) = head_forward(self.head(), &rows, &targets, keep);
        Forward {
            token_logps,
            ids,
            spans,
            rope,
            layers,
            last: x,
            last_scale,
            head_rows,
            targets,
            head_lse,
            head_logits: logits,
        }
    }

    /// One decoder layer forward: its saved activations and its output.
    fn layer_forward(
        &self,
        w: &LayerWeights,
        input: Vec<f32>,
        spans: &[(usize, usize)],
        rope: &(Vec<f32>, Vec<f32>),
    ) -> (LayerActivations, Vec<f32>) {
        let d = self.dims();
        let (normed, input_scale) = rms_norm_rows(&input, w.input_norm, d.eps);
        let mut q = linear(&normed, w.q, d.q_width());
        let mut k = linear(&normed, w.k, d.kv_width());
        let v = linear(&normed, w.v, d.kv_width());
        drop(normed);
        apply_rope(&mut q, spans, d.head_dim, (&rope.0, &rope.1));
        apply_rope(&mut k, spans, d.head_dim, (&rope.0, &rope.1));
        let (attention, attention_lse) = attention_forward(&q, &k, &v, spans, d);
        let mut middle = linear(&attention, w.o, d.hidden);
        add_in_place(&mut middle, &input);
        let (normed, middle_scale) = rms_norm_rows(&middle, w.post_norm, d.eps);
        let gate = linear(&normed, w.gate, d.intermediate);
        let up = linear(&normed, w.up, d.intermediate);
        drop(normed);
        let mut output = linear(&swiglu(&gate, &up), w.down, d.hidden);
        add_in_place(&mut output, &middle);
        let saved = LayerActivations {
            input,
            input_scale,
            q,
            k,
            v,
            attention_lse,
            attention,
            middle,
            middle_scale,
            gate,
            up,
        };
        (saved, output)
    }

    /// Adds the gradients of `Σᵢ token_grads[i] · token_logps[i]` to `grads` (one buffer per
    /// weight, in [`crate::mistral::weight_specs`] order), consuming the forward's activations.
    pub fn backward(&self, forward: Forward, token_grads: &[f32], grads: &mut [Vec<f32>]) {
        assert_eq!(token_grads.len(), forward.token_logps.len());
        let d = self.dims();
        let Forward {
            ids,
            spans,
            rope: (cos, sin),
            mut layers,
            last,
            last_scale,
            head_rows,
            targets,
            head_lse,
            head_logits,
            ..
        } = forward;
        // RoPE's inverse rotation: the same angles, the sine negated.
        let inverse_sin: Vec<f32> = sin.iter().map(|s| -s).collect();
        // Output layer: the normed rows again, their gradients from the recomputed softmax.
        let normed = rms_norm_rows_with(&last, &last_scale, self.final_norm());
        let rows = gather_rows(&normed, &head_rows, d.hidden);
        drop(normed);
        let head = HeadGradients {
            rows: &rows,
            targets: &targets,
            lse: &head_lse,
            logits: head_logits,
            grads: token_grads,
        };
        let mut d_rows = vec![0f32; rows.len()];
        head_backward(
            self.head(),
            head,
            &mut d_rows,
            &mut grads[self.head_index()],
        );
        let mut d_normed = vec![0f32; last.len()];
        for (i, &r) in head_rows.iter().enumerate() {
            d_normed[r * d.hidden..(r + 1) * d.hidden]
                .copy_from_slice(&d_rows[i * d.hidden..(i + 1) * d.hidden]);
        }
        let final_index = 1 + PER_LAYER * self.config.num_hidden_layers;
        let mut dx = written_zeros(last.len());
        rms_norm_rows_backward(
            &d_normed,
            &last,
            &last_scale,
            self.final_norm(),
            &mut dx,
            &mut grads[final_index],
        );
        for l in (0..self.config.num_hidden_layers).rev() {
            let saved = layers.pop().expect("one per layer");
            let first = 1 + PER_LAYER * l;
            dx = self.layer_backward(
                &self.layer(l),
                saved,
                dx,
                &spans,
                (&cos, &inverse_sin),
                &mut grads[first..first + PER_LAYER],
            );
        }
        // Embeddings: each token's row gets its input gradient (rows repeat, so one thread).
        let embed = &mut grads[0];
        for (&id, d_row) in ids.iter().zip(dx.chunks_exact(d.hidden)) {
            let row = &mut embed[id as usize * d.hidden..(id as usize + 1) * d.hidden];
            row.iter_mut().zip(d_row).for_each(|(e, g)| *e += g);
        }
    }

    /// One decoder layer backward: adds its weights' gradients to `grads` (its nine buffers)
    /// and returns the gradient of its input. `d_output` is the gradient of its output;
    /// `rope_back` holds the tables with the sine negated (RoPE's inverse rotation).
    fn layer_backward(
        &self,
        w: &LayerWeights,
        saved: LayerActivations,
        d_output: Vec<f32>,
        spans: &[(usize, usize)],
        rope_back: (&[f32], &[f32]),
        grads: &mut [Vec<f32>],
    ) -> Vec<f32> {
        let d = self.dims();
        let LayerActivations {
            input,
            input_scale,
            q,
            k,
            v,
            attention_lse,
            attention,
            middle,
            middle_scale,
            mut gate,
            mut up,
        } = saved;
        // MLP: down(swiglu(gate(x̂), up(x̂))) with x̂ the normed middle.
        let normed = rms_norm_rows_with(&middle, &middle_scale, w.post_norm);
        let activated = swiglu(&gate, &up);
        let d_activated =
            linear_backward(&d_output, &activated, w.down, d.intermediate, &mut grads[8]);
        drop(activated);
        gate.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(up.par_chunks_mut(ELEMENTWISE_CHUNK))
            .zip(d_activated.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(|((g, u), d)| swiglu_backward_in_place(g, u, d));
        let (d_gate, d_up) = (gate, up);
        let mut d_normed = linear_backward(&d_gate, &normed, w.gate, d.hidden, &mut grads[6]);
        linear_backward_into(&d_up, &normed, w.up, d.hidden, &mut d_normed, &mut grads[7]);
        drop((normed, d_gate, d_up));
        let mut d_middle = d_output;
        rms_norm_rows_backward(
            &d_normed,
            &middle,
            &middle_scale,
            w.post_norm,
            &mut d_middle,
            &mut grads[5],
        );
        drop((middle, d_normed));
        // Attention: o(attend(rope(q(x̂)), rope(k(x̂)), v(x̂))) with x̂ the normed input.
        let d_attention = linear_backward(&d_middle, &attention, w.o, d.q_width(), &mut grads[4]);
        let attention_saved = AttentionSaved {
            q: &q,
            k: &k,
            v: &v,
            lse: &attention_lse,
        };
        let (mut dq, mut dk, dv) = attention_backward(&attention_saved, &d_attention, spans, d);
        drop((attention, d_attention, attention_lse));
        apply_rope(&mut dq, spans, d.head_dim, rope_back);
        apply_rope(&mut dk, spans, d.head_dim, rope_back);
        let normed = rms_norm_rows_with(&input, &input_scale, w.input_norm);
        let mut d_normed = linear_backward(&dq, &normed, w.q, d.hidden, &mut grads[1]);
        linear_backward_into(&dk, &normed, w.k, d.hidden, &mut d_normed, &mut grads[2]);
        linear_backward_into(&dv, &normed, w.v, d.hidden, &mut d_normed, &mut grads[3]);
        drop(normed);
        let mut d_input = d_middle;
        rms_norm_rows_backward(
            &d_normed,
            &input,
            &input_scale,
            w.input_norm,
            &mut d_input,
            &mut grads[0],
        );
        d_input
    }
}

/// Elements per parallel task of the elementwise loops.
const ELEMENTWISE_CHUNK: usize = 16 * 1024;

/// `x · Wᵀ` for `x` `[n, in]` and `W` `[out, in]`.
fn linear(x: &[f32], weight: &[f32], out: usize) -> Vec<f32> {
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
fn linear_backward(
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
fn linear_backward_into(
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
fn add_in_place(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(b.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// `silu(gate) · up`.
fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = gate.to_vec();
    swiglu_rows_in_place(&mut out, up);
    out
}

/// `gate ← silu(gate) · up` over whole activations, in parallel (also the host path of
/// [`crate::mistral`]'s MLP).
pub(crate) fn swiglu_rows_in_place(gate: &mut [f32], up: &[f32]) {
    gate.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(up.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(g, u)| swiglu_in_place(g, u));
}

/// RMSNorm of every row: the normed rows and each row's scale.
fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let mut normed = x.to_vec();
    let scales = rms_norm_rows_in_place(&mut normed, weight, eps);
    (normed, scales)
}

/// RMSNorm of every row of `x` in place, in parallel; returns each row's scale (also the host
/// path of [`crate::mistral`]'s norms).
pub(crate) fn rms_norm_rows_in_place(x: &mut [f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut scales = vec![0f32; x.len() / weight.len()];
    x.par_chunks_mut(weight.len())
        .zip(scales.par_iter_mut())
        .for_each(|(row, scale)| *scale = rms_norm_in_place(row, weight, eps));
    scales
}

/// The rows [`rms_norm_rows`] gave, again from the saved scales.
fn rms_norm_rows_with(x: &[f32], scales: &[f32], weight: &[f32]) -> Vec<f32> {
    let mut normed = x.to_vec();
    normed
        .par_chunks_mut(weight.len())
        .zip(scales.par_iter())
        .for_each(|(row, &scale)| rms_norm_with_scale(row, weight, scale));
    normed
}

/// The backward pass of [`rms_norm_rows`]: adds the input's gradient to `dx` and the weight's
/// to `d_weight`.
fn rms_norm_rows_backward(
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
fn gather_rows(x: &[f32], rows: &[usize], width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        out.extend_from_slice(&x[r * width..(r + 1) * width]);
    }
    out
}

/// `x` split into the rows of each sequence (`width` values per row).
fn split_by_spans<'s>(
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
fn apply_rope(x: &mut [f32], spans: &[(usize, usize)], head_dim: usize, tables: (&[f32], &[f32])) {
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

/// The keys query `i` of a sequence sees: `i − window < j ≤ i`.
fn visible(i: usize, window: usize) -> Range<usize> {
    (i + 1).saturating_sub(window)..i + 1
}

/// Query rows per block of the attention: a block's scores cover only the keys its rows see,
/// which skips most of the masked half of each `len × len` score matrix.
const ATTENTION_ROW_BLOCK: usize = 64;

/// The blocks of query rows of a sequence of `len` tokens, each with the keys its rows see.
fn attention_blocks(
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
fn attention_forward(
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
                    seq.probabilities(h, (&rows, &keys), &mut probs, |i, row| {
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
struct AttentionSaved<'s> {
    q: &'s [f32],
    k: &'s [f32],
    v: &'s [f32],
    lse: &'s [f32],
}

/// The backward pass of [`attention_forward`]: the gradients of the (roped) queries, keys and
/// values, from the gradient of its output.
fn attention_backward(
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
            for h in 0..d.heads {
                for (rows, keys) in attention_blocks(len, d.window) {
                    seq.probabilities(h, (&rows, &keys), &mut probs, |i, _| lse[i * d.heads + h]);
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
                    // dS = P ⊙ (dP − ⟨P, dP⟩ per row) / √d.
                    let width = keys.len();
                    for (p, ds) in probs
                        .chunks_exact(width)
                        .zip(d_scores.chunks_exact_mut(width))
                        .take(rows.len())
                    {
                        let dot: f32 = p.iter().zip(ds.iter()).map(|(p, g)| p * g).sum();
                        for (g, &p) in ds.iter_mut().zip(p) {
                            *g = p * (*g - dot) * seq.scale;
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
struct SequenceQkv<'s> {
    q: &'s [f32],
    k: &'s [f32],
    v: &'s [f32],
    scale: f32,
    d: Dims,
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
            scale: (d.head_dim as f32).powf(-0.5),
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
    /// query `i`'s log-sum-exp of its visible scores.
    fn probabilities(
        &self,
        h: usize,
        (rows, keys): (&Range<usize>, &Range<usize>),
        probs: &mut [f32],
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
        for (i, row) in rows.clone().zip(probs.chunks_exact_mut(width)) {
            let seen = visible(i, self.d.window);
            let seen = seen.start - keys.start..seen.end - keys.start;
            let scores = &mut row[seen.clone()];
            scores.iter_mut().for_each(|s| *s *= self.scale);
            let shift = lse(i, scores);
            exp_shifted(scores, shift);
            row[..seen.start].fill(0.0);
            row[seen.end..].fill(0.0);
        }
    }
}

/// The output layer's part of the backward pass: its rows, targets, log-sum-exps, the logits
/// when the forward pass kept them, and the gradient of the loss with respect to each row's
/// log-prob.
struct HeadGradients<'s> {
    rows: &'s [f32],
    targets: &'s [i64],
    lse: &'s [f32],
    logits: Option<Vec<f32>>,
    grads: &'s [f32],
}

/// The output layer forward: each row's log-prob of its target and log-sum-exp, and, with
/// `keep`, the logits themselves when `rows × vocab` is at most [`KEPT_LOGITS`] (then the
/// backward pass does not compute them again).
fn head_forward(
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
fn head_logits(head: HeadView, rows: &[f32]) -> Vec<f32> {
    let n = rows.len() / head.hidden;
    let mut logits = vec![0f32; n * head.vocab];
    matmul(
        (&mut logits, Layout::dense(n, head.vocab)),
        (rows, Layout::dense(n, head.hidden)),
        (head.weight, Layout::dense(head.vocab, head.hidden).t()),
        false,
        true,
    );
    logits
}

/// The backward pass of `log_softmax(rows · Wᵀ)[targets]`: with `g` the gradient of each row's
/// log-prob, the logits' gradient is `g · (onehot(target) − softmax)`; adds `dlogitsᵀ · rows`
/// to `d_weight` and writes `dlogits · W` to `d_rows`. Logits the forward pass did not keep
/// are computed again [`HEAD_BACKWARD_ROWS`] rows at a time, so the whole `[rows, vocab]`
/// matrix never exists.
fn head_backward(head: HeadView, mut h: HeadGradients, d_rows: &mut [f32], d_weight: &mut [f32]) {
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
        logits_backward(logits, head.vocab, &h, first);
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
        matmul(
            (d_weight, Layout::dense(head.vocab, hidden)),
            (logits, Layout::dense(m, head.vocab).t()),
            (rows, Layout::dense(m, hidden)),
            true,
            true,
        );
    }
}

/// Turns the logits of rows `first..` (`vocab` per row) into their gradients
/// `g · (onehot(target) − softmax)`, in place.
fn logits_backward(logits: &mut [f32], vocab: usize, h: &HeadGradients, first: usize) {
    logits
        .par_chunks_mut(vocab)
        .enumerate()
        .for_each(|(i, row)| {
            let g = h.grads[first + i];
            exp_shifted_scaled(row, h.lse[first + i], -g);
            row[h.targets[first + i] as usize] += g;
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{BenchShape, bench_config};
    use crate::init::SplitMix64;
    use crate::mistral::Mistral;
    use crate::scoring::{Scorer, score, to_f32, to_f64};
    use burn::prelude::*;
    use burn::tensor::{DType, TensorData};

    /// A small model with grouped heads and a sliding window of `window` tokens; every weight
    /// (norms included) random.
    fn model(tied: bool, window: usize) -> Mistral {
        let mut config = bench_config(&BenchShape {
            hidden: 32,
            intermediate: 48,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            vocab: 61,
            pairs: 0,
            seq: 0,
            repeats: 0,
        });
        config.sliding_window = Some(window);
        config.tie_word_embeddings = tied;
        let mut rng = SplitMix64::new(7);
        Mistral::from_fn(&config, |spec| {
            let norm = spec.name.ends_with("norm.weight");
            let values: Vec<f32> = (0..spec.shape[0] * spec.shape[1])
                .map(|_| {
                    let noise = rng.next_normal() as f32;
                    if norm { 1.0 + 0.2 * noise } else { 0.3 * noise }
                })
                .collect();
            Ok(Tensor::from_data(
                TensorData::new(values, spec.shape),
                &crate::cpu(),
            ))
        })
        .unwrap()
    }

    /// Sequences of different lengths (so a padded batch has padding; two longer than one
    /// attention block) and prompt lengths.
    fn batch() -> Vec<Sequence> {
        let mut rng = SplitMix64::new(3);
        [(9, 3), (150, 20), (12, 1), (7, 5), (70, 69)]
            .into_iter()
            .map(|(len, completion_start)| Sequence {
                ids: (0..len).map(|_| rng.below(61) as u32).collect(),
                completion_start,
            })
            .collect()
    }

    fn host_weights(model: &Mistral) -> Vec<Vec<f32>> {
        model
            .weights()
            .into_iter()
            .map(|(_, w)| to_f32(w))
            .collect()
    }

    #[test]
    fn forward_log_probs_equal_the_scorers() {
        for (tied, window) in [(false, 5), (true, 100), (false, 4096)] {
            let model = model(tied, window);
            let weights = host_weights(&model);
            let host = HostMistral::new(&model.config, weights.iter().map(Vec::as_slice).collect());
            let forward = host.forward(&batch());
            let scored = Scorer::new(model).score(&batch(), &crate::cpu());
            assert_eq!(forward.token_logps.len(), scored.token_logps.len());
            for (a, b) in forward.token_logps.iter().zip(&scored.token_logps) {
                assert!((f64::from(*a) - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

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
            head_backward(head, h, &mut d_rows, &mut d_weight);
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

    /// The host backward pass against burn's autodiff in f64 (itself checked against finite
    /// differences in tests/gradients.rs), for `Σ gᵢ · logpᵢ` with random `g`.
    #[test]
    fn gradients_equal_autodiff_in_f64() {
        for (tied, window) in [(false, 5), (true, 100), (false, 4096)] {
            let model = model(tied, window);
            let weights = host_weights(&model);
            let host = HostMistral::new(&model.config, weights.iter().map(Vec::as_slice).collect());
            let forward = host.forward(&batch());
            let mut rng = SplitMix64::new(11);
            let g: Vec<f32> = (0..forward.token_logps.len())
                .map(|_| rng.next_normal() as f32)
                .collect();
            let mut grads: Vec<Vec<f32>> = weights.iter().map(|w| vec![0.0; w.len()]).collect();
            host.backward(forward, &g, &mut grads);

            let mut leaves = Vec::new();
            let tracked = model.map_weights(|_, w| {
                let leaf = w.cast(DType::F64).autodiff().require_grad();
                leaves.push(leaf.clone());
                leaf
            });
            let device = crate::cpu();
            let logps = score(&tracked, &batch(), &device).token_logps;
            let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
            let n = g64.len();
            let weights_g =
                Tensor::<1>::from_data(TensorData::new(g64, [n]), (&device, DType::F64));
            let gradients = (logps * weights_g).sum().backward();
            for ((name, _), (leaf, host_grad)) in
                model.weights().iter().zip(leaves.iter().zip(&grads))
            {
                let exact = to_f64(leaf.grad(&gradients).unwrap().flatten::<1>(0, 1));
                let norm = exact.iter().map(|x| x * x).sum::<f64>().sqrt();
                let error = exact
                    .iter()
                    .zip(host_grad)
                    .map(|(e, h)| (e - f64::from(*h)).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!(
                    error <= 1e-5 * norm.max(1e-3),
                    "{name} (tied {tied}, window {window}): error {error:e}, norm {norm:e}"
                );
            }
        }
    }
}
