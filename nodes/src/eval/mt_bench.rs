//! MT-Bench single-answer grading as FastChat's `llm_judge` does it (lm-sys/FastChat
//! `fastchat/llm_judge`, the harness MT-Bench-DE uses): both models answer each question's
//! two turns through their chat template (temperature by category, as `gen_model_answer.py`),
//! an OpenAI-compatible judge rates each turn 1–10 with FastChat's single-answer prompts
//! (`single-v1`, `single-math-v1` with a reference answer for math, reasoning and coding, and
//! their `-multi-turn` forms for the second turn), the rating is the first `[[n]]` of the reply
//! (else the first `[n]`), and the means are `show_result.py`'s: replies without a rating are
//! left out, the average is over every valid rating of both turns.
//!
//! Where flow differs from FastChat: a reply without a rating (or outside 1–10) is asked again
//! up to the judge's `max_retries` before it counts as invalid; a request that fails after its
//! retries is invalid (FastChat's `$ERROR$`) while a refused key stops the run; a question that
//! needs a reference answer and has none, or two questions with one id, is an error.

use flow_engine::node::NodeError;
use flow_model::generate::{Sampling, generate};
use flow_model::scoring::Scorer;
use flow_model::tokenize::PreferenceTokenizer;
use flow_model::tokenize::chat::{ChatTemplate, Message};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::judge::{self, JudgeParams};
use super::results::{MtBenchAnswer, MtBenchJudgment, MtBenchResults, MtBenchScores};
use crate::chat_client::{ClientError, TextClient};
use crate::dataset::chat_template::{self, ChatTemplateParam};

/// `mt_bench:` of `evaluate`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MtBenchParams {
    /// MT-Bench questions (JSONL: `question_id`, `category`, `turns` (one or two user turns), optional `reference` answers), e.g. MT-Bench-DE's `question.jsonl`.
    pub questions: PathBuf,
    /// FastChat's reference answers (`reference_answer/gpt-4.jsonl`: `question_id`, `choices[0].turns`) for math, reasoning and coding; a question's own `reference` is used where this has none.
    #[serde(default)]
    pub reference_answers: Option<PathBuf>,
    /// The judge (OpenAI-compatible endpoint), e.g. `{base_url: https://api.openai.com/v1, model: gpt-4, api_key: ${secret.OPENAI_API_KEY}}`.
    pub judge: JudgeParams,
    /// Longest answer per turn, in tokens (FastChat: 1024).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// The chat template the models answer through: `mistral`, `chatml` or a tokenizer directory (default: the model's own).
    #[serde(default)]
    pub chat_template: Option<ChatTemplateParam>,
}

fn default_max_new_tokens() -> usize {
    1024
}

/// Categories FastChat judges against a reference answer (`NEED_REF_CATS`).
const NEEDS_REFERENCE: [&str; 4] = ["math", "reasoning", "coding", "arena-hard-200"];

/// One MT-Bench question.
#[derive(Clone, Debug)]
pub struct Question {
    /// `question_id` as written (a number in MT-Bench).
    pub id: Json,
    /// `category`.
    pub category: String,
    /// The user's turns (one or two).
    pub turns: Vec<String>,
    /// The reference answers the judge compares with, when its category needs them.
    pub reference: Option<Vec<String>>,
}

