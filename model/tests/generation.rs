//! Generation with the KV cache, for every family: cached hidden states equal a full forward
//! pass, greedy decoding gives transformers' tokens (`greedy` in each golden, made with
//! `generate(do_sample=False)`), cached greedy decoding equals decoding that recomputes
//! everything each step, and seeded sampling repeats.

mod common;

use burn::prelude::*;
use burn::tensor::TensorData;
use common::{FAMILIES, fixtures, golden, golden_of, ids};
use flow_model::device::to_f32;
use flow_model::generate::{Sampling, generate};
use flow_model::scoring::{HostHead, OutputHead};
use flow_model::tensor::model::KvCache;
use flow_model::{Model, cpu};

fn full_hidden(model: &Model, seq: &[u32]) -> Vec<f32> {
    let device = cpu();
    let t = seq.len();
    let data: Vec<i64> = seq.iter().map(|&i| i64::from(i)).collect();
    let ids = Tensor::<1, Int>::from_data(TensorData::new(data, [t]), &device).reshape([1, t]);
    to_f32(model.hidden_states(ids, &[t]))
}

fn prompt() -> Vec<u32> {
    ids(&golden()["pairs"][0]["prompt_ids"])
}

#[test]
fn cached_steps_equal_a_full_forward_pass() {
    for family in FAMILIES {
        let model = Model::load(&fixtures().join(family).join("policy"), &cpu()).unwrap();
        let pair = &golden_of(family)["pairs"][1];
        let seq: Vec<u32> = ids(&pair["prompt_ids"])
            .into_iter()
            .chain(ids(&pair["chosen_ids"]))
            .collect();
        let full = full_hidden(&model, &seq);
        let mut cache = KvCache::default();
        let split = 2;
        let mut cached = to_f32(
            model
                .hidden_states_cached(&seq[..split], &mut cache)
                .unwrap(),
        );
        for &token in &seq[split..] {
            cached.extend(to_f32(
                model.hidden_states_cached(&[token], &mut cache).unwrap(),
            ));
        }
        assert_eq!(cache.len(), seq.len());
        assert_eq!(cached.len(), full.len());
        let worst = cached
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{family}: largest difference {worst}");
    }
}

#[test]
fn greedy_decoding_gives_transformers_tokens() {
    for family in FAMILIES {
        let g = golden_of(family);
        let model = Model::load(&fixtures().join(family).join("base"), &cpu()).unwrap();
        let head = OutputHead::new(&model);
        let greedy = &g["greedy"];
        let steps = greedy["max_new_tokens"].as_u64().unwrap() as usize;
        for case in greedy["base"].as_array().unwrap() {
            // EOS does not stop transformers' run: pass an id no model has.
            let new = generate(
                &model,
                &head,
                &ids(&case["prompt_ids"]),
                &[],
                steps,
                Sampling::GREEDY,
            )
            .unwrap();
            assert_eq!(new, ids(&case["new_ids"]), "{family}");
        }
    }
}

#[test]
fn a_prompt_outside_the_vocabulary_is_an_error() {
    let model = Model::load(&fixtures().join("mistral-tiny/base"), &cpu()).unwrap();
    let head = OutputHead::new(&model);
    let err = generate(&model, &head, &[1, 100_000], &[2], 4, Sampling::GREEDY).unwrap_err();
    assert!(
        err.to_string().contains("token id 100000 is outside"),
        "{err}"
    );
}

#[test]
fn cached_greedy_decoding_equals_recomputing_every_step_and_sampling_is_seeded() {
    let model = Model::load(&fixtures().join("mistral-tiny/policy"), &cpu()).unwrap();
    let head = OutputHead::new(&model);
    let eos = model.config.eos_token_id();
    let new = generate(&model, &head, &prompt(), &[eos], 12, Sampling::GREEDY).unwrap();

    let mut seq = prompt();
    let mut expected = Vec::new();
    let hidden = model.config.hidden_size;
    while expected.len() < 12 {
        let states = full_hidden(&model, &seq);
        let logits = HostHead::new(&model).logits(&states[states.len() - hidden..]);
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
    let a = generate(&model, &head, &prompt(), &[eos], 12, sampling).unwrap();
    let b = generate(&model, &head, &prompt(), &[eos], 12, sampling).unwrap();
    assert_eq!(a, b, "same seed, same sample");
    let others: Vec<Vec<u32>> = (8..12)
        .map(|seed| {
            generate(
                &model,
                &head,
                &prompt(),
                &[eos],
                12,
                Sampling { seed, ..sampling },
            )
            .unwrap()
        })
        .collect();
    assert!(
        others.iter().any(|o| o != &a),
        "other seeds give other samples"
    );
}

/// A chat model stops at its end-of-turn token as transformers' `generate` does: every
/// `eos_token_id` of `generation_config.json` (a number or a list) joins the tokenizer's EOS.
#[test]
fn generation_config_eos_ids_are_stop_tokens() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json", "config.json"] {
        std::fs::copy(
            fixtures().join("mistral-tiny/base").join(file),
            dir.path().join(file),
        )
        .unwrap();
    }
    let tokenizer = flow_model::tokenize::PreferenceTokenizer::load(dir.path()).unwrap();
    assert_eq!(tokenizer.stop_ids, [tokenizer.eos_id]);
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [2, 7]}"#,
    )
    .unwrap();
    let tokenizer = flow_model::tokenize::PreferenceTokenizer::load(dir.path()).unwrap();
    assert_eq!(tokenizer.eos_id, 2);
    assert_eq!(tokenizer.stop_ids, [2, 7]);
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": 9}"#,
    )
    .unwrap();
    let tokenizer = flow_model::tokenize::PreferenceTokenizer::load(dir.path()).unwrap();
    assert_eq!(tokenizer.stop_ids, [2, 9]);
}

#[test]
fn greedy_decoding_gives_transformers_tokens_on_the_test_device() {
    let Some(device) = common::test_device() else {
        return;
    };
    for family in FAMILIES {
        let g = golden_of(family);
        let model = Model::load(&fixtures().join(family).join("base"), &device).unwrap();
        let head = OutputHead::new(&model);
        assert!(
            matches!(head, OutputHead::Device(_)) != flow_model::is_host(&device),
            "the output layer stays on a GPU and runs on the host for the CPU"
        );
        let greedy = &g["greedy"];
        let steps = greedy["max_new_tokens"].as_u64().unwrap() as usize;
        for case in greedy["base"].as_array().unwrap() {
            let prompt = ids(&case["prompt_ids"]);
            let new = generate(&model, &head, &prompt, &[], steps, Sampling::GREEDY).unwrap();
            assert_eq!(new, ids(&case["new_ids"]), "{family} on {device:?}");
        }
    }
}
