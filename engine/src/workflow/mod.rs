//! The `Workflow` step of `YAML → Workflow → Plan → Run → Artifacts`: a workflow file parsed
//! with spans ([`yaml`], [`spec`]), its params ([`params`]), `${…}` references ([`reference`]),
//! `schedule:` section ([`schedule`]), `executor:` settings ([`executor`]) and DAG ([`graph`]),
//! checked into a [`ValidWorkflow`] ([`validate`]), and the JSON Schemas editors check it with
//! ([`schema`]).
//!
//! This room reads and checks what the user wrote; it never touches the store, computes a
//! cache key or runs anything.

pub mod executor;
pub mod graph;
pub mod params;
pub mod reference;
pub mod schedule;
pub mod schema;
pub mod spec;
pub mod validate;
pub mod yaml;

pub use spec::{NodeSpec, WorkflowFile, WorkflowSpec};
pub use validate::{ValidNode, ValidWorkflow, validate};
