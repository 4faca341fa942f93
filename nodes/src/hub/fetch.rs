//! `hub.fetch_model`: a model directory from a Hub repository (through the Hugging Face cache,
//! shared with the Python tools) or from a local directory.
//!
//! The revision is resolved to a commit sha before anything else; the sha and the selected
//! files' etags are the node's remote state, so the cache key moves exactly when the branch
//! does and a cached 15 GB model is never re-hashed. Downloads go through the hf-hub crate
//! (chunked, resumable `.part` files under `blobs/`); files already in the cache, under any
//! snapshot, are linked rather than fetched again.

use crate::hub::client::{
    HfCache, HubClient, HubEnv, RemoteFile, RepoId, RepoKind, Snapshot, block_on,
};
use flow_engine::node::{Node, NodeContext, NodeError, OutputSpec, ParamError};
use globset::{Glob, GlobSet, GlobSetBuilder};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The node type.
pub struct HubFetchModel;

fn default_revision() -> String {
    "main".into()
}

/// What a model directory needs: config, weights, tokenizer and generation config.
fn default_files() -> Vec<String> {
    [
        "config.json",
        "generation_config.json",
        "*.safetensors",
        "*.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
    ]
    .map(String::from)
    .to_vec()
}

/// Params of `hub.fetch_model`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchParams {
    /// Hub model repository (`org/name`). Exactly one of `repo` and `path`.
    #[serde(default)]
    pub repo: Option<String>,
    /// Branch, tag or commit sha of `repo`.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// Glob allow-list of repository paths (`*` also matches `/`); the default takes config,
    /// safetensors weights (and their index), tokenizer files and the generation config.
    #[serde(default = "default_files")]
    pub files: Vec<String>,
    /// A local model directory instead of a Hub repository (its files are linked or copied).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Files are downloaded in ranged requests of this many MB; an interrupted download resumes
    /// after its last complete chunk.
    #[serde(default = "default_chunk_mb")]
    pub chunk_mb: f64,
}

fn default_chunk_mb() -> f64 {
    DEFAULT_CHUNK_BYTES as f64 / 1e6
}

/// Download chunk size unless a node says otherwise (hf-hub's default).
pub const DEFAULT_CHUNK_BYTES: usize = 10_000_000;

impl Node for HubFetchModel {
    type Params = FetchParams;
    const TYPE: &'static str = "hub.fetch_model";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Fetches a model directory from a Hugging Face Hub repository through the standard HF cache (HF_HOME / HF_HUB_CACHE, shared with Python tools; HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE honoured), or takes one from a local `path`. The revision is resolved to a commit sha first: the sha and file etags are the cache key. Resumable downloads with progress; 401/403/404 say whether the repository is gated, private or missing.";
    const OUTPUTS: &'static [OutputSpec] = &[OutputSpec {
        name: "model",
        description: "the model directory (config.json, *.safetensors, tokenizer files)",
    }];

    fn check(params: &FetchParams) -> Result<(), ParamError> {
        match (&params.repo, &params.path) {
            (Some(_), Some(_)) => {
                return Err(ParamError::at(
                    "path",
                    "give either `repo` or `path`, not both",
                ));
            }
            (None, None) => {
                return Err(ParamError::at(
                    "repo",
                    "missing: give a Hub repository (`repo: org/name`) or a local `path`",
                ));
            }
            (Some(repo), None) => {
                RepoId::parse(repo, RepoKind::Model).map_err(|e| ParamError::at("repo", e))?;
            }
            (None, Some(_)) => {}
        }
        if params.files.is_empty() {
            return Err(ParamError::at("files", "must name at least one glob"));
        }
        if !params.chunk_mb.is_finite() || params.chunk_mb < 0.001 {
            return Err(ParamError::at("chunk_mb", "must be at least 0.001 (1 kB)"));
        }
        globs(&params.files).map(|_| ())
    }

    fn external_files(params: &FetchParams) -> Vec<PathBuf> {
        params.path.iter().cloned().collect()
    }

    fn remote_state(params: &FetchParams) -> Result<BTreeMap<String, String>, String> {
        match &params.repo {
            Some(repo) => remote_key(
                &RepoId::parse(repo, RepoKind::Model)?,
                &params.revision,
                &params.files,
            ),
            None => Ok(BTreeMap::new()),
        }
    }

    async fn run(&self, ctx: NodeContext, params: FetchParams) -> Result<(), NodeError> {
        let out = ctx.output_dir("model")?.to_path_buf();
        match (&params.repo, &params.path) {
            (Some(repo), _) => {
                let repo = RepoId::parse(repo, RepoKind::Model).map_err(NodeError::new)?;
                fetch(&ctx, &repo, &params, &out).await
            }
            (None, Some(dir)) => copy_local(&ctx, dir, &params.files, &out),
            (None, None) => Err(NodeError::new("give `repo` or `path`")),
        }
    }
}

