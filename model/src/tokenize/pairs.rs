//! How preference rows become token ids, as TRL 1.16's `DPOTrainer` does it (`tokenize_fn` and
//! its collator), checked against TRL's own ids for five families:
//!
//! - **Three tokenizations.** The prompt, prompt + chosen and prompt + rejected are tokenized
//!   separately; the completions start where the prompt's ids and each full sequence's ids
//!   diverge (the shorter of the two common prefixes), so prompt + completion is exactly the
//!   tokenization of the whole text.
//! - **Plain text** is tokenized with the tokenizer's own special tokens (BOS where its
//!   post-processor adds one: Llama, Mistral, Gemma; none for Qwen), and the EOS token is
//!   appended to each completion unless it already ends with it. A prompt whose text already
//!   starts with the BOS token keeps one BOS, not two.
//! - **Chat text** (rendered by a chat template, or messages rendered here with the model's
//!   template) is tokenized without adding special tokens: BOS only where the template writes
//!   it, and a completion ends with what the template writes after a turn (no EOS appended).
//! - **A `system` text on a plain row** is rendered with the model's chat template as a system
//!   message before the user's prompt when the tokenizer has a template, else written before the
//!   prompt as `system + "\n\n" + prompt`.
//! - **Lengths** ([`Lengths`]): `max_prompt_length` keeps the prompt's start (`keep_start`) or end
//!   (`keep_end`), `max_completion_length` the completions' start; then each sequence is cut to
//!   `max_length` — its end cut (`keep_start`, TRL's default: a pair whose prompt alone fills
//!   `max_length` is dropped) or its start cut (`keep_end`). The first token of a sequence is
//!   never scored (nothing predicts it), so a completion that starts a sequence is scored from
//!   its second token, as TRL's shifted mask does.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::chat::{ChatTemplate, Message, special_token};
use crate::error::{ModelError, Result};
use crate::sequence::Sequence;

/// A `tokenizer.json` with the special tokens and chat template DPO needs.
pub struct PreferenceTokenizer {
    inner: tokenizers::Tokenizer,
    /// End-of-sequence id, appended to plain-text completions.
    pub eos_id: u32,
    /// The end-of-sequence token's text.
    pub eos_token: String,
    /// Where generation stops: the EOS and every `eos_token_id` of `generation_config.json`
    /// (a chat model's end-of-turn token, as transformers' `generate` stops).
    pub stop_ids: Vec<u32>,
    /// The beginning-of-sequence token `tokenizer_config.json` names, if any.
    pub bos_token: Option<String>,
    /// The model's chat template, if its tokenizer has one.
    pub template: Option<ChatTemplate>,
    warned_not_prefix: AtomicBool,
}

/// How to cut sequences longer than `max_length` (TRL's `truncation_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Keep the beginning: a sequence's end is cut; a pair whose prompt alone fills
    /// `max_length` is dropped.
    #[default]
    KeepStart,
    /// Keep the end: a sequence's start (the prompt's beginning first) is cut.
    KeepEnd,
}

/// The length limits a pair is fitted to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lengths {
    /// Longest prompt + completion in tokens.
    pub max_length: Option<usize>,
    /// Longest prompt in tokens.
    pub max_prompt_length: Option<usize>,
    /// Longest completion in tokens.
    pub max_completion_length: Option<usize>,
    /// Which end of an over-long sequence or prompt is kept.
    pub truncation: Truncation,
}

/// Prompt and completion ids of one pair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizedPair {
    /// Prompt ids (with BOS when the tokenizer or the template adds it).
    pub prompt_ids: Vec<u32>,
    /// Chosen completion ids.
    pub chosen_ids: Vec<u32>,
    /// Rejected completion ids.
    pub rejected_ids: Vec<u32>,
    /// Leading tokens of prompt + completion cut from the chosen and the rejected sequence to
    /// fit `max_length` with `keep_end` (0 otherwise).
    pub cut: [usize; 2],
}

