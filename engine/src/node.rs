//! The node library contract. The engine never names a concrete node: every node type
//! implements [`Node`] and is registered with one line, `registry.register(MyNode)`.
//! A node type whose work splits into independent slices (scoring a dataset, say) may also
//! declare [`Node::shards`] and [`Node::merge`]: the engine then runs the slices as separate
//! jobs ([`Shard`]) and merges their outputs in slice order.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// One declared output of a node type.
#[derive(Clone, Copy, Debug)]
pub struct OutputSpec {
    /// The output's name, as in `${NODE.OUTPUT}`.
    pub name: &'static str,
    /// What the output directory holds.
    pub description: &'static str,
}

/// Why a node failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NodeError {
    /// What went wrong, for the user.
    pub message: String,
}

impl NodeError {
    /// A failure with a message.
    pub fn new(message: impl Into<String>) -> Self {
        NodeError {
            message: message.into(),
        }
    }
}

impl From<std::io::Error> for NodeError {
    fn from(e: std::io::Error) -> Self {
        NodeError::new(e.to_string())
    }
}

/// A node type: typed params, declared outputs and an async `run`.
///
/// The version string enters every cache key: bump it when the node's results change
/// for the same params and inputs.
pub trait Node: Send + Sync + 'static {
    /// Params, from the node's `with:` after references are resolved (input artifacts arrive as paths).
    type Params: DeserializeOwned + JsonSchema + Send + 'static;
    /// The type name used in `uses:`.
    const TYPE: &'static str;
    /// The implementation version; it enters the cache key.
    const VERSION: &'static str;
    /// One paragraph for `flow nodes` and the README.
    const DESCRIPTION: &'static str;
    /// The output directories the node writes.
    const OUTPUTS: &'static [OutputSpec];

    /// Checks that go beyond types (ranges, combinations of params), run by `flow validate`,
    /// `flow run` before any node starts, and `flow exec`: an error names the param's path below
    /// `with` and what was expected.
    fn check(_params: &Self::Params) -> Result<(), ParamError> {
        Ok(())
    }

    /// Files and directories outside the store that the node reads, named by its params (a
    /// dataset given as a plain path, say). Their size and modification time enter the cache key,
    /// so editing such a file re-runs the node. Paths that are `${NODE.OUTPUT}` references are
    /// artifacts and tracked by digest already.
    fn external_files(_params: &Self::Params) -> Vec<PathBuf> {
        Vec::new()
    }

    /// State outside flow that decides the node's result and is cheap to look up (the commit a
    /// Hub branch points at, say), as `name → value`. It is looked up before every cache check
    /// and enters the cache key, so the node re-runs when that state moves and is taken from the
    /// cache while it does not. An `Err` enters the key as well (the node then runs, and its run
    /// reports the problem).
    fn remote_state(_params: &Self::Params) -> Result<BTreeMap<String, String>, String> {
        Ok(BTreeMap::new())
    }

    /// Does the work: reads inputs through `params`, writes each output into `ctx.output_dir(name)`.
    /// In a sharded run ([`Node::shards`] > 1) only the slice `ctx.shard()` names.
    fn run(
        &self,
        ctx: NodeContext,
        params: Self::Params,
    ) -> impl Future<Output = Result<(), NodeError>> + Send;

    /// Params that decide only how the work runs, never what it produces (`shards`): they
    /// stay out of the cache key, so changing them re-runs nothing. Each needs a default.
    const LAYOUT_PARAMS: &'static [&'static str] = &[];

    /// Into how many slices the params split the work (a `shards` param, say); 1: not sharded.
    /// Each slice runs as its own job with [`NodeContext::shard`] set, then [`Node::merge`]
    /// joins them; the merged outputs must equal what one unsharded run writes, byte for byte.
    fn shards(_params: &Self::Params) -> usize {
        1
    }

    /// Writes the node's outputs into `ctx.output_dir(name)` from the slices' outputs:
    /// `shards[i][name]` is the directory slice `i` wrote for output `name`, in slice order.
    /// Only called when [`Node::shards`] is above 1.
    fn merge(
        &self,
        ctx: NodeContext,
        params: Self::Params,
        shards: Vec<BTreeMap<String, PathBuf>>,
    ) -> impl Future<Output = Result<(), NodeError>> + Send {
        let _ = (ctx, params, shards);
        async {
            Err(NodeError::new(format!(
                "node type `{}` cannot be sharded",
                Self::TYPE
            )))
        }
    }
}

/// One slice of a sharded node's work: slice `index` of `count` (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    /// Which slice, from 0.
    pub index: usize,
    /// How many slices.
    pub count: usize,
}

