//! Training a byte-level BPE `tokenizer.json` like the fixtures' (NFC normalizer, byte-level
//! pre-tokenizer and decoder, `<unk>` `<s>` `</s>` as ids 0–2, BOS added by the post-processor).

use std::path::Path;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::error::{ModelError, Result, io_at};

/// The special tokens, in id order.
pub const SPECIAL_TOKENS: [&str; 3] = ["<unk>", "<s>", "</s>"];

/// Trains on `texts` and writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
pub fn train_bpe(
    texts: &[String],
    vocab_size: usize,
    min_frequency: u64,
    dir: &Path,
) -> Result<usize> {
    let fail = |what: &str, e: tokenizers::Error| {
        ModelError::Argument(format!("tokenizer training failed ({what}): {e}"))
    };
    let special: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .special_tokens(special)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let bpe = BPE::builder()
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| fail("model", e))?;
    let post = TemplateProcessing::builder()
        .try_single("<s> $A")
        .and_then(|b| b.try_pair("<s> $A $B"))
        .map_err(|e| ModelError::Argument(format!("template: {e}")))?
        .special_tokens(vec![("<s>", 1)])
        .build()
        .map_err(|e| ModelError::Argument(format!("template: {e}")))?;
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(bpe)
        .with_normalizer(Some(NFC))
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevel::default()))
        .with_post_processor(Some(post))
        .build()
        .map_err(|e| fail("build", e))?;
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(|e| fail("train", e))?;
    let tokenizer: Tokenizer = tokenizer.into();
    let path = dir.join("tokenizer.json");
    tokenizer
        .save(&path, true)
        .map_err(|e| ModelError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let config = serde_json::json!({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
        "add_bos_token": true, "add_eos_token": false, "model_max_length": 1_000_000,
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false
    });
    let path = dir.join("tokenizer_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).expect("JSON"))
        .map_err(io_at(&path))?;
    Ok(tokenizer.get_vocab_size(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizer_round_trips_and_adds_bos() {
        let texts: Vec<String> = (0..50)
            .map(|i| {
                format!("Die Hauptstadt von Deutschland ist Berlin, Nummer {i}. Äpfel über Öl.")
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let size = train_bpe(&texts, 300, 2, dir.path()).unwrap();
        assert!(size <= 300 && size > 259, "{size}");
        let tok = crate::tokenize::PreferenceTokenizer::load(dir.path()).unwrap();
        assert_eq!(tok.eos_id, 2);
        let ids = tok.encode("Die Hauptstadt über Öl");
        assert_eq!(ids[0], 1);
        assert_eq!(tok.decode(&ids), "Die Hauptstadt über Öl");
        assert_eq!(tok.inner().token_to_id("<unk>"), Some(0));
    }
}
