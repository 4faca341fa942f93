//! Preparing preference data: `dataset.load` ([`load`]: files, Hub datasets, presets, chat
//! templates via [`chat_template`]), `dataset.translate` ([`translate`]), `dataset.filter`
//! ([`filter`]) and `dataset.split` ([`split`]). Every node here reads and writes the
//! preference artifact of [`crate::preference`]; none loads a model.

pub mod chat_template;
pub mod filter;
pub mod load;
pub mod split;
pub mod translate;
