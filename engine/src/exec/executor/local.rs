//! The `local` executor (the default): a node attempt runs in this process, as a tokio task,
//! with the run's progress display, cancellation and the node's timeout. Its jobs are those
//! tasks; a job's result file is written when its task ends.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{BoxFuture, Executor, JobEnd, JobRequest, JobState};
use crate::exec::worker::{WorkerResult, run_attempt};
use crate::store::write_json_atomic;
use crate::workflow::executor::ExecutorKind;

/// Runs attempts in this process.
#[derive(Default)]
pub struct Local {
    next: AtomicU64,
    jobs: Mutex<HashMap<String, (JoinHandle<()>, CancellationToken)>>,
}

impl Local {
    fn take_finished(&self, jobs: &[String]) -> Vec<(String, JoinHandle<()>)> {
        let mut running = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let finished: Vec<&String> = jobs
            .iter()
            .filter(|job| running.get(*job).is_some_and(|(h, _)| h.is_finished()))
            .collect();
        finished
            .into_iter()
            .filter_map(|job| running.remove(job).map(|(h, _)| (job.clone(), h)))
            .collect()
    }
}

impl Executor for Local {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Local
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(10)
    }

    fn has_job_ids(&self) -> bool {
        false
    }

    fn submit(&self, request: JobRequest) -> BoxFuture<'_, Result<String, String>> {
        let id = format!("local-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let cancel = request.cancel.clone();
        let attempt = async move {
            let JobRequest {
                spec,
                node_type,
                log,
                progress,
                cancel,
                ..
            } = request;
            let outcome = run_attempt(node_type, &spec, log, cancel, progress).await;
            if let Err(e) = write_json_atomic(&spec.result, &WorkerResult::of(outcome)) {
                tracing::error!("cannot write the attempt's result: {e}");
            }
        };
        let handle = tokio::spawn(attempt.in_current_span());
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), (handle, cancel));
        Box::pin(async move { Ok(id) })
    }

    fn poll<'a>(
        &'a self,
        jobs: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeMap<String, JobState>, String>> {
        Box::pin(async move {
            let mut states = BTreeMap::new();
            for (job, handle) in self.take_finished(jobs) {
                let end = match handle.await {
                    Ok(()) => JobEnd::Exited,
                    Err(e) => JobEnd::Failed(format!("node task panicked: {e}")),
                };
                states.insert(job, JobState::Ended(end));
            }
            Ok(states)
        })
    }

    fn cancel<'a>(&'a self, job: &'a str) -> BoxFuture<'a, Result<(), String>> {
        if let Some((_, cancel)) = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).get(job) {
            cancel.cancel();
        }
        Box::pin(async { Ok(()) })
    }

    fn log(&self, _job: &str) -> Option<PathBuf> {
        None
    }
}
