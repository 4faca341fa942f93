//! Metrics lines with TRL's names (`loss`, `rewards/margins`, `eval_loss`, …) in a fixed order,
//! and the [`Observer`] that receives them and says when to stop.

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::dpo::PreferenceMetrics;
use crate::error::Result;

/// One metrics line: named values in a fixed order (TRL's names).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record(pub Vec<(String, f64)>);

impl Record {
    pub(super) fn push(&mut self, name: &str, value: f64) {
        self.0.push((name.to_string(), value));
    }

    /// The value called `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    pub(super) fn push_preference(&mut self, prefix: &str, m: &PreferenceMetrics) {
        self.push(&format!("{prefix}loss"), m.loss);
        self.push(&format!("{prefix}rewards/chosen"), m.rewards_chosen);
        self.push(&format!("{prefix}rewards/rejected"), m.rewards_rejected);
        self.push(&format!("{prefix}rewards/accuracies"), m.rewards_accuracies);
        self.push(&format!("{prefix}rewards/margins"), m.rewards_margins);
        self.push(&format!("{prefix}logps/chosen"), m.logps_chosen);
        self.push(&format!("{prefix}logps/rejected"), m.logps_rejected);
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            if name == "step" {
                map.serialize_entry(name, &(*value as u64))?;
            } else {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// Receives what the loop produces and says when to stop.
pub trait Observer {
    /// A training step's or an evaluation's metrics.
    fn record(&mut self, record: &Record) -> Result<()>;
    /// A checkpoint of `step` is durable on disk.
    fn checkpointed(&mut self, _step: usize) -> Result<()> {
        Ok(())
    }
    /// Whether to stop now (checked between steps).
    fn cancelled(&self) -> bool {
        false
    }
}
