//! The Hugging Face Hub as flow's Hub nodes see it: where it is (the `HF_*` variables, resolved
//! here as `huggingface_hub`'s `constants.py` does, so flow does not depend on how a client crate
//! reads them), the standard cache layout shared with the Python tools, and an HTTP client whose
//! errors say whether a repository is gated, private or missing.
//!
//! ```text
//! $HF_HUB_CACHE/models--org--name/
//!   refs/main                 the commit sha the branch pointed at when last resolved
//!   blobs/<etag>              file contents, named by etag (sha256 for LFS files, git sha1 otherwise)
//!   snapshots/<sha>/<path>    relative symlinks into blobs/
//! ```

use flow_engine::node::NodeError;
use serde::Deserialize;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the Hub is and how to reach it, from the environment.
#[derive(Clone, Debug)]
pub struct HubEnv {
    /// `HF_ENDPOINT` (default `https://huggingface.co`), without a trailing `/`.
    pub endpoint: String,
    /// `HF_HUB_CACHE` (default `$HF_HOME/hub`).
    pub cache: PathBuf,
    /// `HF_TOKEN`, else the token file `$HF_HOME/token` (`HF_TOKEN_PATH`).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE` is set to a true value (`1`, `true`, `yes`, `on`).
    pub offline: bool,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn truthy(value: Option<String>) -> bool {
    value.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

impl HubEnv {
    /// Reads `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_TOKEN_PATH` and
    /// `HF_HUB_OFFLINE` with huggingface_hub's defaults.
    pub fn from_env() -> HubEnv {
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("token"));
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(token_file)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        HubEnv {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            cache,
            token,
            offline: truthy(var("HF_HUB_OFFLINE")),
        }
    }

    /// The same environment with an explicit token (a node's `token` param) when given.
    pub fn with_token(mut self, token: Option<&str>) -> HubEnv {
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            self.token = Some(token.to_string());
        }
        self
    }
}

/// A Hub repository id (`org/name` or `name`) and its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoId {
    /// `org/name`.
    pub id: String,
    /// Model or dataset.
    pub kind: RepoKind,
}

/// The kinds of repository flow reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoKind {
    /// A model repository.
    Model,
    /// A dataset repository.
    Dataset,
}

impl RepoId {
    /// Checks the id's shape (`org/name` or `name`, letters, digits, `-`, `_`, `.`).
    pub fn parse(id: &str, kind: RepoKind) -> Result<RepoId, String> {
        let parts: Vec<&str> = id.split('/').collect();
        let valid_part = |p: &&str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if parts.len() > 2 || !parts.iter().all(valid_part) {
            return Err(format!(
                "invalid repository id `{id}`: expected `org/name` (letters, digits, `-`, `_`, `.`)"
            ));
        }
        Ok(RepoId {
            id: id.to_string(),
            kind,
        })
    }

    fn plural(&self) -> &'static str {
        match self.kind {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }

    /// The cache folder name: `models--org--name`.
    pub fn folder_name(&self) -> String {
        format!("{}--{}", self.plural(), self.id.replace('/', "--"))
    }

    /// `models/org/name`, as in `/api/models/org/name/…`.
    pub fn api_path(&self) -> String {
        format!("{}/{}", self.plural(), self.id)
    }

    /// `org/name` for models, `datasets/org/name` for datasets, as in `/…/resolve/…` URLs.
    pub fn url_path(&self) -> String {
        match self.kind {
            RepoKind::Model => self.id.clone(),
            RepoKind::Dataset => format!("datasets/{}", self.id),
        }
    }

    /// `model` or `dataset`, as the create-repo API spells it.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        }
    }
}

/// Whether `revision` is a full commit sha.
pub fn is_commit_sha(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// One file of a repository at a commit.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteFile {
    /// Path in the repository.
    pub path: String,
    /// The Hub's etag: the sha256 of LFS files, the git blob sha1 of the others.
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
}

/// A repository at a commit: its sha and files.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The commit sha the revision resolved to.
    pub sha: String,
    /// Every file, sorted by path.
    pub files: Vec<RemoteFile>,
}

#[derive(Deserialize)]
struct RevisionInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(rename = "blobId", default)]
    blob_id: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<LfsInfo>,
}

#[derive(Deserialize)]
struct LfsInfo {
    sha256: String,
    size: u64,
}

impl From<Sibling> for RemoteFile {
    fn from(s: Sibling) -> RemoteFile {
        match s.lfs {
            Some(lfs) => RemoteFile {
                path: s.rfilename,
                etag: lfs.sha256,
                size: lfs.size,
            },
            None => RemoteFile {
                path: s.rfilename,
                etag: s.blob_id.unwrap_or_default(),
                size: s.size.unwrap_or_default(),
            },
        }
    }
}

