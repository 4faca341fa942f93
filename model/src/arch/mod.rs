//! What a model *is*, read by every execution path: the families and their differences as one
//! table ([`family`]), `config.json` in both transformers styles ([`config`]), the names, shapes
//! and roles of its weights in the checkpoint ([`names`]), and RoPE with its scalings
//! ([`rope`]). Plain data and arithmetic: nothing here holds a tensor or runs a layer.

pub mod config;
pub mod family;
pub mod names;
pub mod rope;

pub use config::{Activation, ModelConfig};
pub use family::Family;
pub use names::{LayerRole, Role, WeightIndex, WeightSpec, weight_specs};
pub use rope::{Rope, RopeScaling};
