//! `model.ref_logprobs`: the frozen reference model's log-probs of every chosen and rejected
//! completion, computed once so DPO training need not hold a reference model.

use flow_engine::node::{LogSink, Node, NodeContext, NodeError, OutputSpec, ParamError};
use flow_model::scoring::{ReferenceScorer, Sequence};
use flow_model::tokenize::{PreferenceTokenizer, TokenizedPair};
use flow_model::{Device, Model};
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
}

fn default_batch_size() -> usize {
    4
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

/// `summary.json`.
#[derive(Debug, Serialize, Deserialize)]
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
    /// Pairs taken over from an interrupted earlier attempt.
    pub resumed_pairs: usize,
    /// Tokens scored in this attempt (all positions of all sequences).
    pub tokens: usize,
    /// Seconds spent scoring in this attempt.
    pub seconds: f64,
    /// `tokens / seconds`.
    pub tokens_per_s: f64,
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
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Computes the frozen reference model's log-probs of every chosen and rejected completion of a preference dataset, tokenized exactly as TRL's DPOTrainer does (EOS appended, completion starting where prompt and prompt+completion ids diverge), in right-padded batches with a chunked lm_head. Resumable: a killed run continues after its last completed batch.";
    const OUTPUTS: &'static [OutputSpec] = &[OutputSpec {
        name: "logprobs",
        description: "`logprobs.jsonl` (one row per kept pair in input order: id, prompt_ids, chosen_ids, rejected_ids, chosen_logps, rejected_logps) and `summary.json`",
    }];

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
}

fn score_dataset(
    ctx: &NodeContext,
    params: &RefLogprobsParams,
    device: &Device,
    out: &Path,
    token: &CancellationToken,
) -> Result<(), NodeError> {
    let tokenizer = PreferenceTokenizer::load(&params.model).map_err(model_error)?;
    let model = Model::load(&params.model, device).map_err(model_error)?;
    let scorer_config = model.config.clone();
    let scorer = ReferenceScorer::new(model.cast(params.dtype.compute_dtype()));
    let pairs = read_pairs(&params.dataset)?;
    let pairs_in = pairs.len();
    let lengths = params.lengths().resolve(&scorer_config)?;
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
    let partial = params_partial_path(ctx);
    let resumed = resume_count(&partial, &jobs)?;
    if resumed > 0 {
        ctx.log().line(&format!(
            "resuming after {resumed} pairs scored by an earlier attempt"
        ));
    }
    let mut sink = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .map_err(|e| NodeError::new(format!("{}: {e}", partial.display())))?;
    let started = Instant::now();
    let mut tokens = 0;
    let mut done = resumed;
    for batch in params.batches(&jobs[resumed..]) {
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
        append_durably(&mut sink, &lines, &partial)?;
        done += batch.len();
        ctx.progress(done as u64, jobs.len() as u64);
        report_progress(ctx.log(), done, jobs.len(), tokens, started);
    }
    let seconds = started.elapsed().as_secs_f64();
    std::fs::copy(&partial, out.join("logprobs.jsonl"))
        .map_err(|e| NodeError::new(e.to_string()))?;
    let summary = Summary {
        pairs_in,
        pairs_kept: jobs.len(),
        pairs_dropped: tokenized.dropped.len(),
        dropped_ids: tokenized.dropped.iter().map(|d| d.id.clone()).collect(),
        dropped: tokenized.dropped.clone(),
        pairs_truncated: tokenized.truncated,
        resumed_pairs: resumed,
        tokens,
        seconds,
        tokens_per_s: if seconds > 0.0 {
            tokens as f64 / seconds
        } else {
            0.0
        },
    };
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary).expect("JSON"),
    )
    .map_err(|e| NodeError::new(e.to_string()))?;
    ctx.log().line(&format!(
        "scored {} pairs, dropped {}",
        summary.pairs_kept, summary.pairs_dropped
    ));
    Ok(())
}

fn params_partial_path(ctx: &NodeContext) -> PathBuf {
    ctx.resume_dir.join("logprobs.partial.jsonl")
}

/// How many leading jobs an earlier attempt finished: complete lines whose ids match, in order.
/// A torn last line is cut off.
fn resume_count(partial: &Path, jobs: &[Job]) -> Result<usize, NodeError> {
    let Ok(text) = std::fs::read_to_string(partial) else {
        return Ok(0);
    };
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    let mut count = 0;
    for line in text[..complete].lines() {
        match serde_json::from_str::<LogprobRow>(line) {
            Ok(row) if jobs.get(count).is_some_and(|j| j.id == row.id) => count += 1,
            _ => break,
        }
    }
    let keep: usize = text[..complete]
        .lines()
        .take(count)
        .map(|l| l.len() + 1)
        .sum();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(partial)
        .map_err(|e| NodeError::new(e.to_string()))?;
    file.set_len(keep as u64)
        .map_err(|e| NodeError::new(e.to_string()))?;
    Ok(count)
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
