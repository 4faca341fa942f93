//! `hub.fetch_model` and `hub.push` through the real binary against a Hub on loopback
//! (`hub_server`): fetch into an empty HF cache in the standard layout, fetch again offline
//! with no request, re-run only when the branch moves, clear 401/403/404 messages; push, check
//! the bytes and the commit the server received, skip unchanged files, survive a lost commit
//! answer without committing twice, and never show the token.

mod hub_server;
mod support;

use hub_server::HubServer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use support::{Project, Run, fixtures};

const TOKEN: &str = "hf_loopbackSECRETtoken123";
const REPO: &str = "mistral-community/tiny-mistral";

fn base_files() -> BTreeMap<String, Vec<u8>> {
    let mut files = support::files_in(&fixtures().join("mistral-tiny/base"));
    files.insert("README.md".into(), b"# tiny\n".to_vec());
    files.insert("training_args.bin".into(), vec![7; 64]);
    files
}

/// `flow ARGS` with the HF variables pointing at `hub` (or nowhere) and a cache in the project.
fn flow_hf(p: &Project, hub: Option<&HubServer>, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = p.command(args);
    for name in [
        "HF_ENDPOINT",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "HUGGINGFACE_HUB_CACHE",
    ] {
        cmd.env_remove(name);
    }
    cmd.env("HF_HOME", p.path().join("hf"));
    cmd.env(
        "HF_ENDPOINT",
        hub.map_or("http://127.0.0.1:9".to_string(), |h| h.url.clone()),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run flow").into()
}

fn repo_cache(p: &Project) -> PathBuf {
    p.path()
        .join("hf/hub/models--mistral-community--tiny-mistral")
}

fn fetch_workflow(p: &Project) {
    p.write(
        "fetch.yaml",
        &format!(
            "name: fetch\nnodes:\n  base:\n    uses: hub.fetch_model\n    with:\n      repo: {REPO}\n"
        ),
    );
}

fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    support::files_in(dir)
}

#[test]
fn fetch_fills_the_standard_cache_then_serves_offline_and_reruns_only_when_the_branch_moves() {
    let hub = HubServer::start(TOKEN);
    let sha = hub.state().add_repo(REPO, base_files());
    let p = Project::new();
    fetch_workflow(&p);

    flow_hf(&p, Some(&hub), &[], &["run", "fetch.yaml"]).expect_code(0);
    let fetched = read_tree(p.artifact_file("config.json").parent().unwrap());
    let mut expected = base_files();
    expected.remove("README.md");
    expected.remove("training_args.bin");
    assert_eq!(
        fetched, expected,
        "default allow-list: config, weights, tokenizer, generation config"
    );

    // The standard cache layout, as Python's huggingface_hub writes it.
    let cache = repo_cache(&p);
    assert_eq!(
        std::fs::read_to_string(cache.join("refs/main")).unwrap(),
        sha
    );
    assert!(
        !cache.join("refs").join(&sha).exists(),
        "no ref named after the sha"
    );
    let pointer = cache.join("snapshots").join(&sha).join("model.safetensors");
    let target = std::fs::read_link(&pointer).expect("snapshot entries are symlinks");
    assert!(target.starts_with("../../blobs"), "{target:?}");
    let weights = &expected["model.safetensors"];
    assert!(
        cache
            .join("blobs")
            .join(hub_server::sha256(weights))
            .is_file(),
        "LFS blob named by sha256"
    );
    assert!(
        cache
            .join("blobs")
            .join(hub_server::git_sha1(&expected["config.json"]))
            .is_file()
    );
    let model = flow_model::Model::load(&cache.join("snapshots").join(&sha), &flow_model::cpu());
    assert!(model.is_ok(), "the model core loads the snapshot");

    // Unchanged branch: cached, one cheap revision lookup and no download.
    let before = hub.state().count("GET /mistral-community");
    let again = flow_hf(&p, Some(&hub), &[], &["run", "fetch.yaml", "--json"]).expect_code(0);
    assert_eq!(
        again.json()["nodes"][0]["status"],
        "cached",
        "{}",
        again.stdout
    );
    assert_eq!(
        hub.state().count("GET /mistral-community"),
        before,
        "no file request"
    );

    // Offline: no request at all; a fresh store fetches from the HF cache alone.
    let requests = hub.state().requests.len();
    std::fs::remove_dir_all(p.store()).unwrap();
    flow_hf(
        &p,
        Some(&hub),
        &[("HF_HUB_OFFLINE", "1")],
        &["run", "fetch.yaml"],
    )
    .expect_code(0);
    assert_eq!(
        hub.state().requests.len(),
        requests,
        "offline makes no request"
    );
    assert_eq!(
        read_tree(p.artifact_file("model.safetensors").parent().unwrap()),
        expected
    );

    // The branch moves: the plan names the new commit and only changed files are downloaded.
    let mut files = base_files();
    files.insert("config.json".into(), {
        let mut c = expected["config.json"].clone();
        c.extend_from_slice(b"\n");
        c
    });
    let new_sha = hub.state().commit(REPO, "main", "touch config", files);
    let plan = flow_hf(&p, Some(&hub), &[], &["plan", "fetch.yaml"]).expect_code(0);
    assert!(
        plan.stdout.contains(&new_sha),
        "plan names the new commit: {}",
        plan.stdout
    );
    let resolves = |file: &str| {
        let state = hub.state();
        state
            .requests
            .iter()
            .filter(|r| r.contains("/resolve/") && r.ends_with(file))
            .count()
    };
    let (weights_before, config_before) = (resolves("model.safetensors"), resolves("config.json"));
    flow_hf(&p, Some(&hub), &[], &["run", "fetch.yaml"]).expect_code(0);
    assert!(
        resolves("config.json") > config_before,
        "the changed config.json is fetched"
    );
    assert_eq!(
        resolves("model.safetensors"),
        weights_before,
        "unchanged weights come from the cache"
    );
    assert_eq!(
        std::fs::read_to_string(repo_cache(&p).join("refs/main")).unwrap(),
        new_sha
    );
}

