//! `evaluate`: a trained policy against its reference on held-out preference pairs and on
//! multiple-choice tasks, written as `eval.json` and a self-contained report.
//!
//! Preference metrics follow TRL's definitions, with `s(x) = Σ log π(completion token)`:
//!
//! | metric | definition |
//! |---|---|
//! | `rewards/chosen`, `rewards/rejected` | `β (s_policy − s_reference)` of the chosen / rejected completion, averaged |
//! | `rewards/accuracies` | share of pairs whose chosen reward exceeds the rejected reward |
//! | `rewards/margins` | mean of chosen − rejected reward |
//! | `win_rate` (per model) | share of pairs the model prefers correctly as a classifier: `s(chosen) > s(rejected)` (sums, as DPO compares them) |
//! | `win_rate_per_token` (per model) | the same with mean per-token log-probs (length-normalised) |
//! | `logps/chosen`, `logps/rejected` (per model) | mean per-token log-prob of the completions |
//! | `perplexity` (per model) | `exp(−Σ log p / Σ tokens)` over all chosen completions |
//!
//! Multiple-choice tasks are scored as lm-evaluation-harness 0.4 does ([`super::tasks`]): the
//! log-likelihood of `target_delimiter + choice` after the few-shot context; `acc` takes the
//! most likely choice, `acc_norm` the most likely per character of the choice, `acc_bytes` per
//! byte; TruthfulQA's `mc1` and `mc2`.

use super::judge::{self, JudgeParams};
use super::mt_bench::{self, MtBenchParams, Question};
use super::report;
use super::results::{Answers, EvalReport, ModelScores, PreferenceScores, Sample};
use super::tasks::{TaskParam, load_tasks, metrics};
use crate::compute::{DeviceSpec, check_cancelled, model_error, run_blocking};
use crate::preference::read_pairs;
use crate::tokenization::{LengthParams, TruncationMode, tokenize_pairs};
use flow_engine::node::{Node, NodeContext, NodeError, OutputSpec, ParamError};
use flow_model::generate::{Sampling, generate};
use flow_model::scoring::{Scorer, Sequence};
use flow_model::tokenize::PreferenceTokenizer;
use flow_model::{Device, Model};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// The node type.
pub struct Evaluate;

fn default_beta() -> f64 {
    0.1
}

fn default_batch_size() -> usize {
    8
}

/// Params of `evaluate`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// The policy: a model directory or a PEFT adapter (applied to `reference`).
    pub model: PathBuf,
    /// The reference (base) model directory.
    pub reference: PathBuf,
    /// Held-out preference pairs.
    pub dataset: PathBuf,
    /// β of the implicit rewards (use the training β).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Multiple-choice tasks as lm-evaluation-harness 0.4 runs them: a JSONL path (`{question, choices, answer}` rows, zero-shot) or a spec `{path, name?, preset?, num_fewshot?, fewshot_seed?, fewshot_path?, fewshot_sampler?, prompt?, description?, target_delimiter?, fewshot_delimiter?, metrics?}` (presets for the harness's German task formats: `arc_de`, `hellaswag_de`, `m_mmlu_de`, `truthfulqa_de_mc1`, `truthfulqa_de_mc2`, `belebele_deu_Latn`).
    #[serde(default)]
    pub tasks: Vec<TaskParam>,
    /// `metrics` output of the training node, for the report's training curves.
    #[serde(default)]
    pub metrics: Option<PathBuf>,
    /// Longest prompt + completion in tokens (default: the reference's `max_position_embeddings`); pairs are cut as in training and a pair whose prompt alone fills it is skipped with `keep_start`.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Longest prompt in tokens (as in training).
    #[serde(default)]
    pub max_prompt_length: Option<usize>,
    /// Longest completion in tokens (as in training).
    #[serde(default)]
    pub max_completion_length: Option<usize>,
    /// How to cut longer sequences: `keep_start` or `keep_end` (as in training).
    #[serde(default)]
    pub truncation: TruncationMode,
    /// Sequences per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Prompts that policy and reference answer side by side (greedy and sampled).
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Longest generated answer, in tokens.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Temperature of the sampled answers.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Nucleus (top-p) of the sampled answers.
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Seed of the sampled answers and of the judge's answer order.
    #[serde(default)]
    pub seed: u64,
    /// An LLM judge (OpenAI-compatible endpoint) that compares the greedy answers pairwise.
    #[serde(default)]
    pub judge: Option<JudgeParams>,
    /// MT-Bench (e.g. MT-Bench-DE): both models answer two-turn questions through their chat template and a judge rates each turn 1–10 as FastChat's single-answer grading does: `{questions, reference_answers?, judge: {base_url, model, api_key}, max_new_tokens?, chat_template?}`.
    #[serde(default)]
    pub mt_bench: Option<MtBenchParams>,
    /// Device.
    #[serde(default)]
    pub device: DeviceSpec,
}

