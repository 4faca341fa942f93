//! What Slurm's commands print, read by pure functions: `sbatch --parsable`, `squeue --noheader
//! --format=%i|%T|%r`, `scontrol show job -o` and the error both print for a purged job. Tested
//! on output recorded from Slurm 22.05 (`scripts/cluster/samples-22.05.txt`) and on lines in the
//! format of Slurm 24.11.

/// A job's state as Slurm names it (`%T`, `JobState=`), sorted into what flow does with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlurmState {
    /// Waiting to start.
    Pending,
    /// Started and not over (also COMPLETING, SUSPENDED, REQUEUED, CONFIGURING, …).
    Active(String),
    /// Ended normally.
    Completed,
    /// Ended badly: FAILED, TIMEOUT, OUT_OF_MEMORY, CANCELLED, PREEMPTED, NODE_FAIL,
    /// BOOT_FAIL, DEADLINE (the name as Slurm prints it).
    Failed(String),
}

/// The states that end a job badly.
const FAILURE_STATES: [&str; 8] = [
    "FAILED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "CANCELLED",
    "PREEMPTED",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
];

impl SlurmState {
    /// Reads `RUNNING`, `CANCELLED`, `CANCELLED+` or `CANCELLED by 0`.
    pub fn parse(text: &str) -> SlurmState {
        let name = text
            .split([' ', '+'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        match name.as_str() {
            "PENDING" => SlurmState::Pending,
            "COMPLETED" => SlurmState::Completed,
            failed if FAILURE_STATES.contains(&failed) => SlurmState::Failed(name),
            _ => SlurmState::Active(name),
        }
    }
}

/// One line of `squeue --noheader --format=%i|%T|%r`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueLine {
    /// The job id (`42`, or `5_0` / `5_[1-2]` for array tasks).
    pub id: String,
    /// Its state.
    pub state: SlurmState,
    /// Why it waits or ended (`Priority`, `TimeLimit`, `None`).
    pub reason: String,
}

/// Reads `squeue --noheader --format=%i|%T|%r` output; lines of another shape are skipped.
pub fn squeue(text: &str) -> Vec<QueueLine> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().splitn(3, '|');
            let id = fields.next()?.trim();
            let state = fields.next()?.trim();
            let reason = fields.next()?.trim();
            (!id.is_empty() && !state.is_empty()).then(|| QueueLine {
                id: id.to_string(),
                state: SlurmState::parse(state),
                reason: reason.to_string(),
            })
        })
        .collect()
}

/// What `scontrol show job -o ID` says of a job (one line of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// `JobId=`.
    pub id: String,
    /// `JobState=`.
    pub state: SlurmState,
    /// `Reason=`.
    pub reason: String,
    /// `ExitCode=` (`exit status:signal`, e.g. `0:15`).
    pub exit_code: String,
    /// `StdOut=`, when set.
    pub stdout: Option<String>,
}

/// Reads one line of `scontrol show job -o` (`Key=Value` words).
pub fn scontrol_job(line: &str) -> Option<JobInfo> {
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    Some(JobInfo {
        id: field("JobId")?,
        state: SlurmState::parse(&field("JobState")?),
        reason: field("Reason").unwrap_or_default(),
        exit_code: field("ExitCode").unwrap_or_default(),
        stdout: field("StdOut").filter(|s| !s.is_empty()),
    })
}

/// Whether squeue / scontrol said the job is unknown (purged after `MinJobAge`, or never was).
pub fn is_unknown_job(stderr: &str) -> bool {
    // `Invalid job id specified` for a job id; `Job 5_1 not found` for an array task cancelled
    // while pending (Slurm keeps no record of it).
    stderr.contains("Invalid job id specified") || stderr.trim_end().ends_with(" not found")
}

/// What a pending reason that does not clear by itself means, in the user's terms (squeue's
/// "JOB REASON CODES"); `None` for the ones that do (`Priority`, `Resources`, …).
pub fn pending_hint(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "PartitionConfig" => {
            "the job asks for more than this partition's nodes have (cpus, mem_gb or gpu in `resources:`); see `sinfo -o '%P %c %m %G'`"
        }
        "PartitionTimeLimit" => "the node's `timeout` is longer than the partition's time limit",
        "PartitionNodeLimit" => {
            "the partition allows fewer nodes, or its nodes are down or drained"
        }
        "PartitionDown" | "PartitionInactive" => "the partition is not taking jobs now",
        "ReqNodeNotAvail" => "a node the job needs is down, drained or reserved",
        "BadConstraints" => "the job's constraints (`sbatch_args`) cannot be satisfied",
        "InvalidAccount" => "the account is not valid for this user (`executor.account`)",
        "InvalidQOS" => "the QOS is not valid for this user (`sbatch_args`)",
        _ => return None,
    })
}