#[test]
fn a_push_landing_while_flow_runs_does_not_change_what_the_cache_key_says() {
    let hub = HubServer::start(TOKEN);
    let sha = hub.state().add_repo(REPO, base_files());
    let mut pushed = base_files();
    pushed.insert("config.json".into(), b"{\"pushed\": true}".to_vec());
    hub.state().push_after_lookup = Some((REPO.into(), "main".into(), pushed));
    let p = Project::new();
    fetch_workflow(&p);
    let run = flow_hf(&p, Some(&hub), &[], &["run", "fetch.yaml", "--json"]).expect_code(0);
    assert!(hub.state().push_after_lookup.is_none(), "the push landed");
    let config = std::fs::read(p.artifact_file("config.json")).unwrap();
    assert_eq!(
        config,
        base_files()["config.json"],
        "the commit the key names"
    );
    let log = p
        .path()
        .join(run.json()["nodes"][0]["log"].as_str().unwrap());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains(&format!("is commit {sha}")), "{log}");
    let plan = flow_hf(&p, Some(&hub), &[], &["plan", "fetch.yaml"]).expect_code(0);
    assert!(
        plan.stdout.contains(" run "),
        "the moved branch re-runs: {}",
        plan.stdout
    );
}

#[test]
fn fetch_errors_say_missing_private_gated_or_not_cached() {
    let hub = HubServer::start(TOKEN);
    {
        let mut state = hub.state();
        state.add_repo("org/private-model", base_files());
        state.repos.get_mut("org/private-model").unwrap().private = true;
        state.add_repo("org/gated-model", base_files());
        state.repos.get_mut("org/gated-model").unwrap().gated = true;
    }
    let p = Project::new();
    let fetch = |repo: &str, env: &[(&str, &str)]| {
        let out = format!("out-{}", repo.replace(['/', ' ', '!'], "-"));
        flow_hf(
            &p,
            Some(&hub),
            env,
            &[
                "exec",
                "hub.fetch_model",
                "--with",
                &format!("repo={repo}"),
                "--out",
                &out,
            ],
        )
    };
    let missing = fetch("org/no-such-model", &[]).expect_code(1);
    assert!(
        missing.stderr.contains("org/no-such-model not found"),
        "{}",
        missing.stderr
    );
    let private = fetch("org/private-model", &[]).expect_code(1);
    assert!(
        private.stderr.contains("private") && private.stderr.contains("HF_TOKEN"),
        "{}",
        private.stderr
    );
    let gated = fetch("org/gated-model", &[]).expect_code(1);
    assert!(gated.stderr.contains("gated"), "{}", gated.stderr);
    fetch("org/private-model", &[("HF_TOKEN", TOKEN)]).expect_code(0);
    assert!(
        p.path()
            .join("out-org-private-model/model/model.safetensors")
            .is_file()
    );

    let offline = fetch("org/gated-model", &[("HF_HUB_OFFLINE", "1")]).expect_code(1);
    assert!(
        offline.stderr.contains("HF_HUB_OFFLINE") && offline.stderr.contains("refs/main"),
        "{}",
        offline.stderr
    );
    let bad = fetch("not a repo!", &[]).expect_code(2);
    assert!(bad.stderr.contains("repo"), "{}", bad.stderr);
    for run in [&missing, &private, &gated] {
        assert!(!run.stderr.contains(TOKEN));
    }
}

