//! The backward pass of [`HostModel`]: from the gradients of the completion tokens' log-probs
//! to every weight's gradient (full fine-tuning), or, with LoRA adapters, to the adapters' alone
//! (the base frozen: no weight gradient is computed), layer by layer, consuming what the forward
//! pass kept.

use std::collections::HashMap;

use super::attention::{AttentionSaved, attention_backward};
use super::head::{HeadGradients, head_backward};
use super::lora::AdapterSaved;
use super::model::{Forward, HostModel, LayerActivations, LayerState, Normed, bias_of};
use super::ops::*;
use super::packing::Group;
use super::vector::written_zeros;
use crate::arch::LayerRole;

/// Where one layer's gradients go.
struct LayerGrads<'g, 'm> {
    grads: &'g mut [Vec<f32>],
    model: &'m HostModel<'m>,
    layer: usize,
}

impl LayerGrads<'_, '_> {
    /// The gradient buffer of this layer's `role`, when the base is trained and the layer has
    /// that weight.
    fn of(&mut self, role: LayerRole) -> Option<&mut [f32]> {
        if self.model.frozen() {
            return None;
        }
        let position = self.model.index.layer(self.layer, role)?;
        Some(&mut self.grads[position])
    }

    /// Adds the bias gradient of `role`, if the layer has that bias and it is trained.
    fn bias(&mut self, role: LayerRole, dy: &[f32]) {
        if let Some(d_bias) = self.of(role) {
            bias_backward(dy, d_bias);
        }
    }

    /// The A and B gradient buffers of the adapter on `role`, if it has one.
    fn adapter(&mut self, role: LayerRole) -> Option<(&mut [f32], &mut [f32])> {
        let position = self.model.index.layer(self.layer, role)?;
        let slot = *self.model.adapter_slots.get(&position)?;
        let (a, b) = self.grads[2 * slot..2 * slot + 2].split_at_mut(1);
        Some((&mut a[0], &mut b[0]))
    }
}

