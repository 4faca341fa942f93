//! The Hugging Face Hub: the client, environment and cache layout ([`client`]), `hub.fetch_model`
//! ([`fetch`]), `hub.push` ([`push`]) and the model card it writes ([`model_card`]). Nothing
//! here trains or scores.

pub mod client;
pub mod fetch;
pub mod model_card;
pub mod push;
