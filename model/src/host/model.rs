//! The model over borrowed host slices and its forward pass: what each layer keeps for the
//! backward pass ([`Forward`]) and the log-probs of the completion tokens. One forward serves
//! every family: the config says which biases, norms, activation, window, scale and caps a
//! layer has ([`crate::arch::family`]).

use std::collections::HashMap;

use super::attention::attention_forward;
use super::dims::Dims;
use super::head::{HeadView, head_forward};
use super::lora::{AdapterSaved, HostAdapter};
use super::ops::*;
use super::packing::{Group, pack};
use crate::arch::{LayerRole, ModelConfig, WeightIndex, weight_specs};
use crate::error::{ModelError, Result};
use crate::sequence::Sequence;

/// A decoder model whose weights are borrowed host slices.
pub struct HostModel<'a> {
    pub(super) config: &'a ModelConfig,
    pub(super) weights: Vec<&'a [f32]>,
    pub(super) index: WeightIndex,
    /// The weights norms multiply by, where they differ from the stored ones (Gemma 2's `1 + w`),
    /// by weight position.
    pub(super) norm_weights: Vec<Option<Vec<f32>>>,
    /// LoRA adapters, by the position of the projection weight each adapts.
    pub(super) adapters: HashMap<usize, HostAdapter<'a>>,
    /// Where each adapter's gradients go: `(2i, 2i + 1)` for A and B, by weight position.
    pub(super) adapter_slots: HashMap<usize, usize>,
    /// Whether consecutive sequences compute their common first tokens once ([`pack`]).
    pub(super) share_prefixes: bool,
    /// Whether the forward pass keeps only each layer's input (gradient checkpointing): the
    /// backward pass runs each layer again.
    pub(super) checkpointing: bool,
}

/// One decoder layer's norm weights, as the norms multiply by them (projections are found by
/// role when used, with their biases and adapters).
pub(super) struct LayerWeights<'a> {
    pub(super) attention_norm: &'a [f32],
    pub(super) q_norm: Option<&'a [f32]>,
    pub(super) k_norm: Option<&'a [f32]>,
    pub(super) attention_output_norm: Option<&'a [f32]>,
    pub(super) mlp_norm: &'a [f32],
    pub(super) mlp_output_norm: Option<&'a [f32]>,
}

/// What the forward pass keeps for the backward pass, and the log-probs it computed.
pub struct Forward {
    /// Log-prob of every completion token, sequences one after another.
    pub token_logps: Vec<f32>,
    /// Tokens of the batch, concatenated.
    pub(super) ids: Vec<u32>,
    /// The RoPE position of each row.
    pub(super) positions: Vec<usize>,
    /// The row groups (a shared prefix and its tails, or a sequence alone).
    pub(super) groups: Vec<Group>,
    /// RoPE's `(cos, sin)` tables for the longest sequence.
    pub(super) rope: (Vec<f32>, Vec<f32>),
    pub(super) layers: Vec<LayerState>,
    /// The last layer's output (the final norm's input) and the final norm's scales.
    pub(super) last: Vec<f32>,
    pub(super) last_scale: Vec<f32>,
    /// Rows (of the concatenated tokens) that predict completion tokens, and those tokens.
    pub(super) head_rows: Vec<usize>,
    pub(super) targets: Vec<i64>,
    /// Log-sum-exp of each head row's logits.
    pub(super) head_lse: Vec<f32>,
    /// The head rows' logits, when small enough to keep.
    pub(super) head_logits: Option<Vec<f32>>,
}

/// What the forward pass kept of one layer.
pub(super) enum LayerState {
    /// Everything the backward pass reads.
    Kept(Box<LayerActivations>),
    /// Only the layer's input (gradient checkpointing): the backward pass runs the layer again.
    Input(Vec<f32>),
}

/// A projection's output before a norm, and that norm's scales (Qwen3's q/k norms, Gemma 2's
/// output norms): the backward pass of the norm needs both.
pub(super) struct Normed {
    pub(super) input: Vec<f32>,
    pub(super) scale: Vec<f32>,
}

