//! The `slurm` executor against a real Slurm: the one-node cluster of `scripts/test-cluster.sh`
//! (`start`, then `source /tmp/flow-test-cluster/env`, which sets `FLOW_TEST_SLURM`). Without it
//! every test here says so on stderr and passes. Each workflow has a name of its own (the
//! process id in it), so its jobs can be found by name in `squeue`.

mod support;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Project, Run, wait_until};

/// Whether the test cluster is there; says so on stderr (past the harness's capture) when not.
fn cluster() -> bool {
    if std::env::var_os("FLOW_TEST_SLURM").is_some() {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "skipped on a cluster: FLOW_TEST_SLURM is unset (scripts/test-cluster.sh start; source /tmp/flow-test-cluster/env)"
    );
    false
}

/// A workflow name no other test run shares.
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// `flow show last --json`.
fn last_run(p: &Project) -> serde_json::Value {
    p.flow(&["show", "last", "--json"]).expect_code(0).json()
}

/// The node `id` of a run record.
fn node<'a>(record: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    record["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("no node {id} in {record}"))
}

/// The Slurm job ids of jobs called `name`, with their states (all states).
fn jobs_named(name: &str) -> Vec<(String, String)> {
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%i|%T"])
        .arg(format!("--name={name}"))
        .output()
        .expect("run squeue");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(id, state)| (id.trim().to_string(), state.trim().to_string()))
        .collect()
}

/// An `s3://` remote of its own in the test S3 server, when `scripts/test-cluster.sh` started one.
fn s3_remote(name: &str) -> Option<String> {
    std::env::var_os("FLOW_TEST_S3")?;
    let bucket = std::env::var("FLOW_TEST_S3_BUCKET").unwrap_or_else(|_| "flow".into());
    Some(format!("s3://{bucket}/{}", unique(name)))
}