/// The remote state of `revision` of `repo` restricted to `patterns`: the commit sha and a
/// digest of the selected files' etags (from the Hub, or with HF_HUB_OFFLINE from the cache).
pub fn remote_key(
    repo: &RepoId,
    revision: &str,
    patterns: &[String],
) -> Result<BTreeMap<String, String>, String> {
    let env = HubEnv::from_env();
    let snapshot = block_on(resolve(&env, repo, revision))?.map_err(|e| e.message)?;
    let selected = select(&snapshot, patterns).map_err(|e| e.message)?;
    let etags: String = selected
        .iter()
        .map(|f| format!("{} {}\n", f.path, f.etag))
        .collect();
    Ok(BTreeMap::from([
        (commit_key(repo, revision), snapshot.sha),
        (
            "etags of the selected files".into(),
            blake3::hash(etags.as_bytes()).to_hex().to_string(),
        ),
    ]))
}

/// The remote-state entry that holds the commit `revision` of `repo` resolved to.
fn commit_key(repo: &RepoId, revision: &str) -> String {
    format!("commit of {}@{revision}", repo.id)
}

/// The glob allow-list; an invalid glob names its index below `files`.
pub fn globs(patterns: &[String]) -> Result<GlobSet, ParamError> {
    let mut builder = GlobSetBuilder::new();
    for (i, pattern) in patterns.iter().enumerate() {
        let glob = Glob::new(pattern).map_err(|e| ParamError {
            path: vec![
                flow_engine::workflow::yaml::PathStep::Key("files".into()),
                flow_engine::workflow::yaml::PathStep::Index(i),
            ],
            message: format!("invalid glob `{pattern}`: {e}"),
        })?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| ParamError::at("files", e.to_string()))
}

fn glob_set(patterns: &[String]) -> Result<GlobSet, NodeError> {
    globs(patterns).map_err(|e| NodeError::new(e.message))
}

/// The files of `snapshot` that the allow-list takes; none is an error that lists the repo.
fn select(snapshot: &Snapshot, patterns: &[String]) -> Result<Vec<RemoteFile>, NodeError> {
    let set = glob_set(patterns)?;
    let selected: Vec<RemoteFile> = snapshot
        .files
        .iter()
        .filter(|f| set.is_match(&f.path))
        .cloned()
        .collect();
    if selected.is_empty() {
        let listing: Vec<&str> = snapshot.files.iter().map(|f| f.path.as_str()).collect();
        return Err(NodeError::new(format!(
            "no file of commit {} matches `files` {patterns:?}; the commit has: {}",
            snapshot.sha,
            listing.join(", ")
        )));
    }
    Ok(selected)
}

/// The commit and files of `revision`: from the Hub, or with HF_HUB_OFFLINE from the cache.
async fn resolve(env: &HubEnv, repo: &RepoId, revision: &str) -> Result<Snapshot, NodeError> {
    if !env.offline {
        return HubClient::new(env.clone())?.snapshot(repo, revision).await;
    }
    let cache = HfCache {
        root: env.cache.clone(),
    };
    let sha = cache.resolve_offline(repo, revision).ok_or_else(|| {
        NodeError::new(format!(
            "HF_HUB_OFFLINE is set and {}@{revision} is not in the cache: {} is missing (fetch it once online, or unset HF_HUB_OFFLINE)",
            repo.id,
            cache.ref_path(repo, revision).display()
        ))
    })?;
    cache.cached_snapshot(repo, &sha).ok_or_else(|| {
        NodeError::new(format!(
            "HF_HUB_OFFLINE is set and commit {sha} of {} is not in the cache: {} is missing",
            repo.id,
            cache.snapshot_dir(repo, &sha).display()
        ))
    })
}