/// One layer's saved activations, `[tokens, …]` row-major.
pub(super) struct LayerActivations {
    pub(super) input: Vec<f32>,
    pub(super) input_scale: Vec<f32>,
    /// Queries and keys before their per-head norms, when the family has them.
    pub(super) q_normed: Option<Normed>,
    pub(super) k_normed: Option<Normed>,
    /// Roped queries and keys, values.
    pub(super) q: Vec<f32>,
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    /// Log-sum-exp of each (token, query head)'s scores, `[tokens, heads]`.
    pub(super) attention_lse: Vec<f32>,
    pub(super) attention: Vec<f32>,
    /// The attention's projected output before its norm (Gemma 2).
    pub(super) attention_output: Option<Normed>,
    pub(super) middle: Vec<f32>,
    pub(super) middle_scale: Vec<f32>,
    pub(super) gate: Vec<f32>,
    pub(super) up: Vec<f32>,
    /// The MLP's output before its norm (Gemma 2).
    pub(super) mlp_output: Option<Normed>,
    /// What the LoRA adapters of the layer's projections saved.
    pub(super) adapters: HashMap<LayerRole, AdapterSaved>,
}

/// The bias that goes with a projection weight.
pub(super) fn bias_of(role: LayerRole) -> LayerRole {
    use LayerRole::*;
    match role {
        Q => QBias,
        K => KBias,
        V => VBias,
        O => OBias,
        Gate => GateBias,
        Up => UpBias,
        Down => DownBias,
        other => other,
    }
}

