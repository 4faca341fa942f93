//! The content-addressed store (default `.flow/`):
//!
//! ```text
//! .flow/
//!   lock                      one writer at a time (holds the owner's pid)
//!   artifacts/<digest>/       an output directory, files read-only
//!   artifacts/<digest>.json   its manifest: path, size, blake3, mtime of every file
//!   cache/<key>.json          fingerprint key → output digests
//!   state/<workflow>/<node>.json  fingerprint of the node's last success (for reasons)
//!   runs/<run-id>/            run records and node logs
//!   resume/<key>/             what an unfinished node kept for its next attempt
//!   node-cache/<name>/        caches keyed by content that nodes share across runs (paid API answers)
//!   tmp/                      outputs being written; renamed into artifacts/ when complete
//! ```
//!
//! An artifact's digest is blake3 over its sorted `(path, size, file hash)` list, so equal
//! content is stored once. Outputs are written under `tmp/` and renamed into place, and the
//! manifest is written after the rename: a crash at any point leaves nothing a later run trusts.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::fingerprint::Fingerprint;

/// A store error: what failed, on which path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store directory cannot be created or written.
    #[error("store path `{path}` is not writable: {source}")]
    NotWritable {
        /// The store root.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the store and `--no-wait` was given.
    #[error(
        "the store `{path}` is locked by another flow process ({owner}); run again later or without --no-wait"
    )]
    Locked {
        /// The store root.
        path: PathBuf,
        /// Who holds it.
        owner: String,
    },
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something in an output directory cannot be stored.
    #[error("{0}")]
    Unsupported(String),
}

/// Attaches a path to an I/O error.
pub trait IoContext<T> {
    /// Maps the error to [`StoreError::Io`] for `path`.
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// One file of an artifact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the artifact root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the content.
    pub blake3: String,
    /// Modification time (ns since the epoch) when stored: the fast-path check.
    pub mtime_ns: i128,
}

/// The files of an artifact.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Files, sorted by path.
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// The artifact's digest: blake3 over `path\0size\0hash\n` of every file.
    pub fn digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        for f in &self.files {
            hasher.update(format!("{}\0{}\0{}\n", f.path, f.size, f.blake3).as_bytes());
        }
        hasher.finalize().to_hex().to_string()
    }

    /// Total size in bytes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A cache entry: what a fingerprint key produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// Output name → artifact digest.
    pub outputs: std::collections::BTreeMap<String, String>,
    /// How long the node took, in milliseconds.
    pub duration_ms: u64,
    /// When it was stored (RFC 3339).
    pub created: String,
}

/// How a stored artifact compares with its manifest.
#[derive(Clone, Debug, PartialEq)]
pub enum ArtifactHealth {
    /// Matches.
    Healthy,
    /// Directory or manifest absent.
    Missing,
    /// A file differs: which and how.
    Corrupted(String),
}

/// The store at a root directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// Holds the store's lock until dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: fs::File,
}

const SUBDIRS: [&str; 6] = ["artifacts", "cache", "state", "runs", "tmp", "resume"];

