//! Commands that read: `validate`, `nodes`, `graph`, `runs`, `show`, `schema`, `gc`.

use flow_engine::store::Store;
use flow_engine::store::record::RunRecord;
use flow_engine::store::remote::Remote;
use flow_engine::workflow::schema::{generate, markdown_reference, param_docs};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{Failure, load_workflow, print_json, print_table, runtime};
use crate::cli::GraphFormat;

/// `flow validate FILE…`: every error of every file, exit 2 if any.
pub fn validate_files(files: &[PathBuf]) -> Result<(), Failure> {
    let mut report = String::new();
    for file in files {
        match load_workflow(file, &[]) {
            Ok(wf) => println!("ok: {} ({} nodes)", file.display(), wf.nodes.len()),
            Err(failure) => report.push_str(&failure.message_with_newline()),
        }
    }
    if report.is_empty() {
        Ok(())
    } else {
        Err(Failure::Input(report))
    }
}

/// `flow nodes [TYPE]`.
pub fn nodes(node_type: Option<&str>, markdown: bool, json: bool) -> Result<(), Failure> {
    let registry = flow_nodes::library();
    if markdown {
        print!("{}", markdown_reference(&registry));
        return Ok(());
    }
    let Some(name) = node_type else {
        if json {
            let list: Vec<_> = registry
                .iter()
                .map(|n| serde_json::json!({"type": n.type_name(), "version": n.version(), "description": n.description(), "params": n.params_schema().to_value(), "outputs": n.outputs().iter().map(|o| o.name).collect::<Vec<_>>()}))
                .collect();
            print_json(&list);
        } else {
            let rows: Vec<Vec<String>> = registry
                .iter()
                .map(|n| vec![n.type_name().into(), first_sentence(n.description())])
                .collect();
            print_table(&rows);
        }
        return Ok(());
    };
    let node = registry.get(name).ok_or_else(|| {
        let hint = flow_engine::diagnostic::did_you_mean(name, registry.names())
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        Failure::Input(format!("error: unknown node type `{name}`{hint}"))
    })?;
    let schema = node.params_schema().to_value();
    if json {
        print_json(&schema);
        return Ok(());
    }
    println!(
        "{} (version {})\n\n{}\n\nparams:",
        node.type_name(),
        node.version(),
        node.description()
    );
    for p in param_docs(&schema) {
        let required = if p.required { "required" } else { "optional" };
        let default = p
            .default
            .map(|d| format!(", default {d}"))
            .unwrap_or_default();
        println!(
            "  {} ({}, {required}{default})\n      {}",
            p.name, p.kind, p.description
        );
    }
    println!("\noutputs:");
    for o in node.outputs() {
        println!("  {}: {}", o.name, o.description);
    }
    Ok(())
}

fn first_sentence(text: &str) -> String {
    text.split(". ")
        .next()
        .unwrap_or(text)
        .trim_end_matches('.')
        .to_string()
}

/// `flow graph FILE --format mermaid|dot`.
pub fn graph(file: &Path, format: GraphFormat, set: &[String]) -> Result<(), Failure> {
    let wf = load_workflow(file, set)?;
    let types = wf.type_names();
    print!(
        "{}",
        match format {
            GraphFormat::Mermaid => wf.dag.to_mermaid(&types),
            GraphFormat::Dot => wf.dag.to_dot(&types),
        }
    );
    Ok(())
}

/// `flow runs`.
pub fn runs(store: &Store, json: bool) -> Result<(), Failure> {
    let records = RunRecord::list(store);
    if json {
        print_json(&records);
        return Ok(());
    }
    let mut rows = vec![vec![
        "RUN".into(),
        "WORKFLOW".into(),
        "TRIGGER".into(),
        "STATUS".into(),
        "STARTED".into(),
        "NODES".into(),
    ]];
    for r in &records {
        let ran = r
            .nodes
            .iter()
            .filter(|n| !n.cache_hit && n.status.is_done())
            .count();
        let cached = r.nodes.iter().filter(|n| n.cache_hit).count();
        rows.push(vec![
            r.id.clone(),
            r.workflow.clone(),
            r.trigger.clone(),
            flow_engine::variant_name(&r.status),
            r.started_at.clone(),
            format!("{ran} ran, {cached} cached, {} total", r.nodes.len()),
        ]);
    }
    print_table(&rows);
    Ok(())
}

/// Finds a run by id, unique prefix, or `last`.
pub fn find_run(store: &Store, wanted: &str) -> Result<RunRecord, Failure> {
    let records = RunRecord::list(store);
    let matches: Vec<&RunRecord> = if wanted == "last" {
        records.last().into_iter().collect()
    } else {
        records
            .iter()
            .filter(|r| r.id.starts_with(wanted))
            .collect()
    };
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Failure::Input(format!(
            "error: no run `{wanted}` in store {} (`flow runs` lists them)",
            store.root().display()
        ))),
        many => Err(Failure::Input(format!(
            "error: `{wanted}` matches {} runs; give more of the id",
            many.len()
        ))),
    }
}

