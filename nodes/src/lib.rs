#![warn(missing_docs)]
//! flow's node library. Adding a node type: one file, plus one `register` line in [`library`].

use flow_engine::node::Registry;

pub mod chat_client;
pub mod chat_template;
pub mod compute;
pub mod curves;
pub mod dataset_filter;
pub mod dataset_load;
pub mod dataset_split;
pub mod dataset_translate;
pub mod dpo_train;
pub mod eval_report;
pub mod evaluate;
pub mod hub;
pub mod hub_fetch;
pub mod hub_push;
pub mod judge;
pub mod model_card;
pub mod model_init;
pub mod preference;
pub mod ref_logprobs;
pub mod sft_train;
pub mod shell;
pub mod tokenizer_train;
pub mod training;

/// Every node type flow ships.
pub fn library() -> Registry {
    let mut registry = Registry::new();
    registry.register(shell::Shell);
    registry.register(dataset_load::DatasetLoad);
    registry.register(dataset_filter::DatasetFilter);
    registry.register(dataset_split::DatasetSplit);
    registry.register(dataset_translate::DatasetTranslate);
    registry.register(tokenizer_train::TokenizerTrain);
    registry.register(model_init::ModelInit);
    registry.register(ref_logprobs::RefLogprobs);
    registry.register(dpo_train::DpoTrain);
    registry.register(sft_train::SftTrain);
    registry.register(evaluate::Evaluate);
    registry.register(hub_fetch::HubFetchModel);
    registry.register(hub_push::HubPush);
    registry
}
