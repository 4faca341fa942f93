//! The embedded default, `workflows/dpo-de-tiny.yaml`, end to end through the real binary, as a
//! user runs it from the repository root: offline, the DPO policy beats its reference on the
//! held-out pairs and the report shows it, `target: dir` holds exactly what would be pushed, a
//! second run is fully cached, and `--set beta=…` re-runs only training, evaluation and push.

mod llm_server;
mod support;

use std::path::Path;
use support::{Project, Run, actions, expect, flow_at_root};

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("JSON")
}

#[test]
fn the_embedded_default_learns_reports_pushes_to_a_dir_and_caches() {
    let p = Project::new();
    let wf = "workflows/dpo-de-tiny.yaml";
    flow_at_root(&p, &["run", wf]).expect_code(0);

    let eval = read_json(&p.artifact_file("eval.json"));
    let preference = &eval["preference"];
    let accuracy = preference["rewards/accuracies"].as_f64().unwrap();
    assert!(
        accuracy >= 0.7,
        "held-out reward accuracy {accuracy} (reference: chance)"
    );
    assert!(preference["rewards/margins"].as_f64().unwrap() > 0.1);
    assert!(
        preference["pairs"].as_u64().unwrap() >= 30,
        "held-out pairs"
    );
    assert!(
        eval["policy"]["win_rate"].as_f64() >= eval["reference"]["win_rate"].as_f64(),
        "{eval}"
    );
    assert_eq!(eval["policy"]["tasks"]["mc-de"]["questions"], 30);
    let samples = eval["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    for sample in samples {
        for model in ["policy", "reference"] {
            let greedy = sample[model]["greedy"].as_str().unwrap();
            assert!(
                !greedy.trim().is_empty(),
                "{model} answered nothing: {sample}"
            );
        }
    }
    let report = p.artifact_file("report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("reward accuracy") && html.contains(&format!("{accuracy:.4}")));
    assert!(report.with_file_name("training_curves.svg").is_file());

    let card = p.artifact_file("README.md");
    let pushed: Vec<String> = std::fs::read_dir(card.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    for file in [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
    ] {
        assert!(pushed.contains(&file.to_string()), "{file} in {pushed:?}");
    }
    let card = std::fs::read_to_string(card).unwrap();
    assert!(
        card.contains("library_name: peft") && card.contains("rewards/accuracies"),
        "{card}"
    );
    // Each benchmark number with its task, format, shots and metric definition; the
    // per-question log-likelihoods stay in eval.json.
    assert!(
        card.contains("| mc-de | plain | 0 | acc (share of questions whose highest-log-likelihood choice is the answer) |")
            && !card.contains("per_question"),
        "{card}"
    );
    assert_eq!(
        eval["policy"]["tasks"]["mc-de"]["per_question"]
            .as_array()
            .map(Vec::len),
        Some(30)
    );

    let again = flow_at_root(&p, &["plan", wf, "--json"]).expect_code(0);
    assert!(
        actions(&again.json()).iter().all(|(_, a)| a == "cached"),
        "{}",
        again.stdout
    );
    let beta = flow_at_root(&p, &["plan", wf, "--set", "beta=0.05", "--json"]).expect_code(0);
    let expected = expect(&[
        ("load", "cached"),
        ("filter", "cached"),
        ("split", "cached"),
        ("tokenizer", "cached"),
        ("base", "cached"),
        ("sft", "cached"),
        ("reference", "cached"),
        ("dpo", "run"),
        ("evaluate", "run"),
        ("push", "run"),
    ]);
    assert_eq!(actions(&beta.json()), expected);

    // `flow report` finds the report; `flow compare` shows a β sweep side by side.
    let path = flow_at_root(&p, &["report"]).expect_code(0);
    assert_eq!(
        Path::new(path.stdout.trim()),
        std::path::absolute(&report).unwrap()
    );
    flow_at_root(&p, &["run", wf, "--set", "beta=0.05"]).expect_code(0);
    let runs = flow_at_root(&p, &["runs", "--json"]).expect_code(0).json();
    let ids: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let compare = flow_at_root(&p, &["compare", ids[0], ids[1]]).expect_code(0);
    let beta_row = compare
        .stdout
        .lines()
        .find(|l| l.contains(" beta "))
        .expect("beta row");
    assert!(
        beta_row.starts_with('*') && beta_row.contains("0.1") && beta_row.contains("0.05"),
        "{}",
        compare.stdout
    );
    assert!(
        compare
            .stdout
            .contains("eval.preference.rewards/accuracies"),
        "{}",
        compare.stdout
    );
    assert!(compare.stdout.contains("train.loss"), "{}", compare.stdout);
    let none = p
        .command(&["report", "nope"])
        .env("FLOW_STORE", p.store())
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
}

/// Writes `files` into an HF cache as Python's huggingface_hub lays it out (blobs named by a
/// content hash, snapshot symlinks, `refs/main`), for a repository never fetched from a network.
fn seed_hf_cache(cache: &Path, folder: &str, files: &[(String, Vec<u8>)]) {
    let repo = cache.join(folder);
    let sha = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    for (path, content) in files {
        let etag = blake3::hash(content).to_hex().to_string();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs").join(&etag), content).unwrap();
        let pointer = repo.join("snapshots").join(sha).join(path);
        std::fs::create_dir_all(pointer.parent().unwrap()).unwrap();
        let depth = path.matches('/').count() + 2;
        let target: std::path::PathBuf = std::iter::repeat_n("..", depth).collect();
        std::os::unix::fs::symlink(target.join("blobs").join(&etag), pointer).unwrap();
    }
}

#[test]
fn the_real_7b_workflow_runs_offline_on_the_tiny_model_through_a_local_hf_cache() {
    run_the_real_workflow_on("cpu");
}

#[test]
fn the_real_7b_workflow_runs_on_the_test_device() {
    // Reference scoring, LoRA DPO and evaluation on the GPU (CI: wgpu over lavapipe).
    if let Some(device) = support::test_device_name() {
        run_the_real_workflow_on(&device);
    }
}

/// `workflows/dpo-de.yaml` offline through a seeded HF cache on the tiny model, on `device`.
fn run_the_real_workflow_on(device: &str) {
    let p = Project::new();
    let hub = p.path().join("hf/hub");
    let base = support::fixtures().join("mistral-tiny/base");
    let model_files: Vec<(String, Vec<u8>)> = support::files_in(&base).into_iter().collect();
    seed_hf_cache(&hub, "models--flow-test--tiny-mistral", &model_files);
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/data/dpo-de-sample.jsonl");
    let orca: String = support::jsonl(&sample)
        .into_iter()
        .map(|row| {
            let orca = serde_json::json!({
                "system": row["system"].as_str().unwrap_or(""),
                "question": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
            });
            format!("{orca}\n")
        })
        .collect();
    seed_hf_cache(
        &hub,
        "datasets--flow-test--orca-de",
        &[("data/train.jsonl".into(), orca.into_bytes())],
    );

    let run = p
        .command(&[
            "run",
            "workflows/dpo-de.yaml",
            "--set",
            "base_model=flow-test/tiny-mistral",
            "--set",
            "dataset=flow-test/orca-de",
            "--set",
            &format!("device={device}"),
            "--set",
            "dtype=f32",
            "--set",
            "max_steps=3",
            "--set",
            "batch_size=2",
            "--set",
            "grad_accum=1",
            "--set",
            "max_length=256",
            "--set",
            "eval_rows=16",
            "--set",
            "push_target=dir",
            "--set",
            "hub_repo=flow-test/dpo-de-ci",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("FLOW_STORE", p.store())
        .env("HF_HOME", p.path().join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_TOKEN", "hf_unused_for_target_dir")
        .output()
        .expect("run flow");
    let run: Run = run.into();
    let run = run.expect_code(0);
    assert!(!run.stderr.contains("hf_unused_for_target_dir"));
    let card = std::fs::read_to_string(p.artifact_file("README.md")).unwrap();
    assert!(
        card.contains("base_model: \"flow-test/tiny-mistral\""),
        "{card}"
    );
    assert!(card.contains("- \"flow-test/orca-de\""), "{card}");
    let eval = read_json(&p.artifact_file("eval.json"));
    assert_eq!(eval["preference"]["pairs"], 16);
}

#[test]
fn translate_orca_de_translates_filters_and_writes_a_dataset_repository_offline() {
    let llm = llm_server::LlmServer::start("sk-test");
    let p = Project::new();
    let rows: String = (0..4)
        .map(|i| {
            let row = serde_json::json!({
                "system": "Du bist ein hilfreicher Assistent.",
                "question": format!("Wie heißt die Hauptstadt von Land {i}? Bitte antworte kurz."),
                "chosen": format!("Die Hauptstadt von Land {i} heißt Stadt {i}, sie liegt am Fluss."),
                "rejected": format!("Das weiß ich leider nicht, frag jemand anderen {i}."),
            });
            format!("{row}\n")
        })
        .collect();
    seed_hf_cache(
        &p.path().join("hf/hub"),
        "datasets--Intel--orca_dpo_pairs",
        &[("data/train-00000-of-00001.jsonl".into(), rows.into_bytes())],
    );
    let run: Run = p
        .command(&[
            "run",
            "workflows/translate-orca-de.yaml",
            "--set",
            &format!("base_url={}/v1", llm.url),
            "--set",
            "push_target=dir",
            "--set",
            "hub_repo=flow-test/orca-de",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("FLOW_STORE", p.store())
        .env("HF_HOME", p.path().join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .env("OPENAI_API_KEY", "sk-test")
        .env("HF_TOKEN", "hf_unused")
        .output()
        .expect("run flow")
        .into();
    run.expect_code(0);
    let data = p.artifact_file("train.jsonl");
    let translated = support::jsonl(&data);
    assert_eq!(translated.len(), 4);
    assert!(
        translated[0]["prompt"]
            .as_str()
            .unwrap()
            .starts_with("[de] Wie heißt")
    );
    assert_eq!(
        llm.state().answered.len(),
        1 + 4 * 3,
        "the shared system prompt once"
    );
    let card = std::fs::read_to_string(data.parent().unwrap().parent().unwrap().join("README.md"))
        .unwrap();
    assert!(
        card.contains("source_datasets:") && card.contains("Intel/orca_dpo_pairs"),
        "{card}"
    );
}
