#![warn(missing_docs)]
//! flow's engine: the workflow model, validation, the DAG, the content-addressed cache,
//! the executor and run records. It never names a concrete node: node types come in
//! through [`node::Registry`].

pub mod clock;
pub mod diagnostic;
pub mod executor;
pub mod fingerprint;
pub mod graph;
pub mod node;
pub mod params;
pub mod plan;
pub mod record;
pub mod reference;
pub mod schedule;
pub mod scheduler;
pub mod schema;
pub mod store;
pub mod validate;
pub mod workflow;
pub mod yaml;

/// The name serde writes for a unit enum variant (`succeeded`, `skip`, `latest`), for text output.
pub fn variant_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// Whether `name` is usable as a node id or param name (letters, digits, `_`, `-`).
pub fn reference_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
