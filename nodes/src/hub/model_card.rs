//! The model card (`README.md`) `hub.push` writes: YAML front matter the Hub indexes
//! (`base_model`, `datasets`, `language`, `license`, `library_name`, `tags`), then the training
//! parameters, final metrics, the workflow that produced the model and the artifact digests.

use flow_engine::node::Lineage;
use serde_json::Value as Json;
use std::fmt::Write;
use std::path::Path;

/// What the card says about the model beyond its files.
pub struct CardInfo<'a> {
    /// `org/name` of the repository.
    pub repo: &'a str,
    /// A dataset card (for a preference dataset) instead of a model card.
    pub dataset: bool,
    /// The base model's Hub id.
    pub base_model: Option<&'a str>,
    /// Hub ids of the training datasets.
    pub datasets: &'a [String],
    /// ISO language codes.
    pub languages: &'a [String],
    /// SPDX-style license id.
    pub license: Option<&'a str>,
    /// Tags beyond `dpo` and `flow`.
    pub tags: &'a [String],
    /// The published artifact (a PEFT adapter when it holds `adapter_config.json`).
    pub source_dir: &'a Path,
    /// `metrics.jsonl` of the training run, when given.
    pub metrics: Option<&'a Path>,
    /// `eval.json` of an evaluation, when given.
    pub eval: Option<&'a Path>,
    /// The run that produced the model.
    pub lineage: &'a Lineage,
    /// Pushed files: path, size, sha256.
    pub files: &'a [(String, u64, String)],
}

/// A YAML scalar: JSON strings are valid YAML, and quote whatever needs it.
fn yaml(text: &str) -> String {
    Json::String(text.to_string()).to_string()
}

fn yaml_list(out: &mut String, key: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "{key}:");
    for item in items {
        let _ = writeln!(out, "- {}", yaml(item));
    }
}

/// `dpo`, `flow`, then the user's tags (no repeats).
fn tags(info: &CardInfo) -> Vec<String> {
    let mut tags = vec!["dpo".to_string(), "flow".to_string()];
    for tag in info.tags {
        if !tags.contains(tag) {
            tags.push(tag.clone());
        }
    }
    tags
}

/// Renders the whole card.
pub fn render(info: &CardInfo) -> String {
    if info.dataset {
        return render_dataset(info);
    }
    let adapter = info.source_dir.join("adapter_config.json").is_file();
    let mut out = String::from("---\n");
    if let Some(base) = info.base_model {
        let _ = writeln!(out, "base_model: {}", yaml(base));
    }
    yaml_list(&mut out, "datasets", info.datasets);
    yaml_list(&mut out, "language", info.languages);
    if let Some(license) = info.license {
        let _ = writeln!(out, "license: {}", yaml(license));
    }
    let library = if adapter { "peft" } else { "transformers" };
    let _ = writeln!(out, "library_name: {library}");
    yaml_list(&mut out, "tags", &tags(info));
    out.push_str("---\n\n");
    let name = info.repo.rsplit('/').next().unwrap_or(info.repo);
    let _ = writeln!(out, "# {name}\n");
    let kind = if adapter {
        "A LoRA adapter (PEFT format)"
    } else {
        "A model"
    };
    let base = info.base_model.map_or(String::new(), |b| {
        format!(" on top of [{b}](https://huggingface.co/{b})")
    });
    let _ = writeln!(
        out,
        "{kind} trained with Direct Preference Optimization{base}, produced by the flow workflow `{}`.\n",
        info.lineage.workflow
    );
    training_section(&mut out, info);
    metrics_section(&mut out, info);
    workflow_section(&mut out, info);
    out
}

/// The card of a preference dataset: front matter with the data files, then its provenance.
fn render_dataset(info: &CardInfo) -> String {
    let mut out = String::from("---\n");
    yaml_list(&mut out, "language", info.languages);
    if let Some(license) = info.license {
        let _ = writeln!(out, "license: {}", yaml(license));
    }
    out.push_str("task_categories:\n- text-generation\n");
    yaml_list(&mut out, "tags", &tags(info));
    yaml_list(&mut out, "source_datasets", info.datasets);
    out.push_str("configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.jsonl\n---\n\n");
    let name = info.repo.rsplit('/').next().unwrap_or(info.repo);
    let rows = std::fs::read_to_string(crate::preference::data_file(info.source_dir))
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "# {name}\n\nA preference dataset for DPO: {rows} rows of `prompt`, `chosen`, `rejected` (and `system`), prepared by the flow workflow `{}`.\n",
        info.lineage.workflow
    );
    training_section(&mut out, info);
    workflow_section(&mut out, info);
    out
}

