//! The decoder models of every family on burn, as transformers computes them (eager attention):
//!
//! token embeddings (× √hidden in Gemma 2) → N × [RMSNorm → grouped-query attention (q/k/v
//! biases where the family has them, per-head q/k norms in Qwen3, RoPE in the rotate-half layout
//! with its scaling, a causal mask with the layer's sliding window, scores scaled and soft-capped
//! as the family does) → (Gemma 2: RMSNorm) → residual → RMSNorm → gated MLP (SwiGLU or GeGLU)
//! → (Gemma 2: RMSNorm) → residual] → RMSNorm → lm_head (soft-capped logits in Gemma 2).
//!
//! What differs between families is read from the config ([`crate::arch::family`]), never
//! copied here. Weights keep the checkpoint's layout (`[out, in]` for linear layers) and are
//! found by their role ([`crate::arch::Role`]): checkpoint names are mapped in one place,
//! [`crate::arch::weight_specs`]. Every weight is held as a 2-D tensor (norm weights and biases
//! as `[1, n]`) so that optimizers and savers treat all of them alike.

use burn::prelude::*;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, TensorData, activation, module};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

use super::adapter::LoraAdapter;
use crate::arch::{Activation, LayerRole, ModelConfig, Role, Rope, WeightSpec, weight_specs};
use crate::checkpoint::safetensors::{Checkpoint, NamedTensor, SaveDtype, save_safetensors};
use crate::device::to_f32;
use crate::error::{ModelError, Result};
use crate::host::ops::{glu_rows_in_place, rms_norm_rows_in_place};
use crate::host::vector::rotate_half_in_place;

/// `y = x Wᵀ (+ b)` with `W` in the checkpoint's `[out, in]` layout, plus a LoRA update when an
/// adapter is attached (see [`super::adapter`]).
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor<2>,
    /// `[1, out]`, when the layer has a bias.
    pub bias: Option<Tensor<2>>,
    /// Low-rank adapter, if any.
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let out = self.weight.dims()[0];
        let x = x.reshape([b * t, d]);
        let mut y = x.clone().matmul(self.weight.clone().transpose());
        if let Some(bias) = &self.bias {
            y = y + bias.clone();
        }
        if let Some(lora) = &self.lora {
            y = y + lora.forward(x);
        }
        y.reshape([b, t, out])
    }
}

/// Root-mean-square norm: `x / sqrt(mean(x²) + ε) · w`, or `· (1 + w)` (Gemma 2).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// `[1, width]`, as stored in the checkpoint.
    pub weight: Tensor<2>,
    eps: f64,
    unit_offset: bool,
}

