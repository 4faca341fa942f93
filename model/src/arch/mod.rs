//! What a model *is*, read by every execution path: its config (`config.json` in both
//! transformers styles, [`config`]), the names and shapes of its weights in the checkpoint
//! ([`names`]), and its position tables ([`rope`]). Plain data and arithmetic: nothing here
//! holds a tensor or runs a layer.

pub mod config;
pub mod names;
pub mod rope;

pub use config::MistralConfig;
pub use names::{WeightSpec, weight_specs};
pub use rope::rope_tables;