/// The node that produced the model directory (matched by artifact digest).
fn model_producer<'a>(info: &'a CardInfo) -> Option<(&'a str, &'a flow_engine::node::Producer)> {
    let digest = info.source_dir.file_name()?.to_str()?;
    let input = info
        .lineage
        .inputs
        .iter()
        .find(|(_, d)| d.as_str() == digest)?
        .0;
    let node = input.split('.').next()?;
    info.lineage
        .producers
        .get_key_value(node)
        .map(|(k, v)| (k.as_str(), v))
}

fn training_section(out: &mut String, info: &CardInfo) {
    let Some((node, producer)) = model_producer(info) else {
        return;
    };
    let title = if info.dataset {
        "How it was made"
    } else {
        "Training parameters"
    };
    let _ = writeln!(out, "## {title}\n");
    let _ = writeln!(out, "Node `{node}` (`{}`):\n", producer.uses);
    out.push_str("| param | value |\n|---|---|\n");
    if let Some(params) = producer.with.as_object() {
        for (key, value) in params {
            let text = match value {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            let _ = writeln!(out, "| `{key}` | `{}` |", text.replace('|', "\\|"));
        }
    }
    out.push('\n');
}

/// The last record of `metrics.jsonl` that has each kind of value: training and `eval_*`.
fn final_metrics(path: &Path) -> (Option<Json>, Option<Json>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let records: Vec<Json> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let has_eval = |r: &Json| {
        r.as_object()
            .is_some_and(|m| m.keys().any(|k| k.starts_with("eval_")))
    };
    let train = records.iter().rev().find(|r| !has_eval(r)).cloned();
    let eval = records.iter().rev().find(|r| has_eval(r)).cloned();
    (train, eval)
}

fn metric_table(out: &mut String, title: &str, record: &Json) {
    let Some(map) = record.as_object() else {
        return;
    };
    let _ = writeln!(out, "{title}\n\n| metric | value |\n|---|---|");
    for (key, value) in map {
        if let Some(number) = value.as_f64() {
            let _ = writeln!(out, "| `{key}` | {} |", format_number(number));
        }
    }
    out.push('\n');
}

fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.6}")
    }
}

