#![warn(missing_docs)]
//! flow's node library. Adding a node type: one file in the room it belongs to, plus one
//! `register` line in [`library`].
//!
//! Rooms, by pipeline stage: [`dataset`] (load, translate, filter, split), [`hub`] (fetch,
//! push, model card), [`train`] (tokenizer, model init, reference log-probs, SFT, DPO) and
//! [`eval`] (evaluate, judge, report); the general [`shell`] node. Below them, shared by all:
//! the preference artifact ([`preference`]), how the model nodes tokenize it
//! ([`tokenization`]), blocking work and devices ([`compute`]) and the client for paid text APIs
//! ([`chat_client`]). A room may import those and another room's
//! public items, never in a circle.

use flow_engine::node::Registry;

pub mod chat_client;
pub mod compute;
pub mod dataset;
pub mod eval;
pub mod hub;
pub mod preference;
pub mod shell;
pub mod tokenization;
pub mod train;

/// Every node type flow ships.
pub fn library() -> Registry {
    let mut registry = Registry::new();
    registry.register(shell::Shell);
    registry.register(dataset::load::DatasetLoad);
    registry.register(dataset::filter::DatasetFilter);
    registry.register(dataset::split::DatasetSplit);
    registry.register(dataset::translate::DatasetTranslate);
    registry.register(train::tokenizer::TokenizerTrain);
    registry.register(train::init::ModelInit);
    registry.register(train::ref_logprobs::RefLogprobs);
    registry.register(train::dpo::DpoTrain);
    registry.register(train::sft::SftTrain);
    registry.register(eval::evaluate::Evaluate);
    registry.register(hub::fetch::HubFetchModel);
    registry.register(hub::push::HubPush);
    registry
}
