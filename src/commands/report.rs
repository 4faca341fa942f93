//! `flow report [RUN]` (where a run's evaluation report is) and `flow compare RUN_A RUN_B`
//! (params and metrics of two runs side by side, so a β sweep reads at a glance).

use flow_engine::store::Store;
use flow_engine::store::record::RunRecord;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::PathBuf;

use super::inspect::find_run;
use super::{Failure, print_json, print_table};

/// Files called `name` in the artifacts a run's nodes produced, in node order.
fn run_files(store: &Store, record: &RunRecord, name: &str) -> Vec<PathBuf> {
    record
        .nodes
        .iter()
        .flat_map(|n| n.outputs.values())
        .map(|digest| store.artifact_dir(digest).join(name))
        .filter(|path| path.is_file())
        .collect()
}

/// `flow report [RUN] [--open]`.
pub fn report(store: &Store, wanted: &str, open: bool) -> Result<(), Failure> {
    let record = find_run(store, wanted)?;
    let Some(report) = run_files(store, &record, "report.html").pop() else {
        return Err(Failure::Input(format!(
            "error: run {} wrote no report.html (add an `evaluate` node to the workflow)",
            record.id
        )));
    };
    let report = std::path::absolute(&report).unwrap_or(report);
    println!("{}", report.display());
    if open {
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        std::process::Command::new(opener)
            .arg(&report)
            .spawn()
            .map_err(|e| Failure::Run(format!("error: cannot start `{opener}`: {e}")))?;
    }
    Ok(())
}

/// Numbers of a JSON document by dotted path (arrays left out: they are per-item data).
fn flatten(prefix: &str, value: &Json, out: &mut BTreeMap<String, Json>) {
    match value {
        Json::Object(map) => {
            for (key, inner) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, inner, out);
            }
        }
        Json::Array(_) => {}
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// A run's metrics: `eval.json` flattened, and the last training record of `metrics.jsonl`.
fn run_metrics(store: &Store, record: &RunRecord) -> BTreeMap<String, Json> {
    let mut metrics = BTreeMap::new();
    for path in run_files(store, record, "eval.json") {
        if let Some(json) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<Json>(&t).ok())
        {
            flatten("eval", &json, &mut metrics);
        }
    }
    for path in run_files(store, record, "metrics.jsonl") {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let last = text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .find(|r| r.get("loss").is_some());
        if let Some(last) = last {
            flatten("train", &last, &mut metrics);
        }
    }
    metrics
}

fn cell(value: Option<&Json>) -> String {
    match value {
        None => "-".into(),
        Some(Json::String(s)) => s.clone(),
        Some(Json::Number(n)) => match n.as_f64() {
            Some(x) if x.fract() != 0.0 => format!("{x:.4}"),
            _ => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// `flow compare RUN_A RUN_B [--json]`.
pub fn compare(store: &Store, a: &str, b: &str, json: bool) -> Result<(), Failure> {
    let (a, b) = (find_run(store, a)?, find_run(store, b)?);
    let sections = [
        ("param", a.params.clone(), b.params.clone()),
        ("metric", run_metrics(store, &a), run_metrics(store, &b)),
    ];
    if json {
        let value: BTreeMap<&str, Json> = sections
            .iter()
            .map(|(name, x, y)| (*name, serde_json::json!({ "a": x, "b": y })))
            .collect();
        print_json(&serde_json::json!({"a": a.id, "b": b.id, "sections": value}));
        return Ok(());
    }
    let mut rows = vec![vec![
        String::new(),
        "NAME".into(),
        a.id.clone(),
        b.id.clone(),
    ]];
    for (kind, x, y) in &sections {
        let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
        for key in keys {
            let (left, right) = (x.get(key), y.get(key));
            let mark = if left == right { " " } else { "*" };
            rows.push(vec![
                format!("{mark} {kind}"),
                key.clone(),
                cell(left),
                cell(right),
            ]);
        }
    }
    print_table(&rows);
    println!("(* differs)");
    Ok(())
}