/// The text of one preference row, as it arrives.
#[derive(Clone, Copy, Debug)]
pub enum PairText<'a> {
    /// Plain text, with an optional system text.
    Plain {
        /// The prompt.
        prompt: &'a str,
        /// The preferred answer.
        chosen: &'a str,
        /// The worse answer.
        rejected: &'a str,
        /// A system text.
        system: Option<&'a str>,
    },
    /// Texts a chat template rendered (special tokens written out): the prompt with the
    /// generation prompt, each answer as the rest of its conversation.
    Rendered {
        /// The rendered prompt.
        prompt: &'a str,
        /// The rest of the chosen conversation.
        chosen: &'a str,
        /// The rest of the rejected conversation.
        rejected: &'a str,
    },
}

/// How many leading token ids `a` and `b` share (where a prompt's tokens end inside the
/// tokens of prompt + continuation, given how BPE merges across the boundary).
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PreferenceTokenizer {
    /// Loads `dir/tokenizer.json` and the special tokens and chat template of its
    /// `tokenizer_config.json` (EOS falls back to `config.json`'s `eos_token_id`, then `</s>`).
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
            let text = std::fs::read_to_string(dir.join(name)).ok()?;
            serde_json::from_str(text.trim_start_matches('\u{feff}')).ok()
        };
        let tokenizer_config = read("tokenizer_config.json");
        let named = |key: &str| {
            tokenizer_config
                .as_ref()
                .and_then(|c| special_token(c, key))
        };
        let eos_id = named("eos_token")
            .and_then(|t| inner.token_to_id(&t))
            .or_else(|| {
                let ids = read("config.json")?["eos_token_id"].clone();
                ids.as_u64()
                    .or_else(|| ids.as_array()?.first()?.as_u64())
                    .map(|id| id as u32)
            })
            .or_else(|| inner.token_to_id("</s>"))
            .ok_or_else(|| ModelError::Invalid {
                path: dir.join("tokenizer_config.json"),
                message: "no EOS token: set `eos_token` in tokenizer_config.json".into(),
            })?;
        let eos_token = inner.id_to_token(eos_id).unwrap_or_default();
        let mut stop_ids = vec![eos_id];
        if let Some(config) = read("generation_config.json") {
            let ids = &config["eos_token_id"];
            let listed = ids.as_array().cloned().unwrap_or_else(|| vec![ids.clone()]);
            for id in listed.iter().filter_map(|v| v.as_u64()) {
                if !stop_ids.contains(&(id as u32)) {
                    stop_ids.push(id as u32);
                }
            }
        }
        Ok(PreferenceTokenizer {
            eos_id,
            eos_token,
            stop_ids,
            bos_token: named("bos_token"),
            template: ChatTemplate::of_tokenizer(dir)?,
            inner,
            warned_not_prefix: AtomicBool::new(false),
        })
    }

    /// The underlying tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`, with the tokenizer's special tokens (BOS for Mistral), and never two
    /// BOS at the start (a text that starts with the BOS token keeps one).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = self.encode_with(text, true);
        let bos = self.bos_id();
        if bos.is_some() && ids.len() >= 2 && ids[0] == ids[1] && Some(ids[0]) == bos {
            ids.remove(0);
        }
        ids
    }

    /// Token ids of `text` without special tokens (`add_special_tokens=False`).
    pub fn encode_plain(&self, text: &str) -> Vec<u32> {
        self.encode_with(text, false)
    }

    /// The id of the beginning-of-sequence token, if the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t))
    }

    /// Token ids of `text`, adding the tokenizer's special tokens or not.
    fn encode_with(&self, text: &str, special: bool) -> Vec<u32> {
        self.inner
            .encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    /// Text of `ids`, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    /// Tokenizes a plain-text pair as TRL does (no system text).
    pub fn tokenize_pair(&self, prompt: &str, chosen: &str, rejected: &str) -> TokenizedPair {
        let eos = |text: &str| -> String {
            match text.ends_with(&self.eos_token) {
                true => text.to_string(),
                false => format!("{text}{}", self.eos_token),
            }
        };
        self.split(
            self.encode(prompt),
            self.encode(&format!("{prompt}{}", eos(chosen))),
            self.encode(&format!("{prompt}{}", eos(rejected))),
        )
    }

    /// Tokenizes a row in whatever form it arrives (see the module documentation).
    pub fn tokenize(&self, text: PairText) -> Result<TokenizedPair, String> {
        match text {
            PairText::Plain {
                prompt,
                chosen,
                rejected,
                system: None,
            } => Ok(self.tokenize_pair(prompt, chosen, rejected)),
            PairText::Plain {
                prompt,
                chosen,
                rejected,
                system: Some(system),
            } => match &self.template {
                Some(_) => self.tokenize_messages(
                    &[Message::new("system", system), Message::new("user", prompt)],
                    &[Message::new("assistant", chosen)],
                    &[Message::new("assistant", rejected)],
                ),
                None => Ok(self.tokenize_pair(&format!("{system}\n\n{prompt}"), chosen, rejected)),
            },
            PairText::Rendered {
                prompt,
                chosen,
                rejected,
            } => Ok(self.split(
                self.encode_with(prompt, false),
                self.encode_with(&format!("{prompt}{chosen}"), false),
                self.encode_with(&format!("{prompt}{rejected}"), false),
            )),
        }
    }

    /// Tokenizes a conversational pair with the model's own chat template, as TRL 1.16 does:
    /// the prompt rendered with the generation prompt, each full conversation without, all
    /// tokenized without adding special tokens.
    pub fn tokenize_messages(
        &self,
        prompt: &[Message],
        chosen: &[Message],
        rejected: &[Message],
    ) -> Result<TokenizedPair, String> {
        let template = self.template.as_ref().ok_or(
            "the tokenizer has no chat template (chat_template.jinja or `chat_template` in tokenizer_config.json)",
        )?;
        if prompt.is_empty() {
            return Err("the conversation has no prompt messages".into());
        }
        let render = |messages: &[Message], generation: bool| -> Result<Vec<u32>, String> {
            Ok(self.encode_with(&template.render(messages, generation)?, false))
        };
        Ok(self.split(
            render(prompt, true)?,
            render(&[prompt, chosen].concat(), false)?,
            render(&[prompt, rejected].concat(), false)?,
        ))
    }

    /// Splits three tokenizations where the prompt's ids and each full sequence diverge.
    fn split(&self, prompt: Vec<u32>, chosen: Vec<u32>, rejected: Vec<u32>) -> TokenizedPair {
        let start = common_prefix(&prompt, &chosen).min(common_prefix(&prompt, &rejected));
        if start < prompt.len() && !self.warned_not_prefix.swap(true, Ordering::Relaxed) {
            eprintln!(
                "warning: the tokenized prompt is not a prefix of the tokenized prompt + completion (tokens merge across the boundary); completions start where the ids diverge"
            );
        }
        TokenizedPair {
            prompt_ids: prompt[..start].to_vec(),
            chosen_ids: chosen[start..].to_vec(),
            rejected_ids: rejected[start..].to_vec(),
            cut: [0, 0],
        }
    }
}

