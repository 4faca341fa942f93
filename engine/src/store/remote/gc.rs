//! Run records in the shared store and its garbage collection (`flow gc --remote`).
//!
//! Every run with `--remote` keeps its record at `runs/<run id>.json` there, rewritten as nodes
//! finish, as the local store keeps it. Collection deletes only what no run record references
//! (the shared store's and the local store's) **and** what is older than a grace period, so a
//! run still publishing on another machine (blobs written, entry not yet) loses nothing:
//!
//! - a cache entry whose outputs are not all referenced (as the local `flow gc` judges them);
//! - an artifact manifest whose digest is not referenced;
//! - a blob that no kept manifest lists (kept manifests include young unreferenced ones);
//! - a lease not renewed within the grace period (its holder is gone).
//!
//! Entries go first, then manifests, then blobs: a reader that finds an entry can still fetch
//! everything it names. Run records are never deleted (as locally).

use object_store::ObjectMeta;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde::Serialize;
use std::collections::BTreeSet;
use std::time::Duration;

use super::lease::is_generation;
use super::{Remote, RemoteError, RemoteManifest};
use crate::store::CacheEntry;
use crate::store::record::RunRecord;

/// What [`Remote::gc`] deleted (or would delete).
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct RemoteGcReport {
    /// Cache entries.
    pub cache_entries: usize,
    /// Artifact manifests.
    pub artifacts: usize,
    /// Blobs.
    pub blobs: usize,
    /// The blobs' bytes.
    pub bytes: u64,
    /// Leases of holders gone.
    pub leases: usize,
    /// Objects kept only because they are younger than the grace period.
    pub young: usize,
}

impl Remote {
    /// Writes run record `record` to `runs/<id>.json`.
    pub async fn publish_run(&self, record: &RunRecord) -> Result<(), RemoteError> {
        let name = format!("runs/{}.json", record.id);
        self.put_json(&name, record, object_store::PutMode::Overwrite)
            .await
            .map_err(|e| self.failed(&format!("writing {name}"), e))
    }

    /// The run records in the shared store.
    pub async fn runs(&self) -> Result<Vec<RunRecord>, RemoteError> {
        let mut records = Vec::new();
        for meta in self.list("runs", is_json).await? {
            let name = self.relative(&meta.location);
            // One deleted since the listing references nothing.
            records.extend(self.get_json(&name, "a run record").await?);
        }
        Ok(records)
    }

    /// Deletes what no run record references (those in the shared store, plus `local_digests`
    /// from the local store's records) and what is older than `grace`; only counts with
    /// `dry_run`.
    pub async fn gc(
        &self,
        local_digests: &BTreeSet<String>,
        grace: Duration,
        dry_run: bool,
    ) -> Result<RemoteGcReport, RemoteError> {
        let mut referenced = local_digests.clone();
        for record in self.runs().await? {
            referenced.extend(record.digests().cloned());
        }
        let mut sweep = Sweep {
            cutoff: cutoff(grace),
            grace,
            report: RemoteGcReport::default(),
            doomed: Vec::new(),
        };
        self.sweep_entries(&referenced, &mut sweep).await?;
        let (mut kept_blobs, seen) = self.sweep_manifests(&referenced, &mut sweep).await?;
        self.sweep_leases(&mut sweep).await?;
        let blobs = self.list("blobs", is_blob).await?;
        // A publisher may have written a manifest since it was listed: its blobs stay.
        for meta in self.list("artifacts", is_json).await? {
            if !seen.contains(&meta.location) {
                kept_blobs.extend(self.manifest_blobs(&meta.location).await?);
            }
        }
        for meta in blobs {
            let name = self.relative(&meta.location);
            let unreferenced = !kept_blobs.contains(name.trim_start_matches("blobs/"));
            if unreferenced && sweep.old(&meta) {
                sweep.report.blobs += 1;
                sweep.report.bytes += meta.size;
                sweep.doomed.push(meta.location);
            } else {
                sweep.report.young += usize::from(unreferenced);
            }
        }
        if !dry_run {
            for location in &sweep.doomed {
                self.objects
                    .delete(location)
                    .await
                    .map_err(|e| self.failed(&format!("deleting {location}"), e))?;
            }
        }
        Ok(sweep.report)
    }

