//! `tokenizer.train`: a byte-level BPE tokenizer trained on a preference dataset's text.

use flow_engine::node::{Node, NodeContext, NodeError, OutputSpec};
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::PathBuf;

use crate::compute::{model_error, run_blocking};
use crate::preference::read_pairs;

/// Trains a tokenizer.
pub struct TokenizerTrain;

/// Params of `tokenizer.train`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizerTrainParams {
    /// Preference dataset (a directory with `data.jsonl`, or a JSONL file), e.g. `${data.dataset}`.
    pub dataset: PathBuf,
    /// Vocabulary size, special tokens and the 256 byte tokens included.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Merges need at least this many occurrences.
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
}

fn default_vocab_size() -> usize {
    2000
}

fn default_min_frequency() -> u64 {
    2
}

impl Node for TokenizerTrain {
    type Params = TokenizerTrainParams;
    const TYPE: &'static str = "tokenizer.train";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Trains a byte-level BPE tokenizer (tokenizers crate) on the prompts, chosen and rejected texts of a preference dataset: NFC normalizer, byte-level pre-tokenizer and decoder, `<unk>`, `<s>`, `</s>` as ids 0-2, and a post-processor that adds `<s>`, like Mistral's.";
    const OUTPUTS: &'static [OutputSpec] = &[OutputSpec {
        name: "tokenizer",
        description: "`tokenizer.json` and `tokenizer_config.json`",
    }];

    fn external_files(params: &TokenizerTrainParams) -> Vec<PathBuf> {
        vec![params.dataset.clone()]
    }

    async fn run(&self, ctx: NodeContext, params: TokenizerTrainParams) -> Result<(), NodeError> {
        let out = ctx.output_dir("tokenizer")?.to_path_buf();
        let log = ctx.log().clone();
        if params.vocab_size < 260 {
            return Err(NodeError::new(format!(
                "vocab_size {} is too small: the byte alphabet and special tokens need 259",
                params.vocab_size
            )));
        }
        run_blocking(&ctx, move |_| {
            let pairs = read_pairs(&params.dataset)?;
            let texts: Vec<String> = pairs
                .iter()
                .flat_map(|p| [p.prompt.clone(), p.chosen.clone(), p.rejected.clone()])
                .collect();
            let size = flow_model::tokenize::bpe::train_bpe(
                &texts,
                params.vocab_size,
                params.min_frequency,
                &out,
            )
            .map_err(model_error)?;
            log.line(&format!(
                "trained a {size}-token BPE tokenizer on {} texts",
                texts.len()
            ));
            Ok(())
        })
        .await
    }
}
