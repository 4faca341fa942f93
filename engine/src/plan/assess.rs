//! Deciding, per node, `run` or `cached`, and why — shared by `flow plan` and the executor.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

use crate::diagnostic::{Diagnostic, Diagnostics, did_you_mean};
use crate::plan::fingerprint::{Fingerprint, Reason};
use crate::store::{ArtifactHealth, CacheEntry, Store};
use crate::workflow::validate::ValidWorkflow;

/// Which nodes to consider and which to force.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Run these even when cached.
    pub force: BTreeSet<String>,
    /// Run everything even when cached.
    pub force_all: bool,
    /// Only these nodes and what they need (empty: all).
    pub only: Vec<String>,
    /// Rehash cached artifacts instead of the size + mtime check.
    pub verify: bool,
}

impl Selection {
    /// Whether `id` is forced.
    pub fn is_forced(&self, id: &str) -> bool {
        self.force_all || self.force.contains(id)
    }

    /// The selected node ids: `--only` targets and their ancestors, or everything.
    /// Unknown ids in `--only` / `--force` are errors.
    pub fn nodes(&self, wf: &ValidWorkflow) -> Result<BTreeSet<String>, Diagnostics> {
        let ids: Vec<&str> = wf.nodes.iter().map(|n| n.id.as_str()).collect();
        let mut errors = Vec::new();
        for (flag, id) in self
            .only
            .iter()
            .map(|i| ("--only", i))
            .chain(self.force.iter().map(|i| ("--force", i)))
        {
            if !ids.contains(&id.as_str()) {
                let d =
                    Diagnostic::general(format!("{flag} {id}: the workflow has no node `{id}`"))
                        .with_optional_hint(did_you_mean(id, ids.iter().copied()));
                errors.push(d);
            }
        }
        if !errors.is_empty() {
            return Err(Diagnostics::new(&wf.file.path, &wf.file.source, errors));
        }
        if self.only.is_empty() {
            return Ok(ids.iter().map(|s| s.to_string()).collect());
        }
        Ok(self
            .only
            .iter()
            .flat_map(|id| wf.dag.ancestors(id).into_iter().chain([id.clone()]))
            .collect())
    }
}

/// The decision for one node.
#[derive(Clone, Debug)]
pub enum Assessment {
    /// Reuse these outputs.
    Cached(CacheEntry),
    /// Run, for these reasons.
    Run(Vec<Reason>),
}

/// Decides whether a node with fingerprint `fp` can be taken from the cache.
pub fn assess(
    store: &Store,
    workflow: &str,
    node: &str,
    fp: &Fingerprint,
    forced: bool,
    verify: bool,
) -> Assessment {
    if forced {
        return Assessment::Run(vec![Reason::Forced]);
    }
    let previous = store.node_state(workflow, node);
    if fp.has_pending_inputs() {
        return Assessment::Run(match &previous {
            Some(prev) => fp.changes_since(prev),
            None => vec![Reason::NeverRun],
        });
    }
    if let Some(entry) = store.cache_entry(&fp.key()) {
        let damage: Vec<Reason> = entry
            .outputs
            .iter()
            .filter_map(
                |(output, digest)| match store.check_artifact(digest, verify) {
                    ArtifactHealth::Healthy => None,
                    ArtifactHealth::Missing => Some(Reason::OutputMissing {
                        output: output.clone(),
                    }),
                    ArtifactHealth::Corrupted(detail) => Some(Reason::OutputCorrupted {
                        output: output.clone(),
                        detail,
                    }),
                },
            )
            .collect();
        return if damage.is_empty() {
            Assessment::Cached(entry)
        } else {
            Assessment::Run(damage)
        };
    }
    Assessment::Run(match previous {
        None => vec![Reason::NeverRun],
        Some(prev) => {
            let changes = fp.changes_since(&prev);
            if changes.is_empty() {
                vec![Reason::NoCachedResult]
            } else {
                changes
            }
        }
    })
}

/// `run` or `cached`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Will run.
    Run,
    /// Will be taken from the cache.
    Cached,
}

/// One line of a plan.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedNode {
    /// Node id.
    pub id: String,
    /// Node type.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Decision.
    pub action: Action,
    /// Why it runs (empty when cached locally; where, when cached in the remote store).
    pub reasons: Vec<String>,
}

/// What a run would do, node by node in topological order (no side effects).
pub fn plan(
    wf: &ValidWorkflow,
    store: &Store,
    selection: &Selection,
) -> Result<Vec<PlannedNode>, Diagnostics> {
    plan_with_remote(wf, store, selection, |_| Ok(None)).map_err(|e| match e {
        PlanError::Workflow(d) => d,
        PlanError::Remote(_) => unreachable!("no remote to fail"),
    })
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The workflow or selection is wrong.
    #[error("{0}")]
    Workflow(#[from] Diagnostics),
    /// The shared store could not be read.
    #[error("{0}")]
    Remote(String),
}

/// [`plan`], asking `remote` for a key's cache entry (and where it was found, for the reason)
/// when the local store would run a node that is not forced and whose inputs are known.
pub fn plan_with_remote(
    wf: &ValidWorkflow,
    store: &Store,
    selection: &Selection,
    mut remote: impl FnMut(&str) -> Result<Option<(CacheEntry, String)>, String>,
) -> Result<Vec<PlannedNode>, PlanError> {
    let selected = selection.nodes(wf)?;
    let mut digests: BTreeMap<String, String> = BTreeMap::new();
    let mut planned = Vec::new();
    for node in wf.nodes.iter().filter(|n| selected.contains(&n.id)) {
        let fp = Fingerprint::compute(node, &wf.params, &digests)
            .map_err(|errors| Diagnostics::new(&wf.file.path, &wf.file.source, errors))?;
        let (action, reasons) = match assess(
            store,
            &wf.name,
            &node.id,
            &fp,
            selection.is_forced(&node.id),
            selection.verify,
        ) {
            Assessment::Cached(entry) => {
                for (output, digest) in entry.outputs {
                    digests.insert(format!("{}.{output}", node.id), digest);
                }
                (Action::Cached, Vec::new())
            }
            Assessment::Run(reasons) => {
                let remote = if selection.is_forced(&node.id) || fp.has_pending_inputs() {
                    None
                } else {
                    remote(&fp.key()).map_err(PlanError::Remote)?
                };
                match remote {
                    Some((entry, place)) => {
                        for (output, digest) in entry.outputs {
                            digests.insert(format!("{}.{output}", node.id), digest);
                        }
                        (Action::Cached, vec![format!("in the remote store {place}")])
                    }
                    None => (
                        Action::Run,
                        reasons.iter().map(ToString::to_string).collect(),
                    ),
                }
            }
        };
        planned.push(PlannedNode {
            id: node.id.clone(),
            node_type: node.node_type.type_name().to_string(),
            action,
            reasons,
        });
    }
    Ok(planned)
}
