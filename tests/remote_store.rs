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

/// A fresh `s3://` remote in the test S3 server, or `None` (said on stderr) without one.
fn s3_remote(name: &str) -> Option<String> {
    if std::env::var_os("FLOW_TEST_S3").is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: FLOW_TEST_S3 is unset (scripts/test-cluster.sh start; source /tmp/flow-test-cluster/env)"
        );
        return None;
    }
    let bucket = std::env::var("FLOW_TEST_S3_BUCKET").unwrap_or_else(|_| "flow".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Some(format!(
        "s3://{bucket}/{name}-{}-{nanos}",
        std::process::id()
    ))
}

#[test]
fn a_fresh_store_takes_everything_from_s3() {
    if let Some(remote) = s3_remote("remote-store-test") {
        shares_results_through(&remote);
    }
}

/// A slow node whose output is different on every run (and that counts its runs in `counter`),
/// and a node reading it.
fn racing_workflow(counter: &std::path::Path) -> String {
    format!(
        "name: race\nnodes:\n  slow:\n    uses: shell\n    with:\n      run: \"echo run >> {c}; sleep 4; date +%s%N > $FLOW_OUT/value.txt\"\n  read:\n    uses: shell\n    with:\n      inputs: {{ value: \"${{slow.out}}\" }}\n      run: \"cat $FLOW_IN_VALUE/value.txt > $FLOW_OUT/copy.txt\"\n",
        c = counter.display()
    )
}

/// Two `flow run`s at once on two stores sharing `remote`: the slow node runs once (the other
/// run waits on its lease and takes the result), and both stores end with the same outputs.
fn two_runs_at_once_build_each_key_once(remote: &str) {
    let shared = tempfile::tempdir().unwrap();
    let counter = shared.path().join("runs.txt");
    let (a, b) = (Project::new(), Project::new());
    for p in [&a, &b] {
        p.write("w.yaml", &racing_workflow(&counter));
    }
    let args = ["run", "w.yaml", "--remote", remote];
    let (first, second) = (a.spawn(&args), b.spawn(&args));
    let runs: Vec<support::Run> = [first, second]
        .into_iter()
        .map(|child| child.wait_with_output().unwrap().into())
        .collect();
    assert!(
        runs.iter()
            .any(|r| r.stderr.contains("⧗ slow: waiting for")
                && r.stderr.contains("holds the lease")),
        "{:?}",
        runs.iter().map(|r| &r.stderr).collect::<Vec<_>>()
    );
    for run in runs {
        run.expect_code(0);
    }
    let records: Vec<serde_json::Value> = [&a, &b]
        .iter()
        .map(|p| p.flow(&["show", "last", "--json"]).expect_code(0).json())
        .collect();
    let runs_of_slow = std::fs::read_to_string(&counter).unwrap();
    assert_eq!(
        runs_of_slow.lines().count(),
        1,
        "the slow node ran more than once"
    );
    let mut statuses: Vec<String> = records
        .iter()
        .map(|r| node_field(r, "status")[0].clone())
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["cached", "succeeded"], "{records:?}");
    let waited = records
        .iter()
        .find(|r| node_field(r, "status")[0] == "cached")
        .unwrap();
    assert_eq!(node_field(waited, "status")[1], "cached", "{waited}");
    assert_eq!(outputs(&a), outputs(&b));
}

#[test]
fn two_runs_at_once_on_a_file_remote_build_each_key_once() {
    let shared = tempfile::tempdir().unwrap();
    let remote = format!("file://{}", shared.path().join("remote").display());
    two_runs_at_once_build_each_key_once(&remote);
    let entries = std::fs::read_dir(shared.path().join("remote/cache"))
        .unwrap()
        .count();
    assert_eq!(entries, 2, "one cache entry per key");
    assert!(
        std::fs::read_dir(shared.path().join("remote/leases")).map_or(true, |d| d
            .flatten()
            .all(|e| std::fs::read_dir(e.path()).unwrap().next().is_none())),
        "leases are released"
    );
}

#[test]
fn two_runs_at_once_on_s3_build_each_key_once() {
    if let Some(remote) = s3_remote("race-test") {
        two_runs_at_once_build_each_key_once(&remote);
    }
}

#[test]
fn a_corrupted_remote_blob_is_an_error_naming_it_and_nothing_is_cached() {
    let shared = tempfile::tempdir().unwrap();
    let root = shared.path().join("remote");
    let remote = format!("file://{}", root.display());
    let a = Project::new();
    a.write("w.yaml", SUM_WORKFLOW);
    a.flow(&["run", "w.yaml", "--remote", &remote])
        .expect_code(0);
    let blobs: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("blobs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    for blob in &blobs {
        let mut bytes = std::fs::read(blob).unwrap();
        bytes.push(b'!');
        std::fs::write(blob, bytes).unwrap();
    }
    let b = Project::new();
    b.write("w.yaml", SUM_WORKFLOW);
    let run = b
        .flow(&["run", "w.yaml", "--remote", &remote, "--json"])
        .expect_code(1);
    let record = run.json();
    let first = &record["nodes"][0];
    assert_eq!(first["status"], "failed", "{record}");
    let error = first["error"].as_str().unwrap();
    assert!(
        error.contains("corrupted") && error.contains("blobs/"),
        "{error}"
    );
    assert!(
        blobs
            .iter()
            .any(|b| error.contains(&b.file_name().unwrap().to_string_lossy().to_string())),
        "{error}"
    );
    assert!(
        b.artifact_files().is_empty(),
        "nothing corrupted reached the store"
    );
}

/// The name of a blob a crashed publish left behind.
const ORPHAN: &str = "feedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedface";

