//! Runs a validated workflow: independent nodes concurrently (tokio), each taken from the
//! cache when its fingerprint has a healthy entry, otherwise run with retries and a timeout,
//! its outputs committed to the store only when complete.

use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

use crate::fingerprint::{Fingerprint, Reason};
use crate::node::{Lineage, LogSink, NodeContext, Producer, ProgressSink};
use crate::plan::{Assessment, Selection, assess};
use crate::record::{NodeRecord, NodeStatus, RunRecord, RunStatus, new_run_id, now_rfc3339};
use crate::reference::{Reference, interpolate};
use crate::store::{CacheEntry, Store, StoreError};
use crate::validate::{ValidNode, ValidWorkflow, param_value};

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
}

/// Hears about the run as it goes (progress display, logs).
pub trait Observer: ProgressSink {
    /// The run record exists.
    fn run_started(&self, _record: &RunRecord) {}
    /// A node starts running (not called for cache hits).
    fn node_started(&self, _id: &str, _reasons: &[String]) {}
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
struct Shared {
    wf: Arc<ValidWorkflow>,
    store: Store,
    run_id: String,
    verify: bool,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
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
    let capacity = resource_capacity(&wf, &selected, &options.resources)?;
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
    record.save(&store)?;
    observer.run_started(&record);
    let shared = Arc::new(Shared {
        wf: wf.clone(),
        store: store.clone(),
        run_id: record.id.clone(),
        verify: options.selection.verify,
        observer,
        cancel,
    });
    let mut scheduler = Scheduler {
        shared,
        options,
        free: capacity,
        running: JoinSet::new(),
        stopped: None,
    };
    scheduler.drive(&mut record).await?;
    record.finished_at = Some(now_rfc3339());
    record.status = if scheduler.shared.cancel.is_cancelled() {
        RunStatus::Cancelled
    } else if record.nodes.iter().all(|n| n.status.is_done()) {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    record.save(&store)?;
    Ok(record)
}

/// Capacity per resource: given by `--resources`, else the largest single request.
fn resource_capacity(
    wf: &ValidWorkflow,
    selected: &BTreeSet<String>,
    given: &BTreeMap<String, u32>,
) -> Result<BTreeMap<String, u32>, RunError> {
    let mut capacity = given.clone();
    for node in wf.nodes.iter().filter(|n| selected.contains(&n.id)) {
        for (name, &amount) in &node.resources {
            match given.get(name) {
                Some(&have) if amount > have => {
                    return Err(RunError::Resources(format!(
                        "node `{}` needs {name}={amount} but the run has {name}={have} (set --resources {name}={amount})",
                        node.id
                    )));
                }
                Some(_) => {}
                None => {
                    let cap = capacity.entry(name.clone()).or_insert(0);
                    *cap = (*cap).max(amount);
                }
            }
        }
    }
    Ok(capacity)
}

struct Scheduler {
    shared: Arc<Shared>,
    options: RunOptions,
    free: BTreeMap<String, u32>,
    running: JoinSet<NodeRecord>,
    /// Set when the run stops starting nodes.
    stopped: Option<Stop>,
}

/// Why a run stops starting nodes.
enum Stop {
    /// Fail-fast after this node failed.
    Failed(String),
    /// Ctrl-C / SIGTERM.
    Cancelled,
}

impl Scheduler {
    async fn drive(&mut self, record: &mut RunRecord) -> Result<(), StoreError> {
        loop {
            self.start_ready(record);
            if self.running.is_empty() {
                break;
            }
            let finished = tokio::select! {
                Some(joined) = self.running.join_next() => joined,
                _ = self.shared.cancel.cancelled(), if self.stopped.is_none() => {
                    self.stopped = Some(Stop::Cancelled);
                    continue;
                }
            };
            let node = finished.unwrap_or_else(|e| panicked_node(&e));
            self.finish(record, node)?;
        }
        Ok(())
    }