impl Shard {
    /// The items of `0..len` this slice takes: contiguous and in order, so the slices
    /// concatenated in index order are `0..len`; their sizes differ by at most one.
    pub fn range(&self, len: usize) -> std::ops::Range<usize> {
        let count = self.count.max(1);
        len * self.index / count..len * (self.index + 1) / count
    }
}

impl ParamError {
    /// An error about the param at `key` (below `with`).
    pub fn at(key: &str, message: impl Into<String>) -> ParamError {
        ParamError {
            path: vec![crate::diagnostic::PathStep::Key(key.to_string())],
            message: message.into(),
        }
    }
}

/// A param that failed to deserialize or a check: where (path below `with`) and why.
#[derive(Debug)]
pub struct ParamError {
    /// Keys and indices below `with`.
    pub path: Vec<crate::diagnostic::PathStep>,
    /// serde's message (`missing field`, `unknown field`, `invalid type`).
    pub message: String,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), NodeError>> + Send>>;

/// A type-erased node type, as the engine sees it.
pub trait DynNode: Send + Sync {
    /// `uses:` name.
    fn type_name(&self) -> &'static str;
    /// Version that enters the cache key.
    fn version(&self) -> &'static str;
    /// Description for docs.
    fn description(&self) -> &'static str;
    /// Declared outputs.
    fn outputs(&self) -> &'static [OutputSpec];
    /// JSON Schema of the params.
    fn params_schema(&self) -> schemars::Schema;
    /// Checks params against the typed struct.
    fn check_params(&self, params: &Json) -> Result<(), ParamError>;
    /// Files outside the store named by `params` (see [`Node::external_files`]).
    fn external_files(&self, params: &Json) -> Vec<PathBuf>;
    /// Looks up the remote state named by `params` (see [`Node::remote_state`]).
    fn remote_state(&self, params: &Json) -> Result<BTreeMap<String, String>, String>;
    /// Runs with params given as JSON.
    fn run_json(self: Arc<Self>, ctx: NodeContext, params: Json) -> BoxFuture;
    /// Params that stay out of the cache key (see [`Node::LAYOUT_PARAMS`]).
    fn layout_params(&self) -> &'static [&'static str];
    /// Into how many slices `params` split the work (see [`Node::shards`]); 1 when not sharded
    /// or when the params do not parse (the run then reports them).
    fn shards(&self, params: &Json) -> usize;
    /// Merges the slices' outputs (see [`Node::merge`]).
    fn merge_json(
        self: Arc<Self>,
        ctx: NodeContext,
        params: Json,
        shards: Vec<BTreeMap<String, PathBuf>>,
    ) -> BoxFuture;
}

struct Erased<N>(N);

fn deserialize_params<P: DeserializeOwned>(params: &Json) -> Result<P, ParamError> {
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e
            .path()
            .iter()
            .filter_map(|segment| match segment {
                serde_path_to_error::Segment::Map { key } => {
                    Some(crate::diagnostic::PathStep::Key(key.clone()))
                }
                serde_path_to_error::Segment::Seq { index } => {
                    Some(crate::diagnostic::PathStep::Index(*index))
                }
                _ => None,
            })
            .collect();
        ParamError {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

impl<N: Node> DynNode for Erased<N> {
    fn type_name(&self) -> &'static str {
        N::TYPE
    }
    fn version(&self) -> &'static str {
        N::VERSION
    }
    fn description(&self) -> &'static str {
        N::DESCRIPTION
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        N::OUTPUTS
    }
    fn params_schema(&self) -> schemars::Schema {
        schemars::generate::SchemaSettings::draft2020_12()
            .into_generator()
            .into_root_schema_for::<N::Params>()
    }
    fn check_params(&self, params: &Json) -> Result<(), ParamError> {
        deserialize_params::<N::Params>(params).and_then(|p| N::check(&p))
    }
    fn external_files(&self, params: &Json) -> Vec<PathBuf> {
        deserialize_params::<N::Params>(params)
            .map(|p| N::external_files(&p))
            .unwrap_or_default()
    }
    fn remote_state(&self, params: &Json) -> Result<BTreeMap<String, String>, String> {
        deserialize_params::<N::Params>(params)
            .map_err(|e| e.message)
            .and_then(|p| N::remote_state(&p))
    }
    fn run_json(self: Arc<Self>, ctx: NodeContext, params: Json) -> BoxFuture {
        Box::pin(async move {
            let typed = checked_params::<N>(&params)?;
            self.0.run(ctx, typed).await
        })
    }
    fn layout_params(&self) -> &'static [&'static str] {
        N::LAYOUT_PARAMS
    }
    fn shards(&self, params: &Json) -> usize {
        deserialize_params::<N::Params>(params).map_or(1, |p| N::shards(&p).max(1))
    }
    fn merge_json(
        self: Arc<Self>,
        ctx: NodeContext,
        params: Json,
        shards: Vec<BTreeMap<String, PathBuf>>,
    ) -> BoxFuture {
        Box::pin(async move {
            let typed = checked_params::<N>(&params)?;
            self.0.merge(ctx, typed, shards).await
        })
    }
}

