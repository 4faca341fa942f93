//! Artifacts: an output directory committed under `artifacts/<digest>/` with its manifest
//! (path, size, blake3 and mtime of every file), the checks that tell a healthy artifact from a
//! missing or changed one, and the cheap metadata digest of files outside the store.

use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{IoContext, Store, StoreError, read_json, remove_dir, write_json_atomic};

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

impl Store {
    /// Where an artifact's files live.
    pub fn artifact_dir(&self, digest: &str) -> PathBuf {
        self.root.join("artifacts").join(digest)
    }

    fn manifest_path(&self, digest: &str) -> PathBuf {
        self.root.join("artifacts").join(format!("{digest}.json"))
    }

    /// Moves a finished output directory into the store; returns its digest. Hashing runs
    /// first, unlocked; the check-rename-stamp-manifest sequence runs under the store's commit
    /// lock, so concurrent commits of equal content (two nodes with equal outputs, empty shard
    /// slices, two processes sharing a store) never see or move aside each other's half-committed
    /// artifact.
    ///
    /// # Errors
    /// Unreadable or unsupported files under `dir` (symlinks, special files), and I/O errors.
    pub fn commit_artifact(&self, dir: &Path) -> Result<String, StoreError> {
        let manifest = hash_dir(dir)?;
        let digest = manifest.digest();
        let target = self.artifact_dir(&digest);
        let _committing = self.commit_lock()?;
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
}

pub(super) fn mtime_ns(meta: &fs::Metadata) -> i128 {
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
