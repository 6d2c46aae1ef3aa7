//! `HashKV` of the whole store, or of a key span of it, however many
//! regions hold it.
//!
//! etcd hashes its one store's key history up to a revision; members that
//! applied the same entries hash equal, and the corruption check
//! (`crate::corruption`) compares them. Here the history lies in many
//! regions, each applied on its own, so one member's hash at revision R is
//! taken over every region's replica here once each holds everything at or
//! below R for good:
//!
//! - [`CatchUp::Leaders`]: each region's leader settles R (answers every
//!   write it stamped at or below it) and gives a read index the replica
//!   here applies, as a read across regions does (`range_across`). Idle
//!   regions need no close for this, and a hibernating one stays asleep:
//!   its leader gives the read index in one round without ticks
//!   ([`ForwardOp::ReadIndexAfterQuietly`](crate::remote::ForwardOp)).
//!   Used while there are several regions.
//! - [`CatchUp::Local`]: each replica here waits, briefly, until its own
//!   resolved revision reaches R. No network; an idle region's resolved
//!   revision moves only with its writes or closes, so R must be one the
//!   regions already resolved somewhere (the one-region check, the
//!   start-up check).
//!
//! A lock of a transaction across regions that may still commit at or
//! below R is resolved first (from its primary), and the views taken again.
//!
//! The regions are hashed in key order as one scan
//! (`cairn_mvcc::hash_kv_ranges`): the hash does not depend on where the
//! regions' boundaries are, so a member that applied a split or merge and
//! one that has not yet hash the same history equal, and a store hashes
//! as it did before it split. What the hash does depend on is compaction:
//! a region that applied a compaction on one member and not yet on
//! another holds fewer versions there. Every hash therefore carries its
//! *compaction map* — each region's first key and compaction revision, in
//! key order, neighbours with the same revision joined (a split copies
//! its parent's) — and two hashes are compared only when their maps are
//! equal.
//!
//! A hash of a key span (the start-up check's, one per region of the
//! member asking, each at the revision that region resolved there) cuts
//! each region's range down to the span before the scan, so it too does
//! not depend on where either member's boundaries are. A member hashing
//! spans for a peer gives each what it can within [`SPANS_WAIT`] in all,
//! and after that only spans its regions have already resolved.

use std::time::{Duration, Instant};

use cairn_mvcc::locks::KeySpan;
use cairn_mvcc::KvHash;

use crate::node::kv::StaleRoutes;
use crate::node::range_across::RegionView;
use crate::node::{Node, Region};
use crate::remote::HashParts;
use crate::{Error, Result};

/// How long a member hashing spans for a peer's start-up check waits, in
/// all, for its regions to resolve the revisions asked for (the asker
/// waits 6 s for the answer).
const SPANS_WAIT: Duration = Duration::from_secs(4);

/// How long a replica waits, in [`CatchUp::Local`], for its regions to
/// resolve the revision asked for.
const LOCAL_WAIT: Duration = Duration::from_secs(5);

/// How a member's regions reach a revision (see the module essay): the
/// revision hashed, or a read across regions' timestamp
/// (`Node::regions_caught_up_at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CatchUp {
    /// Each region's leader settles the revision, any the TSO handed out,
    /// leaving a sleeping leader asleep (a hash).
    Leaders,
    /// The same, waking a sleeping leader: a client's read, whose read
    /// lease then comes from heartbeat rounds.
    Read,
    /// Each replica here resolves it by itself.
    Local,
}

/// One member's hash of the whole store's history up to a revision (or
/// of a key span's: the start-up check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoreHash {
    /// The hash; its compaction revision is the highest of any region.
    pub(crate) hash: KvHash,
    /// (first key, compaction revision) of each run of regions compacted
    /// alike, in key order, the first key no lower than the span's start:
    /// only hashes with equal maps are comparable.
    pub(crate) compactions: Vec<(Vec<u8>, i64)>,
}

impl StoreHash {
    /// A hash as a peer sends it: hash, revision, compaction revision and
    /// compaction map.
    pub(crate) fn from_parts(
        hash: u32,
        revision: i64,
        compacted: i64,
        compactions: Vec<(Vec<u8>, i64)>,
    ) -> Self {
        StoreHash {
            hash: KvHash {
                hash,
                revision,
                compacted,
            },
            compactions,
        }
    }

