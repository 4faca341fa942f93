//! Gradients through the whole model agree with finite differences (in f64): every op on the
//! training path (embedding lookup, RMSNorm, RoPE, grouped-query attention with its mask,
//! SwiGLU, chunked log-softmax and gather) has a correct backward.

use burn::tensor::{DType, TensorData};
use flow_model::device::to_f64;
use flow_model::scoring::{Sequence, score};
use flow_model::{Device, Model, Tensor, cpu};
use std::path::Path;

fn model_f64(device: &Device, track: bool) -> Model {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mistral-tiny/policy");
    let loaded = Model::load(&dir, &cpu()).unwrap();
    loaded.map_weights(|_, t| {
        let t = Tensor::<2>::from_data(t.into_data_dtype(DType::F64), (device, DType::F64));
        if track { t.require_grad() } else { t }
    })
}

/// Two sequences of different lengths, so padding and the mask are on the path.
fn batch() -> Vec<Sequence> {
    vec![
        Sequence {
            ids: vec![1, 315, 287, 340, 355, 288, 293, 349, 33, 360, 355, 288, 2],
            completion_start: 9,
        },
        Sequence {
            ids: vec![1, 38, 349, 312, 309, 341, 2],
            completion_start: 3,
        },
    ]
}

fn loss(model: &Model, device: &Device) -> Tensor<1> {
    // A mix of both sequences, so the two get different weights.
    let sums = score(model, &batch(), device).unwrap().sums;
    let weights = Tensor::<1>::from_data(
        TensorData::new(vec![1.0f64, -0.5], [2]),
        (device, sums.dtype()),
    );
    (sums * weights).sum()
}

/// Sets one weight entry to `value`.
fn with_entry(model: &Model, name: &str, index: usize, value: f64, device: &Device) -> Model {
    model.map_weights(|n, t| {
        if n != name {
            return t;
        }
        let shape = t.dims();
        let mut values = to_f64(t.flatten::<1>(0, 1));
        values[index] = value;
        Tensor::<2>::from_data(TensorData::new(values, shape), (device, DType::F64))
    })
}

#[test]
fn summed_logp_gradient_matches_finite_differences() {
    let plain = cpu();
    let tracked_device = plain.clone().autodiff();
    let tracked = model_f64(&tracked_device, true);
    let grads = loss(&tracked, &tracked_device).backward();
    let fixed = model_f64(&plain, false);
    let probes = [
        ("model.embed_tokens.weight", 315 * 64 + 3),
        ("model.layers.0.input_layernorm.weight", 5),
        ("model.layers.0.self_attn.q_proj.weight", 17),
        ("model.layers.0.self_attn.k_proj.weight", 100),
        ("model.layers.1.self_attn.v_proj.weight", 33),
        ("model.layers.1.self_attn.o_proj.weight", 250),
        ("model.layers.1.post_attention_layernorm.weight", 40),
        ("model.layers.0.mlp.gate_proj.weight", 1000),
        ("model.layers.1.mlp.up_proj.weight", 77),
        ("model.layers.1.mlp.down_proj.weight", 4000),
        ("model.norm.weight", 9),
        ("lm_head.weight", 355 * 64 + 1),
    ];
    let weights = tracked.weights();
    for (name, index) in probes {
        let tensor = &weights.iter().find(|(n, _)| n == name).unwrap().1;
        let analytic = to_f64(tensor.grad(&grads).expect("a gradient").flatten::<1>(0, 1))[index];
        let original = to_f64(
            fixed
                .weights()
                .into_iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .flatten::<1>(0, 1),
        )[index];
        let h = 1e-5;
        let up = to_f64(loss(
            &with_entry(&fixed, name, index, original + h, &plain),
            &plain,
        ))[0];
        let down = to_f64(loss(
            &with_entry(&fixed, name, index, original - h, &plain),
            &plain,
        ))[0];
        let numeric = (up - down) / (2.0 * h);
        let error = (analytic - numeric).abs() / numeric.abs().max(1e-3);
        assert!(
            error < 1e-5,
            "{name}[{index}]: autodiff {analytic} vs finite difference {numeric}"
        );
    }
}

/// The f32 path scores the lm_head through a surrogate (host softmax, gradient onehot − softmax);
/// its gradients must equal those of the plain log-softmax composition (taken here in f64).
#[test]
fn f32_surrogate_lm_head_gradients_equal_the_log_softmax_ones() {
    let plain = cpu();
    let tracked_device = plain.clone().autodiff();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mistral-tiny/policy");
    let f32_model = Model::load(&dir, &plain)
        .unwrap()
        .map_weights(|_, t| t.autodiff().require_grad());
    let f64_model = model_f64(&tracked_device, true);
    let grads32 = loss(&f32_model, &tracked_device).backward();
    let grads64 = loss(&f64_model, &tracked_device).backward();
    for ((name, a), (_, b)) in f32_model.weights().iter().zip(f64_model.weights().iter()) {
        let g32 = to_f64(a.grad(&grads32).expect("a gradient").flatten::<1>(0, 1));
        let g64 = to_f64(b.grad(&grads64).expect("a gradient").flatten::<1>(0, 1));
        let scale = g64.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-6);
        let worst = g32
            .iter()
            .zip(&g64)
            .map(|(x, y)| (x - y).abs())
            .fold(0f64, f64::max);
        assert!(
            worst <= 1e-4 * scale,
            "{name}: max difference {worst} (scale {scale})"
        );
    }
}