fn default_max_new_tokens() -> usize {
    64
}

fn default_temperature() -> f64 {
    0.7
}

fn default_top_p() -> f64 {
    0.9
}

impl Node for Evaluate {
    type Params = EvaluateParams;
    const TYPE: &'static str = "evaluate";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Evaluates a policy (model or PEFT adapter) against its reference: TRL's implicit-reward accuracy and margins on held-out pairs, each model's win rate as a preference classifier, mean completion log-probs and perplexity of chosen completions, and multiple-choice tasks computed as lm-evaluation-harness 0.4 computes them (few-shot contexts, acc, acc_norm, acc_bytes, TruthfulQA mc1/mc2; the formats of its German tasks) from local JSONL files, keeping every question's per-choice log-likelihoods. Writes eval.json and a self-contained report.html / report.md with SVG plots (eval bars policy vs reference, reward-margin histogram, training curves).";
    const OUTPUTS: &'static [OutputSpec] = &[OutputSpec {
        name: "report",
        description: "eval.json, report.html, report.md and the SVG plots",
    }];

    fn check(params: &EvaluateParams) -> Result<(), ParamError> {
        if !params.beta.is_finite() || params.beta <= 0.0 {
            return Err(ParamError::at("beta", "must be a positive number"));
        }
        if params.batch_size == 0 {
            return Err(ParamError::at("batch_size", "must be at least 1"));
        }
        params.lengths().check()?;
        if !(0.0..=10.0).contains(&params.temperature) {
            return Err(ParamError::at("temperature", "must be in [0, 10]"));
        }
        if !(params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(ParamError::at("top_p", "must be in (0, 1]"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, task) in params.tasks.iter().enumerate() {
            use flow_engine::diagnostic::PathStep;
            let spec = task.spec();
            spec.check().map_err(|(field, message)| ParamError {
                path: vec![
                    PathStep::Key("tasks".into()),
                    PathStep::Index(i),
                    PathStep::Key(field.into()),
                ],
                message,
            })?;
            let name = spec.name();
            if !names.insert(name.clone()) {
                return Err(ParamError {
                    path: vec![PathStep::Key("tasks".into()), PathStep::Index(i)],
                    message: format!("a second task named `{name}`; give one a `name`"),
                });
            }
        }
        if let Some(mt) = &params.mt_bench
            && mt.max_new_tokens == 0
        {
            return Err(ParamError::at(
                "mt_bench",
                "`max_new_tokens` must be at least 1",
            ));
        }
        if params.judge.is_some() && params.prompts.is_empty() {
            return Err(ParamError::at("judge", "needs `prompts` to judge"));
        }
        Ok(())
    }

    fn external_files(params: &EvaluateParams) -> Vec<PathBuf> {
        let mt_bench = params.mt_bench.iter().flat_map(|mt| {
            std::iter::once(mt.questions.clone()).chain(mt.reference_answers.clone())
        });
        params
            .tasks
            .iter()
            .flat_map(TaskParam::files)
            .chain(mt_bench)
            .collect()
    }

    async fn run(&self, ctx: NodeContext, params: EvaluateParams) -> Result<(), NodeError> {
        let device = params.device.resolve(crate::compute::Precision::F32)?;
        let out = ctx.output_dir("report")?.to_path_buf();
        let log = ctx.log().clone();
        let params = std::sync::Arc::new(params);
        let shared = params.clone();
        let (mut report, pending) =
            run_blocking(&ctx, move |token| evaluate(&shared, &device, &token)).await?;
        log.line(&format!(
            "reward accuracy {:.3}, margin {:.4}; win rate policy {:.3} vs reference {:.3}",
            report.preference.reward_accuracy,
            report.preference.reward_margin,
            report.policy.win_rate,
            report.reference.win_rate
        ));
        if let Some(judge) = &params.judge {
            let verdicts = judge::judge(judge, &report.samples, params.seed).await?;
            log.line(&match verdicts.win_rate {
                Some(rate) => format!("judge: policy wins {rate:.3} of valid verdicts"),
                None => format!("judge: no valid verdict in {} answers", verdicts.invalid),
            });
            report.judge = Some(verdicts);
        }
        if let (Some(mt), Some(pending)) = (&params.mt_bench, pending) {
            let results =
                mt_bench::grade(mt, &pending.questions, pending.policy, pending.reference).await?;
            log.line(&format!(
                "MT-Bench: policy {:.2} vs reference {:.2} ({} questions, judge {})",
                results.policy.average.unwrap_or(f64::NAN),
                results.reference.average.unwrap_or(f64::NAN),
                results.questions,
                results.judge
            ));
            report.mt_bench = Some(results);
        }
        report::write(&out, &report, params.metrics.as_deref())
    }
}

/// Completion log-prob sum and token count of each sequence.
type SeqScores = Vec<(f64, usize)>;

impl EvaluateParams {
    /// The length params.
    fn lengths(&self) -> LengthParams {
        LengthParams {
            max_length: self.max_length,
            max_prompt_length: self.max_prompt_length,
            max_completion_length: self.max_completion_length,
            truncation: self.truncation,
        }
    }
}

/// MT-Bench answers waiting for the judge.
struct PendingMtBench {
    questions: Vec<Question>,
    policy: Vec<Vec<String>>,
    reference: Vec<Vec<String>>,
}

fn evaluate(
    params: &EvaluateParams,
    device: &Device,
    token: &CancellationToken,
) -> Result<(EvalReport, Option<PendingMtBench>), NodeError> {
    let tokenizer_dir = if params.model.join("tokenizer.json").is_file() {
        &params.model
    } else {
        &params.reference
    };
    let tokenizer = PreferenceTokenizer::load(tokenizer_dir).map_err(model_error)?;
    let reference = Model::load(&params.reference, device).map_err(model_error)?;
    let lengths = params.lengths().resolve(&reference.config)?;
    let tokenized = tokenize_pairs(&tokenizer, read_pairs(&params.dataset)?, &lengths);
    tokenized.require_some("dataset")?;
    let sequences: Vec<Sequence> = tokenized
        .kept
        .iter()
        .flat_map(|(_, pair)| pair.sequences())
        .collect();
    let context = reference.config.max_position_embeddings;
    let tasks = load_tasks(&params.tasks, &tokenizer, context)?;
    let pair_origin = |i: usize| {
        let side = if i.is_multiple_of(2) {
            "chosen"
        } else {
            "rejected"
        };
        format!("pair `{}` ({side})", tokenized.kept[i / 2].0)
    };

    let mt_questions = params
        .mt_bench
        .as_ref()
        .map(mt_bench::read_questions)
        .transpose()?;
    let mut owned_template = None;
    let mt_template = match &params.mt_bench {
        Some(mt) => Some(mt_bench::template(mt, &tokenizer, &mut owned_template)?),
        None => None,
    };
    let mut mt_answers = Vec::new();

    let policy = load_policy(&params.model, &reference, device)?;
    let mut pair_scores = Vec::new();
    let mut per_model = Vec::new();
    for model in [policy, reference] {
        let scorer = Scorer::new(model);
        let seq_scores = score_all(&scorer, (&sequences, &pair_origin), params, device, token)?;
        let mut scores = model_scores(&seq_scores);
        for task in &tasks {
            let origin = |i: usize| task.origins[i].clone();
            let results = score_all(&scorer, (&task.sequences, &origin), params, device, token)?;
            let preset = metrics::preset_name(task.spec.preset);
            let graded = metrics::grade(
                &task.docs,
                &task.spec.metrics(),
                task.spec.num_fewshot,
                preset,
                &results,
            );
            scores.tasks.insert(task.name.clone(), graded);
        }
        let mut answers = Vec::new();
        for prompt in &params.prompts {
            check_cancelled(token)?;
            answers.push(answer(&scorer, &tokenizer, prompt, params)?);
        }
        if let (Some(mt), Some(questions), Some(template)) =
            (&params.mt_bench, &mt_questions, mt_template)
        {
            check_cancelled(token)?;
            let settings = (mt.max_new_tokens, params.seed);
            mt_answers.push(mt_bench::answer_all(
                &scorer, &tokenizer, template, questions, settings,
            )?);
        }
        pair_scores.push(seq_scores);
        per_model.push((scores, answers));
    }
    let (reference, reference_answers) = per_model.pop().expect("two models");
    let (policy, policy_answers) = per_model.pop().expect("two models");
    let samples = params
        .prompts
        .iter()
        .zip(policy_answers.into_iter().zip(reference_answers))
        .map(|(prompt, (policy, reference))| Sample {
            prompt: prompt.clone(),
            policy,
            reference,
        })
        .collect();
    let mut report = EvalReport {
        policy,
        reference,
        samples,
        ..EvalReport::default()
    };
    report.preference = preference_scores(&pair_scores[0], &pair_scores[1], params.beta);
    report.preference.skipped = tokenized.dropped.len();
    report.preference.dropped = tokenized.dropped;
    let pending = mt_questions.map(|questions| {
        let reference = mt_answers.pop().unwrap_or_default();
        let policy = mt_answers.pop().unwrap_or_default();
        PendingMtBench {
            questions,
            policy,
            reference,
        }
    });
    Ok((report, pending))
}

/// A model's greedy and sampled answer to `prompt`.
fn answer(
    scorer: &Scorer,
    tokenizer: &PreferenceTokenizer,
    prompt: &str,
    params: &EvaluateParams,
) -> Result<Answers, NodeError> {
    let ids = tokenizer.encode(prompt);
    let run = |sampling: Sampling| -> Result<String, NodeError> {
        let new = generate(
            scorer.model(),
            scorer.head(),
            &ids,
            &tokenizer.stop_ids,
            params.max_new_tokens,
            sampling,
        )
        .map_err(|e| NodeError::new(format!("prompt {prompt:?}: {e}")))?;
        Ok(tokenizer.decode(&new))
    };
    Ok(Answers {
        greedy: run(Sampling::GREEDY)?,
        sampled: run(Sampling {
            temperature: params.temperature,
            top_p: params.top_p,
            seed: params.seed,
        })?,
    })
}

/// A full model directory, or a PEFT adapter applied to (a copy of) the reference and merged.
fn load_policy(dir: &Path, reference: &Model, device: &Device) -> Result<Model, NodeError> {
    if dir.join("adapter_config.json").is_file() {
        let mut model = reference.clone();
        flow_model::tensor::lora::load_peft(&mut model, dir).map_err(model_error)?;
        Ok(flow_model::tensor::lora::merged(&model))
    } else {
        Model::load(dir, device).map_err(model_error)
    }
}

/// Each sequence's completion log-prob sum and completion length, in batches of
/// `params.batch_size`; `origin(i)` names sequence `i` in errors (a failed batch, a
/// non-finite score).
fn score_all(
    scorer: &Scorer,
    (sequences, origin): (&[Sequence], &dyn Fn(usize) -> String),
    params: &EvaluateParams,
    device: &Device,
    token: &CancellationToken,
) -> Result<SeqScores, NodeError> {
    let mut scores = Vec::with_capacity(sequences.len());
    for batch in sequences.chunks(params.batch_size) {
        check_cancelled(token)?;
        let first = scores.len();
        let sums = scorer.score(batch, device).map_err(|e| {
            let last = first + batch.len() - 1;
            NodeError::new(format!(
                "scoring {} to {}: {e}",
                origin(first),
                origin(last)
            ))
        })?;
        for (i, (sum, sequence)) in sums.sums.into_iter().zip(batch).enumerate() {
            if !sum.is_finite() {
                return Err(NodeError::new(format!(
                    "{}: the model gives a non-finite log-prob ({sum}); its weights or config hold NaN or infinite values",
                    origin(first + i)
                )));
            }
            scores.push((sum, sequence.completion_len()));
        }
    }
    Ok(scores)
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// A model's own scores from its (chosen, rejected, chosen, rejected, …) sequence scores.
fn model_scores(scores: &[(f64, usize)]) -> ModelScores {
    let per_token = |(sum, n): (f64, usize)| sum / n.max(1) as f64;
    let chosen: Vec<(f64, usize)> = scores.iter().step_by(2).copied().collect();
    let rejected: Vec<(f64, usize)> = scores.iter().skip(1).step_by(2).copied().collect();
    let total_logp: f64 = chosen.iter().map(|c| c.0).sum();
    let total_tokens: usize = chosen.iter().map(|c| c.1).sum();
    let share = |prefers: &dyn Fn((f64, usize), (f64, usize)) -> bool| {
        mean(
            chosen
                .iter()
                .zip(&rejected)
                .map(|(&c, &r)| f64::from(u8::from(prefers(c, r)))),
        )
    };
    ModelScores {
        win_rate: share(&|c, r| c.0 > r.0),
        win_rate_per_token: share(&|c, r| per_token(c) > per_token(r)),
        logps_chosen: mean(chosen.iter().map(|&c| per_token(c))),
        logps_rejected: mean(rejected.iter().map(|&r| per_token(r))),
        perplexity: (-total_logp / total_tokens.max(1) as f64).exp(),
        tasks: BTreeMap::new(),
    }
}

/// TRL's implicit-reward metrics from policy and reference sequence scores.
fn preference_scores(
    policy: &[(f64, usize)],
    reference: &[(f64, usize)],
    beta: f64,
) -> PreferenceScores {
    let rewards: Vec<f64> = policy
        .iter()
        .zip(reference)
        .map(|(p, r)| beta * (p.0 - r.0))
        .collect();
    let chosen: Vec<f64> = rewards.iter().step_by(2).copied().collect();
    let rejected: Vec<f64> = rewards.iter().skip(1).step_by(2).copied().collect();
    let margins: Vec<f64> = chosen.iter().zip(&rejected).map(|(c, r)| c - r).collect();
    PreferenceScores {
        pairs: chosen.len(),
        skipped: 0,
        beta,
        reward_accuracy: mean(margins.iter().map(|&m| f64::from(u8::from(m > 0.0)))),
        reward_margin: mean(margins.iter().copied()),
        reward_chosen: mean(chosen.iter().copied()),
        reward_rejected: mean(rejected.iter().copied()),
        margins,
        dropped: Vec::new(),
    }
}
