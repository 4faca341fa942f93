//! A task's metrics from its choices' log-likelihoods, as lm-evaluation-harness 0.4 computes them
//! (`api/task.py` `process_results` for `multiple_choice`, TruthfulQA's `process_results_mc2`,
//! `api/metrics.py` `mean` and `mean_stderr`): argmax takes the first of equal values, `acc_norm`
//! divides by the choice's length in characters (without the target delimiter), `acc_bytes` by
//! its UTF-8 bytes, `mc2` normalises `exp(ll)` over all choices and sums the true ones.

use flow_model::generate::argmax;
use serde::Serialize;
use std::collections::BTreeMap;

use super::formats::{Doc, Metric};

/// One question's scores, kept in `eval.json` so a result can be checked question by question.
#[derive(Clone, Debug, Default, Serialize)]
pub struct QuestionScores {
    /// The right choice's index.
    pub gold: usize,
    /// Each choice's summed log-likelihood, in choice order.
    pub loglikelihoods: Vec<f64>,
    /// Each choice's continuation length in tokens.
    pub continuation_tokens: Vec<usize>,
}

/// A task's results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TaskScores {
    /// Questions.
    pub questions: usize,
    /// Examples before each question.
    pub num_fewshot: usize,
    /// The row format / harness task.
    pub preset: String,
    /// Each metric's mean over the questions (`acc`, `acc_norm`, …).
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
    /// Each metric's standard error (`sample std / √n`; absent for one question).
    pub stderr: BTreeMap<String, f64>,
    /// What each metric means.
    pub definitions: BTreeMap<String, String>,
    /// Every question's log-likelihoods.
    pub per_question: Vec<QuestionScores>,
}

impl TaskScores {
    /// The value of `metric`, if reported.
    pub fn get(&self, metric: &str) -> Option<f64> {
        self.metrics.get(metric).copied()
    }

    /// How the task was run, for labels: `preset, n-shot, q questions`.
    pub fn setting(&self) -> String {
        format!(
            "{}, {}-shot, {} questions",
            self.preset, self.num_fewshot, self.questions
        )
    }
}

/// One question's value of `metric` from its choices' log-likelihoods.
pub fn question_value(metric: Metric, doc: &Doc, lls: &[f64]) -> f64 {
    let right = |pick: usize| f64::from(u8::from(pick == doc.gold));
    let per = |length: fn(&str) -> usize| {
        argmax(
            lls.iter()
                .zip(&doc.choices)
                .map(|(ll, c)| ll / length(c) as f64),
        )
    };
    match metric {
        Metric::Acc | Metric::Mc1 => right(argmax(lls.iter().copied())),
        Metric::AccNorm => right(per(|c| c.chars().count())),
        Metric::AccBytes => right(per(str::len)),
        Metric::Mc2 => {
            // exp(ll) / Σ exp(ll), shifted by the largest ll: the harness's value, also where
            // every exp(ll) underflows (below −745 the harness divides 0 by 0 and reports nan).
            let labels = doc.labels.as_deref().unwrap_or_default();
            let top = lls.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let probs: Vec<f64> = lls.iter().map(|ll| (ll - top).exp()).collect();
            let total: f64 = probs.iter().sum();
            probs
                .iter()
                .zip(labels)
                .filter(|(_, true_answer)| **true_answer)
                .map(|(p, _)| p / total)
                .sum()
        }
    }
}

/// The mean of `values` (summed in order) and its standard error (`None` for fewer than two).
pub fn mean_and_stderr(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, None);
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some(variance.sqrt() / n.sqrt()))
}

/// A task's scores from every choice's (log-likelihood, continuation tokens), in sequence order.
pub fn grade(
    docs: &[Doc],
    metrics: &[Metric],
    num_fewshot: usize,
    preset: String,
    scores: &[(f64, usize)],
) -> TaskScores {
    let mut per_question = Vec::with_capacity(docs.len());
    let mut at = 0;
    for doc in docs {
        let choices = &scores[at..at + doc.choices.len()];
        at += doc.choices.len();
        per_question.push(QuestionScores {
            gold: doc.gold,
            loglikelihoods: choices.iter().map(|c| c.0).collect(),
            continuation_tokens: choices.iter().map(|c| c.1).collect(),
        });
    }
    let mut result = TaskScores {
        questions: docs.len(),
        num_fewshot,
        preset,
        ..TaskScores::default()
    };
    for &metric in metrics {
        let values: Vec<f64> = docs
            .iter()
            .zip(&per_question)
            .map(|(doc, q)| question_value(metric, doc, &q.loglikelihoods))
            .collect();
        let (mean, stderr) = mean_and_stderr(&values);
        let name = metric_name(metric);
        result.metrics.insert(name.clone(), mean);
        result
            .definitions
            .insert(name.clone(), metric.definition().to_string());
        if let Some(stderr) = stderr {
            result.stderr.insert(name, stderr);
        }
    }
    result.per_question = per_question;
    result
}

/// The metric's key in `eval.json` (`acc`, `acc_norm`, …).
pub fn metric_name(metric: Metric) -> String {
    serde_name(metric)
}

/// The preset's name in task specs and `eval.json` (`arc_de`, …).
pub fn preset_name(preset: super::formats::Preset) -> String {
    serde_name(preset)
}

/// A unit enum variant's serde name.
fn serde_name(value: impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(choices: &[&str], gold: usize, labels: Option<Vec<bool>>) -> Doc {
        Doc {
            text: String::new(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            gold,
            labels,
            row: Default::default(),
        }
    }

    /// The harness's values for the toy task's first question (`golden/golden.out`): acc picks
    /// " 4", acc_norm divides by 1, 1, 2 characters and picks " 22".
    #[test]
    fn acc_norm_divides_by_characters_of_the_choice_alone() {
        let d = doc(&["3", "4", "22"], 1, None);
        let lls = [
            -32.939414978027344,
            -25.249176025390625,
            -33.245338439941406,
        ];
        assert_eq!(question_value(Metric::Acc, &d, &lls), 1.0);
        assert_eq!(question_value(Metric::AccNorm, &d, &lls), 0.0);
        // Umlauts: 4 characters, 6 bytes.
        let d = doc(&["Grün", "Blau"], 0, None);
        let lls = [-8.5, -8.1];
        assert_eq!(
            question_value(Metric::AccNorm, &d, &lls),
            0.0,
            "-2.125 < -2.025"
        );
        assert_eq!(
            question_value(Metric::AccBytes, &d, &lls),
            1.0,
            "-1.417 > -2.025"
        );
    }

    /// TruthfulQA's mc2 on the research example: lls (−196.2288, −141.8566, −179.0311), labels
    /// (1, 0, 1) ⇒ 7.166603585225664e-17 in the harness.
    #[test]
    fn mc2_is_the_normalised_mass_on_true_answers() {
        let d = doc(&["a", "b", "c"], 0, Some(vec![true, false, true]));
        let lls = [-196.2288, -141.8566, -179.0311];
        let value = question_value(Metric::Mc2, &d, &lls);
        assert!(
            (value / 7.166603585225664e-17 - 1.0).abs() < 1e-3,
            "{value}"
        );
        assert_eq!(
            mean_and_stderr(&[1.0, 0.0, 0.0]),
            (1.0 / 3.0, Some(0.33333333333333337))
        );
        // Where every exp(ll) underflows, the ratio is still there.
        let far = [-1196.2288, -1141.8566, -1179.0311];
        let value = question_value(Metric::Mc2, &d, &far);
        assert!(
            (value / 7.166603585225664e-17 - 1.0).abs() < 1e-3,
            "{value}"
        );
    }
}