fn push_workflow(p: &Project, model: &Path, target: &str) {
    p.write(
        "push.yaml",
        &format!(
            "name: push\nnodes:\n  publish:\n    uses: hub.push\n    with:\n      model: {}\n      repo: me/tiny-dpo\n      target: {target}\n      token: ${{secret.HF_TOKEN}}\n      base_model: mistralai/Mistral-7B-v0.1\n      datasets: [mayflowergmbh/intel_orca_dpo_pairs_de]\n      language: [de]\n      license: apache-2.0\n",
            model.display()
        ),
    );
}

fn model_copy(p: &Project, name: &str) -> PathBuf {
    let dir = p.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, content) in base_files() {
        if file != "README.md" {
            std::fs::write(dir.join(file), content).unwrap();
        }
    }
    dir
}

fn store_contains(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
            {
                hits.push(path);
            }
        }
    }
    hits
}

#[test]
fn push_commits_the_files_and_card_skips_unchanged_and_never_commits_twice() {
    let hub = HubServer::start(TOKEN);
    let p = Project::new();
    let model = model_copy(&p, "model");
    push_workflow(&p, &model, "hub");
    let secret = [("HF_TOKEN", TOKEN)];

    let first = flow_hf(&p, Some(&hub), &secret, &["run", "push.yaml"]).expect_code(0);
    let state = hub.state();
    let repo = state.repos.get("me/tiny-dpo").expect("repo created");
    assert_eq!(repo.commits.len(), 2, "initial commit and ours");
    let head = repo.head("main").unwrap().clone();
    let mut expected = base_files();
    expected.remove("README.md");
    for (path, content) in &expected {
        assert_eq!(
            head.files.get(path),
            Some(content),
            "{path} bytes on the Hub"
        );
    }
    let card = String::from_utf8(head.files["README.md"].clone()).unwrap();
    for line in [
        "base_model: \"mistralai/Mistral-7B-v0.1\"",
        "- \"mayflowergmbh/intel_orca_dpo_pairs_de\"",
        "- \"de\"",
        "license: \"apache-2.0\"",
        "library_name: transformers",
        "- \"dpo\"",
        "- \"flow\"",
        "## Workflow",
    ] {
        assert!(card.contains(line), "card lacks {line}:\n{card}");
    }
    // tokenizer.json in one PUT; model.safetensors (503 kB) in 100 kB parts, then completed.
    assert_eq!(state.count("PUT /lfs/"), 1 + 6, "LFS uploads");
    assert_eq!(
        state.count("POST /lfs/"),
        1 + 2,
        "one multipart completion, two verifies"
    );
    assert!(
        state
            .lfs
            .contains_key(&hub_server::sha256(&expected["model.safetensors"]))
    );
    assert!(
        state
            .authorizations
            .iter()
            .any(|a| a == &format!("Bearer {TOKEN}"))
    );
    drop(state);
    let commit = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(p.artifact_file("commit.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(commit["commit_oid"], head.oid);

    // Same content again: every file is unchanged, nothing uploaded, no new commit.
    flow_hf(
        &p,
        Some(&hub),
        &secret,
        &["run", "push.yaml", "--force", "publish"],
    )
    .expect_code(0);
    assert_eq!(hub.state().commit_count("me/tiny-dpo"), 2);
    assert_eq!(hub.state().count("PUT /lfs/"), 7);
    assert_eq!(hub.state().count("POST /api/models/me/tiny-dpo/commit"), 1);

    // A changed file and a commit whose answer is lost (500 after applying): exactly one commit.
    std::fs::write(
        model.join("generation_config.json"),
        b"{\"max_new_tokens\": 8}\n",
    )
    .unwrap();
    hub.state().fail_commits_after_applying = 1;
    let retried = flow_hf(&p, Some(&hub), &secret, &["run", "push.yaml"]).expect_code(0);
    assert_eq!(
        hub.state().commit_count("me/tiny-dpo"),
        3,
        "one new commit despite the retry"
    );
    assert_eq!(
        hub.state().count("POST /api/models/me/tiny-dpo/commit"),
        2,
        "the commit was not sent again"
    );
    let log = std::fs::read_to_string(
        store_contains(&p.store().join("runs"), "the commit landed")
            .first()
            .expect("the log says why"),
    )
    .unwrap();
    assert!(log.contains("not sending it again"), "{log}");

    for run in [&first, &retried] {
        assert!(!run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN));
    }
    assert!(
        store_contains(&p.store(), TOKEN).is_empty(),
        "the token is nowhere in the store"
    );
}

#[test]
fn push_to_dir_writes_exactly_the_files_with_no_network() {
    let p = Project::new();
    let model = model_copy(&p, "model");
    push_workflow(&p, &model, "dir");
    let run = flow_hf(&p, None, &[("HF_TOKEN", TOKEN)], &["run", "push.yaml"]).expect_code(0);
    let card = p.artifact_file("README.md");
    let files = read_tree(card.parent().unwrap());
    let mut expected = base_files();
    expected.remove("README.md");
    for (path, content) in &expected {
        assert_eq!(files.get(path), Some(content), "{path}");
    }
    assert_eq!(
        files.len(),
        expected.len() + 1,
        "the model files and README.md, nothing else"
    );
    assert!(!run.stderr.contains(TOKEN));

    // Unknown target and a bad repo id fail validation with their location.
    let bad = p.write(
        "bad.yaml",
        "name: bad\nnodes:\n  publish:\n    uses: hub.push\n    with:\n      model: m\n      repo: a/b/c\n      target: s3\n",
    );
    let run = flow_hf(&p, None, &[], &["validate", bad.to_str().unwrap()]).expect_code(2);
    assert!(
        run.stderr.contains("target") || run.stderr.contains("repo"),
        "{}",
        run.stderr
    );
}

fn orca_rows(split: &str, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({
                    "system": "Du bist ein hilfreicher Assistent.",
                    "question": format!("{split} Frage {i}?"),
                    "chosen": format!("Eine gute Antwort {i}."),
                    "rejected": format!("Schlecht {i}."),
                })
            )
        })
        .collect::<String>()
        .into_bytes()
}

