//! The model core against numbers from transformers and TRL (tests/fixtures, made with
//! `MistralForCausalLM` and `DPOTrainer`): tokenization, per-token log-probs of the reference
//! and the policy, batched against unbatched, sharded against single-file loading.

use flow_model::device::to_f64;
use flow_model::scoring::{Scorer, Sequence, score};
use flow_model::tokenize::PreferenceTokenizer;
use flow_model::{Mistral, MistralConfig, cpu};
use serde_json::Value;

mod common;
use common::{assert_close, fixtures, floats, golden, ids};

/// The chosen and rejected sequences of every golden pair, in order.
fn golden_sequences(g: &Value) -> Vec<Sequence> {
    g["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let prompt = ids(&p["prompt_ids"]);
            ["chosen_ids", "rejected_ids"].map(|key| Sequence {
                ids: prompt.iter().copied().chain(ids(&p[key])).collect(),
                completion_start: prompt.len(),
            })
        })
        .collect()
}

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
    let v5 = MistralConfig::load(&fixtures().join("mistral-tiny/base")).unwrap();
    assert_eq!(
        (
            v5.rope_theta,
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
    let v4 = MistralConfig::parse(&text).unwrap();
    assert_eq!(
        (
            v4.rope_theta,
            v4.head_dim,
            v4.sliding_window,
            v4.dtype.as_str()
        ),
        (10000.0, 128, Some(4096), "bfloat16")
    );
    assert_eq!(v4.parameter_count(), 7_241_732_096);
}

/// Scores every golden sequence with the model in `dir`, batched or one by one, and compares
/// per-token log-probs and sums with the golden values under `prefix` (`ref` or `policy`).
fn check_logps(dir: &str, prefix: &str, batched: bool) {
    let g = golden();
    let device = cpu();
    let model = Mistral::load(&fixtures().join(dir), &device).unwrap();
    let sequences = golden_sequences(&g);
    let (tokens, sums): (Vec<f64>, Vec<f64>) = if batched {
        let s = score(&model, &sequences, &device);
        (to_f64(s.token_logps), to_f64(s.sums))
    } else {
        let mut tokens = Vec::new();
        let mut sums = Vec::new();
        for seq in &sequences {
            let s = score(&model, std::slice::from_ref(seq), &device);
            tokens.extend(to_f64(s.token_logps));
            sums.extend(to_f64(s.sums));
        }
        (tokens, sums)
    };
    let mut expected_tokens = Vec::new();
    let mut expected_sums = Vec::new();
    for p in g["pairs"].as_array().unwrap() {
        for side in ["chosen", "rejected"] {
            expected_tokens.extend(floats(&p[format!("{prefix}_{side}_token_logps")]));
            expected_sums.push(p[format!("{prefix}_{side}_logps")].as_f64().unwrap());
        }
    }
    assert_close(
        &tokens,
        &expected_tokens,
        1e-4,
        &format!("{prefix} token log-probs"),
    );
    assert_close(&sums, &expected_sums, 1e-4, &format!("{prefix} sums"));
}

#[test]
fn reference_logps_match_transformers_batched_and_unbatched() {
    check_logps("mistral-tiny/base", "ref", true);
    check_logps("mistral-tiny/base", "ref", false);
}

#[test]
fn policy_logps_match_transformers() {
    check_logps("mistral-tiny/policy", "policy", true);
}

#[test]
fn host_scorer_equals_differentiable_scoring() {
    let device = cpu();
    let model = Mistral::load(&fixtures().join("mistral-tiny/base"), &device).unwrap();
    let sequences = golden_sequences(&golden());
    let graph = score(&model, &sequences, &device);
    let host = Scorer::new(model).score(&sequences, &device);
    for (a, b) in host.token_logps.iter().zip(to_f64(graph.token_logps)) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let expected: Vec<f64> = golden()["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            [
                p["ref_chosen_logps"].as_f64().unwrap(),
                p["ref_rejected_logps"].as_f64().unwrap(),
            ]
        })
        .collect();
    assert_close(&host.sums, &expected, 1e-4, "host sums");
}

#[test]
fn sharded_checkpoint_loads_the_same_weights() {
    let device = cpu();
    let single = Mistral::load(&fixtures().join("mistral-tiny/base"), &device).unwrap();
    let sharded = Mistral::load(&fixtures().join("mistral-tiny/base-sharded"), &device).unwrap();
    for ((name, a), (_, b)) in single.weights().into_iter().zip(sharded.weights()) {
        assert_eq!(
            to_f64(a.flatten::<1>(0, 1)),
            to_f64(b.flatten::<1>(0, 1)),
            "{name}"
        );
    }
}