fn metrics_section(out: &mut String, info: &CardInfo) {
    let (train, eval) = info.metrics.map(final_metrics).unwrap_or_default();
    let report: Option<Json> = info
        .eval
        .and_then(|dir| std::fs::read_to_string(dir.join("eval.json")).ok())
        .and_then(|t| serde_json::from_str(&t).ok());
    if train.is_none() && eval.is_none() && report.is_none() {
        return;
    }
    let _ = writeln!(out, "## Results\n");
    if let Some(train) = train {
        metric_table(out, "Last training step:", &train);
    }
    if let Some(eval) = eval {
        metric_table(out, "Last evaluation during training:", &eval);
    }
    if let Some(mut report) = report {
        benchmark_table(out, &report);
        // Every question's log-likelihoods stay in eval.json; the card shows the summary.
        if let Some(mt) = report.get_mut("mt_bench").and_then(Json::as_object_mut) {
            mt.remove("answers");
            for model in ["policy", "reference"] {
                if let Some(scores) = mt.get_mut(model).and_then(Json::as_object_mut) {
                    scores.remove("judgments");
                }
            }
        }
        for model in ["policy", "reference"] {
            if let Some(tasks) = report[model]["tasks"].as_object_mut() {
                for task in tasks.values_mut() {
                    if let Some(task) = task.as_object_mut() {
                        task.remove("per_question");
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "Evaluation report (`eval.json`, per-question log-likelihoods and MT-Bench answers left out):\n\n```json\n{}\n```\n",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    }
}

/// The multiple-choice results of `eval.json` as a table: each number with its task, preset,
/// shots and the metric's definition.
fn benchmark_table(out: &mut String, report: &Json) {
    let empty = serde_json::Map::new();
    let tasks = report["policy"]["tasks"].as_object().unwrap_or(&empty);
    let mt_bench = report.get("mt_bench").filter(|m| m.is_object());
    if tasks.is_empty() && mt_bench.is_none() {
        return;
    }
    let _ = writeln!(
        out,
        "Benchmarks (computed as lm-evaluation-harness 0.4 computes them):\n\n| task | format | shots | metric | policy | reference |\n|---|---|---|---|---|---|"
    );
    for (name, task) in tasks {
        let Some(definitions) = task["definitions"].as_object() else {
            continue;
        };
        for (metric, definition) in definitions {
            let value = |model: &str| {
                report[model]["tasks"][name][metric]
                    .as_f64()
                    .map_or("–".into(), |v| format!("{v:.4}"))
            };
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {metric} ({}) | {} | {} |",
                task["preset"].as_str().unwrap_or(""),
                task["num_fewshot"],
                definition.as_str().unwrap_or(""),
                value("policy"),
                value("reference")
            );
        }
    }
    if let Some(mt) = mt_bench {
        mt_bench_rows(out, mt);
    }
    out.push('\n');
}

/// MT-Bench's means as benchmark rows (judge named, ratings 1–10).
fn mt_bench_rows(out: &mut String, mt: &Json) {
    let judge = mt["judge"].as_str().unwrap_or("");
    let rows = [
        ("average", "mean judge rating 1–10 over all turns"),
        ("first_turn", "mean judge rating 1–10, first turns"),
        ("second_turn", "mean judge rating 1–10, second turns"),
    ];
    for (key, definition) in rows {
        let value = |model: &str| {
            mt[model][key]
                .as_f64()
                .map_or("–".into(), |v| format!("{v:.2}"))
        };
        let _ = writeln!(
            out,
            "| MT-Bench ({} questions) | judge {judge} | 0 | {key} ({definition}) | {} | {} |",
            mt["questions"],
            value("policy"),
            value("reference")
        );
    }
}

fn workflow_section(out: &mut String, info: &CardInfo) {
    let lineage = info.lineage;
    if !lineage.workflow_source.is_empty() {
        let file = lineage
            .workflow_file
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().to_string());
        let _ = writeln!(
            out,
            "## Workflow\n\nReproduce with `flow run {file}`:\n\n```yaml\n{}\n```\n",
            lineage.workflow_source.trim_end()
        );
    }
    let _ = writeln!(out, "## Artifacts\n\n| input | blake3 digest |\n|---|---|");
    for (input, digest) in &lineage.inputs {
        let _ = writeln!(out, "| `{input}` | `{digest}` |");
    }
    let _ = writeln!(out, "\n| file | bytes | sha256 |\n|---|---|---|");
    for (path, size, sha) in info.files {
        let _ = writeln!(out, "| `{path}` | {size} | `{sha}` |");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmarks_are_shown_with_their_setting_and_definition() {
        let report = serde_json::json!({
            "policy": {"tasks": {"arc_de": {"preset": "arc_de", "num_fewshot": 25, "acc": 0.5,
                "definitions": {"acc": "share of questions whose highest-log-likelihood choice is the answer"}}}},
            "reference": {"tasks": {"arc_de": {"acc": 0.25}}},
            "mt_bench": {"judge": "gpt-4", "questions": 80,
                "policy": {"average": 6.99, "first_turn": 7.34, "second_turn": 6.65},
                "reference": {"average": 6.5, "first_turn": null, "second_turn": 6.0}},
        });
        let mut out = String::new();
        benchmark_table(&mut out, &report);
        assert!(
            out.contains("| arc_de | arc_de | 25 | acc (share of questions whose highest-log-likelihood choice is the answer) | 0.5000 | 0.2500 |"),
            "{out}"
        );
        assert!(
            out.contains("| MT-Bench (80 questions) | judge gpt-4 | 0 | first_turn (mean judge rating 1–10, first turns) | 7.34 | – |"),
            "{out}"
        );
        let mut none = String::new();
        benchmark_table(&mut none, &serde_json::json!({"policy": {"tasks": {}}}));
        assert!(none.is_empty());
    }
}
