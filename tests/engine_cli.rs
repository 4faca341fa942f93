//! The engine through the real binary: caching, re-runs and their reasons, crashes,
//! concurrency, corruption, failures, secrets, and the inspection commands.

mod support;

use std::time::Duration;
use support::{
    Project, SUM_WORKFLOW, actions, exists_below, expect, node_field, signal, wait_until,
};

#[test]
fn second_run_is_fully_cached() {
    let p = Project::new();
    p.write("w.yaml", SUM_WORKFLOW);
    let first = p.flow(&["run", "w.yaml", "--json"]).expect_code(0).json();
    assert!(
        node_field(&first, "status")
            .iter()
            .all(|s| s == "succeeded")
    );
    assert_eq!(
        std::fs::read_to_string(p.artifact_file("sum.txt")).unwrap(),
        "6\n"
    );
    let second = p.flow(&["run", "w.yaml", "--json"]).expect_code(0).json();
    assert!(node_field(&second, "status").iter().all(|s| s == "cached"));
    assert!(
        second["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["cache_hit"] == true)
    );
    let plan = p.flow(&["plan", "w.yaml", "--json"]).expect_code(0).json();
    assert_eq!(
        actions(&plan),
        expect(&[("make", "cached"), ("label", "cached"), ("sum", "cached")])
    );
}

#[test]
fn set_reruns_only_affected_nodes_and_plan_names_the_param() {
    let p = Project::new();
    p.write("w.yaml", SUM_WORKFLOW);
    p.flow(&["run", "w.yaml"]).expect_code(0);
    let plan = p
        .flow(&["plan", "w.yaml", "--set", "n=4", "--json"])
        .expect_code(0)
        .json();
    assert_eq!(
        actions(&plan),
        expect(&[("make", "run"), ("label", "cached"), ("sum", "run")])
    );
    assert_eq!(plan["nodes"][0]["reasons"][0], "param n changed 3 → 4");
    assert_eq!(
        plan["nodes"][2]["reasons"][0],
        "input make.out changed (make re-runs)"
    );
    let text = p
        .flow(&["plan", "w.yaml", "--set", "n=4"])
        .expect_code(0)
        .stdout;
    assert!(text.contains("param n changed 3 → 4"), "{text}");
    let run = p
        .flow(&["run", "w.yaml", "--set", "n=4", "--json"])
        .expect_code(0)
        .json();
    let statuses = node_field(&run, "status");
    assert_eq!(statuses, ["succeeded", "cached", "succeeded"]);
    // Going back to the old value is a cache hit: the cache is keyed by content, not by history.
    let back = p
        .flow(&["plan", "w.yaml", "--set", "n=3", "--json"])
        .expect_code(0)
        .json();
    assert_eq!(
        actions(&back),
        expect(&[("make", "cached"), ("label", "cached"), ("sum", "cached")])
    );
}

#[test]
fn identical_upstream_output_keeps_downstream_cached() {
    let p = Project::new();
    p.write("w.yaml", "name: cutoff\nparams: {pad: a}\nnodes:\n  make:\n    uses: shell\n    with: { run: \"echo fixed > $FLOW_OUT/x # ${params.pad}\" }\n  use:\n    uses: shell\n    with: { inputs: { x: \"${make.out}\" }, run: \"cp $FLOW_IN_X/x $FLOW_OUT/y\" }\n");
    p.flow(&["run", "w.yaml"]).expect_code(0);
    let run = p
        .flow(&["run", "w.yaml", "--set", "pad=b", "--json"])
        .expect_code(0)
        .json();
    assert_eq!(run["nodes"][0]["status"], "succeeded");
    assert_eq!(
        run["nodes"][1]["status"], "cached",
        "same input digest, so the downstream node is reused"
    );
}

#[test]
fn force_only_and_dry_run() {
    let p = Project::new();
    p.write("w.yaml", SUM_WORKFLOW);
    let dry = p
        .flow(&["run", "w.yaml", "--dry-run", "--json"])
        .expect_code(0)
        .json();
    assert_eq!(
        actions(&dry),
        expect(&[("make", "run"), ("label", "run"), ("sum", "run")])
    );
    assert!(!p.store().exists(), "--dry-run writes nothing");
    let only = p
        .flow(&["run", "w.yaml", "--only", "sum", "--json"])
        .expect_code(0)
        .json();
    let ids = node_field(&only, "id");
    assert_eq!(
        ids,
        ["make", "sum"],
        "--only runs the node and what it needs"
    );
    let forced = p
        .flow(&["plan", "w.yaml", "--force", "sum", "--json"])
        .expect_code(0)
        .json();
    assert_eq!(
        actions(&forced),
        expect(&[("make", "cached"), ("label", "run"), ("sum", "run")])
    );
    assert_eq!(forced["nodes"][2]["reasons"][0], "forced");
    assert_eq!(forced["nodes"][1]["reasons"][0], "never run");
    let all = p
        .flow(&["plan", "w.yaml", "--force-all", "--json"])
        .expect_code(0)
        .json();
    assert!(actions(&all).iter().all(|(_, a)| a == "run"));
    let unknown = p.flow(&["run", "w.yaml", "--only", "summ"]).expect_code(2);
    assert!(
        unknown.stderr.contains("no node `summ`") && unknown.stderr.contains("did you mean `sum`?"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn node_version_and_env_changes_are_reasons() {
    let p = Project::new();
    p.write("w.yaml", "name: envy\nnodes:\n  a:\n    uses: shell\n    with: { run: \"echo ${env.FLOW_TEST_GREETING} > $FLOW_OUT/g\" }\n");
    p.command(&["run", "w.yaml"])
        .env("FLOW_TEST_GREETING", "hallo")
        .output()
        .unwrap();
    let plan = p
        .command(&["plan", "w.yaml", "--json"])
        .env("FLOW_TEST_GREETING", "servus")
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(
        plan["nodes"][0]["reasons"][0],
        "env FLOW_TEST_GREETING changed"
    );
    let missing = p
        .command(&["plan", "w.yaml"])
        .env_remove("FLOW_TEST_GREETING")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("environment variable `FLOW_TEST_GREETING` is not set")
    );
}

#[test]
fn sigkill_mid_node_then_rerun_completes_with_no_corrupt_artifact() {
    let p = Project::new();
    p.write(
        "w.yaml",
        "name: crash\nnodes:\n  slow:\n    uses: shell\n    with: { run: \"echo started > $FLOW_OUT/partial; sleep 2; echo done > $FLOW_OUT/final\" }\n  next:\n    uses: shell\n    with: { inputs: { s: \"${slow.out}\" }, run: \"cat $FLOW_IN_S/partial $FLOW_IN_S/final > $FLOW_OUT/both\" }\n",
    );
    let mut child = p.spawn(&["run", "w.yaml"]);
    let tmp = p.store().join("tmp");
    wait_until(Duration::from_secs(20), "the node to start writing", || {
        exists_below(&tmp, "partial")
    });
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    assert!(
        p.artifact_files().is_empty(),
        "a killed node leaves no artifact"
    );
    let plan = p.flow(&["plan", "w.yaml", "--json"]).expect_code(0).json();
    assert_eq!(actions(&plan), expect(&[("slow", "run"), ("next", "run")]));
    p.flow(&["run", "w.yaml"]).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(p.artifact_file("both")).unwrap(),
        "started\ndone\n"
    );
    let verified = p
        .flow(&["run", "w.yaml", "--verify", "--json"])
        .expect_code(0)
        .json();
    assert!(
        node_field(&verified, "status")
            .iter()
            .all(|s| s == "cached")
    );
    let runs = p.flow(&["runs", "--json"]).expect_code(0).json();
    assert_eq!(
        runs[0]["status"], "interrupted",
        "the killed run is marked by the next one"
    );
}

#[test]
fn two_concurrent_runs_on_one_store_both_succeed() {
    let p = Project::new();
    p.write("w.yaml", "name: busy\nparams: {tag: a}\nnodes:\n  work:\n    uses: shell\n    with: { run: \"sleep 1; echo ${params.tag} > $FLOW_OUT/tag\" }\n");
    let first = p.spawn(&["run", "w.yaml"]);
    wait_until(
        Duration::from_secs(20),
        "the first run to take the lock",
        || exists_below(&p.store().join("runs"), "record.json"),
    );
    let refused = p
        .flow(&["run", "w.yaml", "--set", "tag=b", "--no-wait"])
        .expect_code(1);
    assert!(
        refused.stderr.contains("is locked by another flow process"),
        "{}",
        refused.stderr
    );
    let second = p.spawn(&["run", "w.yaml", "--set", "tag=b"]);
    let (a, b) = (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    );
    assert!(a.status.success() && b.status.success());
    assert!(String::from_utf8_lossy(&b.stderr).contains("waiting for the store lock"));
    let plan_a = p
        .flow(&["plan", "w.yaml", "--verify", "--json"])
        .expect_code(0)
        .json();
    let plan_b = p
        .flow(&["plan", "w.yaml", "--set", "tag=b", "--verify", "--json"])
        .expect_code(0)
        .json();
    assert_eq!(actions(&plan_a), expect(&[("work", "cached")]));
    assert_eq!(actions(&plan_b), expect(&[("work", "cached")]));
}

#[test]
fn corrupted_artifact_byte_is_detected_and_recomputed() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    p.write("w.yaml", SUM_WORKFLOW);
    p.flow(&["run", "w.yaml"]).expect_code(0);
    let file = p.artifact_file("numbers.txt");
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&file, "1\n2\n4\n").unwrap();
    // Same size, and the old mtime put back: only rehashing can tell.
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let fast = p.flow(&["plan", "w.yaml", "--json"]).expect_code(0).json();
    assert_eq!(
        fast["nodes"][0]["action"], "cached",
        "size + mtime fast path trusts the file"
    );
    let plan = p
        .flow(&["plan", "w.yaml", "--verify", "--json"])
        .expect_code(0)
        .json();
    assert_eq!(plan["nodes"][0]["action"], "run");
    assert!(
        plan["nodes"][0]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("output out corrupted: numbers.txt"),
        "{plan}"
    );
    p.flow(&["run", "w.yaml", "--verify"]).expect_code(0);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "1\n2\n3\n");
    // A touched file (new mtime) is caught without --verify.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&file, "1\n2\n5\n").unwrap();
    let plan = p.flow(&["plan", "w.yaml", "--json"]).expect_code(0).json();
    assert_eq!(plan["nodes"][0]["action"], "run");
}

