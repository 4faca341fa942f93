//! The content-addressed store (default `.flow/`), the `Artifacts` end of
//! `YAML → Workflow → Plan → Run → Artifacts`. It owns the files below and nothing else: it
//! never computes a cache key (that is the `plan` room) nor decides what runs.
//!
//! ```text
//! .flow/
//!   lock                      one writer at a time (holds the owner's pid)
//!   commit.lock               held while an artifact is put in place (see commit_artifact)
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
//! A store can be mirrored in a shared one (`--remote`): see [`remote`].
//!
//! An artifact's digest is blake3 over its sorted `(path, size, file hash)` list, so equal
//! content is stored once. Outputs are written under `tmp/` and renamed into place, and the
//! manifest is written after the rename: a crash at any point leaves nothing a later run trusts.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

mod artifact;
mod lock;
pub mod record;
pub mod remote;

pub use artifact::{ArtifactHealth, Manifest, ManifestFile, hash_dir, metadata_digest};
pub use lock::StoreLock;

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

impl CacheEntry {
    /// The entry of outputs that took `duration_ms` to make, stored now.
    pub fn now(outputs: std::collections::BTreeMap<String, String>, duration_ms: u64) -> Self {
        CacheEntry {
            outputs,
            duration_ms,
            created: record::now_rfc3339(),
        }
    }
}

/// The store at a root directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
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
        let probe = self.root.join("tmp").join(format!(
            ".probe-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::write(&probe, b"").map_err(not_writable)?;
        fs::remove_file(&probe).map_err(not_writable)?;
        Ok(())
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

    /// The fingerprint of a node's last successful run (kept as JSON: the store does not know
    /// its fields; the plan's fingerprint does).
    pub fn node_state<T: for<'de> Deserialize<'de>>(
        &self,
        workflow: &str,
        node: &str,
    ) -> Option<T> {
        read_json(&self.state_path(workflow, node))
    }

    /// Remembers the fingerprint of a node's successful run.
    pub fn put_node_state(
        &self,
        workflow: &str,
        node: &str,
        fingerprint: &impl Serialize,
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

    /// Many threads committing the same content at once (empty shard slices, nodes with equal
    /// outputs) all get the one digest, and the artifact ends healthy: none of them moves aside
    /// another's half-committed directory.
    #[test]
    fn concurrent_commits_of_equal_content_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::at(tmp.path().join("store"));
        store.create().unwrap();
        for round in 0..20 {
            let content = format!("round {round}");
            let dirs: Vec<PathBuf> = (0..8)
                .map(|_| output(tmp.path(), &[("a.txt", &content), ("d/b.txt", "same")]))
                .collect();
            let barrier = std::sync::Barrier::new(dirs.len());
            let digests: Vec<String> = std::thread::scope(|scope| {
                let handles: Vec<_> = dirs
                    .iter()
                    .map(|dir| {
                        let (store, barrier) = (&store, &barrier);
                        scope.spawn(move || {
                            barrier.wait();
                            store.commit_artifact(dir).unwrap()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
            assert_eq!(
                store.check_artifact(&digests[0], false),
                ArtifactHealth::Healthy
            );
            assert_eq!(
                store.check_artifact(&digests[0], true),
                ArtifactHealth::Healthy
            );
            assert!(
                dirs.iter().all(|d| !d.exists()),
                "every output dir was consumed"
            );
        }
    }
}
