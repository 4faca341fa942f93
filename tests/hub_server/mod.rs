//! A Hugging Face Hub on loopback for the Hub node tests (axum): the subset of the API that
//! `hub.fetch_model` and `hub.push` use, backed by memory, with request counting and injected
//! failures.
//!
//! Implemented: `GET /api/models/{id}/revision/{rev}` (sha + siblings with blob ids and LFS
//! info), `GET /{id}/resolve/{rev}/{path}` (Range, `X-Repo-Commit`, `ETag` / `X-Linked-Etag`,
//! `Content-Range`), `POST /api/repos/create`, `POST /api/models/{id}/preupload/{rev}`,
//! `POST /{id}.git/info/lfs/objects/batch`, `PUT /lfs/{oid}`, `POST /lfs/{oid}/verify`,
//! `POST /api/models/{id}/commit/{rev}` (NDJSON, parent checked). Private repos answer 401
//! `RepoNotFound` without the token, gated ones 403 `GatedRepo`.

#![allow(dead_code)]

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One commit: the whole tree at that point.
#[derive(Clone, Debug)]
pub struct Commit {
    pub oid: String,
    pub parent: Option<String>,
    pub summary: String,
    pub files: BTreeMap<String, Vec<u8>>,
}

/// A repository.
#[derive(Clone, Debug, Default)]
pub struct Repo {
    pub private: bool,
    pub gated: bool,
    pub commits: Vec<Commit>,
    pub branches: BTreeMap<String, String>,
}

impl Repo {
    pub fn head(&self, revision: &str) -> Option<&Commit> {
        let oid = self
            .branches
            .get(revision)
            .cloned()
            .unwrap_or_else(|| revision.to_string());
        self.commits.iter().find(|c| c.oid == oid)
    }
}

/// Everything the server holds and saw.
#[derive(Debug, Default)]
pub struct State {
    pub repos: BTreeMap<String, Repo>,
    /// LFS objects by sha256.
    pub lfs: BTreeMap<String, Vec<u8>>,
    /// `METHOD path` of every request.
    pub requests: Vec<String>,
    /// Every `Authorization` header value received.
    pub authorizations: Vec<String>,
    /// The next this many commits are applied but answered with 500 (a lost answer).
    pub fail_commits_after_applying: usize,
    /// The token that grants access.
    pub token: String,
    /// LFS objects at least this large are uploaded in parts of `MULTIPART_CHUNK` bytes.
    pub multipart_threshold: usize,
    /// The next file request whose range starts at or after this offset fails with 500 (once).
    pub fail_range_from: Option<usize>,
    /// `path range` of every ranged file request.
    pub ranges: Vec<String>,
    /// Parts received for multipart uploads: oid → part number → bytes.
    pub parts: BTreeMap<String, BTreeMap<u32, Vec<u8>>>,
    /// After the next revision lookup of `(repo, branch)`, a push of these files lands on it
    /// (someone pushes while flow runs).
    pub push_after_lookup: Option<(String, String, BTreeMap<String, Vec<u8>>)>,
    commit_counter: u64,
}

/// Part size of multipart LFS uploads.
pub const MULTIPART_CHUNK: usize = 100_000;

