//! `hub.push`: publishes a model directory with a generated model card, speaking the Hub's HTTP
//! commit protocol as the official Python client does:
//!
//! 1. create the repository if missing (`POST /api/repos/create`; 409 means it exists);
//! 2. `preupload`: the Hub says which files go through LFS and gives the oid of each file it
//!    already has: files whose oid equals ours (git sha1, or sha256 for LFS) are skipped;
//! 3. LFS batch: for each new LFS object, one `PUT` or a multipart upload, then verify;
//! 4. one NDJSON commit naming the parent commit. A commit that fails with 5xx or no answer is
//!    retried only after reading the branch head again: if the head moved and the Hub now holds
//!    our files, the commit landed and is not sent twice.
//!
//! `target: dir` writes the exact files that would be pushed, and touches no network.

use crate::hub::client::{HubClient, HubEnv, HubFailure, RepoId, RepoKind, encode_revision};
use crate::hub::model_card::{self, CardInfo};
use base64::Engine;
use flow_engine::node::{Node, NodeContext, NodeError, OutputSpec, ParamError};
use reqwest::Method;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use sha1::Digest as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The node type.
pub struct HubPush;

/// Where `hub.push` sends the files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PushTarget {
    /// The Hugging Face Hub (or `HF_ENDPOINT`).
    #[default]
    Hub,
    /// No network: the output `repo` holds exactly the files that would be pushed.
    Dir,
}

fn default_revision() -> String {
    "main".into()
}

fn default_message() -> String {
    "Upload model trained with flow".into()
}

fn yes() -> bool {
    true
}

/// Params of `hub.push`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PushParams {
    /// The model directory to publish (full, merged or a PEFT adapter). Exactly one of `model` and `dataset`.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// A preference dataset artifact to publish as a dataset repository (`data/train.jsonl` and a dataset card).
    #[serde(default)]
    pub dataset: Option<PathBuf>,
    /// Target repository (`org/name`).
    pub repo: String,
    /// `hub` or `dir` (write the exact files that would be pushed; no network).
    #[serde(default)]
    pub target: PushTarget,
    /// Create the repository as private (when `create` makes it).
    #[serde(default)]
    pub private: bool,
    /// Branch to commit to.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// The commit's summary line.
    #[serde(default = "default_message")]
    pub commit_message: String,
    /// Hub token with write access, normally `${secret.HF_TOKEN}` (else HF_TOKEN or the token file).
    #[serde(default)]
    pub token: Option<String>,
    /// Create the repository when it does not exist.
    #[serde(default = "yes")]
    pub create: bool,
    /// `metrics` output of `dpo.train` / `sft.train`, for the card's results.
    #[serde(default)]
    pub metrics: Option<PathBuf>,
    /// `report` output of `evaluate` (its `eval.json`), for the card's results.
    #[serde(default)]
    pub eval: Option<PathBuf>,
    /// The base model's Hub id, for the card's `base_model`.
    #[serde(default)]
    pub base_model: Option<String>,
    /// Hub ids of the training datasets, for the card's `datasets`.
    #[serde(default)]
    pub datasets: Vec<String>,
    /// Language codes, for the card's `language`.
    #[serde(default)]
    pub language: Vec<String>,
    /// License id, for the card's `license`.
    #[serde(default)]
    pub license: Option<String>,
    /// Tags beyond `dpo` and `flow`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Attempts for each request that fails with 429, 5xx or no answer.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
}

fn default_attempts() -> u32 {
    5
}

impl PushParams {
    /// A dataset repository when publishing a dataset, else a model repository.
    fn kind(&self) -> RepoKind {
        if self.dataset.is_some() {
            RepoKind::Dataset
        } else {
            RepoKind::Model
        }
    }
}

