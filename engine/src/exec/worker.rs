//! One node attempt as a unit of work that can run anywhere the store is: the spec the driver
//! writes ([`WorkerSpec`]: node type, resolved params, output and scratch directories, lineage,
//! remote state, log, limits), the attempt itself ([`run_attempt`]: the node with its timeout,
//! then its outputs committed to the store), and the result file the driver reads back
//! ([`WorkerResult`]: output digests, or why not). The local executor calls [`run_attempt`]
//! in-process; a Slurm job calls [`run_worker`] through `flow worker SPEC.json`.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::node::{
    DynNode, Lineage, LogSink, NoProgress, NodeContext, ProgressSink, Registry, Shard,
};
use crate::store::{CacheEntry, Store, read_json, write_json_atomic};

/// Everything one node attempt needs, as JSON (`flow worker SPEC.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// The node's id in the workflow.
    pub node_id: String,
    /// Its node type (`uses:`).
    pub node_type: String,
    /// Its params, every reference resolved (input artifacts as paths).
    pub params: Json,
    /// Output name → the directory to write it into (committed to the store afterwards).
    pub outputs: BTreeMap<String, PathBuf>,
    /// A scratch directory.
    pub work_dir: PathBuf,
    /// The directory that survives failed attempts of the same fingerprint.
    pub resume_dir: PathBuf,
    /// The store's root (outputs are committed there).
    pub store: PathBuf,
    /// The run's lineage.
    pub lineage: Lineage,
    /// The remote state in the node's cache key.
    pub remote_state: BTreeMap<String, String>,
    /// The node's log file (appended to).
    pub log: PathBuf,
    /// Environment variables whose values are masked in the log (the node's secrets).
    pub secrets: Vec<String>,
    /// The longest the node may run, in milliseconds (none: no limit here).
    pub timeout_ms: Option<u64>,
    /// Where the result goes ([`WorkerResult`]).
    pub result: PathBuf,
    /// The working directory relative paths in params are read against.
    pub cwd: PathBuf,
    /// The slice of a sharded node this attempt runs (`None`: all of it).
    #[serde(default)]
    pub shard: Option<Shard>,
    /// The node's cache key: `flow worker` writes the cache entry itself after a success, so a
    /// job that outlives its driver (`kill -9`, a lost login session) leaves its result cached
    /// for the next `flow run` (none for slices, which are not cached on their own).
    #[serde(default)]
    pub cache_key: Option<String>,
}

/// How an attempt ended, as the result file says.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Output name → artifact digest, committed to the store (empty unless it succeeded).
    pub outputs: BTreeMap<String, String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Whether it was cancelled.
    #[serde(default)]
    pub cancelled: bool,
}

impl WorkerResult {
    /// The result of an attempt.
    pub fn of(outcome: Result<BTreeMap<String, String>, AttemptError>) -> WorkerResult {
        match outcome {
            Ok(outputs) => WorkerResult {
                outputs,
                ..WorkerResult::default()
            },
            Err(AttemptError::Failed(message)) => WorkerResult {
                error: Some(message),
                ..WorkerResult::default()
            },
            Err(AttemptError::Cancelled) => WorkerResult {
                cancelled: true,
                ..WorkerResult::default()
            },
        }
    }

    /// The result file at `path`, if one was written.
    pub fn read(path: &Path) -> Option<WorkerResult> {
        read_json(path)
    }

    /// Whether the node succeeded.
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && !self.cancelled
    }
}

/// How one attempt ended, when not with success.
#[derive(Debug)]
pub enum AttemptError {
    /// It failed: why.
    Failed(String),
    /// It was cancelled.
    Cancelled,
}

/// Runs the node of `spec` in this process (its timeout, its cancellation), then commits its
/// outputs to the store; returns their digests.
pub async fn run_attempt(
    node_type: Arc<dyn DynNode>,
    spec: &WorkerSpec,
    log: LogSink,
    cancel: CancellationToken,
    progress: Arc<dyn ProgressSink>,
) -> Result<BTreeMap<String, String>, AttemptError> {
    let ctx = context(spec, log, cancel.clone(), progress);
    let running = node_type.run_json(ctx, spec.params.clone());
    within_limits(running, spec, cancel).await?;
    commit_outputs(&Store::at(&spec.store), &spec.outputs)
}

/// Merges the outputs of a sharded node's slices (`shards[i]`: output name → the directory
/// slice `i` committed) into the outputs of `spec`, in this process, then commits them.
pub async fn run_merge(
    node_type: Arc<dyn DynNode>,
    spec: &WorkerSpec,
    shards: Vec<BTreeMap<String, PathBuf>>,
    log: LogSink,
    cancel: CancellationToken,
    progress: Arc<dyn ProgressSink>,
) -> Result<BTreeMap<String, String>, AttemptError> {
    let ctx = context(spec, log, cancel.clone(), progress);
    let merging = node_type.merge_json(ctx, spec.params.clone(), shards);
    within_limits(merging, spec, cancel).await?;
    commit_outputs(&Store::at(&spec.store), &spec.outputs)
}

