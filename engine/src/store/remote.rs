//! The shared store (`--remote`): the local store's artifacts and cache entries mirrored in an
//! object store (S3 or anything speaking it, or a directory through `file://`), so machines that
//! do not share a filesystem share results.
//!
//! ```text
//! <remote>/
//!   blobs/<blake3>              one file's bytes, named by their blake3
//!   artifacts/<digest>.json     an artifact's manifest: path, size, blake3 of every file
//!   cache/<key>.json            fingerprint key → output digests (a local `CacheEntry`)
//!   runs/<run id>.json          the run records of runs with this remote
//!   leases/<key>/<gen>.json     who builds a key now
//! ```
//!
//! **Publish** (after a node ran locally): every file blob by its digest (skipped when already
//! there), then each output's manifest, then the cache entry, written create-only
//! (`PutMode::Create`). The cache entry is the commit point: it is written last, so a publisher
//! that dies earlier leaves blobs and manifests nobody trusts yet, and a later publish completes
//! the job. When two publishers race on a key, the first writer wins; the loser reads the
//! winner's entry and adopts its outputs (downloading them), so every store ends with one answer
//! per key (`--force` replaces the entry instead). After its entry is written, a publisher checks
//! its blobs once more and puts back any that a concurrent `flow gc --remote` took after this
//! publish found it there. Files above 16 MiB go up as multipart uploads, read part by part.
//!
//! **Lookup** (before a node runs, after the local cache missed): if `cache/<key>.json` exists,
//! each output is downloaded — manifest, then blobs, each checked against its blake3 (and the
//! manifest against the artifact digest, blobs streamed and hashed on the way) — into the local
//! store's `tmp/` and committed through [`Store::commit_artifact`], so the local digest is the
//! remote one; then the local cache entry is written and the node counts as cached. A byte that
//! does not match is an error naming the object, never a silent cache hit.
//!
//! **Leases** ([`Remote::claim`]) keep two machines from building the same key at once: before
//! running a node, a machine claims the key's lease and waits while another holds it. **Run
//! records** live at `runs/<id>.json` too, and **garbage collection** ([`Remote::gc`]) deletes only
//! what none of them references and what is older than a grace period.

use futures_util::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ArtifactHealth, CacheEntry, Manifest, ManifestFile, Store};

/// Files up to this size are uploaded in one request; larger ones in parts.
const SINGLE_PUT_BYTES: usize = 16 << 20;
/// The part size of multipart uploads (S3 wants at least 5 MiB but the last).
const PART_BYTES: usize = 16 << 20;
/// Parts uploading at once.
const PARTS_IN_FLIGHT: usize = 4;

mod gc;
mod lease;
pub use gc::RemoteGcReport;
pub use lease::{Claim, DEFAULT_LEASE_TTL, Lease, LeaseBody};

/// A remote store error: a clear sentence naming the remote or the object.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RemoteError(pub String);

/// One file of a remote manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteFile {
    /// Path relative to the artifact root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the content: the blob's name.
    pub blake3: String,
}

/// An artifact's manifest as published (no mtimes: they are local).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteManifest {
    /// Files, sorted by path.
    pub files: Vec<RemoteFile>,
}

impl RemoteManifest {
    fn digest(&self) -> String {
        self.as_manifest().digest()
    }

    fn as_manifest(&self) -> Manifest {
        Manifest {
            files: self
                .files
                .iter()
                .map(|f| ManifestFile {
                    path: f.path.clone(),
                    size: f.size,
                    blake3: f.blake3.clone(),
                    mtime_ns: 0,
                })
                .collect(),
        }
    }
}

/// What [`Remote::publish`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Published {
    /// Our entry is the remote's.
    Created,
    /// Another publisher won the key; its outputs are now in the local store too.
    Adopted(CacheEntry),
}

/// A remote store: an object store and the prefix flow's objects live under.
#[derive(Clone, Debug)]
pub struct Remote {
    url: String,
    objects: Arc<dyn ObjectStore>,
    prefix: String,
    lease_ttl: Duration,
}

