//! Executors: where a node attempt runs. An [`Executor`] submits one attempt as a job, polls
//! many jobs in one call, cancels a job and knows its log; `local` runs the attempt in this
//! process (the default), `slurm` as a batch job running `flow worker`. This room also owns the
//! per-run set of executors ([`Executors`]) and the watcher that polls each executor's jobs in
//! flight on one timer and wakes the attempts waiting for them.
//!
//! Adding an executor: a file here implementing [`Executor`], its name in
//! [`ExecutorKind`](crate::workflow::executor::ExecutorKind), and its arm in [`build`].

mod local;
mod slurm;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::worker::WorkerSpec;
use crate::node::{DynNode, LogSink, ProgressSink};
use crate::store::Store;
use crate::workflow::executor::{ExecutorConfig, ExecutorKind};

/// A boxed future, as executors return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One node attempt to run as a job.
pub struct JobRequest {
    /// What the attempt runs (written to a file for out-of-process executors).
    pub spec: WorkerSpec,
    /// The node type, for executors that run in this process.
    pub node_type: Arc<dyn DynNode>,
    /// The workflow's name (for job names).
    pub workflow: String,
    /// The run's id (for job log paths).
    pub run_id: String,
    /// The store.
    pub store: Store,
    /// A directory of this attempt's own, for job files.
    pub attempt_dir: PathBuf,
    /// The node's `resources:`.
    pub resources: BTreeMap<String, u32>,
    /// The node's `timeout`.
    pub timeout: Option<Duration>,
    /// The node's log, for in-process executors.
    pub log: LogSink,
    /// Progress reports, for in-process executors.
    pub progress: Arc<dyn ProgressSink>,
    /// Fires when the attempt must stop, for in-process executors (others get [`Executor::cancel`]).
    pub cancel: CancellationToken,
}

/// A job's state, as [`Executor::poll`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Waiting to start (why, when the executor says).
    Pending(String),
    /// Running.
    Running,
    /// Over.
    Ended(JobEnd),
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobEnd {
    /// It ran to its end; the attempt's result file says how the node went.
    Exited,
    /// The executor ended it or it died: what happened, with the job id and its log.
    Failed(String),
}

/// Where node attempts run.
pub trait Executor: Send + Sync {
    /// Which executor this is.
    fn kind(&self) -> ExecutorKind;
    /// How often [`Executor::poll`] is called while jobs are in flight.
    fn poll_interval(&self) -> Duration;
    /// Whether the executor schedules resource `name` itself (flow then holds no tokens of it).
    fn schedules(&self, _resource: &str) -> bool {
        false
    }
    /// Whether its job ids mean something outside flow (they go into run records).
    fn has_job_ids(&self) -> bool {
        true
    }
    /// Submits one attempt as a job; returns its id, or why it could not be submitted.
    fn submit(&self, request: JobRequest) -> BoxFuture<'_, Result<String, String>>;
    /// Submits the slices of a sharded attempt (`requests[i]` runs slice `i`) as jobs that may
    /// run at once; returns their ids in slice order. By default one [`Executor::submit`] each
    /// (the jobs already submitted are cancelled when one cannot be); Slurm makes a job array.
    fn submit_array(
        &self,
        requests: Vec<JobRequest>,
    ) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            let mut jobs = Vec::new();
            for request in requests {
                match self.submit(request).await {
                    Ok(job) => jobs.push(job),
                    Err(message) => {
                        for job in &jobs {
                            let _ = self.cancel(job).await;
                        }
                        return Err(message);
                    }
                }
            }
            Ok(jobs)
        })
    }
    /// The states of many jobs, in one call; a job left out is still in flight.
    fn poll<'a>(
        &'a self,
        jobs: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeMap<String, JobState>, String>>;
    /// Cancels a job.
    fn cancel<'a>(&'a self, job: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// The job's own output file, when it has one.
    fn log(&self, job: &str) -> Option<PathBuf>;
}

/// The executor of a kind, with the workflow's settings: the one place that names them all.
pub fn build(kind: ExecutorKind, config: &ExecutorConfig) -> Arc<dyn Executor> {
    match kind {
        ExecutorKind::Local => Arc::new(local::Local::default()),
        ExecutorKind::Slurm => Arc::new(slurm::Slurm::new(config.slurm.clone())),
    }
}

/// Polls one executor's jobs in flight on one timer and wakes the attempts waiting for them.
pub struct Watcher {
    executor: Arc<dyn Executor>,
    waiting: Mutex<HashMap<String, Waiter>>,
    wake: Notify,
}

/// Hears why a job still waits to start (the executor's reason, as `Resources` or `Priority`).
pub type PendingListener = Arc<dyn Fn(&str) + Send + Sync>;

/// One attempt waiting for its job.
struct Waiter {
    ended: oneshot::Sender<JobEnd>,
    pending: Option<PendingListener>,
    /// The last pending reason told to `pending`.
    told: String,
}

/// Polls that may fail in a row (a Slurm controller restarting) before the jobs count as lost.
const POLL_FAILURES_TOLERATED: u32 = 30;