/// The node's view of the attempt `spec` describes.
fn context(
    spec: &WorkerSpec,
    log: LogSink,
    cancel: CancellationToken,
    progress: Arc<dyn ProgressSink>,
) -> NodeContext {
    let log = match spec.shard {
        Some(shard) => log.with_prefix(&format!("[shard {}/{}] ", shard.index, shard.count)),
        None => log,
    };
    NodeContext::new(
        &spec.node_id,
        spec.work_dir.clone(),
        spec.resume_dir.clone(),
        spec.outputs.clone(),
        log,
        cancel,
        progress,
    )
    .with_lineage(spec.lineage.clone())
    .with_cache_root(spec.store.join("node-cache"))
    .with_remote_state(spec.remote_state.clone())
    .with_shard(spec.shard)
}

/// Runs the node's future with the attempt's timeout and cancellation.
async fn within_limits(
    running: impl std::future::Future<Output = Result<(), crate::node::NodeError>>,
    spec: &WorkerSpec,
    cancel: CancellationToken,
) -> Result<(), AttemptError> {
    // Whatever ends the attempt (success, failure, timeout) also tells blocking work to stop.
    let _stop_on_exit = cancel.clone().drop_guard();
    let limit = spec.timeout_ms.map_or(Duration::MAX, Duration::from_millis);
    tokio::select! {
        // A node that noticed the cancellation itself and returned an error was cancelled too.
        result = running => result.map_err(|e| if cancel.is_cancelled() {
            AttemptError::Cancelled
        } else {
            AttemptError::Failed(e.message)
        }),
        _ = cancel.cancelled() => Err(AttemptError::Cancelled),
        _ = tokio::time::sleep(limit) => Err(AttemptError::Failed(format!("timed out after {}", humantime::format_duration(limit)))),
    }
}

fn commit_outputs(
    store: &Store,
    outputs: &BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<String, String>, AttemptError> {
    outputs
        .iter()
        .map(|(name, dir)| {
            let digest = store
                .commit_artifact(dir)
                .map_err(|e| AttemptError::Failed(e.to_string()))?;
            Ok((name.clone(), digest))
        })
        .collect()
}

/// `flow worker SPEC.json`: runs the attempt `spec_path` describes with a node type from
/// `registry`, writes its result file, and returns the result. `cancel` stops it (SIGTERM from
/// `scancel` or a time limit). An `Err` means not even the result file could be written.
pub async fn run_worker(
    registry: &Registry,
    spec_path: &Path,
    cancel: CancellationToken,
) -> Result<WorkerResult, String> {
    let text = std::fs::read(spec_path)
        .map_err(|e| format!("cannot read worker spec {}: {e}", spec_path.display()))?;
    let spec: WorkerSpec = serde_json::from_slice(&text)
        .map_err(|e| format!("invalid worker spec {}: {e}", spec_path.display()))?;
    let started = std::time::Instant::now();
    let outcome = attempt_from_spec(registry, &spec, cancel).await;
    if let (Ok(outputs), Some(key)) = (&outcome, &spec.cache_key) {
        let entry = CacheEntry::now(outputs.clone(), started.elapsed().as_millis() as u64);
        // The driver writes it too; this one only matters when the driver is gone.
        if let Err(e) = Store::at(&spec.store).put_cache_entry(key, &entry) {
            tracing::warn!("cannot write the cache entry of {key}: {e}");
        }
    }
    let result = WorkerResult::of(outcome);
    write_json_atomic(&spec.result, &result).map_err(|e| e.to_string())?;
    Ok(result)
}

async fn attempt_from_spec(
    registry: &Registry,
    spec: &WorkerSpec,
    cancel: CancellationToken,
) -> Result<BTreeMap<String, String>, AttemptError> {
    let failed = AttemptError::Failed;
    std::env::set_current_dir(&spec.cwd)
        .map_err(|e| failed(format!("cannot enter {}: {e}", spec.cwd.display())))?;
    let node_type = registry.get(&spec.node_type).cloned().ok_or_else(|| {
        failed(format!(
            "this flow binary has no node type `{}` (is the same flow installed on every node?)",
            spec.node_type
        ))
    })?;
    let secrets = spec
        .secrets
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .collect();
    let log = LogSink::create(&spec.log, secrets)
        .map_err(|e| failed(format!("cannot write log {}: {e}", spec.log.display())))?;
    let outcome = run_attempt(node_type, spec, log.clone(), cancel, Arc::new(NoProgress)).await;
    if let Err(AttemptError::Failed(message)) = &outcome {
        log.line(&format!("[flow worker] {message}"));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_and_say_whether_the_node_succeeded() {
        let ok = WorkerResult::of(Ok(BTreeMap::from([("out".into(), "abc".into())])));
        let failed = WorkerResult::of(Err(AttemptError::Failed("boom".into())));
        let cancelled = WorkerResult::of(Err(AttemptError::Cancelled));
        assert!(ok.succeeded() && !failed.succeeded() && !cancelled.succeeded());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("result.json");
        write_json_atomic(&path, &failed).unwrap();
        assert_eq!(WorkerResult::read(&path), Some(failed));
        assert_eq!(WorkerResult::read(&dir.path().join("none.json")), None);
    }
}
