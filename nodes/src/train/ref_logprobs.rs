//! `model.ref_logprobs`: the frozen reference model's log-probs of every chosen and rejected
//! completion, computed once so DPO training need not hold a reference model. With `shards: N`
//! the batches are split into N contiguous slices scored by separate jobs and concatenated in
//! order; since a slice holds whole batches, each batch is scored exactly as in one run, and the
//! merged artifact is byte-identical to the unsharded one.

use flow_engine::node::{LogSink, Node, NodeContext, NodeError, OutputSpec, ParamError};
use flow_model::scoring::{ReferenceScorer, Sequence};
use flow_model::tokenize::{PreferenceTokenizer, TokenizedPair};
use flow_model::{Device, Model, ModelConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::compute::{DeviceSpec, Precision, check_cancelled, model_error, run_blocking};
use crate::preference::read_pairs;
use crate::tokenization::{Dropped, LengthParams, TruncationMode, tokenize_pairs};

/// Scores a preference dataset with a reference model.
pub struct RefLogprobs;

/// Params of `model.ref_logprobs`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefLogprobsParams {
    /// Model directory (config.json, safetensors, tokenizer.json), e.g. `${base.model}`.
    pub model: PathBuf,
    /// Preference dataset (a directory with `data.jsonl`, or a JSONL file), e.g. `${split.train}`.
    pub dataset: PathBuf,
    /// Pairs per batch (each pair is two sequences). Ignored when `max_tokens_per_batch` is set.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Fill each batch with pairs up to this many padded tokens instead of a fixed pair count.
    #[serde(default)]
    pub max_tokens_per_batch: Option<usize>,
    /// Longest prompt + completion in tokens (default: the model's `max_position_embeddings`; larger is an error). Longer sequences are cut as `truncation` says; a pair whose prompt alone fills it is dropped with `keep_start`.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Longest prompt in tokens (its start kept with `keep_start`, its end with `keep_end`).
    #[serde(default)]
    pub max_prompt_length: Option<usize>,
    /// Longest completion in tokens (its start kept).
    #[serde(default)]
    pub max_completion_length: Option<usize>,
    /// How to cut longer sequences: `keep_start` (cut their end) or `keep_end` (cut their start), as TRL's `truncation_mode`.
    #[serde(default)]
    pub truncation: TruncationMode,
    /// Precision.
    #[serde(default)]
    pub dtype: Precision,
    /// Device.
    #[serde(default)]
    pub device: DeviceSpec,
    /// Split the scoring into this many jobs (a Slurm job array under the `slurm` executor,
    /// tasks at once under `local`), each scoring a contiguous run of whole batches; their
    /// outputs are concatenated in order, byte-identical to one unsharded run.
    #[serde(default = "one_shard")]
    pub shards: usize,
}

fn default_batch_size() -> usize {
    4
}

fn one_shard() -> usize {
    1
}

fn no_cut(cut: &[usize; 2]) -> bool {
    *cut == [0, 0]
}

/// One line of `logprobs.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogprobRow {
    /// The pair's id.
    pub id: String,
    /// Prompt ids.
    pub prompt_ids: Vec<u32>,
    /// Chosen completion ids (EOS last unless truncated).
    pub chosen_ids: Vec<u32>,
    /// Rejected completion ids.
    pub rejected_ids: Vec<u32>,
    /// Leading tokens cut from the chosen and the rejected sequence to fit `max_length` with
    /// `keep_end` (absent: none).
    #[serde(default, skip_serializing_if = "no_cut")]
    pub cut: [usize; 2],
    /// Sum of the chosen completion's token log-probs.
    pub chosen_logps: f64,
    /// Sum of the rejected completion's token log-probs.
    pub rejected_logps: f64,
}

/// `summary.json`: what was scored, a function of the params and inputs only (timings go to the
/// node's log), so equal inputs give equal artifacts, sharded or not, resumed or not.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Pairs read.
    pub pairs_in: usize,
    /// Pairs scored.
    pub pairs_kept: usize,
    /// Pairs dropped.
    pub pairs_dropped: usize,
    /// Ids of the dropped pairs.
    pub dropped_ids: Vec<String>,
    /// Every dropped pair with the reason.
    #[serde(default)]
    pub dropped: Vec<Dropped>,
    /// Kept pairs cut to fit the length limits.
    #[serde(default)]
    pub pairs_truncated: usize,
    /// Tokens scored (all positions of the chosen and rejected sequences of every kept pair).
    pub tokens: usize,
}

