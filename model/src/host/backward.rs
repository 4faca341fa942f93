//! The backward pass of [`HostModel`]: from the gradients of the completion tokens' log-probs
//! to every weight's gradient, layer by layer, consuming what the forward pass kept.

use super::attention::{AttentionSaved, attention_backward};
use super::head::{HeadGradients, head_backward};
use super::model::{Forward, HostModel, LayerActivations, Normed};
use super::ops::*;
use super::vector::written_zeros;
use crate::arch::{LayerRole, WeightIndex};

/// Where one layer's gradients go: a buffer per weight position.
struct LayerGrads<'g> {
    grads: &'g mut [Vec<f32>],
    index: &'g WeightIndex,
    layer: usize,
}

impl LayerGrads<'_> {
    /// The gradient buffer of this layer's `role` (which the model has).
    fn of(&mut self, role: LayerRole) -> &mut [f32] {
        let position = self
            .index
            .layer(self.layer, role)
            .expect("the layer has this weight");
        &mut self.grads[position]
    }

    /// Adds the bias gradient of `role`, if the layer has that bias.
    fn bias(&mut self, role: LayerRole, dy: &[f32]) {
        if self.index.layer(self.layer, role).is_some() {
            bias_backward(dy, self.of(role));
        }
    }
}

impl HostModel<'_> {
    /// Adds the gradients of `Σᵢ token_grads[i] · token_logps[i]` to `grads` (one buffer per
    /// weight, in [`crate::arch::weight_specs`] order), consuming the forward's activations.
    pub fn backward(&self, forward: Forward, token_grads: &[f32], grads: &mut [Vec<f32>]) {
        assert_eq!(token_grads.len(), forward.token_logps.len());
        let hidden = self.config.hidden_size;
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
        let rows = gather_rows(&normed, &head_rows, hidden);
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
            &mut grads[self.index.lm_head()],
        );
        let mut d_normed = vec![0f32; last.len()];
        for (i, &r) in head_rows.iter().enumerate() {
            d_normed[r * hidden..(r + 1) * hidden]
                .copy_from_slice(&d_rows[i * hidden..(i + 1) * hidden]);
        }
        let mut dx = written_zeros(last.len());
        rms_norm_rows_backward(
            &d_normed,
            &last,
            &last_scale,
            self.final_norm(),
            &mut dx,
            &mut grads[self.index.final_norm()],
        );
        for l in (0..self.config.num_hidden_layers).rev() {
            let saved = layers.pop().expect("one per layer");
            let mut layer_grads = LayerGrads {
                grads,
                index: &self.index,
                layer: l,
            };
            dx = self.layer_backward(l, saved, dx, &spans, (&cos, &inverse_sin), &mut layer_grads);
        }
        // Embeddings: each token's row gets its input gradient times the embedding scale (rows
        // repeat, so one thread).
        let scale = self.config.embedding_scale();
        let embed = &mut grads[self.index.embedding()];
        for (&id, d_row) in ids.iter().zip(dx.chunks_exact(hidden)) {
            let row = &mut embed[id as usize * hidden..(id as usize + 1) * hidden];
            row.iter_mut().zip(d_row).for_each(|(e, g)| *e += g * scale);
        }
    }

    /// Layer `l` backward: adds its weights' gradients to `grads` and returns the gradient of
    /// its input. `d_output` is the gradient of its output; `rope_back` holds the tables with
    /// the sine negated (RoPE's inverse rotation).
    fn layer_backward(
        &self,
        l: usize,
        saved: LayerActivations,
        d_output: Vec<f32>,
        spans: &[(usize, usize)],
        rope_back: (&[f32], &[f32]),
        grads: &mut LayerGrads,
    ) -> Vec<f32> {
        use LayerRole::*;
        let (w, d) = (self.layer(l), self.dims(l));
        let LayerActivations {
            input,
            input_scale,
            q_normed,
            k_normed,
            q,
            k,
            v,
            attention_lse,
            attention,
            attention_output,
            middle,
            middle_scale,
            mut gate,
            mut up,
            mlp_output,
        } = saved;
        // MLP: [norm](down(act(gate(x̂)) · up(x̂))) with x̂ the normed middle.
        let d_mlp = match (&mlp_output, w.mlp_output_norm) {
            (Some(normed), Some(norm)) => {
                norm_backward(&d_output, normed, norm, grads.of(MlpOutputNorm))
            }
            _ => d_output.clone(),
        };
        drop(mlp_output);
        grads.bias(DownBias, &d_mlp);
        let normed = rms_norm_rows_with(&middle, &middle_scale, w.mlp_norm);
        let activated = glu(&gate, &up, self.config.hidden_act);
        let d_activated =
            linear_backward(&d_mlp, &activated, w.down, d.intermediate, grads.of(Down));
        drop((activated, d_mlp));
        glu_backward_in_place(&mut gate, &mut up, &d_activated, self.config.hidden_act);
        let (d_gate, d_up) = (gate, up);
        grads.bias(GateBias, &d_gate);
        grads.bias(UpBias, &d_up);
        let mut d_normed = linear_backward(&d_gate, &normed, w.gate, d.hidden, grads.of(Gate));
        linear_backward_into(&d_up, &normed, w.up, d.hidden, &mut d_normed, grads.of(Up));
        drop((normed, d_gate, d_up));
        let mut d_middle = d_output;
        rms_norm_rows_backward(
            &d_normed,
            &middle,
            &middle_scale,
            w.mlp_norm,
            &mut d_middle,
            grads.of(MlpNorm),
        );
        drop((middle, d_normed));
        // Attention: [norm](o(attend(rope([norm](q(x̂))), rope([norm](k(x̂))), v(x̂)))).
        let d_projected = match (&attention_output, w.attention_output_norm) {
            (Some(normed), Some(norm)) => {
                norm_backward(&d_middle, normed, norm, grads.of(AttentionOutputNorm))
            }
            _ => d_middle.clone(),
        };
        drop(attention_output);
        grads.bias(OBias, &d_projected);
        let d_attention = linear_backward(&d_projected, &attention, w.o, d.q_width(), grads.of(O));
        drop(d_projected);
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
        if let (Some(normed), Some(norm)) = (&q_normed, w.q_norm) {
            dq = norm_backward(&dq, normed, norm, grads.of(QNorm));
        }
        if let (Some(normed), Some(norm)) = (&k_normed, w.k_norm) {
            dk = norm_backward(&dk, normed, norm, grads.of(KNorm));
        }
        grads.bias(QBias, &dq);
        grads.bias(KBias, &dk);
        grads.bias(VBias, &dv);
        let normed = rms_norm_rows_with(&input, &input_scale, w.attention_norm);
        let mut d_normed = linear_backward(&dq, &normed, w.q, d.hidden, grads.of(Q));
        linear_backward_into(&dk, &normed, w.k, d.hidden, &mut d_normed, grads.of(K));
        linear_backward_into(&dv, &normed, w.v, d.hidden, &mut d_normed, grads.of(V));
        drop(normed);
        let mut d_input = d_middle;
        rms_norm_rows_backward(
            &d_normed,
            &input,
            &input_scale,
            w.attention_norm,
            &mut d_input,
            grads.of(AttentionNorm),
        );
        d_input
    }
}

/// The backward pass of a norm applied to `normed.input`: returns the input's gradient and
/// adds the weight's to `d_weight`.
fn norm_backward(dy: &[f32], normed: &Normed, weight: &[f32], d_weight: &mut [f32]) -> Vec<f32> {
    let mut dx = written_zeros(normed.input.len());
    rms_norm_rows_backward(dy, &normed.input, &normed.scale, weight, &mut dx, d_weight);
    dx
}