#[test]
fn the_embedded_default_runs_every_node_as_a_slurm_job_then_is_cached() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let flow_at_root = |args: &[&str]| -> Run { support::flow_at_root(&p, args) };
    let wf = "workflows/dpo-de-tiny.yaml";
    // With the S3 server up, the run publishes there too (`--remote`).
    let remote = s3_remote("tiny");
    let mut run = vec!["run", wf, "--executor", "slurm"];
    if let Some(remote) = &remote {
        run.extend(["--remote", remote]);
    }
    flow_at_root(&run).expect_code(0);
    let record = flow_at_root(&["show", "last", "--json"])
        .expect_code(0)
        .json();
    let nodes = record["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 10);
    for n in nodes {
        assert_eq!(n["status"], "succeeded", "{n}");
        assert_eq!(n["executor"], "slurm", "{n}");
        let job = n["job_id"].as_str().unwrap_or_default();
        assert!(
            !job.is_empty() && job.chars().all(|c| c.is_ascii_digit()),
            "{n}"
        );
        let log = n["job_log"].as_str().unwrap();
        assert!(log.ends_with(&format!(".slurm-{job}.log")), "{log}");
        assert!(std::path::Path::new(log).is_file(), "{log}");
    }
    let again = flow_at_root(&["run", wf, "--executor", "slurm", "--json"])
        .expect_code(0)
        .json();
    for n in again["nodes"].as_array().unwrap() {
        assert_eq!(n["status"], "cached", "{n}");
        assert!(n.get("job_id").is_none(), "{n}");
    }
    let Some(remote) = remote else {
        let _ = writeln!(
            std::io::stderr(),
            "skipped the S3 half: FLOW_TEST_S3 is unset"
        );
        return;
    };
    // A second machine: an empty store, the same remote; nothing runs, nothing is submitted.
    let fresh = Project::new();
    let plan = support::flow_at_root(&fresh, &["plan", wf, "--remote", &remote, "--json"])
        .expect_code(0)
        .json();
    assert!(
        support::node_field(&plan, "action")
            .iter()
            .all(|a| a == "cached"),
        "{plan}"
    );
    let taken = support::flow_at_root(
        &fresh,
        &[
            "run",
            wf,
            "--executor",
            "slurm",
            "--remote",
            &remote,
            "--json",
        ],
    )
    .expect_code(0)
    .json();
    for n in taken["nodes"].as_array().unwrap() {
        assert_eq!(n["status"], "cached", "{n}");
        assert!(n.get("job_id").is_none(), "{n}");
    }
    let outputs = |record: &serde_json::Value| {
        record["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["outputs"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(outputs(&taken), outputs(&record));
}

#[test]
fn a_gpu_node_gets_a_gpu_from_slurm() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let name = unique("gpu");
    p.write(
        "w.yaml",
        &format!(
            "name: {name}\nnodes:\n  see:\n    uses: shell\n    resources: {{gpu: 1}}\n    with:\n      run: \"echo $CUDA_VISIBLE_DEVICES > $FLOW_OUT/gpus.txt\"\n"
        ),
    );
    p.flow(&["run", "w.yaml", "--executor", "slurm"])
        .expect_code(0);
    let gpus = std::fs::read_to_string(p.artifact_file("gpus.txt")).unwrap();
    assert!(
        ["0", "1"].contains(&gpus.trim()),
        "CUDA_VISIBLE_DEVICES={gpus:?}"
    );
    assert_eq!(node(&last_run(&p), "see")["executor"], "slurm");
}

#[test]
fn a_job_killed_with_scancel_is_reported_and_retried() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let name = unique("scancel");
    let marker = p.path().join("first-attempt-started");
    // The first attempt marks that it runs and sleeps; the retry finds the mark and finishes.
    p.write(
        "w.yaml",
        &format!(
            "name: {name}\nnodes:\n  sleeper:\n    uses: shell\n    retries: 1\n    with:\n      run: \"if [ -e {m} ]; then echo second > $FLOW_OUT/done.txt; else touch {m}; sleep 300; fi\"\n",
            m = marker.display()
        ),
    );
    let run = p.spawn(&["run", "w.yaml", "--executor", "slurm"]);
    wait_until(Duration::from_secs(300), "the first attempt", || {
        marker.exists()
    });
    let job_name = format!("flow-{name}-sleeper");
    let jobs = jobs_named(&job_name);
    let (first, _) = jobs
        .iter()
        .find(|(_, state)| state == "RUNNING")
        .unwrap_or_else(|| panic!("no running job {job_name}: {jobs:?}"));
    let status = Command::new("scancel").arg(first).status().unwrap();
    assert!(status.success());
    let out = run.wait_with_output().unwrap();
    let run = Run::from(out).expect_code(0);
    let record = last_run(&p);
    let sleeper = node(&record, "sleeper");
    assert_eq!(sleeper["attempts"], 2, "{sleeper}\n{}", run.stderr);
    assert_ne!(sleeper["job_id"].as_str(), Some(first.as_str()));
    let log = p.path().join(sleeper["log"].as_str().unwrap());
    let log = std::fs::read_to_string(log).unwrap();
    // The node's own error comes first when the worker saw its command killed before Slurm
    // killed the worker ("command was killed by a signal; slurm job N CANCELLED …").
    let failed = log
        .lines()
        .find(|l| l.contains("attempt 1/2 failed:"))
        .unwrap_or_else(|| panic!("no failed first attempt in {log}"));
    assert!(
        failed.contains(&format!("slurm job {first} CANCELLED (log: ")),
        "{log}"
    );
    let done = std::fs::read_to_string(p.artifact_file("done.txt")).unwrap();
    assert_eq!(done.trim(), "second");
}

#[test]
fn a_node_past_its_timeout_ends_as_a_slurm_timeout() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let name = unique("timeout");
    p.write(
        "w.yaml",
        &format!(
            "name: {name}\nnodes:\n  slow:\n    uses: shell\n    timeout: 1m\n    with:\n      run: \"sleep 150; touch $FLOW_OUT/late\"\n"
        ),
    );
    let started = Instant::now();
    let run = p.flow(&["run", "w.yaml", "--executor", "slurm"]);
    let run = run.expect_code(1);
    let slow = node(&last_run(&p), "slow").clone();
    let job = slow["job_id"].as_str().unwrap();
    let error = slow["error"].as_str().unwrap();
    // The worker may see its command killed before Slurm kills the worker; the node's own error
    // ("command was killed by a signal") then comes first, and Slurm's verdict after it.
    assert!(
        (error.starts_with(&format!("slurm job {job} TIMEOUT (log: "))
            || error.contains(&format!("; slurm job {job} TIMEOUT (log: ")))
            && error.contains(&format!("slow.slurm-{job}.log")),
        "{error}"
    );
    assert!(run.stderr.contains(error), "{}", run.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(145),
        "Slurm did not stop the node at its limit"
    );
}