impl RmsNorm {
    /// The weight the normed rows are multiplied by.
    fn multiplier(&self) -> Tensor<2> {
        if self.unit_offset {
            self.weight.clone().add_scalar(1.0)
        } else {
            self.weight.clone()
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if on_host_without_gradients(&[&x]) && on_host_without_gradients(&[&self.weight]) {
            return self.forward_on_host(x);
        }
        let mean_square = x.clone().square().mean_dim(2);
        let normed = x * mean_square.add_scalar(self.eps).sqrt().recip();
        normed * self.multiplier().unsqueeze::<3>()
    }

    /// [`RmsNorm::forward`] as one parallel pass over the rows on the host.
    fn forward_on_host(&self, x: Tensor<3>) -> Tensor<3> {
        let weight = to_f32(self.multiplier());
        let eps = self.eps as f32;
        map_on_host(x, |values| {
            rms_norm_rows_in_place(values, &weight, eps);
        })
    }
}

/// RoPE's cos and sin tables `[1, 1, len, head_dim]` on a device.
#[derive(Clone, Debug)]
pub struct RotaryTables {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl RotaryTables {
    /// Tables of `rope` for positions `0..len`, in `dtype`.
    pub fn new(rope: &Rope, len: usize, head_dim: usize, device: &Device, dtype: DType) -> Self {
        let (cos, sin) = rope.tables(len, head_dim);
        let table = |v: Vec<f32>| {
            Tensor::<2>::from_data(TensorData::new(v, [len, head_dim]), (device, dtype))
                .reshape([1, 1, len, head_dim])
        };
        RotaryTables {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// The tables of positions `start..start + len` only (a KV-cached step's new tokens).
    fn positions(&self, start: usize, len: usize) -> RotaryTables {
        RotaryTables {
            cos: self.cos.clone().narrow(2, start, len),
            sin: self.sin.clone().narrow(2, start, len),
        }
    }

    /// `x·cos + rotate_half(x)·sin` for `x` of shape `[batch, heads, len, head_dim]`.
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        if on_host_without_gradients(&[&x, &self.cos]) {
            return self.apply_on_host(x);
        }
        let d = x.dims()[3];
        let first = x.clone().narrow(3, 0, d / 2);
        let second = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }

    /// [`RotaryTables::apply`] as one parallel pass over the heads on the host (the same
    /// products and sums, so the same values); the result is contiguous.
    fn apply_on_host(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, len, d] = x.dims();
        let (cos, sin) = (to_f32(self.cos.clone()), to_f32(self.sin.clone()));
        map_on_host(x, |values| {
            values.par_chunks_mut(len * d).for_each(|head| {
                for ((row, cos), sin) in head
                    .chunks_exact_mut(d)
                    .zip(cos.chunks_exact(d))
                    .zip(sin.chunks_exact(d))
                {
                    rotate_half_in_place(row, cos, sin);
                }
            });
        })
    }
}

/// Grouped-query self-attention.
#[derive(Clone, Debug)]
pub struct Attention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    /// Per-head RMSNorm of the queries (Qwen3).
    pub q_norm: Option<RmsNorm>,
    /// Per-head RMSNorm of the keys (Qwen3).
    pub k_norm: Option<RmsNorm>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
}

impl Attention {
    /// Attention of `x`'s tokens over the cached keys and values (when a cache is given: they
    /// come first) and their own; `mask` is `[batch, 1, new, cached + new]`.
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &RotaryTables,
        mask: &Tensor<4>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let split = |y: Tensor<3>, heads: usize, norm: Option<&RmsNorm>| {
            let y = match norm {
                Some(norm) => norm
                    .forward(y.reshape([b, t * heads, self.head_dim]))
                    .reshape([b, t, heads * self.head_dim]),
                None => y,
            };
            y.reshape([b, t, heads, self.head_dim]).swap_dims(1, 2)
        };
        let q = rope.apply(split(
            self.q_proj.forward(x.clone()),
            self.heads,
            self.q_norm.as_ref(),
        ));
        let mut k = rope.apply(split(
            self.k_proj.forward(x.clone()),
            self.kv_heads,
            self.k_norm.as_ref(),
        ));
        let mut v = split(self.v_proj.forward(x), self.kv_heads, None);
        if let Some(cache) = cache {
            if let Some((past_k, past_v)) = cache.take() {
                k = Tensor::cat(vec![past_k, k], 2);
                v = Tensor::cat(vec![past_v, v], 2);
            }
            *cache = Some((k.clone(), v.clone()));
        }
        let out = if q.is_autodiff() || k.is_autodiff() || v.is_autodiff() {
            self.attend_differentiably(q, k, v, mask)
        } else {
            // No gradients wanted: the backend's fused kernel (grouped heads without copies, one
            // scores tile per head in cache), with the family's scale and soft-cap.
            let options = AttentionModuleOptions {
                scale: Some(self.scale),
                softcap: self.softcap,
                is_causal: false,
            };
            // burn-cubecl 0.22.1's attention (GPU backends) takes as many key/value heads as
            // query heads: grouped heads are repeated there (burn-flex reads them in place).
            if !crate::device::is_host(&q.device()) {
                (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
            }
            module::attention(q, k, v, None, Some(mask.clone()), options)
        };
        self.o_proj.forward(
            out.swap_dims(1, 2)
                .reshape([b, t, self.heads * self.head_dim]),
        )
    }

