//! The model-core node types through the real binary: `model.ref_logprobs` reproduces the
//! golden reference log-probs and resumes after a kill; `tokenizer.train` → `model.init` →
//! `model.ref_logprobs` runs as a cached workflow; bad inputs fail clearly.

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::{Project, fixtures, golden, golden_dataset, jsonl, node_field, signal, wait_until};

/// `flow exec model.ref_logprobs` on the base fixture model and `data`, outputs in `out`.
fn exec_ref_logprobs(p: &Project, data: &Path, out: &str, extra: &[&str]) -> support::Run {
    let model = format!("model={}", fixtures().join("mistral-tiny/base").display());
    let dataset = format!("dataset={}", data.display());
    let mut args = vec![
        "exec",
        "model.ref_logprobs",
        "--input",
        &model,
        "--input",
        &dataset,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    p.flow(&args)
}

#[test]
fn ref_logprobs_exec_reproduces_the_golden_reference_logps() {
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    exec_ref_logprobs(&p, &data, "out", &["--with", "batch_size=3"]).expect_code(0);
    let scored = jsonl(&p.path().join("out/logprobs/logprobs.jsonl"));
    let g = golden();
    assert_eq!(scored.len(), 6);
    for (row, pair) in scored.iter().zip(g["pairs"].as_array().unwrap()) {
        assert_eq!(row["prompt_ids"], pair["prompt_ids"]);
        assert_eq!(row["chosen_ids"], pair["chosen_ids"]);
        assert_eq!(row["rejected_ids"], pair["rejected_ids"]);
        for (ours, theirs) in [
            ("chosen_logps", "ref_chosen_logps"),
            ("rejected_logps", "ref_rejected_logps"),
        ] {
            let (a, b) = (row[ours].as_f64().unwrap(), pair[theirs].as_f64().unwrap());
            assert!((a - b).abs() < 1e-4, "{ours}: {a} vs {b}");
        }
    }
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(p.path().join("out/logprobs/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            summary["pairs_kept"].as_u64(),
            summary["pairs_dropped"].as_u64()
        ),
        (Some(6), Some(0))
    );
}

#[test]
fn ref_logprobs_on_the_test_device_reproduce_the_golden_reference_logps() {
    let Some(device) = support::test_device_name() else {
        return;
    };
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    let with = format!("device={device}");
    exec_ref_logprobs(&p, &data, "out", &["--with", &with]).expect_code(0);
    let scored = jsonl(&p.path().join("out/logprobs/logprobs.jsonl"));
    for (row, pair) in scored.iter().zip(golden()["pairs"].as_array().unwrap()) {
        for (ours, theirs) in [
            ("chosen_logps", "ref_chosen_logps"),
            ("rejected_logps", "ref_rejected_logps"),
        ] {
            let (a, b) = (row[ours].as_f64().unwrap(), pair[theirs].as_f64().unwrap());
            assert!((a - b).abs() < 1e-4, "{device} {ours}: {a} vs {b}");
        }
    }
}

#[test]
fn bf16_reference_logps_stay_close_to_transformers_f32() {
    // bf16 keeps 8 significant bits: each rounding moves a value by up to 2⁻⁹ relative, and
    // every layer's weights and activations are rounded (the log-softmax stays f32). A summed
    // log-prob of the random fixture (about −150 over its completion) then moves by a few
    // tenths of a percent; BF16_TOLERANCE leaves room for other models.
    const BF16_TOLERANCE: f64 = 1e-2;
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    exec_ref_logprobs(&p, &data, "out", &["--with", "dtype=bf16"]).expect_code(0);
    let scored = jsonl(&p.path().join("out/logprobs/logprobs.jsonl"));
    let g = golden();
    let mut worst: f64 = 0.0;
    for (row, pair) in scored.iter().zip(g["pairs"].as_array().unwrap()) {
        for (ours, theirs) in [
            ("chosen_logps", "ref_chosen_logps"),
            ("rejected_logps", "ref_rejected_logps"),
        ] {
            let (a, b) = (row[ours].as_f64().unwrap(), pair[theirs].as_f64().unwrap());
            worst = worst.max((a - b).abs() / b.abs());
        }
    }
    eprintln!(
        "bf16: largest relative difference of a summed log-prob from f32 transformers: {worst:.2e}"
    );
    assert!(worst < BF16_TOLERANCE, "{worst}");
    assert!(worst > 0.0, "bf16 really ran in bf16");
}

#[test]
fn max_length_truncates_and_drops_long_prompts() {
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    exec_ref_logprobs(
        &p,
        &data,
        "out",
        &[
            "--with",
            "max_length=20",
            "--with",
            "max_tokens_per_batch=64",
        ],
    )
    .expect_code(0);
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(p.path().join("out/logprobs/summary.json")).unwrap(),
    )
    .unwrap();
    // Prompts of 25, 28 and 30 tokens fill max_length 20.
    assert_eq!(summary["pairs_dropped"], 3, "{summary}");
    for row in jsonl(&p.path().join("out/logprobs/logprobs.jsonl")) {
        let prompt = row["prompt_ids"].as_array().unwrap().len();
        assert!(prompt + row["chosen_ids"].as_array().unwrap().len() <= 20);
        assert!(prompt + row["rejected_ids"].as_array().unwrap().len() <= 20);
    }
}