#[test]
fn dataset_load_reads_a_hub_dataset_split_through_the_cache_and_records_its_commit() {
    let hub = HubServer::start(TOKEN);
    let sha = hub.state().add_repo(
        "datasets/Intel/orca_dpo_pairs",
        BTreeMap::from([
            ("README.md".to_string(), b"# orca".to_vec()),
            ("data/train.jsonl".to_string(), orca_rows("train", 5)),
            ("data/test.jsonl".to_string(), orca_rows("test", 2)),
        ]),
    );
    let p = Project::new();
    p.write(
        "load.yaml",
        "name: load\nnodes:\n  orca:\n    uses: dataset.load\n    with:\n      repo: Intel/orca_dpo_pairs\n      columns: intel_orca\n",
    );
    flow_hf(&p, Some(&hub), &[], &["run", "load.yaml"]).expect_code(0);
    let rows = support::jsonl(&p.artifact_file("data.jsonl"));
    assert_eq!(rows.len(), 5, "the train split only");
    assert_eq!(rows[0]["prompt"], "train Frage 0?");
    assert_eq!(rows[0]["system"], "Du bist ein hilfreicher Assistent.");
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.artifact_file("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["source"]["sha"], sha.as_str());
    assert_eq!(
        stats["source"]["files"],
        serde_json::json!(["data/train.jsonl"])
    );
    let cache = p.path().join("hf/hub/datasets--Intel--orca_dpo_pairs");
    assert_eq!(
        std::fs::read_to_string(cache.join("refs/main")).unwrap(),
        sha
    );

    // Offline, from the cache alone, in a fresh store.
    std::fs::remove_dir_all(p.store()).unwrap();
    let requests = hub.state().requests.len();
    flow_hf(
        &p,
        Some(&hub),
        &[("HF_HUB_OFFLINE", "1")],
        &["run", "load.yaml"],
    )
    .expect_code(0);
    assert_eq!(hub.state().requests.len(), requests);

    // The test split, and a split that does not exist.
    let test = flow_hf(
        &p,
        Some(&hub),
        &[],
        &[
            "exec",
            "dataset.load",
            "--with",
            "repo=Intel/orca_dpo_pairs",
            "--with",
            "columns=intel_orca",
            "--with",
            "split=test",
            "--out",
            "t",
        ],
    )
    .expect_code(0);
    assert!(
        test.stderr.is_empty() || !test.stderr.contains("error"),
        "{}",
        test.stderr
    );
    assert_eq!(
        support::jsonl(&p.path().join("t/dataset/data.jsonl")).len(),
        2
    );
    let none = flow_hf(
        &p,
        Some(&hub),
        &[],
        &[
            "exec",
            "dataset.load",
            "--with",
            "repo=Intel/orca_dpo_pairs",
            "--with",
            "split=validation",
            "--out",
            "v",
        ],
    )
    .expect_code(1);
    assert!(
        none.stderr.contains("no file of commit") && none.stderr.contains("data/train.jsonl"),
        "{}",
        none.stderr
    );
    let both = flow_hf(
        &p,
        None,
        &[],
        &[
            "exec",
            "dataset.load",
            "--with",
            "repo=Intel/orca_dpo_pairs",
            "--with",
            "path=x.jsonl",
            "--out",
            "b",
        ],
    )
    .expect_code(2);
    assert!(both.stderr.contains("not both"), "{}", both.stderr);
}

#[test]
fn push_publishes_a_preference_dataset_as_a_dataset_repository() {
    let hub = HubServer::start(TOKEN);
    let p = Project::new();
    let data = p.path().join("pairs");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("data.jsonl"), orca_rows("train", 3)).unwrap();
    p.write(
        "push.yaml",
        &format!(
            "name: push-data\nnodes:\n  publish:\n    uses: hub.push\n    with:\n      dataset: {}\n      repo: me/orca-de\n      token: ${{secret.HF_TOKEN}}\n      datasets: [Intel/orca_dpo_pairs]\n      language: [de]\n      license: apache-2.0\n",
            data.display()
        ),
    );
    flow_hf(
        &p,
        Some(&hub),
        &[("HF_TOKEN", TOKEN)],
        &["run", "push.yaml"],
    )
    .expect_code(0);
    let state = hub.state();
    let repo = state
        .repos
        .get("datasets/me/orca-de")
        .expect("a dataset repository");
    let head = repo.head("main").unwrap();
    assert_eq!(head.files["data/train.jsonl"], orca_rows("train", 3));
    let card = String::from_utf8(head.files["README.md"].clone()).unwrap();
    for line in [
        "task_categories:",
        "- \"Intel/orca_dpo_pairs\"",
        "path: data/train.jsonl",
        "3 rows",
    ] {
        assert!(card.contains(line), "card lacks {line}:\n{card}");
    }
    assert!(!card.contains("library_name"), "{card}");
}