impl Node for HubPush {
    type Params = PushParams;
    const TYPE: &'static str = "hub.push";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Publishes a model directory (full, merged or PEFT adapter), or a preference dataset as a dataset repository, with a generated card (README.md: front matter, training parameters, final metrics, the workflow and artifact digests) through the Hub's commit protocol: create repo, preupload (unchanged files skipped), LFS batch upload and verify, one NDJSON commit, retried without ever committing twice. `target: dir` writes the exact files that would be pushed instead.";
    const OUTPUTS: &'static [OutputSpec] = &[
        OutputSpec {
            name: "repo",
            description: "the exact files pushed (or that would be): the model files and README.md",
        },
        OutputSpec {
            name: "commit",
            description: "commit.json: target, repo, revision, commit oid and URL, files uploaded and skipped",
        },
    ];

    fn check(params: &PushParams) -> Result<(), ParamError> {
        RepoId::parse(&params.repo, params.kind()).map_err(|e| ParamError::at("repo", e))?;
        match (&params.model, &params.dataset) {
            (Some(_), Some(_)) => {
                return Err(ParamError::at(
                    "dataset",
                    "give either `model` or `dataset`, not both",
                ));
            }
            (None, None) => {
                return Err(ParamError::at(
                    "model",
                    "missing: give the `model` (or `dataset`) to publish",
                ));
            }
            _ => {}
        }
        if params.attempts == 0 {
            return Err(ParamError::at("attempts", "must be at least 1"));
        }
        if params.commit_message.trim().is_empty() {
            return Err(ParamError::at("commit_message", "must not be empty"));
        }
        Ok(())
    }

    async fn run(&self, ctx: NodeContext, params: PushParams) -> Result<(), NodeError> {
        let staged = ctx.output_dir("repo")?.to_path_buf();
        let files = stage(&ctx, &params, &staged)?;
        let record = match params.target {
            PushTarget::Dir => json!({
                "target": "dir",
                "repo": params.repo,
                "revision": params.revision,
                "files": files.iter().map(LocalFile::summary).collect::<Vec<_>>(),
            }),
            PushTarget::Hub => {
                let repo = RepoId::parse(&params.repo, params.kind()).map_err(NodeError::new)?;
                let env = HubEnv::from_env().with_token(params.token.as_deref());
                let pusher = Pusher {
                    ctx: &ctx,
                    client: HubClient::new(env)?,
                    repo,
                    params: &params,
                };
                pusher.push(&files).await?
            }
        };
        let commit = ctx.output_dir("commit")?.join("commit.json");
        std::fs::write(
            commit,
            serde_json::to_string_pretty(&record).unwrap_or_default(),
        )?;
        Ok(())
    }
}

/// One file to push: where it is and the digests the protocol needs.
struct LocalFile {
    path: String,
    source: PathBuf,
    size: u64,
    sha256: String,
    git_sha1: String,
    sample: Vec<u8>,
}

impl LocalFile {
    /// Reads the file once for sha256, git blob sha1 and the 512-byte sample.
    fn read(path: String, source: PathBuf) -> Result<LocalFile, NodeError> {
        let failed = |e: std::io::Error| NodeError::new(format!("{}: {e}", source.display()));
        let mut file = std::fs::File::open(&source).map_err(failed)?;
        let size = file.metadata().map_err(failed)?.len();
        let mut sha256 = sha2::Sha256::new();
        let mut sha1 = sha1::Sha1::new();
        sha1.update(format!("blob {size}\0").as_bytes());
        let mut sample = Vec::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buffer).map_err(failed)?;
            if n == 0 {
                break;
            }
            if sample.len() < 512 {
                let take = (512 - sample.len()).min(n);
                sample.extend_from_slice(&buffer[..take]);
            }
            sha256.update(&buffer[..n]);
            sha1.update(&buffer[..n]);
        }
        Ok(LocalFile {
            path,
            source,
            size,
            sha256: hex(&sha256.finalize()),
            git_sha1: hex(&sha1.finalize()),
            sample,
        })
    }

    fn summary(&self) -> Json {
        json!({"path": self.path, "size": self.size, "sha256": self.sha256})
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The files to publish: `(path in the repository, source file)`.
fn sources(params: &PushParams) -> Result<(PathBuf, Vec<(String, PathBuf)>), NodeError> {
    if let Some(dataset) = &params.dataset {
        let data = crate::preference::data_file(dataset);
        if !data.is_file() {
            return Err(NodeError::new(format!(
                "`dataset` {} is not a preference dataset: no data.jsonl",
                dataset.display()
            )));
        }
        return Ok((dataset.clone(), vec![("data/train.jsonl".into(), data)]));
    }
    let model = params.model.clone().unwrap_or_default();
    if !model.join("config.json").is_file() && !model.join("adapter_config.json").is_file() {
        return Err(NodeError::new(format!(
            "`model` {} is not a model directory: it has neither config.json nor adapter_config.json",
            model.display()
        )));
    }
    let mut files = Vec::new();
    let mut stack = vec![model.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let rel = crate::hub::client::relative(&model, &path);
            if path.is_dir() {
                stack.push(path);
            } else if rel != "README.md" {
                files.push((rel, path));
            }
        }
    }
    Ok((model, files))
}