#[test]
fn killed_ref_logprobs_resumes_after_its_last_batch_with_identical_results() {
    let p = Project::new();
    let data = golden_dataset(&p, 150);
    let model = fixtures().join("mistral-tiny/base");
    let workflow = format!(
        "name: resume\nnodes:\n  ref:\n    uses: model.ref_logprobs\n    with: {{ model: {}, dataset: {}, batch_size: 1 }}\n",
        model.display(),
        data.display()
    );
    p.write("w.yaml", &workflow);
    let child = p.spawn(&["run", "w.yaml"]);
    let resume = p.store().join("resume");
    wait_until(Duration::from_secs(60), "some batches to be scored", || {
        std::fs::read_dir(&resume)
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| {
                std::fs::read_to_string(d.path().join("logprobs.partial.jsonl"))
                    .is_ok_and(|t| t.lines().count() >= 20)
            })
    });
    signal(&child, libc::SIGKILL);
    drop(child.wait_with_output());
    p.flow(&["run", "w.yaml"]).expect_code(0);
    let said_resumed = files_named(&p.store().join("runs"), "ref.log")
        .iter()
        .filter_map(|log| std::fs::read_to_string(log).ok())
        .flat_map(|text| text.lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|line| {
            let rest = line.split("resuming after ").nth(1)?;
            rest.split(' ').next()?.parse::<usize>().ok()
        })
        .max();
    assert!(said_resumed.is_some_and(|n| n >= 20), "{said_resumed:?}");
    let resumed = jsonl(&p.artifact_file("logprobs.jsonl"));
    assert_eq!(resumed.len(), 900);
    // An uninterrupted run in another store gives the same artifact, byte for byte.
    let fresh = Project::new();
    fresh.write("w.yaml", &workflow);
    fresh.flow(&["run", "w.yaml"]).expect_code(0);
    for file in ["logprobs.jsonl", "summary.json"] {
        assert_eq!(
            std::fs::read(fresh.artifact_file(file)).unwrap(),
            std::fs::read(p.artifact_file(file)).unwrap(),
            "{file}"
        );
    }
    assert!(
        std::fs::read_dir(&resume).unwrap().next().is_none(),
        "the resume directory is removed after success"
    );
}