/// `flow show RUN`.
pub fn show(store: &Store, wanted: &str, json: bool) -> Result<(), Failure> {
    let record = find_run(store, wanted)?;
    if json {
        print_json(&record);
        return Ok(());
    }
    println!(
        "run {} of {} ({}), {}",
        record.id,
        record.workflow,
        record.file.display(),
        flow_engine::variant_name(&record.status)
    );
    println!(
        "started {}, finished {}, trigger {}",
        record.started_at,
        record.finished_at.as_deref().unwrap_or("-"),
        record.trigger
    );
    let mut rows = vec![vec![
        "NODE".into(),
        "TYPE".into(),
        "STATUS".into(),
        "CACHE".into(),
        "TIME".into(),
        "EXECUTOR".into(),
        "JOB".into(),
        "OUTPUTS".into(),
        "LOG".into(),
        "JOB LOG".into(),
    ]];
    for n in &record.nodes {
        let outputs: Vec<String> = n
            .outputs
            .iter()
            .map(|(k, d)| format!("{k}={}", &d[..12.min(d.len())]))
            .collect();
        rows.push(vec![
            n.id.clone(),
            n.node_type.clone(),
            flow_engine::variant_name(&n.status),
            if n.cache_hit {
                "hit".into()
            } else {
                "miss".into()
            },
            format!("{:.2}s", n.duration_ms as f64 / 1000.0),
            n.executor.clone().unwrap_or_else(|| "-".into()),
            n.job_id.clone().unwrap_or_else(|| "-".into()),
            outputs.join(" "),
            path_text(n.log.as_deref()),
            path_text(n.job_log.as_deref()),
        ]);
    }
    print_table(&rows);
    for n in record.nodes.iter().filter(|n| n.error.is_some()) {
        println!("{}: {}", n.id, n.error.as_deref().unwrap_or_default());
    }
    Ok(())
}

/// A path for a table cell, empty when none.
fn path_text(path: Option<&Path>) -> String {
    path.map(|p| p.display().to_string()).unwrap_or_default()
}

/// `flow schema [--check]`.
pub fn schema(dir: &Path, check: bool) -> Result<(), Failure> {
    let files = generate(&flow_nodes::library());
    if check {
        let stale: Vec<String> = files
            .iter()
            .filter(|(name, text)| {
                std::fs::read_to_string(dir.join(name)).ok().as_deref() != Some(text.as_str())
            })
            .map(|(name, _)| name.clone())
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        return Err(Failure::Run(format!(
            "error: stale schemas in {}: {} (run `flow schema`)",
            dir.display(),
            stale.join(", ")
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::Input(format!("error: cannot create {}: {e}", dir.display())))?;
    for (name, text) in files {
        let path = dir.join(&name);
        std::fs::write(&path, text)
            .map_err(|e| Failure::Run(format!("error: cannot write {}: {e}", path.display())))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// `flow gc`.
pub fn gc(store: &Store, dry_run: bool) -> Result<(), Failure> {
    if !store.exists() {
        println!("no store at {}", store.root().display());
        return Ok(());
    }
    let _lock = store.lock(true, &|m| eprintln!("{m}"))?;
    let report = store.gc(&RunRecord::referenced_digests(store), dry_run)?;
    let verb = if dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} {} artifacts ({} bytes), {} cache entries, {} temporary directories",
        report.artifacts, report.bytes, report.cache_entries, report.temp_dirs
    );
    Ok(())
}

/// `flow gc --remote URL`: collects the shared store, keeping what its run records and the
/// local store's reference, and everything younger than `grace`.
pub fn gc_remote(
    store: &Store,
    url: &str,
    grace: std::time::Duration,
    dry_run: bool,
) -> Result<(), Failure> {
    let remote = Remote::open(url).map_err(|e| Failure::Input(format!("error: --remote: {e}")))?;
    let local = if store.exists() {
        RunRecord::referenced_digests(store)
    } else {
        BTreeSet::new()
    };
    let report = runtime()?
        .block_on(remote.gc(&local, grace, dry_run))
        .map_err(|e| Failure::Run(format!("error: {e}")))?;
    let verb = if dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} from {url}: {} cache entries, {} artifacts, {} blobs ({} bytes), {} expired leases; kept {} unreferenced objects younger than {}",
        report.cache_entries,
        report.artifacts,
        report.blobs,
        report.bytes,
        report.leases,
        report.young,
        humantime::format_duration(grace)
    );
    Ok(())
}
