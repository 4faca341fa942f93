//! The `slurm` executor: each node attempt is a batch job (`sbatch --parsable`) whose script
//! runs `flow worker SPEC.json` with this very binary; jobs in flight are polled with one
//! `squeue --states=all` call (a job squeue no longer lists is asked of `scontrol show job -o`),
//! cancelled with `scancel`, and write their output to `logs/<node>.slurm-<id>.log` in the run's
//! directory. Slurm's CLI only: no library, no REST API. What the commands print is read in
//! [`parse`]; the `sbatch` command line is built in `sbatch`.

pub mod parse;
mod sbatch;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::{BoxFuture, Executor, JobEnd, JobRequest, JobState};
use crate::store::record::RunRecord;
use crate::workflow::executor::{ExecutorKind, SlurmSettings};
use parse::SlurmState;
use sbatch::{JobShape, SCHEDULED, array_script, batch_script, job_name, sbatch_args};

/// How long one Slurm command may take before the call counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Submits attempts as Slurm batch jobs.
pub struct Slurm {
    settings: SlurmSettings,
    jobs: Mutex<HashMap<String, Submitted>>,
}

/// A job this executor submitted.
struct Submitted {
    log: PathBuf,
    result: PathBuf,
}

impl Slurm {
    /// The executor with the workflow's Slurm settings.
    pub fn new(settings: SlurmSettings) -> Slurm {
        Slurm {
            settings,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    async fn submit_job(&self, request: JobRequest) -> Result<String, String> {
        let spec = write_spec(&request)?;
        let script = request.attempt_dir.join("job.sh");
        write_script(
            &script,
            &batch_script(&flow_binary()?, &spec, &what(&request)),
        )?;
        let job = self.sbatch(&request, &script, None).await?;
        self.remember(&request, &job);
        Ok(job)
    }

    /// One `sbatch --array=0-(N-1)` whose task `i` runs `requests[i]`; ids `ARRAY_i`.
    async fn submit_job_array(&self, requests: Vec<JobRequest>) -> Result<Vec<String>, String> {
        let Some(first) = requests.first() else {
            return Ok(Vec::new());
        };
        let specs = requests
            .iter()
            .map(write_spec)
            .collect::<Result<Vec<_>, _>>()?;
        let script = first.attempt_dir.join("array.sh");
        write_script(
            &script,
            &array_script(&flow_binary()?, &specs, &what(first)),
        )?;
        let array = self.sbatch(first, &script, Some(requests.len())).await?;
        let jobs: Vec<String> = (0..requests.len())
            .map(|i| format!("{array}_{i}"))
            .collect();
        for (request, job) in requests.iter().zip(&jobs) {
            self.remember(request, job);
        }
        Ok(jobs)
    }

    /// Runs `sbatch` for `script` with the request's shape (an array of `tasks` when given);
    /// returns the job id.
    async fn sbatch(
        &self,
        request: &JobRequest,
        script: &Path,
        tasks: Option<usize>,
    ) -> Result<String, String> {
        let pattern = if tasks.is_some() { "%A_%a" } else { "%j" };
        let output = self.log_path(request, pattern);
        if let Some(dir) = output.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let shape = JobShape {
            name: job_name(&request.workflow, &request.spec.node_id),
            output: &output,
            chdir: &request.spec.cwd,
            resources: &request.resources,
            timeout: request.timeout,
            array_tasks: tasks,
        };
        let mut args = sbatch_args(&self.settings, &shape);
        args.push(script.to_string_lossy().to_string());
        let out = slurm_command("sbatch", &args).await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match parse::sbatch_job_id(&stdout) {
            Some(job) if out.status.success() => Ok(job),
            _ => Err(format!("sbatch failed: {}", said(&out))),
        }
    }

    /// The log file of `request`'s job `job` (or an sbatch filename pattern).
    fn log_path(&self, request: &JobRequest, job: &str) -> PathBuf {
        let path = RunRecord::job_log_path(
            &request.store,
            &request.run_id,
            &request.spec.node_id,
            "slurm",
            job,
        );
        std::path::absolute(&path).unwrap_or(path)
    }

    fn remember(&self, request: &JobRequest, job: &str) {
        let submitted = Submitted {
            log: self.log_path(request, job),
            result: request.spec.result.clone(),
        };
        self.jobs_lock().insert(job.to_string(), submitted);
    }

    fn jobs_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Submitted>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log_text(&self, job: &str) -> String {
        self.log(job)
            .map_or_else(|| "no log".to_string(), |l| format!("log: {}", l.display()))
    }

    /// flow's view of a state Slurm reported.
    fn job_state(&self, job: &str, state: SlurmState, reason: String) -> JobState {
        match state {
            SlurmState::Pending => JobState::Pending(match parse::pending_hint(&reason) {
                Some(hint) => format!("{reason} ({hint})"),
                None => reason,
            }),
            SlurmState::Active(_) => JobState::Running,
            SlurmState::Completed => JobState::Ended(JobEnd::Exited),
            SlurmState::Failed(name) => JobState::Ended(JobEnd::Failed(format!(
                "slurm job {job} {name} ({})",
                self.log_text(job)
            ))),
        }
    }

    async fn squeue(&self, jobs: &[String]) -> Result<BTreeMap<String, JobState>, String> {
        let args = [
            "--noheader".to_string(),
            "--states=all".to_string(),
            // One line per array task, pending ones too (else `5_[1-2]`).
            "--array".to_string(),
            "--format=%i|%T|%r".to_string(),
            format!("--jobs={}", jobs.join(",")),
        ];
        let out = slurm_command("squeue", &args).await?;
        let lines = if out.status.success() {
            parse::squeue(&String::from_utf8_lossy(&out.stdout))
        } else if parse::is_unknown_job(&String::from_utf8_lossy(&out.stderr)) {
            Vec::new()
        } else {
            return Err(format!("squeue failed: {}", said(&out)));
        };
        Ok(lines
            .into_iter()
            .filter(|line| jobs.contains(&line.id))
            .map(|line| {
                let state = self.job_state(&line.id, line.state, line.reason);
                (line.id, state)
            })
            .collect())
    }

    /// A job squeue did not list: `scontrol show job -o`, and when Slurm has forgotten it
    /// (`MinJobAge` passed), whatever result file it left.
    async fn scontrol(&self, job: &str) -> Result<JobState, String> {
        let out = slurm_command("scontrol", &["show", "job", "-o", job]).await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success()
            && let Some(info) = stdout.lines().find_map(parse::scontrol_job)
        {
            return Ok(self.job_state(job, info.state, info.reason));
        }
        if !parse::is_unknown_job(&String::from_utf8_lossy(&out.stderr)) {
            return Err(format!("scontrol show job {job} failed: {}", said(&out)));
        }
        let left_result = self
            .jobs_lock()
            .get(job)
            .is_some_and(|j| j.result.is_file());
        Ok(JobState::Ended(if left_result {
            JobEnd::Exited
        } else {
            JobEnd::Failed(format!(
                "slurm job {job} is no longer known to Slurm and left no result ({})",
                self.log_text(job)
            ))
        }))
    }

    async fn poll_jobs(&self, jobs: &[String]) -> Result<BTreeMap<String, JobState>, String> {
        let mut states = self.squeue(jobs).await?;
        for job in jobs {
            if !states.contains_key(job) {
                let state = self.scontrol(job).await?;
                states.insert(job.clone(), state);
            }
        }
        for (job, state) in &states {
            if matches!(state, JobState::Ended(_)) {
                tracing::debug!(job = %job, ?state, "slurm job ended");
            }
        }
        Ok(states)
    }
}

impl Executor for Slurm {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Slurm
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn schedules(&self, resource: &str) -> bool {
        SCHEDULED.contains(&resource)
    }

    fn submit(&self, request: JobRequest) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(self.submit_job(request))
    }

    fn submit_array(
        &self,
        requests: Vec<JobRequest>,
    ) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(self.submit_job_array(requests))
    }

