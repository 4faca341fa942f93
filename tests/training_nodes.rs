//! `dpo.train` and `sft.train` through the real binary: outputs transformers and PEFT load,
//! precomputed reference log-probs equal on-the-fly ones, a `kill -9` mid-training resumes to
//! the same weights as an uninterrupted run, held-out reward accuracy rises well above chance,
//! and bad params fail before any work.

mod support;

use flow_model::Model;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Project, exists_below, fixtures, golden_dataset, jsonl, signal, wait_until};

fn base_model() -> PathBuf {
    fixtures().join("mistral-tiny/base")
}

/// `flow exec TYPE` on the base fixture and `data`, outputs in `out`, with extra `--with`s.
fn exec_training(p: &Project, node: &str, data: &Path, out: &str, with: &[&str]) -> support::Run {
    let mut args = vec![
        "exec".to_string(),
        node.to_string(),
        "--input".into(),
        format!("model={}", base_model().display()),
        "--input".into(),
        format!("dataset={}", data.display()),
        "--out".into(),
        out.to_string(),
    ];
    for w in with {
        args.push("--with".into());
        args.push(w.to_string());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    p.flow(&refs)
}

fn metric(record: &Value, key: &str) -> f64 {
    record[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {record}"))
}

#[test]
fn dpo_train_writes_a_model_trl_metrics_and_curves_and_uses_precomputed_references() {
    let p = Project::new();
    let data = golden_dataset(&p, 2);
    let common = ["max_steps=3", "batch_size=4", "learning_rate=0.001"];
    exec_training(&p, "dpo.train", &data, "fly", &common).expect_code(0);

    let model = Model::load(&p.path().join("fly/model"), &flow_model::cpu()).unwrap();
    assert_eq!(model.config.vocab_size, 400);
    for file in ["tokenizer.json", "config.json", "model.safetensors"] {
        assert!(p.path().join("fly/model").join(file).is_file(), "{file}");
    }
    let records = jsonl(&p.path().join("fly/metrics/metrics.jsonl"));
    assert_eq!(records.len(), 3);
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "learning_rate",
        "beta",
        "grad_norm",
        "tokens_per_s",
    ] {
        metric(&records[2], key);
    }
    let svg = std::fs::read_to_string(p.path().join("fly/metrics/training_curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("reward margin"));

    let model_arg = format!("model={}", base_model().display());
    let data_arg = format!("dataset={}", data.display());
    p.flow(&[
        "exec",
        "model.ref_logprobs",
        "--input",
        &model_arg,
        "--input",
        &data_arg,
        "--out",
        "ref",
    ])
    .expect_code(0);
    let ref_arg = format!("ref_logprobs={}", p.path().join("ref/logprobs").display());
    let mut with = common.to_vec();
    with.push(&ref_arg);
    exec_training(&p, "dpo.train", &data, "pre", &with).expect_code(0);
    let precomputed = jsonl(&p.path().join("pre/metrics/metrics.jsonl"));
    for (a, b) in records.iter().zip(&precomputed) {
        for key in ["loss", "rewards/margins", "logps/chosen"] {
            let (x, y) = (metric(a, key), metric(b, key));
            assert!(
                (x - y).abs() <= 1e-4 * y.abs().max(1.0),
                "{key}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn lora_training_saves_a_peft_adapter_or_a_merged_model() {
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    let with = ["max_steps=2", "lora.r=4", "lora.targets=[q_proj, up_proj]"];
    exec_training(&p, "dpo.train", &data, "adapter", &with).expect_code(0);
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(p.path().join("adapter/model/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "up_proj"])
    );
    assert!(
        p.path()
            .join("adapter/model/adapter_model.safetensors")
            .is_file()
    );

    let mut merged = with.to_vec();
    merged.push("save=merged");
    exec_training(&p, "dpo.train", &data, "merged", &merged).expect_code(0);
    Model::load(&p.path().join("merged/model"), &flow_model::cpu()).unwrap();
}

fn resume_workflow(data: &Path) -> String {
    format!(
        r#"name: dpo-resume
nodes:
  train:
    uses: dpo.train
    with:
      model: {}
      dataset: {}
      max_steps: 150
      batch_size: 2
      learning_rate: 0.001
      checkpoint_every: 10
      lora: {{r: 4, dropout: 0.1, targets: [q_proj, v_proj, gate_proj]}}
"#,
        base_model().display(),
        data.display()
    )
}

#[test]
fn training_killed_mid_run_resumes_to_identical_weights() {
    let straight = Project::new();
    let data = golden_dataset(&straight, 2);
    straight.write("wf.yaml", &resume_workflow(&data));
    straight.flow(&["run", "wf.yaml"]).expect_code(0);

    let killed = Project::new();
    killed.write("wf.yaml", &resume_workflow(&data));
    let child = killed.spawn(&["run", "wf.yaml"]);
    wait_until(Duration::from_secs(120), "a training checkpoint", || {
        exists_below(&killed.store(), "latest")
    });
    signal(&child, libc::SIGKILL);
    let mut child = child;
    child.wait().unwrap();
    killed.flow(&["run", "wf.yaml"]).expect_code(0);
    assert!(
        node_logs(&killed.store().join("runs"), "train.log")
            .iter()
            .any(|log| log.contains("resuming from the checkpoint of step")),
        "the second run resumed"
    );
    let weights =
        |p: &Project| std::fs::read(p.artifact_file("adapter_model.safetensors")).unwrap();
    assert!(
        weights(&straight) == weights(&killed),
        "resumed weights differ from an uninterrupted run"
    );
    let steps: Vec<u64> = jsonl(&killed.artifact_file("metrics.jsonl"))
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        steps,
        (1..=150).collect::<Vec<u64>>(),
        "one metrics line per step"
    );
}

/// The text of every file called `name` below `dir`.
fn node_logs(dir: &Path, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|f| f == name) {
                found.push(std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    found
}

/// Pairs where the chosen answer is friendly and the rejected one rude, about varied topics.
fn politeness_pairs(p: &Project, name: &str, topics: &[&str]) -> PathBuf {
    let mut text = String::new();
    for (i, topic) in topics.iter().enumerate() {
        let row = serde_json::json!({
            "id": format!("{name}-{i}"),
            "prompt": format!("Was weißt du über {topic}?"),
            "chosen": format!("Gerne erkläre ich dir {topic}."),
            "rejected": format!("Frag jemand anderen nach {topic}."),
        });
        text.push_str(&format!("{row}\n"));
    }
    p.write(name, &text)
}

#[test]
fn held_out_reward_accuracy_rises_well_above_chance() {
    let p = Project::new();
    let train = politeness_pairs(
        &p,
        "train.jsonl",
        &[
            "Berlin", "Hamburg", "Wasser", "Brot", "Musik", "Sport", "Kaffee", "Schule", "Autos",
            "Katzen", "Hunde", "Bücher", "Wetter", "Zeit", "Geld", "Arbeit",
        ],
    );
    let eval = politeness_pairs(
        &p,
        "eval.jsonl",
        &[
            "München", "Tee", "Kunst", "Pferde", "Regen", "Urlaub", "Kino", "Blumen",
        ],
    );
    let eval_arg = format!("eval_dataset={}", eval.display());
    exec_training(
        &p,
        "dpo.train",
        &train,
        "out",
        &[
            "max_steps=24",
            "batch_size=4",
            "learning_rate=0.002",
            "eval_every=4",
            &eval_arg,
        ],
    )
    .expect_code(0);
    let evals: Vec<Value> = jsonl(&p.path().join("out/metrics/metrics.jsonl"))
        .into_iter()
        .filter(|r| r.get("eval_loss").is_some())
        .collect();
    assert_eq!(evals.len(), 6, "an evaluation every 4 steps");
    let last = evals.last().unwrap();
    assert!(
        metric(last, "eval_rewards/accuracies") >= 0.9 && metric(last, "eval_loss") < 0.5,
        "held-out pairs: {last}"
    );
}

#[test]
fn sft_train_lowers_the_completion_loss() {
    let p = Project::new();
    let data = golden_dataset(&p, 2);
    let eval = format!("eval_dataset={}", data.display());
    exec_training(
        &p,
        "sft.train",
        &data,
        "out",
        &["max_steps=8", "batch_size=4", "learning_rate=0.003", &eval],
    )
    .expect_code(0);
    let records = jsonl(&p.path().join("out/metrics/metrics.jsonl"));
    let losses: Vec<f64> = records
        .iter()
        .filter_map(|r| r.get("loss").and_then(Value::as_f64))
        .collect();
    assert_eq!(losses.len(), 8);
    assert!(losses[7] < 0.8 * losses[0], "{losses:?}");
    assert!(records.last().unwrap().get("eval_loss").is_some());
    Model::load(&p.path().join("out/model"), &flow_model::cpu()).unwrap();
}

#[test]
fn bad_training_params_fail_before_any_work() {
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    let workflow = format!(
        r#"name: bad-dpo
nodes:
  negative_beta:
    uses: dpo.train
    with: {{model: {m}, dataset: {d}, beta: -0.1}}
  warmup:
    uses: dpo.train
    with: {{model: {m}, dataset: {d}, max_steps: 5, warmup_steps: 10}}
  unknown_loss:
    uses: dpo.train
    with: {{model: {m}, dataset: {d}, loss: sigmoidd}}
  lora_target:
    uses: dpo.train
    with: {{model: {m}, dataset: {d}, lora: {{r: 4, targets: [qkv_proj]}}}}
  smoothing:
    uses: dpo.train
    with: {{model: {m}, dataset: {d}, loss: robust, label_smoothing: 0.5}}
  schedule:
    uses: dpo.train
    with: {{model: {m}, dataset: {d}, beta: {{schedule: linear, from: 0.5}}}}
"#,
        m = base_model().display(),
        d = data.display()
    );
    p.write("bad.yaml", &workflow);
    let run = p.flow(&["run", "bad.yaml"]).expect_code(2);
    for expected in [
        "nodes.negative_beta.with.beta",
        "β must be a positive number, got -0.1",
        "nodes.warmup.with.warmup_steps",
        "warmup_steps (10) exceeds max_steps (5)",
        "nodes.unknown_loss.with.loss",
        "sigmoidd",
        "lora target `qkv_proj` is not a module of a Mistral model",
        "nodes.smoothing.with.label_smoothing",
        "label_smoothing must be in [0, 0.5), got 0.5",
        "a `linear` β schedule needs `to`",
    ] {
        assert!(
            run.stderr.contains(expected),
            "missing `{expected}` in\n{}",
            run.stderr
        );
    }
    assert!(!p.store().join("artifacts").exists() || p.artifact_files().is_empty());
}

#[test]
fn dpo_continues_a_peft_adapter_and_refuses_it_with_fresh_lora() {
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    exec_training(&p, "sft.train", &data, "sft", &["max_steps=1", "lora.r=4"]).expect_code(0);
    let adapter = format!("adapter={}", p.path().join("sft/model").display());
    exec_training(&p, "dpo.train", &data, "dpo", &["max_steps=2", &adapter]).expect_code(0);
    let config: Value = serde_json::from_slice(
        &std::fs::read(p.path().join("dpo/model/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["r"], 4, "the adapter's own rank");
    let trained = flow_model::checkpoint::safetensors::Checkpoint::open_file(
        &p.path().join("dpo/model/adapter_model.safetensors"),
    )
    .unwrap();
    let start = flow_model::checkpoint::safetensors::Checkpoint::open_file(
        &p.path().join("sft/model/adapter_model.safetensors"),
    )
    .unwrap();
    let name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    let shape = [64, 4];
    assert_ne!(
        trained.read_f32(name, &shape).unwrap(),
        start.read_f32(name, &shape).unwrap(),
        "DPO moved the SFT adapter"
    );
    let both = exec_training(
        &p,
        "dpo.train",
        &data,
        "both",
        &["max_steps=1", "lora.r=4", &adapter],
    );
    assert_eq!(both.code, 2, "{}", both.stderr);
    assert!(both.stderr.contains("not both"), "{}", both.stderr);
}
