//! Run records: what happened in each run (per node status, duration, cache hit, artifact
//! digests, log path, executor and job), kept under `runs/<run-id>/` in the store.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::store::{Store, StoreError, read_json, write_json_atomic};

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Still going (or its process died; see [`RunStatus::Interrupted`]).
    Running,
    /// Every selected node is cached or succeeded.
    Succeeded,
    /// A node failed.
    Failed,
    /// Cancelled by Ctrl-C / SIGTERM.
    Cancelled,
    /// Its process died without finishing the record (found by the next run).
    Interrupted,
}

/// What happened to one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Not started yet.
    Pending,
    /// Running now.
    Running,
    /// Taken from the cache.
    Cached,
    /// Ran and succeeded.
    Succeeded,
    /// Ran and failed.
    Failed,
    /// Not run: an upstream node failed, or the run stopped.
    Skipped,
    /// Cancelled while running.
    Cancelled,
}

impl NodeStatus {
    /// Whether the node's outputs are available.
    pub fn is_done(self) -> bool {
        matches!(self, NodeStatus::Cached | NodeStatus::Succeeded)
    }
}

/// One node in a run record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub id: String,
    /// Node type.
    pub node_type: String,
    /// Outcome.
    pub status: NodeStatus,
    /// Whether the outputs came from the cache.
    pub cache_hit: bool,
    /// Wall time in milliseconds (the original duration for a cache hit is in the cache entry).
    pub duration_ms: u64,
    /// Attempts made (retries + 1 at most).
    pub attempts: u32,
    /// Fingerprint key.
    pub key: Option<String>,
    /// Output name → artifact digest.
    pub outputs: BTreeMap<String, String>,
    /// Why it ran (empty when cached).
    pub reasons: Vec<String>,
    /// The node's log file.
    pub log: Option<PathBuf>,
    /// The failure message (secrets masked).
    pub error: Option<String>,
    /// Where it ran (`local`, `slurm`); records from before executors say nothing (local).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// The id of the job its last attempt ran as (a Slurm job id); none in-process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The output file of that job (Slurm's `--output`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_log: Option<PathBuf>,
}

impl NodeRecord {
    /// A pending node.
    pub fn pending(id: &str, node_type: &str) -> Self {
        NodeRecord {
            id: id.to_string(),
            node_type: node_type.to_string(),
            status: NodeStatus::Pending,
            cache_hit: false,
            duration_ms: 0,
            attempts: 0,
            key: None,
            outputs: BTreeMap::new(),
            reasons: Vec::new(),
            log: None,
            error: None,
            executor: None,
            job_id: None,
            job_log: None,
        }
    }
}

/// A run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run id (sortable by time).
    pub id: String,
    /// Workflow name.
    pub workflow: String,
    /// Workflow file as given.
    pub file: PathBuf,
    /// What started it (`manual`, `schedule: …`, `exec`).
    pub trigger: String,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time.
    pub finished_at: Option<String>,
    /// Outcome.
    pub status: RunStatus,
    /// Effective workflow params.
    pub params: BTreeMap<String, Json>,
    /// Nodes in topological order.
    pub nodes: Vec<NodeRecord>,
}

/// Current time as RFC 3339 (UTC, milliseconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A new run id: `20261127T022514123Z-ab12` (UTC time, then random).
pub fn new_run_id() -> String {
    let stamp: String = now_rfc3339()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("{stamp}-{:04x}", fastrand::u16(..))
}

impl RunRecord {
    /// The record's directory.
    pub fn dir(store: &Store, id: &str) -> PathBuf {
        store.root().join("runs").join(id)
    }

    /// Where node `node`'s log goes.
    pub fn log_path(store: &Store, id: &str, node: &str) -> PathBuf {
        Self::dir(store, id)
            .join("logs")
            .join(format!("{node}.log"))
    }

    /// Where job `job` of node `node` on executor `executor` writes its output:
    /// `logs/<node>.<executor>-<job>.log` (Slurm's `--output`, given `%j` as the job).
    pub fn job_log_path(store: &Store, id: &str, node: &str, executor: &str, job: &str) -> PathBuf {
        Self::dir(store, id)
            .join("logs")
            .join(format!("{node}.{executor}-{job}.log"))
    }

    /// Writes the record atomically.
    pub fn save(&self, store: &Store) -> Result<(), StoreError> {
        write_json_atomic(&Self::dir(store, &self.id).join("record.json"), self)
    }

    /// Loads run `id`.
    pub fn load(store: &Store, id: &str) -> Option<RunRecord> {
        read_json(&Self::dir(store, id).join("record.json"))
    }

    /// Every artifact digest some run record in `store` references (what `flow gc` keeps).
    pub fn referenced_digests(store: &Store) -> std::collections::BTreeSet<String> {
        Self::list(store)
            .iter()
            .flat_map(|r| r.digests().cloned())
            .collect()
    }

    /// Every run, oldest first.
    pub fn list(store: &Store) -> Vec<RunRecord> {
        let Ok(entries) = std::fs::read_dir(store.root().join("runs")) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        ids.sort();
        ids.iter().filter_map(|id| Self::load(store, id)).collect()
    }

    /// Marks records left `running` by a dead process as interrupted (call with the lock held).
    pub fn mark_interrupted(store: &Store) -> Result<(), StoreError> {
        for mut record in Self::list(store)
            .into_iter()
            .filter(|r| r.status == RunStatus::Running)
        {
            record.status = RunStatus::Interrupted;
            for node in &mut record.nodes {
                if node.status == NodeStatus::Running {
                    node.status = NodeStatus::Cancelled;
                }
            }
            record.save(store)?;
        }
        Ok(())
    }

    /// `run ID succeeded: 2 ran, 3 cached, 0 failed, 0 skipped`, and `, N cancelled` when
    /// nodes were stopped while running.
    pub fn summary(&self) -> String {
        let count = |wanted: NodeStatus| self.nodes.iter().filter(|n| n.status == wanted).count();
        let cancelled = match count(NodeStatus::Cancelled) {
            0 => String::new(),
            n => format!(", {n} cancelled"),
        };
        format!(
            "run {} {}: {} ran, {} cached, {} failed, {} skipped{cancelled}",
            self.id,
            crate::variant_name(&self.status),
            count(NodeStatus::Succeeded),
            count(NodeStatus::Cached),
            count(NodeStatus::Failed),
            count(NodeStatus::Skipped),
        )
    }

    /// The artifact digests this record references.
    pub fn digests(&self) -> impl Iterator<Item = &String> {
        self.nodes.iter().flat_map(|n| n.outputs.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_record_from_before_executors_still_loads() {
        let old = r#"{"id": "a", "node_type": "shell", "status": "succeeded", "cache_hit": false,
            "duration_ms": 5, "attempts": 1, "key": null, "outputs": {}, "reasons": [],
            "log": null, "error": null}"#;
        let node: NodeRecord = serde_json::from_str(old).unwrap();
        assert_eq!(
            (node.executor, node.job_id, node.job_log),
            (None, None, None)
        );
    }
}