/// An HTTP client for the Hub API with the token attached; never puts the token in a message.
#[derive(Clone)]
pub struct HubClient {
    /// The environment it was made from.
    pub env: HubEnv,
    http: reqwest::Client,
}

/// Turns a transport error into a message (reqwest names the URL, never headers).
pub fn transport_error(e: reqwest::Error) -> NodeError {
    NodeError::new(format!(
        "cannot reach the Hub: {}",
        crate::chat_client::error_chain(&e)
    ))
}

impl HubClient {
    /// A client for `env` (fails only when the TLS backend cannot start).
    pub fn new(env: HubEnv) -> Result<HubClient, NodeError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("flow/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(20))
            .build()
            .map_err(transport_error)?;
        Ok(HubClient { env, http })
    }

    /// A request to `{endpoint}{path}` with the token, when there is one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request_url(method, &format!("{}{path}", self.env.endpoint))
    }

    /// A request to a full URL with the token, when there is one.
    pub fn request_url(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.env.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// A plain request, without the token (for pre-signed URLs such as LFS upload targets).
    pub fn request_anonymous(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, url)
    }

    /// Sends a request; a non-2xx answer becomes an error that explains itself for `repo`.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        repo: &RepoId,
        revision: Option<&str>,
    ) -> Result<reqwest::Response, HubFailure> {
        let response = request
            .send()
            .await
            .map_err(|e| HubFailure::Transport(transport_error(e).message))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.explain(response, repo, revision).await)
    }

    /// Resolves `revision` (branch, tag or sha) to a commit and lists its files.
    pub async fn snapshot(&self, repo: &RepoId, revision: &str) -> Result<Snapshot, NodeError> {
        let path = format!(
            "/api/{}/revision/{}?blobs=true",
            repo.api_path(),
            encode_revision(revision)
        );
        let request = self.request(reqwest::Method::GET, &path);
        let response = self
            .send(request, repo, Some(revision))
            .await
            .map_err(HubFailure::into_error)?;
        let info: RevisionInfo = response.json().await.map_err(|e| {
            NodeError::new(format!(
                "the Hub's answer for {} at `{revision}` is not the expected JSON: {e}",
                repo.id
            ))
        })?;
        let mut files: Vec<RemoteFile> = info.siblings.into_iter().map(Into::into).collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Snapshot {
            sha: info.sha,
            files,
        })
    }

    async fn explain(
        &self,
        response: reqwest::Response,
        repo: &RepoId,
        revision: Option<&str>,
    ) -> HubFailure {
        let status = response.status().as_u16();
        let code = header(&response, "x-error-code");
        let detail = header(&response, "x-error-message")
            .unwrap_or_else(|| String::new() + &response.status().to_string());
        let message = describe_status(status, code.as_deref(), &detail, repo, revision, &self.env);
        if status >= 500 || status == 429 {
            HubFailure::Transient { status, message }
        } else {
            HubFailure::Rejected { status, message }
        }
    }
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The message for a refused Hub request, from its status and `X-Error-Code`.
fn describe_status(
    status: u16,
    code: Option<&str>,
    detail: &str,
    repo: &RepoId,
    revision: Option<&str>,
    env: &HubEnv,
) -> String {
    let id = &repo.id;
    let page = format!("{}/{}", env.endpoint, repo.url_path());
    let with_token = if env.token.is_some() {
        "the token given has no access to it"
    } else {
        "no token was given (set HF_TOKEN or the node's `token`)"
    };
    match (status, code) {
        (_, Some("GatedRepo")) => format!(
            "{id} is a gated repository: accept its conditions at {page} with your account, then give that account's token (HF_TOKEN); {with_token}"
        ),
        (_, Some("RevisionNotFound")) => format!(
            "revision `{}` does not exist in {id}",
            revision.unwrap_or("?")
        ),
        (_, Some("EntryNotFound")) => format!("a file asked for does not exist in {id}: {detail}"),
        (401 | 404, Some("RepoNotFound")) | (404, None) => format!(
            "repository {id} not found at {}: it does not exist, or it is private and {with_token}",
            env.endpoint
        ),
        (401, _) => format!("the Hub refused the token for {id} (401): {with_token}"),
        (403, _) => {
            format!("{id} is private or restricted and {with_token} (403 Forbidden: {detail})")
        }
        _ => format!("the Hub answered {status} for {id}: {detail}"),
    }
}

