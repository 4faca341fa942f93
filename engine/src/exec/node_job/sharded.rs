//! A sharded node's attempt ([`crate::node::Node::shards`]): its slices submitted together
//! (one Slurm job array, tasks at once in this process), each committing its own outputs; the
//! first slice that fails cancels the others; when all succeeded, the node's merge runs in this
//! process and writes the attempt's outputs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::{NodeJob, absolute};
use crate::exec::executor::{JobRequest, Watcher};
use crate::exec::worker::{AttemptError, WorkerResult, run_merge};
use crate::node::{LogSink, Shard};
use crate::store::record::NodeRecord;

impl NodeJob {
    /// A sharded attempt: its `count` slices submitted together (a job array on Slurm, tasks at
    /// once in this process), each committing its own outputs; when all succeeded, the node's
    /// merge in this process writes the outputs of `merge` (the attempt's own request).
    pub(super) async fn sharded(
        &self,
        merge: JobRequest,
        count: usize,
        watcher: &Arc<Watcher>,
        rec: &mut NodeRecord,
    ) -> Result<BTreeMap<String, String>, AttemptError> {
        let io = |e: std::io::Error| AttemptError::Failed(e.to_string());
        let mut requests = Vec::with_capacity(count);
        for index in 0..count {
            let dir = merge.attempt_dir.join(format!("shard-{index}"));
            let resume = merge.spec.resume_dir.join(format!("shard-{index}"));
            std::fs::create_dir_all(&resume).map_err(io)?;
            // Each slice's own token: an in-process slice stops its token when it ends.
            let stop = merge.cancel.child_token();
            let mut request = self.job_request(&dir, resume, &merge.log, stop)?;
            request.spec.shard = Some(Shard { index, count });
            requests.push(request);
        }
        let results: Vec<PathBuf> = requests.iter().map(|r| r.spec.result.clone()).collect();
        let executor = watcher.executor().clone();
        let jobs = executor
            .submit_array(requests)
            .await
            .map_err(AttemptError::Failed)?;
        if executor.has_job_ids() {
            tracing::info!(jobs = %jobs.join(","), executor = executor.kind().name(), "submitted {count} shards");
            rec.job_log = jobs.first().and_then(|job| executor.log(job));
            rec.job_id = Some(job_list(&jobs));
        }
        let slices = self
            .wait_for_shards(watcher, &jobs, &results, &merge.log)
            .await?;
        let store = &self.shared.store;
        let dirs = slices
            .iter()
            .map(|outputs| {
                outputs
                    .iter()
                    .map(|(name, digest)| (name.clone(), absolute(store.artifact_dir(digest))))
                    .collect()
            })
            .collect();
        merge
            .log
            .line(&format!("[flow] merging the outputs of {count} shards"));
        run_merge(
            merge.node_type,
            &merge.spec,
            dirs,
            merge.log,
            merge.cancel,
            merge.progress,
        )
        .await
    }

    /// Waits for every slice's job; returns each slice's outputs in slice order. The first
    /// slice that fails cancels the others and is the attempt's error.
    async fn wait_for_shards(
        &self,
        watcher: &Arc<Watcher>,
        jobs: &[String],
        results: &[PathBuf],
        log: &LogSink,
    ) -> Result<Vec<BTreeMap<String, String>>, AttemptError> {
        let cancel = self.shared.cancel.child_token();
        let mut waiting = tokio::task::JoinSet::new();
        for (index, job) in jobs.iter().enumerate() {
            let (watcher, job, cancel) = (watcher.clone(), job.clone(), cancel.clone());
            // The slices wait for the same reasons: the first one speaks for all.
            let pending = (index == 0)
                .then(|| self.pending_listener(&job, log))
                .flatten();
            waiting.spawn(async move {
                let end = watcher.wait_telling(&job, &cancel, pending).await;
                (index, end)
            });
        }
        let mut slices = vec![BTreeMap::new(); jobs.len()];
        let mut failure = None;
        while let Some(joined) = waiting.join_next().await {
            let (index, end) = joined
                .map_err(|e| AttemptError::Failed(format!("waiting for a shard failed: {e}")))?;
            let outcome = match end {
                Some(end) => self.outcome(end, WorkerResult::read(&results[index])),
                None => Err(AttemptError::Cancelled),
            };
            match outcome {
                Ok(outputs) => slices[index] = outputs,
                Err(error) if failure.is_none() => {
                    cancel.cancel();
                    failure = Some(match error {
                        AttemptError::Failed(message) => AttemptError::Failed(format!(
                            "shard {index} of {}: {message}",
                            jobs.len()
                        )),
                        cancelled => cancelled,
                    });
                }
                Err(_) => {}
            }
        }
        failure.map_or(Ok(slices), Err)
    }
}

/// The ids of a job array's tasks as Slurm writes them (`42_[0-7]`), else listed with commas.
fn job_list(jobs: &[String]) -> String {
    let array = jobs.first().and_then(|j| j.split_once('_')).map(|(a, _)| a);
    let in_order = array.is_some_and(|array| {
        jobs.iter()
            .enumerate()
            .all(|(i, job)| *job == format!("{array}_{i}"))
    });
    match array {
        Some(array) if in_order && jobs.len() > 1 => {
            format!("{array}_[0-{}]", jobs.len() - 1)
        }
        _ => jobs.join(","),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_job_arrays_tasks_are_written_as_slurm_writes_them() {
        let ids = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(super::job_list(&ids(&["42_0", "42_1", "42_2"])), "42_[0-2]");
        assert_eq!(super::job_list(&ids(&["42_0"])), "42_0");
        assert_eq!(
            super::job_list(&ids(&["local-1", "local-2"])),
            "local-1,local-2"
        );
    }
}
