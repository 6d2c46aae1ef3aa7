//! What a backup across regions is read from: every data region at one
//! revision, and the lease table at that same revision.
//!
//! The regions share this node's engine, so one engine view taken after
//! every region caught up to a revision R holds each of them complete up
//! to R, and the export leaves out the versions above it. The keys are not
//! all there is, though: the lease records are not versioned. They live in
//! the region holding the first key (`cairn_mvcc::lease`), and must be the
//! table as of R — a lease revoked above R would leave its keys in the
//! backup without their lease.
//!
//! So the backup is read from two views:
//! 1. take a read timestamp T and catch the first region up to it; take its
//!    view, R — its newest revision, or T when that is higher — and, in
//!    the same look, any lock placed below R: on a key, or revoking a
//!    lease (such a lock may hold no key there). It may commit at or below
//!    R, so it is waited for or resolved, and the view taken again. With
//!    none, the view holds the lease table as of R: every write at or
//!    below R there was applied (caught up to T, and its own newest), and
//!    a change to the table still to come commits above R.
//! 2. catch every region up to R, following splits as a read across
//!    regions does (the split-off part caught up at the same R), waiting
//!    for or resolving any lock that may still commit at or below R;
//! 3. take the engine view the keys come from, after every check, and the
//!    compaction revisions of the regions tiling the keyspace after it (a
//!    compaction past R begins the backup again).
//!
//! It used to be one view, the first region's, which had to be taken with
//! that region at or below R: when the region had moved past, every region
//! caught up again to where it was, and a split anywhere began the whole
//! backup again. Under writes to the first region, or splits every few
//! puts, that chased without end.

use std::sync::Arc;

use cairn_mvcc::locks::KeySpan;

use super::kv::StaleRoutes;
use super::store_hash::CatchUp;
use crate::node::Node;
use crate::Result;

/// Views to export a backup from.
pub(crate) struct BackupViews {
    /// Holds every key at or below `revs.current`.
    pub(crate) keys: Arc<dyn cairn_storage::Snapshot>,
    /// Holds the lease table as of `revs.current`.
    pub(crate) leases: Arc<dyn cairn_storage::Snapshot>,
    /// The revision the backup holds, and the compaction revision the
    /// export applies.
    pub(crate) revs: cairn_mvcc::Revisions,
}

impl Node {
    /// [`BackupViews`] of every data region (see the module essay).
    pub(crate) async fn views_for_backup(&self) -> Result<BackupViews> {
        let stale = StaleRoutes::new();
        let everything: KeySpan = (Vec::new(), Vec::new());
        loop {
            // 1. The region holding the lease table.
            let t = self.read_timestamp().await?;
            let Some((first, _, _)) = self.regions_overlapping(b"", Some(&[0])).pop() else {
                stale.wait().await?;
                continue;
            };
            let first = self.caught_up_at(first.id, t).await?;
            let (leases, at, range, lock) = first.shared.lease_table_view(t);
            if !range.start.is_empty() || range.is_empty() {
                // Frozen for a merge, or no longer the first.
                stale.wait().await?;
                continue;
            }
            if let Some(lock) = lock {
                self.resolve_lock(first.id, lock).await?;
                continue;
            }
            // 2. Every region caught up to R.
            let Some(caught) = self
                .regions_caught_up_at(b"", None, at, Some(&everything), CatchUp::Read)
                .await?
            else {
                stale.wait().await?;
                continue;
            };
            if let Some((region, lock)) = caught.iter().find_map(|(_, lock)| *lock) {
                self.resolve_lock(region, lock).await?;
                continue;
            }
            // 3. The keys' view, after every check.
            let keys = self.engine.snapshot();
            let Some(now) = self
                .revisions_after_view(std::slice::from_ref(&everything), &stale)
                .await?
            else {
                stale.wait().await?;
                continue;
            };
            if now.compacted > at {
                stale.wait().await?;
                continue;
            }
            return Ok(BackupViews {
                keys,
                leases,
                revs: cairn_mvcc::Revisions {
                    current: at,
                    compacted: now.compacted,
                },
            });
        }
    }
}