    /// Starts every pending node whose upstream is done, within the job and resource limits;
    /// skips the ones that can never run.
    fn start_ready(&mut self, record: &mut RunRecord) {
        let wf = self.shared.wf.clone();
        for i in 0..record.nodes.len() {
            if record.nodes[i].status != NodeStatus::Pending {
                continue;
            }
            let node = wf
                .node(&record.nodes[i].id)
                .expect("record nodes come from the workflow");
            if let Some(reason) = self.blocker(record, node) {
                record.nodes[i].status = NodeStatus::Skipped;
                record.nodes[i].error = Some(reason);
                self.shared.observer.node_finished(&record.nodes[i]);
                continue;
            }
            let ready = node
                .upstream
                .iter()
                .all(|u| status_of(record, u).is_none_or(NodeStatus::is_done));
            if !ready || self.running.len() >= self.options.jobs.max(1) || !self.fits(node) {
                continue;
            }
            for (name, amount) in &node.resources {
                *self
                    .free
                    .get_mut(name)
                    .expect("capacity covers every request") -= amount;
            }
            record.nodes[i].status = NodeStatus::Running;
            let inputs = input_digests(record, node);
            let job = NodeJob {
                shared: self.shared.clone(),
                node: node.clone(),
                inputs,
                forced: self.options.selection.is_forced(&node.id),
                remote: BTreeMap::new(),
            };
            let span =
                tracing::info_span!("node", id = %node.id, node_type = node.node_type.type_name());
            self.running
                .spawn(tracing::Instrument::instrument(job.run(), span));
        }
    }

    /// Why a pending node can never run in this run, if so.
    fn blocker(&self, record: &RunRecord, node: &ValidNode) -> Option<String> {
        if let Some(failed) = node.upstream.iter().find(|u| {
            matches!(
                status_of(record, u),
                Some(NodeStatus::Failed | NodeStatus::Skipped | NodeStatus::Cancelled)
            )
        }) {
            return Some(format!("upstream node `{failed}` did not succeed"));
        }
        match &self.stopped {
            Some(Stop::Cancelled) => Some("the run was cancelled".into()),
            Some(Stop::Failed(failed)) => Some(format!(
                "the run stopped after `{failed}` failed (use --keep-going to continue)"
            )),
            None => None,
        }
    }

    fn fits(&self, node: &ValidNode) -> bool {
        node.resources
            .iter()
            .all(|(name, amount)| self.free.get(name).is_some_and(|free| free >= amount))
    }