impl TokenizedPair {
    /// The pair fitted to `lengths`, or why nothing sensible remains of it.
    pub fn fit(mut self, lengths: &Lengths) -> Result<TokenizedPair, String> {
        let keep_end = lengths.truncation == Truncation::KeepEnd;
        if let Some(max) = lengths.max_prompt_length
            && self.prompt_ids.len() > max
        {
            match keep_end {
                true => drop(self.prompt_ids.drain(..self.prompt_ids.len() - max)),
                false => self.prompt_ids.truncate(max),
            }
        }
        if let Some(max) = lengths.max_completion_length {
            self.chosen_ids.truncate(max);
            self.rejected_ids.truncate(max);
        }
        if let Some(max) = lengths.max_length {
            let prompt = self.prompt_ids.len();
            if !keep_end && prompt >= max {
                return Err(format!(
                    "the prompt alone has {prompt} tokens, max_length is {max}"
                ));
            }
            let room = max.saturating_sub(prompt);
            for (side, completion) in [&mut self.chosen_ids, &mut self.rejected_ids]
                .into_iter()
                .enumerate()
            {
                match keep_end {
                    true => self.cut[side] = (prompt + completion.len()).saturating_sub(max),
                    false => completion.truncate(room),
                }
            }
        }
        for (name, sequence) in ["chosen", "rejected"].iter().zip(self.sequences()) {
            if sequence.completion_len() == 0 {
                return Err(format!(
                    "nothing of the {name} answer is left to score ({} tokens, of which the first has no token before it)",
                    sequence.ids.len()
                ));
            }
        }
        Ok(self)
    }

    /// The chosen and rejected sequences to score.
    pub fn sequences(&self) -> [Sequence; 2] {
        [
            self.chosen_sequence(),
            self.sequence(&self.rejected_ids, self.cut[1]),
        ]
    }

