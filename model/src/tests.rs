//! Tests that need several rooms at once: the host path against the tensor path (log-probs
//! and, in f64, gradients), and a model's round trip through the tensor path and a checkpoint.

use crate::arch::{ModelConfig, weight_specs};
use crate::bench::{BenchShape, bench_config};
use crate::device::{to_f32, to_f64};
use crate::host::HostModel;
use crate::rng::SplitMix64;
use crate::scoring::{Scorer, Sequence, score};
use crate::tensor::model::Model;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};

/// A small model with grouped heads and a sliding window of `window` tokens; every weight
/// (norms included) random.
fn model(tied: bool, window: usize) -> Model {
    let mut config = bench_config(&BenchShape {
        family: crate::arch::Family::Mistral,
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
    Model::from_fn(&config, |spec| {
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

fn host_weights(model: &Model) -> Vec<Vec<f32>> {
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
        let host =
            HostModel::new(&model.config, weights.iter().map(Vec::as_slice).collect()).unwrap();
        let forward = host.forward(&batch()).unwrap();
        let scored = Scorer::new(model).score(&batch(), &crate::cpu()).unwrap();
        assert_eq!(forward.token_logps.len(), scored.token_logps.len());
        for (a, b) in forward.token_logps.iter().zip(&scored.token_logps) {
            assert!((f64::from(*a) - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}

/// The host backward pass against burn's autodiff in f64 (itself checked against finite
/// differences in tests/gradients.rs), for `Σ gᵢ · logpᵢ` with random `g`.
#[test]
fn gradients_equal_autodiff_in_f64() {
    for (tied, window) in [(false, 5), (true, 100), (false, 4096)] {
        let model = model(tied, window);
        let weights = host_weights(&model);
        let host =
            HostModel::new(&model.config, weights.iter().map(Vec::as_slice).collect()).unwrap();
        let forward = host.forward(&batch()).unwrap();
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
        let logps = score(&tracked, &batch(), &device).unwrap().token_logps;
        let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
        let n = g64.len();
        let weights_g = Tensor::<1>::from_data(TensorData::new(g64, [n]), (&device, DType::F64));
        let gradients = (logps * weights_g).sum().backward();
        for ((name, _), (leaf, host_grad)) in model.weights().iter().zip(leaves.iter().zip(&grads))
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

/// `‖exact − host‖ ≤ 1e-5 · ‖exact‖` (the norm floored at 1e-3).
fn assert_gradient(exact: &[f64], host: &[f32], what: &str) {
    let norm = exact.iter().map(|x| x * x).sum::<f64>().sqrt();
    let error = exact
        .iter()
        .zip(host)
        .map(|(e, h)| (e - f64::from(*h)).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        error <= 1e-5 * norm.max(1e-3),
        "{what}: error {error:e}, norm {norm:e}"
    );
}

/// LoRA on the host path against burn's autodiff in f64: adapters of rank 3 with random A and B
/// on every projection, the base frozen; the gradients of every A and B.
#[test]
fn adapter_gradients_equal_autodiff_in_f64() {
    for (tied, window) in [(false, 5), (true, 100), (false, 4096)] {
        let mut model = model(tied, window);
        let lora = crate::tensor::lora::LoraConfig {
            r: 3,
            alpha: 5.0,
            dropout: 0.0,
            targets: crate::tensor::lora::TARGETS.map(String::from).to_vec(),
            use_rslora: tied,
        };
        crate::tensor::lora::attach(&mut model, &lora, 4);
        let mut rng = SplitMix64::new(9);
        let adapters: Vec<Vec<f32>> = crate::tensor::lora::adapter_tensors(&model)
            .iter()
            .map(|(_, t)| {
                let [r, c] = t.dims();
                (0..r * c).map(|_| 0.1 * rng.next_normal() as f32).collect()
            })
            .collect();
        let weights = host_weights(&crate::tensor::lora::without_adapters(&model));
        let places = crate::tensor::lora::adapter_places(&model);
        let host_adapters = places
            .iter()
            .zip(adapters.chunks(2))
            .map(|(place, ab)| {
                let adapter = crate::host::HostAdapter {
                    a: &ab[0],
                    b: &ab[1],
                    rank: place.rank,
                    scale: place.scale as f32,
                    dropout: 0.0,
                    seed: 0,
                };
                (place.position, adapter)
            })
            .collect();
        let host = HostModel::new(&model.config, weights.iter().map(Vec::as_slice).collect())
            .unwrap()
            .with_adapters(host_adapters);
        let forward = host.forward(&batch()).unwrap();
        let g: Vec<f32> = (0..forward.token_logps.len())
            .map(|_| rng.next_normal() as f32)
            .collect();
        let mut grads: Vec<Vec<f32>> = adapters.iter().map(|a| vec![0.0; a.len()]).collect();
        host.backward(forward, &g, &mut grads);

        let device = crate::cpu();
        let mut tracked = model.map_weights(|_, w| w.cast(DType::F64));
        let leaves: Vec<Tensor<2>> = crate::tensor::lora::adapter_tensors(&model)
            .iter()
            .zip(&adapters)
            .map(|((_, t), values)| {
                Tensor::<2>::from_data(
                    TensorData::new(values.clone(), t.dims()),
                    (&device, DType::F64),
                )
                .autodiff()
                .require_grad()
            })
            .collect();
        crate::tensor::lora::set_adapter_tensors(&mut tracked, leaves.clone().into_iter());
        let logps = score(&tracked, &batch(), &device).unwrap().token_logps;
        let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
        let n = g64.len();
        let weights_g = Tensor::<1>::from_data(TensorData::new(g64, [n]), (&device, DType::F64));
        let gradients = (logps * weights_g).sum().backward();
        for (((name, _), leaf), host_grad) in crate::tensor::lora::adapter_tensors(&model)
            .iter()
            .zip(&leaves)
            .zip(&grads)
        {
            let exact = to_f64(leaf.grad(&gradients).unwrap().flatten::<1>(0, 1));
            assert_gradient(
                &exact,
                host_grad,
                &format!("{name} (tied {tied}, window {window})"),
            );
        }
    }
}

/// Preference pairs (chosen, rejected) sharing prompts of different lengths; the first pair's
/// answers also share their first tokens, the last pair's prompt is one token.
fn pairs() -> Vec<Sequence> {
    let mut rng = SplitMix64::new(21);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(61) as u32).collect() };
    [(9, 4, 7), (70, 30, 12), (1, 5, 3)]
        .into_iter()
        .flat_map(|(prompt, chosen, rejected)| {
            let prompt = ids(prompt);
            let (mut c, mut r) = (ids(chosen), ids(rejected));
            if prompt.len() == 9 {
                r[..2].copy_from_slice(&c[..2]);
            }
            let full =
                |answer: &mut Vec<u32>| prompt.iter().chain(answer.iter()).copied().collect();
            [
                Sequence {
                    ids: full(&mut c),
                    completion_start: prompt.len(),
                },
                Sequence {
                    ids: full(&mut r),
                    completion_start: prompt.len(),
                },
            ]
        })
        .collect()
}

/// Log-probs of [`pairs`] on the host path (prompts shared or not, layers checkpointed or not)
/// and the gradients of `Σ gᵢ · logpᵢ` for a fixed `g`: every weight's, or with `adapters` the
/// adapters'.
fn host_pass(
    model: &Model,
    (share, checkpointing): (bool, bool),
    adapters: Option<&[Vec<f32>]>,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let weights = host_weights(&crate::tensor::lora::without_adapters(model));
    let base = HostModel::new(&model.config, weights.iter().map(Vec::as_slice).collect())
        .unwrap()
        .sharing_prefixes(share)
        .checkpointing(checkpointing);
    let (host, sizes): (HostModel, Vec<usize>) = match adapters {
        None => (base, weights.iter().map(Vec::len).collect()),
        Some(values) => {
            let places = crate::tensor::lora::adapter_places(model);
            let list = places
                .iter()
                .zip(values.chunks(2))
                .map(|(place, ab)| {
                    let adapter = crate::host::HostAdapter {
                        a: &ab[0],
                        b: &ab[1],
                        rank: place.rank,
                        scale: place.scale as f32,
                        dropout: 0.0,
                        seed: 0,
                    };
                    (place.position, adapter)
                })
                .collect();
            (
                base.with_adapters(list),
                values.iter().map(Vec::len).collect(),
            )
        }
    };
    let forward = host.forward(&pairs()).unwrap();
    let logps = forward.token_logps.clone();
    let g: Vec<f32> = (0..logps.len())
        .map(|i| ((i * 7) % 5) as f32 - 2.0)
        .collect();
    let mut grads: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
    host.backward(forward, &g, &mut grads);
    (logps, grads)
}

/// The shared pass equals the unshared one: log-probs within 1e-5, gradients within 1e-5 of
/// their norm.
fn assert_same_pass(
    shared: (Vec<f32>, Vec<Vec<f32>>),
    alone: (Vec<f32>, Vec<Vec<f32>>),
    what: &str,
) {
    assert_eq!(shared.0.len(), alone.0.len());
    for (x, y) in shared.0.iter().zip(&alone.0) {
        assert!((x - y).abs() < 1e-5, "{what}: log-prob {x} vs {y}");
    }
    for (x, y) in shared.1.iter().zip(&alone.1) {
        let exact: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
        assert_gradient(&exact, x, what);
    }
}

/// Computing a pair's shared prompt once, and recomputing each layer in the backward pass
/// (gradient checkpointing), give the log-probs and gradients (every weight, or LoRA adapters)
/// of computing each sequence alone with everything kept.
#[test]
fn shared_prompts_and_checkpointing_give_the_plain_log_probs_and_gradients() {
    for (tied, window) in [(false, 5), (true, 100), (false, 4096)] {
        let mut model = model(tied, window);
        let what = format!("full (tied {tied}, window {window})");
        let alone = host_pass(&model, (false, false), None);
        assert_same_pass(host_pass(&model, (true, false), None), alone.clone(), &what);
        let what = format!("full, checkpointing (tied {tied}, window {window})");
        assert_same_pass(host_pass(&model, (true, true), None), alone, &what);
        let lora = crate::tensor::lora::LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            targets: crate::tensor::lora::TARGETS.map(String::from).to_vec(),
            use_rslora: false,
        };
        crate::tensor::lora::attach(&mut model, &lora, 1);
        let mut rng = SplitMix64::new(2);
        let adapters: Vec<Vec<f32>> = crate::tensor::lora::adapter_tensors(&model)
            .iter()
            .map(|(_, t)| {
                let [r, c] = t.dims();
                (0..r * c).map(|_| 0.1 * rng.next_normal() as f32).collect()
            })
            .collect();
        let alone = host_pass(&model, (false, false), Some(&adapters));
        let what = format!("LoRA (tied {tied}, window {window})");
        let shared = host_pass(&model, (true, false), Some(&adapters));
        assert_same_pass(shared, alone.clone(), &what);
        let what = format!("LoRA, checkpointing (tied {tied}, window {window})");
        let checkpointed = host_pass(&model, (true, true), Some(&adapters));
        assert_same_pass(checkpointed, alone, &what);
    }
}

#[test]
fn tied_embeddings_have_no_lm_head_and_round_trip() {
    let device = crate::cpu();
    let config = crate::bench::bench_config(&crate::bench::BenchShape {
        family: crate::arch::Family::Mistral,
        hidden: 32,
        intermediate: 64,
        layers: 1,
        heads: 4,
        kv_heads: 2,
        vocab: 50,
        pairs: 1,
        seq: 8,
        repeats: 1,
    });
    let config = ModelConfig {
        tie_word_embeddings: true,
        ..config
    };
    let model = Model::random(&config, 3, 0.02, &device);
    assert!(
        weight_specs(&config)
            .iter()
            .all(|s| s.name != "lm_head.weight")
    );
    let dir = tempfile::tempdir().unwrap();
    model
        .save(dir.path(), crate::checkpoint::safetensors::SaveDtype::F32)
        .unwrap();
    let again = Model::load(dir.path(), &device).unwrap();
    assert!(again.config.tie_word_embeddings && again.lm_head.is_none());
    let (a, b) = (
        to_f64(model.lm_head_weight().flatten::<1>(0, 1)),
        to_f64(again.embed_tokens.clone().flatten::<1>(0, 1)),
    );
    assert_eq!(a, b);
}
