//! `flow run` and `flow plan`.

use flow_engine::exec::{CancellationToken, RunOptions, execute};
use flow_engine::plan::{Action, PlanError, PlannedNode, Selection, plan_with_remote};
use flow_engine::store::Store;
use flow_engine::store::record::{NodeStatus, RunRecord, RunStatus};
use flow_engine::store::remote::Remote;
use flow_engine::workflow::executor::ExecutorKind;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Failure, cancel_on_signals, load_workflow, print_json, print_table, runtime};
use crate::cli::{PlanArgs, RunArgs, SelectArgs};
use crate::progress::ProgressUi;

fn selection(args: &SelectArgs) -> Selection {
    Selection {
        force: args.force.iter().cloned().collect(),
        force_all: args.force_all,
        only: args.only.clone(),
        verify: args.verify,
    }
}

/// `flow plan`: prints `run` / `cached` per node with reasons; runs and writes nothing.
pub fn plan(args: PlanArgs, store: &Store) -> Result<(), Failure> {
    let remote = parse_remote(args.remote.as_deref())?;
    let wf = load_workflow(&args.select.file, &args.select.set)?;
    let planned = plan_nodes(&wf, store, &selection(&args.select), remote.as_ref())?;
    print_plan(&planned, args.select.json);
    Ok(())
}

/// `--executor` / `FLOW_EXECUTOR`; a bad value is bad input.
pub fn parse_executor(name: Option<&str>) -> Result<Option<ExecutorKind>, Failure> {
    name.map(ExecutorKind::parse)
        .transpose()
        .map_err(|e| Failure::Input(format!("error: --executor / FLOW_EXECUTOR: {e}")))
}

/// `--remote` / `FLOW_REMOTE`; a bad value is bad input.
pub fn parse_remote(url: Option<&str>) -> Result<Option<Remote>, Failure> {
    url.filter(|u| !u.is_empty())
        .map(Remote::parse)
        .transpose()
        .map_err(|e| Failure::Input(format!("error: --remote / FLOW_REMOTE: {e}")))
}

/// The plan, asking the remote (when given) about nodes the local store would run.
fn plan_nodes(
    wf: &flow_engine::workflow::validate::ValidWorkflow,
    store: &Store,
    select: &Selection,
    remote: Option<&Remote>,
) -> Result<Vec<PlannedNode>, Failure> {
    let Some(remote) = remote else {
        return Ok(flow_engine::plan::plan(wf, store, select)?);
    };
    let runtime = runtime()?;
    plan_with_remote(wf, store, select, |key| {
        runtime
            .block_on(remote.entry(key))
            .map(|entry| entry.map(|e| (e, remote.url().to_string())))
            .map_err(|e| e.to_string())
    })
    .map_err(|e| match e {
        PlanError::Workflow(d) => Failure::from(d),
        PlanError::Remote(message) => Failure::Run(format!("error: {message}")),
    })
}

fn print_plan(planned: &[PlannedNode], json: bool) {
    if json {
        print_json(&serde_json::json!({ "nodes": planned }));
        return;
    }
    let rows: Vec<Vec<String>> = planned
        .iter()
        .map(|p| {
            let action = match p.action {
                Action::Run => "run",
                Action::Cached => "cached",
            };
            vec![
                p.id.clone(),
                p.node_type.clone(),
                action.to_string(),
                p.reasons.join("; "),
            ]
        })
        .collect();
    print_table(&rows);
}

/// Parses `gpu=1,mem_gb=20`.
fn parse_resources(text: Option<&str>) -> Result<BTreeMap<String, u32>, Failure> {
    let mut resources = BTreeMap::new();
    for item in text
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let parsed = item
            .split_once('=')
            .and_then(|(k, v)| Some((k.trim(), v.trim().parse::<u32>().ok()?)));
        match parsed {
            Some((name, amount)) if !name.is_empty() => {
                resources.insert(name.to_string(), amount);
            }
            _ => {
                return Err(Failure::Input(format!(
                    "error: invalid --resources `{item}`: expected NAME=N with N a whole number, e.g. gpu=1,mem_gb=20"
                )));
            }
        }
    }
    Ok(resources)
}

/// `flow run`.
pub fn run(args: RunArgs, store: &Store) -> Result<(), Failure> {
    let wf = load_workflow(&args.select.file, &args.select.set)?;
    let resources = parse_resources(args.resources.as_deref())?;
    let executor = parse_executor(args.executor.as_deref())?;
    let remote = parse_remote(args.remote.as_deref())?;
    let select = selection(&args.select);
    if args.dry_run {
        let planned = plan_nodes(&wf, store, &select, remote.as_ref())?;
        print_plan(&planned, args.select.json);
        return Ok(());
    }
    select.nodes(&wf)?;
    store.create()?;
    let ui = Arc::new(ProgressUi::new(args.select.json));
    let _lock = store.lock(!args.no_wait, &|message| ui.message(message))?;
    let options = RunOptions {
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        selection: select,
        keep_going: args.keep_going,
        resources,
        trigger: "manual".into(),
        executor,
        remote,
    };
    let runtime = runtime()?;
    let record = runtime.block_on(async {
        let cancel = CancellationToken::new();
        // Ctrl-C or SIGTERM cancels running nodes; the store stays consistent.
        let notice = ui.clone();
        cancel_on_signals(vec![cancel.clone()], move || {
            notice.message("cancelling: stopping running nodes…")
        });
        execute(Arc::new(wf), store.clone(), options, ui.clone(), cancel).await
    });
    let record = record.map_err(|e| match e {
        flow_engine::exec::RunError::Store(e) => Failure::from(e),
        other => Failure::Input(format!("error: {other}")),
    })?;
    ui.finish();
    report(&record, args.select.json)
}

/// Prints the run's summary (and the failed nodes' last log lines); decides the exit status.
fn report(record: &RunRecord, json: bool) -> Result<(), Failure> {
    if json {
        print_json(record);
    }
    let summary = format!("{} (flow show {})", record.summary(), record.id);
    let mut failures = String::new();
    for node in record
        .nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Failed)
    {
        failures.push_str(&format!(
            "error: node `{}` failed: {}\n",
            node.id,
            node.error.as_deref().unwrap_or("unknown error")
        ));
        if let Some(log) = &node.log {
            failures.push_str(&log_tail(log, 20));
            failures.push_str(&format!("  full log: {}\n", log.display()));
        }
    }
    match record.status {
        RunStatus::Succeeded => {
            eprintln!("{summary}");
            Ok(())
        }
        RunStatus::Cancelled => Err(Failure::Cancelled(format!("{failures}{summary}"))),
        _ => Err(Failure::Run(format!("{failures}{summary}"))),
    }
}

/// The last `n` lines of a log, indented.
fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("  | {l}\n"))
        .collect()
}
