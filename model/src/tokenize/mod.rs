//! Text to token ids: preference rows tokenized exactly as TRL's `DPOTrainer` does, with their
//! length limits ([`pairs`]), chat templates as transformers renders them ([`chat`]), and
//! training a byte-level BPE `tokenizer.json` ([`bpe`]).

pub mod bpe;
pub mod chat;
pub mod pairs;

pub use chat::{ChatTemplate, Message};
pub use pairs::{Lengths, PairText, PreferenceTokenizer, TokenizedPair, Truncation, common_prefix};