impl Question {
    fn id_text(&self) -> String {
        match &self.id {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

/// Reads the questions and attaches reference answers where the category needs them.
///
/// Errors (`file:line`): a row that is not `{question_id, category, turns}`, no turns or more
/// than two, a repeated id, a math/reasoning/coding question without a reference answer.
pub fn read_questions(params: &MtBenchParams) -> Result<Vec<Question>, NodeError> {
    let references = match &params.reference_answers {
        Some(path) => read_reference_answers(path)?,
        None => HashMap::new(),
    };
    let path = &params.questions;
    let mut questions: Vec<Question> = Vec::new();
    for (line, row) in jsonl(path)? {
        let at = |msg: String| NodeError::new(format!("{}:{line}: {msg}", path.display()));
        #[derive(Deserialize)]
        struct Row {
            question_id: Json,
            category: String,
            turns: Vec<String>,
            #[serde(default)]
            reference: Option<Vec<String>>,
        }
        let row: Row = serde_json::from_value(row).map_err(|e| {
            at(format!(
                "expected {{question_id, category, turns, reference?}}: {e}"
            ))
        })?;
        if !(1..=2).contains(&row.turns.len()) {
            return Err(at(format!(
                "`turns` holds {} turns; MT-Bench has one or two",
                row.turns.len()
            )));
        }
        let mut question = Question {
            id: row.question_id,
            category: row.category,
            turns: row.turns,
            reference: None,
        };
        if questions.iter().any(|q| q.id_text() == question.id_text()) {
            return Err(at(format!(
                "question_id {} appears twice",
                question.id_text()
            )));
        }
        if NEEDS_REFERENCE.contains(&question.category.as_str()) {
            let reference = references
                .get(&question.id_text())
                .cloned()
                .or(row.reference);
            match reference {
                Some(r) if r.len() >= question.turns.len() => question.reference = Some(r),
                _ => {
                    return Err(at(format!(
                        "question {} ({}) is judged against a reference answer per turn: give `reference_answers` (FastChat's reference_answer/gpt-4.jsonl) or a `reference` list in the question",
                        question.id_text(),
                        question.category
                    )));
                }
            }
        }
        questions.push(question);
    }
    if questions.is_empty() {
        return Err(NodeError::new(format!("{}: no questions", path.display())));
    }
    Ok(questions)
}

/// FastChat's answer files: `{question_id, choices: [{turns: [...]}]}` by question id.
fn read_reference_answers(path: &Path) -> Result<HashMap<String, Vec<String>>, NodeError> {
    let mut answers = HashMap::new();
    for (line, row) in jsonl(path)? {
        let turns: Option<Vec<String>> = row["choices"][0]["turns"]
            .as_array()
            .and_then(|t| t.iter().map(|v| v.as_str().map(String::from)).collect());
        let (Some(turns), Some(id)) = (turns, row.get("question_id")) else {
            return Err(NodeError::new(format!(
                "{}:{line}: expected {{question_id, choices: [{{turns: [...]}}]}}",
                path.display()
            )));
        };
        let id = match id {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        answers.insert(id, turns);
    }
    Ok(answers)
}

/// The JSON rows of a JSONL file with their line numbers.
fn jsonl(path: &Path) -> Result<Vec<(usize, Json)>, NodeError> {
    let fail = |line: usize, msg: &dyn std::fmt::Display| {
        NodeError::new(format!("{}:{line}: {msg}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(|e| fail(0, &e))?;
    let mut rows = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| fail(n + 1, &e))?;
        let line = line.trim_start_matches('\u{feff}');
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(line).map_err(|e| fail(n + 1, &format!("bad JSON: {e}")))?;
        rows.push((n + 1, row));
    }
    Ok(rows)
}

/// FastChat's generation temperature of a category (`temperature_config`); below 1e-4 it
/// decodes greedily.
pub fn temperature(category: &str) -> f64 {
    match category {
        "extraction" | "math" | "coding" | "reasoning" => 0.0,
        "stem" | "humanities" => 0.1,
        _ => 0.7,
    }
}

/// The chat template answers are generated through.
pub fn template<'t>(
    params: &MtBenchParams,
    tokenizer: &'t PreferenceTokenizer,
    owned: &'t mut Option<ChatTemplate>,
) -> Result<&'t ChatTemplate, NodeError> {
    if let Some(param) = &params.chat_template {
        return Ok(owned.insert(chat_template::load(param)?));
    }
    tokenizer.template.as_ref().ok_or_else(|| {
        NodeError::new(
            "mt_bench: the model's tokenizer has no chat template; set `mt_bench.chat_template` (`mistral`, `chatml` or a tokenizer directory)",
        )
    })
}

/// One model's answers to every turn of every question, the conversation growing turn by turn.
pub fn answer_all(
    scorer: &Scorer,
    tokenizer: &PreferenceTokenizer,
    template: &ChatTemplate,
    questions: &[Question],
    (max_new_tokens, seed): (usize, u64),
) -> Result<Vec<Vec<String>>, NodeError> {
    let mut all = Vec::with_capacity(questions.len());
    for question in questions {
        let mut conversation = Vec::new();
        let mut answers = Vec::new();
        for (turn, text) in question.turns.iter().enumerate() {
            conversation.push(Message::new("user", text));
            let prompt = template.render(&conversation, true).map_err(|e| {
                NodeError::new(format!("mt_bench question {}: {e}", question.id_text()))
            })?;
            let temperature = temperature(&question.category);
            let sampling = if temperature < 1e-4 {
                Sampling::GREEDY
            } else {
                Sampling {
                    temperature,
                    top_p: 1.0,
                    seed: seed ^ ((all.len() as u64) << 8) ^ turn as u64,
                }
            };
            let ids = tokenizer.encode_plain(&prompt);
            let new = generate(
                scorer.model(),
                scorer.head(),
                &ids,
                &tokenizer.stop_ids,
                max_new_tokens,
                sampling,
            )
            .map_err(|e| {
                NodeError::new(format!(
                    "mt_bench question {} turn {}: {e}",
                    question.id_text(),
                    turn + 1
                ))
            })?;
            let answer = tokenizer.decode(&new).trim().to_string();
            conversation.push(Message::new("assistant", &answer));
            answers.push(answer);
        }
        all.push(answers);
    }
    Ok(all)
}

/// FastChat's single-answer judge prompts (`data/judge_prompts.jsonl`, verbatim): its name,
/// system prompt and user prompt for one turn of one answer.
pub fn judge_prompt(
    question: &Question,
    answers: &[String],
    turn: usize,
) -> (String, String, String) {
    const RATE: &str = "After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".";
    let reference = question.reference.as_deref();
    let q = &question.turns;
    let a = answers;
    match (turn, reference) {
        (1, None) => (
            "single-v1".into(),
            "You are a helpful assistant.".into(),
            format!(
                "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your evaluation by providing a short explanation. Be as objective as possible. {RATE}\n\n[Question]\n{}\n\n[The Start of Assistant's Answer]\n{}\n[The End of Assistant's Answer]",
                q[0], a[0]
            ),
        ),
        (1, Some(r)) => (
            "single-math-v1".into(),
            "You are a helpful assistant.".into(),
            format!(
                "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider correctness and helpfulness. You will be given a reference answer and the assistant's answer. Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and correct any mistakes. Be as objective as possible. {RATE}\n\n[Question]\n{}\n\n[The Start of Reference Answer]\n{}\n[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{}\n[The End of Assistant's Answer]",
                q[0], r[0], a[0]
            ),
        ),
        (_, None) => (
            "single-v1-multi-turn".into(),
            format!(
                "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. You evaluation should focus on the assistant's answer to the second user question. Begin your evaluation by providing a short explanation. Be as objective as possible. {RATE}\n\n"
            ),
            conversation_block(q, a),
        ),
        (_, Some(r)) => (
            "single-math-v1-multi-turn".into(),
            format!(
                "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question. Your evaluation should consider correctness and helpfulness. You will be given a reference answer and the assistant's answer. You evaluation should focus on the assistant's answer to the second question. Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and correct any mistakes. Be as objective as possible. {RATE}\n\n"
            ),
            format!(
                "<|The Start of Reference Answer|>\n\n### User:\n{}\n\n### Reference answer:\n{}\n\n### User:\n{}\n\n### Reference answer:\n{}\n\n<|The End of Reference Answer|>\n\n\n{}",
                q[0],
                r[0],
                q[1],
                r[1],
                conversation_block(q, a)
            ),
        ),
    }
}

/// The two-turn conversation as the multi-turn prompts show it.
fn conversation_block(q: &[String], a: &[String]) -> String {
    format!(
        "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{}\n\n### Assistant A:\n{}\n\n### User:\n{}\n\n### Assistant A:\n{}\n\n<|The End of Assistant A's Conversation with User|>",
        q[0], a[0], q[1], a[1]
    )
}

/// The rating of a judge's reply: the first `[[n]]`, else the first `[n]` (FastChat's
/// patterns), kept only when it lies in 1–10.
pub fn rating(reply: &str) -> Option<f64> {
    static PATTERNS: std::sync::OnceLock<[regex::Regex; 2]> = std::sync::OnceLock::new();
    let [strict, backup] = PATTERNS.get_or_init(|| {
        [
            regex::Regex::new(r"\[\[(\d+\.?\d*)\]\]").expect("a valid regex"),
            regex::Regex::new(r"\[(\d+\.?\d*)\]").expect("a valid regex"),
        ]
    });
    let found = strict.captures(reply).or_else(|| backup.captures(reply))?;
    let value: f64 = found[1].parse().ok()?;
    (1.0..=10.0).contains(&value).then_some(value)
}

/// Rates every turn of every answer of each model and computes the means.
pub async fn grade(
    params: &MtBenchParams,
    questions: &[Question],
    policy: Vec<Vec<String>>,
    reference: Vec<Vec<String>>,
) -> Result<MtBenchResults, NodeError> {
    let client = judge::client(&params.judge)?;
    let retries = params.judge.max_retries;
    let policy_scores = grade_model(&client, retries, questions, &policy).await?;
    let reference_scores = grade_model(&client, retries, questions, &reference).await?;
    let answers = questions
        .iter()
        .zip(policy.into_iter().zip(reference))
        .map(|(q, (policy, reference))| MtBenchAnswer {
            question_id: q.id.clone(),
            category: q.category.clone(),
            turns: q.turns.clone(),
            policy,
            reference,
        })
        .collect();
    Ok(MtBenchResults {
        judge: params.judge.model.clone(),
        questions: questions.len(),
        policy: policy_scores,
        reference: reference_scores,
        answers,
    })
}

/// One model's judgments (requests in flight at once, up to the client's concurrency).
async fn grade_model(
    client: &TextClient,
    retries: u32,
    questions: &[Question],
    answers: &[Vec<String>],
) -> Result<MtBenchScores, NodeError> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut judgments = Vec::new();
    for (question, answers) in questions.iter().zip(answers) {
        for turn in 1..=question.turns.len() {
            let (prompt, system, user) = judge_prompt(question, answers, turn);
            let index = judgments.len();
            judgments.push(MtBenchJudgment {
                question_id: question.id.clone(),
                category: question.category.clone(),
                turn,
                prompt,
                ..MtBenchJudgment::default()
            });
            let client = client.clone();
            tasks.spawn(async move {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let reply = client.complete(&system, &user, "").await;
                    match reply {
                        Ok(text) if rating(&text).is_none() && attempts <= retries => continue,
                        other => return (index, attempts, other),
                    }
                }
            });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        let (index, attempts, reply) =
            joined.map_err(|e| NodeError::new(format!("mt_bench judge task failed: {e}")))?;
        let judgment = &mut judgments[index];
        judgment.attempts = attempts;
        match reply {
            Ok(reply) => {
                judgment.score = rating(&reply);
                judgment.judgment = reply;
            }
            // A key or endpoint no request can pass: nothing else will be judged either.
            Err(ClientError::Fatal(why)) => {
                return Err(NodeError::new(format!("mt_bench judge: {why}")));
            }
            // This request failed after its retries: FastChat's `$ERROR$`, an invalid rating.
            Err(ClientError::Failed(why)) => judgment.judgment = format!("$ERROR$ {why}"),
        }
    }
    means(judgments)
}

/// `show_result.py`'s means over the valid ratings; an error when the judge gave none.
pub fn means(judgments: Vec<MtBenchJudgment>) -> Result<MtBenchScores, NodeError> {
    let mean = |keep: &dyn Fn(&MtBenchJudgment) -> bool| {
        let values: Vec<f64> = judgments
            .iter()
            .filter(|j| keep(j))
            .filter_map(|j| j.score)
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let Some(average) = mean(&|_| true) else {
        let first = judgments.first().map_or("", |j| j.judgment.as_str());
        return Err(NodeError::new(format!(
            "mt_bench: the judge gave no rating in 1–10 in any of its {} replies (first reply: {first:?})",
            judgments.len()
        )));
    };
    let mut categories = BTreeMap::new();
    for category in judgments.iter().map(|j| j.category.clone()) {
        if let Some(value) = mean(&|j| j.category == category) {
            categories.insert(category, value);
        }
    }
    Ok(MtBenchScores {
        average: Some(average),
        first_turn: mean(&|j| j.turn == 1),
        second_turn: mean(&|j| j.turn == 2),
        categories,
        invalid: judgments.iter().filter(|j| j.score.is_none()).count(),
        judgments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_are_read_as_fastchat_reads_them() {
        assert_eq!(rating("Gut erklärt. Rating: [[8]]"), Some(8.0));
        assert_eq!(rating("[[7.5]] then [[2]]"), Some(7.5), "the first match");
        assert_eq!(rating("Bewertung [6]"), Some(6.0), "the backup pattern");
        assert_eq!(rating("[[15]]"), None, "outside 1–10");
        assert_eq!(rating("no rating"), None);
    }

    #[test]
    fn prompts_are_fastchat_s_per_turn_and_category() {
        let q = Question {
            id: 101.into(),
            category: "math".into(),
            turns: vec!["Was ist 2+2?".into(), "Und 3+3?".into()],
            reference: Some(vec!["4".into(), "6".into()]),
        };
        let answers = ["Vier.".to_string(), "Sechs.".to_string()];
        let (name, system, user) = judge_prompt(&q, &answers, 1);
        assert_eq!(
            (name.as_str(), system.as_str()),
            ("single-math-v1", "You are a helpful assistant.")
        );
        assert!(user.ends_with("[Question]\nWas ist 2+2?\n\n[The Start of Reference Answer]\n4\n[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\nVier.\n[The End of Assistant's Answer]"), "{user}");
        let (name, system, user) = judge_prompt(&q, &answers, 2);
        assert_eq!(name, "single-math-v1-multi-turn");
        assert!(system.ends_with("for example: \"Rating: [[5]]\".\n\n"));
        assert!(user.starts_with("<|The Start of Reference Answer|>\n\n### User:\nWas ist 2+2?\n\n### Reference answer:\n4\n\n"), "{user}");
        assert!(user.ends_with("### User:\nUnd 3+3?\n\n### Assistant A:\nSechs.\n\n<|The End of Assistant A's Conversation with User|>"));
        // Braces in an answer stay as they are (FastChat formats in one pass).
        let plain = Question {
            category: "writing".into(),
            reference: None,
            ..q
        };
        let (name, _, user) = judge_prompt(&plain, &["{answer}".to_string()], 1);
        assert_eq!(name, "single-v1");
        assert!(user.contains("[The Start of Assistant's Answer]\n{answer}\n"));
    }

    #[test]
    fn means_leave_out_missing_ratings_and_average_over_all_turns() {
        let j = |category: &str, turn, score| MtBenchJudgment {
            category: category.into(),
            turn,
            score,
            ..MtBenchJudgment::default()
        };
        let scores = means(vec![
            j("writing", 1, Some(8.0)),
            j("writing", 2, Some(6.0)),
            j("math", 1, Some(4.0)),
            j("math", 2, None),
        ])
        .unwrap();
        assert_eq!(
            scores.average,
            Some(6.0),
            "(8 + 6 + 4) / 3, not the mean of the turn means"
        );
        assert_eq!(
            (scores.first_turn, scores.second_turn),
            (Some(6.0), Some(6.0))
        );
        assert_eq!(scores.categories["math"], 4.0);
        assert_eq!(scores.invalid, 1);
        assert!(means(vec![j("math", 1, None)]).is_err());
    }
}