    fn finish(&mut self, record: &mut RunRecord, node: NodeRecord) -> Result<(), StoreError> {
        if let Some(spec) = self.shared.wf.node(&node.id) {
            for (name, amount) in &spec.resources {
                *self
                    .free
                    .get_mut(name)
                    .expect("capacity covers every request") += amount;
            }
        }
        if node.status == NodeStatus::Failed && !self.options.keep_going && self.stopped.is_none() {
            self.stopped = Some(Stop::Failed(node.id.clone()));
        }
        self.shared.observer.node_finished(&node);
        if let Some(slot) = record.nodes.iter_mut().find(|n| n.id == node.id) {
            *slot = node;
        }
        record.save(&self.shared.store)
    }
}

fn status_of(record: &RunRecord, id: &str) -> Option<NodeStatus> {
    record.nodes.iter().find(|n| n.id == id).map(|n| n.status)
}

/// `NODE.OUTPUT` → digest for every output reference of `node`.
fn input_digests(record: &RunRecord, node: &ValidNode) -> BTreeMap<String, String> {
    let mut digests = BTreeMap::new();
    for reference in &node.references {
        if let Reference::Output { node: from, output } = reference
            && let Some(digest) = record
                .nodes
                .iter()
                .find(|n| &n.id == from)
                .and_then(|n| n.outputs.get(output))
        {
            digests.insert(format!("{from}.{output}"), digest.clone());
        }
    }
    digests
}

fn panicked_node(error: &tokio::task::JoinError) -> NodeRecord {
    let mut node = NodeRecord::pending("?", "?");
    node.status = NodeStatus::Failed;
    node.error = Some(format!("node task panicked: {error}"));
    node
}

/// One node to run.
struct NodeJob {
    shared: Arc<Shared>,
    node: ValidNode,
    inputs: BTreeMap<String, String>,
    forced: bool,
    /// The remote state in the node's cache key, once looked up.
    remote: BTreeMap<String, String>,
}

/// How one attempt ended, when not with success.
enum AttemptError {
    Failed(String),
    Cancelled,
}

impl NodeJob {
    async fn run(mut self) -> NodeRecord {
        let started = Instant::now();
        let mut rec = NodeRecord::pending(&self.node.id, self.node.node_type.type_name());
        rec.status = NodeStatus::Failed;
        let log_path = RunRecord::log_path(&self.shared.store, &self.shared.run_id, &self.node.id);
        rec.log = Some(log_path.clone());
        let wf = &self.shared.wf;
        let fp = match Fingerprint::compute(&self.node, &wf.params, &self.inputs) {
            Ok(fp) => fp,
            Err(errors) => {
                rec.error = Some(
                    crate::diagnostic::Diagnostics::new(&wf.file.path, &wf.file.source, errors)
                        .to_string(),
                );
                return rec;
            }
        };
        let key = fp.key();
        rec.key = Some(key.clone());
        let _only_one = key_lock(&key).lock_owned().await;
        let reasons = match assess(
            &self.shared.store,
            &wf.name,
            &self.node.id,
            &fp,
            self.forced,
            self.shared.verify,
        ) {
            Assessment::Cached(entry) => {
                tracing::info!(key = %key, "cache hit");
                rec.status = NodeStatus::Cached;
                rec.cache_hit = true;
                rec.outputs = entry.outputs;
                rec.log = None;
                rec.duration_ms = started.elapsed().as_millis() as u64;
                return rec;
            }
            Assessment::Run(reasons) => reasons,
        };
        rec.reasons = reasons.iter().map(Reason::to_string).collect();
        tracing::info!(reasons = %rec.reasons.join("; "), "running");
        self.shared
            .observer
            .node_started(&self.node.id, &rec.reasons);
        self.remote = fp.remote.clone();
        let outcome = self.run_with_retries(&key, &log_path, &mut rec).await;
        rec.duration_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Ok(outputs) => {
                rec.outputs = outputs;
                rec.status = NodeStatus::Succeeded;
                if let Err(e) = self.remember(&key, &fp, &rec) {
                    rec.status = NodeStatus::Failed;
                    rec.error = Some(e.to_string());
                }
            }
            Err(AttemptError::Cancelled) => rec.status = NodeStatus::Cancelled,
            Err(AttemptError::Failed(message)) => rec.error = Some(message),
        }
        tracing::info!(status = ?rec.status, duration_ms = rec.duration_ms, "finished");
        rec
    }

    /// Writes the cache entry and the node state after a success.
    fn remember(&self, key: &str, fp: &Fingerprint, rec: &NodeRecord) -> Result<(), StoreError> {
        let entry = CacheEntry {
            outputs: rec.outputs.clone(),
            duration_ms: rec.duration_ms,
            created: now_rfc3339(),
        };
        self.shared.store.put_cache_entry(key, &entry)?;
        self.shared
            .store
            .put_node_state(&self.shared.wf.name, &self.node.id, fp)
    }