impl Remote {
    /// Parses `s3://BUCKET[/PREFIX]` (credentials, region and endpoint from the standard AWS
    /// variables) or `file:///ABSOLUTE/PATH`, with leases living `FLOW_LEASE_TTL` (a duration
    /// such as `90s`; default [`DEFAULT_LEASE_TTL`]). Touches no network.
    pub fn parse(url: &str) -> Result<Remote, RemoteError> {
        Self::parse_url(url, true)?.with_lease_ttl_from_env()
    }

    /// Like [`Remote::parse`], for commands that only read or delete (`flow gc --remote`): a
    /// `file://` directory that does not exist is an error, not a new empty remote.
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        Self::parse_url(url, false)?.with_lease_ttl_from_env()
    }

    /// The lease time to live `FLOW_LEASE_TTL` gives (1s to 7d), if set.
    fn with_lease_ttl_from_env(mut self) -> Result<Remote, RemoteError> {
        let Some(ttl) = std::env::var_os("FLOW_LEASE_TTL") else {
            return Ok(self);
        };
        let ttl = ttl.to_string_lossy();
        let range = Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);
        self.lease_ttl = humantime::parse_duration(&ttl)
            .ok()
            .filter(|t| range.contains(t))
            .ok_or_else(|| {
                RemoteError(format!(
                    "FLOW_LEASE_TTL=`{ttl}` is not a duration from 1s to 7d (e.g. 60s or 5m)"
                ))
            })?;
        Ok(self)
    }

    fn parse_url(url: &str, create: bool) -> Result<Remote, RemoteError> {
        let bad = |why: &str| {
            RemoteError(format!(
                "invalid remote `{url}`: {why} (expected s3://BUCKET/PREFIX or file:///PATH)"
            ))
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket"));
            }
            let custom_endpoint = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(object_store::RetryConfig {
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(30),
                    ..Default::default()
                });
            if custom_endpoint {
                // MinIO, SeaweedFS and the like are addressed by path, not by bucket host name.
                builder = builder.with_virtual_hosted_style_request(false);
                if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                    return Err(RemoteError(format!(
                        "remote `{url}`: AWS_ENDPOINT_URL is set but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not"
                    )));
                }
            }
            let s3 = builder
                .build()
                .map_err(|e| RemoteError(format!("remote `{url}`: {e}")))?;
            Ok(Remote::with(url, Arc::new(s3), prefix))
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file:// remote needs an absolute path"));
            }
            if create {
                std::fs::create_dir_all(path).map_err(|e| {
                    RemoteError(format!("remote `{url}`: cannot create {path}: {e}"))
                })?;
            } else if !std::path::Path::new(path).is_dir() {
                return Err(RemoteError(format!(
                    "remote `{url}`: {path} is not a directory"
                )));
            }
            let fs = LocalFileSystem::new_with_prefix(path)
                .map_err(|e| RemoteError(format!("remote `{url}`: {e}")))?;
            Ok(Remote::with(url, Arc::new(fs), ""))
        } else {
            Err(bad("unknown scheme"))
        }
    }

    /// A remote over any object store (tests use `InMemory`).
    pub fn with(url: &str, objects: Arc<dyn ObjectStore>, prefix: &str) -> Remote {
        Remote {
            url: url.to_string(),
            objects,
            prefix: prefix.trim_matches('/').to_string(),
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }

    /// The URL it was given.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> RemoteError {
        RemoteError(format!("remote {}: {what}: {e}", self.url))
    }

    /// The object's bytes, or `None` when absent.
    async fn get(&self, name: &str) -> Result<Option<bytes::Bytes>, RemoteError> {
        match self.objects.get(&self.path(name)).await {
            Ok(found) => found
                .bytes()
                .await
                .map(Some)
                .map_err(|e| self.failed(&format!("reading {name}"), e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed(&format!("reading {name}"), e)),
        }
    }

    async fn exists(&self, name: &str) -> Result<bool, RemoteError> {
        match self.objects.head(&self.path(name)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed(&format!("checking {name}"), e)),
        }
    }

    async fn put(&self, name: &str, bytes: Vec<u8>, mode: PutMode) -> object_store::Result<()> {
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        self.objects
            .put_opts(&self.path(name), PutPayload::from(bytes), options)
            .await
            .map(|_| ())
    }

    /// Object `name` read as JSON, or `None` when absent; one that does not parse is an error
    /// saying it is not `what` (`a manifest`, say).
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        what: &str,
    ) -> Result<Option<T>, RemoteError> {
        match self.get(name).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.failed(&format!("{name} is not {what}"), e)),
        }
    }

    /// Writes `value` as pretty JSON to object `name`.
    async fn put_json(
        &self,
        name: &str,
        value: &impl Serialize,
        mode: PutMode,
    ) -> object_store::Result<()> {
        let bytes = serde_json::to_vec_pretty(value).expect("plain data serializes");
        self.put(name, bytes, mode).await
    }

    /// The objects directly in folder `dir` (below the prefix) whose names `ours` accepts
    /// (folder markers some S3 servers keep, and anything else, are left alone).
    async fn list(
        &self,
        dir: &str,
        ours: fn(&str) -> bool,
    ) -> Result<Vec<object_store::ObjectMeta>, RemoteError> {
        let listed = self
            .objects
            .list_with_delimiter(Some(&self.path(dir)))
            .await
            .map_err(|e| self.failed(&format!("listing {dir}/"), e))?;
        Ok(listed
            .objects
            .into_iter()
            .filter(|meta| meta.location.filename().is_some_and(ours))
            .collect())
    }

    /// The remote cache entry of a fingerprint key, without downloading its outputs.
    pub async fn entry(&self, key: &str) -> Result<Option<CacheEntry>, RemoteError> {
        self.get_json(&format!("cache/{key}.json"), "a cache entry")
            .await
    }

    /// Looks a key up: when the remote has it, downloads and verifies its outputs into `local`,
    /// writes the local cache entry and returns it.
    pub async fn fetch(&self, key: &str, local: &Store) -> Result<Option<CacheEntry>, RemoteError> {
        let Some(entry) = self.entry(key).await? else {
            return Ok(None);
        };
        for digest in entry.outputs.values() {
            self.download(digest, local).await?;
        }
        local
            .put_cache_entry(key, &entry)
            .map_err(|e| RemoteError(e.to_string()))?;
        Ok(Some(entry))
    }

    /// Puts the artifact `digest` into `local` (nothing when it is already there and healthy).
    async fn download(&self, digest: &str, local: &Store) -> Result<(), RemoteError> {
        if local.check_artifact(digest, false) == ArtifactHealth::Healthy {
            return Ok(());
        }
        let name = format!("artifacts/{digest}.json");
        let manifest: RemoteManifest =
            self.get_json(&name, "a manifest").await?.ok_or_else(|| {
                self.failed(
                    &format!("{name} is missing, but a cache entry names it"),
                    "the remote is damaged",
                )
            })?;
        if manifest.digest() != digest {
            return Err(self.failed(&name, "does not match its digest (corrupted)"));
        }
        let tmp = local
            .temp_dir("remote")
            .map_err(|e| RemoteError(e.to_string()))?;
        let result = self.download_files(&manifest, &tmp).await.and_then(|()| {
            local
                .commit_artifact(&tmp)
                .map_err(|e| RemoteError(e.to_string()))
        });
        let committed = match result {
            Ok(committed) => committed,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        if committed != digest {
            return Err(self.failed(&name, format!("committed as {committed}, not {digest}")));
        }
        Ok(())
    }

    async fn download_files(
        &self,
        manifest: &RemoteManifest,
        dir: &std::path::Path,
    ) -> Result<(), RemoteError> {
        for file in &manifest.files {
            let relative = std::path::Path::new(&file.path);
            if file.path.is_empty()
                || relative.is_absolute()
                || relative
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(self.failed("a manifest", format!("unsafe path `{}`", file.path)));
            }
            let target = dir.join(relative);
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| RemoteError(format!("{}: {e}", parent.display())))?;
            }
            self.download_blob(file, &target).await?;
        }
        Ok(())
    }

    /// Streams blob `file.blake3` into `target`, hashing as it goes; a blob whose size or
    /// blake3 is not the manifest's is an error naming it.
    async fn download_blob(
        &self,
        file: &RemoteFile,
        target: &std::path::Path,
    ) -> Result<(), RemoteError> {
        let name = format!("blobs/{}", file.blake3);
        let mut chunks = match self.objects.get(&self.path(&name)).await {
            Ok(found) => found.into_stream(),
            Err(object_store::Error::NotFound { .. }) => {
                return Err(self.failed(&name, "missing"));
            }
            Err(e) => return Err(self.failed(&format!("reading {name}"), e)),
        };
        let local = |e: std::io::Error| RemoteError(format!("{}: {e}", target.display()));
        let mut out = tokio::fs::File::create(target).await.map_err(local)?;
        let (mut hasher, mut size) = (blake3::Hasher::new(), 0u64);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| self.failed(&format!("reading {name}"), e))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(local)?;
        }
        out.flush().await.map_err(local)?;
        let actual = hasher.finalize().to_hex().to_string();
        if actual != file.blake3 || size != file.size {
            return Err(self.failed(
                &name,
                format!(
                    "corrupted: {size} bytes hashing to {actual}, expected {} bytes hashing to {} (for {})",
                    file.size, file.blake3, file.path
                ),
            ));
        }
        Ok(())
    }

    /// Publishes what `key` produced locally: blobs, manifests, then the cache entry
    /// (create-only). When another publisher got there first, adopts its entry.
    pub async fn publish(
        &self,
        key: &str,
        entry: &CacheEntry,
        local: &Store,
    ) -> Result<Published, RemoteError> {
        self.publish_with(key, entry, local, PutMode::Create).await
    }

    /// Publishes like [`Remote::publish`] but replaces an entry already there (`--force`: the
    /// user asked for this result, not the remote's).
    pub async fn replace(
        &self,
        key: &str,
        entry: &CacheEntry,
        local: &Store,
    ) -> Result<Published, RemoteError> {
        self.publish_with(key, entry, local, PutMode::Overwrite)
            .await
    }

    async fn publish_with(
        &self,
        key: &str,
        entry: &CacheEntry,
        local: &Store,
        mode: PutMode,
    ) -> Result<Published, RemoteError> {
        for digest in entry.outputs.values() {
            self.upload(digest, local).await?;
        }
        let name = format!("cache/{key}.json");
        match self.put_json(&name, entry, mode).await {
            Ok(()) => {
                // `flow gc --remote` elsewhere may have taken an old blob this publish found
                // and skipped before the manifest naming it was written: put those back.
                for digest in entry.outputs.values() {
                    self.upload(digest, local).await?;
                }
                Ok(Published::Created)
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                let winner = self
                    .entry(key)
                    .await?
                    .ok_or_else(|| self.failed(&name, "exists but cannot be read"))?;
                if winner.outputs != entry.outputs {
                    for digest in winner.outputs.values() {
                        self.download(digest, local).await?;
                    }
                }
                Ok(Published::Adopted(winner))
            }
            Err(e) => Err(self.failed(&format!("writing {name}"), e)),
        }
    }

    /// Writes the file at `path` (`size` bytes) as object `name`: in one request up to
    /// [`SINGLE_PUT_BYTES`], else as a multipart upload of [`PART_BYTES`] parts read from the file
    /// as they go (a few parts in memory, never the whole file).
    async fn upload_blob(
        &self,
        name: &str,
        path: &std::path::Path,
        size: u64,
    ) -> Result<(), RemoteError> {
        let local = |e: std::io::Error| RemoteError(format!("{}: {e}", path.display()));
        let failed = |e: object_store::Error| self.failed(&format!("writing {name}"), e);
        if size <= SINGLE_PUT_BYTES as u64 {
            let bytes = tokio::fs::read(path).await.map_err(local)?;
            return self
                .put(name, bytes, PutMode::Overwrite)
                .await
                .map_err(failed);
        }
        let upload = self
            .objects
            .put_multipart(&self.path(name))
            .await
            .map_err(failed)?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut file = tokio::fs::File::open(path).await.map_err(local)?;
        let mut buffer = vec![0; PART_BYTES];
        loop {
            let read = match file.read(&mut buffer).await {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) => {
                    let _ = parts.abort().await;
                    return Err(local(e));
                }
            };
            if let Err(e) = parts.wait_for_capacity(PARTS_IN_FLIGHT).await {
                return Err(failed(e));
            }
            parts.write(&buffer[..read]);
        }
        parts.finish().await.map(|_| ()).map_err(failed)
    }

    /// Uploads an artifact's blobs (those not there yet) and then its manifest.
    async fn upload(&self, digest: &str, local: &Store) -> Result<(), RemoteError> {
        let manifest = local.manifest(digest).ok_or_else(|| {
            RemoteError(format!(
                "artifact {digest} is not in the local store {}",
                local.root().display()
            ))
        })?;
        let root = local.artifact_dir(digest);
        for file in &manifest.files {
            let name = format!("blobs/{}", file.blake3);
            if self.exists(&name).await? {
                continue;
            }
            self.upload_blob(&name, &root.join(&file.path), file.size)
                .await?;
        }
        let published = RemoteManifest {
            files: manifest
                .files
                .iter()
                .map(|f| RemoteFile {
                    path: f.path.clone(),
                    size: f.size,
                    blake3: f.blake3.clone(),
                })
                .collect(),
        };
        let name = format!("artifacts/{digest}.json");
        self.put_json(&name, &published, PutMode::Overwrite)
            .await
            .map_err(|e| self.failed(&format!("writing {name}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use std::collections::BTreeMap;

    struct Fixture {
        _tmp: tempfile::TempDir,
        objects: Arc<InMemory>,
        remote: Remote,
        a: Store,
        b: Store,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let objects = Arc::new(InMemory::new());
        let remote = Remote::with("memory://test", objects.clone(), "team/flow");
        let a = Store::at(tmp.path().join("a"));
        let b = Store::at(tmp.path().join("b"));
        a.create().unwrap();
        b.create().unwrap();
        Fixture {
            _tmp: tmp,
            objects,
            remote,
            a,
            b,
        }
    }

    /// Commits an output with `files` into `store`; returns its cache entry (output `out`).
    /// The tests of the lease and gc rooms use it too.
    pub(super) fn produce(store: &Store, files: &[(&str, &str)]) -> CacheEntry {
        let dir = store.temp_dir("out").unwrap();
        for (name, content) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let digest = store.commit_artifact(&dir).unwrap();
        CacheEntry {
            outputs: BTreeMap::from([("out".to_string(), digest)]),
            duration_ms: 5,
            created: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn digest(entry: &CacheEntry) -> &str {
        &entry.outputs["out"]
    }

    #[tokio::test]
    async fn publish_then_lookup_round_trips_an_artifact() {
        let f = fixture();
        let entry = produce(&f.a, &[("x.txt", "hello"), ("d/y.txt", "world")]);
        let published = f.remote.publish("k1", &entry, &f.a).await.unwrap();
        assert_eq!(published, Published::Created);
        assert_eq!(f.remote.fetch("nope", &f.b).await.unwrap(), None);
        let fetched = f.remote.fetch("k1", &f.b).await.unwrap().unwrap();
        assert_eq!(fetched, entry);
        assert_eq!(f.b.cache_entry("k1"), Some(entry.clone()));
        assert_eq!(
            f.b.check_artifact(digest(&entry), true),
            ArtifactHealth::Healthy
        );
        let y = f.b.artifact_dir(digest(&entry)).join("d/y.txt");
        assert_eq!(std::fs::read_to_string(y).unwrap(), "world");
        // Blobs are shared by content: a second artifact with the same file adds one blob.
        let more = produce(&f.a, &[("x.txt", "hello"), ("z.txt", "new")]);
        f.remote.publish("k2", &more, &f.a).await.unwrap();
        let blobs = f
            .objects
            .list_with_delimiter(Some(&ObjectPath::from("team/flow/blobs")))
            .await
            .unwrap();
        assert_eq!(blobs.objects.len(), 3);
    }

    #[tokio::test]
    async fn a_publish_that_stopped_early_is_not_cached_and_a_later_one_completes() {
        let f = fixture();
        let entry = produce(&f.a, &[("x.txt", "hello")]);
        // Crash after blobs and manifest: no cache entry.
        f.remote.upload(digest(&entry), &f.a).await.unwrap();
        assert_eq!(f.remote.fetch("k", &f.b).await.unwrap(), None);
        // Crash after blobs only.
        let manifest = f.remote.path(&format!("artifacts/{}.json", digest(&entry)));
        f.objects.delete(&manifest).await.unwrap();
        assert_eq!(f.remote.fetch("k", &f.b).await.unwrap(), None);
        assert!(f.b.cache_entry("k").is_none());
        // A later publish completes.
        assert_eq!(
            f.remote.publish("k", &entry, &f.a).await.unwrap(),
            Published::Created
        );
        assert_eq!(f.remote.fetch("k", &f.b).await.unwrap(), Some(entry));
    }

    #[tokio::test]
    async fn a_corrupted_blob_is_an_error_naming_it() {
        let f = fixture();
        let entry = produce(&f.a, &[("x.txt", "hello")]);
        f.remote.publish("k", &entry, &f.a).await.unwrap();
        let blob = format!("blobs/{}", blake3::hash(b"hello").to_hex());
        f.objects
            .put(&f.remote.path(&blob), PutPayload::from_static(b"jello"))
            .await
            .unwrap();
        let error = f.remote.fetch("k", &f.b).await.unwrap_err().to_string();
        assert!(error.contains(&blob), "{error}");
        assert!(error.contains("corrupted"), "{error}");
        assert!(f.b.cache_entry("k").is_none());
        assert_eq!(
            f.b.check_artifact(digest(&entry), false),
            ArtifactHealth::Missing
        );
    }

    #[tokio::test]
    async fn two_publishers_of_a_key_leave_one_entry_and_the_second_adopts_the_first() {
        let f = fixture();
        // A node that is not deterministic: each store produced something else for one key.
        let first = produce(&f.a, &[("x.txt", "first")]);
        let second = produce(&f.b, &[("x.txt", "second")]);
        assert_eq!(
            f.remote.publish("k", &first, &f.a).await.unwrap(),
            Published::Created
        );
        let adopted = f.remote.publish("k", &second, &f.b).await.unwrap();
        assert_eq!(adopted, Published::Adopted(first.clone()));
        assert_eq!(
            f.b.check_artifact(digest(&first), true),
            ArtifactHealth::Healthy
        );
        assert_eq!(f.remote.entry("k").await.unwrap(), Some(first));
        let entries = f
            .objects
            .list_with_delimiter(Some(&ObjectPath::from("team/flow/cache")))
            .await
            .unwrap();
        assert_eq!(entries.objects.len(), 1);
    }

    #[tokio::test]
    async fn a_file_larger_than_one_part_goes_up_in_parts_and_comes_back_whole() {
        let f = fixture();
        let big: Vec<u8> = (0..PART_BYTES * 2 + 12345)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let dir = f.a.temp_dir("out").unwrap();
        std::fs::write(dir.join("model.safetensors"), &big).unwrap();
        let digest = f.a.commit_artifact(&dir).unwrap();
        let entry = CacheEntry {
            outputs: BTreeMap::from([("out".to_string(), digest.clone())]),
            duration_ms: 1,
            created: "2026-01-01T00:00:00Z".into(),
        };
        f.remote.publish("big", &entry, &f.a).await.unwrap();
        let blob = f
            .remote
            .path(&format!("blobs/{}", blake3::hash(&big).to_hex()));
        assert_eq!(f.objects.head(&blob).await.unwrap().size, big.len() as u64);
        f.remote.fetch("big", &f.b).await.unwrap().unwrap();
        let back = std::fs::read(f.b.artifact_dir(&digest).join("model.safetensors")).unwrap();
        assert!(back == big, "the downloaded file differs");
    }

    #[tokio::test]
    async fn a_forced_publish_replaces_the_entry() {
        let f = fixture();
        let first = produce(&f.a, &[("x.txt", "first")]);
        let second = produce(&f.a, &[("x.txt", "second")]);
        f.remote.publish("k", &first, &f.a).await.unwrap();
        let replaced = f.remote.replace("k", &second, &f.a).await.unwrap();
        assert_eq!(replaced, Published::Created);
        assert_eq!(f.remote.fetch("k", &f.b).await.unwrap(), Some(second));
    }

    #[test]
    fn bad_urls_are_clear() {
        for (url, says) in [
            ("gs://bucket/x", "unknown scheme"),
            ("s3:///x", "no bucket"),
            ("file://relative/path", "absolute path"),
        ] {
            let error = Remote::parse(url).unwrap_err().to_string();
            assert!(error.contains(url) && error.contains(says), "{error}");
        }
    }
}
