//! Leases whose keys lie in several regions.
//!
//! The lease table — records, and the lease → key index — lives in the
//! first region (`cairn_mvcc::lease`). A put with a lease in another
//! region is a transaction across regions that claims the lease there
//! (`node::txn_across`). A revoke is one command in the first region while
//! every key its lease indexes is there; otherwise that region refuses it
//! (`LeaseOutsideFirstRegion`, never shown to a client) and it runs here,
//! as a transaction across regions:
//!
//! 1. read the keys the lease indexes;
//! 2. run [`cairn_mvcc::lease::revoke_txn`] over them — each key deleted
//!    if it still holds the lease, all at one revision — claiming the
//!    lease exclusively in the first region. That region's prewrite checks
//!    that the transaction names every key the lease indexes now (one may
//!    have been attached since step 1: then it answers them, and this
//!    starts over with them); once claimed, no key can join the lease;
//! 3. the first region's part of the commit deletes the lease and its
//!    index.
//!
//! An expiry is the same revoke, decided by the first region's leader in a
//! leader term: its claim is placed only from an entry of that term (a
//! later leader may have renewed the lease), else the expiry is dropped.
//!
//! A key outside the first region that was detached from its lease (put
//! again with another lease or none, or deleted) stays in the index until
//! the lease goes (so does one the first region absorbed by a merge since),
//! so the keys a lease reports (`TimeToLive`) are checked against the
//! keys' own records here. A put onto a lease or a revoke by a caller
//! limited by auth, refused because an indexed key outside is not theirs
//! to write, has those entries trimmed here ([`Node::trim_lease_index`])
//! and is checked once more: refused again only if such a key is still on
//! the lease, as in etcd.

use cairn_api::etcdserverpb::RangeRequest;
use cairn_auth::Writable;
use cairn_mvcc::lease;
use cairn_mvcc::locks::LeaseClaims;
use cairn_raft::Command;
use futures::{StreamExt, TryStreamExt};

use super::txn_across::{Attempt, Hook, Plan};
use crate::node::{Node, DATA_REGION};
use crate::remote::ForwardOp;
use crate::{Access, Error, Result};

/// Keys looked up at once (TimeToLive, trimming the index).
const LOOKUPS_AT_ONCE: usize = 16;

impl Node {
    /// Revokes lease `id` across regions (see the module essay); the
    /// revision after it. `decided_in`: not 0 for an expiry the lease
    /// leader of that term decided (`Ok(None)`: that term is over, and the
    /// expiry was dropped).
    pub(crate) async fn revoke_across(
        &self,
        id: i64,
        decided_in: u64,
        access: &Access,
    ) -> Result<Option<i64>> {
        self.revoke_naming(id, decided_in, access, None).await
    }

    /// Tests: revokes lease `id` as a client's revoke would, its first
    /// attempt naming `keys` as the lease's (as if it had read the index
    /// before a transaction attached more).
    #[doc(hidden)]
    pub async fn revoke_naming_first(&self, id: i64, keys: Vec<Vec<u8>>) -> Result<Option<i64>> {
        self.revoke_naming(id, 0, &Access::Internal, Some(keys))
            .await
    }