impl HostModel<'_> {
    /// Whether the base weights are frozen (the model has LoRA adapters).
    pub(super) fn frozen(&self) -> bool {
        !self.adapters.is_empty()
    }

    /// Adds the gradients of `Σᵢ token_grads[i] · token_logps[i]` to `grads`, consuming the
    /// forward's activations: one buffer per weight in [`crate::arch::weight_specs`] order, or,
    /// when the model has adapters, two (A, B) per adapter in [`HostModel::with_adapters`] order.
    pub fn backward(&self, forward: Forward, token_grads: &[f32], grads: &mut [Vec<f32>]) {
        assert_eq!(token_grads.len(), forward.token_logps.len());
        let hidden = self.config.hidden_size;
        let Forward {
            ids,
            positions,
            groups,
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
        let frozen = self.frozen();
        let d_head = (!frozen).then(|| &mut grads[self.index.lm_head()]);
        head_backward(
            self.head(),
            head,
            &mut d_rows,
            d_head.map(|g| g.as_mut_slice()),
        );
        let mut d_normed = vec![0f32; last.len()];
        for (i, &r) in head_rows.iter().enumerate() {
            d_normed[r * hidden..(r + 1) * hidden]
                .iter_mut()
                .zip(&d_rows[i * hidden..(i + 1) * hidden])
                .for_each(|(d, g)| *d += g);
        }
        let mut dx = written_zeros(last.len());
        let d_final = (!frozen).then(|| &mut grads[self.index.final_norm()]);
        rms_norm_rows_backward(
            &d_normed,
            &last,
            &last_scale,
            self.final_norm(),
            &mut dx,
            d_final.map(|g| g.as_mut_slice()),
        );
        let rope = (cos, sin);
        let inverse = (rope.0.clone(), inverse_sin);
        for l in (0..self.config.num_hidden_layers).rev() {
            let saved = match layers.pop().expect("one per layer") {
                LayerState::Kept(saved) => *saved,
                LayerState::Input(input) => {
                    self.layer_forward(l, input, (&groups, &positions), &rope).0
                }
            };
            let mut layer_grads = LayerGrads {
                grads,
                model: self,
                layer: l,
            };
            dx = self.layer_backward(
                l,
                saved,
                dx,
                (&groups, &positions),
                (&inverse.0, &inverse.1),
                &mut layer_grads,
            );
        }
        if frozen {
            return;
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

    /// The backward pass of a projection (`x Wᵀ + b`, plus its adapter): adds `dy · W` (and the
    /// adapter's part) to `dx` and the trained gradients to `grads`.
    fn project_backward(
        &self,
        (l, role): (usize, LayerRole),
        dy: &[f32],
        x: &[f32],
        adapters: &HashMap<LayerRole, AdapterSaved>,
        dx: &mut [f32],
        grads: &mut LayerGrads,
    ) {
        let position = self
            .index
            .layer(l, role)
            .expect("every layer has its projections");
        let input = self.input_width(l, role);
        linear_backward_into(dy, x, self.weights[position], input, dx, grads.of(role));
        grads.bias(bias_of(role), dy);
        if let (Some(adapter), Some(state)) = (self.adapters.get(&position), adapters.get(&role))
            && let Some(adapter_grads) = grads.adapter(role)
        {
            adapter.backward(dy, x, state, dx, adapter_grads);
        }
    }

    /// The input width of layer `l`'s projection `role`.
    fn input_width(&self, l: usize, role: LayerRole) -> usize {
        let d = self.dims(l);
        match role {
            LayerRole::O => d.q_width(),
            LayerRole::Down => d.intermediate,
            _ => d.hidden,
        }
    }

    /// Layer `l` backward: adds its gradients to `grads` and returns the gradient of its input.
    /// `d_output` is the gradient of its output; `rope_back` holds the tables with the sine
    /// negated (RoPE's inverse rotation).
    fn layer_backward(
        &self,
        l: usize,
        saved: LayerActivations,
        d_output: Vec<f32>,
        (groups, positions): (&[Group], &[usize]),
        rope_back: (&[f32], &[f32]),
        grads: &mut LayerGrads,
    ) -> Vec<f32> {
        use LayerRole::*;
        let (w, d) = (self.layer(l), self.dims(l));
        let act = self.config.hidden_act;
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
            adapters,
        } = saved;
        // MLP: [norm](down(act(gate(x̂)) · up(x̂))) with x̂ the normed middle.
        let d_mlp = match (&mlp_output, w.mlp_output_norm) {
            (Some(normed), Some(norm)) => {
                norm_backward(&d_output, normed, norm, grads.of(MlpOutputNorm))
            }
            _ => d_output.clone(),
        };
        drop(mlp_output);
        let normed = rms_norm_rows_with(&middle, &middle_scale, w.mlp_norm);
        let activated = glu(&gate, &up, act);
        let mut d_activated = written_zeros(activated.len());
        self.project_backward(
            (l, Down),
            &d_mlp,
            &activated,
            &adapters,
            &mut d_activated,
            grads,
        );
        drop((activated, d_mlp));
        glu_backward_in_place(&mut gate, &mut up, &d_activated, act);
        drop(d_activated);
        let (d_gate, d_up) = (gate, up);
        let mut d_normed = written_zeros(normed.len());
        self.project_backward((l, Gate), &d_gate, &normed, &adapters, &mut d_normed, grads);
        self.project_backward((l, Up), &d_up, &normed, &adapters, &mut d_normed, grads);
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
        let mut d_attention = written_zeros(attention.len());
        self.project_backward(
            (l, O),
            &d_projected,
            &attention,
            &adapters,
            &mut d_attention,
            grads,
        );
        drop((d_projected, attention));
        let attention_saved = AttentionSaved {
            q: &q,
            k: &k,
            v: &v,
            lse: &attention_lse,
        };
        let (mut dq, mut dk, dv) = attention_backward(&attention_saved, &d_attention, groups, d);
        drop((d_attention, attention_lse));
        apply_rope(&mut dq, positions, d.head_dim, rope_back);
        apply_rope(&mut dk, positions, d.head_dim, rope_back);
        if let (Some(normed), Some(norm)) = (&q_normed, w.q_norm) {
            dq = norm_backward(&dq, normed, norm, grads.of(QNorm));
        }
        if let (Some(normed), Some(norm)) = (&k_normed, w.k_norm) {
            dk = norm_backward(&dk, normed, norm, grads.of(KNorm));
        }
        let normed = rms_norm_rows_with(&input, &input_scale, w.attention_norm);
        let mut d_normed = written_zeros(normed.len());
        self.project_backward((l, Q), &dq, &normed, &adapters, &mut d_normed, grads);
        self.project_backward((l, K), &dk, &normed, &adapters, &mut d_normed, grads);
        self.project_backward((l, V), &dv, &normed, &adapters, &mut d_normed, grads);
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
/// adds the weight's to `d_weight` (when trained).
fn norm_backward(
    dy: &[f32],
    normed: &Normed,
    weight: &[f32],
    d_weight: Option<&mut [f32]>,
) -> Vec<f32> {
    let mut dx = written_zeros(normed.input.len());
    rms_norm_rows_backward(dy, &normed.input, &normed.scale, weight, &mut dx, d_weight);
    dx
}