/// A tokenized pair to score, with its id.
struct Job {
    id: String,
    pair: TokenizedPair,
}

impl RefLogprobsParams {
    fn check(&self) -> Result<(), ParamError> {
        if self.batch_size == 0 {
            return Err(ParamError::at("batch_size", "must be at least 1"));
        }
        if self.max_tokens_per_batch == Some(0) {
            return Err(ParamError::at("max_tokens_per_batch", "must be at least 1"));
        }
        if self.shards == 0 {
            return Err(ParamError::at("shards", "must be at least 1"));
        }
        crate::compute::check_device_dtype(&self.device, self.dtype)?;
        self.lengths().check()
    }

    /// The length params.
    fn lengths(&self) -> LengthParams {
        LengthParams {
            max_length: self.max_length,
            max_prompt_length: self.max_prompt_length,
            max_completion_length: self.max_completion_length,
            truncation: self.truncation,
        }
    }

    /// Splits jobs into batches by pair count or by padded tokens.
    fn batches<'a>(&self, jobs: &'a [Job]) -> Vec<&'a [Job]> {
        let Some(budget) = self.max_tokens_per_batch else {
            return jobs.chunks(self.batch_size).collect();
        };
        let mut batches = Vec::new();
        let (mut start, mut longest) = (0, 0);
        for (i, job) in jobs.iter().enumerate() {
            let len = job.pair.prompt_ids.len()
                + job.pair.chosen_ids.len().max(job.pair.rejected_ids.len());
            let grown = longest.max(len);
            if i > start && grown * 2 * (i - start + 1) > budget {
                batches.push(&jobs[start..i]);
                start = i;
                longest = len;
            } else {
                longest = grown;
            }
        }
        if start < jobs.len() {
            batches.push(&jobs[start..]);
        }
        batches
    }
}

impl Node for RefLogprobs {
    type Params = RefLogprobsParams;
    const TYPE: &'static str = "model.ref_logprobs";
    const VERSION: &'static str = "2";
    const DESCRIPTION: &'static str = "Computes the frozen reference model's log-probs of every chosen and rejected completion of a preference dataset, tokenized exactly as TRL's DPOTrainer does (EOS appended, completion starting where prompt and prompt+completion ids diverge), in right-padded batches with a chunked lm_head. Resumable: a killed run continues after its last completed batch. `shards: N` scores contiguous runs of whole batches in N jobs (a Slurm job array) and concatenates them: the artifact is byte-identical to an unsharded run's.";
    const OUTPUTS: &'static [OutputSpec] = &[OutputSpec {
        name: "logprobs",
        description: "`logprobs.jsonl` (one row per kept pair in input order: id, prompt_ids, chosen_ids, rejected_ids, chosen_logps, rejected_logps) and `summary.json` (pairs in, kept, dropped with reasons, truncated; tokens)",
    }];

    /// Sharded or not, the artifact is the same.
    const LAYOUT_PARAMS: &'static [&'static str] = &["shards"];

    fn check(params: &RefLogprobsParams) -> Result<(), ParamError> {
        params.check()
    }

    fn external_files(params: &RefLogprobsParams) -> Vec<PathBuf> {
        vec![params.model.clone(), params.dataset.clone()]
    }

    async fn run(&self, ctx: NodeContext, params: RefLogprobsParams) -> Result<(), NodeError> {
        let device = params.device.resolve(params.dtype)?;
        let out = ctx.output_dir("logprobs")?.to_path_buf();
        let worker = ctx.clone();
        run_blocking(&ctx, move |token| {
            score_dataset(&worker, &params, &device, &out, &token)
        })
        .await
    }

    fn shards(params: &RefLogprobsParams) -> usize {
        params.shards
    }

    /// Concatenates the slices' `logprobs.jsonl` in order; every slice wrote the same
    /// `summary.json` (it describes the whole dataset), which is checked and kept.
    async fn merge(
        &self,
        ctx: NodeContext,
        _params: RefLogprobsParams,
        shards: Vec<std::collections::BTreeMap<String, PathBuf>>,
    ) -> Result<(), NodeError> {
        let out = ctx.output_dir("logprobs")?;
        let dirs: Vec<&PathBuf> = shards
            .iter()
            .map(|s| {
                s.get("logprobs")
                    .ok_or_else(|| NodeError::new("a shard has no `logprobs` output"))
            })
            .collect::<Result<_, _>>()?;
        let read = |path: PathBuf| {
            std::fs::read(&path).map_err(|e| NodeError::new(format!("{}: {e}", path.display())))
        };
        let mut rows = Vec::new();
        for dir in &dirs {
            rows.extend(read(dir.join("logprobs.jsonl"))?);
        }
        let summary = read(dirs[0].join("summary.json"))?;
        for (index, dir) in dirs.iter().enumerate().skip(1) {
            if read(dir.join("summary.json"))? != summary {
                return Err(NodeError::new(format!(
                    "shard {index} read another dataset than shard 0 (their summary.json differ)"
                )));
            }
        }
        std::fs::write(out.join("logprobs.jsonl"), rows)?;
        std::fs::write(out.join("summary.json"), summary)?;
        ctx.log().line(&format!("merged {} shards", dirs.len()));
        Ok(())
    }
}