    /// Tests: one attempt of a revoke of lease `id` naming `keys` (fewer
    /// than it has), held once its primary answered that the lease has
    /// more (its narrow lock placed there) until `go` fires; then it
    /// widens and stops after its primary's commit as if its node died.
    #[doc(hidden)]
    pub async fn revoke_widened_then_crash(
        &self,
        id: i64,
        keys: Vec<Vec<u8>>,
        go: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<()> {
        let plan = Plan {
            req: lease::revoke_txn(id, keys),
            leases: LeaseClaims {
                revoke: vec![id],
                ..LeaseClaims::default()
            },
        };
        let hook = Some(Hook::HoldWideningThenCrash(Some(go)));
        self.txn_across_once(&plan, &Access::Internal, hook)
            .await
            .map(drop)
    }

    /// Tests: holds the next expiry revoked across regions here after its
    /// first attempt's prewrites, until the returned sender fires (or is
    /// dropped).
    #[doc(hidden)]
    pub fn hold_next_expiry(&self) -> tokio::sync::oneshot::Sender<()> {
        let (go, held) = tokio::sync::oneshot::channel();
        *self.expiry_hold.lock() = Some(held);
        go
    }

    async fn revoke_naming(
        &self,
        id: i64,
        decided_in: u64,
        access: &Access,
        mut named: Option<Vec<Vec<u8>>>,
    ) -> Result<Option<i64>> {
        let stale = super::kv::StaleRoutes::new();
        let mut hook = None;
        if decided_in != 0 {
            hook = self.expiry_hold.lock().take().map(Hook::HoldAfterPrewrite);
        }
        loop {
            let keys = match named.take() {
                Some(keys) => keys,
                None => {
                    let (snap, _) = self.linearizable_view(DATA_REGION).await?;
                    if lease::get(&*snap, id)?.is_none() {
                        return Err(Error::Rejected(cairn_mvcc::Rejection::LeaseNotFound));
                    }
                    lease::attached_keys(&*snap, id)?
                }
            };
            let plan = Plan {
                req: lease::revoke_txn(id, keys),
                leases: LeaseClaims {
                    revoke: vec![id],
                    decided_in,
                    ..LeaseClaims::default()
                },
            };
            match self.txn_across_once(&plan, access, hook.take()).await {
                Ok(Attempt::Done(resp)) => return Ok(Some(resp.header.map_or(0, |h| h.revision))),
                Ok(Attempt::Abandoned) => return Ok(None),
                Ok(Attempt::LeaseKeys(keys)) => named = Some(keys),
                Ok(Attempt::Again) | Err(Error::RolledBack) => stale.wait().await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Of the keys lease `id` indexes, those that still hold it, each by
    /// its own record: one in the first region (as of now: its replica
    /// here is caught up first) from that region's view — the index there
    /// can name keys detached while they lived in a region it absorbed
    /// since — and one outside in its own region, [`LOOKUPS_AT_ONCE`] at a
    /// time.
    pub(crate) async fn still_attached(&self, id: i64, keys: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>> {
        let first = self.caught_up(DATA_REGION).await?;
        let (view, _, range) = first.shared.read_view_in();
        let (inside, outside): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            keys.into_iter().partition(|k| range.contains(k));
        let mut held = self
            .spans
            .run(move || lease::still_holding(&*view, id, inside))
            .await??;
        let holds = self.hold_lease(id, &outside).await?;
        held.extend(
            outside
                .into_iter()
                .zip(holds)
                .filter_map(|(k, h)| h.then_some(k)),
        );
        held.sort();
        Ok(held)
    }

    /// Drops from the index of each lease in `ids` the keys outside the
    /// first region that a caller limited to `writable` may not write and
    /// that hold the lease no more (`cairn_mvcc::lease::unindex`: an entry
    /// goes only if it still has the value read here before the keys were
    /// looked up); true if any went. Only those keys can have refused the
    /// caller, so only they are looked up.
    ///
    /// False, with nothing looked up or trimmed, as soon as the refusal is
    /// known to be right: a key the caller may not write holds a lease,
    /// by its record in the first region or as a look-up found it. An
    /// error only when it is not known (a look-up failed, and none that
    /// answered found such a key).
    pub(crate) async fn trim_lease_index(&self, ids: &[i64], writable: &Writable) -> Result<bool> {
        let mut trimmed = false;
        for &id in ids {
            let first = self.caught_up(DATA_REGION).await?;
            let (view, _, range) = first.shared.read_view_in();
            let (own, mine) = (range.clone(), writable.clone());
            let (entries, refused_here) = self
                .spans
                .run(move || {
                    let entries = lease::indexed(&*view, id)?;
                    // The first region's own keys the caller may not
                    // write, by their records.
                    let here = entries
                        .iter()
                        .filter(|(k, _)| own.contains(k) && !mine.allows(k))
                        .map(|(k, _)| k.clone())
                        .collect();
                    let held = lease::still_holding(&*view, id, here)?;
                    Ok::<_, cairn_mvcc::Error>((entries, !held.is_empty()))
                })
                .await??;
            if refused_here {
                return Ok(false);
            }
            let outside: Vec<(Vec<u8>, Vec<u8>)> = entries
                .into_iter()
                .filter(|(k, _)| !range.contains(k) && !writable.allows(k))
                .collect();
            let keys: Vec<Vec<u8>> = outside.iter().map(|(k, _)| k.clone()).collect();
            let holds: Vec<Result<bool>> = if cairn_raft::planted::on("blind-lease-trim") {
                keys.iter().map(|_| Ok(false)).collect()
            } else {
                futures::stream::iter(keys)
                    .map(|k| self.holds_lease(id, k))
                    .buffered(LOOKUPS_AT_ONCE)
                    .collect()
                    .await
            };
            if holds.iter().any(|h| matches!(h, Ok(true))) {
                return Ok(false);
            }
            let mut detached = Vec::new();
            for (entry, held) in outside.into_iter().zip(holds) {
                if !held? {
                    detached.push(entry);
                }
            }
            if detached.is_empty() {
                continue;
            }
            let unindex = Command::LeaseUnindex { id, detached };
            self.submit(DATA_REGION, ForwardOp::Plain(unindex))
                .await?
                .reply()?;
            trimmed = true;
        }
        Ok(trimmed)
    }

    /// For each of `keys`, whether it holds lease `id` now (linearizable
    /// reads, [`LOOKUPS_AT_ONCE`] at a time).
    async fn hold_lease(&self, id: i64, keys: &[Vec<u8>]) -> Result<Vec<bool>> {
        futures::stream::iter(keys.to_vec())
            .map(|k| self.holds_lease(id, k))
            .buffered(LOOKUPS_AT_ONCE)
            .try_collect()
            .await
    }

    /// True when `key` holds lease `id` now (a linearizable read).
    async fn holds_lease(&self, id: i64, key: Vec<u8>) -> Result<bool> {
        let req = RangeRequest {
            key,
            ..Default::default()
        };
        let r = self.range(req, &Access::Internal).await?;
        Ok(r.kvs.first().is_some_and(|kv| kv.lease == id))
    }
}
