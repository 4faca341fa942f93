//! The model over borrowed host slices and its forward pass: what each layer keeps for the
//! backward pass ([`Forward`]) and the log-probs of the completion tokens.

use super::attention::attention_forward;
use super::dims::Dims;
use super::head::{HeadView, head_forward};
use super::ops::*;
use crate::arch::{MistralConfig, rope_tables};
use crate::sequence::Sequence;

/// Weights per decoder layer in [`crate::arch::weight_specs`] order.
pub(super) const PER_LAYER: usize = 9;

/// A Mistral whose weights are borrowed host slices.
pub struct HostMistral<'a> {
    pub(super) config: &'a MistralConfig,
    pub(super) weights: Vec<&'a [f32]>,
}

/// One decoder layer's weights.
pub(super) struct LayerWeights<'a> {
    pub(super) input_norm: &'a [f32],
    pub(super) q: &'a [f32],
    pub(super) k: &'a [f32],
    pub(super) v: &'a [f32],
    pub(super) o: &'a [f32],
    pub(super) post_norm: &'a [f32],
    pub(super) gate: &'a [f32],
    pub(super) up: &'a [f32],
    pub(super) down: &'a [f32],
}

/// What the forward pass keeps for the backward pass, and the log-probs it computed.
pub struct Forward {
    /// Log-prob of every completion token, sequences one after another.
    pub token_logps: Vec<f32>,
    /// Tokens of the batch, concatenated.
    pub(super) ids: Vec<u32>,
    /// First row and length of each sequence.
    pub(super) spans: Vec<(usize, usize)>,
    /// RoPE's `(cos, sin)` tables for the longest sequence.
    pub(super) rope: (Vec<f32>, Vec<f32>),
    pub(super) layers: Vec<LayerActivations>,
    /// The last layer's output (the final norm's input) and the final norm's scales.
    pub(super) last: Vec<f32>,
    pub(super) last_scale: Vec<f32>,
    /// Rows (of the concatenated tokens) that predict completion tokens, and those tokens.
    pub(super) head_rows: Vec<usize>,
    pub(super) targets: Vec<i64>,
    /// Log-sum-exp of each head row's logits.
    pub(super) head_lse: Vec<f32>,
    /// The head rows' logits, when small enough to keep (see [`KEPT_LOGITS`]).
    pub(super) head_logits: Option<Vec<f32>>,
}

/// One layer's saved activations, `[tokens, …]` row-major.
pub(super) struct LayerActivations {
    pub(super) input: Vec<f32>,
    pub(super) input_scale: Vec<f32>,
    pub(super) q: Vec<f32>,
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    /// Log-sum-exp of each (token, query head)'s scores, `[tokens, heads]`.
    pub(super) attention_lse: Vec<f32>,
    pub(super) attention: Vec<f32>,
    pub(super) middle: Vec<f32>,
    pub(super) middle_scale: Vec<f32>,
    pub(super) gate: Vec<f32>,
    pub(super) up: Vec<f32>,
}

impl<'a> HostMistral<'a> {
    /// The model of `config` over `weights` (one slice per [`crate::arch::weight_specs`] entry).
    pub fn new(config: &'a MistralConfig, weights: Vec<&'a [f32]>) -> HostMistral<'a> {
        let specs = crate::arch::weight_specs(config);
        assert_eq!(weights.len(), specs.len(), "one slice per weight");
        for (w, spec) in weights.iter().zip(&specs) {
            assert_eq!(w.len(), spec.shape[0] * spec.shape[1], "{}", spec.name);
        }
        HostMistral { config, weights }
    }

    pub(super) fn dims(&self) -> Dims {
        Dims::of(self.config)
    }

    pub(super) fn layer(&self, l: usize) -> LayerWeights<'a> {
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

    pub(super) fn embed(&self) -> &'a [f32] {
        self.weights[0]
    }

    pub(super) fn final_norm(&self) -> &'a [f32] {
        self.weights[1 + PER_LAYER * self.config.num_hidden_layers]
    }

    /// Index of the output layer's weight (the embeddings when tied).
    pub(super) fn head_index(&self) -> usize {
        if self.config.tie_word_embeddings {
            0
        } else {
            self.weights.len() - 1
        }
    }

    pub(super) fn head(&self) -> HeadView<'a> {
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
    pub(super) fn run(&self, batch: &[Sequence], keep: bool) -> Forward {
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
    pub(super) fn layer_forward(
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
}
