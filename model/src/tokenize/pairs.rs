//! Tokenization for preference pairs exactly as TRL's `DPOTrainer` does it: the prompt and
//! prompt + completion are each tokenized with the tokenizer's own special-token settings, the
//! completion starts where the two id lists diverge, and EOS is appended to each completion.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{ModelError, Result};
use crate::sequence::Sequence;

/// A `tokenizer.json` with the ids DPO needs.
pub struct PreferenceTokenizer {
    inner: tokenizers::Tokenizer,
    /// End-of-sequence id, appended to completions.
    pub eos_id: u32,
    /// The beginning-of-sequence token `tokenizer_config.json` names, if any.
    pub bos_token: Option<String>,
    warned_not_prefix: AtomicBool,
}

/// How to cut pairs longer than `max_length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Keep the beginning: completions are cut at the end.
    #[default]
    KeepStart,
    /// Keep the end: the prompt is cut from its start (at least one prompt token stays).
    KeepEnd,
}

/// A tokenized preference pair: one prompt, two completions (each ending in EOS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedPair {
    /// Prompt ids (with BOS when the tokenizer adds it).
    pub prompt_ids: Vec<u32>,
    /// Chosen completion ids.
    pub chosen_ids: Vec<u32>,
    /// Rejected completion ids.
    pub rejected_ids: Vec<u32>,
}

fn special_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match &config[key] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// How many leading token ids `a` and `b` share (where a prompt's tokens end inside the
/// tokens of prompt + continuation, given how BPE merges across the boundary).
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PreferenceTokenizer {
    /// Loads `dir/tokenizer.json`; EOS comes from `tokenizer_config.json` (`eos_token`) or `config.json` (`eos_token_id`).
    pub fn load(dir: &Path) -> Result<PreferenceTokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                path,
                what: "the tokenizer (tokenizer.json)".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Invalid {
            path: path.clone(),
            message: format!("not a tokenizers tokenizer.json: {e}"),
        })?;
        let read = |name: &str| -> Option<serde_json::Value> {
            serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
        };
        let tokenizer_config = read("tokenizer_config.json");
        let bos_token = tokenizer_config
            .as_ref()
            .and_then(|c| special_token(c, "bos_token"));
        let eos_id = tokenizer_config
            .as_ref()
            .and_then(|c| special_token(c, "eos_token"))
            .and_then(|t| inner.token_to_id(&t))
            .or_else(|| {
                read("config.json")
                    .and_then(|c| c["eos_token_id"].as_u64())
                    .map(|id| id as u32)
            })
            .or_else(|| inner.token_to_id("</s>"))
            .ok_or_else(|| ModelError::Invalid {
                path: dir.join("tokenizer_config.json"),
                message: "no EOS token: set `eos_token` in tokenizer_config.json".into(),
            })?;
        Ok(PreferenceTokenizer {
            inner,
            eos_id,
            bos_token,
            warned_not_prefix: AtomicBool::new(false),
        })
    }

    /// The underlying tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`, with the tokenizer's special tokens (BOS for Mistral).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    /// Text of `ids`, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    /// Tokenizes a pair as TRL does.
    pub fn tokenize_pair(&self, prompt: &str, chosen: &str, rejected: &str) -> TokenizedPair {
        let prompt_ids = self.encode(prompt);
        let full_chosen = self.encode(&format!("{prompt}{chosen}"));
        let full_rejected = self.encode(&format!("{prompt}{rejected}"));
        let start = common_prefix(&prompt_ids, &full_chosen)
            .min(common_prefix(&prompt_ids, &full_rejected));
        if start < prompt_ids.len() && !self.warned_not_prefix.swap(true, Ordering::Relaxed) {
            eprintln!(
                "warning: the tokenized prompt is not a prefix of the tokenized prompt + completion (tokens merge across the boundary); completions start where the ids diverge"
            );
        }
        let completion = |full: &[u32]| {
            full[start..]
                .iter()
                .copied()
                .chain([self.eos_id])
                .collect::<Vec<u32>>()
        };
        TokenizedPair {
            prompt_ids: prompt_ids[..start].to_vec(),
            chosen_ids: completion(&full_chosen),
            rejected_ids: completion(&full_rejected),
        }
    }
}

impl TokenizedPair {
    /// Applies `max_length` to prompt + completion; `None` when the prompt alone fills it.
    pub fn truncate(
        mut self,
        max_length: Option<usize>,
        mode: Truncation,
    ) -> Option<TokenizedPair> {
        let Some(max) = max_length else {
            return Some(self);
        };
        if self.prompt_ids.is_empty() || self.prompt_ids.len() >= max {
            return None;
        }
        if mode == Truncation::KeepEnd {
            let longest = self.chosen_ids.len().max(self.rejected_ids.len());
            let keep = max
                .saturating_sub(longest)
                .max(1)
                .min(self.prompt_ids.len());
            self.prompt_ids.drain(..self.prompt_ids.len() - keep);
        }
        let room = max - self.prompt_ids.len();
        self.chosen_ids.truncate(room);
        self.rejected_ids.truncate(room);
        Some(self)
    }

    /// The chosen and rejected sequences to score.
    pub fn sequences(&self) -> [Sequence; 2] {
        [self.chosen_sequence(), self.sequence(&self.rejected_ids)]
    }

    /// Prompt + chosen completion alone (what SFT trains on).
    pub fn chosen_sequence(&self) -> Sequence {
        self.sequence(&self.chosen_ids)
    }

    fn sequence(&self, completion: &[u32]) -> Sequence {
        Sequence {
            ids: self.prompt_ids.iter().chain(completion).copied().collect(),
            completion_start: self.prompt_ids.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(prompt: usize, chosen: usize, rejected: usize) -> TokenizedPair {
        TokenizedPair {
            prompt_ids: (0..prompt as u32).collect(),
            chosen_ids: (100..100 + chosen as u32).collect(),
            rejected_ids: (200..200 + rejected as u32).collect(),
        }
    }

    #[test]
    fn truncation_keeps_start_or_end_and_drops_full_prompts() {
        let kept = pair(4, 5, 2)
            .truncate(Some(7), Truncation::KeepStart)
            .unwrap();
        assert_eq!(
            (
                kept.prompt_ids.len(),
                kept.chosen_ids,
                kept.rejected_ids.len()
            ),
            (4, vec![100, 101, 102], 2)
        );
        let end = pair(4, 5, 2)
            .truncate(Some(7), Truncation::KeepEnd)
            .unwrap();
        assert_eq!((end.prompt_ids, end.chosen_ids.len()), (vec![2, 3], 5));
        assert!(
            pair(7, 1, 1)
                .truncate(Some(7), Truncation::KeepStart)
                .is_none()
        );
        assert_eq!(
            pair(3, 2, 2).truncate(None, Truncation::KeepEnd).unwrap(),
            pair(3, 2, 2)
        );
    }
}