    /// Prompt + chosen completion alone (what SFT trains on).
    pub fn chosen_sequence(&self) -> Sequence {
        self.sequence(&self.chosen_ids, self.cut[0])
    }

    /// `prompt + completion` without its first `cut` tokens; the completion is scored from its
    /// first token that has a token before it.
    fn sequence(&self, completion: &[u32], cut: usize) -> Sequence {
        let ids: Vec<u32> = self
            .prompt_ids
            .iter()
            .chain(completion)
            .skip(cut)
            .copied()
            .collect();
        let start = self
            .prompt_ids
            .len()
            .saturating_sub(cut)
            .max(1)
            .min(ids.len());
        Sequence {
            ids,
            completion_start: start,
        }
    }

    /// Tokens of both sequences as they are scored.
    pub fn token_count(&self) -> usize {
        self.sequences().iter().map(|s| s.ids.len()).sum()
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
            cut: [0, 0],
        }
    }

    fn limit(max_length: usize, truncation: Truncation) -> Lengths {
        Lengths {
            max_length: Some(max_length),
            truncation,
            ..Lengths::default()
        }
    }

    #[test]
    fn keep_start_cuts_each_sequences_end_and_drops_full_prompts() {
        let kept = pair(4, 5, 2).fit(&limit(7, Truncation::KeepStart)).unwrap();
        assert_eq!(kept.chosen_ids, vec![100, 101, 102]);
        assert_eq!(kept.rejected_ids.len(), 2);
        let err = pair(7, 1, 1)
            .fit(&limit(7, Truncation::KeepStart))
            .unwrap_err();
        assert_eq!(err, "the prompt alone has 7 tokens, max_length is 7");
        assert_eq!(
            pair(3, 2, 2).fit(&Lengths::default()).unwrap(),
            pair(3, 2, 2)
        );
    }

    #[test]
    fn keep_end_cuts_each_sequences_start_as_trls_collator() {
        // TRL slices prompt + completion to its last max_length tokens, per sequence.
        let kept = pair(4, 5, 2).fit(&limit(7, Truncation::KeepEnd)).unwrap();
        let [chosen, rejected] = kept.sequences();
        assert_eq!(chosen.ids, vec![2, 3, 100, 101, 102, 103, 104]);
        assert_eq!(chosen.completion_start, 2);
        assert_eq!(rejected.ids, vec![0, 1, 2, 3, 200, 201]);
        assert_eq!(rejected.completion_start, 4);
        // A completion longer than max_length: its first kept token is context, not scored.
        let long = pair(2, 9, 2).fit(&limit(4, Truncation::KeepEnd)).unwrap();
        let [chosen, _] = long.sequences();
        assert_eq!(
            (chosen.ids, chosen.completion_start),
            (vec![105, 106, 107, 108], 1)
        );
    }

    #[test]
    fn an_empty_prompt_scores_from_the_second_token_and_a_lone_token_is_refused() {
        let empty = pair(0, 3, 2)
            .fit(&limit(64, Truncation::KeepStart))
            .unwrap();
        let [chosen, rejected] = empty.sequences();
        assert_eq!((chosen.completion_start, chosen.completion_len()), (1, 2));
        assert_eq!(rejected.completion_len(), 1);
        let err = pair(0, 1, 2).fit(&Lengths::default()).unwrap_err();
        assert!(
            err.contains("nothing of the chosen answer is left"),
            "{err}"
        );
    }

    #[test]
    fn prompt_and_completion_limits_keep_the_chosen_end() {
        let lengths = Lengths {
            max_prompt_length: Some(2),
            max_completion_length: Some(1),
            truncation: Truncation::KeepEnd,
            ..Lengths::default()
        };
        let fitted = pair(5, 3, 3).fit(&lengths).unwrap();
        assert_eq!(fitted.prompt_ids, vec![3, 4]);
        assert_eq!(
            (fitted.chosen_ids, fitted.rejected_ids),
            (vec![100], vec![200])
        );
        let start = Lengths {
            truncation: Truncation::KeepStart,
            ..lengths
        };
        assert_eq!(pair(5, 3, 3).fit(&start).unwrap().prompt_ids, vec![0, 1]);
    }
}