impl Store {
    /// The store at `root` (nothing is touched until [`Store::create`]).
    pub fn at(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the store has been created.
    pub fn exists(&self) -> bool {
        self.root.join("artifacts").is_dir()
    }

    /// Creates the layout and checks that it is writable.
    pub fn create(&self) -> Result<(), StoreError> {
        let not_writable = |source| StoreError::NotWritable {
            path: self.root.clone(),
            source,
        };
        for dir in SUBDIRS {
            fs::create_dir_all(self.root.join(dir)).map_err(not_writable)?;
        }
        let probe = self
            .root
            .join("tmp")
            .join(format!(".probe-{}", std::process::id()));
        fs::write(&probe, b"").map_err(not_writable)?;
        fs::remove_file(&probe).map_err(not_writable)?;
        Ok(())
    }

    /// Takes the store's lock; if another process has it, calls `on_wait` and waits
    /// (or fails with [`StoreError::Locked`] when `wait` is false). With the lock held, runs
    /// that a dead process left `running` are marked interrupted.
    pub fn lock(&self, wait: bool, on_wait: &dyn Fn(&str)) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut owner = String::new();
                let _ = file.read_to_string(&mut owner);
                let owner = format!("pid {}", owner.trim());
                if !wait {
                    return Err(StoreError::Locked {
                        path: self.root.clone(),
                        owner,
                    });
                }
                on_wait(&format!(
                    "waiting for the store lock at {} (held by {owner})…",
                    path.display()
                ));
                file.lock().at(&path)?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(e).at(&path),
        }
        file.set_len(0).at(&path)?;
        file.write_all(std::process::id().to_string().as_bytes())
            .at(&path)?;
        crate::record::RunRecord::mark_interrupted(self)?;
        Ok(StoreLock { _file: file })
    }

    /// A fresh directory under `tmp/`.
    pub fn temp_dir(&self, label: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("tmp").join(format!(
            "{label}-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::create_dir_all(&dir).at(&dir)?;
        Ok(dir)
    }

    /// The resume directory of a fingerprint key (created on demand).
    pub fn resume_dir(&self, key: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("resume").join(key);
        fs::create_dir_all(&dir).at(&dir)?;
        Ok(dir)
    }

    /// Removes a fingerprint key's resume directory (after the node succeeded).
    pub fn remove_resume_dir(&self, key: &str) -> Result<(), StoreError> {
        let dir = self.root.join("resume").join(key);
        if dir.exists() {
            remove_dir(&dir)
        } else {
            Ok(())
        }
    }

    /// Where an artifact's files live.
    pub fn artifact_dir(&self, digest: &str) -> PathBuf {
        self.root.join("artifacts").join(digest)
    }

    fn manifest_path(&self, digest: &str) -> PathBuf {
        self.root.join("artifacts").join(format!("{digest}.json"))
    }

    /// Moves a finished output directory into the store; returns its digest.
    pub fn commit_artifact(&self, dir: &Path) -> Result<String, StoreError> {
        let manifest = hash_dir(dir)?;
        let digest = manifest.digest();
        let target = self.artifact_dir(&digest);
        if self.check_artifact(&digest, true) == ArtifactHealth::Healthy {
            remove_dir(dir)?;
            return Ok(digest);
        }
        if target.exists() {
            let aside = self.temp_dir("broken")?;
            fs::rename(&target, aside.join("artifact")).at(&target)?;
            remove_dir(&aside)?;
        }
        fs::rename(dir, &target).at(&target)?;
        let manifest = make_read_only_and_stamp(&target, manifest)?;
        write_json_atomic(&self.manifest_path(&digest), &manifest)?;
        Ok(digest)
    }

    /// The manifest of a stored artifact.
    pub fn manifest(&self, digest: &str) -> Option<Manifest> {
        read_json(&self.manifest_path(digest))
    }

    /// Compares an artifact with its manifest: sizes and mtimes, and with `verify` every byte.
    pub fn check_artifact(&self, digest: &str, verify: bool) -> ArtifactHealth {
        let Some(manifest) = self.manifest(digest) else {
            return ArtifactHealth::Missing;
        };
        let root = self.artifact_dir(digest);
        if !root.is_dir() {
            return ArtifactHealth::Missing;
        }
        for f in &manifest.files {
            let path = root.join(&f.path);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                return ArtifactHealth::Corrupted(format!("{} is missing", f.path));
            };
            if meta.len() != f.size {
                return ArtifactHealth::Corrupted(format!(
                    "{} has {} bytes, expected {}",
                    f.path,
                    meta.len(),
                    f.size
                ));
            }
            if mtime_ns(&meta) != f.mtime_ns && !verify {
                return ArtifactHealth::Corrupted(format!(
                    "{} was modified after it was stored",
                    f.path
                ));
            }
        }
        if verify {
            match hash_dir(&root) {
                Ok(actual) if actual.digest() == digest => {}
                Ok(actual) => {
                    let bad = actual
                        .files
                        .iter()
                        .find(|a| {
                            !manifest
                                .files
                                .iter()
                                .any(|m| m.path == a.path && m.blake3 == a.blake3)
                        })
                        .map_or_else(
                            || "a file was removed".to_string(),
                            |a| format!("{} does not match its hash", a.path),
                        );
                    return ArtifactHealth::Corrupted(bad);
                }
                Err(e) => return ArtifactHealth::Corrupted(e.to_string()),
            }
        }
        ArtifactHealth::Healthy
    }

    /// The cache entry for a fingerprint key.
    pub fn cache_entry(&self, key: &str) -> Option<CacheEntry> {
        read_json(&self.root.join("cache").join(format!("{key}.json")))
    }

    /// Records what a fingerprint key produced.
    pub fn put_cache_entry(&self, key: &str, entry: &CacheEntry) -> Result<(), StoreError> {
        write_json_atomic(&self.root.join("cache").join(format!("{key}.json")), entry)
    }

    fn state_path(&self, workflow: &str, node: &str) -> PathBuf {
        self.root
            .join("state")
            .join(sanitize(workflow))
            .join(format!("{}.json", sanitize(node)))
    }

    /// The fingerprint of a node's last successful run.
    pub fn node_state(&self, workflow: &str, node: &str) -> Option<Fingerprint> {
        read_json(&self.state_path(workflow, node))
    }

    /// Remembers the fingerprint of a node's successful run.
    pub fn put_node_state(
        &self,
        workflow: &str,
        node: &str,
        fingerprint: &Fingerprint,
    ) -> Result<(), StoreError> {
        write_json_atomic(&self.state_path(workflow, node), fingerprint)
    }

    /// Removes artifacts not in `keep`, cache entries that point at removed artifacts, and `tmp/`.
    pub fn gc(&self, keep: &BTreeSet<String>, dry_run: bool) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let artifacts = self.root.join("artifacts");
        for entry in fs::read_dir(&artifacts).at(&artifacts)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let digest = name.trim_end_matches(".json");
            if keep.contains(digest) || !entry.path().is_dir() && !name.ends_with(".json") {
                continue;
            }
            if entry.path().is_dir() {
                report.artifacts += 1;
                report.bytes += self.manifest(digest).map_or(0, |m| m.total_size());
            }
            if !dry_run {
                remove_path(&entry.path())?;
            }
        }
        let cache = self.root.join("cache");
        for entry in fs::read_dir(&cache).at(&cache)?.flatten() {
            let stale = read_json::<CacheEntry>(&entry.path())
                .is_none_or(|e| e.outputs.values().any(|d| !keep.contains(d)));
            if stale {
                report.cache_entries += 1;
                if !dry_run {
                    remove_path(&entry.path())?;
                }
            }
        }
        for leftovers in ["tmp", "resume"] {
            let dir = self.root.join(leftovers);
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                report.temp_dirs += 1;
                if !dry_run {
                    remove_path(&entry.path())?;
                }
            }
        }
        Ok(report)
    }
}

