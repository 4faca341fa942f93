//! From a parsed file to a [`ValidWorkflow`]: every node type known, every param typed,
//! every reference pointing at something that exists, no cycles. All problems are
//! collected, each with its place, before anything runs or is written.

use serde_json::Value as Json;
use serde_saphyr::Spanned;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::diagnostic::{Diagnostic, Diagnostics, Span, did_you_mean};
use crate::graph::Dag;
use crate::node::{DynNode, Registry};
use crate::params::effective_params;
use crate::reference::{Reference, interpolate, references_in};
use crate::workflow::{NodeSpec, WorkflowFile};
use crate::yaml::{Yaml, locate};

/// A node that passed validation.
#[derive(Clone)]
pub struct ValidNode {
    /// Id in the workflow.
    pub id: String,
    /// Its node type.
    pub node_type: Arc<dyn DynNode>,
    /// The raw `with:` (references unresolved).
    pub with: Option<Spanned<Yaml>>,
    /// Every reference in `with:`, each once, in order.
    pub references: Vec<Reference>,
    /// Nodes this one waits for (references and `after`).
    pub upstream: BTreeSet<String>,
    /// Retries after a failed attempt.
    pub retries: u32,
    /// Limit for one attempt.
    pub timeout: Option<Duration>,
    /// Resource tokens held while running.
    pub resources: BTreeMap<String, u32>,
}

/// A workflow ready to plan and run.
pub struct ValidWorkflow {
    /// The file it came from.
    pub file: WorkflowFile,
    /// Its name.
    pub name: String,
    /// Effective params (defaults + `--set`).
    pub params: BTreeMap<String, Json>,
    /// Nodes in topological order.
    pub nodes: Vec<ValidNode>,
    /// The DAG.
    pub dag: Dag,
}

impl ValidWorkflow {
    /// The node with id `id`.
    pub fn node(&self, id: &str) -> Option<&ValidNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Node id → type name, for drawings.
    pub fn type_names(&self) -> HashMap<String, String> {
        self.nodes
            .iter()
            .map(|n| (n.id.clone(), n.node_type.type_name().to_string()))
            .collect()
    }
}

/// The placeholder an output reference resolves to while checking param types.
fn placeholder_path(node: &str, output: &str) -> Json {
    Json::String(format!("/flow/store/artifacts/{node}/{output}"))
}

/// Looks up `${params.NAME.path…}`.
pub fn param_value(
    params: &BTreeMap<String, Json>,
    name: &str,
    path: &[String],
) -> Result<Json, String> {
    let mut value = params.get(name).ok_or_else(|| {
        let hint = did_you_mean(name, params.keys().map(String::as_str))
            .map(|h| format!("; {h}"))
            .unwrap_or_default();
        format!("unknown param `{name}`{hint}")
    })?;
    for key in path {
        value = value
            .get(key)
            .ok_or_else(|| format!("param `{name}` has no key `{key}`"))?;
    }
    Ok(value.clone())
}

/// Validates a parsed workflow against the node library, with `--set` overrides.
pub fn validate(
    file: WorkflowFile,
    registry: &Registry,
    overrides: &[String],
) -> Result<ValidWorkflow, Diagnostics> {
    let (params, mut errors) = effective_params(&file.spec.params, overrides);
    let spec_nodes = &file.spec.nodes;
    if spec_nodes.value.is_empty() {
        errors.push(Diagnostic::at(
            Span::of(&spec_nodes.referenced),
            "nodes",
            "empty workflow: `nodes` has no entries",
        ));
    }
    let ids: Vec<&str> = spec_nodes.value.keys().collect();
    let mut dag = Dag::default();
    let mut nodes = Vec::new();
    for (key, spec) in spec_nodes.value.iter() {
        let id = key.value.as_str();
        dag.add_node(id);
        if !crate::reference_name_ok(id) {
            errors.push(Diagnostic::at(
                Span::of(&key.referenced),
                format!("nodes.{id}"),
                "node ids use letters, digits, `_` and `-`",
            ));
        }
        if let Some(node) = validate_node(
            id,
            &spec.value,
            registry,
            &ids,
            &params,
            spec_nodes,
            &mut dag,
            &mut errors,
        ) {
            nodes.push(node);
        }
    }
    let order = match dag.topological_order() {
        Ok(order) => order,
        Err(cycle) => {
            let first = spec_nodes
                .value
                .key(&cycle[0])
                .map(|k| Span::of(&k.referenced))
                .unwrap_or_default();
            errors.push(Diagnostic::at(
                first,
                format!("nodes.{}", cycle[0]),
                format!("cycle: {}", cycle.join(" → ")),
            ));
            Vec::new()
        }
    };
    if !errors.is_empty() {
        return Err(Diagnostics::new(&file.path, &file.source, errors));
    }
    nodes.sort_by_key(|n: &ValidNode| order.iter().position(|id| *id == n.id));
    Ok(ValidWorkflow {
        name: file.spec.name.value.clone(),
        file,
        params,
        nodes,
        dag,
    })
}