/// The job id from `sbatch --parsable` (`42`, or `42;cluster`).
pub fn sbatch_job_id(stdout: &str) -> Option<String> {
    let first = stdout.lines().find(|l| !l.trim().is_empty())?.trim();
    let id = first.split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reasons_that_do_not_clear_by_themselves_get_a_hint() {
        assert!(
            super::pending_hint("PartitionConfig")
                .unwrap()
                .contains("resources:")
        );
        assert_eq!(super::pending_hint("Priority"), None);
        assert_eq!(super::pending_hint("Resources"), None);
    }

    #[test]
    fn unknown_jobs_and_array_tasks_are_recognised() {
        assert!(super::is_unknown_job(
            "slurm_load_jobs error: Invalid job id specified\n"
        ));
        assert!(super::is_unknown_job("Job 2067_1 not found\n"));
        assert!(!super::is_unknown_job(
            "slurm_load_jobs error: Unable to contact slurm controller"
        ));
    }

    use super::*;

    /// `squeue --noheader --states=all --format='%i|%T|%r' --jobs=1,2,3,4,5,6,7` on Slurm
    /// 22.05.8, verbatim from scripts/cluster/samples-22.05.txt (16:39:09).
    const SQUEUE_22_05: &str = "1|CANCELLED|None\n3|COMPLETED|None\n4|FAILED|NonZeroExitCode\n5_[1-2]|PENDING|Resources\n6|PENDING|Priority\n7|PENDING|Priority\n2|RUNNING|None\n5_0|RUNNING|None\n";

    /// `scontrol show job -o 10` of a `--time=1` job after its limit, Slurm 22.05.8 (verbatim).
    const SCONTROL_TIMEOUT_22_05: &str = "JobId=10 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901752 Nice=0 Account=(null) QOS=(null) JobState=TIMEOUT Reason=TimeLimit Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:15 RunTime=00:01:11 TimeLimit=00:01:00 TimeMin=N/A SubmitTime=2026-11-30T16:39:21 EligibleTime=2026-11-30T16:39:21 AccrueTime=2026-11-30T16:39:21 StartTime=2026-11-30T16:39:22 EndTime=2026-11-30T16:40:33 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-30T16:39:22 Scheduler=Backfill Partition=debug AllocNode:Sid=localhost:29249 ReqNodeList=(null) ExcNodeList=(null) NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=256M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryCPU=256M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=(null) WorkDir=/tmp/flow-test-cluster/shared StdErr=/tmp/flow-test-cluster/shared/slurm-10.out StdIn=/dev/null StdOut=/tmp/flow-test-cluster/shared/slurm-10.out Power= ";

    /// `scontrol show job -o 4`: exit 3, Slurm 22.05.8 (verbatim).
    const SCONTROL_FAILED_22_05: &str = "JobId=4 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901756 Nice=0 Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=3:0 RunTime=00:00:00 TimeLimit=365-00:00:00 TimeMin=N/A SubmitTime=2026-11-30T16:39:05 EligibleTime=2026-11-30T16:39:05 AccrueTime=2026-11-30T16:39:05 StartTime=2026-11-30T16:39:06 EndTime=2026-11-30T16:39:06 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-30T16:39:06 Scheduler=Backfill Partition=debug AllocNode:Sid=localhost:29249 ReqNodeList=(null) ExcNodeList=(null) NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=256M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryCPU=256M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=(null) WorkDir=/tmp/flow-test-cluster/shared StdErr=/tmp/flow-test-cluster/shared/slurm-4.out StdIn=/dev/null StdOut=/tmp/flow-test-cluster/shared/slurm-4.out Power= ";

    /// Slurm 24.11's `scontrol show job -o` of a job killed for memory: the same `Key=Value`
    /// words (ReqTRES/AllocTRES instead of TRES, `TresPerNode=gres/gpu:1`, a Command path).
    const SCONTROL_OOM_24_11: &str = "JobId=1234 JobName=flow-dpo-train UserId=alice(1000) GroupId=alice(1000) MCS_label=N/A Priority=1 Nice=0 Account=ml QOS=normal JobState=OUT_OF_MEMORY Reason=OutOfMemory Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:125 RunTime=00:03:12 TimeLimit=01:00:00 TimeMin=N/A SubmitTime=2025-03-04T10:00:00 EligibleTime=2025-03-04T10:00:00 AccrueTime=2025-03-04T10:00:00 StartTime=2025-03-04T10:00:01 EndTime=2025-03-04T10:03:13 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2025-03-04T10:00:01 Scheduler=Main Partition=gpu AllocNode:Sid=login1:4242 ReqNodeList=(null) ExcNodeList=(null) NodeList=gpu07 BatchHost=gpu07 NumNodes=1 NumCPUs=4 NumTasks=1 CPUs/Task=4 ReqB:S:C:T=0:0:*:* ReqTRES=cpu=4,mem=16G,node=1,billing=4,gres/gpu=1 AllocTRES=cpu=4,mem=16G,node=1,billing=4,gres/gpu=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=4 MinMemoryNode=16G MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/shared/.flow/tmp/train-1/job.sh WorkDir=/home/alice/project StdErr=/shared/.flow/runs/r1/logs/train.slurm-1234.log StdIn=/dev/null StdOut=/shared/.flow/runs/r1/logs/train.slurm-1234.log TresPerNode=gres/gpu:1";

    /// Slurm 24.11's `squeue --noheader --states=all --format=%i|%T|%r`: the same three columns.
    const SQUEUE_24_11: &str = "1234|OUT_OF_MEMORY|OutOfMemory\n1235|PREEMPTED|None\n1236|COMPLETING|None\n1237|PENDING|QOSMaxJobsPerUserLimit\n";

    #[test]
    fn squeue_lines_of_22_05_with_array_tasks() {
        let lines = squeue(SQUEUE_22_05);
        assert_eq!(lines.len(), 8);
        assert_eq!(
            lines[0],
            QueueLine {
                id: "1".into(),
                state: SlurmState::Failed("CANCELLED".into()),
                reason: "None".into()
            }
        );
        assert_eq!(lines[1].state, SlurmState::Completed);
        assert_eq!(lines[2].state, SlurmState::Failed("FAILED".into()));
        assert_eq!(lines[2].reason, "NonZeroExitCode");
        assert_eq!(
            (lines[3].id.as_str(), &lines[3].state),
            ("5_[1-2]", &SlurmState::Pending)
        );
        assert_eq!(lines[3].reason, "Resources");
        assert_eq!(lines[7].id, "5_0");
        assert_eq!(lines[7].state, SlurmState::Active("RUNNING".into()));
        assert_eq!(squeue(""), Vec::new());
        assert_eq!(squeue("\nnot a squeue line\n"), Vec::new());
    }

    #[test]
    fn squeue_lines_of_24_11() {
        let lines = squeue(SQUEUE_24_11);
        assert_eq!(lines[0].state, SlurmState::Failed("OUT_OF_MEMORY".into()));
        assert_eq!(lines[1].state, SlurmState::Failed("PREEMPTED".into()));
        assert_eq!(lines[2].state, SlurmState::Active("COMPLETING".into()));
        assert_eq!(lines[3].reason, "QOSMaxJobsPerUserLimit");
    }

    #[test]
    fn scontrol_job_lines_of_22_05() {
        let timeout = scontrol_job(SCONTROL_TIMEOUT_22_05).unwrap();
        assert_eq!(timeout.id, "10");
        assert_eq!(timeout.state, SlurmState::Failed("TIMEOUT".into()));
        assert_eq!(timeout.reason, "TimeLimit");
        assert_eq!(timeout.exit_code, "0:15");
        assert_eq!(
            timeout.stdout.as_deref(),
            Some("/tmp/flow-test-cluster/shared/slurm-10.out")
        );
        let failed = scontrol_job(SCONTROL_FAILED_22_05).unwrap();
        assert_eq!(
            (failed.state, failed.exit_code.as_str()),
            (SlurmState::Failed("FAILED".into()), "3:0")
        );
        assert_eq!(
            scontrol_job("slurm_load_jobs error: Invalid job id specified"),
            None
        );
    }

    #[test]
    fn scontrol_job_line_of_24_11() {
        let oom = scontrol_job(SCONTROL_OOM_24_11).unwrap();
        assert_eq!(oom.id, "1234");
        assert_eq!(oom.state, SlurmState::Failed("OUT_OF_MEMORY".into()));
        assert_eq!(oom.reason, "OutOfMemory");
        assert_eq!(oom.exit_code, "0:125");
        assert_eq!(
            oom.stdout.as_deref(),
            Some("/shared/.flow/runs/r1/logs/train.slurm-1234.log")
        );
    }

    #[test]
    fn states_with_suffixes_and_unknown_jobs() {
        assert_eq!(
            SlurmState::parse("CANCELLED by 0"),
            SlurmState::Failed("CANCELLED".into())
        );
        assert_eq!(
            SlurmState::parse("CANCELLED+"),
            SlurmState::Failed("CANCELLED".into())
        );
        assert_eq!(
            SlurmState::parse("NODE_FAIL"),
            SlurmState::Failed("NODE_FAIL".into())
        );
        assert_eq!(
            SlurmState::parse("DEADLINE"),
            SlurmState::Failed("DEADLINE".into())
        );
        assert!(is_unknown_job(
            "slurm_load_jobs error: Invalid job id specified\n"
        ));
        assert!(!is_unknown_job(
            "squeue: error: Unable to contact slurm controller (connect failure)"
        ));
    }

    #[test]
    fn sbatch_parsable_ids() {
        assert_eq!(sbatch_job_id("1\n").as_deref(), Some("1"));
        assert_eq!(sbatch_job_id("42;cluster-a\n").as_deref(), Some("42"));
        assert_eq!(sbatch_job_id(""), None);
        assert_eq!(
            sbatch_job_id(
                "sbatch: error: Batch job submission failed: Invalid partition name specified"
            ),
            None
        );
    }
}
