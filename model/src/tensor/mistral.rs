//! Mistral (Jiang et al. 2023), as transformers' `MistralForCausalLM` computes it:
//! token embeddings → N × [RMSNorm → grouped-query attention with RoPE (rotate-half layout)
//! and a sliding causal window → residual → RMSNorm → SwiGLU MLP → residual] → RMSNorm → lm_head.
//!
//! Weights keep the checkpoint's layout (`[out, in]` for linear layers); checkpoint names are
//! mapped to fields in one place, [`weight_specs`] with [`Mistral::from_fn`] and [`Mistral::weights`].
//! Every weight is held as a 2-D tensor (norm weights as `[1, hidden]`) so that optimizers and
//! savers treat all of them alike.

use burn::prelude::*;
use burn::tensor::{DType, TensorData, activation, module};
use rayon::prelude::*;
use std::path::Path;

use super::adapter::LoraAdapter;
use crate::arch::{MistralConfig, WeightSpec, rope_tables, weight_specs};
use crate::checkpoint::safetensors::{Checkpoint, NamedTensor, SaveDtype, save_safetensors};
use crate::device::to_f32;
use crate::error::Result;
use crate::host::ops::{rms_norm_rows_in_place, swiglu_rows_in_place};
use crate::host::vector::rotate_half_in_place;

/// `y = x Wᵀ` with `W` in the checkpoint's `[out, in]` layout, plus a LoRA update when an
/// adapter is attached (see [`super::adapter`]).
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor<2>,
    /// Low-rank adapter, if any.
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    fn new(weight: Tensor<2>) -> Linear {
        Linear { weight, lora: None }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let out = self.weight.dims()[0];
        let x = x.reshape([b * t, d]);
        let mut y = x.clone().matmul(self.weight.clone().transpose());
        if let Some(lora) = &self.lora {
            y = y + lora.forward(x);
        }
        y.reshape([b, t, out])
    }
}

/// Root-mean-square norm: `x / sqrt(mean(x²) + ε) · w`.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// `[1, hidden]`.
    pub weight: Tensor<2>,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if on_host_without_gradients(&[&x]) && on_host_without_gradients(&[&self.weight]) {
            return self.forward_on_host(x);
        }
        let mean_square = x.clone().square().mean_dim(2);
        let normed = x * mean_square.add_scalar(self.eps).sqrt().recip();
        normed * self.weight.clone().unsqueeze::<3>()
    }

    /// [`RmsNorm::forward`] as one parallel pass over the rows on the host.
    fn forward_on_host(&self, x: Tensor<3>) -> Tensor<3> {
        let weight = to_f32(self.weight.clone());
        let eps = self.eps as f32;
        map_on_host(x, |values| {
            rms_norm_rows_in_place(values, &weight, eps);
        })
    }
}

