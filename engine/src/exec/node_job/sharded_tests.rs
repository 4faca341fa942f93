//! Sharded attempts through [`crate::exec::execute`] with a test node type: the merged output
//! equals the unsharded one, and the first failing slice fails the node and cancels the rest.

use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::exec::{RunOptions, SilentObserver, execute};
use crate::node::{Node, NodeContext, NodeError, OutputSpec, Registry};
use crate::store::Store;
use crate::store::record::{NodeStatus, RunRecord};
use crate::workflow::spec::WorkflowFile;
use crate::workflow::validate::validate;
use tokio_util::sync::CancellationToken;

#[derive(Deserialize, JsonSchema)]
struct SliceParams {
    items: usize,
    #[serde(default = "one")]
    shards: usize,
    /// This slice fails at once; the others wait to be cancelled.
    #[serde(default)]
    failing: Option<usize>,
}

fn one() -> usize {
    1
}

/// Writes one line per item of its slice; merging concatenates the slices.
struct Slices;

impl Node for Slices {
    type Params = SliceParams;
    const TYPE: &'static str = "test.slices";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Numbers its items.";
    const OUTPUTS: &'static [OutputSpec] = &[OutputSpec {
        name: "out",
        description: "items.txt",
    }];

    fn shards(params: &SliceParams) -> usize {
        params.shards
    }

    async fn run(&self, ctx: NodeContext, params: SliceParams) -> Result<(), NodeError> {
        let range = ctx
            .shard()
            .map_or(0..params.items, |s| s.range(params.items));
        if let (Some(failing), Some(shard)) = (params.failing, ctx.shard()) {
            if shard.index == failing {
                return Err(NodeError::new("this slice breaks"));
            }
            ctx.cancellation().cancelled().await;
            return Err(NodeError::new("cancelled"));
        }
        let lines: String = range.map(|i| format!("item {i}\n")).collect();
        std::fs::write(ctx.output_dir("out")?.join("items.txt"), lines)?;
        Ok(())
    }

    async fn merge(
        &self,
        ctx: NodeContext,
        _params: SliceParams,
        shards: Vec<BTreeMap<String, PathBuf>>,
    ) -> Result<(), NodeError> {
        let mut all = String::new();
        for shard in &shards {
            all.push_str(&std::fs::read_to_string(shard["out"].join("items.txt"))?);
        }
        std::fs::write(ctx.output_dir("out")?.join("items.txt"), all)?;
        Ok(())
    }
}

async fn run(dir: &Path, nodes: &str) -> RunRecord {
    let path = dir.join("w.yaml");
    let source = format!("name: slices\nnodes:\n{nodes}");
    let file = WorkflowFile::parse(&path, source).unwrap();
    let mut registry = Registry::new();
    registry.register(Slices);
    let workflow = validate(file, &registry, &[]).unwrap();
    let store = Store::at(dir.join("store"));
    store.create().unwrap();
    let options = RunOptions {
        jobs: 4,
        ..RunOptions::default()
    };
    let running = execute(
        Arc::new(workflow),
        store,
        options,
        Arc::new(SilentObserver),
        CancellationToken::new(),
    );
    // A guard against a hang, not a timing assertion.
    tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the run ends")
        .unwrap()
}

#[tokio::test]
async fn merged_slices_equal_the_unsharded_output() {
    let dir = tempfile::tempdir().unwrap();
    let record = run(
        dir.path(),
        "  whole:\n    uses: test.slices\n    with: {items: 10}\n  split:\n    uses: test.slices\n    with: {items: 10, shards: 4}\n",
    )
    .await;
    let outputs: Vec<_> = record.nodes.iter().map(|n| n.outputs.clone()).collect();
    assert!(
        record
            .nodes
            .iter()
            .all(|n| n.status == NodeStatus::Succeeded)
    );
    assert_eq!(outputs[0], outputs[1]);
}

#[tokio::test]
async fn the_first_failing_slice_fails_the_node_and_cancels_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let record = run(
        dir.path(),
        "  split:\n    uses: test.slices\n    with: {items: 10, shards: 3, failing: 1}\n",
    )
    .await;
    let node = &record.nodes[0];
    assert_eq!(node.status, NodeStatus::Failed);
    let error = node.error.as_deref().unwrap();
    assert!(
        error.starts_with("shard 1 of 3: this slice breaks"),
        "{error}"
    );
}