#[test]
fn failing_node_prints_its_last_log_lines_and_stops_the_run() {
    let p = Project::new();
    p.write("w.yaml", "name: fails\nnodes:\n  bad:\n    uses: shell\n    with: { run: \"echo line-one; echo line-two >&2; exit 3\" }\n  after:\n    uses: shell\n    with: { inputs: { b: \"${bad.out}\" }, run: \"true\" }\n");
    let run = p.flow(&["run", "w.yaml"]).expect_code(1);
    assert!(
        run.stderr
            .contains("node `bad` failed: command exited with status 3"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("| line-one") && run.stderr.contains("| line-two"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("full log: ") && run.stderr.contains("bad.log"),
        "{}",
        run.stderr
    );
    let show = p.flow(&["show", "last", "--json"]).expect_code(0).json();
    assert_eq!(show["status"], "failed");
    assert_eq!(show["nodes"][1]["status"], "skipped");
}

#[test]
fn keep_going_finishes_independent_nodes() {
    let p = Project::new();
    p.write("w.yaml", "name: kg\nnodes:\n  bad:\n    uses: shell\n    with: { run: \"exit 1\" }\n  x:\n    uses: shell\n    after: [bad]\n    with: { run: \"true\" }\n  slow:\n    uses: shell\n    with: { run: \"sleep 0.5\" }\n  later:\n    uses: shell\n    after: [slow]\n    with: { run: \"echo ok > $FLOW_OUT/ok\" }\n");
    let fast = p.flow(&["run", "w.yaml", "--json"]).expect_code(1).json();
    let status = |run: &serde_json::Value, id: &str| {
        run["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(
        status(&fast, "later"),
        "skipped",
        "fail-fast starts nothing new"
    );
    let kept = p
        .flow(&["run", "w.yaml", "--keep-going", "--json"])
        .expect_code(1)
        .json();
    assert_eq!(status(&kept, "later"), "succeeded");
    assert_eq!(status(&kept, "x"), "skipped");
}

#[test]
fn retries_with_backoff_then_succeed_and_timeout_fails() {
    let p = Project::new();
    let mark = p.path().join("attempted");
    p.write(
        "w.yaml",
        &format!("name: flaky\nnodes:\n  flaky:\n    uses: shell\n    retries: 2\n    with: {{ run: \"if [ -f {m} ]; then echo ok > $FLOW_OUT/r; else touch {m}; exit 1; fi\" }}\n  stuck:\n    uses: shell\n    timeout: 300ms\n    with: {{ run: \"sleep 30\" }}\n", m = mark.display()),
    );
    let run = p
        .flow(&["run", "w.yaml", "--keep-going", "--json"])
        .expect_code(1)
        .json();
    assert_eq!(run["nodes"][0]["status"], "succeeded");
    assert_eq!(run["nodes"][0]["attempts"], 2);
    assert_eq!(run["nodes"][1]["status"], "failed");
    assert!(
        run["nodes"][1]["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 300ms")
    );
}

#[test]
fn secrets_never_reach_the_store_logs_records_or_errors() {
    let p = Project::new();
    p.write("w.yaml", "name: secret\nnodes:\n  use:\n    uses: shell\n    with: { run: \"echo token is ${secret.FLOW_TEST_TOKEN}; echo ${secret.FLOW_TEST_TOKEN} | wc -c > $FLOW_OUT/len; exit 7\" }\n");
    let value = "hf_s3cr3t_value_123";
    let run = p
        .command(&["run", "w.yaml"])
        .env("FLOW_TEST_TOKEN", value)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let all_output = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        !all_output.contains(value) && all_output.contains("token is ***"),
        "{all_output}"
    );
    let mut stack = vec![p.store()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                let text =
                    String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned();
                assert!(
                    !text.contains(value),
                    "secret found in {}",
                    entry.path().display()
                );
            }
        }
    }
    let missing = p
        .command(&["run", "w.yaml"])
        .env_remove("FLOW_TEST_TOKEN")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("secret `FLOW_TEST_TOKEN` is not set")
    );
}

