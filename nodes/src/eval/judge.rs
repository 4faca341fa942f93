//! LLM-as-judge for `evaluate`: an OpenAI-compatible model compares the policy's and the
//! reference's greedy answer to each prompt. The two answers are shown in a seeded random order
//! (position bias cancels out over prompts); the verdict is the letter the judge answers with.

use super::results::{JudgeScores, Sample, Verdict};
use crate::chat_client::{ClientConfig, Provider, TextClient};
use flow_engine::node::NodeError;
use flow_model::rng::SplitMix64;
use schemars::JsonSchema;
use serde::Deserialize;
use std::time::Duration;

/// The instructions the judge gets.
pub const JUDGE_PROMPT: &str = "You are an impartial judge of answers to a user's question. Compare the two answers for correctness, helpfulness and language quality (the language the question is asked in). Ignore their order and length as such. Reply with exactly one letter: A if answer A is better, B if answer B is better.";

/// The judge's endpoint (the same client as `dataset.translate`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JudgeParams {
    /// Endpoint root, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Judge model name.
    pub model: String,
    /// API key, normally `${secret.OPENAI_API_KEY}`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Requests in flight at once.
    #[serde(default = "default_judge_concurrency")]
    pub concurrency: usize,
    /// Retries of a request after 429, 5xx, a timeout or a malformed answer.
    #[serde(default = "default_judge_retries")]
    pub max_retries: u32,
    /// Seconds before one request times out.
    #[serde(default = "default_judge_timeout")]
    pub timeout_seconds: f64,
}

fn default_judge_concurrency() -> usize {
    4
}

fn default_judge_retries() -> u32 {
    4
}

fn default_judge_timeout() -> f64 {
    120.0
}

/// The letter a judge's answer names (`A` or `B`), if exactly one.
fn letter(answer: &str) -> Option<char> {
    let trimmed = answer.trim().trim_matches(|c: char| !c.is_alphanumeric());
    match trimmed.to_ascii_uppercase().as_str() {
        "A" => Some('A'),
        "B" => Some('B'),
        text => {
            let has = |l: &str| text.split(|c: char| !c.is_alphanumeric()).any(|w| w == l);
            match (has("A"), has("B")) {
                (true, false) => Some('A'),
                (false, true) => Some('B'),
                _ => None,
            }
        }
    }
}

/// The client of a judge endpoint: temperature 0 and at most 2,048 answer tokens, as FastChat
/// asks its judges.
pub fn client(params: &JudgeParams) -> Result<TextClient, NodeError> {
    TextClient::new(ClientConfig {
        max_tokens: Some(2048),
        provider: Provider::Openai,
        base_url: params.base_url.clone(),
        model: params.model.clone(),
        api_key: params.api_key.clone().filter(|k| !k.is_empty()),
        temperature: 0.0,
        concurrency: params.concurrency.max(1),
        requests_per_minute: None,
        max_retries: params.max_retries,
        timeout: Duration::from_secs_f64(params.timeout_seconds.max(0.001)),
        backoff_base: Duration::from_secs(1),
    })
    .map_err(|e| NodeError::new(e.message()))
}

/// Asks the judge about every sample.
pub async fn judge(
    params: &JudgeParams,
    samples: &[Sample],
    seed: u64,
) -> Result<JudgeScores, NodeError> {
    let client = client(params)?;
    let mut rng = SplitMix64::new(seed ^ 0x006A_7564_6765);
    let mut tasks = tokio::task::JoinSet::new();
    for (index, sample) in samples.iter().enumerate() {
        let policy_first = rng.next_u64() & 1 == 0;
        let (a, b) = if policy_first {
            (&sample.policy.greedy, &sample.reference.greedy)
        } else {
            (&sample.reference.greedy, &sample.policy.greedy)
        };
        let question = format!(
            "Question:\n{}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\nWhich answer is better? Reply with A or B.",
            sample.prompt
        );
        let client = client.clone();
        tasks.spawn(async move {
            let answer = client.complete(JUDGE_PROMPT, &question, "").await;
            (index, policy_first, answer)
        });
    }
    let mut verdicts = vec![Verdict::default(); samples.len()];
    while let Some(joined) = tasks.join_next().await {
        let (index, policy_first, answer) =
            joined.map_err(|e| NodeError::new(format!("judge task failed: {e}")))?;
        let answer = answer.map_err(|e| NodeError::new(format!("judge: {}", e.message())))?;
        let policy_letter = if policy_first { 'A' } else { 'B' };
        let winner = match letter(&answer) {
            Some(l) if l == policy_letter => "policy",
            Some(_) => "reference",
            None => "invalid",
        };
        verdicts[index] = Verdict {
            prompt: samples[index].prompt.clone(),
            policy_position: policy_letter.to_string(),
            answer,
            winner: winner.into(),
        };
    }
    let count = |w: &str| verdicts.iter().filter(|v| v.winner == w).count();
    let (wins, losses, invalid) = (count("policy"), count("reference"), count("invalid"));
    Ok(JudgeScores {
        model: params.model.clone(),
        win_rate: (wins + losses > 0).then(|| wins as f64 / (wins + losses) as f64),
        wins,
        losses,
        invalid,
        verdicts,
    })
}

#[cfg(test)]
mod tests {
    use super::letter;

    #[test]
    fn verdict_letters_are_read_leniently_but_never_guessed() {
        assert_eq!(letter("A"), Some('A'));
        assert_eq!(letter(" b."), Some('B'));
        assert_eq!(letter("Answer B is better"), Some('B'));
        assert_eq!(letter("A or B, hard to say"), None);
        assert_eq!(letter("neither"), None);
    }
}