    /// `softmax(cap(q kᵀ · scale) + mask) v` as tensor operations autodiff can differentiate.
    fn attend_differentiably(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: &Tensor<4>,
    ) -> Tensor<4> {
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(self.scale);
        if let Some(cap) = self.softcap {
            scores = scores.div_scalar(cap).tanh().mul_scalar(cap);
        }
        activation::softmax(scores + mask.clone(), 3).matmul(v)
    }

    /// Query head `h` reads key/value head `h / (heads / kv_heads)`.
    fn repeat_kv(&self, x: Tensor<4>) -> Tensor<4> {
        let groups = self.heads / self.kv_heads;
        if groups == 1 {
            return x;
        }
        let [b, kv, t, d] = x.dims();
        x.reshape([b, kv, 1, t, d])
            .repeat_dim(2, groups)
            .reshape([b, kv * groups, t, d])
    }
}

/// Gated feed-forward: `down(act(gate(x)) · up(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// Gate projection.
    pub gate_proj: Linear,
    /// Up projection.
    pub up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(self.gated(gate, self.up_proj.forward(x)))
    }

    /// `act(gate) · up`. Without gradients, on the CPU in f32, one vectorised pass on the host;
    /// otherwise tensor operations.
    fn gated(&self, gate: Tensor<3>, up: Tensor<3>) -> Tensor<3> {
        if on_host_without_gradients(&[&gate, &up]) {
            let up = to_f32(up);
            return map_on_host(gate, |values| glu_rows_in_place(values, &up, self.act));
        }
        match self.act {
            Activation::Silu => activation::silu(gate) * up,
            Activation::GeluTanh => gelu_tanh(gate) * up,
        }
    }
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` as tensor operations.
fn gelu_tanh(x: Tensor<3>) -> Tensor<3> {
    let cubic = x.clone().powi_scalar(3).mul_scalar(0.044_715);
    let inner = (x.clone() + cubic).mul_scalar((2.0 / std::f64::consts::PI).sqrt());
    x.mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
}

/// `x` read back to the host as f32 (in logical order, contiguous), changed in place by `f`,
/// and made a tensor of the same shape on the same device again.
fn map_on_host<const D: usize>(x: Tensor<D>, f: impl FnOnce(&mut [f32])) -> Tensor<D> {
    let (shape, device) = (x.shape(), x.device());
    let mut values = to_f32(x);
    f(&mut values);
    Tensor::from_data(TensorData::new(values, shape), &device)
}

/// Whether every tensor is f32 on the CPU and outside autodiff: the case in which a fused
/// host loop may replace a chain of tensor operations (reference scoring, evaluation,
/// generation); training and other devices keep the operations.
fn on_host_without_gradients<const D: usize>(tensors: &[&Tensor<D>]) -> bool {
    tensors
        .iter()
        .all(|t| t.dtype() == DType::F32 && !t.is_autodiff() && crate::device::is_host(&t.device()))
}

/// One decoder layer (pre-norm residual blocks; Gemma 2 also norms each block's output).
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    /// Norm before attention (`input_layernorm`).
    pub input_layernorm: RmsNorm,
    /// Attention.
    pub self_attn: Attention,
    /// Norm on the attention output (Gemma 2 `post_attention_layernorm`).
    pub attention_output_norm: Option<RmsNorm>,
    /// Norm before the MLP (`post_attention_layernorm`; Gemma 2 `pre_feedforward_layernorm`).
    pub mlp_norm: RmsNorm,
    /// Norm on the MLP output (Gemma 2 `post_feedforward_layernorm`).
    pub mlp_output_norm: Option<RmsNorm>,
    /// MLP.
    pub mlp: Mlp,
    /// The sliding window this layer attends within, if any.
    pub window: Option<usize>,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &RotaryTables,
        masks: &Masks,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let mask = masks.get(&self.window).expect("a mask per window");
        let attended =
            self.self_attn
                .forward(self.input_layernorm.forward(x.clone()), rope, mask, cache);
        let x = x + normed(&self.attention_output_norm, attended);
        let fed = self.mlp.forward(self.mlp_norm.forward(x.clone()));
        x + normed(&self.mlp_output_norm, fed)
    }
}

/// `norm(x)`, or `x` when there is no norm.
fn normed(norm: &Option<RmsNorm>, x: Tensor<3>) -> Tensor<3> {
    match norm {
        Some(norm) => norm.forward(x),
        None => x,
    }
}

/// The additive attention mask of each window in use (`None`: full causal attention).
type Masks = HashMap<Option<usize>, Tensor<4>>;

/// The whole model.
#[derive(Clone, Debug)]
pub struct Model {
    /// Its config.
    pub config: ModelConfig,
    /// `[vocab, hidden]`.
    pub embed_tokens: Tensor<2>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// `[vocab, hidden]`; `None` when tied to the embeddings.
    pub lm_head: Option<Tensor<2>>,
}

/// The weights of a model being assembled, by role.
struct Parts(HashMap<Role, Tensor<2>>);

impl Parts {
    fn take(&mut self, role: Role) -> Tensor<2> {
        self.0.remove(&role).expect("the specs name every weight")
    }

    fn layer(&mut self, l: usize, role: LayerRole) -> Option<Tensor<2>> {
        self.0.remove(&Role::Layer(l, role))
    }

    fn linear(&mut self, l: usize, weight: LayerRole, bias: LayerRole) -> Linear {
        Linear {
            weight: self
                .layer(l, weight)
                .expect("every layer has its projections"),
            bias: self.layer(l, bias),
            lora: None,
        }
    }
}

impl Model {
    /// Builds the model from a function that yields each weight (by its spec).
    pub fn from_fn(
        config: &ModelConfig,
        mut weight: impl FnMut(&WeightSpec) -> Result<Tensor<2>>,
    ) -> Result<Model> {
        let mut parts = Parts(HashMap::new());
        for spec in weight_specs(config) {
            let tensor = weight(&spec)?;
            parts.0.insert(spec.role, tensor);
        }
        let unit_offset = config.traits().norm_unit_offset;
        let norm = |weight: Tensor<2>| RmsNorm {
            weight,
            eps: config.rms_norm_eps,
            unit_offset,
        };
        use LayerRole::*;
        let layers = (0..config.num_hidden_layers)
            .map(|l| DecoderLayer {
                input_layernorm: norm(parts.layer(l, AttentionNorm).expect("a norm")),
                self_attn: Attention {
                    q_proj: parts.linear(l, Q, QBias),
                    k_proj: parts.linear(l, K, KBias),
                    v_proj: parts.linear(l, V, VBias),
                    o_proj: parts.linear(l, O, OBias),
                    q_norm: parts.layer(l, QNorm).map(norm),
                    k_norm: parts.layer(l, KNorm).map(norm),
                    heads: config.num_attention_heads,
                    kv_heads: config.num_key_value_heads,
                    head_dim: config.head_dim,
                    scale: config.attention_scale(),
                    softcap: config.attn_logit_softcapping,
                },
                attention_output_norm: parts.layer(l, AttentionOutputNorm).map(norm),
                mlp_norm: norm(parts.layer(l, MlpNorm).expect("a norm")),
                mlp_output_norm: parts.layer(l, MlpOutputNorm).map(norm),
                mlp: Mlp {
                    gate_proj: parts.linear(l, Gate, GateBias),
                    up_proj: parts.linear(l, Up, UpBias),
                    down_proj: parts.linear(l, Down, DownBias),
                    act: config.hidden_act,
                },
                window: config.window(l),
            })
            .collect();
        Ok(Model {
            config: config.clone(),
            embed_tokens: parts.take(Role::Embedding),
            layers,
            norm: norm(parts.take(Role::FinalNorm)),
            lm_head: parts.0.remove(&Role::LmHead),
        })
    }

    /// Every weight by its role.
    fn by_role(&self) -> HashMap<Role, Tensor<2>> {
        use LayerRole::*;
        let mut all = HashMap::new();
        all.insert(Role::Embedding, self.embed_tokens.clone());
        all.insert(Role::FinalNorm, self.norm.weight.clone());
        if let Some(head) = &self.lm_head {
            all.insert(Role::LmHead, head.clone());
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let a = &layer.self_attn;
            let m = &layer.mlp;
            let norms = [
                (AttentionNorm, Some(&layer.input_layernorm)),
                (QNorm, a.q_norm.as_ref()),
                (KNorm, a.k_norm.as_ref()),
                (AttentionOutputNorm, layer.attention_output_norm.as_ref()),
                (MlpNorm, Some(&layer.mlp_norm)),
                (MlpOutputNorm, layer.mlp_output_norm.as_ref()),
            ];
            for (role, norm) in norms {
                if let Some(norm) = norm {
                    all.insert(Role::Layer(l, role), norm.weight.clone());
                }
            }
            let linears = [
                (Q, QBias, &a.q_proj),
                (K, KBias, &a.k_proj),
                (V, VBias, &a.v_proj),
                (O, OBias, &a.o_proj),
                (Gate, GateBias, &m.gate_proj),
                (Up, UpBias, &m.up_proj),
                (Down, DownBias, &m.down_proj),
            ];
            for (weight, bias, linear) in linears {
                all.insert(Role::Layer(l, weight), linear.weight.clone());
                if let Some(b) = &linear.bias {
                    all.insert(Role::Layer(l, bias), b.clone());
                }
            }
        }
        all
    }

    /// Every weight with its checkpoint name, in [`weight_specs`] order.
    pub fn weights(&self) -> Vec<(String, Tensor<2>)> {
        let mut all = self.by_role();
        weight_specs(&self.config)
            .into_iter()
            .map(|s| {
                let tensor = all.remove(&s.role).expect("the model has every weight");
                (s.name, tensor)
            })
            .collect()
    }

    /// [`Model::weights`], taking the model: each tensor is the only handle on its data, so it is
    /// freed as soon as its consumer is done with it.
    pub fn into_weights(self) -> Vec<(String, Tensor<2>)> {
        self.weights()
    }

    /// Every linear layer with its module path (`model.layers.0.self_attn.q_proj`), in
    /// [`weight_specs`] order.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut all = Vec::new();
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            let named = [
                ("self_attn.q_proj", &mut a.q_proj),
                ("self_attn.k_proj", &mut a.k_proj),
                ("self_attn.v_proj", &mut a.v_proj),
                ("self_attn.o_proj", &mut a.o_proj),
                ("mlp.gate_proj", &mut m.gate_proj),
                ("mlp.up_proj", &mut m.up_proj),
                ("mlp.down_proj", &mut m.down_proj),
            ];
            all.extend(
                named
                    .into_iter()
                    .map(|(name, linear)| (format!("model.layers.{l}.{name}"), linear)),
            );
        }
        all
    }

    /// The same model with its base weights in `dtype` (`BF16` for mixed precision); LoRA
    /// adapters are kept as they are.
    pub fn cast(&self, dtype: DType) -> Model {
        if self.embed_tokens.dtype() == dtype {
            return self.clone();
        }
        self.map_weights(|_, tensor| tensor.cast(dtype))
    }

    /// The same model with every base weight passed through `f` (to track gradients, move
    /// devices…); LoRA adapters are kept as they are.
    pub fn map_weights(&self, mut f: impl FnMut(&str, Tensor<2>) -> Tensor<2>) -> Model {
        let mut weights = self.weights().into_iter();
        let mut mapped = Model::from_fn(&self.config, |spec| {
            let (name, tensor) = weights.next().expect("one tensor per spec");
            debug_assert_eq!(name, spec.name);
            Ok(f(&name, tensor))
        })
        .expect("infallible");
        let mut original = self.clone();
        for ((_, new), (_, old)) in mapped.linears_mut().into_iter().zip(original.linears_mut()) {
            new.lora = old.lora.take();
        }
        mapped
    }

    /// Loads `config.json` and the safetensors checkpoint of a model directory, in f32.
    pub fn load(dir: &Path, device: &Device) -> Result<Model> {
        Model::load_as(dir, device, DType::F32)
    }

    /// Loads a model directory with every weight in `dtype`, cast one tensor at a time as it
    /// is read: a frozen model in bf16 never holds an f32 copy of itself (`load` then
    /// [`Model::cast`] peaks at 6 bytes a parameter, and a GPU's memory pool keeps the freed f32
    /// blocks; this peaks at 2 bytes a parameter plus one f32 tensor). Equal to
    /// `Model::load(dir, device)?.cast(dtype)`.
    ///
    /// # Errors
    /// A missing or invalid `config.json`, a checkpoint without a weight the config implies,
    /// or a weight of another shape.
    pub fn load_as(dir: &Path, device: &Device, dtype: DType) -> Result<Model> {
        let config = ModelConfig::load(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        Model::from_fn(&config, |spec| {
            let values = checkpoint.read_f32(&spec.name, &spec.file_shape)?;
            let tensor = Tensor::<2>::from_data(TensorData::new(values, spec.shape), device);
            Ok(match dtype {
                DType::F32 => tensor,
                _ => tensor.cast(dtype),
            })
        })
    }

    /// Writes `config.json` and the weights (sharded past 5 GB) into `dir`.
    pub fn save(&self, dir: &Path, dtype: SaveDtype) -> Result<()> {
        let mut config = self.config.clone();
        config.dtype = dtype.config_name().to_string();
        let path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&config.to_json()).expect("JSON");
        std::fs::write(&path, text).map_err(crate::error::io_at(&path))?;
        let specs = weight_specs(&self.config);
        let tensors = self
            .weights()
            .into_iter()
            .zip(specs)
            .map(|((name, tensor), spec)| NamedTensor {
                shape: spec.file_shape,
                ..NamedTensor::from_tensor(name, tensor)
            })
            .collect::<Vec<_>>();
        save_safetensors(
            dir,
            &tensors,
            dtype,
            crate::checkpoint::safetensors::MAX_SHARD_BYTES,
        )
    }

    /// The `[vocab, hidden]` output projection (the embeddings when tied).
    pub fn lm_head_weight(&self) -> Tensor<2> {
        self.lm_head
            .clone()
            .unwrap_or_else(|| self.embed_tokens.clone())
    }

    /// The embeddings of `ids` (`[n]`) as `[batch, len, hidden]`, scaled as the family does.
    fn embed(&self, ids: Tensor<1, Int>, batch: usize, len: usize) -> Tensor<3> {
        let x =
            self.embed_tokens
                .clone()
                .select(0, ids)
                .reshape([batch, len, self.config.hidden_size]);
        match self.config.embedding_scale() {
            1.0 => x,
            scale => x.mul_scalar(scale),
        }
    }

    /// The windows the layers use, each once.
    fn windows(&self) -> Vec<Option<usize>> {
        let mut windows: Vec<Option<usize>> = self.layers.iter().map(|l| l.window).collect();
        windows.sort();
        windows.dedup();
        windows
    }

    /// Final-normed hidden states `[batch, len, hidden]` for right-padded token ids
    /// `[batch, len]`, each sequence `lengths[i]` tokens long (padding is never attended to).
    pub fn hidden_states(&self, ids: Tensor<2, Int>, lengths: &[usize]) -> Tensor<3> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let dtype = self.embed_tokens.dtype();
        let mut x = self.embed(ids.reshape([b * t]), b, t);
        let rope = RotaryTables::new(&self.config.rope, t, self.config.head_dim, &device, dtype);
        let masks: Masks = self
            .windows()
            .into_iter()
            .map(|w| (w, attention_mask(lengths, t, w, &device, dtype)))
            .collect();
        for layer in &self.layers {
            x = layer.forward(x, &rope, &masks, None);
        }
        self.norm.forward(x)
    }

    /// Final-normed hidden states `[1, new, hidden]` of `ids` appended to the sequence whose
    /// keys and values `cache` holds; the cache grows by `ids.len()` positions. With an empty
    /// cache this is [`Model::hidden_states`] of one unpadded sequence.
    pub fn hidden_states_cached(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor<3>> {
        let device = self.embed_tokens.device();
        let dtype = self.embed_tokens.dtype();
        let (past, t) = (cache.len, ids.len());
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(ModelError::Argument(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [t]), &device);
        let mut x = self.embed(ids, 1, t);
        let rope = RotaryTables::new(
            &self.config.rope,
            past + t,
            self.config.head_dim,
            &device,
            dtype,
        )
        .positions(past, t);
        let masks: Masks = self
            .windows()
            .into_iter()
            .map(|w| (w, cached_mask(past, t, w, &device, dtype)))
            .collect();
        cache.layers.resize(self.layers.len(), None);
        for (layer, layer_cache) in self.layers.iter().zip(&mut cache.layers) {
            x = layer.forward(x, &rope, &masks, Some(layer_cache));
        }
        cache.len += t;
        Ok(self.norm.forward(x))
    }
}

/// One layer's cached keys and values `[1, kv_heads, len, head_dim]` (RoPE applied).
type LayerCache = Option<(Tensor<4>, Tensor<4>)>;

/// Keys and values of the tokens seen so far, per layer, for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The additive mask `[1, 1, new, past + new]` of new tokens at positions `past..past + new`.
fn cached_mask(
    past: usize,
    new: usize,
    window: Option<usize>,
    device: &Device,
    dtype: DType,
) -> Tensor<4> {
    let window = window.unwrap_or(usize::MAX);
    let total = past + new;
    let values: Vec<f32> = (0..new)
        .flat_map(|i| {
            let q = past + i;
            (0..total).map(move |k| {
                if k <= q && q - k < window {
                    0.0
                } else {
                    -1.0e9
                }
            })
        })
        .collect();
    Tensor::<1>::from_data(TensorData::new(values, [new * total]), (device, dtype))
        .reshape([1, 1, new, total])
}

/// The additive mask `[batch, 1, len, len]` in `dtype`: 0 where query q may see key k (k ≤ q, k > q − window,
/// k a real token), a large negative number elsewhere. `lengths` are the unpadded lengths.
pub fn attention_mask(
    lengths: &[usize],
    len: usize,
    window: Option<usize>,
    device: &Device,
    dtype: DType,
) -> Tensor<4> {
    const MASKED: f32 = -1.0e9;
    let window = window.unwrap_or(usize::MAX);
    let mut values = Vec::with_capacity(lengths.len() * len * len);
    for &real in lengths {
        for q in 0..len {
            for k in 0..len {
                let visible = k <= q && q - k < window && k < real;
                values.push(if visible { 0.0 } else { MASKED });
            }
        }
    }
    Tensor::<1>::from_data(
        TensorData::new(values, [lengths.len() * len * len]),
        (device, dtype),
    )
    .reshape([lengths.len(), 1, len, len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::to_f64;

    #[test]
    fn mask_is_causal_windowed_and_hides_padding() {
        let device = crate::cpu();
        // One sequence of 4 real tokens padded to 5, window 2: query q sees keys q-1 and q.
        let mask = to_f64(attention_mask(&[4], 5, Some(2), &device, DType::F32).reshape([25]));
        let visible: Vec<Vec<usize>> = (0..5)
            .map(|q| (0..5).filter(|&k| mask[q * 5 + k] == 0.0).collect())
            .collect();
        assert_eq!(
            visible,
            vec![vec![0], vec![0, 1], vec![1, 2], vec![2, 3], vec![3]]
        );
    }
}
