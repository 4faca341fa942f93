//! `dpo.train`: Direct Preference Optimization (Rafailov et al. 2023) with TRL's losses and
//! metrics, a β that may follow a schedule, LoRA, and checkpoints a killed run resumes from.

use flow_engine::node::{Node, NodeContext, NodeError, OutputSpec, ParamError};
use flow_model::train::dpo::{LossConfig, LossType};
use flow_model::train::schedule::{BetaSchedule, BetaShape};
use flow_model::train::{Example, Objective};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::train::common::{TrainingParams, run_training};
use crate::train::ref_logprobs::LogprobRow;

/// Trains a policy with a preference loss.
pub struct DpoTrain;

/// β: a number, or a schedule.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
#[serde(
    expecting = "a positive number, or a schedule {schedule: constant|linear|cosine|piecewise, from, to, steps?, points?}"
)]
pub enum BetaParam {
    /// The same β every step.
    Value(f64),
    /// A β schedule.
    Schedule(BetaScheduleParams),
}

/// A β schedule.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BetaScheduleParams {
    /// `constant` (β = `from`), `linear` or `cosine` (`from` → `to` over `steps`), `piecewise` (straight lines between `points`).
    pub schedule: BetaShape,
    /// β at the first step.
    #[serde(default)]
    pub from: Option<f64>,
    /// β from `steps` on.
    #[serde(default)]
    pub to: Option<f64>,
    /// Length of the ramp in steps (default: the whole run).
    #[serde(default)]
    pub steps: Option<usize>,
    /// `[[step, β], …]` with increasing steps, for `piecewise`.
    #[serde(default)]
    pub points: Option<Vec<(usize, f64)>>,
}

impl BetaParam {
    /// The model core's schedule, or what is missing.
    pub fn schedule(&self) -> Result<BetaSchedule, String> {
        let s = match self {
            BetaParam::Value(beta) => return Ok(BetaSchedule::Constant(*beta)),
            BetaParam::Schedule(s) => s,
        };
        let need = |value: Option<f64>, key: &str| {
            value.ok_or_else(|| {
                format!("a `{:?}` β schedule needs `{key}`", s.schedule).to_lowercase()
            })
        };
        Ok(match s.schedule {
            BetaShape::Constant => BetaSchedule::Constant(need(s.from, "from")?),
            BetaShape::Linear | BetaShape::Cosine => BetaSchedule::Ramp {
                shape: s.schedule,
                from: need(s.from, "from")?,
                to: need(s.to, "to")?,
                steps: s.steps,
            },
            BetaShape::Piecewise => BetaSchedule::Piecewise(
                s.points
                    .clone()
                    .ok_or("a piecewise β schedule needs `points`")?,
            ),
        })
    }
}

fn default_beta() -> BetaParam {
    BetaParam::Value(0.1)
}

crate::training_params! {
    /// Params of `dpo.train`.
    pub struct DpoTrainParams {
        /// Reference log-probs from `model.ref_logprobs` (same tokenizer, `max_length` and `truncation`); without it the reference is scored on the fly (with LoRA: the base with adapters off).
        #[serde(default)]
        pub ref_logprobs: Option<PathBuf>,
        /// `sigmoid` (DPO), `ipo`, `hinge`, `robust`, `cdpo`, `sigmoid_norm`, `simpo` or `reference_free`.
        #[serde(default)]
        pub loss: LossType,
        /// β: a number, or `{schedule: constant|linear|cosine|piecewise, from, to, steps?, points?}`, logged per step.
        #[serde(default = "default_beta")]
        pub beta: BetaParam,
        /// ε of `robust` and `cdpo`, in [0, 0.5).
        #[serde(default)]
        pub label_smoothing: f64,
        /// γ of `simpo`.
        #[serde(default = "default_simpo_gamma")]
        pub simpo_gamma: f64,
    }
}

fn default_simpo_gamma() -> f64 {
    0.5
}

impl DpoTrainParams {
    fn loss(&self) -> LossConfig {
        LossConfig {
            loss: self.loss,
            label_smoothing: self.label_smoothing,
            simpo_gamma: self.simpo_gamma,
        }
    }
}