    /// Dooms old cache entries whose outputs are not all referenced.
    async fn sweep_entries(
        &self,
        referenced: &BTreeSet<String>,
        sweep: &mut Sweep,
    ) -> Result<(), RemoteError> {
        for meta in self.list("cache", is_json).await? {
            let name = self.relative(&meta.location);
            let entry: Option<CacheEntry> = self
                .get(&name)
                .await?
                .and_then(|b| serde_json::from_slice(&b).ok());
            let unreferenced =
                entry.is_none_or(|e| e.outputs.values().any(|d| !referenced.contains(d)));
            if unreferenced && sweep.old(&meta) {
                sweep.report.cache_entries += 1;
                sweep.doomed.push(meta.location);
            } else {
                sweep.report.young += usize::from(unreferenced);
            }
        }
        Ok(())
    }

    /// Dooms old unreferenced manifests; returns the blobs the kept ones list and every
    /// manifest seen.
    async fn sweep_manifests(
        &self,
        referenced: &BTreeSet<String>,
        sweep: &mut Sweep,
    ) -> Result<(BTreeSet<String>, BTreeSet<ObjectPath>), RemoteError> {
        let (mut kept_blobs, mut seen) = (BTreeSet::new(), BTreeSet::new());
        for meta in self.list("artifacts", is_json).await? {
            seen.insert(meta.location.clone());
            let name = self.relative(&meta.location);
            let digest = name
                .trim_start_matches("artifacts/")
                .trim_end_matches(".json");
            let unreferenced = !referenced.contains(digest);
            if unreferenced && sweep.old(&meta) {
                sweep.report.artifacts += 1;
                sweep.doomed.push(meta.location);
                continue;
            }
            sweep.report.young += usize::from(unreferenced);
            kept_blobs.extend(self.manifest_blobs(&meta.location).await?);
        }
        Ok((kept_blobs, seen))
    }

    /// The blobs a manifest lists (none when it is gone).
    async fn manifest_blobs(&self, location: &ObjectPath) -> Result<Vec<String>, RemoteError> {
        let manifest: Option<RemoteManifest> = self
            .get_json(&self.relative(location), "a manifest")
            .await?;
        Ok(manifest.map_or_else(Vec::new, |m| {
            m.files.into_iter().map(|f| f.blake3).collect()
        }))
    }

    /// Dooms leases not renewed within the grace period nor twice their own time to live.
    async fn sweep_leases(&self, sweep: &mut Sweep) -> Result<(), RemoteError> {
        for meta in self.list_below("leases").await? {
            let name = self.relative(&meta.location);
            let ttl = self
                .get(&name)
                .await?
                .and_then(|b| serde_json::from_slice::<super::LeaseBody>(&b).ok())
                .map_or(Duration::ZERO, |body| Duration::from_millis(body.ttl_ms));
            if sweep.old(&meta) && sweep.older_than(&meta, ttl * 2) {
                sweep.report.leases += 1;
                sweep.doomed.push(meta.location);
            }
        }
        Ok(())
    }

    /// The lease objects, one folder below `leases` (`leases/<key>/<generation>.json`).
    async fn list_below(&self, dir: &str) -> Result<Vec<ObjectMeta>, RemoteError> {
        let listed = self
            .objects
            .list_with_delimiter(Some(&self.path(dir)))
            .await
            .map_err(|e| self.failed(&format!("listing {dir}/"), e))?;
        let mut objects = Vec::new();
        for folder in listed.common_prefixes {
            let folder = self.relative(&folder);
            objects.extend(self.list(&folder, is_generation).await?);
        }
        Ok(objects)
    }

    /// An object's name below the prefix (what [`Remote::path`] was given).
    fn relative(&self, location: &ObjectPath) -> String {
        let full = location.as_ref();
        if self.prefix.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(&format!("{}/", self.prefix))
                .unwrap_or(full)
                .to_string()
        }
    }
}

/// What one collection decided so far.
struct Sweep {
    cutoff: jiff::Timestamp,
    grace: Duration,
    report: RemoteGcReport,
    doomed: Vec<ObjectPath>,
}

impl Sweep {
    /// Whether the object is older than the grace period.
    fn old(&self, meta: &ObjectMeta) -> bool {
        modified(meta).is_some_and(|modified| modified < self.cutoff)
    }

