//! Every node that takes a model works for every family, through the real binary: reference
//! log-probs equal transformers', DPO (full and LoRA) and SFT write models and adapters of the
//! same family that load again, and `evaluate` scores and generates with them.

mod support;

use flow_model::Model;
use serde_json::Value;
use std::path::{Path, PathBuf};
use support::{Project, fixtures, jsonl};

const FAMILIES: [&str; 5] = [
    "mistral-tiny",
    "llama-tiny",
    "qwen2-tiny",
    "qwen3-tiny",
    "gemma2-tiny",
];

fn golden(family: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(family).join("golden.json")).unwrap(),
    )
    .unwrap()
}

/// The family's golden pairs as a dataset file.
fn dataset(p: &Project, family: &str) -> PathBuf {
    let mut text = String::new();
    for (i, pair) in golden(family)["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let row = serde_json::json!({"id": format!("p{i}"), "prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"]});
        text.push_str(&format!("{row}\n"));
    }
    p.write(&format!("{family}.jsonl"), &text)
}

/// `flow exec NODE` with `model` and `dataset` inputs and extra `--with`s, outputs in `out`.
fn exec(p: &Project, node: &str, model: &Path, data: &Path, out: &str, with: &[&str]) {
    let model = format!("model={}", model.display());
    let data = format!("dataset={}", data.display());
    let mut args = vec![
        "exec", node, "--input", &model, "--input", &data, "--out", out,
    ];
    for w in with {
        args.extend(["--with", w]);
    }
    p.flow(&args).expect_code(0);
}

#[test]
fn reference_log_probs_of_every_family_equal_transformers() {
    let p = Project::new();
    for family in FAMILIES {
        let data = dataset(&p, family);
        let base = fixtures().join(family).join("base");
        let out = format!("{family}-ref");
        exec(&p, "model.ref_logprobs", &base, &data, &out, &[]);
        let rows = jsonl(&p.path().join(&out).join("logprobs/logprobs.jsonl"));
        let pairs = golden(family)["pairs"].as_array().unwrap().clone();
        assert_eq!(rows.len(), pairs.len(), "{family}");
        for (row, pair) in rows.iter().zip(&pairs) {
            for (ours, theirs) in [
                ("chosen_logps", "ref_chosen_logps"),
                ("rejected_logps", "ref_rejected_logps"),
            ] {
                let (a, b) = (row[ours].as_f64().unwrap(), pair[theirs].as_f64().unwrap());
                assert!((a - b).abs() < 1e-4, "{family} {ours}: {a} vs {b}");
            }
            assert_eq!(row["prompt_ids"], pair["prompt_ids"], "{family}");
        }
    }
}