/// What `flow gc` removed (or would remove).
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// Artifacts removed.
    pub artifacts: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Cache entries removed.
    pub cache_entries: usize,
    /// Leftover temporary and resume directories removed.
    pub temp_dirs: usize,
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn mtime_ns(meta: &fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// A cheap digest of a file or directory tree outside the store: blake3 over every file's
/// relative path, size and modification time (as make and cargo's mtime checks do);
/// `missing` when the path does not exist.
pub fn metadata_digest(path: &Path) -> String {
    let Ok(meta) = fs::metadata(path) else {
        return "missing".into();
    };
    let mut hasher = blake3::Hasher::new();
    let mut stack = vec![(path.to_path_buf(), meta)];
    let mut entries = Vec::new();
    while let Some((here, meta)) = stack.pop() {
        if meta.is_dir() {
            for entry in fs::read_dir(&here).into_iter().flatten().flatten() {
                if let Ok(m) = fs::metadata(entry.path()) {
                    stack.push((entry.path(), m));
                }
            }
        } else {
            let rel = here
                .strip_prefix(path)
                .unwrap_or(&here)
                .to_string_lossy()
                .to_string();
            entries.push(format!("{rel}\0{}\0{}\n", meta.len(), mtime_ns(&meta)));
        }
    }
    entries.sort();
    for e in entries {
        hasher.update(e.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// Hashes every file under `root` (sorted), refusing symlinks and special files.
pub fn hash_dir(root: &Path) -> Result<Manifest, StoreError> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).at(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .expect("below root")
                    .to_string_lossy()
                    .replace('\\', "/");
                let mut hasher = blake3::Hasher::new();
                hasher.update_mmap(&path).at(&path)?;
                files.push(ManifestFile {
                    path: rel,
                    size: meta.len(),
                    blake3: hasher.finalize().to_hex().to_string(),
                    mtime_ns: mtime_ns(&meta),
                });
            } else {
                return Err(StoreError::Unsupported(format!(
                    "{}: only regular files and directories can be stored in an artifact (found a symlink or special file)",
                    path.display()
                )));
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Manifest { files })
}

/// Marks files read-only and records their final mtimes.
fn make_read_only_and_stamp(root: &Path, mut manifest: Manifest) -> Result<Manifest, StoreError> {
    use std::os::unix::fs::PermissionsExt;
    for f in &mut manifest.files {
        let path = root.join(&f.path);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).at(&path)?;
        f.mtime_ns = mtime_ns(&fs::metadata(&path).at(&path)?);
    }
    Ok(manifest)
}

/// Writes JSON to a temporary file beside `path`, syncs it, and renames it over `path`.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let dir = path.parent().expect("a file path has a parent");
    fs::create_dir_all(dir).at(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        fastrand::u64(..)
    ));
    let mut file = fs::File::create(&tmp).at(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(value).expect("plain data serializes"))
        .at(&tmp)?;
    file.sync_all().at(&tmp)?;
    fs::rename(&tmp, path).at(path)
}

