//! Evaluation during training: the eval set's metrics (`eval_` + TRL's names) with the current
//! policy, without gradients or dropout, and the reference log-probs examples still lack.

use super::batching::dpo_loss;
use super::dpo::PreferenceMetrics;
use super::trainer::{Base, Reference};
use super::{Example, Objective, Record, Trainer};
use crate::device::to_f64;
use crate::error::Result;
use crate::host::HostModel;
use crate::scoring::ScoreValues;
use crate::scoring::{Sequence, score};

impl Trainer {
    /// Scores the reference log-probs the batch's examples lack and keeps them with the
    /// examples; once every example has them, the reference model is dropped.
    pub(super) fn fill_reference(&mut self, batch: &[usize], eval: bool) -> Result<()> {
        let Some(reference) = &self.reference else {
            return Ok(());
        };
        let examples = if eval {
            &mut self.eval
        } else {
            &mut self.train
        };
        let missing: Vec<usize> = batch
            .iter()
            .copied()
            .filter(|&i| examples[i].reference.is_none())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let sequences: Vec<Sequence> = missing
            .iter()
            .flat_map(|&i| examples[i].pair.sequences())
            .collect();
        let sums = match (reference, &self.base) {
            (Reference::Scorer(scorer), _) => scorer.score(&sequences, &self.device)?.sums,
            (Reference::Base, Base::HostLora(base)) => {
                let weights = base.weights.iter().map(Vec::as_slice).collect();
                let logps = HostModel::new(&base.config, weights)?.token_logps(&sequences)?;
                let counts: Vec<usize> = sequences.iter().map(Sequence::completion_len).collect();
                ScoreValues::of_tokens(logps, &counts).sums
            }
            (Reference::Base, _) => unreachable!("only host LoRA runs score on their base"),
        };
        for (&i, pair) in missing.iter().zip(sums.chunks(2)) {
            examples[i].reference = Some([pair[0], pair[1]]);
        }
        if self
            .train
            .iter()
            .chain(&self.eval)
            .all(|e| e.reference.is_some())
        {
            self.reference = None;
        }
        Ok(())
    }

    /// Metrics on the eval set, without gradients or dropout, prefixed `eval_`.
    pub fn evaluate(&mut self) -> Result<Record> {
        let mut record = Record::default();
        record.push("step", self.step as f64);
        if self.eval.is_empty() {
            return Ok(record);
        }
        let policy = self.policy();
        let batches: Vec<Vec<usize>> = (0..self.eval.len())
            .collect::<Vec<_>>()
            .chunks(self.config.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        let total = self.total_steps();
        match self.objective.clone() {
            Objective::Dpo { loss, beta } => {
                let beta = beta.at(self.step.saturating_sub(1), total);
                let mut parts = Vec::new();
                for batch in &batches {
                    self.fill_reference(batch, true)?;
                    let examples: Vec<&Example> = batch.iter().map(|&i| &self.eval[i]).collect();
                    let sequences: Vec<Sequence> =
                        examples.iter().flat_map(|e| e.pair.sequences()).collect();
                    let sums = score(&policy, &sequences, &self.device)?.sums;
                    let (_, metrics) = dpo_loss(sums, &examples, &loss, beta);
                    parts.push((metrics, batch.len()));
                }
                record.push_preference("eval_", &PreferenceMetrics::weighted_mean(&parts));
            }
            Objective::Sft => {
                let sequences: Vec<Sequence> =
                    self.eval.iter().map(|e| e.pair.chosen_sequence()).collect();
                let (mut nll, mut count) = (0.0, 0);
                for chunk in sequences.chunks(self.config.batch_size) {
                    let logps = to_f64(score(&policy, chunk, &self.device)?.token_logps);
                    nll -= logps.iter().sum::<f64>();
                    count += logps.len();
                }
                record.push("eval_loss", nll / count.max(1) as f64);
            }
        }
        Ok(record)
    }
}
