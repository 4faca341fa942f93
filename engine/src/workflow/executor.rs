//! Where nodes run, as the workflow writes it: the executor names, the top-level `executor:`
//! section (`{type: slurm, partition, account, sbatch_args}`), and the precedence that picks one
//! node's executor: its own `executor:` > `--executor` / `FLOW_EXECUTOR` > the top-level
//! `type` > `local`. This room only names and checks; `exec::executor` runs jobs.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::diagnostic::{Diagnostic, Span, did_you_mean};

/// An executor: where a node attempt runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// In the `flow run` process itself (the default).
    #[default]
    Local,
    /// As a Slurm batch job (`sbatch`) running `flow worker`.
    Slurm,
}

impl ExecutorKind {
    /// Every executor, in the order error messages list them.
    pub const ALL: [ExecutorKind; 2] = [ExecutorKind::Local, ExecutorKind::Slurm];

    /// The name written in workflows and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Slurm => "slurm",
        }
    }

    /// The executor called `name`.
    pub fn from_name(name: &str) -> Option<ExecutorKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// `local, slurm`, for messages.
    pub fn names() -> String {
        Self::ALL.map(ExecutorKind::name).join(", ")
    }

    /// The executor called `name`, or a message naming the allowed ones (and a close one).
    pub fn parse(name: &str) -> Result<ExecutorKind, String> {
        Self::from_name(name).ok_or_else(|| {
            let hint = Self::close_to(name)
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            format!("{}{hint}", Self::unknown(name))
        })
    }

    fn unknown(name: &str) -> String {
        format!(
            "unknown executor `{name}`: expected one of {}",
            Self::names()
        )
    }

    fn close_to(name: &str) -> Option<String> {
        did_you_mean(name, Self::ALL.map(ExecutorKind::name))
    }
}

/// The top-level `executor:` section: the workflow's default executor and the Slurm settings
/// every node that runs on Slurm uses.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSection {
    /// The executor nodes run on unless `--executor` / `FLOW_EXECUTOR` or the node's own `executor:` says otherwise.
    #[serde(rename = "type")]
    #[schemars(with = "ExecutorKind")]
    pub kind: Spanned<String>,
    /// Slurm: the partition jobs are submitted to (`sbatch --partition`).
    #[serde(default)]
    pub partition: Option<String>,
    /// Slurm: the account jobs are charged to (`sbatch --account`).
    #[serde(default)]
    pub account: Option<String>,
    /// Slurm: further `sbatch` arguments, each one word (`["--qos=high", "--constraint=a100"]`).
    #[serde(default)]
    pub sbatch_args: Vec<String>,
}

/// Settings of the Slurm executor, from the top-level `executor:` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlurmSettings {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// Extra `sbatch` arguments.
    pub sbatch_args: Vec<String>,
}

/// The workflow's executor settings, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecutorConfig {
    /// The top-level `type`, when the workflow names one.
    pub default: Option<ExecutorKind>,
    /// Settings for nodes that run on Slurm.
    pub slurm: SlurmSettings,
}

impl ExecutorConfig {
    /// Checks the top-level section; a bad name is a diagnostic at its place.
    pub fn check(section: Option<&ExecutorSection>) -> (ExecutorConfig, Vec<Diagnostic>) {
        let Some(section) = section else {
            return (ExecutorConfig::default(), Vec::new());
        };
        let (default, errors) = match check_name(&section.kind, "executor.type") {
            Ok(kind) => (Some(kind), Vec::new()),
            Err(d) => (None, vec![d]),
        };
        let slurm = SlurmSettings {
            partition: section.partition.clone(),
            account: section.account.clone(),
            sbatch_args: section.sbatch_args.clone(),
        };
        (ExecutorConfig { default, slurm }, errors)
    }
}

/// Checks an executor name written in the workflow.
pub fn check_name(name: &Spanned<String>, field: &str) -> Result<ExecutorKind, Diagnostic> {
    ExecutorKind::from_name(&name.value).ok_or_else(|| {
        let message = ExecutorKind::unknown(&name.value);
        Diagnostic::at(Span::of(&name.referenced), field, message)
            .with_optional_hint(ExecutorKind::close_to(&name.value))
    })
}

/// The executor a node runs on: its own `executor:` > `--executor` / `FLOW_EXECUTOR` > the
/// workflow's top-level `type` > local.
pub fn choose(
    node: Option<ExecutorKind>,
    command_line: Option<ExecutorKind>,
    workflow: Option<ExecutorKind>,
) -> ExecutorKind {
    node.or(command_line).or(workflow).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExecutorKind::{Local, Slurm};

    #[test]
    fn node_beats_command_line_beats_workflow_beats_local() {
        assert_eq!(choose(None, None, None), Local);
        assert_eq!(choose(None, None, Some(Slurm)), Slurm);
        assert_eq!(choose(None, Some(Local), Some(Slurm)), Local);
        assert_eq!(choose(None, Some(Slurm), Some(Local)), Slurm);
        assert_eq!(choose(Some(Local), Some(Slurm), Some(Slurm)), Local);
        assert_eq!(choose(Some(Slurm), None, None), Slurm);
    }

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_allowed() {
        for kind in ExecutorKind::ALL {
            assert_eq!(ExecutorKind::from_name(kind.name()), Some(kind));
        }
        let message = ExecutorKind::parse("slurn").unwrap_err();
        assert!(
            message.contains("unknown executor `slurn`: expected one of local, slurm"),
            "{message}"
        );
        assert!(message.contains("did you mean `slurm`?"), "{message}");
    }
}
