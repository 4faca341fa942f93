//! The embedded default, `workflows/dpo-de-tiny.yaml`, end to end through the real binary, as a
//! user runs it from the repository root: offline, the DPO policy beats its reference on the
//! held-out pairs and the report shows it, `target: dir` holds exactly what would be pushed, a
//! second run is fully cached, and `--set beta=…` re-runs only training, evaluation and push.

mod support;

use std::path::Path;
use support::{Project, Run, actions, expect};

fn flow_at_root(p: &Project, args: &[&str]) -> Run {
    p.command(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("FLOW_STORE", p.store())
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .expect("run flow")
        .into()
}

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
}