    /// Whether the object is older than `age` (beyond the grace period).
    fn older_than(&self, meta: &ObjectMeta, age: Duration) -> bool {
        age <= self.grace || modified(meta).is_some_and(|modified| modified < cutoff(age))
    }
}

fn modified(meta: &ObjectMeta) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_millisecond(meta.last_modified.timestamp_millis()).ok()
}

/// Now minus `age` (the distant past when that does not fit).
fn cutoff(age: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(age)
        .ok()
        .and_then(|age| jiff::Timestamp::now().checked_sub(age).ok())
        .unwrap_or(jiff::Timestamp::MIN)
}

fn is_json(name: &str) -> bool {
    name.ends_with(".json")
}

/// A blake3 in hex: a blob's name.
fn is_blob(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::record::{NodeRecord, RunStatus};
    use object_store::PutPayload;
    use object_store::memory::InMemory;
    use std::sync::Arc;

    fn produce(store: &Store, content: &str) -> CacheEntry {
        crate::store::remote::tests::produce(store, &[("x.txt", content)])
    }

    fn record(id: &str, entry: &CacheEntry) -> RunRecord {
        let mut node = NodeRecord::pending("n", "shell");
        node.outputs = entry.outputs.clone();
        RunRecord {
            id: id.into(),
            workflow: "w".into(),
            file: "w.yaml".into(),
            trigger: "manual".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: None,
            status: RunStatus::Succeeded,
            params: Default::default(),
            nodes: vec![node],
        }
    }

    #[tokio::test]
    async fn only_old_unreferenced_objects_go_and_entries_before_their_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("s"));
        store.create().unwrap();
        let objects = Arc::new(InMemory::new());
        let remote = Remote::with("memory://gc", objects.clone(), "team");
        let kept = produce(&store, "kept");
        let dropped = produce(&store, "dropped");
        let local_only = produce(&store, "local");
        for (key, entry) in [("k1", &kept), ("k2", &dropped), ("k3", &local_only)] {
            remote.publish(key, entry, &store).await.unwrap();
        }
        remote.publish_run(&record("r1", &kept)).await.unwrap();
        let orphan = remote.path(&format!("blobs/{}", "0".repeat(64)));
        objects
            .put(&orphan, PutPayload::from_static(b"half a publish"))
            .await
            .unwrap();
        let local: BTreeSet<String> = local_only.outputs.values().cloned().collect();
        // A live lease (60 s to live), and folder markers some S3 servers keep: all stay.
        let lease =
            serde_json::json!({"owner": "x", "ttl_ms": 60_000, "renewals": 0, "renewed_at": "now"});
        objects
            .put(
                &remote.path("leases/k9/0000000001.json"),
                PutPayload::from(lease.to_string()),
            )
            .await
            .unwrap();
        for marker in ["leases/k9", "blobs/", "cache/x"] {
            objects
                .put(&remote.path(marker), PutPayload::from_static(b""))
                .await
                .unwrap();
        }

        // Everything is young: nothing goes, whatever references it.
        let young = remote
            .gc(&local, Duration::from_secs(3600), false)
            .await
            .unwrap();
        assert_eq!((young.cache_entries, young.blobs, young.young), (0, 0, 3));

        let dry = remote.gc(&local, Duration::ZERO, true).await.unwrap();
        let expected = RemoteGcReport {
            cache_entries: 1,
            artifacts: 1,
            blobs: 2,
            bytes: "dropped".len() as u64 + "half a publish".len() as u64,
            leases: 0,
            young: 0,
        };
        assert_eq!(dry, expected);
        assert!(
            remote.entry("k2").await.unwrap().is_some(),
            "a dry run deletes nothing"
        );

        assert_eq!(
            remote.gc(&local, Duration::ZERO, false).await.unwrap(),
            expected
        );
        assert!(remote.entry("k2").await.unwrap().is_none());
        assert!(objects.head(&orphan).await.is_err());
        let fresh = Store::at(dir.path().join("fresh"));
        fresh.create().unwrap();
        for key in ["k1", "k3"] {
            assert!(remote.fetch(key, &fresh).await.unwrap().is_some(), "{key}");
        }
        assert_eq!(remote.runs().await.unwrap().len(), 1);
        for kept in ["leases/k9/0000000001.json", "leases/k9", "cache/x"] {
            assert!(objects.head(&remote.path(kept)).await.is_ok(), "{kept}");
        }
    }
}