pub fn sha256(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// The git blob id of `bytes`: sha1 of `blob {len}\0` and the content.
pub fn git_sha1(bytes: &[u8]) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
    hasher.update(bytes);
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the server stores `path` through LFS (as `.gitattributes` would say).
pub fn is_lfs(path: &str, size: usize) -> bool {
    path.ends_with(".safetensors") || size > 10_000
}

/// The oid the Hub reports for a file: sha256 for LFS files, the blob id otherwise.
pub fn oid(path: &str, content: &[u8]) -> String {
    if is_lfs(path, content.len()) {
        sha256(content)
    } else {
        git_sha1(content)
    }
}

impl State {
    /// Adds a repository with one commit holding `files`; returns the commit oid. Dataset
    /// repositories are named `datasets/org/name`.
    pub fn add_repo(&mut self, id: &str, files: BTreeMap<String, Vec<u8>>) -> String {
        self.repos.entry(id.to_string()).or_default();
        self.commit(id, "main", "initial commit", files)
    }

    /// Commits a new tree to `branch`; returns the oid.
    pub fn commit(
        &mut self,
        id: &str,
        branch: &str,
        summary: &str,
        files: BTreeMap<String, Vec<u8>>,
    ) -> String {
        self.commit_counter += 1;
        let oid = sha256(format!("{id}{branch}{summary}{}", self.commit_counter).as_bytes())[..40]
            .to_string();
        let repo = self.repos.get_mut(id).expect("repo");
        let parent = repo.branches.get(branch).cloned();
        repo.commits.push(Commit {
            oid: oid.clone(),
            parent,
            summary: summary.to_string(),
            files,
        });
        repo.branches.insert(branch.to_string(), oid.clone());
        oid
    }

    /// Commits on `id` other than the initial one.
    pub fn commit_count(&self, id: &str) -> usize {
        self.repos.get(id).map_or(0, |r| r.commits.len())
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.requests
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }
}

/// A running server; stops when dropped.
pub struct HubServer {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    _server: crate::support::Loopback,
}

impl HubServer {
    pub fn start(token: &str) -> HubServer {
        let state = Arc::new(Mutex::new(State {
            token: token.to_string(),
            multipart_threshold: 200_000,
            ..State::default()
        }));
        let shared = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = shared.clone();
                async move { handle(&state, method, uri, headers, body) }
            },
        );
        let server = crate::support::Loopback::serve(app);
        HubServer {
            url: server.url.clone(),
            state,
            _server: server,
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state")
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [
            ("x-error-code", code.to_string()),
            ("x-error-message", message.to_string()),
        ],
        json!({"error": message}).to_string(),
    )
        .into_response()
}

/// The state key of a repository: `org/name` for models, `datasets/org/name` for datasets.
fn repo_key(kind: &str, org: &str, name: &str) -> String {
    if kind == "datasets" {
        format!("datasets/{org}/{name}")
    } else {
        format!("{org}/{name}")
    }
}

fn json_response(value: Value) -> Response {
    ([("content-type", "application/json")], value.to_string()).into_response()
}

fn decode(segment: &str) -> String {
    segment.replace("%2F", "/").replace("%2f", "/")
}