    /// The parts [`StoreHash::from_parts`] takes.
    pub(crate) fn into_parts(self) -> HashParts {
        (
            self.hash.hash,
            self.hash.revision,
            self.hash.compacted,
            self.compactions,
        )
    }

    /// True when `other` hashed the same history: the compaction maps are
    /// equal, and every region is at one compaction (else they are not
    /// comparable, and nothing is said). Regions at different compactions
    /// are hashed as compacted at the highest (`cairn_mvcc::hash_kv_ranges`)
    /// by this version, each at its own by the one before: while a
    /// compaction is under way, members of the two would disagree on equal
    /// data in a rolling upgrade.
    pub(crate) fn comparable(&self, other: &StoreHash) -> bool {
        self.compactions == other.compactions
            && self.compactions.windows(2).all(|w| w[0].1 == w[1].1)
    }
}

impl Node {
    /// This member's [`StoreHash`] at revision `revision` (> 0), its
    /// regions caught up to `at` (≥ `revision`) by `catch_up`. Fails as a
    /// read at `revision` would (future, compacted); `Timeout` when the
    /// regions here do not tile the keyspace for long (a region frozen for
    /// a merge, or one being started after a split).
    pub(crate) async fn store_hash(
        &self,
        at: i64,
        revision: i64,
        catch_up: CatchUp,
    ) -> Result<StoreHash> {
        self.span_hash(&(Vec::new(), Vec::new()), at, revision, catch_up)
            .await
    }

    /// [`Node::store_hash`] of the keys in `span` only (its own compaction
    /// map begins at the span's start).
    pub(crate) async fn span_hash(
        &self,
        span: &KeySpan,
        at: i64,
        revision: i64,
        catch_up: CatchUp,
    ) -> Result<StoreHash> {
        let stale = StaleRoutes::new();
        loop {
            match self.views_for_hash(span, at, catch_up).await? {
                Some(views) => return self.hash_views(span, views, revision).await,
                None => stale.wait().await?,
            }
        }
    }

    /// [`Node::span_hash`] at `revision` of the regions here as they are
    /// ([`CatchUp::Local`]), trying once: for a member that cannot reach
    /// its peers (the start-up check).
    pub(crate) async fn span_hash_now(&self, span: &KeySpan, revision: i64) -> Result<StoreHash> {
        match self.views_for_hash(span, revision, CatchUp::Local).await? {
            Some(views) => self.hash_views(span, views, revision).await,
            None => Err(Error::EpochMismatch),
        }
    }

    /// The view of every data region here overlapping `span`, in key
    /// order, once each holds everything at or below `at` for good;
    /// `None`: look again (the regions do not tile the span, one merged
    /// meanwhile, or a lock was just resolved). A region that split
    /// meanwhile keeps its view, and the split-off part is caught up at
    /// the same `at` (`regions_caught_up_at`): under splits every few
    /// puts, beginning again each time starved the hash.
    async fn views_for_hash(
        &self,
        span: &KeySpan,
        at: i64,
        catch_up: CatchUp,
    ) -> Result<Option<Vec<RegionView>>> {
        let end = (!span.1.is_empty()).then_some(span.1.as_slice());
        let Some(caught) = self
            .regions_caught_up_at(&span.0, end, at, Some(span), catch_up)
            .await?
        else {
            return Ok(None);
        };
        if let Some((region, lock)) = caught.iter().find_map(|(_, lock)| *lock) {
            self.resolve_lock(region, lock).await?;
            return Ok(None);
        }
        Ok(Some(
            caught
                .into_iter()
                .map(|((snap, revs, range), _)| {
                    // Caught up: nothing at or below `at` is left to apply
                    // here, whatever the region's own newest revision.
                    let revs = cairn_mvcc::Revisions {
                        current: revs.current.max(at),
                        ..revs
                    };
                    (snap, revs, range)
                })
                .collect(),
        ))
    }

    /// `r`'s replica here caught up to `at` by `catch_up` (through its
    /// leader: as the region is registered here now).
    pub(super) async fn caught_up_by(
        &self,
        r: std::sync::Arc<Region>,
        at: i64,
        catch_up: CatchUp,
    ) -> Result<std::sync::Arc<Region>> {
        match catch_up {
            CatchUp::Leaders => self.caught_up_quietly_at(r.id, at).await,
            CatchUp::Read => self.caught_up_at(r.id, at).await,
            CatchUp::Local => {
                resolved_here(&r, at).await?;
                Ok(r)
            }
        }
    }

