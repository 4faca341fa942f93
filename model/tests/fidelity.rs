//! The model core against numbers from transformers and TRL (tests/fixtures, made with
//! `MistralForCausalLM` and `DPOTrainer`): tokenization, per-token log-probs of the reference
//! and the policy, batched against unbatched, sharded against single-file loading.

use burn::tensor::DType;
use flow_model::device::to_f64;
use flow_model::scoring::{HostScorer, Scorer, Sequence, score};
use flow_model::tokenize::{Message, PairText, PreferenceTokenizer};
use flow_model::{Device, Model, ModelConfig, cpu, is_host};
use serde_json::Value;

mod common;
use common::{FAMILIES, assert_close, fixtures, floats, golden, golden_of, ids, test_device};

#[test]
fn tiny_tokenizer_splits_pairs_as_trl() {
    let g = golden();
    let tok = PreferenceTokenizer::load(&fixtures().join("mistral-tiny/base")).unwrap();
    assert_eq!(tok.eos_id, 2);
    for p in g["pairs"].as_array().unwrap() {
        let pair = tok.tokenize_pair(
            p["prompt"].as_str().unwrap(),
            p["chosen"].as_str().unwrap(),
            p["rejected"].as_str().unwrap(),
        );
        assert_eq!(
            pair.prompt_ids,
            ids(&p["prompt_ids"]),
            "prompt {}",
            p["prompt"]
        );
        assert_eq!(pair.chosen_ids, ids(&p["chosen_ids"]));
        assert_eq!(pair.rejected_ids, ids(&p["rejected_ids"]));
    }
}

#[test]
fn mistral_7b_tokenizer_ids_are_identical_to_transformers() {
    let dir = fixtures().join("mistral-7b-tokenizer");
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer-golden.json")).unwrap())
            .unwrap();
    let tok = PreferenceTokenizer::load(&dir).unwrap();
    assert_eq!(tok.eos_id, 2);
    for e in g["encodings"].as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        assert_eq!(tok.encode(text), ids(&e["ids"]), "{text:?}");
        assert_eq!(
            tok.decode(&ids(&e["ids"])),
            e["decoded_skip_special"].as_str().unwrap()
        );
    }
    for d in g["dpo_tokenization"].as_array().unwrap() {
        let pair = tok.tokenize_pair(
            d["prompt"].as_str().unwrap(),
            d["chosen"].as_str().unwrap(),
            d["rejected"].as_str().unwrap(),
        );
        assert_eq!(pair.prompt_ids, ids(&d["prompt_ids"]));
        assert_eq!(pair.chosen_ids, ids(&d["chosen_ids"]));
        assert_eq!(pair.rejected_ids, ids(&d["rejected_ids"]));
    }
}

#[test]
fn both_config_styles_parse() {
    let v5 = ModelConfig::load(&fixtures().join("mistral-tiny/base")).unwrap();
    assert_eq!(
        (
            v5.rope.theta,
            v5.num_key_value_heads,
            v5.head_dim,
            v5.tie_word_embeddings
        ),
        (10000.0, 2, 16, false)
    );
    let text = std::fs::read_to_string(
        fixtures().join("mistral-7b-tokenizer/mistral-7b-v0.1.config.json"),
    )
    .unwrap();
    let v4 = ModelConfig::parse(&text).unwrap();
    assert_eq!(
        (
            v4.rope.theta,
            v4.head_dim,
            v4.sliding_window,
            v4.dtype.as_str()
        ),
        (10000.0, 128, Some(4096), "bfloat16")
    );
    assert_eq!(v4.parameter_count(), 7_241_732_096);
}

/// The sequences of golden pairs (`pairs` or `conversational`) with their expected per-token
/// log-probs and sums under `prefix` (`ref` or `policy`).
fn expected(pairs: &Value, prefix: &str) -> (Vec<Sequence>, Vec<f64>, Vec<f64>) {
    let (mut sequences, mut tokens, mut sums) = (Vec::new(), Vec::new(), Vec::new());
    for p in pairs.as_array().unwrap() {
        let prompt = ids(&p["prompt_ids"]);
        for side in ["chosen", "rejected"] {
            sequences.push(Sequence {
                ids: prompt
                    .iter()
                    .copied()
                    .chain(ids(&p[format!("{side}_ids")]))
                    .collect(),
                completion_start: prompt.len(),
            });
            tokens.extend(floats(&p[format!("{prefix}_{side}_token_logps")]));
            sums.push(p[format!("{prefix}_{side}_logps")].as_f64().unwrap());
        }
    }
    (sequences, tokens, sums)
}