#[test]
fn every_family_trains_with_dpo_and_sft_and_evaluates() {
    let p = Project::new();
    for family in FAMILIES {
        let data = dataset(&p, family);
        let base = fixtures().join(family).join("base");
        let steps = ["max_steps=2", "batch_size=3"];
        exec(
            &p,
            "sft.train",
            &base,
            &data,
            &format!("{family}-sft"),
            &steps,
        );
        let full = format!("{family}-dpo");
        exec(&p, "dpo.train", &base, &data, &full, &steps);
        let trained = Model::load(&p.path().join(&full).join("model"), &flow_model::cpu()).unwrap();
        let original = Model::load(&base, &flow_model::cpu()).unwrap();
        assert_eq!(
            trained.config, original.config,
            "{family}: same family and shape"
        );
        let lora = format!("{family}-lora");
        exec(
            &p,
            "dpo.train",
            &base,
            &data,
            &lora,
            &["max_steps=2", "lora.r=4"],
        );
        let adapter = p.path().join(&lora).join("model/adapter_config.json");
        assert!(adapter.is_file(), "{family}: a PEFT adapter");
        p.flow(&[
            "exec",
            "evaluate",
            "--with",
            &format!("model={}", p.path().join(&lora).join("model").display()),
            "--with",
            &format!("reference={}", base.display()),
            "--with",
            &format!("dataset={}", data.display()),
            "--with",
            "prompts=[Was ist ein Apfel?]",
            "--with",
            "max_new_tokens=4",
            "--out",
            &format!("{family}-eval"),
        ])
        .expect_code(0);
        let report: Value = serde_json::from_slice(
            &std::fs::read(p.path().join(format!("{family}-eval/report/eval.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(report["preference"]["pairs"], 6, "{family}");
        assert_eq!(report["samples"].as_array().unwrap().len(), 1, "{family}");
    }
}

#[test]
fn model_init_builds_every_family_and_refuses_others() {
    let p = Project::new();
    let tokenizer = fixtures().join("llama-tiny/base");
    for architecture in ["mistral", "llama", "qwen2", "qwen3", "gemma2"] {
        let out = format!("init-{architecture}");
        p.flow(&[
            "exec",
            "model.init",
            "--with",
            &format!("tokenizer={}", tokenizer.display()),
            "--with",
            &format!("architecture={architecture}"),
            "--out",
            &out,
        ])
        .expect_code(0);
        let dir = p.path().join(&out).join("model");
        let model = Model::load(&dir, &flow_model::cpu()).unwrap();
        assert_eq!(model.config.traits().model_type, architecture);
        let config: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["model_type"], architecture);
        assert_eq!(
            config["bos_token_id"], 400,
            "{architecture}: the tokenizer's BOS"
        );
    }
    let run = p.flow(&[
        "exec",
        "model.init",
        "--with",
        &format!("tokenizer={}", tokenizer.display()),
        "--with",
        "architecture=gpt2",
        "--out",
        "bad",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown architecture `gpt2`") && run.stderr.contains("`gemma2`"),
        "{}",
        run.stderr
    );
}

/// The sequences of `logprobs.jsonl` rows, chosen then rejected.
fn row_sequences(rows: &[Value]) -> Vec<flow_model::scoring::Sequence> {
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    rows.iter()
        .flat_map(|row| {
            let prompt = ids(&row["prompt_ids"]);
            ["chosen_ids", "rejected_ids"].map(|side| flow_model::scoring::Sequence {
                ids: prompt.iter().copied().chain(ids(&row[side])).collect(),
                completion_start: prompt.len(),
            })
        })
        .collect()
}

/// Summed completion log-probs of `rows` under `model`, as flow scores them.
fn flow_sums(model: Model, rows: &[Value]) -> Vec<f64> {
    flow_model::scoring::Scorer::new(model)
        .score(&row_sequences(rows), &flow_model::cpu())
        .unwrap()
        .sums
}

/// Summed completion log-probs of `rows` (`logprobs.jsonl` rows) as transformers (and PEFT, for
/// an adapter) compute them, through `scripts/transformers_logprobs.py` and `$FLOW_PYTHON`.
fn transformers_sums(model: &Path, adapter: Option<&Path>, rows: &[Value]) -> Vec<f64> {
    let sequences: Vec<Value> = row_sequences(rows)
        .iter()
        .map(|s| serde_json::json!({"ids": s.ids, "completion_start": s.completion_start}))
        .collect();
    let request = serde_json::json!({"model": model, "adapter": adapter, "sequences": sequences});
    let python = std::env::var("FLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/transformers_logprobs.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("FLOW_PYTHON runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "transformers failed");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    answer["sums"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[test]
#[ignore = "needs Python with torch, transformers and peft: FLOW_PYTHON=/path/to/python cargo test --test families -- --ignored"]
fn saved_models_load_in_transformers_with_the_same_log_probs() {
    let p = Project::new();
    for family in FAMILIES {
        let data = dataset(&p, family);
        let base = fixtures().join(family).join("base");
        for (name, with) in [
            ("full", vec!["max_steps=2"]),
            ("lora", vec!["max_steps=2", "lora.r=4"]),
        ] {
            let out = format!("{family}-{name}");
            exec(&p, "dpo.train", &base, &data, &out, &with);
            let trained = p.path().join(&out).join("model");
            let scored = format!("{out}-scored");
            exec(&p, "model.ref_logprobs", &base, &data, &scored, &[]);
            let rows = jsonl(&p.path().join(&scored).join("logprobs/logprobs.jsonl"));
            let (ours, theirs) = if name == "full" {
                let model = Model::load(&trained, &flow_model::cpu()).unwrap();
                (
                    flow_sums(model, &rows),
                    transformers_sums(&trained, None, &rows),
                )
            } else {
                let mut model = Model::load(&base, &flow_model::cpu()).unwrap();
                flow_model::tensor::lora::load_peft(&mut model, &trained).unwrap();
                (
                    flow_sums(model, &rows),
                    transformers_sums(&base, Some(&trained), &rows),
                )
            };
            for (a, b) in ours.iter().zip(&theirs) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{family} {name}: flow {a} vs transformers {b}"
                );
            }
        }
    }
}
