//! Leases on the shared store: who builds a key while it is not published yet, so that two
//! machines starting the same 7B node at once do not both train it.
//!
//! ```text
//! <remote>/leases/<key>/<generation>.json   {owner, ttl_ms, renewals, renewed_at}
//! ```
//!
//! A lease is taken by writing generation 1 **create-only** (`PutMode::Create`: of two writers
//! exactly one succeeds). Its holder **renews** it every third of its time to live by
//! rewriting its own object with one more renewal (only the holder writes its generation).
//! A lease **expires** when a waiter has seen the same renewal count for longer than the time to
//! live, by its own monotonic clock (so machines' wall clocks need not agree); the waiter then
//! takes over by creating the next generation, again create-only, so one waiter wins. A holder
//! that finds a later generation has lost the lease: it stops renewing (its result, if it gets
//! one, is published create-only as always, so nothing is corrupted). The holder deletes its
//! lease after publishing, or after failing, so the next claimer need not wait.
//!
//! While waiting, a claimer looks for the key's cache entry on every poll: when the holder
//! publishes, the waiter downloads the result and the node counts as cached.

use object_store::{ObjectStoreExt, PutMode};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Remote, RemoteError};
use crate::store::record::now_rfc3339;
use crate::store::{CacheEntry, Store};

/// How long a lease lives without a renewal unless `FLOW_LEASE_TTL` says otherwise.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);

/// A lease object's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseBody {
    /// Who holds it: host, process and run.
    pub owner: String,
    /// How long it lives without a renewal, in milliseconds.
    pub ttl_ms: u64,
    /// Renewals so far; a waiter that sees it unchanged for `ttl_ms` takes the lease over.
    pub renewals: u64,
    /// When it was last renewed (RFC 3339, the holder's clock; for people, not for expiry).
    pub renewed_at: String,
}

/// What [`Remote::claim`] got.
pub enum Claim {
    /// This process builds the key; release the lease when done.
    Held(Lease),
    /// Another process published the key meanwhile; its outputs are in the local store now.
    Done(CacheEntry),
}

/// A held lease, renewed in the background until released or dropped (a dropped lease is no
/// longer renewed and expires).
pub struct Lease {
    remote: Remote,
    key: String,
    generation: u64,
    renewer: tokio::task::JoinHandle<()>,
    _stop_renewing: DropGuard,
}

impl Remote {
    /// Claims the right to build `key` for `owner`: takes a free or expired lease, or waits
    /// while another process holds one (calling `waiting` with a sentence about the holder each
    /// time the holder changes) until that process publishes the key or its lease expires.
    /// `None` when `cancel` fired first.
    pub async fn claim(
        &self,
        key: &str,
        owner: &str,
        local: &Store,
        cancel: &CancellationToken,
        waiting: &(dyn Fn(&str) + Sync),
    ) -> Result<Option<Claim>, RemoteError> {
        let poll = (self.lease_ttl / 6).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut seen: Option<(u64, u64, Instant)> = None;
        loop {
            if let Some(entry) = self.fetch(key, local).await? {
                return Ok(Some(Claim::Done(entry)));
            }
            let next = match self.holder(key).await? {
                None => 1,
                Some((generation, body)) => {
                    let unchanged = seen
                        .filter(|(g, renewals, _)| (*g, *renewals) == (generation, body.renewals));
                    match unchanged {
                        Some((_, _, since))
                            if since.elapsed() > Duration::from_millis(body.ttl_ms) =>
                        {
                            generation + 1
                        }
                        Some(_) => 0,
                        None => {
                            if seen.is_none_or(|(g, _, _)| g != generation) {
                                waiting(&format!(
                                    "waiting for {} to build it (it holds the lease in {})",
                                    body.owner, self.url
                                ));
                            }
                            seen = Some((generation, body.renewals, Instant::now()));
                            0
                        }
                    }
                }
            };
            if next > 0 {
                let Some(lease) = self.take(key, next, owner).await? else {
                    // Another claimer was first: look at its lease right away.
                    continue;
                };
                // The previous holder may have published just before giving up the lease.
                if let Some(entry) = self.entry(key).await? {
                    lease.release().await;
                    return self
                        .fetch(key, local)
                        .await
                        .map(|e| e.or(Some(entry)).map(Claim::Done));
                }
                return Ok(Some(Claim::Held(lease)));
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = cancel.cancelled() => return Ok(None),
            }
        }
    }