impl Node for DpoTrain {
    type Params = DpoTrainParams;
    const TYPE: &'static str = "dpo.train";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Trains a policy with Direct Preference Optimization (Rafailov et al. 2023) or a variant (ipo, hinge, robust, cdpo, sigmoid_norm, simpo, reference_free) exactly as TRL's DPOTrainer computes it: AdamW with PyTorch semantics, transformers' learning-rate schedules, global-norm clipping, gradient accumulation, an optional β schedule, optional LoRA (saved in PEFT's format), TRL's metric names per step, and atomic checkpoints that a killed run resumes from with identical results.";
    const OUTPUTS: &'static [OutputSpec] = &[
        OutputSpec {
            name: "model",
            description: "the trained model as a Hugging Face directory (config.json, safetensors sharded past 5 GB, tokenizer and generation config), or the LoRA adapter in PEFT's format",
        },
        OutputSpec {
            name: "metrics",
            description: "`metrics.jsonl` (one line per step with TRL's names: loss, rewards/*, logps/*, learning_rate, beta, grad_norm, tokens_per_s; `eval_` lines for evaluations) and `training_curves.svg`",
        },
    ];

    fn check(params: &DpoTrainParams) -> Result<(), ParamError> {
        params.common().check()?;
        params
            .beta
            .schedule()
            .and_then(|b| b.check())
            .map_err(|m| ParamError::at("beta", m))?;
        params
            .loss()
            .check()
            .map_err(|m| ParamError::at("label_smoothing", m))
    }

    fn external_files(params: &DpoTrainParams) -> Vec<PathBuf> {
        let mut files = vec![params.model.clone(), params.dataset.clone()];
        files.extend(params.eval_dataset.clone());
        files.extend(params.ref_logprobs.clone());
        files.extend(params.adapter.clone());
        files
    }

    async fn run(&self, ctx: NodeContext, params: DpoTrainParams) -> Result<(), NodeError> {
        run_training(ctx, params, |params, train, eval| {
            if let Some(path) = &params.ref_logprobs {
                let rows = read_reference(path)?;
                attach_reference(train, &rows, path, true)?;
                attach_reference(eval, &rows, path, false)?;
            }
            Ok(Objective::Dpo {
                loss: params.loss(),
                beta: params.beta.schedule().map_err(NodeError::new)?,
            })
        })
        .await
    }
}

/// `logprobs.jsonl` of a `model.ref_logprobs` artifact, by pair id.
fn read_reference(path: &Path) -> Result<HashMap<String, LogprobRow>, NodeError> {
    let file = crate::preference::file_in(path, "logprobs.jsonl");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| NodeError::new(format!("{}: {e}", file.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str::<LogprobRow>(line)
                .map(|row| (row.id.clone(), row))
                .map_err(|e| {
                    NodeError::new(format!(
                        "{}:{}: not a reference log-prob row: {e}",
                        file.display(),
                        n + 1
                    ))
                })
        })
        .collect()
}

/// Gives each example its reference log-probs; the token ids must be the ones scored.
fn attach_reference(
    examples: &mut [Example],
    rows: &HashMap<String, LogprobRow>,
    path: &Path,
    required: bool,
) -> Result<(), NodeError> {
    for example in examples {
        let Some(row) = rows.get(&example.id) else {
            if required {
                return Err(NodeError::new(format!(
                    "{}: no reference log-probs for pair `{}`; compute ref_logprobs on the same dataset",
                    path.display(),
                    example.id
                )));
            }
            continue;
        };
        let p = &example.pair;
        if row.prompt_ids != p.prompt_ids
            || row.chosen_ids != p.chosen_ids
            || row.rejected_ids != p.rejected_ids
            || row.cut != p.cut
        {
            return Err(NodeError::new(format!(
                "{}: pair `{}` was scored with different token ids; model.ref_logprobs must use the same tokenizer, max_length, max_prompt_length, max_completion_length and truncation as dpo.train",
                path.display(),
                example.id
            )));
        }
        example.reference = Some([row.chosen_logps, row.rejected_logps]);
    }
    Ok(())
}
