//! `evaluate`'s multiple-choice tasks against lm-evaluation-harness 0.4.13 itself:
//! `tests/fixtures/lm-eval/golden.json` holds what `lm_eval --model hf` (float32, CPU) gave on
//! the tiny Mistral for a plain German quiz (2-shot, from a training file and from the
//! questions themselves) and for the harness's German tasks (arc_de, hellaswag_de, m_mmlu_de,
//! truthfulqa_de_mc1/mc2, belebele_deu_Latn) on rows in their formats
//! (`scripts/make_lm_eval_golden.py`). Every request's token ids must be the harness's exactly
//! (contexts, shots, delimiters, BOS, left truncation), every log-likelihood within 1e-4, and
//! the metrics equal.

mod support;

use flow_model::tokenize::PreferenceTokenizer;
use flow_nodes::eval::tasks::{TaskParam, load_tasks};
use serde_json::Value;
use std::path::PathBuf;
use support::{Project, fixtures, golden_dataset};

fn lm_eval_golden() -> Value {
    let text = std::fs::read_to_string(fixtures().join("lm-eval/golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A golden task's spec as flow's `tasks:` entry, its files made absolute.
fn spec(name: &str, task: &Value) -> Value {
    let mut spec = task["spec"].clone();
    let dir = fixtures().join("lm-eval");
    for key in ["path", "fewshot_path"] {
        if let Some(file) = spec[key].as_str() {
            spec[key] = Value::String(dir.join(file).display().to_string());
        }
    }
    spec["name"] = Value::String(name.into());
    spec
}

#[test]
fn every_request_has_the_harness_s_token_ids() {
    let golden = lm_eval_golden();
    let base = fixtures().join("mistral-tiny/base");
    let tokenizer = PreferenceTokenizer::load(&base).unwrap();
    let max_length = 512;
    for (name, task) in golden["tasks"].as_object().unwrap() {
        let param: TaskParam = serde_json::from_value(spec(name, task)).unwrap();
        let loaded = load_tasks(&[param], &tokenizer, max_length).unwrap();
        let requests: Vec<&Value> = task["docs"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|d| d["requests"].as_array().unwrap())
            .collect();
        assert_eq!(loaded[0].sequences.len(), requests.len(), "{name}");
        for (i, (sequence, request)) in loaded[0].sequences.iter().zip(&requests).enumerate() {
            let ids =
                |key: &str| -> Vec<u32> { serde_json::from_value(request[key].clone()).unwrap() };
            let (context, continuation) = (ids("context_ids"), ids("continuation_ids"));
            // The harness feeds the last max_length + 1 tokens (minus the last).
            let whole = [context, continuation.clone()].concat();
            let expected = &whole[whole.len().saturating_sub(max_length + 1)..];
            assert_eq!(
                sequence.ids, expected,
                "{name} request {i}: {}",
                request["context"]
            );
            assert_eq!(
                sequence.ids.len() - sequence.completion_start,
                continuation.len(),
                "{name} request {i}"
            );
        }
    }
}

#[test]
fn log_likelihoods_and_metrics_through_the_binary_equal_the_harness_s() {
    let golden = lm_eval_golden();
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    let base = fixtures().join("mistral-tiny/base");
    let specs: Vec<Value> = golden["tasks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, task)| spec(name, task))
        .collect();
    let tasks = format!("tasks={}", Value::Array(specs));
    support::exec_evaluate(&p, (&base, &base, &data), &[&tasks], "eval").expect_code(0);
    let report: Value =
        serde_json::from_slice(&std::fs::read(p.path().join("eval/report/eval.json")).unwrap())
            .unwrap();
    for (name, task) in golden["tasks"].as_object().unwrap() {
        let ours = &report["policy"]["tasks"][name];
        let questions = ours["per_question"].as_array().unwrap();
        for (doc, question) in task["docs"].as_array().unwrap().iter().zip(questions) {
            let lls = question["loglikelihoods"].as_array().unwrap();
            for (request, ll) in doc["requests"].as_array().unwrap().iter().zip(lls) {
                let (theirs, ours) = (
                    request["loglikelihood"].as_f64().unwrap(),
                    ll.as_f64().unwrap(),
                );
                assert!(
                    (theirs - ours).abs() <= 1e-4 * theirs.abs().max(1.0),
                    "{name} {:?}: harness {theirs}, flow {ours}",
                    request["continuation"]
                );
            }
        }
        for (metric, value) in task["results"].as_object().unwrap() {
            let (theirs, ours) = (value.as_f64().unwrap(), ours[metric].as_f64().unwrap());
            assert!(
                (theirs - ours).abs() <= 1e-3 * theirs.abs(),
                "{name} {metric}: harness {theirs}, flow {ours}"
            );
        }
        assert_eq!(ours["num_fewshot"], task["spec"]["num_fewshot"], "{name}");
    }
}

#[test]
fn a_bare_path_is_a_zero_shot_plain_task_and_specs_are_checked() {
    let bare: TaskParam = serde_json::from_value(Value::String("quiz.jsonl".into())).unwrap();
    let spec = bare.spec();
    assert_eq!((spec.num_fewshot, spec.target_delimiter.as_str()), (0, " "));
    assert_eq!(bare.files(), [PathBuf::from("quiz.jsonl")]);
    let unknown = serde_json::from_value::<TaskParam>(serde_json::json!({"path": "q", "shots": 5}));
    assert!(unknown.is_err());
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    let base = fixtures().join("mistral-tiny/base");
    let quiz = fixtures().join("lm-eval/quiz_test.jsonl");
    let tqa = fixtures().join("lm-eval/tqa_val.jsonl");
    for (tasks, code, message) in [
        (
            format!("[{}, {}]", quiz.display(), quiz.display()),
            2,
            "`with.tasks[1]`: a second task named `quiz_test`".to_string(),
        ),
        (
            format!("[{{path: {}, metrics: [mc2]}}]", quiz.display()),
            1,
            "quiz_test.jsonl:1: metric mc2 needs which choices are true".into(),
        ),
        (
            format!("[{{path: {}, num_fewshot: 8}}]", quiz.display()),
            1,
            "quiz_test.jsonl:1: the few-shot pool has 8 examples; 8 shots besides the question itself need 9".into(),
        ),
        (
            format!("[{{path: {}, metrics: []}}]", quiz.display()),
            2,
            "`with.tasks[0].metrics`: must name at least one metric".into(),
        ),
        (
            format!("[{{path: {}, name: \" \"}}]", quiz.display()),
            2,
            "`with.tasks[0].name`: must not be empty".into(),
        ),
        (
            format!("[{{path: {}, preset: truthfulqa_mc1, num_fewshot: 1}}]", tqa.display()),
            2,
            "`with.tasks[0].num_fewshot`: the harness's truthfulqa_mc1 is zero-shot".into(),
        ),
        (
            format!("[{{path: {}, preset: arc_de, num_fewshot: 5}}]", tqa.display()),
            2,
            "`with.tasks[0].fewshot_path`: the harness's arc_de draws its shots from the training (dev) split".into(),
        ),
        (
            format!("[{{path: {}, preset: arc_de}}]", tqa.display()),
            1,
            "tqa_val.jsonl:1: missing field `answer`".into(),
        ),
    ] {
        let with = format!("tasks={tasks}");
        let run = support::exec_evaluate(&p, (&base, &base, &data), &[&with], "bad");
        assert_eq!(run.code, code, "{tasks}: {}", run.stderr);
        assert!(run.stderr.contains(&message), "{message}: {}", run.stderr);
    }
}