/// Every file called `name` below `dir`.
fn files_named(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_named(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
    found
}

/// A workflow scoring `data` with the base fixture model in batches of 4 pairs, in
/// `${params.shards}` shards (default 1).
fn sharded_workflow(data: &Path) -> String {
    let model = fixtures().join("mistral-tiny/base");
    format!(
        "name: shards\nparams: {{ shards: 1 }}\nnodes:\n  ref:\n    uses: model.ref_logprobs\n    with: {{ model: {m}, dataset: {d}, batch_size: 4, shards: \"${{params.shards}}\" }}\n",
        m = model.display(),
        d = data.display()
    )
}

/// `flow run` of the workflow in `p` with `args`: the digest of `ref.logprobs`.
fn scored(p: &Project, args: &[&str]) -> String {
    let mut all = vec!["run", "w.yaml", "--json"];
    all.extend_from_slice(args);
    let run = p.flow(&all).expect_code(0).json();
    run["nodes"][0]["outputs"]["logprobs"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn sharded_reference_scoring_equals_the_unsharded_artifact_byte_for_byte() {
    // 66 pairs: 17 batches of 4, so 3 shards take 5, 6 and 6 batches (the last one short).
    let (whole, split) = (Project::new(), Project::new());
    for p in [&whole, &split] {
        let data = golden_dataset(p, 11);
        p.write("w.yaml", &sharded_workflow(&data));
    }
    let digest = scored(&whole, &[]);
    assert_eq!(scored(&split, &["--set", "shards=3"]), digest);
    let rows = jsonl(
        &split
            .store()
            .join("artifacts")
            .join(&digest)
            .join("logprobs.jsonl"),
    );
    assert_eq!(rows.len(), 66);
    let logs = files_named(&split.store().join("runs"), "ref.log");
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    for said in [
        "[shard 0/3] shard 0 of 3: batches 0..5 of 17",
        "[shard 2/3] shard 2 of 3: batches 11..17 of 17",
        "[shard 1/3] scored 24 of 66 pairs",
        "merging the outputs of 3 shards",
    ] {
        assert!(log.contains(said), "{said}: {log}");
    }
    // How the work is split is not part of the result: other shard counts re-run nothing.
    let plan = split
        .flow(&["plan", "w.yaml", "--set", "shards=5", "--json"])
        .expect_code(0)
        .json();
    assert_eq!(node_field(&plan, "action"), ["cached"]);
    // More shards than batches: the empty slices merge to the same artifact.
    let small = Project::new();
    let data = golden_dataset(&small, 1);
    small.write("w.yaml", &sharded_workflow(&data));
    let digest = scored(&small, &[]);
    assert_eq!(
        scored(&small, &["--set", "shards=5", "--force", "ref"]),
        digest
    );
    let error = small
        .flow(&["plan", "w.yaml", "--set", "shards=0"])
        .expect_code(2)
        .stderr;
    assert!(
        error.contains("shards") && error.contains("at least 1"),
        "{error}"
    );
}

#[test]
fn tokenizer_model_and_reference_logprobs_run_as_a_cached_workflow() {
    let p = Project::new();
    let data = golden_dataset(&p, 3);
    p.write(
        "w.yaml",
        &format!(
            "name: tiny\nparams: {{ seed: 1 }}\nnodes:\n  tok:\n    uses: tokenizer.train\n    with: {{ dataset: {d}, vocab_size: 400 }}\n  base:\n    uses: model.init\n    with: {{ tokenizer: \"${{tok.tokenizer}}\", hidden_size: 32, intermediate_size: 64, num_layers: 1, num_heads: 4, num_kv_heads: 2, seed: \"${{params.seed}}\" }}\n  ref:\n    uses: model.ref_logprobs\n    with: {{ model: \"${{base.model}}\", dataset: {d} }}\n",
            d = data.display()
        ),
    );
    let first = p.flow(&["run", "w.yaml", "--json"]).expect_code(0).json();
    assert!(
        node_field(&first, "status")
            .iter()
            .all(|s| s == "succeeded"),
        "{first}"
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(p.artifact_file("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            config["model_type"].as_str(),
            config["hidden_size"].as_u64()
        ),
        (Some("mistral"), Some(32))
    );
    assert!(p.artifact_file("generation_config.json").is_file());
    let scored = jsonl(&p.artifact_file("logprobs.jsonl"));
    assert_eq!(scored.len(), 18);
    assert!(
        scored
            .iter()
            .all(|r| r["chosen_logps"].as_f64().unwrap() < 0.0)
    );
    let second = p.flow(&["run", "w.yaml", "--json"]).expect_code(0).json();
    assert!(node_field(&second, "status").iter().all(|s| s == "cached"));
    let plan = p
        .flow(&["plan", "w.yaml", "--set", "seed=2", "--json"])
        .expect_code(0)
        .json();
    let actions = node_field(&plan, "action");
    assert_eq!(actions, ["cached", "run", "run"]);
    // Editing the dataset file (a plain path, not an artifact) re-runs what reads it.
    std::thread::sleep(Duration::from_millis(20));
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("{\"prompt\": \"Hallo?\", \"chosen\": \"Hallo!\", \"rejected\": \"Nein.\"}\n");
    std::fs::write(&data, text).unwrap();
    let plan = p.flow(&["plan", "w.yaml", "--json"]).expect_code(0).json();
    let reasons: Vec<&str> = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["reasons"][0].as_str().unwrap_or(""))
        .collect();
    assert!(
        reasons[0].starts_with("file ") && reasons[0].ends_with("pairs.jsonl changed"),
        "{plan}"
    );
    assert_eq!(plan["nodes"][2]["action"], "run");
}

#[test]
fn tokenizer_and_model_init_work_with_exec() {
    let p = Project::new();
    let data = golden_dataset(&p, 2);
    p.flow(&[
        "exec",
        "tokenizer.train",
        "--input",
        &format!("dataset={}", data.display()),
        "--with",
        "vocab_size=350",
        "--out",
        "tok",
    ])
    .expect_code(0);
    assert!(p.path().join("tok/tokenizer/tokenizer.json").is_file());
    p.flow(&[
        "exec",
        "model.init",
        "--input",
        "tokenizer=tok/tokenizer",
        "--with",
        "hidden_size=32",
        "--with",
        "num_layers=1",
        "--with",
        "tie_word_embeddings=true",
        "--out",
        "m",
    ])
    .expect_code(0);
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(p.path().join("m/model/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            config["vocab_size"].as_u64(),
            config["tie_word_embeddings"].as_bool()
        ),
        (Some(350), Some(true))
    );
    let bad = p
        .flow(&[
            "exec",
            "model.init",
            "--input",
            "tokenizer=tok/tokenizer",
            "--with",
            "num_heads=3",
            "--out",
            "bad",
        ])
        .expect_code(2);
    assert!(
        bad.stderr
            .contains("`with.num_kv_heads`: must divide num_heads (3)"),
        "{}",
        bad.stderr
    );
}

#[test]
fn bad_model_inputs_fail_clearly() {
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    let model = fixtures().join("mistral-tiny/base");
    let exec = |extra: &[&str], model: &Path, data: &Path| {
        let mut args = vec![
            "exec".to_string(),
            "model.ref_logprobs".into(),
            "--input".into(),
            format!("model={}", model.display()),
            "--input".into(),
            format!("dataset={}", data.display()),
            "--out".into(),
            format!("out{}", fastrand()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        p.flow(&refs)
    };
    let cuda = exec(&["--with", "device=cuda:0"], &model, &data);
    if cfg!(feature = "cuda") {
        // Built with CUDA: a machine without a usable GPU says so (one with a GPU just runs).
        assert!(
            cuda.code == 0
                || (cuda.stderr.contains("CUDA device 0 is not usable")
                    && !cuda.stderr.contains("searched for library names")),
            "{}",
            cuda.stderr
        );
    } else {
        assert_eq!(cuda.code, 1);
        assert!(
            cuda.stderr
                .contains("needs flow built with the `cuda` feature"),
            "{}",
            cuda.stderr
        );
    }
    // WGSL has no bf16: refused with the params, before any device is touched.
    let bf16_wgpu = exec(
        &["--with", "device=wgpu", "--with", "dtype=bf16"],
        &model,
        &data,
    );
    let bf16_wgpu = bf16_wgpu.expect_code(2);
    assert!(
        bf16_wgpu
            .stderr
            .contains("dtype bf16 is not supported on device `wgpu`"),
        "{}",
        bf16_wgpu.stderr
    );
    let bad_device = exec(&["--with", "device=tpu"], &model, &data).expect_code(2);
    assert!(
        bad_device.stderr.contains("invalid device `tpu`"),
        "{}",
        bad_device.stderr
    );
    let no_model =
        exec(&[], &p.path().join("pairs.jsonl").with_file_name(""), &data).expect_code(1);
    assert!(
        no_model.stderr.contains("tokenizer.json: file not found"),
        "{}",
        no_model.stderr
    );
    let broken = p.write(
        "broken.jsonl",
        "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\nnot json\n",
    );
    let bad_line = exec(&[], &model, &broken).expect_code(1);
    assert!(
        bad_line
            .stderr
            .contains("broken.jsonl:2: not a preference pair"),
        "{}",
        bad_line.stderr
    );
    let nan = support::nan_model(&p, &model, "model.embed_tokens.weight");
    let diverged = exec(&[], &nan, &data).expect_code(1);
    assert!(
        diverged
            .stderr
            .contains("pair `p0-0`: the reference model gives non-finite log-probs"),
        "{}",
        diverged.stderr
    );
    for flag in ["batch_size=0", "max_tokens_per_batch=0"] {
        let zero = exec(&["--with", flag], &model, &data).expect_code(2);
        let key = flag.trim_end_matches("=0");
        assert!(
            zero.stderr
                .contains(&format!("`with.{key}`: must be at least 1")),
            "{}",
            zero.stderr
        );
    }
}

fn fastrand() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

#[test]
fn model_init_refuses_shapes_no_model_can_have() {
    let p = Project::new();
    p.flow(&[
        "exec",
        "tokenizer.train",
        "--input",
        &format!("dataset={}", golden_dataset(&p, 1).display()),
        "--with",
        "vocab_size=300",
        "--out",
        "tok",
    ])
    .expect_code(0);
    for (with, message) in [
        ("num_heads=0", "`with.num_heads`: must be at least 1"),
        (
            "hidden_size=36",
            "`with.head_dim`: must be even and positive",
        ),
        (
            "max_position_embeddings=1",
            "`with.max_position_embeddings`: must be at least 2",
        ),
        (
            "sliding_window=0",
            "`with.sliding_window`: must be positive",
        ),
        ("init_std=0", "`with.init_std`: must be a positive number"),
        (
            "rope_theta=-1",
            "`with.rope_theta`: must be a positive number",
        ),
    ] {
        let out = p
            .flow(&[
                "exec",
                "model.init",
                "--input",
                "tokenizer=tok/tokenizer",
                "--with",
                with,
                "--out",
                "bad",
            ])
            .expect_code(2);
        assert!(out.stderr.contains(message), "{with}: {}", out.stderr);
        assert!(!p.path().join("bad").exists(), "{with} left an output");
    }
}
