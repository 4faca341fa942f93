//! `dataset.translate` through the real binary against a text service on loopback
//! (`llm_server`): faults (429 with Retry-After, 500, malformed JSON, timeouts) are retried and
//! every text is paid for once; a run killed with SIGKILL resumes without sending any text whose
//! answer it had stored; a refused key, an unreachable endpoint and a refused row fail clearly
//! (or drop the row with `on_error: drop`); DeepL's API works the same way.

mod llm_server;
mod support;

use llm_server::{Fault, LlmServer};
use std::collections::BTreeSet;
use std::time::Duration;
use support::{Project, Run, jsonl, signal, wait_until};

const KEY: &str = "sk-loopback-KEY-42";

/// A dataset of `n` pairs with distinct texts and a shared system prompt.
fn source(p: &Project, n: usize) {
    let rows: String = (0..n)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({
                    "system": "You are a helpful assistant.",
                    "prompt": format!("Question number {i}?"),
                    "chosen": format!("A helpful answer {i}."),
                    "rejected": format!("A poor answer {i}."),
                })
            )
        })
        .collect();
    p.write("pairs.jsonl", &rows);
}

fn workflow(p: &Project, url: &str, extra: &str) {
    p.write(
        "translate.yaml",
        &format!(
            "name: translate\nnodes:\n  pairs:\n    uses: dataset.load\n    with:\n      path: pairs.jsonl\n  german:\n    uses: dataset.translate\n    with:\n      dataset: ${{pairs.dataset}}\n      target_language: German\n      base_url: {url}\n      model: test-model\n      api_key: ${{secret.LLM_KEY}}\n      retry_backoff_seconds: 0.05\n{extra}"
        ),
    );
}

fn run(p: &Project, key: &str) -> Run {
    p.command(&["run", "translate.yaml"])
        .env("LLM_KEY", key)
        .output()
        .expect("run flow")
        .into()
}

fn translated_rows(p: &Project) -> Vec<serde_json::Value> {
    let data = p
        .artifact_files()
        .into_iter()
        .map(|(path, _)| path)
        .filter(|path| path.ends_with("data.jsonl"))
        .find(|path| {
            jsonl(path)
                .first()
                .is_some_and(|r| r["prompt"].as_str().unwrap_or_default().starts_with('['))
        })
        .expect("translated data.jsonl");
    jsonl(&data)
}

#[test]
fn faults_are_retried_and_every_text_is_paid_for_once() {
    let server = LlmServer::start(KEY);
    server.state().faults = [
        Fault::TooMany(0.2),
        Fault::ServerError,
        Fault::Malformed,
        Fault::Slow(Duration::from_millis(1500)),
        Fault::ServerError,
    ]
    .into();
    let p = Project::new();
    source(&p, 6);
    workflow(
        &p,
        &format!("{}/v1", server.url),
        "      concurrency: 3\n      timeout_seconds: 0.5\n",
    );
    let done = run(&p, KEY).expect_code(0);

    let rows = translated_rows(&p);
    assert_eq!(rows.len(), 6);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            row["prompt"],
            format!("[de] Question number {i}?"),
            "order kept"
        );
        assert_eq!(row["chosen"], format!("[de] A helpful answer {i}."));
        assert_eq!(row["rejected"], format!("[de] A poor answer {i}."));
        assert_eq!(row["system"], "[de] You are a helpful assistant.");
    }
    let state = server.state();
    assert_eq!(
        state.answered.len(),
        1 + 6 * 3,
        "every distinct text answered"
    );
    assert!(
        state.answered.values().all(|&n| n == 1),
        "no text paid twice: {:?}",
        state.answered
    );
    assert_eq!(
        state.requests,
        19 + 5,
        "one request per text plus one per injected fault"
    );
    assert!(state.faults.is_empty());
    drop(state);
    assert!(!done.stderr.contains(KEY) && !done.stdout.contains(KEY));

    // A second run with another concurrency re-runs the node but sends nothing: the cache answers.
    workflow(&p, &format!("{}/v1", server.url), "      concurrency: 1\n");
    run(&p, KEY).expect_code(0);
    assert_eq!(server.state().requests, 24, "no request on the re-run");
}

