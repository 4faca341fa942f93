//! The workflow file as users write it: `name`, `description`, `params`, `nodes`.
//! It never holds run state (that lives in the store's run records and node state),
//! as `dvc.yaml` never holds what `dvc.lock` does.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::diagnostic::{Diagnostic, Diagnostics, Span};
use crate::workflow::executor::ExecutorSection;
use crate::workflow::schedule::ScheduleList;
use crate::workflow::yaml::{SpannedMap, Yaml};

/// A workflow: a DAG of nodes, with params that `--set` overrides.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "flow workflow")]
pub struct WorkflowSpec {
    /// The workflow's name; together with a node id it keys the state `flow plan` compares against.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Free text shown by `flow runs` and in reports.
    #[serde(default)]
    pub description: Option<String>,
    /// Default values of the workflow's params, referenced as `${params.NAME}`; `--set NAME=VALUE` overrides them.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub params: SpannedMap<Yaml>,
    /// When the workflow runs by itself: one schedule or a list (`flow schedule` runs them).
    #[serde(default)]
    #[schemars(with = "Option<crate::workflow::schedule::ScheduleListSchema>")]
    pub schedule: Option<ScheduleList>,
    /// Where nodes run by default (`{type: slurm, partition: gpu}`) and the Slurm settings; `flow run --executor` overrides the type.
    #[serde(default)]
    pub executor: Option<ExecutorSection>,
    /// The nodes, by id. `${NODE.OUTPUT}` references and `after` lists make the DAG's edges.
    #[schemars(with = "BTreeMap<String, NodeSpec>")]
    pub nodes: Spanned<SpannedMap<NodeSpec>>,
}

/// One node of a workflow: a node type from the library and its params.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The node type (`flow nodes` lists them).
    #[schemars(with = "String")]
    pub uses: Spanned<String>,
    /// The node type's params. Strings may hold `${params.X}`, `${NODE.OUTPUT}`, `${env.X}` and `${secret.X}`.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub with: Option<Spanned<Yaml>>,
    /// Nodes that must finish first although no data flows from them.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub after: Vec<Spanned<String>>,
    /// How many times to retry a failed attempt (exponential backoff with jitter).
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub retries: Option<Spanned<u32>>,
    /// Longest time one attempt may take, as `30s`, `10m` or `1h30m`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// Resource tokens the node holds while it runs (`{gpu: 1, mem_gb: 16, cpus: 4}`); a run never over-commits them. On Slurm, `gpu`, `mem_gb` and `cpus` become `--gres=gpu:N`, `--mem=NG` and `--cpus-per-task=N`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, u32>")]
    pub resources: SpannedMap<u32>,
    /// Where this node runs (`local` or `slurm`), over `--executor` and the top-level `executor:`.
    #[serde(default)]
    #[schemars(with = "Option<crate::workflow::executor::ExecutorKind>")]
    pub executor: Option<Spanned<String>>,
}

/// A parsed workflow file together with its source text (for error snippets).
#[derive(Debug)]
pub struct WorkflowFile {
    /// Path as given by the user.
    pub path: PathBuf,
    /// The file's text.
    pub source: String,
    /// The parsed workflow.
    pub spec: WorkflowSpec,
}

impl WorkflowFile {
    /// Reads and parses a workflow file; every problem comes back with its place.
    pub fn load(path: &Path) -> Result<WorkflowFile, Diagnostics> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics::new(
                path,
                "",
                vec![Diagnostic::general(format!(
                    "cannot read workflow file: {e}"
                ))],
            )
        })?;
        Self::parse(path, source)
    }

    /// Parses workflow text that came from `path`.
    pub fn parse(path: &Path, source: String) -> Result<WorkflowFile, Diagnostics> {
        if source
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            let d =
                Diagnostic::general("empty workflow: expected a mapping with `name` and `nodes`");
            return Err(Diagnostics::new(path, &source, vec![d]));
        }
        match serde_saphyr::from_str::<WorkflowSpec>(&source) {
            Ok(spec) => Ok(WorkflowFile {
                path: path.to_path_buf(),
                source,
                spec,
            }),
            Err(e) => Err(Diagnostics::new(path, &source, vec![yaml_error(&e)])),
        }
    }
}

/// Turns a YAML / structure error into a diagnostic with its place.
fn yaml_error(error: &serde_saphyr::Error) -> Diagnostic {
    let text = error.without_snippet().to_string();
    let message = strip_location_prefix(text.lines().next().unwrap_or_default());
    let message = match message.strip_prefix("error: ") {
        Some(m) => strip_location_prefix(m),
        None => message,
    };
    let message = message.replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    let message = match message.rfind(" at line ") {
        Some(at) if message[at..].contains(", column ") => message[..at].to_string(),
        _ => message,
    };
    let message = if message.starts_with("unknown field") {
        message.replacen("unknown field", "unknown key", 1)
    } else {
        message
    };
    let span = error.location().map(|l| Span::of(&l)).unwrap_or_default();
    Diagnostic {
        span: span.is_known().then_some(span),
        field: None,
        message: format!("invalid workflow: {message}"),
        hint: None,
    }
}

/// `line 5 column 14: invalid u32` → `invalid u32`.
fn strip_location_prefix(line: &str) -> String {
    if line.starts_with("line ")
        && let Some((_, rest)) = line.split_once(": ")
    {
        return rest.to_string();
    }
    line.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WorkflowFile, Diagnostics> {
        WorkflowFile::parse(Path::new("w.yaml"), text.to_string())
    }

    #[test]
    fn parses_the_documented_example() {
        let wf = parse(
            "name: example\nparams:\n  n: 3\nnodes:\n  make:\n    uses: shell\n    with:\n      run: \"seq ${params.n}\"\n    retries: 2\n    timeout: 10m\n    resources: { gpu: 1 }\n    after: []\n",
        )
        .unwrap();
        assert_eq!(wf.spec.name.value, "example");
        let node = wf.spec.nodes.value.get("make").unwrap();
        assert_eq!(node.value.uses.value, "shell");
        assert_eq!(node.value.retries.as_ref().unwrap().value, 2);
        assert_eq!(node.value.resources.get("gpu").unwrap().value, 1);
    }

    #[test]
    fn unknown_top_level_key_points_at_it() {
        let err = parse("name: x\nnodez: {}\n").unwrap_err();
        let d = &err.items[0];
        assert_eq!(d.span.unwrap().line, 2);
        assert!(d.message.contains("unknown key `nodez`"), "{}", d.message);
    }

    #[test]
    fn duplicate_node_id_is_an_error() {
        let err =
            parse("name: x\nnodes:\n  a:\n    uses: shell\n  a:\n    uses: shell\n").unwrap_err();
        assert_eq!(err.items[0].span.unwrap().line, 5);
        assert!(
            err.items[0].message.contains("duplicate"),
            "{}",
            err.items[0].message
        );
    }

    #[test]
    fn not_yaml_and_empty_are_errors() {
        assert!(parse("name: [x\n").is_err());
        assert!(
            parse("# only a comment\n").unwrap_err().items[0]
                .message
                .contains("empty workflow")
        );
    }
}