/// Scores the golden sequences of `pairs` with the model in `family/dir` on `device` on every
/// path flow has there — the tensor path batched and one by one, the tensor trunk with the
/// output head ([`Scorer`]: on the host for the CPU, on the device for a GPU), and on the CPU
/// the host path — and compares each with transformers' per-token log-probs under `prefix`.
fn check_logps(family: &str, dir: &str, pairs: &str, prefix: &str, device: &Device) {
    let g = golden_of(family);
    let device = device.clone();
    let model = Model::load(&fixtures().join(family).join(dir), &device).unwrap();
    let (sequences, expected_tokens, expected_sums) = expected(&g[pairs], prefix);
    let what = |path: &str| format!("{family} {dir} {pairs} {prefix} {path}");
    let batched = score(&model, &sequences, &device).unwrap();
    assert_close(
        &to_f64(batched.token_logps),
        &expected_tokens,
        1e-4,
        &what("batched"),
    );
    // A sequence's sum adds its N tokens' f32 log-probs (hundreds of nats). A GPU backend reduces
    // them in another order than PyTorch, and f32 sums of the same terms in two orders differ by
    // about √N·ε·Σ|x| (ε = 2⁻²³; Higham, "Accuracy and Stability of Numerical Algorithms", §4.2);
    // every log-prob is ≤ 0, so Σ|x| is the sum's own size. Seen: 1.3e-4 on a llama sum of
    // −702.6 (lavapipe), 1.4e-4 on a qwen2 sum of −611.0 (H200). The host path keeps 1e-4.
    let sums = to_f64(batched.sums);
    for (i, (a, e)) in sums.iter().zip(&expected_sums).enumerate() {
        let tokens = sequences[i].ids.len() - sequences[i].completion_start;
        let tolerance = if is_host(&device) {
            1e-4
        } else {
            1e-4f64.max((tokens as f64).sqrt() * f64::from(f32::EPSILON) * e.abs())
        };
        assert_close(&[*a], &[*e], tolerance, &what(&format!("batched sum {i}")));
    }
    let mut one_by_one = Vec::new();
    for seq in &sequences {
        one_by_one.extend(to_f64(
            score(&model, std::slice::from_ref(seq), &device)
                .unwrap()
                .token_logps,
        ));
    }
    assert_close(&one_by_one, &expected_tokens, 1e-4, &what("unbatched"));
    let head = Scorer::new(model.clone())
        .score(&sequences, &device)
        .unwrap();
    assert_close(
        &head.token_logps,
        &expected_tokens,
        1e-4,
        &what("output head"),
    );
    if !is_host(&device) {
        return;
    }
    let host = HostScorer::new(model).score(&sequences).unwrap();
    assert_close(
        &host.token_logps,
        &expected_tokens,
        1e-4,
        &what("host path"),
    );
    assert_close(&host.sums, &expected_sums, 1e-4, &what("host path sums"));
}

/// Every golden log-prob check (reference and policy on plain pairs, the reference on
/// conversational ones) for every family on `device`.
fn every_logps_check(device: &Device) {
    for family in FAMILIES {
        check_logps(family, "base", "pairs", "ref", device);
        check_logps(family, "policy", "pairs", "policy", device);
        if family != "mistral-tiny" {
            check_logps(family, "base", "conversational", "ref", device);
        }
    }
}

#[test]
fn reference_logps_match_transformers_on_every_path() {
    for family in FAMILIES {
        check_logps(family, "base", "pairs", "ref", &cpu());
    }
}

#[test]
fn policy_logps_match_transformers_on_every_path() {
    for family in FAMILIES {
        check_logps(family, "policy", "pairs", "policy", &cpu());
    }
}

#[test]
fn conversational_pairs_score_as_transformers() {
    for family in FAMILIES.into_iter().filter(|f| *f != "mistral-tiny") {
        check_logps(family, "base", "conversational", "ref", &cpu());
    }
}

#[test]
fn logps_match_transformers_on_the_test_device() {
    if let Some(device) = test_device() {
        every_logps_check(&device);
    }
}

