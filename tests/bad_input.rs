//! Every bad input: `file:line:column`, the field, what was expected, exit 2, no panic,
//! and nothing written to the store.

mod support;

use support::{Project, SUM_WORKFLOW};

/// Runs `flow run` on `yaml` (plus extra args) and checks the error contract.
fn rejects(yaml: &str, extra: &[&str], expected: &[&str]) -> String {
    let p = Project::new();
    p.write("w.yaml", yaml);
    let mut args = vec!["run", "w.yaml"];
    args.extend_from_slice(extra);
    let run = p.flow(&args).expect_code(2);
    for needle in expected {
        assert!(
            run.stderr.contains(needle),
            "expected `{needle}` in:\n{}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(!p.store().exists(), "nothing is written for bad input");
    run.stderr
}

#[test]
fn not_yaml() {
    rejects(
        "name: [unclosed\nnodes: {}\n",
        &[],
        &["error: w.yaml:1:7:", "invalid workflow"],
    );
}

#[test]
fn unknown_top_level_key() {
    rejects(
        "name: x\nnodez: {}\n",
        &[],
        &["w.yaml:2:1:", "unknown key `nodez`", "expected one of"],
    );
}

#[test]
fn unknown_node_type_suggests_the_closest() {
    let err = rejects(
        "name: x\nnodes:\n  a:\n    uses: shel\n",
        &[],
        &[
            "w.yaml:4:11:",
            "`nodes.a.uses`",
            "unknown node type `shel`",
            "did you mean `shell`?",
        ],
    );
    assert!(
        err.contains("4 |     uses: shel\n  |           ^^^^"),
        "{err}"
    );
}

#[test]
fn unknown_param() {
    rejects(
        "name: x\nnodes:\n  a:\n    uses: shell\n    with:\n      run: echo\n      rn: oops\n",
        &[],
        &[
            "w.yaml:7:11:",
            "`nodes.a.with.rn`",
            "unknown param `rn`",
            "expected one of `run`",
        ],
    );
}

#[test]
fn missing_param() {
    rejects(
        "name: x\nnodes:\n  a:\n    uses: shell\n    with: { env: {} }\n",
        &[],
        &["w.yaml:5:11:", "`nodes.a.with`", "missing field `run`"],
    );
}

#[test]
fn wrong_type() {
    rejects(
        "name: x\nnodes:\n  a:\n    uses: shell\n    with:\n      run: [1, 2]\n",
        &[],
        &["w.yaml:6:12:", "`nodes.a.with.run`", "expected a string"],
    );
    rejects(
        "name: x\nnodes:\n  a:\n    uses: shell\n    retries: lots\n    with: { run: echo }\n",
        &[],
        &["w.yaml:5:14:", "invalid"],
    );
}

#[test]
fn reference_to_unknown_node() {
    rejects(
        "name: x\nnodes:\n  make:\n    uses: shell\n    with: { run: echo }\n  b:\n    uses: shell\n    with: { run: \"cat ${mkae.out}\" }\n",
        &[],
        &[
            "w.yaml:8:18:",
            "`nodes.b.with.run`",
            "unknown node `mkae`",
            "did you mean `make`?",
        ],
    );
    rejects(
        "name: x\nnodes:\n  a:\n    uses: shell\n    after: [ghost]\n    with: { run: echo }\n",
        &[],
        &["w.yaml:5:13:", "`nodes.a.after`", "unknown node `ghost`"],
    );
}

#[test]
fn reference_to_missing_output() {
    rejects(
        "name: x\nnodes:\n  make:\n    uses: shell\n    with: { run: echo }\n  b:\n    uses: shell\n    with: { run: \"cat ${make.outt}\" }\n",
        &[],
        &[
            "w.yaml:8:18:",
            "node `make` (shell) has no output `outt`; its outputs: out",
            "did you mean `out`?",
        ],
    );
}

#[test]
fn reference_to_unknown_param_and_malformed_reference() {
    rejects(
        "name: x\nparams: {n: 1}\nnodes:\n  a:\n    uses: shell\n    with: { run: \"seq ${params.m}\" }\n",
        &[],
        &["w.yaml:6:18:", "unknown param `m`"],
    );
    rejects(
        "name: x\nnodes:\n  a:\n    uses: shell\n    with: { run: \"seq ${params.n\" }\n",
        &[],
        &["w.yaml:5:18:", "unclosed reference"],
    );
}

#[test]
fn cycle_is_printed() {
    let yaml = "name: x\nnodes:\n  a:\n    uses: shell\n    with: { run: \"cat ${c.out}\" }\n  b:\n    uses: shell\n    with: { run: \"cat ${a.out}\" }\n  c:\n    uses: shell\n    after: [b]\n    with: { run: echo }\n";
    let err = rejects(yaml, &[], &["cycle: "]);
    assert!(
        err.contains("a → b → c → a")
            || err.contains("b → c → a → b")
            || err.contains("c → a → b → c"),
        "{err}"
    );
}

#[test]
fn duplicate_node_id() {
    rejects(
        "name: x\nnodes:\n  a:\n    uses: shell\n    with: { run: echo }\n  a:\n    uses: shell\n    with: { run: echo }\n",
        &[],
        &["w.yaml:6:3:", "duplicate mapping key: a"],
    );
}

#[test]
fn invalid_set() {
    rejects(
        SUM_WORKFLOW,
        &["--set", "m=3"],
        &[
            "invalid --set `m=3`",
            "declares no param `m`",
            "did you mean `n`?",
        ],
    );
    rejects(
        SUM_WORKFLOW,
        &["--set", "n=abc"],
        &["invalid --set `n=abc`: param `n` is a number (default 3), got a string"],
    );
    rejects(
        SUM_WORKFLOW,
        &["--set", "n"],
        &["invalid --set `n`: expected NAME=VALUE"],
    );
}

#[test]
fn invalid_duration() {
    rejects(
        "name: x\nnodes:\n  a:\n    uses: shell\n    timeout: 10x\n    with: { run: echo }\n",
        &[],
        &[
            "w.yaml:5:14:",
            "`nodes.a.timeout`",
            "invalid duration `10x`",
        ],
    );
}

#[test]
fn empty_workflow() {
    rejects("", &[], &["empty workflow"]);
    rejects("# nothing\n", &[], &["empty workflow"]);
    rejects(
        "name: x\nnodes: {}\n",
        &[],
        &["w.yaml:2:8:", "empty workflow: `nodes` has no entries"],
    );
}

#[test]
fn store_path_not_writable() {
    let p = Project::new();
    p.write("w.yaml", SUM_WORKFLOW);
    p.write("afile", "not a directory");
    let run = p
        .flow(&["--store", "afile/store", "run", "w.yaml"])
        .expect_code(2);
    assert!(
        run.stderr
            .contains("store path `afile/store` is not writable"),
        "{}",
        run.stderr
    );
}

#[test]
fn validate_lists_every_error_of_every_file() {
    let p = Project::new();
    p.write("good.yaml", SUM_WORKFLOW);
    p.write("bad.yaml", "name: x\nnodes:\n  a:\n    uses: shel\n  b:\n    uses: shell\n    timeout: soon\n    with: { run: \"${zz.out}\" }\n");
    let run = p
        .flow(&["validate", "good.yaml", "bad.yaml"])
        .expect_code(2);
    assert!(run.stdout.contains("ok: good.yaml (3 nodes)"));
    for needle in [
        "bad.yaml:4:11:",
        "bad.yaml:7:14:",
        "bad.yaml:8:18:",
        "3 errors in bad.yaml",
    ] {
        assert!(
            run.stderr.contains(needle),
            "expected `{needle}` in\n{}",
            run.stderr
        );
    }
    p.flow(&["validate", "good.yaml"]).expect_code(0);
    let missing = p.flow(&["validate", "nope.yaml"]).expect_code(2);
    assert!(
        missing
            .stderr
            .contains("nope.yaml: cannot read workflow file"),
        "{}",
        missing.stderr
    );
}