fn handle(
    state: &Arc<Mutex<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().expect("state");
    let path = uri.path().to_string();
    state.requests.push(format!("{method} {path}"));
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(auth) = &auth {
        state.authorizations.push(auth.clone());
    }
    let authorized = auth.as_deref() == Some(&format!("Bearer {}", state.token));
    if let Some(range) = headers.get("range").and_then(|v| v.to_str().ok()) {
        state.ranges.push(format!("{path} {range}"));
        let start: usize = range
            .trim_start_matches("bytes=")
            .split('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if state.fail_range_from.is_some_and(|from| start >= from) {
            state.fail_range_from = None;
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal",
                "connection lost",
            );
        }
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["api", "repos", "create"]) => create_repo(&mut state, authorized, &body),
        (
            "GET",
            [
                "api",
                kind @ ("models" | "datasets"),
                org,
                name,
                "revision",
                rev @ ..,
            ],
        ) => {
            let id = repo_key(kind, org, name);
            let rev = decode(&rev.join("/"));
            let answer = with_repo(&state, &id, authorized, |repo| revision(repo, &rev));
            if let Some((repo, branch, files)) = state.push_after_lookup.take() {
                if repo == id && branch == rev {
                    state.commit(&id, &rev, "pushed meanwhile", files);
                } else {
                    state.push_after_lookup = Some((repo, branch, files));
                }
            }
            answer
        }
        ("GET", ["datasets", org, name, "resolve", rev, file @ ..]) => {
            let id = repo_key("datasets", org, name);
            with_repo(&state, &id, authorized, |repo| {
                resolve(repo, rev, file, &headers)
            })
        }
        (
            "POST",
            [
                "api",
                kind @ ("models" | "datasets"),
                org,
                name,
                "preupload",
                rev,
            ],
        ) => {
            let id = repo_key(kind, org, name);
            if !authorized {
                return error(StatusCode::UNAUTHORIZED, "RepoNotFound", "token required");
            }
            with_repo(&state, &id, authorized, |repo| {
                preupload(repo, &decode(rev), &body)
            })
        }
        (
            "POST",
            [
                "api",
                kind @ ("models" | "datasets"),
                org,
                name,
                "commit",
                rev,
            ],
        ) => {
            let id = repo_key(kind, org, name);
            if !authorized {
                return error(StatusCode::UNAUTHORIZED, "RepoNotFound", "token required");
            }
            commit(&mut state, &id, &decode(rev), &body)
        }
        ("POST", [org, name_git, "info", "lfs", "objects", "batch"])
        | ("POST", ["datasets", org, name_git, "info", "lfs", "objects", "batch"]) => {
            if !authorized {
                return error(StatusCode::UNAUTHORIZED, "RepoNotFound", "token required");
            }
            let _ = (org, name_git);
            let host = headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1");
            lfs_batch(&state, &format!("http://{host}"), &body)
        }
        ("PUT", ["lfs", oid]) => {
            if sha256(&body) != *oid {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadOid",
                    "content does not match oid",
                );
            }
            state.lfs.insert(oid.to_string(), body.to_vec());
            StatusCode::OK.into_response()
        }
        ("PUT", ["lfs", oid, "part", number]) => {
            let number: u32 = number.parse().unwrap_or(0);
            let etag = format!("\"{}\"", &sha256(&body)[..16]);
            state
                .parts
                .entry(oid.to_string())
                .or_default()
                .insert(number, body.to_vec());
            (StatusCode::OK, [("etag", etag)]).into_response()
        }
        ("POST", ["lfs", oid, "complete"]) => complete_multipart(&mut state, oid, &body),
        ("POST", ["lfs", oid, "verify"]) => {
            if state.lfs.contains_key(*oid) {
                StatusCode::OK.into_response()
            } else {
                error(StatusCode::NOT_FOUND, "LfsNotFound", "object not uploaded")
            }
        }
        ("GET", [org, name, "resolve", rev, file @ ..]) => {
            let id = repo_key("models", org, name);
            with_repo(&state, &id, authorized, |repo| {
                resolve(repo, rev, file, &headers)
            })
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route {method} {path}"),
        ),
    }
}

fn with_repo(
    state: &State,
    id: &str,
    authorized: bool,
    f: impl FnOnce(&Repo) -> Response,
) -> Response {
    match state.repos.get(id) {
        None => error(
            StatusCode::NOT_FOUND,
            "RepoNotFound",
            "Repository not found",
        ),
        Some(repo) if repo.private && !authorized => error(
            StatusCode::UNAUTHORIZED,
            "RepoNotFound",
            "Repository not found",
        ),
        Some(repo) if repo.gated && !authorized => error(
            StatusCode::FORBIDDEN,
            "GatedRepo",
            "Access to this model is restricted",
        ),
        Some(repo) => f(repo),
    }
}

fn revision(repo: &Repo, rev: &str) -> Response {
    let Some(commit) = repo.head(rev) else {
        return error(StatusCode::NOT_FOUND, "RevisionNotFound", "Invalid rev id");
    };
    let siblings: Vec<Value> = commit
        .files
        .iter()
        .map(|(path, content)| {
            let mut entry =
                json!({"rfilename": path, "blobId": git_sha1(content), "size": content.len()});
            if is_lfs(path, content.len()) {
                entry["lfs"] =
                    json!({"sha256": sha256(content), "size": content.len(), "pointerSize": 134});
            }
            entry
        })
        .collect();
    json_response(json!({"sha": commit.oid, "siblings": siblings}))
}

