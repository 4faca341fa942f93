//! The `sbatch` command line of one node attempt, as a pure function of the workflow's Slurm
//! settings and the node's resources and timeout: `gpu` → `--gres=gpu:N`, `mem_gb` →
//! `--mem=NG`, `cpus` → `--cpus-per-task=N`, `timeout` → `--time` in whole minutes (rounded
//! up, at least 1); and the batch script that runs `flow worker`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::workflow::executor::SlurmSettings;

/// The resources Slurm schedules itself (flow holds no tokens for them on Slurm).
pub const SCHEDULED: [&str; 3] = ["gpu", "mem_gb", "cpus"];

/// What one job asks of Slurm.
pub struct JobShape<'a> {
    /// `--job-name`.
    pub name: String,
    /// `--output` (with `%j` for the job id).
    pub output: &'a Path,
    /// `--chdir`.
    pub chdir: &'a Path,
    /// The node's `resources:`.
    pub resources: &'a BTreeMap<String, u32>,
    /// The node's `timeout`.
    pub timeout: Option<Duration>,
    /// A job array of this many tasks (`--array=0-(N-1)`), for a sharded node.
    pub array_tasks: Option<usize>,
}

/// `flow-<workflow>-<node>`, with anything but letters, digits, `.`, `_` and `-` as `_`.
pub fn job_name(workflow: &str, node: &str) -> String {
    format!("flow-{workflow}-{node}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A time limit in whole minutes, rounded up, at least 1 (`--time=M`).
pub fn time_minutes(limit: Duration) -> u64 {
    limit.as_secs().saturating_add(59).div_euclid(60).max(1)
}

/// `sbatch`'s arguments before the script: flow's own, then the workflow's `sbatch_args`
/// (which sbatch lets override flow's, as later options win).
pub fn sbatch_args(settings: &SlurmSettings, job: &JobShape) -> Vec<String> {
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={}", job.name),
        format!("--output={}", job.output.display()),
        format!("--chdir={}", job.chdir.display()),
    ];
    if let Some(partition) = &settings.partition {
        args.push(format!("--partition={partition}"));
    }
    if let Some(account) = &settings.account {
        args.push(format!("--account={account}"));
    }
    args.extend(resource_args(job.resources));
    if let Some(limit) = job.timeout {
        args.push(format!("--time={}", time_minutes(limit)));
    }
    if let Some(tasks) = job.array_tasks {
        args.push(format!("--array=0-{}", tasks.saturating_sub(1)));
    }
    args.extend(settings.sbatch_args.iter().cloned());
    args
}

fn resource_args(resources: &BTreeMap<String, u32>) -> Vec<String> {
    let amount = |name: &str| resources.get(name).copied().filter(|n| *n > 0);
    let mut args = Vec::new();
    if let Some(gpus) = amount("gpu") {
        args.push(format!("--gres=gpu:{gpus}"));
    }
    if let Some(gb) = amount("mem_gb") {
        args.push(format!("--mem={gb}G"));
    }
    if let Some(cpus) = amount("cpus") {
        args.push(format!("--cpus-per-task={cpus}"));
    }
    args
}

/// The batch script: `exec FLOW worker SPEC` (the same binary as the driver, at the same path).
pub fn batch_script(flow: &Path, spec: &Path, what: &str) -> String {
    format!(
        "#!/bin/sh\n# {}\nexec {} worker {}\n",
        what.replace('\n', " "),
        shell_quote(&flow.to_string_lossy()),
        shell_quote(&spec.to_string_lossy())
    )
}

/// The script of a job array: task `i` (`$SLURM_ARRAY_TASK_ID`) execs `FLOW worker specs[i]`.
pub fn array_script(flow: &Path, specs: &[impl AsRef<Path>], what: &str) -> String {
    let flow = shell_quote(&flow.to_string_lossy());
    let mut script = format!(
        "#!/bin/sh\n# {}\ncase \"$SLURM_ARRAY_TASK_ID\" in\n",
        what.replace('\n', " ")
    );
    for (task, spec) in specs.iter().enumerate() {
        let spec = shell_quote(&spec.as_ref().to_string_lossy());
        script.push_str(&format!("  {task}) exec {flow} worker {spec} ;;\n"));
    }
    script.push_str(
        "esac\necho \"flow: no worker spec for array task $SLURM_ARRAY_TASK_ID\" >&2\nexit 2\n",
    );
    script
}

/// `text` as one word for `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn shape<'a>(
        resources: &'a BTreeMap<String, u32>,
        timeout: Option<Duration>,
        paths: &'a (PathBuf, PathBuf),
    ) -> JobShape<'a> {
        JobShape {
            name: job_name("dpo de", "train"),
            output: &paths.0,
            chdir: &paths.1,
            resources,
            timeout,
            array_tasks: None,
        }
    }

    #[test]
    fn resources_and_timeout_map_to_sbatch_options() {
        let paths = (
            PathBuf::from("/s/.flow/runs/r/logs/train.slurm-%j.log"),
            PathBuf::from("/home/u/p"),
        );
        let resources = BTreeMap::from([
            ("gpu".to_string(), 2),
            ("mem_gb".to_string(), 16),
            ("cpus".to_string(), 4),
            ("hf_api".to_string(), 1),
        ]);
        let settings = SlurmSettings {
            partition: Some("gpu".into()),
            account: Some("ml".into()),
            sbatch_args: vec!["--qos=high".into()],
        };
        let args = sbatch_args(
            &settings,
            &shape(&resources, Some(Duration::from_secs(90)), &paths),
        );
        assert_eq!(
            args,
            [
                "--parsable",
                "--job-name=flow-dpo_de-train",
                "--output=/s/.flow/runs/r/logs/train.slurm-%j.log",
                "--chdir=/home/u/p",
                "--partition=gpu",
                "--account=ml",
                "--gres=gpu:2",
                "--mem=16G",
                "--cpus-per-task=4",
                "--time=2",
                "--qos=high",
            ]
        );
    }

    #[test]
    fn nothing_asked_means_only_flows_own_options() {
        let paths = (PathBuf::from("/l/%j.log"), PathBuf::from("/p"));
        let none = BTreeMap::from([("gpu".to_string(), 0)]);
        let args = sbatch_args(&SlurmSettings::default(), &shape(&none, None, &paths));
        assert_eq!(args.len(), 4, "{args:?}");
    }

    #[test]
    fn time_limits_round_up_to_whole_minutes() {
        assert_eq!(time_minutes(Duration::from_secs(1)), 1);
        assert_eq!(time_minutes(Duration::from_secs(60)), 1);
        assert_eq!(time_minutes(Duration::from_secs(61)), 2);
        assert_eq!(time_minutes(Duration::from_secs(5400)), 90);
    }

    #[test]
    fn a_sharded_node_is_one_array_whose_tasks_run_one_spec_each() {
        let paths = (PathBuf::from("/l/%A_%a.log"), PathBuf::from("/p"));
        let none = BTreeMap::new();
        let mut job = shape(&none, None, &paths);
        job.array_tasks = Some(3);
        let args = sbatch_args(&SlurmSettings::default(), &job);
        assert_eq!(args.last().unwrap(), "--array=0-2");
        let script = array_script(Path::new("/f"), &["/s/0.json", "/s/1.json"], "x");
        assert!(script.contains("case \"$SLURM_ARRAY_TASK_ID\" in\n  0) exec '/f' worker '/s/0.json' ;;\n  1) exec '/f' worker '/s/1.json' ;;\nesac\n"), "{script}");
        assert!(script.ends_with("exit 2\n"), "{script}");
    }

    #[test]
    fn the_script_execs_the_worker_with_quoted_paths() {
        let script = batch_script(Path::new("/opt/it's/flow"), Path::new("/s/a b.json"), "x");
        assert!(
            script.ends_with("exec '/opt/it'\\''s/flow' worker '/s/a b.json'\n"),
            "{script}"
        );
        assert!(script.starts_with("#!/bin/sh\n"));
    }
}