/// Rotary position embeddings in the rotate-half layout of Hugging Face checkpoints.
#[derive(Clone, Debug)]
pub struct Rope {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rope {
    /// Tables for positions `0..len`, in `dtype`.
    pub fn new(len: usize, head_dim: usize, theta: f64, device: &Device, dtype: DType) -> Rope {
        let (cos, sin) = rope_tables(len, head_dim, theta);
        let table = |v: Vec<f32>| {
            Tensor::<2>::from_data(TensorData::new(v, [len, head_dim]), (device, dtype))
                .reshape([1, 1, len, head_dim])
        };
        Rope {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// The tables of positions `start..start + len` only (a KV-cached step's new tokens).
    fn positions(&self, start: usize, len: usize) -> Rope {
        Rope {
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

    /// [`Rope::apply`] as one parallel pass over the heads on the host (the same products and
    /// sums, so the same values); the result is contiguous `[batch, heads, len, head_dim]`.
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
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// Attention of `x`'s tokens over the cached keys and values (when a cache is given: they
    /// come first) and their own; `mask` is `[batch, 1, new, cached + new]`.
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        mask: &Tensor<4>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let split =
            |y: Tensor<3>, heads: usize| y.reshape([b, t, heads, self.head_dim]).swap_dims(1, 2);
        let q = rope.apply(split(self.q_proj.forward(x.clone()), self.heads));
        let mut k = rope.apply(split(self.k_proj.forward(x.clone()), self.kv_heads));
        let mut v = split(self.v_proj.forward(x), self.kv_heads);
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
            // scores tile per head in cache).
            module::attention(q, k, v, None, Some(mask.clone()), Default::default())
        };
        self.o_proj.forward(
            out.swap_dims(1, 2)
                .reshape([b, t, self.heads * self.head_dim]),
        )
    }

    /// `softmax(q kᵀ / √d + mask) v` as tensor operations autodiff can differentiate.
    fn attend_differentiably(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: &Tensor<4>,
    ) -> Tensor<4> {
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + mask.clone();
        activation::softmax(scores, 3).matmul(v)
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

/// SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// Gate projection.
    pub gate_proj: Linear,
    /// Up projection.
    pub up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(swiglu(gate, self.up_proj.forward(x)))
    }
}

/// `silu(gate) · up`. Without gradients, on the CPU in f32, one vectorised pass on the host
/// (the backend's sigmoid calls the scalar `expf` once per element); otherwise tensor operations.
fn swiglu(gate: Tensor<3>, up: Tensor<3>) -> Tensor<3> {
    if !on_host_without_gradients(&[&gate, &up]) {
        return activation::silu(gate) * up;
    }
    let up = to_f32(up);
    map_on_host(gate, |values| swiglu_rows_in_place(values, &up))
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
        .all(|t| t.dtype() == DType::F32 && !t.is_autodiff() && t.device() == crate::cpu())
}

/// One decoder layer (pre-norm residual blocks).
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// MLP.
    pub mlp: Mlp,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        mask: &Tensor<4>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let x = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), rope, mask, cache);
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}

/// The whole model.
#[derive(Clone, Debug)]
pub struct Mistral {
    /// Its config.
    pub config: MistralConfig,
    /// `[vocab, hidden]`.
    pub embed_tokens: Tensor<2>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// `[vocab, hidden]`; `None` when tied to the embeddings.
    pub lm_head: Option<Tensor<2>>,
}

impl Mistral {
    /// Builds the model from a function that yields each weight (by its spec).
    pub fn from_fn(
        config: &MistralConfig,
        mut weight: impl FnMut(&WeightSpec) -> Result<Tensor<2>>,
    ) -> Result<Mistral> {
        let specs = weight_specs(config);
        let mut tensors = specs
            .iter()
            .map(&mut weight)
            .collect::<Result<Vec<_>>>()?
            .into_iter();
        let mut next = || tensors.next().expect("one tensor per spec");
        let norm = |weight: Tensor<2>| RmsNorm {
            weight,
            eps: config.rms_norm_eps,
        };
        let embed_tokens = next();
        let layers = (0..config.num_hidden_layers)
            .map(|_| DecoderLayer {
                input_layernorm: norm(next()),
                self_attn: Attention {
                    q_proj: Linear::new(next()),
                    k_proj: Linear::new(next()),
                    v_proj: Linear::new(next()),
                    o_proj: Linear::new(next()),
                    heads: config.num_attention_heads,
                    kv_heads: config.num_key_value_heads,
                    head_dim: config.head_dim,
                },
                post_attention_layernorm: norm(next()),
                mlp: Mlp {
                    gate_proj: Linear::new(next()),
                    up_proj: Linear::new(next()),
                    down_proj: Linear::new(next()),
                },
            })
            .collect();
        let final_norm = norm(next());
        let lm_head = (!config.tie_word_embeddings).then(&mut next);
        Ok(Mistral {
            config: config.clone(),
            embed_tokens,
            layers,
            norm: final_norm,
            lm_head,
        })
    }

