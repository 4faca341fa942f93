//! One node of a run: its fingerprint, the cache lookup ([`crate::plan::assess`]) and, with
//! `--remote`, the shared store's entry or lease; attempts with retries in fresh temporary
//! directories, each submitted as a job to the node's executor (a sharded node's slices as one
//! array of jobs, then merged) and done only when its result names outputs published in the
//! store; the cache entry after a success. The in-process lock of a cache key lives here too.

use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

mod sharded;
#[cfg(test)]
mod sharded_tests;

use super::executor::{JobEnd, JobRequest, PendingListener};
use super::retry::backoff;
use super::worker::{AttemptError, WorkerResult, WorkerSpec};
use super::{CancellationToken, Shared};
use crate::node::{Lineage, LogSink, Producer};
use crate::plan::fingerprint::{Fingerprint, Reason};
use crate::plan::{Assessment, assess};
use crate::store::record::{NodeRecord, NodeStatus, RunRecord};
use crate::store::remote::{Claim, Lease};
use crate::store::{ArtifactHealth, CacheEntry, StoreError};
use crate::workflow::reference::{Reference, interpolate};
use crate::workflow::validate::{ValidNode, param_value};

/// What claiming a key in the shared store gave.
enum Claimed {
    /// Build it (holding the key's lease, with `--remote`).
    Build(Option<Lease>),
    /// Another process published it; its outputs are in the local store.
    Published(CacheEntry),
    /// The run was cancelled while waiting.
    Cancelled,
}

/// This machine's name, for lease owners.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "an unnamed host".into())
}

/// One node to run.
pub(super) struct NodeJob {
    pub(super) shared: Arc<Shared>,
    pub(super) node: ValidNode,
    pub(super) inputs: BTreeMap<String, String>,
    pub(super) forced: bool,
    /// The remote state in the node's cache key, once looked up.
    pub(super) remote: BTreeMap<String, String>,
}

