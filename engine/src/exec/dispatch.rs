//! The dispatcher of one run: starts every node whose upstream is done, within the job limit and
//! the resource capacities, skips the ones that can never run, and records each node as it ends.
//! It decides *when* a node runs, never *how* ([`super::node_job`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::task::JoinSet;

use super::node_job::NodeJob;
use super::{RunError, RunOptions, Shared};
use crate::store::StoreError;
use crate::store::record::{NodeRecord, NodeStatus, RunRecord};
use crate::workflow::reference::Reference;
use crate::workflow::validate::{ValidNode, ValidWorkflow};

/// Capacity per resource: given by `--resources`, else the largest single request.
/// Only the resources `held` says flow holds tokens for count (not those an executor schedules).
pub(super) fn resource_capacity(
    wf: &ValidWorkflow,
    selected: &BTreeSet<String>,
    given: &BTreeMap<String, u32>,
    held: impl Fn(&ValidNode) -> BTreeMap<String, u32>,
) -> Result<BTreeMap<String, u32>, RunError> {
    let mut capacity = given.clone();
    for node in wf.nodes.iter().filter(|n| selected.contains(&n.id)) {
        for (name, &amount) in &held(node) {
            match given.get(name) {
                Some(&have) if amount > have => {
                    return Err(RunError::Resources(format!(
                        "node `{}` needs {name}={amount} but the run has {name}={have} (set --resources {name}={amount})",
                        node.id
                    )));
                }
                Some(_) => {}
                None => {
                    let cap = capacity.entry(name.clone()).or_insert(0);
                    *cap = (*cap).max(amount);
                }
            }
        }
    }
    Ok(capacity)
}

/// The nodes of a run in flight, and what is still free.
pub(super) struct Dispatcher {
    pub(super) shared: Arc<Shared>,
    pub(super) options: RunOptions,
    pub(super) free: BTreeMap<String, u32>,
    pub(super) running: JoinSet<NodeRecord>,
    /// Set when the run stops starting nodes.
    pub(super) stopped: Option<Stop>,
}

/// Why a run stops starting nodes.
pub(super) enum Stop {
    /// Fail-fast after this node failed.
    Failed(String),
    /// Ctrl-C / SIGTERM.
    Cancelled,
}

impl Dispatcher {
    /// Starts and finishes nodes until none is running and none can start.
    pub(super) async fn drive(&mut self, record: &mut RunRecord) -> Result<(), StoreError> {
        loop {
            self.start_ready(record);
            if self.running.is_empty() {
                break;
            }
            let finished = tokio::select! {
                Some(joined) = self.running.join_next() => joined,
                _ = self.shared.cancel.cancelled(), if self.stopped.is_none() => {
                    self.stopped = Some(Stop::Cancelled);
                    continue;
                }
            };
            let node = finished.unwrap_or_else(|e| panicked_node(&e));
            self.finish(record, node).await?;
        }
        Ok(())
    }

    /// Starts every pending node whose upstream is done, within the job and resource limits;
    /// skips the ones that can never run.
    fn start_ready(&mut self, record: &mut RunRecord) {
        let wf = self.shared.wf.clone();
        for i in 0..record.nodes.len() {
            if record.nodes[i].status != NodeStatus::Pending {
                continue;
            }
            let node = wf
                .node(&record.nodes[i].id)
                .expect("record nodes come from the workflow");
            if let Some(reason) = self.blocker(record, node) {
                record.nodes[i].status = NodeStatus::Skipped;
                record.nodes[i].error = Some(reason);
                self.shared.observer.node_finished(&record.nodes[i]);
                continue;
            }
            let ready = node
                .upstream
                .iter()
                .all(|u| status_of(record, u).is_none_or(NodeStatus::is_done));
            if !ready || self.running.len() >= self.options.jobs.max(1) || !self.fits(node) {
                continue;
            }
            for (name, amount) in &self.shared.held(node) {
                *self
                    .free
                    .get_mut(name)
                    .expect("capacity covers every request") -= amount;
            }
            record.nodes[i].status = NodeStatus::Running;
            let inputs = input_digests(record, node);
            let job = NodeJob {
                shared: self.shared.clone(),
                node: node.clone(),
                inputs,
                forced: self.options.selection.is_forced(&node.id),
                remote: BTreeMap::new(),
            };
            let span =
                tracing::info_span!("node", id = %node.id, node_type = node.node_type.type_name());
            self.running
                .spawn(tracing::Instrument::instrument(job.run(), span));
        }
    }

    /// Why a pending node can never run in this run, if so.
    fn blocker(&self, record: &RunRecord, node: &ValidNode) -> Option<String> {
        if let Some(failed) = node.upstream.iter().find(|u| {
            matches!(
                status_of(record, u),
                Some(NodeStatus::Failed | NodeStatus::Skipped | NodeStatus::Cancelled)
            )
        }) {
            return Some(format!("upstream node `{failed}` did not succeed"));
        }
        match &self.stopped {
            Some(Stop::Cancelled) => Some("the run was cancelled".into()),
            Some(Stop::Failed(failed)) => Some(format!(
                "the run stopped after `{failed}` failed (use --keep-going to continue)"
            )),
            None => None,
        }
    }

    fn fits(&self, node: &ValidNode) -> bool {
        self.shared
            .held(node)
            .iter()
            .all(|(name, amount)| self.free.get(name).is_some_and(|free| free >= amount))
    }

    async fn finish(&mut self, record: &mut RunRecord, node: NodeRecord) -> Result<(), StoreError> {
        if let Some(spec) = self.shared.wf.node(&node.id) {
            for (name, amount) in &self.shared.held(spec) {
                *self
                    .free
                    .get_mut(name)
                    .expect("capacity covers every request") += amount;
            }
        }
        if node.status == NodeStatus::Failed && !self.options.keep_going && self.stopped.is_none() {
            self.stopped = Some(Stop::Failed(node.id.clone()));
        }
        self.shared.observer.node_finished(&node);
        if let Some(slot) = record.nodes.iter_mut().find(|n| n.id == node.id) {
            *slot = node;
        }
        super::save_record(record, &self.shared.store, self.shared.remote.as_ref()).await
    }
}

fn status_of(record: &RunRecord, id: &str) -> Option<NodeStatus> {
    record.nodes.iter().find(|n| n.id == id).map(|n| n.status)
}

/// `NODE.OUTPUT` → digest for every output reference of `node`.
fn input_digests(record: &RunRecord, node: &ValidNode) -> BTreeMap<String, String> {
    let mut digests = BTreeMap::new();
    for reference in &node.references {
        if let Reference::Output { node: from, output } = reference
            && let Some(digest) = record
                .nodes
                .iter()
                .find(|n| &n.id == from)
                .and_then(|n| n.outputs.get(output))
        {
            digests.insert(format!("{from}.{output}"), digest.clone());
        }
    }
    digests
}

fn panicked_node(error: &tokio::task::JoinError) -> NodeRecord {
    let mut node = NodeRecord::pending("?", "?");
    node.status = NodeStatus::Failed;
    node.error = Some(format!("node task panicked: {error}"));
    node
}