#[test]
fn resources_are_never_over_committed() {
    let p = Project::new();
    let node = |id: &str| {
        format!(
            "  {id}:\n    uses: shell\n    resources: {{ gpu: 1 }}\n    with: {{ run: \"date +%s.%N > $FLOW_OUT/start; sleep 0.4; date +%s.%N > $FLOW_OUT/end; echo {id} > $FLOW_OUT/id\" }}\n"
        )
    };
    p.write(
        "w.yaml",
        &format!("name: gpus\nnodes:\n{}{}", node("a"), node("b")),
    );
    p.flow(&["run", "w.yaml", "--jobs", "4"]).expect_code(0);
    let mut spans: Vec<(f64, f64)> = p
        .artifact_files()
        .iter()
        .filter(|(path, _)| path.ends_with("start"))
        .map(|(path, start)| {
            let end = std::fs::read_to_string(path.with_file_name("end")).unwrap();
            (
                String::from_utf8_lossy(start).trim().parse().unwrap(),
                end.trim().parse().unwrap(),
            )
        })
        .collect();
    spans.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    assert_eq!(spans.len(), 2);
    assert!(spans[1].0 >= spans[0].1, "gpu nodes overlapped: {spans:?}");
    let too_few = p
        .flow(&["run", "w.yaml", "--force-all", "--resources", "gpu=0"])
        .expect_code(2);
    assert!(
        too_few.stderr.contains("needs gpu=1 but the run has gpu=0"),
        "{}",
        too_few.stderr
    );
    let bad = p
        .flow(&["run", "w.yaml", "--resources", "gpu=lots"])
        .expect_code(2);
    assert!(
        bad.stderr.contains("invalid --resources `gpu=lots`"),
        "{}",
        bad.stderr
    );
}