fn score_dataset(
    ctx: &NodeContext,
    params: &RefLogprobsParams,
    device: &Device,
    out: &Path,
    token: &CancellationToken,
) -> Result<(), NodeError> {
    let tokenizer = PreferenceTokenizer::load(&params.model).map_err(model_error)?;
    let config = ModelConfig::load(&params.model).map_err(model_error)?;
    let pairs = read_pairs(&params.dataset)?;
    let pairs_in = pairs.len();
    let lengths = params.lengths().resolve(&config)?;
    let tokenized = tokenize_pairs(&tokenizer, pairs, &lengths);
    tokenized.report(ctx.log(), "dataset");
    tokenized.require_some("dataset")?;
    let jobs: Vec<Job> = tokenized
        .kept
        .iter()
        .map(|(id, pair)| Job {
            id: id.clone(),
            pair: pair.clone(),
        })
        .collect();
    let batches = params.batches(&jobs);
    let mine = match ctx.shard() {
        Some(shard) => {
            let range = shard.range(batches.len());
            ctx.log().line(&format!(
                "shard {} of {}: batches {}..{} of {}",
                shard.index,
                shard.count,
                range.start,
                range.end,
                batches.len()
            ));
            &batches[range]
        }
        None => &batches[..],
    };
    let partial = params_partial_path(ctx);
    let scored: usize = mine.iter().map(|b| b.len()).sum();
    if mine.is_empty() {
        // More shards than batches: nothing to score, no model to load.
        std::fs::write(&partial, "")
            .map_err(|e| NodeError::new(format!("{}: {e}", partial.display())))?;
    } else {
        let model = Model::load_as(&params.model, device, params.dtype.compute_dtype())
            .map_err(model_error)?;
        let scorer = ReferenceScorer::new(model);
        score_batches(ctx, &scorer, device, mine, &partial, token)?;
    }
    std::fs::copy(&partial, out.join("logprobs.jsonl"))
        .map_err(|e| NodeError::new(e.to_string()))?;
    let summary = Summary {
        pairs_in,
        pairs_kept: jobs.len(),
        pairs_dropped: tokenized.dropped.len(),
        dropped_ids: tokenized.dropped.iter().map(|d| d.id.clone()).collect(),
        dropped: tokenized.dropped.clone(),
        pairs_truncated: tokenized.truncated,
        tokens: jobs.iter().map(|j| sequence_tokens(&j.pair)).sum(),
    };
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary).expect("JSON"),
    )
    .map_err(|e| NodeError::new(e.to_string()))?;
    ctx.log().line(&format!(
        "scored {scored} of {} pairs, dropped {}",
        summary.pairs_kept, summary.pairs_dropped
    ));
    Ok(())
}

/// Tokens of a pair's two sequences (prompt + chosen, prompt + rejected).
fn sequence_tokens(pair: &TokenizedPair) -> usize {
    pair.sequences().iter().map(|s| s.ids.len()).sum()
}