    fn poll<'a>(
        &'a self,
        jobs: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeMap<String, JobState>, String>> {
        Box::pin(self.poll_jobs(jobs))
    }

    fn cancel<'a>(&'a self, job: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let out = slurm_command("scancel", &[job]).await?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("scancel {job} failed: {}", said(&out)))
            }
        })
    }

    fn log(&self, job: &str) -> Option<PathBuf> {
        self.jobs_lock().get(job).map(|j| j.log.clone())
    }
}

/// Writes the attempt's worker spec into its directory (owner-only: resolved params may hold
/// secrets); returns its path.
fn write_spec(request: &JobRequest) -> Result<PathBuf, String> {
    let mut spec = request.spec.clone();
    // Slurm enforces the limit (`--time`), so that a job past it ends as TIMEOUT.
    spec.timeout_ms = None;
    let spec_path = request.attempt_dir.join("worker.json");
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| e.to_string())?;
    write_private(&spec_path, &json)?;
    Ok(spec_path)
}

/// This very binary, which the job runs as `flow worker`.
fn flow_binary() -> Result<PathBuf, String> {
    std::env::current_exe()
        .map_err(|e| format!("cannot find the flow binary for `flow worker`: {e}"))
}

/// The comment line of a job's script: which node of which run.
fn what(request: &JobRequest) -> String {
    format!(
        "flow: node `{}` of workflow `{}`, run {}",
        request.spec.node_id, request.workflow, request.run_id
    )
}

fn write_script(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs one of Slurm's commands; a missing command is named with what it is for.
async fn slurm_command(program: &str, args: &[impl AsRef<str>]) -> Result<Output, String> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args.iter().map(AsRef::as_ref))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "cannot run `{program}`: not found on PATH (the slurm executor needs Slurm's commands sbatch, squeue, scontrol and scancel)"
        )),
        Ok(Err(e)) => Err(format!("cannot run `{program}`: {e}")),
        Err(_) => Err(format!(
            "`{program}` did not answer within {}s",
            COMMAND_TIMEOUT.as_secs()
        )),
    }
}

/// What a command said on stderr (else stdout), trimmed, or its exit status.
fn said(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match (stderr.is_empty(), stdout.is_empty()) {
        (false, _) => stderr,
        (true, false) => stdout,
        (true, true) => format!("exit {}", out.status),
    }
}
