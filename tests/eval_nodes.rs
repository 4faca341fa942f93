//! `evaluate` through the real binary on the fixtures: the preference metrics equal the values
//! computed by hand from transformers' golden log-probs, multiple-choice accuracy equals the
//! argmax of independently scored choices, and the report files are complete.

mod llm_server;
mod support;

use flow_model::scoring::{Scorer, Sequence};
use serde_json::Value;
use support::{Project, fixtures, golden, golden_dataset};

fn close(actual: &Value, expected: f64, what: &str) {
    let actual = actual.as_f64().unwrap_or_else(|| panic!("{what} missing"));
    assert!(
        (actual - expected).abs() <= 1e-4 * expected.abs().max(1.0),
        "{what}: {actual} vs {expected}"
    );
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn preference_metrics_equal_hand_computed_values_from_the_golden_log_probs() {
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    let task = p.write(
        "quiz.jsonl",
        "{\"question\": \"Was ist die Hauptstadt von Deutschland?\", \"choices\": [\"Berlin\", \"Paris\", \"Rom\"], \"answer\": 0}\n{\"question\": \"Wie viele Beine hat eine Katze?\", \"choices\": [\"zwei\", \"vier\"], \"answer\": 1}\n",
    );
    let base = fixtures().join("mistral-tiny/base");
    let policy = fixtures().join("mistral-tiny/policy");
    p.flow(&[
        "exec",
        "evaluate",
        "--with",
        &format!("model={}", policy.display()),
        "--with",
        &format!("reference={}", base.display()),
        "--with",
        &format!("dataset={}", data.display()),
        "--with",
        &format!("tasks=[{}]", task.display()),
        "--out",
        "eval",
    ])
    .expect_code(0);
    let report: Value =
        serde_json::from_slice(&std::fs::read(p.path().join("eval/report/eval.json")).unwrap())
            .unwrap();

    // By hand from the golden per-token log-probs (TRL's definitions, β = 0.1).
    let g = golden();
    let beta = g["beta"].as_f64().unwrap();
    let pairs = g["pairs"].as_array().unwrap();
    let f = |pair: &Value, key: &str| pair[key].as_f64().unwrap();
    let tokens = |pair: &Value, key: &str| -> Vec<f64> {
        pair[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let chosen: Vec<f64> = pairs
        .iter()
        .map(|q| beta * (f(q, "policy_chosen_logps") - f(q, "ref_chosen_logps")))
        .collect();
    let rejected: Vec<f64> = pairs
        .iter()
        .map(|q| beta * (f(q, "policy_rejected_logps") - f(q, "ref_rejected_logps")))
        .collect();
    let margins: Vec<f64> = chosen.iter().zip(&rejected).map(|(c, r)| c - r).collect();
    let pref = &report["preference"];
    close(
        &pref["rewards/accuracies"],
        mean(
            &margins
                .iter()
                .map(|m| f64::from(u8::from(*m > 0.0)))
                .collect::<Vec<_>>(),
        ),
        "accuracy",
    );
    close(
        &pref["rewards/accuracies"],
        g["losses"]["rewards/accuracies"].as_f64().unwrap(),
        "TRL accuracy",
    );
    close(&pref["rewards/margins"], mean(&margins), "margin");
    close(&pref["rewards/chosen"], mean(&chosen), "chosen reward");
    close(
        &pref["rewards/rejected"],
        mean(&rejected),
        "rejected reward",
    );
    assert_eq!(pref["pairs"], pairs.len());

    for (model, prefix) in [("policy", "policy"), ("reference", "ref")] {
        let per_token = |q: &Value, which: &str| {
            let t = tokens(q, &format!("{prefix}_{which}_token_logps"));
            t.iter().sum::<f64>() / t.len() as f64
        };
        let share = |prefers: &dyn Fn(&Value) -> bool| {
            mean(
                &pairs
                    .iter()
                    .map(|q| f64::from(u8::from(prefers(q))))
                    .collect::<Vec<_>>(),
            )
        };
        let sums = share(&|q| {
            f(q, &format!("{prefix}_chosen_logps")) > f(q, &format!("{prefix}_rejected_logps"))
        });
        close(
            &report[model]["win_rate"],
            sums,
            &format!("{model} win rate"),
        );
        let normalised = share(&|q| per_token(q, "chosen") > per_token(q, "rejected"));
        close(
            &report[model]["win_rate_per_token"],
            normalised,
            &format!("{model} win rate per token"),
        );
        close(
            &report[model]["logps_chosen"],
            mean(
                &pairs
                    .iter()
                    .map(|q| per_token(q, "chosen"))
                    .collect::<Vec<_>>(),
            ),
            &format!("{model} chosen logps"),
        );
        let all: Vec<f64> = pairs
            .iter()
            .flat_map(|q| tokens(q, &format!("{prefix}_chosen_token_logps")))
            .collect();
        close(
            &report[model]["perplexity"],
            (-all.iter().sum::<f64>() / all.len() as f64).exp(),
            &format!("{model} perplexity"),
        );
    }

    // Multiple choice: the argmax of the choices' log-likelihoods, scored here independently.
    let tokenizer = flow_model::tokenize::PreferenceTokenizer::load(&base).unwrap();
    let device = flow_model::cpu();
    let scorer = Scorer::new(flow_model::Model::load(&policy, &device).unwrap());
    let questions = [
        (
            "Was ist die Hauptstadt von Deutschland?",
            vec!["Berlin", "Paris", "Rom"],
            0,
        ),
        ("Wie viele Beine hat eine Katze?", vec!["zwei", "vier"], 1),
    ];
    let (mut right, mut right_norm) = (0.0, 0.0);
    for (question, choices, answer) in &questions {
        let context = tokenizer.encode(question);
        let scored: Vec<(f64, f64)> = choices
            .iter()
            .map(|c| {
                let full = tokenizer.encode(&format!("{question} {c}"));
                let start = flow_model::tokenize::common_prefix(&context, &full);
                let ll = scorer
                    .score(
                        &[Sequence {
                            ids: full,
                            completion_start: start,
                        }],
                        &device,
                    )
                    .unwrap()
                    .sums[0];
                // lm-evaluation-harness's acc_norm: per character of the choice alone.
                (ll, ll / c.chars().count() as f64)
            })
            .collect();
        let best = |key: fn(&(f64, f64)) -> f64| {
            (0..scored.len()).fold(0, |b, i| {
                if key(&scored[i]) > key(&scored[b]) {
                    i
                } else {
                    b
                }
            })
        };
        right += f64::from(u8::from(best(|s| s.0) == *answer));
        right_norm += f64::from(u8::from(best(|s| s.1) == *answer));
    }
    close(
        &report["policy"]["tasks"]["quiz"]["acc"],
        right / 2.0,
        "acc",
    );
    close(
        &report["policy"]["tasks"]["quiz"]["acc_norm"],
        right_norm / 2.0,
        "acc_norm",
    );

    let dir = p.path().join("eval/report");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 2, "plots inlined");
    assert!(html.contains("win rate as a preference classifier"));
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        md.contains("| reward accuracy") && md.contains("![Policy vs reference](eval_bars.svg)")
    );
    for file in ["eval_bars.svg", "reward_margins.svg"] {
        assert!(
            std::fs::read_to_string(dir.join(file))
                .unwrap()
                .contains("<svg"),
            "{file}"
        );
    }
}

#[test]
fn bad_task_files_and_params_fail_with_their_location() {
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    let base = fixtures().join("mistral-tiny/base");
    let evaluate = |model: &std::path::Path, task: Option<&std::path::Path>| {
        let tasks = task.map(|t| format!("tasks=[{}]", t.display()));
        let with: Vec<&str> = tasks.iter().map(String::as_str).collect();
        support::exec_evaluate(&p, (model, &base, &data), &with, "eval")
    };
    let long_choice = "Frage ".repeat(600);
    for (row, message) in [
        (
            r#"{"question": "q", "choices": ["a"], "answer": 0}"#.to_string(),
            "bad.jsonl:2: needs at least two choices, found 1".to_string(),
        ),
        (
            r#"{"question": "q", "choices": ["a", "b"], "answer": 2}"#.into(),
            "bad.jsonl:2: field `answer` must be an index below 2, found 2".into(),
        ),
        (
            r#"{"question": "q", "choices": ["a", "b"], "answer": "c"}"#.into(),
            "bad.jsonl:2: field `answer` (\"c\") is not one of the choices".into(),
        ),
        (
            r#"{"question": "q", "choices": "a b", "answer": 0}"#.into(),
            "bad.jsonl:2: field `choices` must be a list of strings".into(),
        ),
        (
            r#"{"choices": ["a", "b"], "answer": 0}"#.into(),
            "bad.jsonl:2: missing field `question` (the row has: answer, choices) (or give the task a `prompt`)".into(),
        ),
        (
            format!(r#"{{"question": "q", "choices": ["a", "{long_choice}"], "answer": 0}}"#),
            "bad.jsonl:2: choice 2 (\"Frage Frage".into(),
        ),
    ] {
        let good = r#"{"question": "Ja?", "choices": ["ja", "nein"], "answer": 0}"#;
        let task = p.write("bad.jsonl", &format!("{good}\n{row}\n"));
        let run = evaluate(&base, Some(&task));
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains(&message), "{message}: {}", run.stderr);
        assert!(
            !p.path().join("eval/report/eval.json").exists(),
            "nothing half-written"
        );
    }
    let nan = support::nan_model(&p, &base, "model.embed_tokens.weight");
    let run = evaluate(&nan, None);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("pair `p0-0` (chosen): the model gives a non-finite log-prob"),
        "{}",
        run.stderr
    );
    let run = p.flow(&[
        "exec",
        "evaluate",
        "--with",
        "model=m",
        "--with",
        "reference=r",
        "--with",
        "dataset=d",
        "--with",
        "beta=-1",
        "--out",
        "x",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("beta"), "{}", run.stderr);
}

#[test]
fn samples_are_generated_side_by_side_and_an_llm_judge_compares_them() {
    let server = llm_server::LlmServer::start("sk-judge");
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    let base = fixtures().join("mistral-tiny/base");
    let policy = fixtures().join("mistral-tiny/policy");
    let judge = format!(
        "judge={{base_url: \"{}/v1\", model: judge-model, api_key: sk-judge}}",
        server.url
    );
    p.flow(&[
        "exec", "evaluate",
        "--with", &format!("model={}", policy.display()),
        "--with", &format!("reference={}", base.display()),
        "--with", &format!("dataset={}", data.display()),
        "--with", "prompts=[\"Was ist die Hauptstadt von Deutschland?\", \"Nenne eine Farbe.\", \"Wie viele Tage hat eine Woche?\"]",
        "--with", "max_new_tokens=8",
        "--with", &judge,
        "--out", "eval",
    ])
    .expect_code(0);
    let report: Value =
        serde_json::from_slice(&std::fs::read(p.path().join("eval/report/eval.json")).unwrap())
            .unwrap();
    let samples = report["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    let verdicts = report["judge"]["verdicts"].as_array().unwrap();
    let mut wins = 0;
    for (sample, verdict) in samples.iter().zip(verdicts) {
        for model in ["policy", "reference"] {
            for kind in ["greedy", "sampled"] {
                assert!(sample[model][kind].is_string(), "{sample}");
            }
        }
        let (policy, reference) = (
            sample["policy"]["greedy"].as_str().unwrap(),
            sample["reference"]["greedy"].as_str().unwrap(),
        );
        let (a, b) = if verdict["policy_position"] == "A" {
            (policy, reference)
        } else {
            (reference, policy)
        };
        let judge_says_a = a.trim().chars().count() >= b.trim().chars().count();
        let policy_wins = judge_says_a == (verdict["policy_position"] == "A");
        assert_eq!(
            verdict["winner"],
            if policy_wins { "policy" } else { "reference" },
            "{verdict}"
        );
        wins += usize::from(policy_wins);
    }
    assert_eq!(report["judge"]["wins"], wins);
    assert_eq!(server.state().requests, 3, "one judge request per prompt");
    let md = std::fs::read_to_string(p.path().join("eval/report/report.md")).unwrap();
    assert!(
        md.contains("## LLM judge") && md.contains("## Samples"),
        "{md}"
    );
}

/// MT-Bench on loopback: both models answer two-turn questions through the Mistral template,
/// the judge rates each turn (`[[1 + chars % 10]]` of the rated answer), a 500 and replies
/// without a rating are retried, a reply that never rates is counted and left out, and the
/// means are FastChat's.
#[test]
fn mt_bench_answers_are_rated_per_turn_and_averaged_as_fastchat_does() {
    let server = llm_server::LlmServer::start("sk-judge");
    {
        let mut state = server.state();
        state.faults.push_back(llm_server::Fault::ServerError);
        state.unrated = 2;
        state.unrated_containing = Some("Nenne eine Zahl.".into());
        state.refuse_containing = Some("VERBOTEN".into());
    }
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    let questions = p.write(
        "question.jsonl",
        concat!(
            r#"{"question_id": 81, "category": "writing", "turns": ["Schreibe einen Satz über Berlin.", "Jetzt kürzer."]}"#, "\n",
            r#"{"question_id": 111, "category": "math", "turns": ["Was ist 2+2?", "Und 3+3?"]}"#, "\n",
            r#"{"question_id": 101, "category": "reasoning", "turns": ["Wer ist älter, Anna (20) oder Ben (30)?", "Und in zehn Jahren?"], "reference": ["Ben.", "Immer noch Ben."]}"#, "\n",
            r#"{"question_id": 131, "category": "extraction", "turns": ["Nenne eine Zahl."]}"#, "\n",
            r#"{"question_id": 141, "category": "stem", "turns": ["Was ist VERBOTEN?"]}"#, "\n",
        ),
    );
    let references = p.write(
        "gpt-4.jsonl",
        r#"{"question_id": 111, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["4", "6"]}]}"#,
    );
    let base = fixtures().join("mistral-tiny/base");
    let policy = fixtures().join("mistral-tiny/policy");
    let mt_bench = format!(
        "mt_bench={{questions: {}, reference_answers: {}, max_new_tokens: 8, chat_template: mistral, judge: {{base_url: \"{}/v1\", model: judge-model, api_key: sk-judge, max_retries: 3}}}}",
        questions.display(),
        references.display(),
        server.url
    );
    support::exec_evaluate(&p, (&policy, &base, &data), &[&mt_bench], "eval").expect_code(0);
    let report: Value =
        serde_json::from_slice(&std::fs::read(p.path().join("eval/report/eval.json")).unwrap())
            .unwrap();
    let mt = &report["mt_bench"];
    assert_eq!(
        (mt["questions"].as_u64(), mt["judge"].as_str()),
        (Some(5), Some("judge-model"))
    );
    let answers = mt["answers"].as_array().unwrap();
    for model in ["policy", "reference"] {
        let scores = &mt[model];
        let judgments = scores["judgments"].as_array().unwrap();
        assert_eq!(
            judgments.len(),
            8,
            "two turns each, one for each one-turn question"
        );
        let (mut all, mut first, mut second) = (Vec::new(), Vec::new(), Vec::new());
        let mut by_category: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        for judgment in judgments {
            let id = &judgment["question_id"];
            let turn = judgment["turn"].as_u64().unwrap() as usize;
            let answer = answers.iter().find(|a| &a["question_id"] == id).unwrap()[model][turn - 1]
                .as_str()
                .unwrap();
            if id == 131 {
                assert!(judgment["score"].is_null(), "never rated: {judgment}");
                assert_eq!(judgment["attempts"], 4, "asked again max_retries times");
                continue;
            }
            if id == 141 {
                // The endpoint refused the request (400): FastChat's $ERROR$, the run goes on.
                assert!(judgment["score"].is_null(), "{judgment}");
                assert!(
                    judgment["judgment"]
                        .as_str()
                        .unwrap()
                        .starts_with("$ERROR$ HTTP 400"),
                    "{judgment}"
                );
                continue;
            }
            let expected = llm_server::expected_rating(answer);
            assert_eq!(judgment["score"].as_f64(), Some(expected), "{judgment}");
            let prompt = judgment["prompt"].as_str().unwrap();
            let math = id == 111 || id == 101;
            assert_eq!(
                prompt,
                match (math, turn) {
                    (false, 1) => "single-v1",
                    (false, _) => "single-v1-multi-turn",
                    (true, 1) => "single-math-v1",
                    (true, _) => "single-math-v1-multi-turn",
                }
            );
            all.push(expected);
            [&mut first, &mut second][turn - 1].push(expected);
            by_category
                .entry(judgment["category"].as_str().unwrap().to_string())
                .or_default()
                .push(expected);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        close(&scores["average"], mean(&all), "average");
        close(&scores["first_turn"], mean(&first), "first turn");
        close(&scores["second_turn"], mean(&second), "second turn");
        for (category, values) in &by_category {
            close(&scores["categories"][category], mean(values), category);
        }
        assert!(
            scores["categories"].get("extraction").is_none(),
            "no valid rating"
        );
        assert_eq!(scores["invalid"], 2);
    }
    let state = server.state();
    assert!(
        state.ratings_asked >= 14 + 2 + 6,
        "{} requests",
        state.ratings_asked
    );
    drop(state);
    let markdown = std::fs::read_to_string(p.path().join("eval/report/report.md")).unwrap();
    assert!(
        markdown.contains("## MT-Bench") && markdown.contains("| first turn |"),
        "{markdown}"
    );
}

#[test]
fn mt_bench_inputs_fail_with_their_location() {
    let p = Project::new();
    let data = golden_dataset(&p, 1);
    let base = fixtures().join("mistral-tiny/base");
    for (questions, message) in [
        (
            r#"{"question_id": 111, "category": "math", "turns": ["2+2?", "3+3?"]}"#,
            "question.jsonl:1: question 111 (math) is judged against a reference answer per turn",
        ),
        (
            r#"{"question_id": 1, "category": "writing", "turns": []}"#,
            "question.jsonl:1: `turns` holds 0 turns",
        ),
        (
            r#"{"question_id": 1, "turns": ["a"]}"#,
            "question.jsonl:1: expected {question_id, category, turns, reference?}",
        ),
    ] {
        let file = p.write("question.jsonl", &format!("{questions}\n"));
        let mt_bench = format!(
            "mt_bench={{questions: {}, chat_template: mistral, judge: {{base_url: \"http://127.0.0.1:9/v1\", model: j}}}}",
            file.display()
        );
        let run = support::exec_evaluate(&p, (&base, &base, &data), &[&mt_bench], "eval");
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains(message), "{message}: {}", run.stderr);
    }
}