/// `params` as `N`'s typed params, checked.
fn checked_params<N: Node>(params: &Json) -> Result<N::Params, NodeError> {
    deserialize_params::<N::Params>(params)
        .and_then(|p| N::check(&p).map(|()| p))
        .map_err(|e| NodeError::new(e.message))
}

/// The node library: node types by name.
#[derive(Default, Clone)]
pub struct Registry {
    nodes: BTreeMap<&'static str, Arc<dyn DynNode>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node type.
    pub fn register<N: Node>(&mut self, node: N) -> &mut Self {
        self.nodes.insert(N::TYPE, Arc::new(Erased(node)));
        self
    }

    /// The node type called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn DynNode>> {
        self.nodes.get(name)
    }

    /// All node types, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn DynNode>> {
        self.nodes.values()
    }

    /// All type names.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.nodes.keys().copied()
    }
}

/// Receives progress reports from running nodes.
pub trait ProgressSink: Send + Sync {
    /// `done` of `total` units (`total` 0 when unknown) for node `node`.
    fn progress(&self, node: &str, done: u64, total: u64);

    /// `done` of `total` bytes of one transfer (`item`: a file name) of node `node`; a display
    /// may show one bar per transfer with bytes/s. By default reported as plain progress.
    fn transfer(&self, node: &str, item: &str, done: u64, total: u64) {
        let _ = item;
        self.progress(node, done, total);
    }
}

/// A node's log file; secret values are masked in everything written to it.
#[derive(Clone)]
pub struct LogSink {
    file: Arc<Mutex<std::fs::File>>,
    secrets: Arc<Vec<String>>,
    prefix: Arc<str>,
}

impl LogSink {
    /// A log writing to `path` (appending), masking `secrets`.
    pub fn create(path: &Path, secrets: Vec<String>) -> std::io::Result<LogSink> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(LogSink {
            file: Arc::new(Mutex::new(file)),
            secrets: Arc::new(secrets),
            prefix: Arc::from(""),
        })
    }

    /// A log writing to this process's standard error: a duplicate of its file descriptor, so
    /// the lines share the offset of whatever stderr is (a file that stdout is redirected to
    /// too, a pipe, a CI log) and none is overwritten.
    pub fn stderr() -> std::io::Result<LogSink> {
        use std::os::fd::AsFd;
        let fd = std::io::stderr().as_fd().try_clone_to_owned()?;
        Ok(LogSink {
            file: Arc::new(Mutex::new(std::fs::File::from(fd))),
            secrets: Arc::new(Vec::new()),
            prefix: Arc::from(""),
        })
    }

    /// The same log, each line starting with `prefix` (`[shard 2/8] `, say).
    pub fn with_prefix(&self, prefix: &str) -> LogSink {
        LogSink {
            prefix: Arc::from(format!("{}{prefix}", self.prefix)),
            ..self.clone()
        }
    }

    /// Replaces every secret value in `text` with `***`.
    pub fn mask(&self, text: &str) -> String {
        mask_secrets(text, &self.secrets)
    }

    /// Appends one line.
    pub fn line(&self, text: &str) {
        let masked = self.mask(text.trim_end_matches('\n'));
        if let Ok(mut file) = self.file.lock() {
            let _ = writeln!(file, "{}{masked}", self.prefix);
        }
    }
}

/// Replaces every occurrence of each secret value in `text` with `***`.
pub fn mask_secrets(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_string(), |acc, secret| {
            acc.replace(secret.as_str(), "***")
        })
}

/// Where a node's run comes from: the workflow and the artifacts it reads, for records that
/// travel with a result (a model card, say).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Lineage {
    /// The workflow's name.
    pub workflow: String,
    /// The workflow file's path.
    pub workflow_file: PathBuf,
    /// The workflow file's text.
    pub workflow_source: String,
    /// The run's id.
    pub run_id: String,
    /// `NODE.OUTPUT` → content digest of every artifact the node reads.
    pub inputs: BTreeMap<String, String>,
    /// The nodes that produced those artifacts, by id.
    pub producers: BTreeMap<String, Producer>,
}

/// A node that produced an input artifact, as the workflow declares it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Producer {
    /// Its node type (`uses:`).
    pub uses: String,
    /// Its params, workflow params substituted, references left symbolic.
    pub with: Json,
}