/// Writes the files to push into `staged` (the sources linked, the card generated) and reads
/// their digests.
fn stage(
    ctx: &NodeContext,
    params: &PushParams,
    staged: &Path,
) -> Result<Vec<LocalFile>, NodeError> {
    let (source_dir, sources) = sources(params)?;
    let mut files = Vec::new();
    for (rel, path) in sources {
        crate::hub::fetch::link_or_copy(&path, &staged.join(&rel))?;
        files.push(LocalFile::read(rel.clone(), staged.join(&rel))?);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let listing: Vec<(String, u64, String)> = files
        .iter()
        .map(|f| (f.path.clone(), f.size, f.sha256.clone()))
        .collect();
    let card = model_card::render(&CardInfo {
        repo: &params.repo,
        dataset: params.dataset.is_some(),
        base_model: params.base_model.as_deref(),
        datasets: &params.datasets,
        languages: &params.language,
        license: params.license.as_deref(),
        tags: &params.tags,
        source_dir: &source_dir,
        metrics: params
            .metrics
            .as_deref()
            .map(|m| m.join("metrics.jsonl"))
            .as_deref(),
        eval: params.eval.as_deref(),
        lineage: ctx.lineage(),
        files: &listing,
    });
    let card_path = staged.join("README.md");
    std::fs::write(&card_path, card)?;
    files.push(LocalFile::read("README.md".into(), card_path)?);
    Ok(files)
}

/// What `preupload` said about one file.
#[derive(Deserialize)]
struct UploadMode {
    path: String,
    #[serde(rename = "uploadMode")]
    upload_mode: String,
    #[serde(rename = "shouldIgnore", default)]
    should_ignore: bool,
    #[serde(default)]
    oid: Option<String>,
}

#[derive(Deserialize)]
struct PreuploadAnswer {
    files: Vec<UploadMode>,
}

/// A file the commit will carry and how.
struct Change<'a> {
    file: &'a LocalFile,
    lfs: bool,
}

struct Pusher<'a> {
    ctx: &'a NodeContext,
    client: HubClient,
    repo: RepoId,
    params: &'a PushParams,
}