/// A failed Hub request: transient (worth a retry) or final.
#[derive(Debug)]
pub enum HubFailure {
    /// No answer (connection refused, reset, timed out).
    Transport(String),
    /// 429 or 5xx.
    Transient {
        /// HTTP status.
        status: u16,
        /// What it means.
        message: String,
    },
    /// Any other refusal (4xx).
    Rejected {
        /// HTTP status.
        status: u16,
        /// What it means.
        message: String,
    },
}

impl HubFailure {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, HubFailure::Rejected { .. })
    }

    /// The HTTP status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            HubFailure::Transport(_) => None,
            HubFailure::Transient { status, .. } | HubFailure::Rejected { status, .. } => {
                Some(*status)
            }
        }
    }

    /// The failure as a node error.
    pub fn into_error(self) -> NodeError {
        match self {
            HubFailure::Transport(m)
            | HubFailure::Transient { message: m, .. }
            | HubFailure::Rejected { message: m, .. } => NodeError::new(m),
        }
    }
}

/// A revision as it goes into a URL path (`/` in branch names escaped, as the Hub expects).
pub fn encode_revision(revision: &str) -> String {
    revision.replace('/', "%2F")
}

/// The Hugging Face cache directory (`HF_HUB_CACHE`) and its layout.
#[derive(Clone, Debug)]
pub struct HfCache {
    /// The cache root.
    pub root: PathBuf,
}

impl HfCache {
    /// `models--org--name` under the root.
    pub fn repo_dir(&self, repo: &RepoId) -> PathBuf {
        self.root.join(repo.folder_name())
    }

    /// `refs/<revision>`.
    pub fn ref_path(&self, repo: &RepoId, revision: &str) -> PathBuf {
        self.repo_dir(repo).join("refs").join(revision)
    }

    /// The commit a branch or tag pointed at when last resolved, or the sha itself.
    pub fn resolve_offline(&self, repo: &RepoId, revision: &str) -> Option<String> {
        if is_commit_sha(revision) {
            return Some(revision.to_string());
        }
        std::fs::read_to_string(self.ref_path(repo, revision))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Records that `revision` points at `sha` (as Python's client does; not for a sha itself).
    pub fn write_ref(&self, repo: &RepoId, revision: &str, sha: &str) -> std::io::Result<()> {
        if is_commit_sha(revision) {
            return Ok(());
        }
        let path = self.ref_path(repo, revision);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("flow-tmp");
        std::fs::write(&tmp, sha)?;
        std::fs::rename(tmp, path)
    }

    /// `snapshots/<sha>`.
    pub fn snapshot_dir(&self, repo: &RepoId, sha: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(sha)
    }

    /// `blobs/<etag>`.
    pub fn blob_path(&self, repo: &RepoId, etag: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(etag)
    }

    /// The files of a cached snapshot, their etags read from the blob names they link to.
    pub fn cached_snapshot(&self, repo: &RepoId, sha: &str) -> Option<Snapshot> {
        let root = self.snapshot_dir(repo, sha);
        if !root.is_dir() {
            return None;
        }
        let mut files = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).ok()?.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(meta) = std::fs::metadata(&path) {
                    let etag = std::fs::read_link(&path)
                        .ok()
                        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().to_string()))
                        .unwrap_or_default();
                    files.push(RemoteFile {
                        path: relative(&root, &path),
                        etag,
                        size: meta.len(),
                    });
                }
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Some(Snapshot {
            sha: sha.to_string(),
            files,
        })
    }

    /// Points `snapshots/<sha>/<path>` at an existing `blobs/<etag>` (relative link, as Python).
    pub fn link_snapshot_file(
        &self,
        repo: &RepoId,
        sha: &str,
        file: &RemoteFile,
    ) -> std::io::Result<PathBuf> {
        let pointer = self.snapshot_dir(repo, sha).join(&file.path);
        if let Some(parent) = pointer.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let depth = file.path.matches('/').count() + 2;
        let target = std::iter::repeat_n("..", depth)
            .collect::<PathBuf>()
            .join("blobs")
            .join(&file.etag);
        if std::fs::symlink_metadata(&pointer).is_ok() {
            std::fs::remove_file(&pointer)?;
        }
        std::os::unix::fs::symlink(target, &pointer)?;
        Ok(pointer)
    }
}

/// `path` relative to `root`, `/`-separated.
pub fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// Runs a future to completion on a private runtime on its own thread, so that synchronous code
/// (a node's `remote_state`, called by the planner) can make a Hub request from anywhere,
/// including from inside the executor's runtime.
pub fn block_on<F>(future: F) -> Result<F::Output, String>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| rt.block_on(future))
                    .map_err(|e| format!("cannot start a runtime: {e}"))
            })
            .join()
            .map_err(|_| "the lookup thread panicked".to_string())?
    })
}
