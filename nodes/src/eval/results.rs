//! What `evaluate` measured, as `eval.json` holds it: the types the evaluation, the judge and
//! the report share. Plain data: nothing here computes or writes anything.

use serde::Serialize;
use std::collections::BTreeMap;

pub use super::tasks::metrics::TaskScores;
use crate::tokenization::Dropped;

/// What one model scored.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ModelScores {
    /// Share of pairs where the summed log-prob of chosen exceeds rejected's.
    pub win_rate: f64,
    /// Share of pairs where the mean per-token log-prob of chosen exceeds rejected's.
    pub win_rate_per_token: f64,
    /// Mean per-token log-prob of chosen completions.
    pub logps_chosen: f64,
    /// Mean per-token log-prob of rejected completions.
    pub logps_rejected: f64,
    /// `exp(−Σ log p / Σ tokens)` over chosen completions.
    pub perplexity: f64,
    /// Multiple-choice results by task name.
    pub tasks: BTreeMap<String, TaskScores>,
}

/// Implicit-reward metrics (TRL's names in `eval.json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PreferenceScores {
    /// Pairs evaluated.
    pub pairs: usize,
    /// Pairs not evaluated (see `dropped`).
    pub skipped: usize,
    /// β used.
    pub beta: f64,
    /// `rewards/accuracies`.
    #[serde(rename = "rewards/accuracies")]
    pub reward_accuracy: f64,
    /// `rewards/margins`.
    #[serde(rename = "rewards/margins")]
    pub reward_margin: f64,
    /// `rewards/chosen`.
    #[serde(rename = "rewards/chosen")]
    pub reward_chosen: f64,
    /// `rewards/rejected`.
    #[serde(rename = "rewards/rejected")]
    pub reward_rejected: f64,
    /// Every pair's margin, for the histogram.
    pub margins: Vec<f64>,
    /// The pairs not evaluated, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<Dropped>,
}

/// Everything `evaluate` measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalReport {
    /// Held-out preference metrics.
    pub preference: PreferenceScores,
    /// The policy's own scores.
    pub policy: ModelScores,
    /// The reference's own scores.
    pub reference: ModelScores,
    /// Answers of both models to the `prompts`.
    pub samples: Vec<Sample>,
    /// The LLM judge's pairwise verdicts, when a judge was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeScores>,
    /// MT-Bench ratings, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mt_bench: Option<MtBenchResults>,
}

/// One prompt's answers from both models.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// The prompt.
    pub prompt: String,
    /// The policy's answers.
    pub policy: Answers,
    /// The reference's answers.
    pub reference: Answers,
}

/// A model's greedy and sampled answer to one prompt.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Answers {
    /// Greedy decoding.
    pub greedy: String,
    /// Temperature + top-p sampling.
    pub sampled: String,
}

/// The judge's results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JudgeScores {
    /// The judge model.
    pub model: String,
    /// Share of valid verdicts that prefer the policy (`null` when no verdict was valid).
    pub win_rate: Option<f64>,
    /// Verdicts for the policy.
    pub wins: usize,
    /// Verdicts for the reference.
    pub losses: usize,
    /// Answers that named neither A nor B.
    pub invalid: usize,
    /// One verdict per prompt.
    pub verdicts: Vec<Verdict>,
}

/// The judge's verdict on one prompt.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verdict {
    /// The prompt.
    pub prompt: String,
    /// Where the policy's answer was shown: `A` or `B`.
    pub policy_position: String,
    /// The judge's raw answer.
    pub answer: String,
    /// `policy`, `reference` or `invalid`.
    pub winner: String,
}

/// MT-Bench single-answer grading (FastChat's `llm_judge`): both models' answers to every
/// question, the judge's ratings and their means.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MtBenchResults {
    /// The judge model.
    pub judge: String,
    /// Questions asked.
    pub questions: usize,
    /// The policy's ratings.
    pub policy: MtBenchScores,
    /// The reference's ratings.
    pub reference: MtBenchScores,
    /// Every question with both models' answers, turn by turn.
    pub answers: Vec<MtBenchAnswer>,
}

/// One model's MT-Bench means (`null` where no valid rating exists), as FastChat's
/// `show_result.py` computes them: ratings the judge did not give are left out.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MtBenchScores {
    /// Mean of every valid rating, both turns.
    pub average: Option<f64>,
    /// Mean of the first turns' ratings.
    pub first_turn: Option<f64>,
    /// Mean of the second turns' ratings.
    pub second_turn: Option<f64>,
    /// Mean rating (both turns) by category.
    pub categories: BTreeMap<String, f64>,
    /// Replies with no rating in 1–10 after every retry.
    pub invalid: usize,
    /// Every judgment.
    pub judgments: Vec<MtBenchJudgment>,
}

/// The judge's rating of one turn of one answer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MtBenchJudgment {
    /// The question's id.
    pub question_id: serde_json::Value,
    /// Its category.
    pub category: String,
    /// 1 or 2.
    pub turn: usize,
    /// FastChat's prompt (`single-v1`, `single-math-v1`, …).
    pub prompt: String,
    /// The rating, when the judge gave one.
    pub score: Option<f64>,
    /// Requests it took (a reply without a rating is asked again).
    pub attempts: u32,
    /// The judge's last reply.
    pub judgment: String,
}

/// One question and both models' answers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MtBenchAnswer {
    /// The question's id.
    pub question_id: serde_json::Value,
    /// Its category.
    pub category: String,
    /// The user's turns.
    pub turns: Vec<String>,
    /// The policy's answers, one per turn.
    pub policy: Vec<String>,
    /// The reference's answers, one per turn.
    pub reference: Vec<String>,
}
