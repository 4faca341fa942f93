//! Text to token ids: preference pairs split exactly as TRL's `DPOTrainer` does ([`pairs`]),
//! and training a byte-level BPE `tokenizer.json` ([`bpe`]).

pub mod bpe;
pub mod pairs;

pub use pairs::{PreferenceTokenizer, TokenizedPair, Truncation, common_prefix};