/// Offline, the shards a cached `*.safetensors.index.json` names but the cache lacks.
fn missing_shards(cache_dir: &Path, selected: &[RemoteFile]) -> Vec<String> {
    let mut missing = Vec::new();
    for index in selected
        .iter()
        .filter(|f| f.path.ends_with(".safetensors.index.json"))
    {
        let Ok(text) = std::fs::read_to_string(cache_dir.join(&index.path)) else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let shards: std::collections::BTreeSet<String> = json["weight_map"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values().filter_map(|v| v.as_str().map(str::to_string)))
            .collect();
        missing.extend(
            shards
                .into_iter()
                .filter(|s| !selected.iter().any(|f| &f.path == s)),
        );
    }
    missing
}

/// Files of a repository at a commit, present in the HF cache.
pub struct Materialized {
    /// The commit sha the revision resolved to.
    pub sha: String,
    /// The files the allow-list took.
    pub files: Vec<RemoteFile>,
    /// `snapshots/<sha>/` in the cache: each file is at `dir/<path>`.
    pub dir: PathBuf,
}

/// Resolves `revision`, selects files by `patterns` and makes them present in the HF cache
/// (downloading what is missing; with HF_HUB_OFFLINE checking that the cache has them).
pub async fn materialize(
    ctx: &NodeContext,
    repo: &RepoId,
    revision: &str,
    patterns: &[String],
    chunk_bytes: usize,
) -> Result<Materialized, NodeError> {
    let env = HubEnv::from_env();
    let cache = HfCache {
        root: env.cache.clone(),
    };
    // The commit the cache key holds, when the engine looked it up: what is fetched is then
    // exactly what the key says, even if the branch moved since.
    let pinned = ctx.remote_state().get(&commit_key(repo, revision));
    let snapshot = resolve(&env, repo, pinned.map_or(revision, String::as_str)).await?;
    let selected = select(&snapshot, patterns)?;
    let dir = cache.snapshot_dir(repo, &snapshot.sha);
    ctx.log().line(&format!(
        "{}@{revision} is commit {} ({} files selected, {} bytes){}",
        repo.id,
        snapshot.sha,
        selected.len(),
        selected.iter().map(|f| f.size).sum::<u64>(),
        if env.offline {
            ", offline from the cache"
        } else {
            ""
        }
    ));
    if env.offline {
        let missing = missing_shards(&dir, &selected);
        if !missing.is_empty() {
            return Err(NodeError::new(format!(
                "HF_HUB_OFFLINE is set and the cache lacks files of {}@{}: {} (under {})",
                repo.id,
                snapshot.sha,
                missing.join(", "),
                dir.display()
            )));
        }
    } else {
        let target = Target {
            env: &env,
            cache: &cache,
            repo,
            sha: &snapshot.sha,
            chunk_bytes,
        };
        download_missing(ctx, &target, &selected).await?;
        cache
            .write_ref(repo, revision, &snapshot.sha)
            .map_err(|e| NodeError::new(format!("cannot write the cache ref: {e}")))?;
    }
    Ok(Materialized {
        sha: snapshot.sha,
        files: selected,
        dir,
    })
}

async fn fetch(
    ctx: &NodeContext,
    repo: &RepoId,
    params: &FetchParams,
    out: &Path,
) -> Result<(), NodeError> {
    let chunk = (params.chunk_mb * 1e6) as usize;
    let snapshot = materialize(ctx, repo, &params.revision, &params.files, chunk).await?;
    for file in &snapshot.files {
        link_or_copy(&snapshot.dir.join(&file.path), &out.join(&file.path))?;
    }
    Ok(())
}

/// Makes every selected file present under `snapshots/<sha>/`: linked to a blob already in the
/// cache, or downloaded.
/// Where downloads go: the repository at a commit, in a cache.
struct Target<'a> {
    env: &'a HubEnv,
    cache: &'a HfCache,
    repo: &'a RepoId,
    sha: &'a str,
    chunk_bytes: usize,
}

