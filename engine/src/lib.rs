#![warn(missing_docs)]
//! flow's engine: `YAML → Workflow → Plan → Run → Artifacts`. It never names a concrete node:
//! node types come in through [`node::Registry`].
//!
//! Rooms, lowest first (a room imports only the rooms above it in this list):
//! - [`diagnostic`]: errors with `file:line:column`, the field and a hint.
//! - [`node`]: the contract between the engine and the node library.
//! - [`workflow`]: the YAML with spans, params, references, `schedule:`, the DAG, validation
//!   into a [`workflow::ValidWorkflow`], and the JSON Schemas.
//! - [`store`]: the content-addressed artifact store, its lock and the run records.
//! - [`plan`]: fingerprints (the cache-key recipe and the reasons a node re-runs) and the plan.
//! - [`exec`]: running a workflow: dispatch within jobs and resources, attempts, retries,
//!   and the executors attempts run on (in-process, Slurm jobs running `flow worker`).
//! - [`scheduler`]: `flow schedule`'s loop on an injectable clock.

pub mod diagnostic;
pub mod exec;
pub mod node;
pub mod plan;
pub mod scheduler;
pub mod store;
pub mod workflow;

/// The name serde writes for a unit enum variant (`succeeded`, `skip`, `latest`), for text output.
pub fn variant_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}