impl<'a> HostModel<'a> {
    /// The model of `config` over `weights` (one slice per [`crate::arch::weight_specs`]
    /// entry, in that order); an error names the first weight of the wrong size.
    pub fn new(config: &'a ModelConfig, weights: Vec<&'a [f32]>) -> Result<HostModel<'a>> {
        let specs = weight_specs(config);
        if weights.len() != specs.len() {
            return Err(ModelError::Argument(format!(
                "{} weights given for a model of {}",
                weights.len(),
                specs.len()
            )));
        }
        for (w, spec) in weights.iter().zip(&specs) {
            if w.len() != spec.shape[0] * spec.shape[1] {
                return Err(ModelError::Argument(format!(
                    "`{}` has {} values, expected {:?}",
                    spec.name,
                    w.len(),
                    spec.file_shape
                )));
            }
        }
        let offset = config.traits().norm_unit_offset;
        let norm_weights = weights
            .iter()
            .zip(&specs)
            .map(|(w, spec)| {
                (offset && spec.is_norm()).then(|| w.iter().map(|x| 1.0 + x).collect())
            })
            .collect();
        Ok(HostModel {
            config,
            weights,
            index: WeightIndex::of(config),
            norm_weights,
            adapters: HashMap::new(),
            adapter_slots: HashMap::new(),
            share_prefixes: true,
            checkpointing: false,
        })
    }

    /// The same model keeping only each layer's input in [`HostModel::forward`] (`true`): the
    /// backward pass runs each layer again, so a layer's activations exist one layer at a time.
    pub fn checkpointing(mut self, checkpointing: bool) -> Self {
        self.checkpointing = checkpointing;
        self
    }

    /// The same model computing every sequence on its own (`false`), or computing the first
    /// tokens consecutive sequences share once (`true`, the default: the same values, less work).
    pub fn sharing_prefixes(mut self, share: bool) -> Self {
        self.share_prefixes = share;
        self
    }

    /// The same model with LoRA adapters on the projections at the given weight positions. Its
    /// base weights are frozen: [`HostModel::backward`] then computes only the adapters'
    /// gradients, two buffers (A, B) per adapter in the order given here.
    pub fn with_adapters(mut self, adapters: Vec<(usize, HostAdapter<'a>)>) -> HostModel<'a> {
        for (slot, (position, adapter)) in adapters.into_iter().enumerate() {
            self.adapter_slots.insert(position, slot);
            self.adapters.insert(position, adapter);
        }
        self
    }

    /// `x`'s projection through layer `l`'s `role` (`x Wᵀ + b`, plus its adapter's update); the
    /// adapter's saved state goes into `saved`.
    fn project(
        &self,
        l: usize,
        role: LayerRole,
        x: &[f32],
        out: usize,
        saved: &mut HashMap<LayerRole, AdapterSaved>,
    ) -> Vec<f32> {
        let position = self
            .index
            .layer(l, role)
            .expect("every layer has its projections");
        let bias = self.index.layer(l, bias_of(role)).map(|p| self.weights[p]);
        let mut y = affine(x, self.weights[position], bias, out);
        if let Some(adapter) = self.adapters.get(&position) {
            saved.insert(role, adapter.forward(x, &mut y));
        }
        y
    }

    /// The shapes of layer `layer`.
    pub(super) fn dims(&self, layer: usize) -> Dims {
        Dims::of(self.config, layer)
    }

    /// The weight at `position` as a norm multiplies by it.
    fn norm(&self, position: usize) -> &[f32] {
        self.norm_weights[position]
            .as_deref()
            .unwrap_or(self.weights[position])
    }

    /// Layer `l`'s norm weights (as the norms multiply by them).
    pub(super) fn layer(&self, l: usize) -> LayerWeights<'_> {
        let norm = |role| self.index.layer(l, role).map(|p| self.norm(p));
        use LayerRole::*;
        LayerWeights {
            attention_norm: norm(AttentionNorm).expect("every layer has its norms"),
            q_norm: norm(QNorm),
            k_norm: norm(KNorm),
            attention_output_norm: norm(AttentionOutputNorm),
            mlp_norm: norm(MlpNorm).expect("every layer has its norms"),
            mlp_output_norm: norm(MlpOutputNorm),
        }
    }

    pub(super) fn embed(&self) -> &'a [f32] {
        self.weights[self.index.embedding()]
    }

    pub(super) fn final_norm(&self) -> &[f32] {
        self.norm(self.index.final_norm())
    }

    pub(super) fn head(&self) -> HeadView<'a> {
        HeadView {
            weight: self.weights[self.index.lm_head()],
            vocab: self.config.vocab_size,
            hidden: self.config.hidden_size,
            softcap: self.config.final_logit_softcapping.map(|c| c as f32),
        }
    }

    /// Runs the batch forward, keeping what [`HostModel::backward`] needs.
    pub fn forward(&self, batch: &[Sequence]) -> Result<Forward> {
        self.run(batch, true)
    }

    /// The log-prob of every completion token of the batch, sequences one after another
    /// (the forward pass keeping nothing: reference scoring).
    pub fn token_logps(&self, batch: &[Sequence]) -> Result<Vec<f32>> {
        Ok(self.run(batch, false)?.token_logps)
    }

    /// The forward pass; with `keep`, the activations and logits the backward pass needs are
    /// kept, otherwise each layer's are dropped as soon as the next layer has its input.
    pub(super) fn run(&self, batch: &[Sequence], keep: bool) -> Result<Forward> {
        let hidden = self.config.hidden_size;
        let packed = pack(batch, self.config.vocab_size, self.share_prefixes)?;
        let rope = self
            .config
            .rope
            .tables(packed.longest, self.config.head_dim);
        let scale = self.config.embedding_scale();
        let mut x = Vec::with_capacity(packed.ids.len() * hidden);
        for &id in &packed.ids {
            let row = &self.embed()[id as usize * hidden..(id as usize + 1) * hidden];
            x.extend(row.iter().map(|v| v * scale));
        }
        let mut layers = Vec::with_capacity(self.config.num_hidden_layers);
        for l in 0..self.config.num_hidden_layers {
            let input = (keep && self.checkpointing).then(|| x.clone());
            let (activations, output) =
                self.layer_forward(l, x, (&packed.groups, &packed.positions), &rope);
            match input {
                Some(input) => layers.push(LayerState::Input(input)),
                None if keep => layers.push(LayerState::Kept(Box::new(activations))),
                None => drop(activations),
            }
            x = output;
        }
        let (normed, last_scale) = rms_norm_rows(&x, self.final_norm(), self.dims(0).eps);
        let rows = gather_rows(&normed, &packed.head_rows, hidden);
        let (token_logps, head_lse, logits) =
            head_forward(self.head(), &rows, &packed.targets, keep);
        Ok(Forward {
            token_logps,
            ids: packed.ids,
            positions: packed.positions,
            groups: packed.groups,
            rope,
            layers,
            last: x,
            last_scale,
            head_rows: packed.head_rows,
            targets: packed.targets,
            head_lse,
            head_logits: logits,
        })
    }

    /// Layer `l` forward: its saved activations and its output.
    pub(super) fn layer_forward(
        &self,
        l: usize,
        input: Vec<f32>,
        (groups, positions): (&[Group], &[usize]),
        rope: &(Vec<f32>, Vec<f32>),
    ) -> (LayerActivations, Vec<f32>) {
        let (w, d) = (self.layer(l), self.dims(l));
        let mut adapters = HashMap::new();
        let (normed, input_scale) = rms_norm_rows(&input, w.attention_norm, d.eps);
        let mut q = self.project(l, LayerRole::Q, &normed, d.q_width(), &mut adapters);
        let mut k = self.project(l, LayerRole::K, &normed, d.kv_width(), &mut adapters);
        let v = self.project(l, LayerRole::V, &normed, d.kv_width(), &mut adapters);
        drop(normed);
        let q_normed = w.q_norm.map(|norm| head_norm(&mut q, norm, d.eps));
        let k_normed = w.k_norm.map(|norm| head_norm(&mut k, norm, d.eps));
        apply_rope(&mut q, positions, d.head_dim, (&rope.0, &rope.1));
        apply_rope(&mut k, positions, d.head_dim, (&rope.0, &rope.1));
        let (attention, attention_lse) = attention_forward(&q, &k, &v, groups, d);
        let mut middle = self.project(l, LayerRole::O, &attention, d.hidden, &mut adapters);
        let attention_output = w
            .attention_output_norm
            .map(|norm| output_norm(&mut middle, norm, d.eps));
        add_in_place(&mut middle, &input);
        let (normed, middle_scale) = rms_norm_rows(&middle, w.mlp_norm, d.eps);
        let gate = self.project(l, LayerRole::Gate, &normed, d.intermediate, &mut adapters);
        let up = self.project(l, LayerRole::Up, &normed, d.intermediate, &mut adapters);
        drop(normed);
        let activated = glu(&gate, &up, self.config.hidden_act);
        let mut output = self.project(l, LayerRole::Down, &activated, d.hidden, &mut adapters);
        drop(activated);
        let mlp_output = w
            .mlp_output_norm
            .map(|norm| output_norm(&mut output, norm, d.eps));
        add_in_place(&mut output, &middle);
        let saved = LayerActivations {
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
            gate,
            up,
            mlp_output,
            adapters,
        };
        (saved, output)
    }
}

/// RMSNorm of every head of `x` (`[tokens, heads · head_dim]`) with the `[head_dim]` weight, in
/// place (Qwen3's q/k norms); returns what its backward pass needs.
fn head_norm(x: &mut [f32], weight: &[f32], eps: f32) -> Normed {
    let input = x.to_vec();
    let scale = rms_norm_rows_in_place(x, weight, eps);
    Normed { input, scale }
}

/// RMSNorm of a sub-block's output in place (Gemma 2's sandwich norms); returns what its
/// backward pass needs.
fn output_norm(x: &mut Vec<f32>, weight: &[f32], eps: f32) -> Normed {
    let (normed, scale) = rms_norm_rows(x, weight, eps);
    let input = std::mem::replace(x, normed);
    Normed { input, scale }
}