/// What a running node can see and use.
#[derive(Clone)]
pub struct NodeContext {
    /// The node's id in the workflow.
    pub node_id: String,
    /// A scratch directory that is removed after the node finishes.
    pub work_dir: PathBuf,
    /// A directory that survives failed, cancelled or killed attempts of the same fingerprint
    /// (same params and inputs), for resumable work; removed once the node succeeds.
    pub resume_dir: PathBuf,
    outputs: BTreeMap<String, PathBuf>,
    log: LogSink,
    cancel: CancellationToken,
    progress: Arc<dyn ProgressSink>,
    lineage: Lineage,
    cache_root: Option<PathBuf>,
    remote_state: BTreeMap<String, String>,
    shard: Option<Shard>,
}

impl NodeContext {
    /// A context; the engine makes these (and `flow exec`, and tests of node types).
    pub fn new(
        node_id: &str,
        work_dir: PathBuf,
        resume_dir: PathBuf,
        outputs: BTreeMap<String, PathBuf>,
        log: LogSink,
        cancel: CancellationToken,
        progress: Arc<dyn ProgressSink>,
    ) -> Self {
        NodeContext {
            node_id: node_id.to_string(),
            work_dir,
            resume_dir,
            outputs,
            log,
            cancel,
            progress,
            lineage: Lineage::default(),
            cache_root: None,
            remote_state: BTreeMap::new(),
            shard: None,
        }
    }

    /// The same context, for slice `shard` of a sharded node (see [`Node::shards`]).
    pub fn with_shard(mut self, shard: Option<Shard>) -> Self {
        self.shard = shard;
        self
    }

    /// The slice of the work this run does (`None`: all of it).
    pub fn shard(&self) -> Option<Shard> {
        self.shard
    }

    /// The same context, with the remote state the engine looked up for this run's cache key
    /// (see [`Node::remote_state`]).
    pub fn with_remote_state(mut self, state: BTreeMap<String, String>) -> Self {
        self.remote_state = state;
        self
    }

    /// The remote state this run's cache key holds (empty in `flow exec`). A node pins its work
    /// to it (the commit a branch pointed at, say), so that what it produces is what the key
    /// says, even when the branch moves while it runs.
    pub fn remote_state(&self) -> &BTreeMap<String, String> {
        &self.remote_state
    }

    /// The same context, with the root of caches shared by every run in one store.
    pub fn with_cache_root(mut self, root: PathBuf) -> Self {
        self.cache_root = Some(root);
        self
    }

    /// A directory for a cache keyed by content that outlives runs and fingerprints (paid API
    /// answers, say): `node-cache/<name>` in the store, or the resume directory outside a store.
    pub fn shared_cache(&self, name: &str) -> PathBuf {
        self.cache_root
            .as_ref()
            .unwrap_or(&self.resume_dir)
            .join(name)
    }

    /// The same context, with the run's lineage.
    pub fn with_lineage(mut self, lineage: Lineage) -> Self {
        self.lineage = lineage;
        self
    }

    /// Where this run comes from (empty outside a workflow run, as in `flow exec`).
    pub fn lineage(&self) -> &Lineage {
        &self.lineage
    }

    /// The directory to write output `name` into.
    pub fn output_dir(&self, name: &str) -> Result<&Path, NodeError> {
        self.outputs
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| NodeError::new(format!("node has no declared output `{name}`")))
    }

    /// The node's log.
    pub fn log(&self) -> &LogSink {
        &self.log
    }

    /// Fires when the run is cancelled (Ctrl-C, fail-fast) or the node timed out.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Reports progress (`total` 0 when unknown).
    pub fn progress(&self, done: u64, total: u64) {
        self.progress.progress(&self.node_id, done, total);
    }

    /// Reports the bytes of one transfer (a file being downloaded or uploaded).
    pub fn transfer(&self, item: &str, done: u64, total: u64) {
        self.progress.transfer(&self.node_id, item, done, total);
    }
}

/// A progress sink that drops reports.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn progress(&self, _: &str, _: u64, _: u64) {}
}

#[cfg(test)]
mod tests {
    use super::Shard;

    #[test]
    fn shard_ranges_cover_everything_once_in_order_with_sizes_one_apart() {
        for len in [0, 1, 2, 7, 17, 100] {
            for count in 1..=9 {
                let ranges: Vec<_> = (0..count)
                    .map(|index| Shard { index, count }.range(len))
                    .collect();
                let joined: Vec<usize> = ranges.iter().cloned().flatten().collect();
                assert_eq!(
                    joined,
                    (0..len).collect::<Vec<_>>(),
                    "len {len}, count {count}"
                );
                let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "len {len}, count {count}: {sizes:?}");
            }
        }
    }
}
