//! The command line, as clap definitions only; what each command does lives in `commands`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// flow runs LLM preference-tuning pipelines from YAML: a cached, parallel DAG of nodes.
#[derive(Debug, Parser)]
#[command(name = "flow", version, about, propagate_version = true)]
pub struct Cli {
    /// The artifact store (default `.flow` in the current directory).
    #[arg(long, global = true, env = "FLOW_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a workflow: nodes whose fingerprint is cached are reused, the rest run.
    Run(RunArgs),
    /// Show, for every node, whether a run would run it or reuse its cached outputs, and why.
    Plan(PlanArgs),
    /// Check workflow files; exits 2 and lists every error when one is invalid.
    Validate {
        /// Workflow files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the node library, or document one node type.
    Nodes {
        /// A node type to document in full.
        node_type: Option<String>,
        /// Print the whole reference as Markdown (the README's node reference).
        #[arg(long)]
        markdown: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Draw a workflow's DAG.
    Graph {
        /// Workflow file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
        /// Override a workflow param.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// List past runs.
    Runs {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show one run: per node status, duration, cache hit, executor and job id, artifact digests, logs.
    Show {
        /// Run id, a unique prefix of one, or `last`.
        run: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the path of a run's evaluation report (`report.html` of its `evaluate` node).
    Report {
        /// Run id, a unique prefix of one, or `last`.
        #[arg(default_value = "last")]
        run: String,
        /// Also open it in the desktop's browser.
        #[arg(long)]
        open: bool,
    },
    /// Show two runs' params and metrics side by side (differences marked).
    Compare {
        /// First run (id, prefix or `last`).
        a: String,
        /// Second run.
        b: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run workflows at their `schedule:` times until SIGTERM / Ctrl-C (or print the next times).
    Schedule(ScheduleArgs),
    /// The system's cron instead of `flow schedule`.
    Cron {
        /// What to do.
        #[command(subcommand)]
        command: CronCommand,
    },
    /// Run one node outside a workflow (for debugging and scripting).
    Exec(ExecArgs),
    /// Write the JSON Schemas (workflow and one per node type).
    Schema {
        /// Where to write them.
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
        /// Only check that the files there are up to date (exit 1 when stale).
        #[arg(long)]
        check: bool,
    },
    /// Benchmarks (not tests): throughput and peak memory of tensor work.
    Bench {
        /// What to measure.
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Run one node attempt from a spec file (what an executor's job runs; written by `flow run`).
    #[command(hide = true)]
    Worker {
        /// The attempt's spec (`worker.json` in the store's `tmp/`).
        spec: PathBuf,
    },
    /// Remove artifacts that no run record references; with `--remote`, those of a shared store.
    Gc {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Collect the shared store `s3://BUCKET/PREFIX` or `file:///PATH` instead of the local
        /// one: what neither its run records nor the local store's reference, once older than
        /// `--grace`.
        #[arg(long, value_name = "URL")]
        remote: Option<String>,
        /// With `--remote`: keep everything younger than this (`24h`, `30m`, `0s`), so runs still
        /// publishing on other machines lose nothing.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_grace, requires = "remote")]
        grace: std::time::Duration,
    },
}

/// Selecting and forcing nodes (shared by `run` and `plan`).
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Workflow file.
    pub file: PathBuf,
    /// Override a workflow param (`--set beta=0.2`); the value is read as YAML.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Run this node even if cached (repeatable).
    #[arg(long, value_name = "NODE")]
    pub force: Vec<String>,
    /// Run every node even if cached.
    #[arg(long)]
    pub force_all: bool,
    /// Only this node and what it needs (repeatable).
    #[arg(long, value_name = "NODE")]
    pub only: Vec<String>,
    /// Rehash cached artifacts instead of trusting size and mtime.
    #[arg(long)]
    pub verify: bool,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `flow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Which nodes.
    #[command(flatten)]
    pub select: SelectArgs,
    /// Nodes running at once (default: number of cores).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// After a failure, finish every node that does not depend on it.
    #[arg(long)]
    pub keep_going: bool,
    /// Print the plan and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Fail at once if another flow process holds the store, instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// Resource capacities, `gpu=1,mem_gb=20`; a resource not named holds the largest single request.
    #[arg(long, value_name = "NAME=N,…")]
    pub resources: Option<String>,
    /// Where nodes run: `local` (this process) or `slurm` (each node a batch job); a node's own
    /// `executor:` still wins, and this wins over the workflow's top-level `executor:`.
    #[arg(long, env = "FLOW_EXECUTOR", value_name = "NAME")]
    pub executor: Option<String>,
    /// A shared store mirrored by this one: `s3://BUCKET/PREFIX` (credentials, region and
    /// endpoint from the AWS variables) or `file:///PATH`. Nodes found there are downloaded
    /// instead of run; nodes that run are published there.
    #[arg(long, env = "FLOW_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
}

/// `flow schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Workflow files, and directories whose `*.yaml` / `*.yml` files are read (default
    /// `workflows`). Files without `schedule:` are ignored.
    pub sources: Vec<PathBuf>,
    /// Print each schedule's next run times and exit.
    #[arg(long)]
    pub list: bool,
    /// With `--list`: how many next times per schedule.
    #[arg(long, default_value_t = 3)]
    pub count: usize,
    /// With `--list`: machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Nodes running at once within one run (default: number of cores).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// How often the workflow files are checked for changes.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub reload_every: std::time::Duration,
    /// On SIGTERM / Ctrl-C, how long running runs may finish before they are cancelled (a
    /// second signal cancels them at once).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub grace: std::time::Duration,
    /// Where the scheduled runs' nodes run (`local` or `slurm`), as `flow run --executor`.
    #[arg(long, env = "FLOW_EXECUTOR", value_name = "NAME")]
    pub executor: Option<String>,
    /// The shared store of the scheduled runs, as `flow run --remote`.
    #[arg(long, env = "FLOW_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
}

/// `flow cron …`.
#[derive(Debug, Subcommand)]
pub enum CronCommand {
    /// Print the crontab lines that run a workflow's schedules with `flow run` under a lock
    /// (`flock`), so overlapping invocations do not collide.
    Print {
        /// Workflow file.
        file: PathBuf,
    },
}

/// `flow plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Which nodes.
    #[command(flatten)]
    pub select: SelectArgs,
    /// A shared store mirrored by this one: `s3://BUCKET/PREFIX` (credentials, region and
    /// endpoint from the AWS variables) or `file:///PATH`. Nodes found there are downloaded
    /// instead of run; nodes that run are published there.
    #[arg(long, env = "FLOW_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
}

/// `flow exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Node type.
    pub node_type: String,
    /// A param, `NAME=VALUE` (value read as YAML; `a.b=1` sets a nested key).
    #[arg(long = "with", value_name = "NAME=VALUE")]
    pub with: Vec<String>,
    /// An input artifact directory, `NAME=PATH`.
    #[arg(long = "input", value_name = "NAME=PATH")]
    pub inputs: Vec<String>,
    /// Directory to write the outputs to, one subdirectory per output.
    #[arg(long)]
    pub out: PathBuf,
}

/// `flow bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Reference scoring (`model.ref_logprobs`) of 2 × pairs random sequences with a random model.
    Logprobs(BenchShapeArgs),
    /// One full DPO training step (reference scoring, policy forward and backward, clipping,
    /// AdamW) on `pairs` random pairs of `seq` tokens with a random model.
    DpoStep(BenchShapeArgs),
    /// `dataset.filter` with every rule on synthetic German pairs.
    Filter(FilterBenchArgs),
}

/// Size of the filter benchmark.
#[derive(Debug, Args)]
pub struct FilterBenchArgs {
    /// Synthetic rows.
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// CPU threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Model and batch shape of a benchmark.
#[derive(Debug, Args)]
pub struct BenchShapeArgs {
    /// Model family: `mistral`, `llama`, `qwen2`, `qwen3` or `gemma2` (with its usual numerics).
    #[arg(long, default_value = "mistral")]
    pub architecture: String,
    /// Model width.
    #[arg(long, default_value_t = 512)]
    pub hidden: usize,
    /// MLP width.
    #[arg(long, default_value_t = 1408)]
    pub intermediate: usize,
    /// Decoder layers.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Query heads.
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    /// Key/value heads.
    #[arg(long, default_value_t = 2)]
    pub kv_heads: usize,
    /// Vocabulary size.
    #[arg(long, default_value_t = 32000)]
    pub vocab: usize,
    /// Preference pairs (two sequences each).
    #[arg(long, default_value_t = 4)]
    pub pairs: usize,
    /// Tokens per sequence; the prompt is the first quarter.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// CPU threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Device: `cpu`, `auto`, `cuda:N` or `wgpu` (the `cuda` / `wgpu` features).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute precision: `f32`, or `bf16` (mixed precision).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// LoRA rank on all seven projections (alpha = 2·r); 0 trains every weight (dpo-step).
    #[arg(long, default_value_t = 0)]
    pub lora_r: usize,
    /// Recompute activations in the backward pass (dpo-step).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Graph output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    /// Mermaid flowchart.
    Mermaid,
    /// Graphviz dot.
    Dot,
}

/// A `--grace` duration (`24h`, `90m`, `0s`).
fn parse_grace(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration (e.g. 24h, 30m, 0s): {e}"))
}