#[test]
fn ctrl_c_cancels_running_nodes_and_leaves_the_store_consistent() {
    let p = Project::new();
    p.write("w.yaml", "name: cancel\nnodes:\n  long:\n    uses: shell\n    with: { run: \"echo begun > $FLOW_OUT/begun; sleep 30\" }\n");
    let child = p.spawn(&["run", "w.yaml"]);
    wait_until(Duration::from_secs(20), "the node to start", || {
        exists_below(&p.store().join("tmp"), "begun")
    });
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let show = p.flow(&["show", "last", "--json"]).expect_code(0).json();
    assert_eq!(show["status"], "cancelled");
    assert_eq!(show["nodes"][0]["status"], "cancelled");
    assert!(p.artifact_files().is_empty());
    assert!(
        std::fs::read_dir(p.store().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "temporary output removed"
    );
}

#[test]
fn exec_runs_one_node_outside_a_workflow() {
    let p = Project::new();
    std::fs::create_dir(p.path().join("in")).unwrap();
    p.write("in/numbers.txt", "4\n5\n");
    p.flow(&[
        "exec",
        "shell",
        "--with",
        "run=awk '{s+=$1} END {print s}' $FLOW_IN_NUMBERS/numbers.txt > $FLOW_OUT/sum",
        "--input",
        "numbers=in",
        "--out",
        "result",
    ])
    .expect_code(0);
    assert_eq!(
        std::fs::read_to_string(p.path().join("result/out/sum")).unwrap(),
        "9\n"
    );
    let again = p
        .flow(&["exec", "shell", "--with", "run=true", "--out", "result"])
        .expect_code(2);
    assert!(again.stderr.contains("refusing to overwrite"));
    let failed = p
        .flow(&["exec", "shell", "--with", "run=exit 4", "--out", "failed"])
        .expect_code(1);
    assert!(failed.stderr.contains("status 4"));
    assert!(
        !p.path().join("failed/out").exists(),
        "nothing half-written"
    );
    let unknown = p.flow(&["exec", "shel", "--out", "x"]).expect_code(2);
    assert!(unknown.stderr.contains("did you mean `shell`?"));
    let missing = p.flow(&["exec", "shell", "--out", "x"]).expect_code(2);
    assert!(
        missing.stderr.contains("missing field `run`"),
        "{}",
        missing.stderr
    );
}

#[test]
fn gc_removes_artifacts_no_run_record_references() {
    let p = Project::new();
    p.write("w.yaml", SUM_WORKFLOW);
    p.flow(&["run", "w.yaml"]).expect_code(0);
    let first_run = p.flow(&["runs", "--json"]).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    p.flow(&["run", "w.yaml", "--set", "n=5"]).expect_code(0);
    std::fs::remove_dir_all(p.store().join("runs").join(&first_run)).unwrap();
    let gc = p.flow(&["gc"]).expect_code(0);
    assert!(gc.stdout.contains("removed 2 artifacts"), "{}", gc.stdout);
    let plan = p.flow(&["plan", "w.yaml", "--json"]).expect_code(0).json();
    assert_eq!(
        actions(&plan),
        expect(&[("make", "run"), ("label", "cached"), ("sum", "run")])
    );
    let kept = p
        .flow(&["plan", "w.yaml", "--set", "n=5", "--verify", "--json"])
        .expect_code(0)
        .json();
    assert!(actions(&kept).iter().all(|(_, a)| a == "cached"));
}

#[test]
fn graph_nodes_runs_and_show_describe_the_workflow() {
    let p = Project::new();
    p.write("w.yaml", SUM_WORKFLOW);
    let mermaid = p.flow(&["graph", "w.yaml"]).expect_code(0).stdout;
    assert!(
        mermaid.starts_with("flowchart LR") && mermaid.contains("make -->|out| sum"),
        "{mermaid}"
    );
    let dot = p
        .flow(&["graph", "w.yaml", "--format", "dot"])
        .expect_code(0)
        .stdout;
    assert!(dot.contains("\"make\" -> \"sum\" [label=\"out\"]"), "{dot}");
    let nodes = p.flow(&["nodes"]).expect_code(0).stdout;
    assert!(nodes.contains("shell"));
    let shell = p.flow(&["nodes", "shell"]).expect_code(0).stdout;
    assert!(
        shell.contains("run (string, required)") && shell.contains("$FLOW_OUT"),
        "{shell}"
    );
    p.flow(&["run", "w.yaml"]).expect_code(0);
    let runs = p.flow(&["runs"]).expect_code(0).stdout;
    assert!(
        runs.contains("example") && runs.contains("succeeded") && runs.contains("manual"),
        "{runs}"
    );
    let show = p.flow(&["show", "last"]).expect_code(0).stdout;
    assert!(
        show.contains("make") && show.contains("out=") && show.contains("make.log"),
        "{show}"
    );
    p.flow(&["show", "nope"]).expect_code(2);
}

/// A workflow with two schedules; its node echoes the `label` param.
const SCHEDULED_WORKFLOW: &str = r#"name: scheduled
params:
  label: plain
schedule:
  - cron: "0 3 * * 1"
    timezone: Europe/Berlin
    overlap: skip
    catch_up: latest
    params: { label: weekly }
  - cron: "@daily"
    overlap: queue
nodes:
  write:
    uses: shell
    with:
      run: "echo ${params.label} > $FLOW_OUT/label.txt"
"#;

#[test]
fn schedule_list_prints_the_next_times_on_each_schedules_clock() {
    let p = Project::new();
    p.write("w.yaml", SCHEDULED_WORKFLOW);
    let listed = p
        .flow(&["schedule", "--list", "--count", "2", "--json", "w.yaml"])
        .expect_code(0)
        .json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["schedule"], "scheduled[0]");
    assert_eq!(listed[0]["overlap"], "skip");
    assert_eq!(listed[0]["catch_up"], "latest");
    assert_eq!(listed[0]["params"]["label"], "weekly");
    assert_eq!(listed[1]["timezone"], "UTC");
    let weekly: Vec<&str> = listed[0]["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(weekly.len(), 2);
    for time in &weekly {
        assert!(
            time.contains("T03:00:00+0") && time.ends_with("[Europe/Berlin]"),
            "{time}"
        );
    }
    let table = p
        .flow(&["schedule", "--list", "w.yaml"])
        .expect_code(0)
        .stdout;
    assert!(table.starts_with("SCHEDULE"), "{table}");
    assert!(table.contains("scheduled[1]  @daily"), "{table}");
}

#[test]
fn schedule_runs_each_time_as_a_normal_run_until_sigterm() {
    let p = Project::new();
    p.write(
        "every-second.yaml",
        "name: ticking\nschedule: { cron: \"* * * * * *\", overlap: skip }\nnodes:\n  tick:\n    uses: shell\n    with: { run: \"date +%s%N > $FLOW_OUT/t; sleep 0.3\" }\n",
    );
    p.write("not-scheduled.yaml", SUM_WORKFLOW);
    // The scheduled runs publish to a shared store, as `flow run --remote` does.
    let shared = tempfile::tempdir().unwrap();
    let remote = format!("file://{}", shared.path().display());
    let child = p.spawn(&["schedule", ".", "--reload-every", "1s", "--remote", &remote]);
    let scheduled_runs = || {
        std::fs::read_dir(p.store().join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("record.json")).ok())
            .filter(|r| r.contains("\"status\": \"succeeded\""))
            .count()
    };
    wait_until(Duration::from_secs(30), "two scheduled runs", || {
        scheduled_runs() >= 2
    });
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("loaded ") && stderr.contains("ticking: * * * * * * (UTC)"),
        "{stderr}"
    );
    assert!(stderr.trim_end().ends_with("stopped"), "{stderr}");
    let runs = p.flow(&["runs", "--json"]).expect_code(0).json();
    let runs = runs.as_array().unwrap();
    assert!(runs.len() >= 2);
    for run in runs {
        assert_eq!(run["workflow"], "ticking");
        let trigger = run["trigger"].as_str().unwrap();
        assert!(
            trigger.starts_with("schedule ticking: * * * * * * (UTC) at "),
            "{trigger}"
        );
        assert_ne!(run["status"], "running");
    }
    let table = p.flow(&["runs"]).expect_code(0).stdout;
    assert!(table.contains("schedule ticking"), "{table}");
    let published = std::fs::read_dir(shared.path().join("runs"))
        .unwrap()
        .count();
    assert_eq!(
        published,
        runs.len(),
        "every scheduled run's record is in the remote"
    );
    assert!(
        std::fs::read_dir(shared.path().join("cache"))
            .unwrap()
            .count()
            >= 1
    );
}