impl Pusher<'_> {
    async fn push(&self, files: &[LocalFile]) -> Result<Json, NodeError> {
        if self.client.env.token.is_none() {
            return Err(NodeError::new(
                "hub.push needs a token with write access: set `token: ${secret.HF_TOKEN}` (or HF_TOKEN)",
            ));
        }
        if self.params.create {
            self.create_repo().await?;
        }
        let head = self.head().await?;
        let changes = self.preupload(&files.iter().collect::<Vec<_>>()).await?;
        let unchanged: Vec<&str> = files
            .iter()
            .filter(|f| !changes.iter().any(|c| c.file.path == f.path))
            .map(|f| f.path.as_str())
            .collect();
        let log = self.ctx.log();
        log.line(&format!(
            "{} files to commit, {} unchanged on the Hub",
            changes.len(),
            unchanged.len()
        ));
        let commit = if changes.is_empty() {
            json!({"commitOid": head, "commitUrl": Json::Null})
        } else {
            for change in changes.iter().filter(|c| c.lfs) {
                self.upload_lfs(change.file).await?;
            }
            self.commit(&changes, head).await?
        };
        Ok(json!({
            "target": "hub",
            "endpoint": self.client.env.endpoint,
            "repo": self.repo.id,
            "revision": self.params.revision,
            "commit_oid": commit["commitOid"],
            "commit_url": commit["commitUrl"],
            "uploaded": changes.iter().map(|c| c.file.path.as_str()).collect::<Vec<_>>(),
            "unchanged": unchanged,
            "files": files.iter().map(LocalFile::summary).collect::<Vec<_>>(),
        }))
    }

    /// Sends a request built by `build`, retrying 429, 5xx and transport failures with backoff.
    async fn send_retrying(
        &self,
        what: &str,
        build: impl Fn() -> Result<reqwest::RequestBuilder, NodeError>,
    ) -> Result<reqwest::Response, HubFailure> {
        let mut attempt = 1;
        loop {
            let request = build().map_err(|e| HubFailure::Transport(e.message))?;
            match self
                .client
                .send(request, &self.repo, Some(&self.params.revision))
                .await
            {
                Err(failure) if failure.is_transient() && attempt < self.params.attempts => {
                    self.ctx.log().line(&format!(
                        "{what}: attempt {attempt} failed ({}), retrying",
                        failure_text(&failure)
                    ));
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn create_repo(&self) -> Result<(), NodeError> {
        let (organization, name) = match self.repo.id.split_once('/') {
            Some((org, name)) => (Some(org), name),
            None => (None, self.repo.id.as_str()),
        };
        let mut body = json!({"name": name, "private": self.params.private});
        if let Some(org) = organization {
            body["organization"] = json!(org);
        }
        if self.repo.kind != RepoKind::Model {
            body["type"] = json!(self.repo.type_name());
        }
        let result = self
            .send_retrying("create repo", || {
                Ok(self
                    .client
                    .request(Method::POST, "/api/repos/create")
                    .json(&body))
            })
            .await;
        match result {
            Ok(_) => {
                self.ctx
                    .log()
                    .line(&format!("created repository {}", self.repo.id));
                Ok(())
            }
            Err(failure) if failure.status() == Some(409) => Ok(()),
            Err(failure) => Err(failure.into_error()),
        }
    }

    /// The commit the branch points at now.
    async fn head(&self) -> Result<String, NodeError> {
        Ok(self
            .client
            .snapshot(&self.repo, &self.params.revision)
            .await?
            .sha)
    }

    /// Asks which files go through LFS and which the Hub already has; returns the changes.
    async fn preupload<'f>(&self, files: &[&'f LocalFile]) -> Result<Vec<Change<'f>>, NodeError> {
        let path = format!(
            "/api/{}/preupload/{}",
            self.repo.api_path(),
            encode_revision(&self.params.revision)
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut changes = Vec::new();
        // The Hub accepts up to 256 files per preupload call.
        for batch in files.chunks(256) {
            let body = json!({"files": batch.iter().map(|f| json!({
                "path": f.path,
                "sample": b64.encode(&f.sample),
                "size": f.size,
                "sha": f.sha256,
            })).collect::<Vec<_>>()});
            let answer: PreuploadAnswer = self
                .send_retrying("preupload", || {
                    Ok(self.client.request(Method::POST, &path).json(&body))
                })
                .await
                .map_err(HubFailure::into_error)?
                .json()
                .await
                .map_err(|e| {
                    NodeError::new(format!("preupload answer is not the expected JSON: {e}"))
                })?;
            for &file in batch {
                let mode = answer
                    .files
                    .iter()
                    .find(|m| m.path == file.path)
                    .ok_or_else(|| {
                        NodeError::new(format!("preupload answer does not mention {}", file.path))
                    })?;
                let lfs = mode.upload_mode == "lfs";
                let ours = if lfs { &file.sha256 } else { &file.git_sha1 };
                if mode.should_ignore {
                    self.ctx
                        .log()
                        .line(&format!("{}: ignored by the repo's .gitignore", file.path));
                } else if mode.oid.as_deref() != Some(ours.as_str()) {
                    changes.push(Change { file, lfs });
                }
            }
        }
        Ok(changes)
    }

    /// Uploads one LFS object unless the Hub has it: batch, `PUT` (or multipart), verify.
    async fn upload_lfs(&self, file: &LocalFile) -> Result<(), NodeError> {
        let url = format!(
            "{}/{}.git/info/lfs/objects/batch",
            self.client.env.endpoint,
            self.repo.url_path()
        );
        let body = json!({
            "operation": "upload",
            "transfers": ["basic", "multipart"],
            "objects": [{"oid": file.sha256, "size": file.size}],
            "hash_algo": "sha256",
            "ref": {"name": self.params.revision},
        });
        let answer: Json = self
            .send_retrying("LFS batch", || {
                Ok(self
                    .client
                    .request_url(Method::POST, &url)
                    .header("Accept", "application/vnd.git-lfs+json")
                    .header("Content-Type", "application/vnd.git-lfs+json")
                    .body(body.to_string()))
            })
            .await
            .map_err(HubFailure::into_error)?
            .json()
            .await
            .map_err(|e| NodeError::new(format!("LFS batch answer is not JSON: {e}")))?;
        let object = &answer["objects"][0];
        if let Some(error) = object.get("error") {
            return Err(NodeError::new(format!(
                "the Hub refused LFS object {} ({}): {}",
                file.path, error["code"], error["message"]
            )));
        }
        let Some(upload) = object["actions"].get("upload") else {
            self.ctx
                .log()
                .line(&format!("{}: LFS object already on the Hub", file.path));
            return Ok(());
        };
        if answer["transfer"] == "multipart" {
            self.upload_multipart(file, upload).await?;
        } else {
            self.upload_basic(file, upload).await?;
        }
        if let Some(verify) = object["actions"].get("verify") {
            let href = verify["href"].as_str().unwrap_or_default().to_string();
            let payload = json!({"oid": file.sha256, "size": file.size});
            self.send_retrying("LFS verify", || {
                Ok(
                    with_headers(self.client.request_url(Method::POST, &href), verify)
                        .json(&payload),
                )
            })
            .await
            .map_err(HubFailure::into_error)?;
        }
        self.ctx.log().line(&format!(
            "{}: uploaded {} bytes (LFS)",
            file.path, file.size
        ));
        Ok(())
    }

    async fn upload_basic(&self, file: &LocalFile, action: &Json) -> Result<(), NodeError> {
        let href = action["href"].as_str().unwrap_or_default().to_string();
        self.send_retrying("LFS upload", || {
            let opened = std::fs::File::open(&file.source)
                .map_err(|e| NodeError::new(format!("{}: {e}", file.source.display())))?;
            let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(opened));
            Ok(
                with_headers(self.client.request_anonymous(Method::PUT, &href), action)
                    .header(reqwest::header::CONTENT_LENGTH, file.size)
                    .body(reqwest::Body::wrap_stream(stream)),
            )
        })
        .await
        .map_err(HubFailure::into_error)?;
        Ok(())
    }

    /// S3-style multipart: the action's header names `chunk_size` and one URL per part
    /// (`00001`, …); each part's ETag goes into the completion request.
    async fn upload_multipart(&self, file: &LocalFile, action: &Json) -> Result<(), NodeError> {
        let header = action["header"].as_object().cloned().unwrap_or_default();
        let chunk_size = header
            .get("chunk_size")
            .and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_u64()))
            .ok_or_else(|| NodeError::new("multipart LFS upload without chunk_size"))?;
        let mut parts: Vec<(u32, String)> = header
            .iter()
            .filter_map(|(k, v)| Some((k.parse::<u32>().ok()?, v.as_str()?.to_string())))
            .collect();
        parts.sort();
        let mut etags = Vec::new();
        for (number, url) in &parts {
            let offset = u64::from(number - 1) * chunk_size;
            let length = chunk_size.min(file.size.saturating_sub(offset));
            let response = self
                .send_retrying("LFS part upload", || {
                    Ok(self
                        .client
                        .request_anonymous(Method::PUT, url)
                        .body(file_part(&file.source, offset, length)?))
                })
                .await
                .map_err(HubFailure::into_error)?;
            let etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    NodeError::new(format!("part {number} of {} got no ETag", file.path))
                })?;
            etags.push(json!({"partNumber": number, "etag": etag}));
        }
        let href = action["href"].as_str().unwrap_or_default().to_string();
        let completion = json!({"oid": file.sha256, "parts": etags});
        self.send_retrying("LFS multipart completion", || {
            Ok(self
                .client
                .request_anonymous(Method::POST, &href)
                .header("Accept", "application/vnd.git-lfs+json")
                .header("Content-Type", "application/vnd.git-lfs+json")
                .body(completion.to_string()))
        })
        .await
        .map_err(HubFailure::into_error)?;
        Ok(())
    }

    /// The NDJSON commit; before each retry the branch head is read again so that a commit that
    /// landed although its answer was lost is never sent twice.
    async fn commit(&self, changes: &[Change<'_>], mut parent: String) -> Result<Json, NodeError> {
        let path = format!(
            "/api/{}/commit/{}",
            self.repo.api_path(),
            encode_revision(&self.params.revision)
        );
        let mut attempt = 1;
        loop {
            let body = commit_body(&self.params.commit_message, &parent, changes)?;
            let request = self
                .client
                .request(Method::POST, &path)
                .header("Content-Type", "application/x-ndjson")
                .body(body);
            match self
                .client
                .send(request, &self.repo, Some(&self.params.revision))
                .await
            {
                Ok(response) => {
                    let answer: Json = response
                        .json()
                        .await
                        .map_err(|e| NodeError::new(format!("commit answer is not JSON: {e}")))?;
                    self.ctx
                        .log()
                        .line(&format!("committed {}", answer["commitOid"]));
                    return Ok(answer);
                }
                Err(failure) if failure.is_transient() && attempt < self.params.attempts => {
                    self.ctx.log().line(&format!(
                        "commit: attempt {attempt} failed ({}); checking the branch head before retrying",
                        failure_text(&failure)
                    ));
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    let head = self.head().await?;
                    if head != parent && self.holds(changes).await? {
                        self.ctx.log().line(&format!(
                            "the commit landed as {head} although its answer was lost; not sending it again"
                        ));
                        return Ok(json!({"commitOid": head, "commitUrl": Json::Null}));
                    }
                    parent = head;
                }
                Err(failure) => return Err(failure.into_error()),
            }
        }
    }

    /// Whether the branch now holds every changed file with our content.
    async fn holds(&self, changes: &[Change<'_>]) -> Result<bool, NodeError> {
        let files: Vec<&LocalFile> = changes.iter().map(|c| c.file).collect();
        Ok(self.preupload(&files).await?.is_empty())
    }
}

/// The commit's NDJSON: a header naming the parent, then one line per file.
fn commit_body(message: &str, parent: &str, changes: &[Change]) -> Result<String, NodeError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut lines = vec![json!({"key": "header", "value": {
        "summary": message,
        "description": "",
        "parentCommit": parent,
    }})];
    for change in changes {
        let file = change.file;
        lines.push(if change.lfs {
            json!({"key": "lfsFile", "value": {"path": file.path, "algo": "sha256", "oid": file.sha256}})
        } else {
            let content = std::fs::read(&file.source)?;
            json!({"key": "file", "value": {"content": b64.encode(content), "path": file.path, "encoding": "base64"}})
        });
    }
    Ok(lines.iter().map(|l| format!("{l}\n")).collect())
}