async fn download_missing(
    ctx: &NodeContext,
    target: &Target<'_>,
    files: &[RemoteFile],
) -> Result<(), NodeError> {
    let Target {
        env,
        cache,
        repo,
        sha,
        chunk_bytes,
    } = *target;
    let present = |f: &RemoteFile| {
        std::fs::metadata(cache.snapshot_dir(repo, sha).join(&f.path))
            .is_ok_and(|m| m.len() == f.size)
    };
    let blob_cached = |f: &RemoteFile| {
        std::fs::metadata(cache.blob_path(repo, &f.etag)).is_ok_and(|m| m.len() == f.size)
    };
    let to_fetch: Vec<&RemoteFile> = files.iter().filter(|f| !present(f)).collect();
    let total: u64 = to_fetch.iter().map(|f| f.size).sum();
    let done = Arc::new(AtomicU64::new(0));
    let sha_ref = cache.ref_path(repo, sha);
    let sha_ref_existed = sha_ref.exists();
    let api = hf_hub::api::tokio::ApiBuilder::from_cache(hf_hub::Cache::new(cache.root.clone()))
        .with_endpoint(env.endpoint.clone())
        .with_token(env.token.clone())
        .with_progress(false)
        .with_chunk_size(Some(chunk_bytes.max(1)))
        .build()
        .map_err(|e| NodeError::new(format!("cannot set up the Hub client: {e}")))?;
    let kind = match repo.kind {
        RepoKind::Model => hf_hub::RepoType::Model,
        RepoKind::Dataset => hf_hub::RepoType::Dataset,
    };
    let api_repo = api.repo(hf_hub::Repo::with_revision(
        repo.id.clone(),
        kind,
        sha.to_string(),
    ));
    for file in to_fetch {
        if blob_cached(file) {
            cache.link_snapshot_file(repo, sha, file).map_err(|e| {
                NodeError::new(format!("cannot link {} in the cache: {e}", file.path))
            })?;
            done.fetch_add(file.size, Ordering::Relaxed);
            ctx.log().line(&format!(
                "{}: already in the cache (blob {})",
                file.path, file.etag
            ));
            continue;
        }
        let transfer = Transfer {
            ctx: ctx.clone(),
            file: file.path.clone(),
            size: file.size,
            started: Instant::now(),
            done: done.clone(),
            total,
            file_done: Arc::new(AtomicU64::new(0)),
        };
        api_repo
            .download_with_progress(&file.path, transfer)
            .await
            .map_err(|e| {
                NodeError::new(format!(
                    "downloading {} from {}@{sha} failed: {e}",
                    file.path, repo.id
                ))
            })?;
    }
    if !sha_ref_existed {
        // hf-hub records the revision it was given (here the sha) as a ref; Python does not.
        let _ = std::fs::remove_file(sha_ref);
    }
    Ok(())
}

/// Byte progress of the node's downloads, and one log line per finished file.
#[derive(Clone)]
struct Transfer {
    ctx: NodeContext,
    file: String,
    size: u64,
    started: Instant,
    done: Arc<AtomicU64>,
    total: u64,
    file_done: Arc<AtomicU64>,
}

impl hf_hub::api::tokio::Progress for Transfer {
    async fn init(&mut self, _size: usize, _filename: &str) {
        self.started = Instant::now();
    }

    async fn update(&mut self, size: usize) {
        let done = self.done.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
        self.ctx.progress(done, self.total);
        let file_done = self.file_done.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
        self.ctx.transfer(&self.file, file_done, self.size);
    }

    async fn finish(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        self.ctx.log().line(&format!(
            "{}: {} bytes in {seconds:.1} s ({:.1} MB/s)",
            self.file,
            self.size,
            self.size as f64 / seconds / 1e6
        ));
    }
}

/// A local model directory: the files the allow-list takes, linked (or copied) into the output.
fn copy_local(
    ctx: &NodeContext,
    dir: &Path,
    patterns: &[String],
    out: &Path,
) -> Result<(), NodeError> {
    if !dir.is_dir() {
        return Err(NodeError::new(format!(
            "path `{}` is not a directory",
            dir.display()
        )));
    }
    let set = glob_set(patterns)?;
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(here) = stack.pop() {
        for entry in std::fs::read_dir(&here)? {
            let path = entry?.path();
            let rel = crate::hub::client::relative(dir, &path);
            if path.is_dir() {
                stack.push(path);
            } else if set.is_match(&rel) {
                link_or_copy(&path, &out.join(&rel))?;
                count += 1;
            }
        }
    }
    if count == 0 {
        return Err(NodeError::new(format!(
            "no file under `{}` matches `files` {patterns:?}",
            dir.display()
        )));
    }
    ctx.log()
        .line(&format!("{count} files taken from {}", dir.display()));
    Ok(())
}

/// A hard link to `from` (its final target when it is a symlink) at `to`, or a copy when the two
/// are on different file systems.
pub fn link_or_copy(from: &Path, to: &Path) -> Result<(), NodeError> {
    let source = std::fs::canonicalize(from)
        .map_err(|e| NodeError::new(format!("{}: {e}", from.display())))?;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::hard_link(&source, to).is_err() {
        std::fs::copy(&source, to)
            .map_err(|e| NodeError::new(format!("cannot copy {}: {e}", from.display())))?;
    }
    Ok(())
}