#[test]
fn cron_print_gives_crontab_lines_that_run_the_workflow_under_a_lock() {
    let p = Project::new();
    p.write("w.yaml", SCHEDULED_WORKFLOW);
    let out = p.flow(&["cron", "print", "w.yaml"]).expect_code(0);
    assert!(out.stderr.contains("catch_up: latest"), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let weekly = lines
        .iter()
        .position(|l| *l == "CRON_TZ=Europe/Berlin")
        .expect("a CRON_TZ line");
    let entry = lines[weekly + 1];
    assert!(entry.starts_with("0 3 * * 1 "), "{entry}");
    assert!(entry.contains("flock -n "), "{entry}");
    assert!(
        entry.contains(" run ") && entry.contains("--set label=weekly"),
        "{entry}"
    );
    let daily = lines[lines.iter().position(|l| *l == "CRON_TZ=UTC").unwrap() + 1];
    assert!(
        daily.starts_with("@daily ") && daily.contains("flock ") && !daily.contains("flock -n"),
        "{daily}"
    );
    // The command part is what cron would run: run it, twice, the way cron would.
    let command = entry.splitn(6, ' ').nth(5).unwrap().replace("\\%", "%");
    for _ in 0..2 {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir("/")
            .status()
            .unwrap();
        assert!(status.success());
    }
    let runs = p.flow(&["runs", "--json"]).expect_code(0).json();
    let statuses: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded", "succeeded"]);
    assert_eq!(
        std::fs::read_to_string(p.artifact_file("label.txt")).unwrap(),
        "weekly\n"
    );
    let log = std::fs::read_to_string(p.store().join("cron").join("scheduled.log")).unwrap();
    assert!(log.contains("1 cached"), "{log}");
}

#[test]
fn bad_schedules_are_clear_errors() {
    let p = Project::new();
    p.write(
        "bad.yaml",
        "name: bad\nschedule:\n  cron: \"0 3 * * 8\"\n  overlap: sometimes\nnodes:\n  a:\n    uses: shell\n    with: { run: \"true\" }\n",
    );
    let out = p.flow(&["validate", "bad.yaml"]).expect_code(2);
    assert!(out.stderr.contains("bad.yaml:4"), "{}", out.stderr);
    assert!(
        out.stderr.contains("unknown variant `sometimes`"),
        "{}",
        out.stderr
    );
    p.write(
        "bad.yaml",
        "name: bad\nschedule:\n  cron: \"0 3 * * 8\"\nnodes:\n  a:\n    uses: shell\n    with: { run: \"true\" }\n",
    );
    let out = p.flow(&["schedule", "bad.yaml"]).expect_code(2);
    assert!(out.stderr.contains("bad.yaml:3"), "{}", out.stderr);
    assert!(out.stderr.contains("schedule.cron"), "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid cron expression `0 3 * * 8`"),
        "{}",
        out.stderr
    );
    p.write("plain.yaml", SUM_WORKFLOW);
    let out = p.flow(&["schedule", "plain.yaml"]).expect_code(2);
    assert!(
        out.stderr
            .contains("no workflow in plain.yaml has a `schedule:`"),
        "{}",
        out.stderr
    );
    p.write("scheduled.yaml", SCHEDULED_WORKFLOW);
    for (flag, value) in [("--executor", "pbs"), ("--remote", "gs://b")] {
        let out = p
            .flow(&["schedule", "scheduled.yaml", flag, value])
            .expect_code(2);
        assert!(
            out.stderr.contains(flag) && out.stderr.contains(value),
            "{}",
            out.stderr
        );
    }
    let out = p.flow(&["schedule", "missing-dir"]).expect_code(2);
    assert!(
        out.stderr
            .contains("missing-dir is neither a workflow file nor a directory"),
        "{}",
        out.stderr
    );
    p.write(
        "seconds.yaml",
        "name: s\nschedule: { cron: \"*/5 * * * * *\" }\nnodes:\n  a:\n    uses: shell\n    with: { run: \"true\" }\n",
    );
    let out = p.flow(&["cron", "print", "seconds.yaml"]).expect_code(2);
    assert!(
        out.stderr.contains("system cron has five"),
        "{}",
        out.stderr
    );
    p.write(
        "replace.yaml",
        "name: r\nschedule: { cron: \"0 * * * *\", overlap: replace }\nnodes:\n  a:\n    uses: shell\n    with: { run: \"true\" }\n",
    );
    let out = p.flow(&["cron", "print", "replace.yaml"]).expect_code(2);
    assert!(out.stderr.contains("overlap: replace"), "{}", out.stderr);
    assert!(!p.store().exists(), "nothing written");
}