fn resolve(repo: &Repo, rev: &str, file: &[&str], headers: &HeaderMap) -> Response {
    let (rev, file) = (decode(rev), file.join("/"));
    let file = file.as_str();
    let range = headers.get("range").and_then(|v| v.to_str().ok());
    let Some(commit) = repo.head(&rev) else {
        return error(StatusCode::NOT_FOUND, "RevisionNotFound", "Invalid rev id");
    };
    let Some(content) = commit.files.get(file) else {
        return error(
            StatusCode::NOT_FOUND,
            "EntryNotFound",
            &format!("{file} does not exist"),
        );
    };
    let size = content.len();
    let (start, end) = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().unwrap_or(size.saturating_sub(1));
            (a.min(size), b.min(size.saturating_sub(1)))
        })
        .unwrap_or((0, size.saturating_sub(1)));
    let lfs = is_lfs(file, size);
    let mut response = (
        if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        },
        content[start..=end.max(start).min(size.saturating_sub(1)).max(start)].to_vec(),
    )
        .into_response();
    let headers = response.headers_mut();
    let etag = format!("\"{}\"", git_sha1(content));
    headers.insert("x-repo-commit", commit.oid.parse().expect("header"));
    headers.insert("etag", etag.parse().expect("header"));
    if lfs {
        headers.insert(
            "x-linked-etag",
            format!("\"{}\"", sha256(content)).parse().expect("header"),
        );
    }
    headers.insert(
        "content-range",
        format!("bytes {start}-{end}/{size}")
            .parse()
            .expect("header"),
    );
    response
}

fn create_repo(state: &mut State, authorized: bool, body: &[u8]) -> Response {
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized", "Invalid token");
    }
    let request: Value = serde_json::from_slice(body).unwrap_or_default();
    let name = request["name"].as_str().unwrap_or_default();
    let mut id = match request["organization"].as_str() {
        Some(org) => format!("{org}/{name}"),
        None => name.to_string(),
    };
    if request["type"] == "dataset" {
        id = format!("datasets/{id}");
    }
    if state.repos.contains_key(&id) {
        return error(
            StatusCode::CONFLICT,
            "RepoExists",
            "You already created this model repo",
        );
    }
    state.repos.insert(
        id.clone(),
        Repo {
            private: request["private"].as_bool().unwrap_or(false),
            ..Repo::default()
        },
    );
    let attributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n".to_vec();
    state.commit(
        &id,
        "main",
        "initial commit",
        BTreeMap::from([(".gitattributes".to_string(), attributes)]),
    );
    json_response(json!({"url": format!("/{id}")}))
}

fn preupload(repo: &Repo, rev: &str, body: &[u8]) -> Response {
    let request: Value = serde_json::from_slice(body).unwrap_or_default();
    let current = repo.head(rev).map(|c| c.files.clone()).unwrap_or_default();
    let files: Vec<Value> = request["files"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let path = f["path"].as_str().unwrap_or_default();
            let size = f["size"].as_u64().unwrap_or(0) as usize;
            let mode = if is_lfs(path, size) { "lfs" } else { "regular" };
            let oid = current.get(path).map(|c| oid(path, c));
            json!({"path": path, "uploadMode": mode, "shouldIgnore": false, "oid": oid})
        })
        .collect();
    json_response(json!({"files": files}))
}