/// Adds an LFS action's `header` map (string values only: `chunk_size` and part URLs are not headers).
fn with_headers(mut request: reqwest::RequestBuilder, action: &Json) -> reqwest::RequestBuilder {
    if let Some(headers) = action["header"].as_object() {
        for (name, value) in headers {
            if let (Some(value), false) = (
                value.as_str(),
                name == "chunk_size" || name.parse::<u32>().is_ok(),
            ) {
                request = request.header(name, value);
            }
        }
    }
    request
}

/// `length` bytes of a file from `offset`.
fn file_part(path: &Path, offset: u64, length: u64) -> Result<Vec<u8>, NodeError> {
    let failed = |e: std::io::Error| NodeError::new(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(failed)?;
    file.seek(SeekFrom::Start(offset)).map_err(failed)?;
    let mut buffer = Vec::with_capacity(length as usize);
    file.take(length).read_to_end(&mut buffer).map_err(failed)?;
    Ok(buffer)
}

fn failure_text(failure: &HubFailure) -> String {
    match failure {
        HubFailure::Transport(m) => m.clone(),
        HubFailure::Transient { status, .. } | HubFailure::Rejected { status, .. } => {
            format!("HTTP {status}")
        }
    }
}

/// 0.5 s, 1 s, 2 s, … capped at 30 s, with jitter.
fn backoff(attempt: u32) -> Duration {
    flow_engine::exec::backoff_delay(Duration::from_millis(500), attempt, Duration::from_secs(30))
}