#[test]
fn a_node_can_stay_local_when_the_workflow_runs_on_slurm() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let name = unique("mixed");
    p.write(
        "w.yaml",
        &format!(
            "name: {name}\nexecutor: {{type: slurm}}\nnodes:\n  here:\n    uses: shell\n    executor: local\n    with:\n      run: \"echo job=$SLURM_JOB_ID > $FLOW_OUT/here.txt\"\n  there:\n    uses: shell\n    with:\n      run: \"echo job=$SLURM_JOB_ID > $FLOW_OUT/there.txt\"\n"
        ),
    );
    p.flow(&["run", "w.yaml"]).expect_code(0);
    let record = last_run(&p);
    let (here, there) = (node(&record, "here"), node(&record, "there"));
    assert_eq!(here["executor"], "local");
    assert!(here.get("job_id").is_none(), "{here}");
    assert_eq!(there["executor"], "slurm");
    let job = there["job_id"].as_str().unwrap();
    let read = |file: &str| std::fs::read_to_string(p.artifact_file(file)).unwrap();
    assert_eq!(read("here.txt").trim(), "job=");
    assert_eq!(read("there.txt").trim(), format!("job={job}"));
}

/// Starts `flow run --executor slurm` in `p` on a workflow of its own (named after `label`)
/// whose one shell node `nap` runs `command`, and waits (at most `limit`) until that job runs;
/// returns the driver and the job's name.
fn start_nap(
    p: &Project,
    label: &str,
    command: &str,
    limit: Duration,
) -> (std::process::Child, String) {
    let name = unique(label);
    p.write(
        "w.yaml",
        &format!(
            "name: {name}\nnodes:\n  nap:\n    uses: shell\n    with:\n      run: \"{command}\"\n"
        ),
    );
    let driver = p.spawn(&["run", "w.yaml", "--executor", "slurm"]);
    let job_name = format!("flow-{name}-nap");
    wait_until(limit, "the job to run", || {
        jobs_named(&job_name).iter().any(|(_, s)| s == "RUNNING")
    });
    (driver, job_name)
}

#[test]
fn ctrl_c_cancels_the_slurm_jobs_of_the_run() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let (run, job_name) = start_nap(&p, "ctrlc", "sleep 300", Duration::from_secs(300));
    support::signal(&run, libc::SIGINT);
    Run::from(run.wait_with_output().unwrap()).expect_code(130);
    let jobs = jobs_named(&job_name);
    assert!(
        jobs.iter().all(|(_, state)| state == "CANCELLED"),
        "{jobs:?}"
    );
}

