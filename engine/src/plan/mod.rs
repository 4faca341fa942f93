//! The `Plan` step of `YAML → Workflow → Plan → Run → Artifacts`: each node's fingerprint (the
//! one cache-key recipe, [`fingerprint`]) and, per node, `run` or `cached` with the reasons
//! ([`assess`]), shared by `flow plan` and the executor.
//!
//! This room reads the store (cache entries, node state, artifact health); it never writes it
//! and never runs a node.

pub mod assess;
pub mod fingerprint;

pub use assess::{
    Action, Assessment, PlanError, PlannedNode, Selection, assess, plan, plan_with_remote,
};