fn lfs_batch(state: &State, base: &str, body: &[u8]) -> Response {
    let request: Value = serde_json::from_slice(body).unwrap_or_default();
    let objects: Vec<Value> = request["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let oid = o["oid"].as_str().unwrap_or_default();
            let size = o["size"].as_u64().unwrap_or(0) as usize;
            if state.lfs.contains_key(oid) {
                json!({"oid": oid, "size": o["size"]})
            } else if size >= state.multipart_threshold {
                let mut header = serde_json::Map::new();
                header.insert("chunk_size".into(), json!(MULTIPART_CHUNK.to_string()));
                for part in 1..=size.div_ceil(MULTIPART_CHUNK) {
                    header.insert(
                        format!("{part:05}"),
                        json!(format!("{base}/lfs/{oid}/part/{part}")),
                    );
                }
                json!({"oid": oid, "size": o["size"], "actions": {
                    "upload": {"href": format!("{base}/lfs/{oid}/complete"), "header": header},
                    "verify": {"href": format!("{base}/lfs/{oid}/verify")},
                }})
            } else {
                json!({"oid": oid, "size": o["size"], "actions": {
                    "upload": {"href": format!("{base}/lfs/{oid}")},
                    "verify": {"href": format!("{base}/lfs/{oid}/verify")},
                }})
            }
        })
        .collect();
    let multipart = objects
        .iter()
        .any(|o| o["actions"]["upload"]["header"].is_object());
    let transfer = if multipart { "multipart" } else { "basic" };
    (
        [("content-type", "application/vnd.git-lfs+json")],
        json!({"transfer": transfer, "objects": objects}).to_string(),
    )
        .into_response()
}

/// Joins the parts named by the completion request (ETags checked) and stores the object.
fn complete_multipart(state: &mut State, oid: &str, body: &[u8]) -> Response {
    let request: Value = serde_json::from_slice(body).unwrap_or_default();
    let received = state.parts.remove(oid).unwrap_or_default();
    let mut content = Vec::new();
    for (i, part) in request["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let number = part["partNumber"].as_u64().unwrap_or(0) as u32;
        let Some(bytes) = received.get(&number) else {
            return error(StatusCode::BAD_REQUEST, "MissingPart", "part not uploaded");
        };
        let etag = format!("\"{}\"", &sha256(bytes)[..16]);
        if number as usize != i + 1 || part["etag"].as_str() != Some(etag.as_str()) {
            return error(
                StatusCode::BAD_REQUEST,
                "BadPart",
                "parts out of order or wrong ETag",
            );
        }
        content.extend_from_slice(bytes);
    }
    if sha256(&content) != oid || received.len() != request["parts"].as_array().map_or(0, Vec::len)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "BadOid",
            "assembled content does not match oid",
        );
    }
    state.lfs.insert(oid.to_string(), content);
    StatusCode::OK.into_response()
}

fn commit(state: &mut State, id: &str, rev: &str, body: &[u8]) -> Response {
    let Some(repo) = state.repos.get(id) else {
        return error(
            StatusCode::NOT_FOUND,
            "RepoNotFound",
            "Repository not found",
        );
    };
    let head = repo.head(rev).cloned();
    let text = String::from_utf8_lossy(body).to_string();
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let Some(header) = lines.iter().find(|l| l["key"] == "header") else {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "no header line");
    };
    if let (Some(parent), Some(head)) = (header["value"]["parentCommit"].as_str(), &head)
        && parent != head.oid
    {
        return error(
            StatusCode::PRECONDITION_FAILED,
            "ParentMismatch",
            "parent commit is not the branch head",
        );
    }
    let mut files = head.map(|c| c.files).unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD;
    for line in &lines {
        let value = &line["value"];
        let path = value["path"].as_str().unwrap_or_default().to_string();
        match line["key"].as_str() {
            Some("file") => {
                let Ok(content) = b64.decode(value["content"].as_str().unwrap_or_default()) else {
                    return error(StatusCode::BAD_REQUEST, "BadRequest", "bad base64");
                };
                files.insert(path, content);
            }
            Some("lfsFile") => {
                let oid = value["oid"].as_str().unwrap_or_default();
                let Some(content) = state.lfs.get(oid) else {
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "LfsMissing",
                        "LFS object not uploaded",
                    );
                };
                files.insert(path, content.clone());
            }
            _ => {}
        }
    }
    let summary = header["value"]["summary"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let oid = state.commit(id, rev, &summary, files);
    if state.fail_commits_after_applying > 0 {
        state.fail_commits_after_applying -= 1;
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            "internal error",
        );
    }
    json_response(json!({"commitOid": oid, "commitUrl": format!("/{id}/commit/{oid}")}))
}