impl NodeJob {
    /// Runs the node (or takes it from the cache) and returns its record.
    pub(super) async fn run(mut self) -> NodeRecord {
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
                mark_cached(&mut rec, entry.outputs, started);
                return rec;
            }
            Assessment::Run(reasons) => reasons,
        };
        let lease = match self.claim(&key, &fp).await {
            Ok(Claimed::Build(lease)) => lease,
            Ok(Claimed::Published(entry)) => {
                tracing::info!(key = %key, "remote cache hit");
                mark_cached(&mut rec, entry.outputs, started);
                if let Err(e) = self
                    .shared
                    .store
                    .put_node_state(&wf.name, &self.node.id, &fp)
                {
                    rec.status = NodeStatus::Failed;
                    rec.error = Some(e.to_string());
                }
                return rec;
            }
            Ok(Claimed::Cancelled) => {
                rec.status = NodeStatus::Cancelled;
                rec.log = None;
                return rec;
            }
            Err(e) => {
                rec.error = Some(e.to_string());
                rec.log = None;
                rec.duration_ms = started.elapsed().as_millis() as u64;
                return rec;
            }
        };
        rec.reasons = reasons.iter().map(Reason::to_string).collect();
        tracing::info!(reasons = %rec.reasons.join("; "), "running");
        self.shared
            .observer
            .node_started(&self.node.id, &rec.reasons);
        self.remote = fp.remote.clone();
        rec.executor = self
            .shared
            .executors
            .kind_of(&self.node.id)
            .map(|kind| kind.name().to_string());
        let outcome = self.run_with_retries(&key, &log_path, &mut rec).await;
        rec.duration_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Ok(outputs) => {
                rec.outputs = outputs;
                rec.status = NodeStatus::Succeeded;
                if let Err(e) = self.publish(&key, &mut rec).await {
                    rec.status = NodeStatus::Failed;
                    rec.error = Some(e.to_string());
                } else if let Err(e) = self.remember(&key, &fp, &rec) {
                    rec.status = NodeStatus::Failed;
                    rec.error = Some(e.to_string());
                }
            }
            Err(AttemptError::Cancelled) => rec.status = NodeStatus::Cancelled,
            Err(AttemptError::Failed(message)) => rec.error = Some(message),
        }
        if let Some(lease) = lease {
            lease.release().await;
        }
        tracing::info!(status = ?rec.status, duration_ms = rec.duration_ms, "finished");
        rec
    }

    /// After the local cache missed, with `--remote`: the shared store's entry for `key`, its
    /// outputs now in the local store, or the key's lease (waiting while another process holds
    /// it). Nothing to claim without `--remote`, when forced, or while an input is pending.
    async fn claim(
        &self,
        key: &str,
        fp: &Fingerprint,
    ) -> Result<Claimed, crate::store::remote::RemoteError> {
        let remote = match &self.shared.remote {
            Some(remote) if !self.forced && !fp.has_pending_inputs() => remote,
            _ => return Ok(Claimed::Build(None)),
        };
        let owner = format!(
            "{} (pid {}, run {})",
            host_name(),
            std::process::id(),
            self.shared.run_id
        );
        let waiting = |why: &str| {
            tracing::info!(key = %key, "{why}");
            self.shared.observer.node_waiting(&self.node.id, why);
        };
        let claimed = remote
            .claim(
                key,
                &owner,
                &self.shared.store,
                &self.shared.cancel,
                &waiting,
            )
            .await?;
        Ok(match claimed {
            Some(Claim::Held(lease)) => Claimed::Build(Some(lease)),
            Some(Claim::Done(entry)) => Claimed::Published(entry),
            None => Claimed::Cancelled,
        })
    }

    /// Publishes a success to the shared store; when another publisher won the key, its
    /// outputs become this node's.
    async fn publish(
        &self,
        key: &str,
        rec: &mut NodeRecord,
    ) -> Result<(), crate::store::remote::RemoteError> {
        let Some(remote) = &self.shared.remote else {
            return Ok(());
        };
        let entry = CacheEntry::now(rec.outputs.clone(), rec.duration_ms);
        if let crate::store::remote::Published::Adopted(winner) = if self.forced {
            remote.replace(key, &entry, &self.shared.store).await?
        } else {
            remote.publish(key, &entry, &self.shared.store).await?
        } {
            tracing::info!(key = %key, "another publisher won the key; adopting its outputs");
            rec.outputs = winner.outputs;
        }
        Ok(())
    }

    /// Writes the cache entry and the node state after a success.
    fn remember(&self, key: &str, fp: &Fingerprint, rec: &NodeRecord) -> Result<(), StoreError> {
        let entry = CacheEntry::now(rec.outputs.clone(), rec.duration_ms);
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
            match self.attempt(key, &log, rec).await {
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
        rec: &mut NodeRecord,
    ) -> Result<BTreeMap<String, String>, AttemptError> {
        let failed = |e: StoreError| AttemptError::Failed(e.to_string());
        let tmp = self.shared.store.temp_dir(&self.node.id).map_err(failed)?;
        let resume = self.shared.store.resume_dir(key).map_err(failed)?;
        let result = self
            .attempt_in(key, &absolute(tmp.clone()), absolute(resume), log, rec)
            .await;
        let _ = std::fs::remove_dir_all(&tmp);
        if result.is_ok() {
            self.shared.store.remove_resume_dir(key).map_err(failed)?;
        }
        result
    }

    /// Submits the attempt to the node's executor and waits for its job; the node succeeded
    /// only when its result file names outputs that are in the store.
    async fn attempt_in(
        &self,
        key: &str,
        tmp: &Path,
        resume: PathBuf,
        log: &LogSink,
        rec: &mut NodeRecord,
    ) -> Result<BTreeMap<String, String>, AttemptError> {
        let watcher = self
            .shared
            .executors
            .for_node(&self.node.id)
            .ok_or_else(|| {
                AttemptError::Failed(format!("node `{}` has no executor", self.node.id))
            })?;
        let executor = watcher.executor().clone();
        (rec.job_id, rec.job_log) = (None, None);
        // An in-process job stops when this attempt does, even when its task is dropped.
        let stop = self.shared.cancel.child_token();
        let _stop_with_the_attempt = stop.clone().drop_guard();
        let mut request = self.job_request(tmp, resume, log, stop)?;
        let shards = self.node.node_type.shards(&request.spec.params);
        if shards > 1 {
            return self.sharded(request, shards, watcher, rec).await;
        }
        request.spec.cache_key = Some(key.to_string());
        let result_path = request.spec.result.clone();
        let job = executor
            .submit(request)
            .await
            .map_err(AttemptError::Failed)?;
        if executor.has_job_ids() {
            tracing::info!(job = %job, executor = executor.kind().name(), "submitted");
            rec.job_log = executor.log(&job);
            rec.job_id = Some(job.clone());
        }
        let end = watcher
            .wait_telling(&job, &self.shared.cancel, self.pending_listener(&job, log))
            .await
            .ok_or(AttemptError::Cancelled)?;
        self.outcome(end, WorkerResult::read(&result_path))
    }

    /// Tells the node's log and the run's observer why job `job` still waits to start
    /// (executors with job ids only: an in-process job never waits).
    fn pending_listener(&self, job: &str, log: &LogSink) -> Option<PendingListener> {
        let executor = self.shared.executors.for_node(&self.node.id)?.executor();
        if !executor.has_job_ids() {
            return None;
        }
        let why = format!("{} job {job} waits to start", executor.kind().name());
        let (observer, id, log) = (
            self.shared.observer.clone(),
            self.node.id.clone(),
            log.clone(),
        );
        Some(Arc::new(move |reason: &str| {
            let why = format!("{why}: {reason}");
            log.line(&format!("[flow] {why}"));
            observer.node_waiting(&id, &why);
        }))
    }

    /// How the attempt went: what the executor says of its job, and the result file.
    fn outcome(
        &self,
        end: JobEnd,
        result: Option<WorkerResult>,
    ) -> Result<BTreeMap<String, String>, AttemptError> {
        let error = result.as_ref().and_then(|r| r.error.clone());
        match (end, result) {
            (JobEnd::Failed(job), _) => Err(AttemptError::Failed(match error {
                Some(error) => format!("{error}; {job}"),
                None => job,
            })),
            (JobEnd::Exited, None) => Err(AttemptError::Failed(
                "the job ended without writing its result".into(),
            )),
            (JobEnd::Exited, Some(r)) if r.cancelled => Err(AttemptError::Cancelled),
            (JobEnd::Exited, Some(r)) => match r.error {
                Some(error) => Err(AttemptError::Failed(error)),
                None => self.published(r.outputs),
            },
        }
    }

    /// The outputs, once each is checked to be in the store.
    fn published(
        &self,
        outputs: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, AttemptError> {
        let store = &self.shared.store;
        for (name, digest) in &outputs {
            if store.check_artifact(digest, false) != ArtifactHealth::Healthy {
                return Err(AttemptError::Failed(format!(
                    "output `{name}` ({digest}) is not in the store {}",
                    store.root().display()
                )));
            }
        }
        let declared = self.node.node_type.outputs().len();
        if outputs.len() != declared {
            return Err(AttemptError::Failed(format!(
                "the job published {} of {declared} outputs",
                outputs.len()
            )));
        }
        Ok(outputs)
    }

    /// The attempt as a job: output and scratch directories in `tmp`, the worker spec.
    fn job_request(
        &self,
        tmp: &Path,
        resume: PathBuf,
        log: &LogSink,
        cancel: CancellationToken,
    ) -> Result<JobRequest, AttemptError> {
        let io = |e: std::io::Error| AttemptError::Failed(e.to_string());
        let mut outputs = BTreeMap::new();
        for spec in self.node.node_type.outputs() {
            let dir = tmp.join("out").join(spec.name);
            std::fs::create_dir_all(&dir).map_err(io)?;
            outputs.insert(spec.name.to_string(), dir);
        }
        let work = tmp.join("work");
        std::fs::create_dir_all(&work).map_err(io)?;
        let shared = &self.shared;
        let spec = WorkerSpec {
            node_id: self.node.id.clone(),
            node_type: self.node.node_type.type_name().to_string(),
            params: self.resolved_params().map_err(AttemptError::Failed)?,
            outputs,
            work_dir: work,
            resume_dir: resume,
            store: absolute(shared.store.root().to_path_buf()),
            lineage: self.lineage(),
            remote_state: self.remote.clone(),
            log: absolute(RunRecord::log_path(
                &shared.store,
                &shared.run_id,
                &self.node.id,
            )),
            secrets: self.secret_names(),
            timeout_ms: self.node.timeout.map(|t| t.as_millis() as u64),
            result: tmp.join("result.json"),
            cwd: std::env::current_dir().map_err(io)?,
            shard: None,
            cache_key: None,
        };
        Ok(JobRequest {
            spec,
            node_type: self.node.node_type.clone(),
            workflow: shared.wf.name.clone(),
            run_id: shared.run_id.clone(),
            store: shared.store.clone(),
            attempt_dir: tmp.to_path_buf(),
            resources: self.node.resources.clone(),
            timeout: self.node.timeout,
            log: log.clone(),
            progress: shared.observer.clone(),
            cancel,
        })
    }

    /// The names of every `${secret.X}` the node uses.
    fn secret_names(&self) -> Vec<String> {
        self.node
            .references
            .iter()
            .filter_map(|r| match r {
                Reference::Secret(name) => Some(name.clone()),
                _ => None,
            })
            .collect()
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

/// Records a cache hit (local or remote): the cached outputs, no log, the time the lookup took.
fn mark_cached(rec: &mut NodeRecord, outputs: BTreeMap<String, String>, started: Instant) {
    rec.status = NodeStatus::Cached;
    rec.cache_hit = true;
    rec.outputs = outputs;
    rec.log = None;
    rec.duration_ms = started.elapsed().as_millis() as u64;
}

pub(super) fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}
