//! The shared store (`--remote`) through the real binary: one store runs and publishes, a fresh
//! one with the same remote plans everything as cached and runs nothing. Against a `file://`
//! remote always, and against S3 (SeaweedFS from `scripts/test-cluster.sh start`) when
//! `FLOW_TEST_S3=1`.

mod support;

use std::io::Write;
use support::{Project, SUM_WORKFLOW, actions, node_field};

/// Every artifact file's content, by file name, sorted.
fn outputs(p: &Project) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = p
        .artifact_files()
        .into_iter()
        .map(|(path, bytes)| {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            (name, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Store A runs and publishes; store B, empty, finds everything in the remote.
fn shares_results_through(remote: &str) {
    let a = Project::new();
    a.write("w.yaml", SUM_WORKFLOW);
    let first = a
        .flow(&["run", "w.yaml", "--remote", remote, "--json"])
        .expect_code(0)
        .json();
    assert!(
        node_field(&first, "status")
            .iter()
            .all(|s| s == "succeeded")
    );

    let b = Project::new();
    b.write("w.yaml", SUM_WORKFLOW);
    let plan = b
        .command(&["plan", "w.yaml", "--json"])
        .env("FLOW_REMOTE", remote)
        .output()
        .unwrap();
    let plan: support::Run = plan.into();
    let plan = plan.expect_code(0).json();
    let ids = node_field(&first, "id");
    let all_cached: Vec<(String, String)> =
        ids.iter().map(|id| (id.clone(), "cached".into())).collect();
    assert_eq!(actions(&plan), all_cached);
    for reasons in plan["nodes"].as_array().unwrap() {
        let reason = reasons["reasons"][0].as_str().unwrap();
        assert_eq!(reason, format!("in the remote store {remote}"));
    }
    let table = b
        .flow(&["plan", "w.yaml", "--remote", remote])
        .expect_code(0);
    assert!(
        table
            .stdout
            .lines()
            .all(|l| l.contains("cached") && l.ends_with(&format!("in the remote store {remote}"))),
        "{}",
        table.stdout
    );
    assert!(!b.store().join("artifacts").exists() || outputs(&b).is_empty());

    let second = b
        .flow(&["run", "w.yaml", "--remote", remote, "--json"])
        .expect_code(0)
        .json();
    assert!(node_field(&second, "status").iter().all(|s| s == "cached"));
    assert_eq!(node_field(&second, "id"), ids);
    for (x, y) in first["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(second["nodes"].as_array().unwrap())
    {
        assert_eq!(x["outputs"], y["outputs"]);
    }
    assert_eq!(outputs(&a), outputs(&b));
    // And B's own store now has it all: without the remote, still cached.
    let local = b.flow(&["plan", "w.yaml", "--json"]).expect_code(0).json();
    assert_eq!(actions(&local), all_cached);
}

#[test]
fn a_fresh_store_takes_everything_from_a_file_remote() {
    let shared = tempfile::tempdir().unwrap();
    let remote = format!("file://{}", shared.path().join("remote").display());
    shares_results_through(&remote);
    assert!(shared.path().join("remote/cache").is_dir());
    assert!(shared.path().join("remote/blobs").is_dir());
}

#[test]
fn a_bad_remote_is_bad_input_before_anything_runs() {
    let p = Project::new();
    p.write("w.yaml", SUM_WORKFLOW);
    for bad in ["gs://bucket/x", "file://relative", "s3://"] {
        for command in ["run", "plan"] {
            let run = p.flow(&[command, "w.yaml", "--remote", bad]).expect_code(2);
            assert!(
                run.stderr.contains("--remote") && run.stderr.contains(bad),
                "{}",
                run.stderr
            );
        }
    }
    assert!(!p.store().join("runs").exists());
}

#[test]
fn a_fresh_store_takes_everything_from_s3() {
    if std::env::var_os("FLOW_TEST_S3").is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: FLOW_TEST_S3 is unset (scripts/test-cluster.sh start; source /tmp/flow-test-cluster/env)"
        );
        return;
    }
    let bucket = std::env::var("FLOW_TEST_S3_BUCKET").unwrap_or_else(|_| "flow".into());
    let prefix = format!(
        "remote-store-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    shares_results_through(&format!("s3://{bucket}/{prefix}"));
}
