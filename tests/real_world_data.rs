//! Data as users bring it, through the real binary: chat templates that write BOS, system texts,
//! empty prompts with tokenizers that add no BOS, texts that already hold BOS or EOS, pairs
//! longer than the model's context, byte-order marks, configs transformers would misread, sets
//! of which nothing is left, and logs redirected with the output. The expected ids and
//! log-probs are TRL 1.16's (tests/fixtures/real-world/golden.json, made by
//! scripts/make_real_world_golden.py with transformers).

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use support::{Project, fixtures, jsonl};

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("real-world/golden.json")).unwrap();
    let golden: Value = serde_json::from_str(&text).unwrap();
    golden["cases"].as_array().unwrap().clone()
}

/// `dataset.load` of `rows` (JSONL) with the model's chat template, then `model.ref_logprobs`
/// with `with`; returns the scored rows and the summary.
fn load_and_score(
    p: &Project,
    name: &str,
    model: &Path,
    rows: &str,
    with: &[&str],
) -> (Vec<Value>, Value) {
    let source = p.write(&format!("{name}.jsonl"), rows);
    let mut load = vec![
        "exec".to_string(),
        "dataset.load".into(),
        "--with".into(),
        format!("path={}", source.display()),
        "--out".into(),
        format!("{name}-data"),
    ];
    if flow_model::tokenize::ChatTemplate::of_tokenizer(model)
        .unwrap()
        .is_some()
    {
        load.extend([
            "--with".into(),
            format!("chat_template={}", model.display()),
        ]);
    }
    let refs: Vec<&str> = load.iter().map(String::as_str).collect();
    p.flow(&refs).expect_code(0);
    let data = p.path().join(format!("{name}-data/dataset"));
    let mut args = vec![
        "exec".to_string(),
        "model.ref_logprobs".into(),
        "--with".into(),
        format!("model={}", model.display()),
        "--with".into(),
        format!("dataset={}", data.display()),
        "--out".into(),
        format!("{name}-ref"),
    ];
    for w in with {
        args.extend(["--with".to_string(), w.to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    p.flow(&refs).expect_code(0);
    let out = p.path().join(format!("{name}-ref/logprobs"));
    let summary =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    (jsonl(&out.join("logprobs.jsonl")), summary)
}

#[test]
fn awkward_rows_give_trls_ids_and_log_probs() {
    let p = Project::new();
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let model = fixtures()
            .join(case["family"].as_str().unwrap())
            .join("base");
        let max_length = case["max_length"]
            .as_u64()
            .map(|m| format!("max_length={m}"));
        let with: Vec<&str> = max_length.iter().map(String::as_str).collect();
        let (rows, summary) =
            load_and_score(&p, name, &model, &format!("{}\n", case["row"]), &with);
        assert_eq!(rows.len(), 1, "{name}: scored, not dropped ({summary})");
        let row = &rows[0];
        // TRL keeps whole ids and its collator cuts each sequence at max_length (keep_start);
        // flow stores the completion as it is scored.
        let prompt = case["prompt_ids"].as_array().unwrap().len();
        let room = case["max_length"]
            .as_u64()
            .map_or(usize::MAX, |m| m as usize - prompt);
        assert_eq!(row["prompt_ids"], case["prompt_ids"], "{name}: prompt_ids");
        for key in ["chosen_ids", "rejected_ids"] {
            let expected: Vec<Value> = case[key]
                .as_array()
                .unwrap()
                .iter()
                .take(room)
                .cloned()
                .collect();
            assert_eq!(row[key], Value::Array(expected), "{name}: {key}");
        }
        for key in ["chosen_logps", "rejected_logps"] {
            let (ours, trl) = (row[key].as_f64().unwrap(), case[key].as_f64().unwrap());
            assert!(
                (ours - trl).abs() < 1e-3,
                "{name}: {key} {ours} vs TRL {trl}"
            );
        }
    }
}

#[test]
fn a_pair_longer_than_the_context_is_cut_and_reported_never_scored_whole() {
    let p = Project::new();
    let case = cases()
        .into_iter()
        .find(|c| c["name"] == "pair_longer_than_the_models_context")
        .unwrap();
    let model = fixtures().join("llama-tiny/base");
    let (rows, summary) = load_and_score(&p, "long", &model, &format!("{}\n", case["row"]), &[]);
    assert_eq!(summary["pairs_truncated"], 1, "{summary}");
    let scored = rows[0]["chosen_logps"].as_f64().unwrap();
    assert!((scored - case["chosen_logps"].as_f64().unwrap()).abs() < 1e-3);
    let log = std::fs::read_to_string(p.path().join("long.jsonl")).unwrap();
    assert!(!log.is_empty());
    let run = p.flow(&[
        "exec",
        "model.ref_logprobs",
        "--with",
        &format!("model={}", model.display()),
        "--with",
        &format!("dataset={}", p.path().join("long-data/dataset").display()),
        "--with",
        "max_length=1024",
        "--out",
        "too-long",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("max_length 1024 exceeds the model's max_position_embeddings (512)"),
        "{}",
        run.stderr
    );
}

#[test]
fn plain_rows_with_a_system_text_are_tokenized_with_it() {
    let p = Project::new();
    // mistral-tiny's tokenizer has no chat template: the plain rule `system + "\n\n" + prompt`.
    let model = fixtures().join("mistral-tiny/base");
    let with = r#"{"id": "a", "system": "Antworte kurz.", "prompt": "Was ist Berlin?", "chosen": " Eine Stadt.", "rejected": " Ein Land."}"#;
    let without = r#"{"id": "a", "prompt": "Was ist Berlin?", "chosen": " Eine Stadt.", "rejected": " Ein Land."}"#;
    let (a, _) = load_and_score(&p, "with", &model, &format!("{with}\n"), &[]);
    let (b, _) = load_and_score(&p, "without", &model, &format!("{without}\n"), &[]);
    assert_ne!(
        a[0]["prompt_ids"], b[0]["prompt_ids"],
        "the system text reaches the model"
    );
    assert_eq!(a[0]["chosen_ids"], b[0]["chosen_ids"]);
    let tokenizer = flow_model::tokenize::PreferenceTokenizer::load(&model).unwrap();
    let expected = tokenizer.encode("Antworte kurz.\n\nWas ist Berlin?");
    let ids: Vec<u32> = serde_json::from_value(a[0]["prompt_ids"].clone()).unwrap();
    assert_eq!(ids, expected);
}

#[test]
fn configs_transformers_would_misread_are_refused_by_key() {
    let p = Project::new();
    let model = p.path().join("zero-window");
    std::fs::create_dir_all(&model).unwrap();
    let base = fixtures().join("mistral-tiny/base");
    for file in std::fs::read_dir(&base).unwrap().flatten() {
        std::fs::copy(file.path(), model.join(file.file_name())).unwrap();
    }
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(base.join("config.json")).unwrap()).unwrap();
    config["sliding_window"] = 0.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let data = p.write(
        "pairs.jsonl",
        "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n",
    );
    let run = p.flow(&[
        "exec",
        "model.ref_logprobs",
        "--with",
        &format!("model={}", model.display()),
        "--with",
        &format!("dataset={}", data.display()),
        "--out",
        "out",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("config.json")
            && run
                .stderr
                .contains("`sliding_window` must be a positive integer or null"),
        "{}",
        run.stderr
    );
}

/// `dataset.load` of `content` saved as `name`; the `data.jsonl` it wrote.
fn loaded(p: &Project, name: &str, content: &[u8]) -> String {
    let path = p.path().join(name);
    std::fs::write(&path, content).unwrap();
    p.flow(&[
        "exec",
        "dataset.load",
        "--with",
        &format!("path={}", path.display()),
        "--out",
        &format!("{name}-out"),
    ])
    .expect_code(0);
    std::fs::read_to_string(p.path().join(format!("{name}-out/dataset/data.jsonl"))).unwrap()
}

#[test]
fn a_byte_order_mark_changes_no_row_and_invalid_utf8_names_the_line() {
    let p = Project::new();
    let jsonl = "{\"prompt\": \"Grüße\", \"chosen\": \"ä\", \"rejected\": \"ö\"}\n";
    let json = "[{\"prompt\": \"Grüße\", \"chosen\": \"ä\", \"rejected\": \"ö\"}]";
    let csv = "prompt,chosen,rejected\nGrüße,ä,ö\n";
    for (ext, text) in [("jsonl", jsonl), ("json", json), ("csv", csv)] {
        let plain = loaded(&p, &format!("plain.{ext}"), text.as_bytes());
        let bom = loaded(
            &p,
            &format!("bom.{ext}"),
            &[b"\xEF\xBB\xBF", text.as_bytes()].concat(),
        );
        assert_eq!(plain, bom, "{ext}");
        assert!(plain.contains("Grüße"), "{ext}: {plain}");
    }
    let bad = p.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        [jsonl.as_bytes(), b"{\"prompt\": \"\xff\"}\n"].concat(),
    )
    .unwrap();
    let run = p.flow(&[
        "exec",
        "dataset.load",
        "--with",
        &format!("path={}", bad.display()),
        "--out",
        "bad-out",
    ]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("bad.jsonl:2"), "{}", run.stderr);
}

#[test]
fn an_eval_set_with_nothing_left_is_an_error_not_a_perfect_score() {
    let p = Project::new();
    let data = p.write(
        "long-prompts.jsonl",
        "{\"id\": \"x\", \"prompt\": \"Ein langer Satz mit vielen Wörtern\", \"chosen\": \" a\", \"rejected\": \" b\"}\n",
    );
    let base = fixtures().join("mistral-tiny/base");
    let run = p.flow(&[
        "exec",
        "evaluate",
        "--with",
        &format!("model={}", base.display()),
        "--with",
        &format!("reference={}", base.display()),
        "--with",
        &format!("dataset={}", data.display()),
        "--with",
        "max_length=3",
        "--out",
        "eval",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("no pair is left") && run.stderr.contains("`x`: the prompt alone has"),
        "{}",
        run.stderr
    );
    assert!(!p.path().join("eval/report/eval.json").exists());
}

#[test]
fn logs_and_output_redirected_to_one_file_keep_every_line() {
    let p = Project::new();
    let data = support::golden_dataset(&p, 1);
    let base = fixtures().join("mistral-tiny/base");
    let flow = PathBuf::from(env!("CARGO_BIN_EXE_flow"));
    let log = p.path().join("run.log");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' exec model.ref_logprobs --with model='{}' --with dataset='{}' --with max_length=12 --out '{}' > '{}' 2>&1",
            flow.display(),
            base.display(),
            data.display(),
            p.path().join("out").display(),
            log.display()
        ))
        .current_dir(p.path())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    for expected in ["dropped pair", "scored", "logprobs"] {
        assert!(text.contains(expected), "`{expected}` lost from {text}");
    }
    for line in text.lines() {
        assert!(
            line.starts_with("dataset: dropped pair `")
                || line.starts_with("scored ")
                || line.starts_with("dataset: ")
                || line.contains("tokens/s")
                || line.ends_with("logprobs"),
            "a line cut or mixed: {line:?}\n{text}"
        );
    }
}

#[test]
fn training_and_evaluation_take_the_awkward_rows_too() {
    let p = Project::new();
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let model = fixtures()
            .join(case["family"].as_str().unwrap())
            .join("base");
        let (_, _) = load_and_score(&p, name, &model, &format!("{}\n", case["row"]), &[]);
        let data = p.path().join(format!("{name}-data/dataset"));
        let (model_arg, data_arg) = (
            format!("model={}", model.display()),
            format!("dataset={}", data.display()),
        );
        p.flow(&[
            "exec",
            "dpo.train",
            "--with",
            &model_arg,
            "--with",
            &data_arg,
            "--with",
            "max_steps=1",
            "--out",
            &format!("{name}-dpo"),
        ])
        .expect_code(0);
        p.flow(&[
            "exec",
            "evaluate",
            "--with",
            &format!(
                "model={}",
                p.path().join(format!("{name}-dpo/model")).display()
            ),
            "--with",
            &format!("reference={}", model.display()),
            "--with",
            &data_arg,
            "--out",
            &format!("{name}-eval"),
        ])
        .expect_code(0);
        let report: Value = serde_json::from_slice(
            &std::fs::read(p.path().join(format!("{name}-eval/report/eval.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(report["preference"]["pairs"], 1, "{name}: {report}");
        assert!(
            report["policy"]["perplexity"].as_f64().unwrap().is_finite(),
            "{name}"
        );
    }
}