    /// Every weight with its checkpoint name, in [`weight_specs`] order.
    pub fn weights(&self) -> Vec<(String, Tensor<2>)> {
        let mut all = vec![self.embed_tokens.clone()];
        for l in &self.layers {
            let a = &l.self_attn;
            all.extend([
                l.input_layernorm.weight.clone(),
                a.q_proj.weight.clone(),
                a.k_proj.weight.clone(),
                a.v_proj.weight.clone(),
                a.o_proj.weight.clone(),
            ]);
            all.extend([
                l.post_attention_layernorm.weight.clone(),
                l.mlp.gate_proj.weight.clone(),
                l.mlp.up_proj.weight.clone(),
                l.mlp.down_proj.weight.clone(),
            ]);
        }
        all.push(self.norm.weight.clone());
        all.extend(self.lm_head.clone());
        weight_specs(&self.config)
            .into_iter()
            .map(|s| s.name)
            .zip(all)
            .collect()
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
    pub fn cast(&self, dtype: DType) -> Mistral {
        if self.embed_tokens.dtype() == dtype {
            return self.clone();
        }
        self.map_weights(|_, tensor| tensor.cast(dtype))
    }

    /// The same model with every base weight passed through `f` (to track gradients, move
    /// devices…); LoRA adapters are kept as they are.
    pub fn map_weights(&self, mut f: impl FnMut(&str, Tensor<2>) -> Tensor<2>) -> Mistral {
        let mut weights = self.weights().into_iter();
        let mut mapped = Mistral::from_fn(&self.config, |spec| {
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

    /// Loads `config.json` and the safetensors checkpoint of a model directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Mistral> {
        let config = MistralConfig::load(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        Mistral::from_fn(&config, |spec| {
            let values = checkpoint.read_f32(&spec.name, &spec.file_shape)?;
            Ok(Tensor::<2>::from_data(
                TensorData::new(values, spec.shape),
                device,
            ))
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

    /// Final-normed hidden states `[batch, len, hidden]` for token ids `[batch, len]`,
    /// with `mask` the additive attention mask from [`attention_mask`].
    pub fn hidden_states(&self, ids: Tensor<2, Int>, mask: &Tensor<4>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let hidden = self.config.hidden_size;
        let mut x = self
            .embed_tokens
            .clone()
            .select(0, ids.reshape([b * t]))
            .reshape([b, t, hidden]);
        let rope = Rope::new(
            t,
            self.config.head_dim,
            self.config.rope_theta,
            &device,
            self.embed_tokens.dtype(),
        );
        for layer in &self.layers {
            x = layer.forward(x, &rope, mask, None);
        }
        self.norm.forward(x)
    }

    /// Final-normed hidden states `[1, new, hidden]` of `ids` appended to the sequence whose
    /// keys and values `cache` holds; the cache grows by `ids.len()` positions. With an empty
    /// cache this is [`Mistral::hidden_states`] of one unpadded sequence.
    pub fn hidden_states_cached(&self, ids: &[u32], cache: &mut KvCache) -> Tensor<3> {
        let device = self.embed_tokens.device();
        let dtype = self.embed_tokens.dtype();
        let (past, t) = (cache.len, ids.len());
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [t]), &device);
        let mut x =
            self.embed_tokens
                .clone()
                .select(0, ids)
                .reshape([1, t, self.config.hidden_size]);
        let rope = Rope::new(
            past + t,
            self.config.head_dim,
            self.config.rope_theta,
            &device,
            dtype,
        )
        .positions(past, t);
        let mask = cached_mask(past, t, self.config.sliding_window, &device, dtype);
        cache.layers.resize(self.layers.len(), None);
        for (layer, layer_cache) in self.layers.iter().zip(&mut cache.layers) {
            x = layer.forward(x, &rope, &mask, Some(layer_cache));
        }
        cache.len += t;
        self.norm.forward(x)
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