    fn lease_name(key: &str, generation: u64) -> String {
        format!("leases/{key}/{generation:010}.json")
    }

    /// The lease generations of `key` there are, ascending.
    async fn generations(&self, key: &str) -> Result<Vec<u64>, RemoteError> {
        let mut generations: Vec<u64> = self
            .list(&format!("leases/{key}"), is_generation)
            .await?
            .iter()
            .filter_map(|o| o.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        generations.sort_unstable();
        Ok(generations)
    }

    /// The latest lease of `key` and its content, if any.
    async fn holder(&self, key: &str) -> Result<Option<(u64, LeaseBody)>, RemoteError> {
        let Some(&generation) = self.generations(key).await?.last() else {
            return Ok(None);
        };
        // `None` when released between the listing and the read: free now.
        let body: Option<LeaseBody> = self
            .get_json(&Self::lease_name(key, generation), "a lease")
            .await?;
        Ok(body.map(|body| (generation, body)))
    }

    /// Creates generation `generation` of `key`'s lease; `None` when another claimer did first.
    async fn take(
        &self,
        key: &str,
        generation: u64,
        owner: &str,
    ) -> Result<Option<Lease>, RemoteError> {
        let body = LeaseBody {
            owner: owner.to_string(),
            ttl_ms: self.lease_ttl.as_millis() as u64,
            renewals: 0,
            renewed_at: now_rfc3339(),
        };
        let name = Self::lease_name(key, generation);
        match self.put_json(&name, &body, PutMode::Create).await {
            Ok(()) => {}
            Err(object_store::Error::AlreadyExists { .. }) => return Ok(None),
            Err(e) => return Err(self.failed(&format!("writing {name}"), e)),
        }
        tracing::info!(key, generation, "took the lease");
        let stop = CancellationToken::new();
        let renewer = tokio::spawn(renew(
            self.clone(),
            key.to_string(),
            generation,
            body,
            stop.clone(),
        ));
        Ok(Some(Lease {
            remote: self.clone(),
            key: key.to_string(),
            generation,
            renewer,
            _stop_renewing: stop.drop_guard(),
        }))
    }
}

/// Rewrites the lease with one more renewal every third of its time to live, until stopped or
/// until a later generation shows that another process took it over.
async fn renew(
    remote: Remote,
    key: String,
    generation: u64,
    mut body: LeaseBody,
    stop: CancellationToken,
) {
    let every = Duration::from_millis(body.ttl_ms / 3).max(Duration::from_millis(10));
    let name = Remote::lease_name(&key, generation);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        if let Ok(generations) = remote.generations(&key).await
            && generations.last().is_some_and(|g| *g > generation)
        {
            tracing::warn!(key = %key, "lost the lease: another process took it over after it seemed expired");
            return;
        }
        body.renewals += 1;
        body.renewed_at = now_rfc3339();
        if let Err(e) = remote.put_json(&name, &body, PutMode::Overwrite).await {
            tracing::warn!(key = %key, "cannot renew the lease: {e}");
        }
    }
}

/// `<generation>.json`: a lease's name.
pub(super) fn is_generation(name: &str) -> bool {
    name.strip_suffix(".json")
        .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
}