    /// Hashes the keys of `views` (in key order) in `span` at `revision`
    /// as one scan.
    async fn hash_views(
        &self,
        span: &KeySpan,
        views: Vec<RegionView>,
        revision: i64,
    ) -> Result<StoreHash> {
        let views: Vec<RegionView> = views
            .into_iter()
            .map(|(snap, revs, range)| (snap, revs, clipped(range, span)))
            .collect();
        let mut compactions: Vec<(Vec<u8>, i64)> = Vec::new();
        for (_, revs, range) in &views {
            if compactions.last().is_none_or(|(_, c)| *c != revs.compacted) {
                compactions.push((range.start.clone(), revs.compacted));
            }
        }
        let hash = self
            .spans
            .run(move || {
                let ranges: Vec<_> = views.iter().map(|(_, _, r)| r.keys()).collect();
                let parts = views
                    .iter()
                    .zip(&ranges)
                    .map(|((snap, revs, _), keys)| (&**snap, *revs, keys));
                cairn_mvcc::hash_kv_ranges(parts, revision)
            })
            .await?
            .map_err(Error::from)?;
        Ok(StoreHash { hash, compactions })
    }

    /// This member's hash of each span at its own revision
    /// (`ForwardOp::HashSpansAt`), its regions caught up by themselves:
    /// `None` for a span it could not hash (a compacted revision, regions
    /// that do not tile it) or whose regions here had not resolved the
    /// revision within [`SPANS_WAIT`] of the ask. Past that, a span is
    /// still hashed if its regions here have resolved it: one slow span
    /// does not cost the others.
    pub(crate) async fn span_hashes_here(
        &self,
        spans: Vec<(KeySpan, i64)>,
    ) -> Vec<Option<HashParts>> {
        let deadline = tokio::time::Instant::now() + SPANS_WAIT;
        let mut hashes = Vec::with_capacity(spans.len());
        for (span, revision) in spans {
            if tokio::time::Instant::now() >= deadline && !self.resolved_over(&span, revision) {
                hashes.push(None);
                continue;
            }
            let hash = self.span_hash(&span, revision, revision, CatchUp::Local);
            hashes.push(match tokio::time::timeout_at(deadline, hash).await {
                Ok(Ok(h)) => Some(h.into_parts()),
                Ok(Err(e)) => {
                    tracing::debug!(revision, "no hash of a span for a peer: {e}");
                    None
                }
                Err(_) => None,
            });
        }
        hashes
    }

    /// True when every region here overlapping `span` has resolved
    /// `revision`.
    fn resolved_over(&self, span: &KeySpan, revision: i64) -> bool {
        let end = (!span.1.is_empty()).then_some(span.1.as_slice());
        self.regions_overlapping(&span.0, end)
            .iter()
            .all(|(r, _, _)| r.shared.resolved() >= revision)
    }

    /// Each data region here, in key order, as its span and the revision
    /// it has resolved (0: nothing yet).
    pub(crate) fn resolved_spans(&self) -> Vec<(KeySpan, i64)> {
        let mut spans: Vec<(KeySpan, i64)> = self
            .data_regions()
            .iter()
            .map(|r| {
                let range = r.shared.range();
                ((range.start, range.end), r.shared.resolved())
            })
            .collect();
        spans.sort();
        spans
    }

    /// The revision every data region here has resolved (the lowest of
    /// theirs): a [`CatchUp::Local`] hash needs no wait at it.
    pub(crate) fn resolved_everywhere(&self) -> i64 {
        self.data_regions()
            .iter()
            .map(|r| r.shared.resolved())
            .min()
            .unwrap_or(0)
    }
}

/// `range` cut down to the keys in `span` (a region overlapping it).
fn clipped(range: cairn_raft::RegionRange, span: &KeySpan) -> cairn_raft::RegionRange {
    let start = range.start.max(span.0.clone());
    let end = match (range.end.is_empty(), span.1.is_empty()) {
        (true, _) => span.1.clone(),
        (false, true) => range.end,
        (false, false) => range.end.min(span.1.clone()),
    };
    cairn_raft::RegionRange {
        start,
        end,
        ..range
    }
}

/// Waits (at most [`LOCAL_WAIT`]) until `r`'s replica here has resolved
/// `at`.
async fn resolved_here(r: &Region, at: i64) -> Result<()> {
    let deadline = Instant::now() + LOCAL_WAIT;
    while r.shared.resolved() < at {
        if Instant::now() >= deadline {
            return Err(Error::Timeout);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