/// Scores `batches` in order, appending each batch's rows durably to `partial`; batches an
/// earlier attempt finished are taken from it.
fn score_batches(
    ctx: &NodeContext,
    scorer: &ReferenceScorer,
    device: &Device,
    batches: &[&[Job]],
    partial: &Path,
    token: &CancellationToken,
) -> Result<(), NodeError> {
    let total: usize = batches.iter().map(|b| b.len()).sum();
    let resumed_batches = resume_batches(partial, batches)?;
    let resumed: usize = batches[..resumed_batches].iter().map(|b| b.len()).sum();
    if resumed > 0 {
        ctx.log().line(&format!(
            "resuming after {resumed} pairs scored by an earlier attempt"
        ));
    }
    let mut sink = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(partial)
        .map_err(|e| NodeError::new(format!("{}: {e}", partial.display())))?;
    let started = Instant::now();
    let mut tokens = 0;
    let mut done = resumed;
    for batch in &batches[resumed_batches..] {
        check_cancelled(token)?;
        let sequences: Vec<Sequence> = batch.iter().flat_map(|j| j.pair.sequences()).collect();
        tokens += sequences.iter().map(|s| s.ids.len()).sum::<usize>();
        let sums = scorer
            .score(&sequences, device)
            .map_err(|e| {
                let ids: Vec<&str> = batch.iter().map(|j| j.id.as_str()).collect();
                NodeError::new(format!("pairs {}: {e}", ids.join(", ")))
            })?
            .sums;
        append_durably(&mut sink, &rows(batch, &sums)?, partial)?;
        done += batch.len();
        ctx.progress(done as u64, total as u64);
        report_progress(ctx.log(), done, total, tokens, started);
    }
    Ok(())
}

/// The JSONL lines of a scored batch (`sums`: chosen and rejected log-prob sums per pair).
fn rows(batch: &[Job], sums: &[f64]) -> Result<String, NodeError> {
    let mut lines = String::new();
    for (job, logps) in batch.iter().zip(sums.chunks(2)) {
        if logps.iter().any(|l| !l.is_finite()) {
            return Err(NodeError::new(format!(
                "pair `{}`: the reference model gives non-finite log-probs ({}, {}); its weights or config hold NaN or infinite values",
                job.id, logps[0], logps[1]
            )));
        }
        let row = LogprobRow {
            id: job.id.clone(),
            prompt_ids: job.pair.prompt_ids.clone(),
            chosen_ids: job.pair.chosen_ids.clone(),
            rejected_ids: job.pair.rejected_ids.clone(),
            cut: job.pair.cut,
            chosen_logps: logps[0],
            rejected_logps: logps[1],
        };
        lines.push_str(&serde_json::to_string(&row).expect("JSON"));
        lines.push('\n');
    }
    Ok(lines)
}

fn params_partial_path(ctx: &NodeContext) -> PathBuf {
    ctx.resume_dir.join("logprobs.partial.jsonl")
}

/// How many leading batches an earlier attempt finished: complete lines whose ids match, in
/// order, counted in whole batches (so every batch is scored as one run would); the file is cut
/// back to them, a torn last line included.
fn resume_batches(partial: &Path, batches: &[&[Job]]) -> Result<usize, NodeError> {
    let Ok(text) = std::fs::read_to_string(partial) else {
        return Ok(0);
    };
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    let mut expected = batches.iter().flat_map(|b| b.iter());
    let matching = text[..complete]
        .lines()
        .take_while(|line| {
            let id = serde_json::from_str::<LogprobRow>(line).map(|row| row.id);
            id.is_ok_and(|id| expected.next().is_some_and(|j| j.id == id))
        })
        .count();
    let (mut whole, mut rows) = (0, 0);
    while whole < batches.len() && rows + batches[whole].len() <= matching {
        rows += batches[whole].len();
        whole += 1;
    }
    let keep: usize = text[..complete]
        .lines()
        .take(rows)
        .map(|l| l.len() + 1)
        .sum();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(partial)
        .map_err(|e| NodeError::new(e.to_string()))?;
    file.set_len(keep as u64)
        .map_err(|e| NodeError::new(e.to_string()))?;
    Ok(whole)
}

fn append_durably(sink: &mut std::fs::File, lines: &str, path: &Path) -> Result<(), NodeError> {
    sink.write_all(lines.as_bytes())
        .and_then(|_| sink.sync_data())
        .map_err(|e| NodeError::new(format!("{}: {e}", path.display())))
}

fn report_progress(log: &LogSink, done: usize, total: usize, tokens: usize, started: Instant) {
    let rate = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
    log.line(&format!("scored {done}/{total} pairs ({rate:.0} tokens/s)"));
}
