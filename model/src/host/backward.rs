//! The backward pass of [`HostMistral`]: from the gradients of the completion tokens'
//! log-probs to every weight's gradient, layer by layer, consuming what the forward pass kept.

use rayon::prelude::*;

use super::attention::{AttentionSaved, attention_backward};
use super::head::{HeadGradients, head_backward};
use super::model::{Forward, HostMistral, LayerActivations, LayerWeights, PER_LAYER};
use super::ops::*;
use super::vector::{swiglu_backward_in_place, written_zeros};

impl HostMistral<'_> {
    /// Adds the gradients of `Σᵢ token_grads[i] · token_logps[i]` to `grads` (one buffer per
    /// weight, in [`crate::arch::weight_specs`] order), consuming the forward's activations.
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