/// Reads JSON, or `None` when absent or unreadable.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    fs::remove_dir_all(dir).at(dir)
}

fn remove_path(path: &Path) -> Result<(), StoreError> {
    if path.is_dir() {
        remove_dir(path)
    } else {
        fs::remove_file(path).at(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
        let out = dir.join(format!("out-{}", fastrand::u32(..)));
        for (name, content) in files {
            let path = out.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        out
    }

    #[test]
    fn equal_content_is_stored_once_and_checks_healthy() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::at(tmp.path().join("store"));
        store.create().unwrap();
        let a = store
            .commit_artifact(&output(tmp.path(), &[("x.txt", "1"), ("d/y.txt", "2")]))
            .unwrap();
        let b = store
            .commit_artifact(&output(tmp.path(), &[("d/y.txt", "2"), ("x.txt", "1")]))
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(store.check_artifact(&a, true), ArtifactHealth::Healthy);
        assert_eq!(store.check_artifact("nope", false), ArtifactHealth::Missing);
    }

    #[test]
    fn a_changed_byte_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::at(tmp.path().join("store"));
        store.create().unwrap();
        let digest = store
            .commit_artifact(&output(tmp.path(), &[("x.txt", "hello")]))
            .unwrap();
        let file = store.artifact_dir(&digest).join("x.txt");
        let meta = fs::metadata(&file).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&file, "jello").unwrap();
        assert!(matches!(
            store.check_artifact(&digest, false),
            ArtifactHealth::Corrupted(_)
        ));
        // Even with the old mtime restored, --verify finds the byte.
        let f = fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(meta.modified().unwrap()).unwrap();
        assert!(
            matches!(store.check_artifact(&digest, true), ArtifactHealth::Corrupted(d) if d.contains("x.txt"))
        );
    }

    #[test]
    fn second_locker_fails_without_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::at(tmp.path());
        store.create().unwrap();
        let _held = store.lock(false, &|_| {}).unwrap();
        assert!(matches!(
            store.lock(false, &|_| {}),
            Err(StoreError::Locked { .. })
        ));
    }
}