impl Watcher {
    /// A watcher of `executor`'s jobs; its timer stops when the watcher is dropped.
    pub fn start(executor: Arc<dyn Executor>) -> Arc<Watcher> {
        let watcher = Arc::new(Watcher {
            executor,
            waiting: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        });
        tokio::spawn(Self::watch(Arc::downgrade(&watcher)));
        watcher
    }

    /// The executor watched.
    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.executor
    }

    async fn watch(me: Weak<Watcher>) {
        let mut failures = 0;
        loop {
            let Some(watcher) = me.upgrade() else { return };
            if watcher.in_flight().is_empty() {
                // Woken by a new job; the timeout lets the loop notice a dropped watcher.
                tokio::select! {
                    _ = watcher.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let interval = watcher.executor.poll_interval();
            drop(watcher);
            tokio::time::sleep(interval).await;
            let Some(watcher) = me.upgrade() else { return };
            failures = watcher.poll_once(failures).await;
        }
    }

    fn in_flight(&self) -> Vec<String> {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.keys().cloned().collect()
    }

    /// One poll of every job in flight; returns the count of failed polls in a row.
    async fn poll_once(&self, failures: u32) -> u32 {
        let jobs = self.in_flight();
        if jobs.is_empty() {
            return 0;
        }
        match self.executor.poll(&jobs).await {
            Ok(states) => {
                for (job, state) in states {
                    match state {
                        JobState::Ended(end) => self.deliver(&job, end),
                        JobState::Pending(reason) => self.tell_pending(&job, reason),
                        JobState::Running => {}
                    }
                }
                0
            }
            Err(message) if failures + 1 >= POLL_FAILURES_TOLERATED => {
                for job in jobs {
                    self.deliver(&job, JobEnd::Failed(format!("job {job} lost: {message}")));
                }
                0
            }
            Err(message) => {
                tracing::warn!(executor = self.executor.kind().name(), "{message}");
                failures + 1
            }
        }
    }

    fn deliver(&self, job: &str, end: JobEnd) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiter) = waiting.remove(job) {
            let _ = waiter.ended.send(end);
        }
    }

    /// Tells the job's listener why it still waits, when the reason changed (`None`: none).
    fn tell_pending(&self, job: &str, reason: String) {
        let listener = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let Some(waiter) = waiting.get_mut(job) else {
                return;
            };
            if reason.is_empty() || reason == "None" || reason == waiter.told {
                return;
            }
            waiter.told = reason.clone();
            waiter.pending.clone()
        };
        if let Some(listener) = listener {
            listener(&reason);
        }
    }

    /// Waits for `job` to end. When `cancel` fires first, the job is cancelled and waited for
    /// a little longer (so it stops writing before its directory goes); `None` then.
    pub async fn wait(&self, job: &str, cancel: &CancellationToken) -> Option<JobEnd> {
        self.wait_telling(job, cancel, None).await
    }

    /// [`Watcher::wait`], telling `pending` each new reason the job still waits to start for.
    pub async fn wait_telling(
        &self,
        job: &str,
        cancel: &CancellationToken,
        pending: Option<PendingListener>,
    ) -> Option<JobEnd> {
        let (sender, mut receiver) = oneshot::channel();
        let waiter = Waiter {
            ended: sender,
            pending,
            told: String::new(),
        };
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job.to_string(), waiter);
        self.wake.notify_one();
        let lost = || JobEnd::Failed(format!("job {job}: its watcher stopped"));
        tokio::select! {
            end = &mut receiver => return Some(end.unwrap_or_else(|_| lost())),
            _ = cancel.cancelled() => {}
        }
        if let Err(message) = self.executor.cancel(job).await {
            tracing::warn!("cannot cancel job {job}: {message}");
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), receiver).await;
        None
    }
}

/// The executors one run uses, each with its watcher, and which node runs on which.
pub struct Executors {
    watchers: BTreeMap<ExecutorKind, Arc<Watcher>>,
    placement: BTreeMap<String, ExecutorKind>,
}

impl Executors {
    /// Builds the executors of `placement` (node id → executor) with the workflow's settings.
    pub fn start(placement: BTreeMap<String, ExecutorKind>, config: &ExecutorConfig) -> Executors {
        let kinds: BTreeSet<ExecutorKind> = placement.values().copied().collect();
        let watchers = kinds
            .into_iter()
            .map(|kind| (kind, Watcher::start(build(kind, config))))
            .collect();
        Executors {
            watchers,
            placement,
        }
    }

    /// The executor node `node` runs on.
    pub fn kind_of(&self, node: &str) -> Option<ExecutorKind> {
        self.placement.get(node).copied()
    }

    /// The watcher of the executor node `node` runs on.
    pub fn for_node(&self, node: &str) -> Option<&Arc<Watcher>> {
        self.placement
            .get(node)
            .and_then(|kind| self.watchers.get(kind))
    }

    /// The resources of `node` that flow holds tokens for (not those its executor schedules).
    pub fn held(&self, node: &str, resources: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
        let executor = self.for_node(node).map(|w| w.executor().clone());
        resources
            .iter()
            .filter(|(name, _)| executor.as_ref().is_none_or(|e| !e.schedules(name)))
            .map(|(name, amount)| (name.clone(), *amount))
            .collect()
    }
}
