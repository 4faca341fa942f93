//! What each subcommand does.

mod bench;
mod exec;
mod inspect;
mod report;
mod run;
mod schedule;
mod worker;

use flow_engine::diagnostic::Diagnostics;
use flow_engine::store::{Store, StoreError};
use flow_engine::workflow::WorkflowFile;
use flow_engine::workflow::validate::{ValidWorkflow, validate};
use std::path::Path;
use std::process::ExitCode;

use crate::cli::{Command, CronCommand};

/// The async runtime the commands that run nodes or talk to a remote block on.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Run(format!("error: cannot start the async runtime: {e}")))
}

/// How a command failed; decides the exit status.
#[derive(Debug)]
pub enum Failure {
    /// Bad input (workflow, flags, store path): exit 2, nothing was run or written.
    Input(String),
    /// The work itself failed (a node, the store): exit 1.
    Run(String),
    /// Cancelled by Ctrl-C / SIGTERM: exit 130.
    Cancelled(String),
}

impl Failure {
    /// The process exit status.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Failure::Input(_) => 2,
            Failure::Run(_) => 1,
            Failure::Cancelled(_) => 130,
        })
    }

    /// The message, ending in a newline.
    pub fn message_with_newline(&self) -> String {
        let (Failure::Input(m) | Failure::Run(m) | Failure::Cancelled(m)) = self;
        if m.ends_with('\n') {
            m.clone()
        } else {
            format!("{m}\n")
        }
    }
}

impl From<Diagnostics> for Failure {
    fn from(d: Diagnostics) -> Self {
        Failure::Input(d.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotWritable { .. } => Failure::Input(format!("error: {e}")),
            other => Failure::Run(format!("error: {other}")),
        }
    }
}

/// Runs a subcommand.
pub fn dispatch(command: Command, store: &Store) -> Result<(), Failure> {
    match command {
        Command::Run(args) => run::run(args, store),
        Command::Plan(args) => run::plan(args, store),
        Command::Exec(args) => exec::exec(args),
        Command::Validate { files } => inspect::validate_files(&files),
        Command::Nodes {
            node_type,
            markdown,
            json,
        } => inspect::nodes(node_type.as_deref(), markdown, json),
        Command::Graph { file, format, set } => inspect::graph(&file, format, &set),
        Command::Runs { json } => inspect::runs(store, json),
        Command::Show { run, json } => inspect::show(store, &run, json),
        Command::Report { run, open } => report::report(store, &run, open),
        Command::Compare { a, b, json } => report::compare(store, &a, &b, json),
        Command::Schema { dir, check } => inspect::schema(&dir, check),
        Command::Gc {
            dry_run,
            remote: None,
            ..
        } => inspect::gc(store, dry_run),
        Command::Gc {
            dry_run,
            remote: Some(url),
            grace,
        } => inspect::gc_remote(store, &url, grace, dry_run),
        Command::Worker { spec } => worker::worker(&spec),
        Command::Bench { what } => bench::bench(what),
        Command::Schedule(args) => schedule::schedule(args, store),
        Command::Cron {
            command: CronCommand::Print { file },
        } => schedule::cron_print(&file, store),
    }
}

/// Cancels `tokens` in order, one per Ctrl-C or SIGTERM received, calling `notice` just before
/// each (call within the tokio runtime).
pub fn cancel_on_signals(
    tokens: Vec<flow_engine::exec::CancellationToken>,
    notice: impl Fn() + Send + 'static,
) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        for token in tokens {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            notice();
            token.cancel();
        }
    });
}

/// Loads and validates a workflow file against the node library.
pub fn load_workflow(file: &Path, overrides: &[String]) -> Result<ValidWorkflow, Failure> {
    let parsed = WorkflowFile::load(file)?;
    Ok(validate(parsed, &flow_nodes::library(), overrides)?)
}

/// Prints JSON to stdout.
pub fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("plain data serializes")
    );
}

/// Prints rows as left-aligned columns.
pub fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c + 1 == row.len() {
                    s.clone()
                } else {
                    format!("{s:<w$}", w = widths[c])
                }
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}
