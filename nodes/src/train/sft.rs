//! `sft.train`: supervised fine-tuning on the chosen completions of a preference dataset
//! (next-token loss on completion tokens, averaged over them), with the optimizer, schedules,
//! LoRA and checkpoints of `dpo.train`. The offline default builds its small base model with it.

use flow_engine::node::{Node, NodeContext, NodeError, OutputSpec, ParamError};
use flow_model::train::Objective;
use std::path::PathBuf;

use crate::train::common::{TrainingParams, run_training};

/// Fine-tunes a model on chosen completions.
pub struct SftTrain;

crate::training_params! {
    /// Params of `sft.train`.
    pub struct SftTrainParams {}
}

impl Node for SftTrain {
    type Params = SftTrainParams;
    const TYPE: &'static str = "sft.train";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Supervised fine-tuning on the chosen completions of a preference dataset (next-token loss on completion tokens, the prompt tokenized as for DPO), with the same AdamW, learning-rate schedules, LoRA, checkpoints and metrics as dpo.train; chain sft.train → dpo.train as the DiscoPhoenix recipe does.";
    const OUTPUTS: &'static [OutputSpec] = &[
        OutputSpec {
            name: "model",
            description: "the fine-tuned model as a Hugging Face directory, or the LoRA adapter in PEFT's format",
        },
        OutputSpec {
            name: "metrics",
            description: "`metrics.jsonl` (loss, learning_rate, grad_norm, num_tokens, tokens_per_s per step; `eval_loss` lines) and `training_curves.svg`",
        },
    ];

    fn check(params: &SftTrainParams) -> Result<(), ParamError> {
        params.common().check()
    }

    fn external_files(params: &SftTrainParams) -> Vec<PathBuf> {
        let mut files = vec![params.model.clone(), params.dataset.clone()];
        files.extend(params.eval_dataset.clone());
        files.extend(params.adapter.clone());
        files
    }

    async fn run(&self, ctx: NodeContext, params: SftTrainParams) -> Result<(), NodeError> {
        run_training(ctx, params, |_, _, _| Ok(Objective::Sft)).await
    }
}
