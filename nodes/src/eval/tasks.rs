//! Multiple-choice tasks for `evaluate`: JSONL files of `{question, choices, answer}`, scored as
//! lm-evaluation-harness does (the log-likelihood of `" " + choice` after the question).

use flow_engine::node::NodeError;
use flow_model::generate::argmax;
use flow_model::scoring::Sequence;
use flow_model::tokenize::{PreferenceTokenizer, common_prefix};
use serde::Deserialize;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::results::TaskScores;

/// A multiple-choice task: its questions as scored sequences.
pub(super) struct Task {
    pub(super) name: String,
    /// Choices per question and the right answer's index.
    pub(super) questions: Vec<(usize, usize)>,
    /// Byte length of each `" " + choice`, in sequence order.
    pub(super) bytes: Vec<usize>,
    /// One sequence per choice, questions one after another.
    pub(super) sequences: Vec<Sequence>,
    /// Where each sequence comes from (`file:line choice k`), for errors.
    pub(super) origins: Vec<String>,
}

#[derive(Deserialize)]
struct Question {
    question: String,
    choices: Vec<String>,
    answer: usize,
}

/// Reads every task file for a model whose context holds `context` tokens.
///
/// Errors (`file:line`): a row that is not `{question, choices, answer}`, fewer than two
/// choices, `answer` out of range, a choice that adds no token after the question, or a
/// question and choice longer than the context.
pub(super) fn load_tasks(
    paths: &[PathBuf],
    tokenizer: &PreferenceTokenizer,
    context: usize,
) -> Result<Vec<Task>, NodeError> {
    paths
        .iter()
        .map(|p| load_task(p, tokenizer, context))
        .collect()
}

fn load_task(
    path: &Path,
    tokenizer: &PreferenceTokenizer,
    context_size: usize,
) -> Result<Task, NodeError> {
    let at = |line: usize, msg: &dyn std::fmt::Display| {
        NodeError::new(format!("{}:{line}: {msg}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(|e| at(0, &e))?;
    let mut task = Task {
        name: path
            .file_stem()
            .map_or("task".into(), |s| s.to_string_lossy().to_string()),
        questions: Vec::new(),
        bytes: Vec::new(),
        sequences: Vec::new(),
        origins: Vec::new(),
    };
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| at(n + 1, &e))?;
        if line.trim().is_empty() {
            continue;
        }
        let q: Question = serde_json::from_str(&line).map_err(|e| {
            at(
                n + 1,
                &format!("expected {{question, choices, answer}}: {e}"),
            )
        })?;
        if q.choices.len() < 2 || q.answer >= q.choices.len() {
            return Err(at(
                n + 1,
                &"needs at least two choices and `answer` < their number",
            ));
        }
        let context = tokenizer.encode(&q.question);
        for (k, choice) in q.choices.iter().enumerate() {
            let continuation = format!(" {choice}");
            let full = tokenizer.encode(&format!("{}{continuation}", q.question));
            let shared = common_prefix(&context, &full);
            if shared >= full.len() {
                return Err(at(
                    n + 1,
                    &format!(
                        "choice {} ({choice:?}) adds no token after the question",
                        k + 1
                    ),
                ));
            }
            if full.len() > context_size {
                return Err(at(
                    n + 1,
                    &format!(
                        "the question and choice {} are {} tokens; the model's context is {context_size} (max_position_embeddings)",
                        k + 1,
                        full.len()
                    ),
                ));
            }
            // A choice's first token is scored after at least one token (lm-evaluation-harness
            // scores an empty question's first token after its end-of-text token).
            let start = shared.max(1);
            task.origins
                .push(format!("{}:{} choice {}", path.display(), n + 1, k + 1));
            task.bytes.push(continuation.len());
            task.sequences.push(Sequence {
                ids: full,
                completion_start: start,
            });
        }
        task.questions.push((q.choices.len(), q.answer));
    }
    if task.questions.is_empty() {
        return Err(at(0, &"no questions"));
    }
    Ok(task)
}

impl Task {
    /// `acc` and `acc_norm` from the choices' log-likelihoods.
    pub(super) fn grade(&self, scores: &[(f64, usize)]) -> TaskScores {
        let (mut right, mut right_norm, mut at) = (0, 0, 0);
        for &(choices, answer) in &self.questions {
            let lls = &scores[at..at + choices];
            let bytes = &self.bytes[at..at + choices];
            let best = argmax(lls.iter().map(|s| s.0));
            let best_norm = argmax(lls.iter().zip(bytes).map(|(s, &b)| s.0 / b as f64));
            right += usize::from(best == answer);
            right_norm += usize::from(best_norm == answer);
            at += choices;
        }
        let n = self.questions.len() as f64;
        TaskScores {
            questions: self.questions.len(),
            acc: right as f64 / n,
            acc_norm: right_norm as f64 / n,
        }
    }
}