/// `flow gc --remote URL ARGS…` in `p`: its one-line report.
fn gc_remote(p: &Project, remote: &str, args: &[&str]) -> String {
    let mut all = vec!["gc", "--remote", remote];
    all.extend_from_slice(args);
    p.flow(&all).expect_code(0).stdout
}

/// The nodes' plan actions of `SUM_WORKFLOW` (with `args`) on a fresh store with `remote`.
fn fresh_plan(remote: &str, args: &[&str]) -> Vec<String> {
    let p = Project::new();
    p.write("w.yaml", SUM_WORKFLOW);
    let mut all = vec!["plan", "w.yaml", "--remote", remote, "--json"];
    all.extend_from_slice(args);
    node_field(&p.flow(&all).expect_code(0).json(), "action")
}

#[test]
fn gc_of_a_remote_deletes_only_old_objects_no_run_record_references() {
    let shared = tempfile::tempdir().unwrap();
    let root = shared.path().join("remote");
    let remote = format!("file://{}", root.display());
    let (a, b, c) = (Project::new(), Project::new(), Project::new());
    for p in [&a, &b] {
        p.write("w.yaml", SUM_WORKFLOW);
    }
    a.flow(&["run", "w.yaml", "--remote", &remote])
        .expect_code(0);
    b.flow(&["run", "w.yaml", "--remote", &remote, "--set", "n=4"])
        .expect_code(0);
    // B's record leaves the shared store (B's local store keeps its own), and a publish that
    // died after one blob left an orphan.
    let runs: Vec<_> = std::fs::read_dir(root.join("runs"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(runs.len(), 2);
    let b_run = b.flow(&["show", "last", "--json"]).expect_code(0).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(root.join("runs").join(format!("{b_run}.json"))).unwrap();
    std::fs::write(root.join("blobs").join(ORPHAN), "half a publish").unwrap();

    let young = gc_remote(&c, &remote, &[]);
    assert!(
        young.contains("removed from") && young.contains(": 0 cache entries, 0 artifacts, 0 blobs"),
        "{young}"
    );
    assert!(young.contains("younger than 1day"), "{young}");
    // From B's project its own records still count.
    let from_b = gc_remote(&b, &remote, &["--grace", "0s", "--dry-run"]);
    assert!(
        from_b.contains("would remove") && from_b.contains("0 cache entries, 0 artifacts, 1 blobs"),
        "{from_b}"
    );
    let dry = gc_remote(&c, &remote, &["--grace", "0s", "--dry-run"]);
    assert!(
        dry.contains("2 cache entries, 2 artifacts, 3 blobs"),
        "{dry}"
    );
    assert_eq!(
        fresh_plan(&remote, &["--set", "n=4"]),
        ["cached", "cached", "cached"]
    );
    let done = gc_remote(&c, &remote, &["--grace", "0s"]);
    assert!(
        done.contains("removed from") && done.contains("2 cache entries, 2 artifacts, 3 blobs"),
        "{done}"
    );
    assert_eq!(fresh_plan(&remote, &[]), ["cached", "cached", "cached"]);
    // `label` does not read `n`: A's record still references it.
    assert_eq!(
        fresh_plan(&remote, &["--set", "n=4"]),
        ["run", "cached", "run"]
    );
    assert!(!root.join("blobs").join(ORPHAN).exists());
    let bad = c
        .flow(&["gc", "--remote", &remote, "--grace", "soon"])
        .expect_code(2);
    assert!(
        bad.stderr.contains("--grace") && bad.stderr.contains("soon"),
        "{}",
        bad.stderr
    );
}

#[test]
fn gc_of_an_s3_remote_keeps_what_its_run_records_reference() {
    let Some(remote) = s3_remote("gc-test") else {
        return;
    };
    let a = Project::new();
    a.write("w.yaml", SUM_WORKFLOW);
    a.flow(&["run", "w.yaml", "--remote", &remote])
        .expect_code(0);
    let done = gc_remote(&Project::new(), &remote, &["--grace", "0s"]);
    assert!(
        done.contains("0 cache entries, 0 artifacts, 0 blobs"),
        "{done}"
    );
    assert_eq!(fresh_plan(&remote, &[]), ["cached", "cached", "cached"]);
}

/// A node writing a 40 MiB file (three upload parts) published to `remote`, then taken from it
/// by a fresh store: the same bytes.
fn a_large_file_goes_through(remote: &str) {
    let workflow = "name: big\nnodes:\n  make:\n    uses: shell\n    with:\n      run: \"head -c 41943040 /dev/urandom > $FLOW_OUT/big.bin\"\n";
    let (a, b) = (Project::new(), Project::new());
    for p in [&a, &b] {
        p.write("w.yaml", workflow);
    }
    a.flow(&["run", "w.yaml", "--remote", remote])
        .expect_code(0);
    let taken = b
        .flow(&["run", "w.yaml", "--remote", remote, "--json"])
        .expect_code(0)
        .json();
    assert_eq!(node_field(&taken, "status"), ["cached"]);
    let (mine, theirs) = (outputs(&a), outputs(&b));
    assert_eq!(mine[0].1.len(), 41943040);
    assert!(mine == theirs, "the downloaded file differs");
}

#[test]
fn a_large_file_goes_through_a_file_remote_in_parts() {
    let shared = tempfile::tempdir().unwrap();
    a_large_file_goes_through(&format!("file://{}", shared.path().display()));
}

#[test]
fn a_large_file_goes_through_s3_in_parts() {
    if let Some(remote) = s3_remote("large-file-test") {
        a_large_file_goes_through(&remote);
    }
}