#[test]
fn hub_style_configs_read_as_the_new_style() {
    for family in ["llama-tiny", "qwen2-tiny", "gemma2-tiny"] {
        let dir = fixtures().join(family);
        let new = ModelConfig::load(&dir.join("base")).unwrap();
        let text = std::fs::read_to_string(dir.join("config.hub-style.json")).unwrap();
        let old = ModelConfig::parse(&text).unwrap();
        assert_eq!(old, new, "{family}");
    }
}

#[test]
fn plain_pairs_tokenize_as_trl_for_every_family() {
    for family in FAMILIES {
        let g = golden_of(family);
        let tok = PreferenceTokenizer::load(&fixtures().join(family).join("base")).unwrap();
        for p in g["pairs"].as_array().unwrap() {
            let pair = tok.tokenize_pair(
                p["prompt"].as_str().unwrap(),
                p["chosen"].as_str().unwrap(),
                p["rejected"].as_str().unwrap(),
            );
            let what = format!("{family} {}", p["prompt"]);
            assert_eq!(pair.prompt_ids, ids(&p["prompt_ids"]), "{what}");
            assert_eq!(pair.chosen_ids, ids(&p["chosen_ids"]), "{what}");
            assert_eq!(pair.rejected_ids, ids(&p["rejected_ids"]), "{what}");
        }
    }
}

#[test]
fn sharded_checkpoint_loads_the_same_weights() {
    let device = cpu();
    let single = Model::load(&fixtures().join("mistral-tiny/base"), &device).unwrap();
    let sharded = Model::load(&fixtures().join("mistral-tiny/base-sharded"), &device).unwrap();
    for ((name, a), (_, b)) in single.weights().into_iter().zip(sharded.weights()) {
        assert_eq!(
            to_f64(a.flatten::<1>(0, 1)),
            to_f64(b.flatten::<1>(0, 1)),
            "{name}"
        );
    }
}

#[test]
fn loading_in_bf16_equals_loading_in_f32_then_casting() {
    let device = cpu();
    for family in FAMILIES {
        let dir = fixtures().join(family).join("base");
        let cast = Model::load(&dir, &device).unwrap().cast(DType::BF16);
        let loaded = Model::load_as(&dir, &device, DType::BF16).unwrap();
        for ((name, a), (_, b)) in cast.weights().into_iter().zip(loaded.weights()) {
            assert_eq!(b.dtype(), DType::BF16, "{family} {name}");
            assert_eq!(
                to_f64(a.flatten::<1>(0, 1)),
                to_f64(b.flatten::<1>(0, 1)),
                "{family} {name}"
            );
        }
    }
}

/// Message lists of a golden conversational pair.
fn messages(v: &Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn conversational_pairs_tokenize_as_trl_with_each_familys_template() {
    for family in FAMILIES.into_iter().filter(|f| *f != "mistral-tiny") {
        let g = golden_of(family);
        let tok = PreferenceTokenizer::load(&fixtures().join(family).join("base")).unwrap();
        let template = tok
            .template
            .as_ref()
            .expect("the fixture tokenizer has a template");
        for p in g["conversational"].as_array().unwrap() {
            let (prompt, chosen, rejected) = (
                messages(&p["prompt"]),
                messages(&p["chosen"]),
                messages(&p["rejected"]),
            );
            let what = format!("{family} {}", p["prompt"]);
            assert_eq!(
                template.render(&prompt, true).unwrap(),
                p["prompt_rendered"].as_str().unwrap(),
                "{what}: rendered prompt"
            );
            assert_eq!(
                template
                    .render(&[prompt.clone(), chosen.clone()].concat(), false)
                    .unwrap(),
                p["prompt_chosen_rendered"].as_str().unwrap(),
                "{what}: rendered prompt + chosen"
            );
            let pair = tok.tokenize_messages(&prompt, &chosen, &rejected).unwrap();
            assert_eq!(pair.prompt_ids, ids(&p["prompt_ids"]), "{what}");
            assert_eq!(pair.chosen_ids, ids(&p["chosen_ids"]), "{what}");
            assert_eq!(pair.rejected_ids, ids(&p["rejected_ids"]), "{what}");
            // The texts `dataset.load` stores for the row tokenize to the same ids.
            let (prompt_text, chosen_text, rejected_text) =
                template.render_pair(&prompt, &chosen, &rejected).unwrap();
            let rendered = tok
                .tokenize(PairText::Rendered {
                    prompt: &prompt_text,
                    chosen: &chosen_text,
                    rejected: &rejected_text,
                })
                .unwrap();
            assert_eq!(rendered, pair, "{what}: rendered text");
        }
    }
}