/// The bytes hf-hub has committed in a partial download: the `.sync.part` file's 8-byte trailer.
fn committed_bytes(cache: &Path, size: usize) -> Option<u64> {
    let blobs = cache.join("blobs");
    let part = std::fs::read_dir(blobs)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".sync.part"))?;
    let bytes = std::fs::read(part).ok()?;
    (bytes.len() == size + 8).then(|| u64::from_le_bytes(bytes[size..].try_into().unwrap()))
}

#[test]
fn an_interrupted_download_resumes_after_its_last_complete_chunk() {
    let weights = base_files()["model.safetensors"].clone();
    // hf-hub starts the chunks of a file in no fixed order; retry until one ran before the failure.
    for _ in 0..5 {
        let hub = HubServer::start(TOKEN);
        hub.state().add_repo(REPO, base_files());
        hub.state().fail_range_from = Some(200_000);
        let p = Project::new();
        let fetch = |out: &str| {
            let repo = format!("repo={REPO}");
            flow_hf(
                &p,
                Some(&hub),
                &[],
                &[
                    "exec",
                    "hub.fetch_model",
                    "--with",
                    &repo,
                    "--with",
                    "chunk_mb=0.1",
                    "--out",
                    out,
                ],
            )
        };
        let failed = fetch("first").expect_code(1);
        assert!(
            failed.stderr.contains("model.safetensors"),
            "{}",
            failed.stderr
        );
        let committed =
            committed_bytes(&repo_cache(&p), weights.len()).expect("a partial download is kept");
        if committed == 0 {
            continue;
        }
        hub.state().ranges.clear();
        fetch("second").expect_code(0);
        let starts: Vec<u64> = hub
            .state()
            .ranges
            .iter()
            .filter(|r| r.contains("model.safetensors") && !r.ends_with("bytes=0-0"))
            .filter_map(|r| r.rsplit('=').next()?.split('-').next()?.parse().ok())
            .collect();
        assert!(
            !starts.is_empty() && starts.iter().all(|&s| s >= committed),
            "resumed at {committed}: {starts:?}"
        );
        assert_eq!(starts.iter().min(), Some(&committed));
        let fetched = std::fs::read(p.path().join("second/model/model.safetensors")).unwrap();
        assert_eq!(fetched, weights);
        return;
    }
    panic!("no attempt completed a chunk before the injected failure");
}
