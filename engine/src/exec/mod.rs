//! Runs a validated workflow (the `Run` step of `YAML → Workflow → Plan → Run → Artifacts`):
//! independent nodes concurrently (tokio), each taken from the cache when its fingerprint has a
//! healthy entry, otherwise run with retries and a timeout, its outputs committed to the store
//! only when complete.
//!
//! [`execute`] builds the run record and hands it to the dispatcher (`dispatch`: which node
//! starts when, within jobs and resources); each started node is a `NodeJob` (`node_job`: cache
//! lookup, attempts, retries, commit), whose attempts run as jobs of an [`executor`] (`local`:
//! in this process; `slurm`: batch jobs running `flow worker`, see [`worker`]); `retry` is the
//! backoff recipe. This room owns the run's order and its records; it does not decide what is
//! cached (that is [`crate::plan`]) nor how artifacts are stored ([`crate::store`]).

mod dispatch;
pub mod executor;
mod node_job;
mod retry;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

use crate::node::ProgressSink;
use crate::plan::Selection;
use crate::store::record::{NodeRecord, RunRecord, RunStatus, new_run_id, now_rfc3339};
use crate::store::{Store, StoreError};
use crate::workflow::executor::{ExecutorKind, choose};
use crate::workflow::validate::{ValidNode, ValidWorkflow};
use dispatch::{Dispatcher, resource_capacity};
use executor::Executors;
pub use retry::backoff_delay;

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Nodes running at once (at least 1).
    pub jobs: usize,
    /// What to consider and force.
    pub selection: Selection,
    /// On a failure, finish everything that does not depend on it.
    pub keep_going: bool,
    /// Resource capacities (`--resources gpu=1`); unnamed resources default to the largest single request.
    pub resources: BTreeMap<String, u32>,
    /// What started the run, for the record.
    pub trigger: String,
    /// `--executor` / `FLOW_EXECUTOR`: where nodes run unless a node says otherwise.
    pub executor: Option<ExecutorKind>,
    /// `--remote` / `FLOW_REMOTE`: the shared store looked up after the local cache misses and
    /// published to after a node runs.
    pub remote: Option<crate::store::remote::Remote>,
}

/// Hears about the run as it goes (progress display, logs).
pub trait Observer: ProgressSink {
    /// The run record exists.
    fn run_started(&self, _record: &RunRecord) {}
    /// A node starts running (not called for cache hits).
    fn node_started(&self, _id: &str, _reasons: &[String]) {}
    /// A node waits for another process that builds the same key (`why` says which).
    fn node_waiting(&self, _id: &str, _why: &str) {}
    /// A node attempt failed and will be retried after `delay`.
    fn node_retrying(&self, _id: &str, _attempt: u32, _delay: Duration, _error: &str) {}
    /// A node finished (any status).
    fn node_finished(&self, _record: &NodeRecord) {}
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `--only` / `--force` named unknown nodes.
    #[error("{0}")]
    Selection(#[from] crate::diagnostic::Diagnostics),
    /// A node requests more of a resource than the run has.
    #[error("{0}")]
    Resources(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything a node task needs, shared.
pub(crate) struct Shared {
    wf: Arc<ValidWorkflow>,
    store: Store,
    run_id: String,
    verify: bool,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
    executors: Executors,
    remote: Option<crate::store::remote::Remote>,
}

impl Shared {
    /// The resources of `node` flow holds tokens for while it runs.
    fn held(&self, node: &ValidNode) -> BTreeMap<String, u32> {
        self.executors.held(&node.id, &node.resources)
    }
}

/// Node id → the executor it runs on, for the selected nodes.
fn placement(
    wf: &ValidWorkflow,
    selected: &BTreeSet<String>,
    command_line: Option<ExecutorKind>,
) -> BTreeMap<String, ExecutorKind> {
    wf.nodes
        .iter()
        .filter(|n| selected.contains(&n.id))
        .map(|n| {
            let kind = choose(n.executor, command_line, wf.executor.default);
            (n.id.clone(), kind)
        })
        .collect()
}

/// Runs the workflow; the caller holds the store lock ([`Store::lock`]). Returns the final run
/// record.
pub async fn execute(
    wf: Arc<ValidWorkflow>,
    store: Store,
    options: RunOptions,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
) -> Result<RunRecord, RunError> {
    let selected = options.selection.nodes(&wf)?;
    let executors = Executors::start(placement(&wf, &selected, options.executor), &wf.executor);
    let capacity = resource_capacity(&wf, &selected, &options.resources, |n| {
        executors.held(&n.id, &n.resources)
    })?;
    let mut record = RunRecord {
        id: new_run_id(),
        workflow: wf.name.clone(),
        file: wf.file.path.clone(),
        trigger: if options.trigger.is_empty() {
            "manual".into()
        } else {
            options.trigger.clone()
        },
        started_at: now_rfc3339(),
        finished_at: None,
        status: RunStatus::Running,
        params: wf.params.clone(),
        nodes: wf
            .nodes
            .iter()
            .filter(|n| selected.contains(&n.id))
            .map(|n| NodeRecord::pending(&n.id, n.node_type.type_name()))
            .collect(),
    };
    save_record(&record, &store, options.remote.as_ref()).await?;
    observer.run_started(&record);
    let shared = Arc::new(Shared {
        wf: wf.clone(),
        store: store.clone(),
        run_id: record.id.clone(),
        verify: options.selection.verify,
        observer,
        cancel,
        executors,
        remote: options.remote.clone(),
    });
    let mut dispatcher = Dispatcher {
        shared,
        options,
        free: capacity,
        running: JoinSet::new(),
        stopped: None,
    };
    dispatcher.drive(&mut record).await?;
    record.finished_at = Some(now_rfc3339());
    record.status = if dispatcher.shared.cancel.is_cancelled() {
        RunStatus::Cancelled
    } else if record.nodes.iter().all(|n| n.status.is_done()) {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    save_record(&record, &store, dispatcher.shared.remote.as_ref()).await?;
    Ok(record)
}

/// Saves the run record in the store and, with `--remote`, in the shared store too (where
/// `flow gc --remote` reads what runs reference); a remote that cannot take it is a warning.
async fn save_record(
    record: &RunRecord,
    store: &Store,
    remote: Option<&crate::store::remote::Remote>,
) -> Result<(), StoreError> {
    record.save(store)?;
    if let Some(remote) = remote
        && let Err(e) = remote.publish_run(record).await
    {
        tracing::warn!("{e}");
    }
    Ok(())
}

/// An observer that ignores everything.
pub struct SilentObserver;

impl ProgressSink for SilentObserver {
    fn progress(&self, _: &str, _: u64, _: u64) {}
}

impl Observer for SilentObserver {}