#[test]
fn a_job_that_cannot_start_says_why_instead_of_waiting_silently() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let name = unique("pending");
    // More CPUs than the one node has: Slurm accepts the job and keeps it pending.
    p.write(
        "w.yaml",
        &format!(
            "name: {name}\nnodes:\n  big:\n    uses: shell\n    resources: {{cpus: 64}}\n    with:\n      run: \"true\"\n"
        ),
    );
    let run = p.spawn(&["run", "w.yaml", "--executor", "slurm"]);
    let said = |log: &std::path::Path| {
        std::fs::read_to_string(log).is_ok_and(|t| t.contains("waits to start: PartitionConfig"))
    };
    wait_until(Duration::from_secs(60), "the node log to say why", || {
        std::fs::read_dir(p.store().join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|run| said(&run.path().join("logs/big.log")))
    });
    support::signal(&run, libc::SIGINT);
    let run = Run::from(run.wait_with_output().unwrap()).expect_code(130);
    assert!(
        run.stderr.contains("0 skipped, 1 cancelled")
            && run.stderr.contains("⧗ big: slurm job ")
            && run.stderr.contains("waits to start: PartitionConfig"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_job_whose_driver_was_killed_still_leaves_its_result_cached() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let (driver, job_name) = start_nap(
        &p,
        "orphan",
        "sleep 4; echo done > $FLOW_OUT/x.txt",
        Duration::from_secs(120),
    );
    support::signal(&driver, libc::SIGKILL);
    drop(driver.wait_with_output());
    wait_until(
        Duration::from_secs(120),
        "the orphaned job to finish",
        || jobs_named(&job_name).iter().all(|(_, s)| s == "COMPLETED"),
    );
    let again = p
        .flow(&["run", "w.yaml", "--executor", "slurm", "--json"])
        .expect_code(0)
        .json();
    let nap = node(&again, "nap");
    assert_eq!(nap["status"], "cached", "{again}");
    assert!(nap.get("job_id").is_none(), "{nap}");
    assert_eq!(jobs_named(&job_name).len(), 1, "no second job");
    assert_eq!(
        std::fs::read_to_string(p.artifact_file("x.txt")).unwrap(),
        "done\n"
    );
}

/// No cluster needed: a bad executor name is a diagnostic at its place, listing the names.
#[test]
fn an_unknown_executor_is_an_error_at_its_line() {
    let p = Project::new();
    p.write(
        "w.yaml",
        "name: x\nnodes:\n  a:\n    uses: shell\n    executor: slurmm\n    with: {run: \"true\"}\n",
    );
    let run = p.flow(&["validate", "w.yaml"]).expect_code(2);
    assert!(
        run.stderr.contains(
            "w.yaml:5:15: `nodes.a.executor`: unknown executor `slurmm`: expected one of local, slurm"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("did you mean `slurm`?"),
        "{}",
        run.stderr
    );
    p.write(
        "ok.yaml",
        "name: x\nnodes:\n  a:\n    uses: shell\n    with: {run: \"true\"}\n",
    );
    let run = p
        .command(&["run", "ok.yaml"])
        .env("FLOW_EXECUTOR", "k8s")
        .output()
        .unwrap();
    let run = Run::from(run).expect_code(2);
    assert!(
        run.stderr
            .contains("unknown executor `k8s`: expected one of local, slurm"),
        "{}",
        run.stderr
    );
}

/// No cluster needed: without Slurm's commands the node fails naming `sbatch`.
#[test]
fn without_sbatch_the_node_fails_naming_it() {
    let p = Project::new();
    p.write(
        "w.yaml",
        "name: x\nexecutor: {type: slurm}\nnodes:\n  a:\n    uses: shell\n    with: {run: \"true\"}\n",
    );
    let run = p
        .command(&["run", "w.yaml"])
        .env("PATH", p.path())
        .output()
        .unwrap();
    let run = Run::from(run).expect_code(1);
    assert!(
        run.stderr
            .contains("node `a` failed: cannot run `sbatch`: not found on PATH"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_sharded_reference_scoring_is_one_job_array_equal_to_the_unsharded_artifact() {
    if !cluster() {
        return;
    }
    let name = unique("shards");
    // Two stores: `shards` is not part of the cache key, so one store would reuse the result.
    let (local, sharded) = (Project::new(), Project::new());
    for (p, shards) in [(&local, 1), (&sharded, 3)] {
        let data = support::golden_dataset(p, 4);
        let model = support::fixtures().join("mistral-tiny/base");
        p.write(
            "w.yaml",
            &format!(
                "name: {name}\nnodes:\n  split:\n    uses: model.ref_logprobs\n    with: {{ model: {}, dataset: {}, batch_size: 4, shards: {shards} }}\n",
                model.display(),
                data.display()
            ),
        );
    }
    local.flow(&["run", "w.yaml"]).expect_code(0);
    sharded
        .flow(&["run", "w.yaml", "--executor", "slurm"])
        .expect_code(0);
    let (whole, record) = (last_run(&local), last_run(&sharded));
    let split = node(&record, "split");
    assert_eq!(
        node(&whole, "split")["outputs"]["logprobs"],
        split["outputs"]["logprobs"],
        "{record}"
    );
    let jobs = split["job_id"].as_str().unwrap();
    let array = jobs
        .strip_suffix("_[0-2]")
        .unwrap_or_else(|| panic!("{split}"));
    assert!(array.chars().all(|c| c.is_ascii_digit()), "{split}");
    let tasks = jobs_named(&format!("flow-{name}-split"));
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    assert!(
        tasks.iter().all(|(_, state)| state == "COMPLETED"),
        "{tasks:?}"
    );
    let log = split["job_log"].as_str().unwrap();
    assert!(log.ends_with(&format!(".slurm-{array}_0.log")), "{log}");
    assert!(std::path::Path::new(log).is_file(), "{log}");
}