#[allow(clippy::too_many_arguments)]
fn validate_node(
    id: &str,
    spec: &NodeSpec,
    registry: &Registry,
    ids: &[&str],
    params: &BTreeMap<String, Json>,
    all: &Spanned<crate::yaml::SpannedMap<NodeSpec>>,
    dag: &mut Dag,
    errors: &mut Vec<Diagnostic>,
) -> Option<ValidNode> {
    let field = format!("nodes.{id}");
    let node_type = registry.get(&spec.uses.value);
    if node_type.is_none() {
        let mut d = Diagnostic::at(
            Span::of(&spec.uses.referenced),
            format!("{field}.uses"),
            format!(
                "unknown node type `{}` (`flow nodes` lists the library)",
                spec.uses.value
            ),
        );
        if let Some(hint) = did_you_mean(&spec.uses.value, registry.names()) {
            d = d.with_hint(hint);
        }
        errors.push(d);
    }
    for after in &spec.after {
        check_node_exists(
            &after.value,
            id,
            Span::of(&after.referenced),
            &format!("{field}.after"),
            ids,
            errors,
        );
        dag.add_edge(&after.value, id, "after");
    }
    let timeout = spec.timeout.as_ref().and_then(|t| match humantime::parse_duration(&t.value) {
        Ok(d) if !d.is_zero() => Some(d),
        _ => {
            errors.push(Diagnostic::at(
                Span::of(&t.referenced),
                format!("{field}.timeout"),
                format!("invalid duration `{}`: expected a positive duration such as `30s`, `10m` or `1h30m`", t.value),
            ));
            None
        }
    });
    let references = check_references(id, spec, registry, ids, params, all, dag, errors);
    let node_type = node_type?.clone();
    check_typed_params(id, spec, &node_type, params, errors);
    Some(ValidNode {
        id: id.to_string(),
        upstream: dag.upstream(id),
        node_type,
        with: spec.with.clone(),
        references,
        retries: spec.retries.as_ref().map_or(0, |r| r.value),
        timeout,
        resources: spec
            .resources
            .iter()
            .map(|(k, v)| (k.value.clone(), v.value))
            .collect(),
    })
}

fn check_node_exists(
    target: &str,
    from: &str,
    span: Span,
    field: &str,
    ids: &[&str],
    errors: &mut Vec<Diagnostic>,
) -> bool {
    if ids.contains(&target) {
        return true;
    }
    let mut d = Diagnostic::at(span, field, format!("reference to unknown node `{target}`"));
    if let Some(hint) = did_you_mean(target, ids.iter().copied().filter(|i| *i != from)) {
        d = d.with_hint(hint);
    }
    errors.push(d);
    false
}

/// Checks every `${…}` in `with:` and adds the DAG edges that output references make.
#[allow(clippy::too_many_arguments)]
fn check_references(
    id: &str,
    spec: &NodeSpec,
    registry: &Registry,
    ids: &[&str],
    params: &BTreeMap<String, Json>,
    all: &Spanned<crate::yaml::SpannedMap<NodeSpec>>,
    dag: &mut Dag,
    errors: &mut Vec<Diagnostic>,
) -> Vec<Reference> {
    let Some(with) = &spec.with else {
        return Vec::new();
    };
    let mut references = Vec::new();
    for found in references_in(with, &format!("nodes.{id}.with")) {
        let (reference, span, field) = match found {
            Ok(found) => found,
            Err(d) => {
                errors.push(d);
                continue;
            }
        };
        match &reference {
            Reference::Param { name, path } => {
                if let Err(message) = param_value(params, name, path) {
                    errors.push(Diagnostic::at(span, &field, message));
                }
            }
            Reference::Output { node, output } => {
                if check_node_exists(node, id, span, &field, ids, errors) {
                    check_output_exists(node, output, registry, all, span, &field, errors);
                    dag.add_edge(node, id, output);
                }
            }
            Reference::Env(_) | Reference::Secret(_) => {}
        }
        if !references.contains(&reference) {
            references.push(reference);
        }
    }
    references
}

fn check_output_exists(
    node: &str,
    output: &str,
    registry: &Registry,
    all: &Spanned<crate::yaml::SpannedMap<NodeSpec>>,
    span: Span,
    field: &str,
    errors: &mut Vec<Diagnostic>,
) {
    let Some(producer) = all
        .value
        .get(node)
        .and_then(|n| registry.get(&n.value.uses.value))
    else {
        return;
    };
    let outputs: Vec<&str> = producer.outputs().iter().map(|o| o.name).collect();
    if !outputs.contains(&output) {
        let mut d = Diagnostic::at(
            span,
            field,
            format!(
                "node `{node}` ({}) has no output `{output}`; its outputs: {}",
                producer.type_name(),
                outputs.join(", ")
            ),
        );
        if let Some(hint) = did_you_mean(output, outputs) {
            d = d.with_hint(hint);
        }
        errors.push(d);
    }
}

/// Resolves `with:` with placeholders and checks it against the node type's params struct.
fn check_typed_params(
    id: &str,
    spec: &NodeSpec,
    node_type: &Arc<dyn DynNode>,
    params: &BTreeMap<String, Json>,
    errors: &mut Vec<Diagnostic>,
) {
    let field = format!("nodes.{id}.with");
    let mut placeholders = |r: &Reference| -> Result<Json, String> {
        Ok(match r {
            Reference::Param { name, path } => {
                param_value(params, name, path).unwrap_or(Json::Null)
            }
            Reference::Env(name) => Json::String(std::env::var(name).unwrap_or_default()),
            Reference::Secret(_) => Json::String("***".into()),
            Reference::Output { node, output } => placeholder_path(node, output),
        })
    };
    let value = match &spec.with {
        Some(with) => match interpolate(with, &field, &mut placeholders) {
            Ok(value) => value,
            Err(_) => return, // already reported by check_references
        },
        None => Json::Object(Default::default()),
    };
    if let Err(e) = node_type.check_params(&value) {
        let span = match &spec.with {
            Some(with) => locate(with, &e.path),
            None => Span::of(&spec.uses.referenced),
        };
        let path = crate::yaml::path_text(&e.path);
        let message = format!(
            "{} params: {}",
            node_type.type_name(),
            e.message.replace("unknown field", "unknown param")
        );
        errors.push(Diagnostic::at(span, format!("{field}{path}"), message));
    }
}
