//! Models and training: `tokenizer.train` ([`tokenizer`]), `model.init` ([`init`]),
//! `model.ref_logprobs` ([`ref_logprobs`]), `sft.train` ([`sft`]) and `dpo.train` ([`dpo`]),
//! with what the two training nodes share (params, loading, metrics log, saving) in
//! [`common`]. The tensor work itself is the `flow-model` crate's.

pub mod common;
pub mod dpo;
pub mod init;
pub mod ref_logprobs;
pub mod sft;
pub mod tokenizer;