impl Lease {
    /// The lease's generation (1 for a fresh lease, more after take-overs).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Stops renewing and deletes this lease and the expired ones before it.
    pub async fn release(self) {
        let Lease {
            remote,
            key,
            generation,
            renewer,
            _stop_renewing,
        } = self;
        drop(_stop_renewing);
        let _ = renewer.await;
        let Ok(generations) = remote.generations(&key).await else {
            return;
        };
        for g in generations.into_iter().filter(|g| *g <= generation) {
            let path = remote.path(&Remote::lease_name(&key, g));
            if let Err(e) = remote.objects.delete(&path).await {
                tracing::warn!(key = %key, "cannot delete lease {path}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use std::sync::Arc;

    fn remote(objects: &Arc<InMemory>, ttl_ms: u64) -> Remote {
        let mut remote = Remote::with("memory://leases", objects.clone(), "p");
        remote.lease_ttl = Duration::from_millis(ttl_ms);
        remote
    }

    fn store(dir: &tempfile::TempDir, name: &str) -> Store {
        let store = Store::at(dir.path().join(name));
        store.create().unwrap();
        store
    }

    async fn claim(remote: &Remote, owner: &str, local: &Store) -> Option<Claim> {
        let cancel = CancellationToken::new();
        remote
            .claim("k", owner, local, &cancel, &|_| {})
            .await
            .unwrap()
    }

    fn held(claim: Option<Claim>) -> Lease {
        match claim {
            Some(Claim::Held(lease)) => lease,
            _ => panic!("expected to hold the lease"),
        }
    }

    #[tokio::test]
    async fn a_waiter_gets_the_holders_result_once_it_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (store(&dir, "a"), store(&dir, "b"));
        let objects = Arc::new(InMemory::new());
        let remote = remote(&objects, 400);
        let lease = held(claim(&remote, "a", &a).await);
        assert_eq!(lease.generation(), 1);
        let said = std::sync::Mutex::new(Vec::new());
        let waiter = {
            let (remote, b) = (remote.clone(), b.clone());
            tokio::spawn(async move {
                let cancel = CancellationToken::new();
                let note = |s: &str| said.lock().unwrap().push(s.to_string());
                let claim = remote.claim("k", "b", &b, &cancel, &note).await.unwrap();
                (claim, said.into_inner().unwrap())
            })
        };
        // The holder works for three lifetimes of its lease, renewing it; the waiter waits.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(!waiter.is_finished());
        let entry = crate::store::remote::tests::produce(&a, &[("x.txt", "result")]);
        remote.publish("k", &entry, &a).await.unwrap();
        lease.release().await;
        let (claim, said) = waiter.await.unwrap();
        assert!(matches!(claim, Some(Claim::Done(e)) if e == entry));
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("waiting for a "), "{said:?}");
        assert!(remote.generations("k").await.unwrap().is_empty());
        assert!(b.cache_entry("k").is_some());
    }

    #[tokio::test]
    async fn an_abandoned_lease_expires_and_one_waiter_takes_it_over() {
        let dir = tempfile::tempdir().unwrap();
        let local = store(&dir, "a");
        let objects = Arc::new(InMemory::new());
        let remote = remote(&objects, 300);
        // A holder that died: its lease is no longer renewed.
        drop(held(claim(&remote, "dead", &local).await));
        let started = Instant::now();
        let spawn = |owner: &'static str| {
            let (remote, local) = (remote.clone(), local.clone());
            tokio::spawn(async move { held(claim(&remote, owner, &local).await) })
        };
        let (mut b, mut c) = (spawn("b"), spawn("c"));
        let (winner, mut loser) = tokio::select! {
            lease = &mut b => (lease.unwrap(), c),
            lease = &mut c => (lease.unwrap(), b),
        };
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(winner.generation(), 2);
        // The winner renews its lease: the other one keeps waiting past the time to live.
        let still = tokio::time::timeout(Duration::from_millis(1000), &mut loser).await;
        assert!(still.is_err(), "the second waiter took a live lease");
        winner.release().await;
        let next = loser.await.unwrap();
        assert_eq!(next.generation(), 1, "a released key starts afresh");
        next.release().await;
        assert!(remote.generations("k").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_claim_returns_none() {
        let dir = tempfile::tempdir().unwrap();
        let local = store(&dir, "a");
        let objects = Arc::new(InMemory::new());
        let remote = remote(&objects, 10_000);
        let _lease = held(claim(&remote, "a", &local).await);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let claimed = remote.claim("k", "b", &local, &cancel, &|_| {}).await;
        assert!(matches!(claimed, Ok(None)));
    }
}
