//! How the model nodes (`model.ref_logprobs`, `sft.train`, `dpo.train`, `evaluate`) turn
//! preference rows into token ids: one procedure for all of them — the model crate's TRL-exact
//! tokenization ([`flow_model::tokenize::pairs`]), the length limits with `max_length`
//! defaulting to the model's context, and a report naming every dropped row and why. Nothing
//! here scores or trains.

use flow_engine::node::{LogSink, NodeError, ParamError};
use flow_model::ModelConfig;
use flow_model::tokenize::{Lengths, PreferenceTokenizer, TokenizedPair, Truncation};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::preference::PreferencePair;

/// `keep_start` or `keep_end` (TRL's `truncation_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TruncationMode {
    /// Keep a sequence's start: its end is cut; a pair whose prompt alone fills `max_length` is
    /// dropped (TRL's default).
    #[default]
    KeepStart,
    /// Keep a sequence's end: its start (the prompt's beginning first) is cut.
    KeepEnd,
}

impl From<TruncationMode> for Truncation {
    fn from(mode: TruncationMode) -> Truncation {
        match mode {
            TruncationMode::KeepStart => Truncation::KeepStart,
            TruncationMode::KeepEnd => Truncation::KeepEnd,
        }
    }
}

/// The length params of a model node, as given.
#[derive(Clone, Copy, Debug)]
pub struct LengthParams {
    /// `max_length`: `None` means the model's `max_position_embeddings`.
    pub max_length: Option<usize>,
    /// `max_prompt_length`.
    pub max_prompt_length: Option<usize>,
    /// `max_completion_length`.
    pub max_completion_length: Option<usize>,
    /// `truncation`.
    pub truncation: TruncationMode,
}

impl LengthParams {
    /// Checks the limits alone (before any model is read).
    pub fn check(&self) -> Result<(), ParamError> {
        for (key, value, least) in [
            ("max_length", self.max_length, 2),
            ("max_prompt_length", self.max_prompt_length, 1),
            ("max_completion_length", self.max_completion_length, 1),
        ] {
            if value.is_some_and(|v| v < least) {
                return Err(ParamError::at(key, format!("must be at least {least}")));
            }
        }
        Ok(())
    }

    /// The limits for `model`: `max_length` defaults to its `max_position_embeddings`, and a
    /// larger one is an error (the model was never trained on such positions).
    pub fn resolve(&self, model: &ModelConfig) -> Result<Lengths, NodeError> {
        let context = model.max_position_embeddings;
        if let Some(max) = self.max_length.filter(|&m| m > context) {
            return Err(NodeError::new(format!(
                "max_length {max} exceeds the model's max_position_embeddings ({context}): sequences that long were never seen in training"
            )));
        }
        Ok(Lengths {
            max_length: Some(self.max_length.unwrap_or(context)),
            max_prompt_length: self.max_prompt_length,
            max_completion_length: self.max_completion_length,
            truncation: self.truncation.into(),
        })
    }
}

/// A row the model nodes did not use, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// The row's id.
    pub id: String,
    /// Why.
    pub reason: String,
}

/// A dataset's rows as token ids.
#[derive(Debug, Default)]
pub struct Tokenized {
    /// Kept pairs with their ids, in dataset order.
    pub kept: Vec<(String, TokenizedPair)>,
    /// Dropped rows, in dataset order.
    pub dropped: Vec<Dropped>,
    /// Kept pairs that were cut to fit the limits.
    pub truncated: usize,
}

impl Tokenized {
    /// Writes what was dropped and cut to the node's log, one line per dropped row.
    pub fn report(&self, log: &LogSink, what: &str) {
        for d in &self.dropped {
            log.line(&format!("{what}: dropped pair `{}`: {}", d.id, d.reason));
        }
        if self.truncated > 0 {
            let pairs = if self.truncated == 1 { "pair" } else { "pairs" };
            log.line(&format!(
                "{what}: {} {pairs} cut to fit the length limits",
                self.truncated
            ));
        }
    }

    /// An error when nothing is left, naming the first reasons.
    pub fn require_some(&self, what: &str) -> Result<(), NodeError> {
        if !self.kept.is_empty() {
            return Ok(());
        }
        let reasons: Vec<String> = self
            .dropped
            .iter()
            .take(3)
            .map(|d| format!("`{}`: {}", d.id, d.reason))
            .collect();
        Err(NodeError::new(format!(
            "{what}: no pair is left to use ({} dropped; {})",
            self.dropped.len(),
            reasons.join("; ")
        )))
    }
}

/// Tokenizes `pairs` and fits them to `lengths`; a row that cannot be tokenized or of which
/// nothing sensible remains is dropped with its reason.
pub fn tokenize_pairs(
    tokenizer: &PreferenceTokenizer,
    pairs: Vec<PreferencePair>,
    lengths: &Lengths,
) -> Tokenized {
    let mut result = Tokenized::default();
    for pair in pairs {
        let fitted = tokenizer.tokenize(pair.text()).and_then(|tokens| {
            let before = tokens.clone();
            tokens.fit(lengths).map(|fitted| (fitted != before, fitted))
        });
        match fitted {
            Ok((cut, tokens)) => {
                result.truncated += usize::from(cut);
                result.kept.push((pair.id, tokens));
            }
            Err(reason) => result.dropped.push(Dropped {
                id: pair.id,
                reason,
            }),
        }
    }
    result
}
