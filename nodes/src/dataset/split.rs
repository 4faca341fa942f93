//! `dataset.split`: a seeded train / eval split of a preference dataset.

use flow_engine::node::{Node, NodeContext, NodeError, OutputSpec, ParamError};
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::PathBuf;

use crate::compute::run_blocking;
use crate::preference::{PairSink, stream_pairs};

/// Splits a preference dataset.
pub struct DatasetSplit;

/// Params of `dataset.split`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetSplitParams {
    /// The preference dataset, e.g. `${filter.dataset}`.
    pub dataset: PathBuf,
    /// Fraction of rows for `eval` (or give `eval_rows`).
    #[serde(default)]
    pub eval_fraction: Option<f64>,
    /// Number of rows for `eval`.
    #[serde(default)]
    pub eval_rows: Option<usize>,
    /// Seed of the split.
    #[serde(default)]
    pub seed: u64,
}

impl Node for DatasetSplit {
    type Params = DatasetSplitParams;
    const TYPE: &'static str = "dataset.split";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Splits a preference dataset into `train` and `eval` by a seeded shuffle of row positions (`eval_fraction` or `eval_rows`); both keep the input order and get `stats.json`. Reads the data twice instead of holding it.";
    const OUTPUTS: &'static [OutputSpec] = &[
        OutputSpec {
            name: "train",
            description: "the training pairs (`data.jsonl`, `stats.json`)",
        },
        OutputSpec {
            name: "eval",
            description: "the held-out pairs (`data.jsonl`, `stats.json`)",
        },
    ];

    fn check(params: &DatasetSplitParams) -> Result<(), ParamError> {
        match (params.eval_fraction, params.eval_rows) {
            (Some(_), Some(_)) => Err(ParamError::at(
                "eval_rows",
                "give eval_fraction or eval_rows, not both",
            )),
            (None, None) => Err(ParamError::at(
                "eval_fraction",
                "give eval_fraction or eval_rows",
            )),
            (Some(f), None) if !(f > 0.0 && f < 1.0) => Err(ParamError::at(
                "eval_fraction",
                format!("eval_fraction must be in (0, 1), got {f}"),
            )),
            _ => Ok(()),
        }
    }

    fn external_files(params: &DatasetSplitParams) -> Vec<PathBuf> {
        vec![params.dataset.clone()]
    }

    async fn run(&self, ctx: NodeContext, params: DatasetSplitParams) -> Result<(), NodeError> {
        let train_dir = ctx.output_dir("train")?.to_path_buf();
        let eval_dir = ctx.output_dir("eval")?.to_path_buf();
        run_blocking(&ctx, move |_| {
            let rows = stream_pairs(&params.dataset)?.try_fold(0, |n, r| r.map(|_| n + 1))?;
            let eval_rows = match (params.eval_rows, params.eval_fraction) {
                (Some(n), _) => n,
                (None, Some(f)) => ((rows as f64) * f).round() as usize,
                (None, None) => 0,
            };
            if eval_rows == 0 || eval_rows >= rows {
                return Err(NodeError::new(format!(
                    "{}: {rows} rows cannot give {eval_rows} eval rows and a non-empty train set",
                    params.dataset.display()
                )));
            }
            let mut order: Vec<usize> = (0..rows).collect();
            flow_model::rng::shuffle(&mut order, params.seed);
            let mut is_eval = vec![false; rows];
            for &i in &order[..eval_rows] {
                is_eval[i] = true;
            }
            let mut train = PairSink::create(&train_dir)?;
            let mut eval = PairSink::create(&eval_dir)?;
            for (i, row) in stream_pairs(&params.dataset)?.enumerate() {
                let (_, pair) = row?;
                let sink = if is_eval[i] { &mut eval } else { &mut train };
                sink.stats.rows_in += 1;
                sink.write(&pair)?;
            }
            train.finish()?;
            eval.finish()?;
            Ok(())
        })
        .await
    }
}