    async fn run_with_retries(
        &self,
        key: &str,
        log_path: &std::path::Path,
        rec: &mut NodeRecord,
    ) -> Result<BTreeMap<String, String>, AttemptError> {
        let secrets = self.secret_values().map_err(AttemptError::Failed)?;
        let log = LogSink::create(log_path, secrets).map_err(|e| {
            AttemptError::Failed(format!("cannot write log {}: {e}", log_path.display()))
        })?;
        let attempts = self.node.retries + 1;
        for attempt in 1..=attempts {
            rec.attempts = attempt;
            match self.attempt(key, &log).await {
                Ok(outputs) => return Ok(outputs),
                Err(AttemptError::Failed(message)) if attempt < attempts => {
                    let message = log.mask(&message);
                    let delay = backoff(attempt);
                    log.line(&format!("[flow] attempt {attempt}/{attempts} failed: {message}; retrying in {delay:.1?}"));
                    self.shared
                        .observer
                        .node_retrying(&self.node.id, attempt, delay, &message);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shared.cancel.cancelled() => return Err(AttemptError::Cancelled),
                    }
                }
                Err(AttemptError::Failed(message)) => {
                    let message = log.mask(&message);
                    log.line(&format!("[flow] failed: {message}"));
                    return Err(AttemptError::Failed(message));
                }
                Err(cancelled) => return Err(cancelled),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Values of every `${secret.X}` the node uses (for masking); a missing one is an error.
    fn secret_values(&self) -> Result<Vec<String>, String> {
        self.node
            .references
            .iter()
            .filter_map(|r| match r {
                Reference::Secret(name) => Some(
                    std::env::var(name)
                        .map_err(|_| format!("secret `{name}` is not set (export {name}=…)")),
                ),
                _ => None,
            })
            .collect()
    }

    /// The node's params with every reference resolved for real: artifacts as paths.
    fn resolved_params(&self) -> Result<Json, String> {
        let wf = &self.shared.wf;
        let store = &self.shared.store;
        let inputs = &self.inputs;
        let mut resolve = |r: &Reference| -> Result<Json, String> {
            match r {
                Reference::Param { name, path } => param_value(&wf.params, name, path),
                Reference::Env(name) | Reference::Secret(name) => std::env::var(name)
                    .map(Json::String)
                    .map_err(|_| format!("`{name}` is not set in the environment")),
                Reference::Output { node, output } => inputs
                    .get(&format!("{node}.{output}"))
                    .map(|digest| {
                        Json::String(
                            absolute(store.artifact_dir(digest))
                                .to_string_lossy()
                                .to_string(),
                        )
                    })
                    .ok_or_else(|| format!("input {node}.{output} is not available")),
            }
        };
        match &self.node.with {
            Some(with) => interpolate(with, "with", &mut resolve).map_err(|errors| {
                errors
                    .iter()
                    .map(|d| d.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
            None => Ok(Json::Object(Default::default())),
        }
    }

    /// One attempt in a fresh temporary directory; outputs are committed only on success.
    async fn attempt(
        &self,
        key: &str,
        log: &LogSink,
    ) -> Result<BTreeMap<String, String>, AttemptError> {
        let failed = |e: StoreError| AttemptError::Failed(e.to_string());
        let tmp = self.shared.store.temp_dir(&self.node.id).map_err(failed)?;
        let resume = self.shared.store.resume_dir(key).map_err(failed)?;
        let result = self.attempt_in(&tmp, absolute(resume), log).await;
        let _ = std::fs::remove_dir_all(&tmp);
        if result.is_ok() {
            self.shared.store.remove_resume_dir(key).map_err(failed)?;
        }
        result
    }

    async fn attempt_in(
        &self,
        tmp: &std::path::Path,
        resume: PathBuf,
        log: &LogSink,
    ) -> Result<BTreeMap<String, String>, AttemptError> {
        let io = |e: std::io::Error| AttemptError::Failed(e.to_string());
        let mut outputs = BTreeMap::new();
        for spec in self.node.node_type.outputs() {
            let dir = absolute(tmp.join("out").join(spec.name));
            std::fs::create_dir_all(&dir).map_err(io)?;
            outputs.insert(spec.name.to_string(), dir);
        }
        let work = absolute(tmp.join("work"));
        std::fs::create_dir_all(&work).map_err(io)?;
        let params = self.resolved_params().map_err(AttemptError::Failed)?;
        let cancel = self.shared.cancel.child_token();
        // Whatever ends the attempt (success, failure, timeout) also tells blocking work to stop.
        let _stop_on_exit = cancel.clone().drop_guard();
        let progress: Arc<dyn ProgressSink> = self.shared.observer.clone();
        let ctx = NodeContext::new(
            &self.node.id,
            work,
            resume,
            outputs.clone(),
            log.clone(),
            cancel.clone(),
            progress,
        )
        .with_lineage(self.lineage())
        .with_cache_root(absolute(self.shared.store.root().join("node-cache")))
        .with_remote_state(self.remote.clone());
        let running = self.node.node_type.clone().run_json(ctx, params);
        let limit = self.node.timeout.unwrap_or(Duration::MAX);
        let outcome = tokio::select! {
            // A node that noticed the cancellation itself and returned an error was cancelled too.
            result = running => result.map_err(|e| if cancel.is_cancelled() {
                AttemptError::Cancelled
            } else {
                AttemptError::Failed(e.message)
            }),
            _ = cancel.cancelled() => Err(AttemptError::Cancelled),
            _ = tokio::time::sleep(limit) => Err(AttemptError::Failed(format!("timed out after {}", humantime::format_duration(limit)))),
        };
        outcome?;
        let mut digests = BTreeMap::new();
        for (name, dir) in outputs {
            let digest = self
                .shared
                .store
                .commit_artifact(&dir)
                .map_err(|e| AttemptError::Failed(e.to_string()))?;
            digests.insert(name, digest);
        }
        Ok(digests)
    }
}

impl NodeJob {
    fn lineage(&self) -> Lineage {
        let wf = &self.shared.wf;
        Lineage {
            workflow: wf.name.clone(),
            workflow_file: wf.file.path.clone(),
            workflow_source: wf.file.source.clone(),
            run_id: self.shared.run_id.clone(),
            inputs: self.inputs.clone(),
            producers: self.producers(),
        }
    }

    fn producers(&self) -> BTreeMap<String, Producer> {
        let wf = &self.shared.wf;
        let ids: std::collections::BTreeSet<&str> = self
            .inputs
            .keys()
            .filter_map(|input| input.split('.').next())
            .collect();
        wf.nodes
            .iter()
            .filter(|n| ids.contains(n.id.as_str()))
            .filter_map(|n| {
                let fp = Fingerprint::compute_local(n, &wf.params, &BTreeMap::new()).ok()?;
                let producer = Producer {
                    uses: fp.node_type,
                    with: fp.with,
                };
                Some((n.id.clone(), producer))
            })
            .collect()
    }
}

/// The in-process lock of one cache key. Runs of one process share the store (the scheduler's
/// do), so a node with a given key runs in one of them at a time; the other waits, then finds
/// the result in the cache.
fn key_lock(key: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::LazyLock<
        std::sync::Mutex<HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut locks = LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(lock) = locks.get(key).and_then(std::sync::Weak::upgrade) {
        return lock;
    }
    locks.retain(|_, lock| lock.strong_count() > 0);
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    locks.insert(key.to_string(), Arc::downgrade(&lock));
    lock
}

/// A node attempt's retry delay: 0.5 s, 1 s, 2 s, … capped at 60 s, with jitter.
fn backoff(attempt: u32) -> Duration {
    backoff_delay(Duration::from_millis(500), attempt, Duration::from_secs(60))
}

/// Exponential backoff with jitter, the one recipe flow retries with (node attempts, Hub
/// uploads, text APIs): `base`, 2·`base`, 4·`base`, … for attempt 1, 2, 3, …, capped at `cap`,
/// each multiplied by a random factor in [0.5, 1.5) so that retrying clients spread out.
pub fn backoff_delay(base: Duration, attempt: u32, cap: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20) as i32;
    let delay = (base.as_secs_f64() * 2f64.powi(doublings)).min(cap.as_secs_f64());
    Duration::from_secs_f64(delay * (0.5 + fastrand::f64()))
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// An observer that ignores everything.
pub struct SilentObserver;

impl ProgressSink for SilentObserver {
    fn progress(&self, _: &str, _: u64, _: u64) {}
}

impl Observer for SilentObserver {}
