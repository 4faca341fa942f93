//! From a parsed file to a [`ValidWorkflow`]: every node type known, every param typed,
//! every reference pointing at something that exists, no cycles. All problems are
//! collected, each with its place, before anything runs or is written.

use serde_json::Value as Json;
use serde_saphyr::Spanned;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::diagnostic::{Diagnostic, Diagnostics, Span, did_you_mean};
use crate::node::{DynNode, Registry};
use crate::workflow::executor::{ExecutorConfig, ExecutorKind, check_name};
use crate::workflow::graph::Dag;
use crate::workflow::params::effective_params;
use crate::workflow::reference::{Reference, interpolate, references_in};
use crate::workflow::schedule::{Schedule, check_schedules};
use crate::workflow::spec::{NodeSpec, WorkflowFile};
use crate::workflow::yaml::{Yaml, locate};

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
    /// The node's own `executor:`, when it names one.
    pub executor: Option<ExecutorKind>,
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
    /// When the workflow runs by itself (`schedule:`), checked.
    pub schedules: Vec<Schedule>,
    /// The top-level `executor:` section, checked.
    pub executor: ExecutorConfig,
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
    let (params, errors) = effective_params(&file.spec.params, overrides);
    let spec_nodes = &file.spec.nodes;
    let mut checker = Checker {
        registry,
        ids: spec_nodes.value.keys().collect(),
        params: &params,
        all: &spec_nodes.value,
        dag: Dag::default(),
        errors,
    };
    if spec_nodes.value.is_empty() {
        let span = Span::of(&spec_nodes.referenced);
        checker.errors.push(Diagnostic::at(
            span,
            "nodes",
            "empty workflow: `nodes` has no entries",
        ));
    }
    let mut nodes = Vec::new();
    for (key, spec) in spec_nodes.value.iter() {
        if !crate::workflow::reference::reference_name_ok(&key.value) {
            let message = "node ids use letters, digits, `_` and `-`";
            checker.errors.push(Diagnostic::at(
                Span::of(&key.referenced),
                format!("nodes.{}", key.value),
                message,
            ));
        }
        nodes.extend(checker.node(&key.value, &spec.value));
    }
    let Checker {
        dag, mut errors, ..
    } = checker;
    let (schedules, mut schedule_errors) = match &file.spec.schedule {
        Some(list) => check_schedules(list, &params),
        None => (Vec::new(), Vec::new()),
    };
    errors.append(&mut schedule_errors);
    let (executor, mut executor_errors) = ExecutorConfig::check(file.spec.executor.as_ref());
    errors.append(&mut executor_errors);
    let order = dag.topological_order().unwrap_or_else(|cycle| {
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
    });
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
        schedules,
        executor,
    })
}

/// Checks nodes one by one, building the DAG and collecting every problem.
struct Checker<'a> {
    registry: &'a Registry,
    ids: Vec<&'a str>,
    params: &'a BTreeMap<String, Json>,
    all: &'a crate::workflow::yaml::SpannedMap<NodeSpec>,
    dag: Dag,
    errors: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn node(&mut self, id: &str, spec: &NodeSpec) -> Option<ValidNode> {
        let field = format!("nodes.{id}");
        self.dag.add_node(id);
        let node_type = self.registry.get(&spec.uses.value).cloned();
        if node_type.is_none() {
            let message = format!(
                "unknown node type `{}` (`flow nodes` lists the library)",
                spec.uses.value
            );
            let d = Diagnostic::at(
                Span::of(&spec.uses.referenced),
                format!("{field}.uses"),
                message,
            )
            .with_optional_hint(did_you_mean(&spec.uses.value, self.registry.names()));
            self.errors.push(d);
        }
        for after in &spec.after {
            if self.node_exists(
                &after.value,
                id,
                Span::of(&after.referenced),
                &format!("{field}.after"),
            ) {
                self.dag.add_edge(&after.value, id, "after");
            }
        }
        let timeout = spec
            .timeout
            .as_ref()
            .and_then(|t| self.duration(t, &format!("{field}.timeout")));
        let references = self.references(id, spec);
        let executor = spec.executor.as_ref().and_then(|name| {
            check_name(name, &format!("{field}.executor"))
                .map_err(|d| self.errors.push(d))
                .ok()
        });
        let node_type = node_type?;
        self.typed_params(id, spec, &node_type);
        Some(ValidNode {
            id: id.to_string(),
            upstream: self.dag.upstream(id),
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
            executor,
        })
    }

    fn duration(&mut self, text: &Spanned<String>, field: &str) -> Option<Duration> {
        match humantime::parse_duration(&text.value) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                let message = format!(
                    "invalid duration `{}`: expected a positive duration such as `30s`, `10m` or `1h30m`",
                    text.value
                );
                self.errors
                    .push(Diagnostic::at(Span::of(&text.referenced), field, message));
                None
            }
        }
    }

    fn node_exists(&mut self, target: &str, from: &str, span: Span, field: &str) -> bool {
        if self.ids.contains(&target) {
            return true;
        }
        let d = Diagnostic::at(span, field, format!("reference to unknown node `{target}`"))
            .with_optional_hint(did_you_mean(
                target,
                self.ids.iter().copied().filter(|i| *i != from),
            ));
        self.errors.push(d);
        false
    }

    /// Checks every `${…}` in `with:` and adds the DAG edges that output references make.
    fn references(&mut self, id: &str, spec: &NodeSpec) -> Vec<Reference> {
        let Some(with) = &spec.with else {
            return Vec::new();
        };
        let mut references = Vec::new();
        for found in references_in(with, &format!("nodes.{id}.with")) {
            let (reference, span, field) = match found {
                Ok(found) => found,
                Err(d) => {
                    self.errors.push(d);
                    continue;
                }
            };
            match &reference {
                Reference::Param { name, path } => {
                    if let Err(message) = param_value(self.params, name, path) {
                        self.errors.push(Diagnostic::at(span, &field, message));
                    }
                }
                Reference::Output { node, output } => {
                    if self.node_exists(node, id, span, &field) {
                        self.output_exists(node, output, span, &field);
                        self.dag.add_edge(node, id, output);
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

    fn output_exists(&mut self, node: &str, output: &str, span: Span, field: &str) {
        let Some(producer) = self
            .all
            .get(node)
            .and_then(|n| self.registry.get(&n.value.uses.value))
        else {
            return;
        };
        let outputs: Vec<&str> = producer.outputs().iter().map(|o| o.name).collect();
        if outputs.contains(&output) {
            return;
        }
        let message = format!(
            "node `{node}` ({}) has no output `{output}`; its outputs: {}",
            producer.type_name(),
            outputs.join(", ")
        );
        let d =
            Diagnostic::at(span, field, message).with_optional_hint(did_you_mean(output, outputs));
        self.errors.push(d);
    }

    /// Resolves `with:` with placeholders and checks it against the node type's params struct.
    fn typed_params(&mut self, id: &str, spec: &NodeSpec, node_type: &Arc<dyn DynNode>) {
        let field = format!("nodes.{id}.with");
        let params = self.params;
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
                Err(_) => return, // already reported by `references`
            },
            None => Json::Object(Default::default()),
        };
        if let Err(e) = node_type.check_params(&value) {
            let span = match &spec.with {
                Some(with) => locate(with, &e.path),
                None => Span::of(&spec.uses.referenced),
            };
            let message = format!(
                "{} params: {}",
                node_type.type_name(),
                e.message.replace("unknown field", "unknown param")
            );
            self.errors.push(Diagnostic::at(
                span,
                format!("{field}{}", crate::workflow::yaml::path_text(&e.path)),
                message,
            ));
        }
    }
}