#[test]
fn a_killed_run_resumes_without_resending_any_stored_text() {
    let server = LlmServer::start(KEY);
    server.state().delay = Duration::from_millis(100);
    let p = Project::new();
    source(&p, 12);
    workflow(
        &p,
        &format!("{}/v1", server.url),
        "      fields: [prompt, chosen]\n      concurrency: 1\n",
    );

    let child = p
        .command(&["run", "translate.yaml"])
        .env("LLM_KEY", KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    wait_until(Duration::from_secs(60), "eight answers", || {
        server.state().answered.values().sum::<usize>() >= 8
    });
    signal(&child, libc::SIGKILL);
    let _ = child.wait_with_output();

    let cache = p
        .store()
        .join("node-cache/dataset.translate/translations.jsonl");
    let stored: BTreeSet<String> = std::fs::read_to_string(&cache)
        .expect("the cache survives the kill")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            v["text"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("[de] ")
                .to_string()
        })
        .collect();
    assert!(
        stored.len() >= 7,
        "answers stored before the kill: {}",
        stored.len()
    );
    let before: BTreeSet<String> = server.state().answered.keys().cloned().collect();

    run(&p, KEY).expect_code(0);
    let state = server.state();
    for text in &stored {
        assert_eq!(state.answered[text], 1, "{text} was stored, yet sent again");
    }
    assert_eq!(state.answered.len(), 24, "every text answered");
    let resent: Vec<&String> = state
        .answered
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, _)| t)
        .collect();
    assert!(
        resent.len() <= 1
            && resent
                .iter()
                .all(|t| before.contains(*t) && !stored.contains(*t)),
        "only the request in flight at the kill may be sent again: {resent:?}"
    );
    drop(state);
    assert_eq!(translated_rows(&p).len(), 12);
}

#[test]
fn refused_key_unreachable_endpoint_and_refused_rows_fail_clearly() {
    let server = LlmServer::start(KEY);
    let p = Project::new();
    source(&p, 3);
    workflow(&p, &format!("{}/v1", server.url), "");
    let refused = run(&p, "sk-wrong-key").expect_code(1);
    assert!(
        refused.stderr.contains("refused the API key (401)"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains("sk-wrong-key"),
        "the key is masked"
    );
    assert!(
        !p.artifact_files()
            .iter()
            .any(|(path, bytes)| path.ends_with("data.jsonl")
                && bytes.starts_with(b"{\"id\"")
                && String::from_utf8_lossy(bytes).contains("[de]"))
    );

    workflow(&p, "http://127.0.0.1:9/v1", "");
    let unreachable = run(&p, KEY).expect_code(1);
    assert!(
        unreachable
            .stderr
            .contains("cannot reach http://127.0.0.1:9/v1"),
        "{}",
        unreachable.stderr
    );

    server.state().refuse_containing = Some("answer 1.".into());
    workflow(&p, &format!("{}/v1", server.url), "");
    let failed = run(&p, KEY).expect_code(1);
    assert!(
        failed.stderr.contains("field chosen") && failed.stderr.contains("HTTP 400"),
        "{}",
        failed.stderr
    );
    workflow(&p, &format!("{}/v1", server.url), "      on_error: drop\n");
    run(&p, KEY).expect_code(0);
    assert_eq!(translated_rows(&p).len(), 2);
    let stats = p
        .artifact_files()
        .into_iter()
        .filter(|(path, _)| path.ends_with("stats.json"))
        .map(|(_, bytes)| serde_json::from_slice::<serde_json::Value>(&bytes).unwrap())
        .find(|s| s["dropped"]["translation_failed"] == 1);
    assert!(stats.is_some(), "stats.json counts the dropped row");

    let bad = p.write(
        "bad.yaml",
        "name: bad\nnodes:\n  t:\n    uses: dataset.translate\n    with:\n      dataset: x\n      target_language: German\n      base_url: ftp://x\n",
    );
    let invalid = p.flow(&["validate", bad.to_str().unwrap()]).expect_code(2);
    assert!(
        invalid.stderr.contains("model") || invalid.stderr.contains("base_url"),
        "{}",
        invalid.stderr
    );
}

#[test]
fn deepl_translates_with_its_own_protocol() {
    let server = LlmServer::start(KEY);
    let p = Project::new();
    source(&p, 2);
    p.write(
        "translate.yaml",
        &format!(
            "name: translate\nnodes:\n  pairs:\n    uses: dataset.load\n    with:\n      path: pairs.jsonl\n  german:\n    uses: dataset.translate\n    with:\n      dataset: ${{pairs.dataset}}\n      provider: deepl\n      target_language: DE\n      base_url: {}\n      api_key: ${{secret.LLM_KEY}}\n",
            server.url
        ),
    );
    run(&p, KEY).expect_code(0);
    let rows: Vec<serde_json::Value> = p
        .artifact_files()
        .into_iter()
        .filter(|(path, bytes)| {
            path.ends_with("data.jsonl") && String::from_utf8_lossy(bytes).contains("[DE]")
        })
        .flat_map(|(path, _)| jsonl(&path))
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["chosen"], "[DE] A helpful answer 1.");
    assert!(
        server
            .state()
            .authorizations
            .iter()
            .all(|a| a == &format!("DeepL-Auth-Key {KEY}"))
    );
}
