//! Generation with the KV cache: cached hidden states equal a full forward pass, cached greedy
//! decoding equals decoding that recomputes everything each step, and seeded sampling repeats.

mod common;

use burn::prelude::*;
use burn::tensor::TensorData;
use common::{fixtures, golden, ids};
use flow_model::device::to_f32;
use flow_model::generate::{Sampling, generate};
use flow_model::scoring::HostHead;
use flow_model::tensor::mistral::{KvCache, attention_mask};
use flow_model::{Mistral, cpu};

fn full_hidden(model: &Mistral, seq: &[u32]) -> Vec<f32> {
    let device = cpu();
    let t = seq.len();
    let data: Vec<i64> = seq.iter().map(|&i| i64::from(i)).collect();
    let ids = Tensor::<1, Int>::from_data(TensorData::new(data, [t]), &device).reshape([1, t]);
    let mask = attention_mask(
        &[t],
        t,
        model.config.sliding_window,
        &device,
        model.embed_tokens.dtype(),
    );
    to_f32(model.hidden_states(ids, &mask))
}

fn prompt() -> Vec<u32> {
    ids(&golden()["pairs"][0]["prompt_ids"])
}

#[test]
fn cached_steps_equal_a_full_forward_pass() {
    let model = Mistral::load(&fixtures().join("mistral-tiny/policy"), &cpu()).unwrap();
    let pair = &golden()["pairs"][0];
    let seq: Vec<u32> = ids(&pair["prompt_ids"])
        .into_iter()
        .chain(ids(&pair["chosen_ids"]))
        .collect();
    let full = full_hidden(&model, &seq);
    let mut cache = KvCache::default();
    let split = 2;
    let mut cached = to_f32(model.hidden_states_cached(&seq[..split], &mut cache));
    for &token in &seq[split..] {
        cached.extend(to_f32(model.hidden_states_cached(&[token], &mut cache)));
    }
    assert_eq!(cache.len(), seq.len());
    assert_eq!(cached.len(), full.len());
    let worst = cached
        .iter()
        .zip(&full)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "largest difference {worst}");
}

#[test]
fn cached_greedy_decoding_equals_recomputing_every_step_and_sampling_is_seeded() {
    let model = Mistral::load(&fixtures().join("mistral-tiny/policy"), &cpu()).unwrap();
    let head = HostHead::new(&model);
    let eos = model.config.eos_token_id;
    let new = generate(&model, &head, &prompt(), eos, 12, Sampling::GREEDY);

    let mut seq = prompt();
    let mut expected = Vec::new();
    let hidden = model.config.hidden_size;
    while expected.len() < 12 {
        let states = full_hidden(&model, &seq);
        let logits = head.logits(&states[states.len() - hidden..]);
        let token =
            (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b }) as u32;
        expected.push(token);
        seq.push(token);
        if token == eos {
            break;
        }
    }
    assert_eq!(new, expected);

    let sampling = Sampling {
        temperature: 0.8,
        top_p: 0.9,
        seed: 7,
    };
    let a = generate(&model, &head, &prompt(), eos, 12, sampling);
    let b = generate(&model, &head, &prompt(), eos, 12, sampling);
    assert_eq!(a, b, "same seed, same sample");
    let others: Vec<Vec<u32>> = (8..12)
        .map(|seed| {
            generate(
                &model,
                &head,
                &prompt(),
                eos,
                12,
                Sampling { seed, ..sampling },
            )
        })
        .collect();
    assert!(
        others.iter().any(|o| o != &a),
        "other seeds give other samples"
    );
}
