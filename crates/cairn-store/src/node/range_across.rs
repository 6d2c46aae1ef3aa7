//! A `Range` whose keys lie in several regions, read at one timestamp
//! (issue 17, phase 3): no torn reads, in key order, with etcd's count,
//! limit, sort and `more` across region boundaries.
//!
//! Reading each region at its own newest state is not a snapshot: two
//! regions' read indexes are taken at two moments, and a write in one
//! acknowledged before a write in the other began can be missed while the
//! later one is seen (two such reads can disagree on their order). So:
//!
//! 1. take a read timestamp T from the TSO: the newest it has handed out
//!    (a read uses up no revision), from a leader that confirms it still
//!    leads after answering (a leader paused past an election would
//!    answer below its successor's). Every write acknowledged before the
//!    read began got its timestamp, which is its revision, at or below T;
//!    every write that begins after T was taken gets one above.
//!    (A group of writes applies only in the leader term it was stamped
//!    in, `Command::InTerm`: one stamped before a leader change cannot
//!    commit after a read the next leader served.)
//! 2. In each region, its leader waits until every write it stamped at or
//!    below T is answered (`Proposer::settled`: a group registers before
//!    it fetches its timestamps, so a group with a timestamp below T is
//!    seen, and one registering later that gets a timestamp at or below T
//!    from a stale TSO fetches again), then gives a read index, which the
//!    replica here waits to apply. A leader elected since has every entry of its predecessors
//!    that can still commit in its log before its read index.
//! 3. Read every region at revision T (a region's newest revision when
//!    that is lower: nothing at or below T is left to apply there), each
//!    part cut to its region, and merge them (`cairn_mvcc::range_parts`: in
//!    key order, a limited read reads values only until its limit is met).
//!
//! The header carries T: the store's revision as of the read, above every
//! revision the answer holds. A read at an older revision reads every
//! region there, and one above T is a future revision. While there is
//! more than one data region, every linearizable Range takes this path,
//! even one of a single key in one region (`Node::range`): a region's own
//! newest revision is not the store's, and only a timestamp says whether
//! a revision another region wrote is in the future. (A serializable read
//! of one region stays on its replica, as etcd's does.)
//!
//! A serializable read across regions is served by the replica alone, at
//! the lowest revision its regions have resolved (`range_serializable`).

use cairn_api::etcdserverpb::{RangeRequest, RangeResponse};
use cairn_mvcc::locks::{KeySpan, LockRef};
use futures::{StreamExt, TryStreamExt};

use crate::node::store_hash::CatchUp;
use crate::node::{Node, META_REGION};
use crate::remote::ForwardOp;
use crate::{Access, Error, Result};

/// Regions caught up at once for one read.
pub(super) const CATCH_UP_AT_ONCE: usize = 16;

impl Node {
    /// Serves `req` at a timestamp: its keys lie in more than one region,
    /// or there are several regions (see the module essay). Regions routed
    /// by a replica that has not applied a split yet are routed again.
    pub(crate) async fn range_across(
        &self,
        req: RangeRequest,
        access: &Access,
    ) -> Result<RangeResponse> {
        let stale = super::kv::StaleRoutes::new();
        let (routed_end, inverted) = routed_end(&req);
        // Kept while the read waits for locks: only transactions started
        // below it can commit at or below it (`Locks::blocking_read`), so
        // a stream of later ones cannot hold the read up.
        let mut kept = None;
        loop {
            let Some((t, caught_up)) = self
                .regions_at_timestamp(&req.key, routed_end.as_deref(), kept.take())
                .await?
            else {
                stale.wait().await?;
                continue;
            };
            if req.revision > t {
                return Err(Error::Rejected(cairn_mvcc::Rejection::FutureRevision));
            }
            let mut views = Vec::with_capacity(caught_up.len());
            let mut waited = false;
            for (view, lock) in caught_up {
                if let Some((region, lock)) = lock {
                    // A transaction across regions may still commit at or
                    // below this read's timestamp: wait, read again.
                    self.resolve_lock(region, lock).await?;
                    waited = true;
                    continue;
                }
                views.push(view);
            }
            if waited {
                kept = Some(t);
                continue;
            }
            self.authorize(access).await?;
            let at = if req.revision > 0 { req.revision } else { t };
            match self.read_parts(&req, views, at, t, inverted).await {
                // A compaction past T applied meanwhile: a read of the
                // newest keys is never refused as compacted; read again
                // at a new timestamp.
                Err(Error::Rejected(cairn_mvcc::Rejection::Compacted)) if req.revision == 0 => {
                    stale.wait().await?;
                }
                other => return other,
            }
        }
    }

    /// Step 3: reads `req` from each region's view at revision `at` (a
    /// region whose newest revision is lower, there: nothing at or below
    /// `at` is left to apply in it), each part cut to its region, and
    /// merges the parts under header revision `header`. One key is read
    /// in place (bounded work), a span on the span pool.
    pub(super) async fn read_parts(
        &self,
        req: &RangeRequest,
        views: Vec<RegionView>,
        at: i64,
        header: i64,
        inverted: bool,
    ) -> Result<RangeResponse> {
        let mut parts = Vec::with_capacity(views.len());
        for (snap, revs, range) in views {
            let read_at = at.min(revs.current);
            let part = match inverted {
                true => Some(RangeRequest {
                    revision: read_at,
                    ..req.clone()
                }),
                false => cairn_mvcc::part_request(req, &range.start, &range.end, read_at)?,
            };
            if let Some(part) = part {
                parts.push((snap, revs, part));
            }
        }
        let whole = req.clone();
        let read = move || {
            let parts = parts
                .iter()
                .map(|(snap, revs, part)| (&**snap, part.clone(), *revs));
            cairn_mvcc::range_parts(&whole, parts, header)
        };
        if req.range_end.is_empty() {
            read().map_err(Error::from)
        } else {
            self.spans.run(read).await?.map_err(Error::from)
        }
    }

    /// Steps 1 and 2 of the module essay for the regions holding `[key,
    /// end)` (`end` None: to the end of the keyspace): a confirmed read
    /// timestamp T, and each region's view once its replica here has
    /// applied every write stamped at or below T, in key order with its
    /// revisions and range. `None` when the regions here do not tile the
    /// span or one split meanwhile (route again shortly).
    /// With each view, the lock (and its region) of a transaction across
    /// regions that may still commit at or below T in the span, if any.
    /// `at`: a timestamp taken before, to catch up to again (after waiting
    /// for a lock) instead of a new one.
    pub(crate) async fn regions_at_timestamp(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
        at: Option<i64>,
    ) -> Result<Option<(i64, Vec<(RegionView, Option<(u64, LockRef)>)>)>> {
        let span: KeySpan = (key.to_vec(), end.map(<[u8]>::to_vec).unwrap_or_default());
        if let Some(t) = at {
            return Ok(self
                .regions_caught_up_at(key, end, t, Some(&span), CatchUp::Read)
                .await?
                .map(|views| (t, views)));
        }
        let routed = self.regions_overlapping(key, end);
        if let [(r, start, stop)] = &routed[..] {
            // One region: the timestamp and the catch-up in one round.
            if !tiles(&routed, key, end) {
                return Ok(None);
            }
            let (t, r) = self.caught_up_at_newest(r.id).await?;
            let (snap, revs, range, lock) = r.shared.read_view_locked(&[span], t);
            if range.start != *start || range.end != *stop {
                return Ok(None);
            }
            return Ok(Some((
                t,
                vec![((snap, revs, range), lock.map(|l| (r.id, l)))],
            )));
        }
        let t = self.read_timestamp().await?;
        Ok(self
            .regions_caught_up_at(key, end, t, Some(&span), CatchUp::Read)
            .await?
            .map(|views| (t, views)))
    }

    /// A confirmed read timestamp (step 1): the newest one the TSO has
    /// handed out, so reads use up no revisions.
    /// Concurrent reads on this node share rounds (`read_timestamps`).
    pub(super) async fn read_timestamp(&self) -> Result<i64> {
        self.read_timestamps.round().await
    }

    /// A new, confirmed timestamp: a transaction across regions commits
    /// at it.
    pub(super) async fn commit_timestamp(&self) -> Result<i64> {
        self.submit(META_REGION, ForwardOp::CommitTimestamp)
            .await?
            .timestamp()
    }

    /// Step 2 at timestamp `t`: each region's view, taken once it has
    /// caught up by `catch_up` (`None`: route again, at a new timestamp).
    ///
    /// A region that split after it was routed keeps its left part, which
    /// it holds complete up to `t` as it was caught up; only its right
    /// part, now other regions, is routed again and caught up at the same
    /// `t` ([`Gaps`]). So a read across many regions is not begun again
    /// from the timestamp each time one of them splits: under a load that
    /// splits regions every few puts, that starved it (7 s, then
    /// `EpochMismatch`), and so it did backups and hashes of the whole
    /// store. Each view is then complete only in its own snapshot, taken
    /// when its region caught up: right for a read or a hash, which reads
    /// each region from its own view. One view for every region must be
    /// taken after every part's check (a read-only Txn and a backup do
    /// so). Any other change (a merge, a region being started here) routes
    /// everything again.
    pub(super) async fn regions_caught_up_at(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
        t: i64,
        locks_in: Option<&KeySpan>,
        catch_up: CatchUp,
    ) -> Result<Option<Vec<(RegionView, Option<(u64, LockRef)>)>>> {
        let spans: Vec<KeySpan> = locks_in.cloned().into_iter().collect();
        let mut views = Vec::new();
        let mut gaps = Gaps::new(key, end);
        while let Some(gap) = gaps.next() {
            let mut routed = self.regions_overlapping(&gap.start, gap.end.as_deref());
            routed.sort_by(|a, b| a.1.cmp(&b.1));
            match gap.tiled_by(&routed) {
                Tiling::Tiled => {}
                // A region born by a split is being started here.
                Tiling::Hole if !gap.first && gaps.again(gap) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
                Tiling::Hole | Tiling::Merged => return Ok(None),
            }
            // The regions' leaders are asked together, a few at a time.
            let regions: Vec<_> = routed.iter().map(|(r, _, _)| r.clone()).collect();
            let ready: Vec<_> = futures::stream::iter(regions)
                .map(|r| self.caught_up_by(r, t, catch_up))
                .buffered(CATCH_UP_AT_ONCE)
                .try_collect()
                .await?;
            for (r, (_, start, stop)) in ready.into_iter().zip(&routed) {
                let (snap, revs, range, lock) = r.shared.read_view_locked(&spans, t);
                if range.start != *start || range.end != *stop {
                    let followed =
                        split_off(&range, start, stop) && gaps.split(&range.end, stop, end);
                    if !followed {
                        return Ok(None);
                    }
                }
                views.push(((snap, revs, range), lock.map(|l| (r.id, l))));
            }
        }
        views.sort_by(|a: &(RegionView, _), b| a.0 .2.start.cmp(&b.0 .2.start));
        Ok(Some(views))
    }
}

/// True when a region routed as `[start, stop)` now holds `range`, a
/// non-empty left part of it: it split since.
fn split_off(range: &cairn_raft::RegionRange, start: &[u8], stop: &[u8]) -> bool {
    range.start == start
        && !range.is_empty()
        && !range.end.is_empty()
        && (stop.is_empty() || range.end.as_slice() < stop)
}

/// A span to route: `[start, end)`, `end` None to the end of the keyspace.
struct Gap {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    /// The read's own span, whose regions may reach past it at both ends;
    /// else the right part of a region that split, from its split key.
    first: bool,
    /// The gap ends where the split region did (not at the read's end):
    /// the last region routed must end there too, or it reaches into a
    /// region already read (a merge).
    end_exact: bool,
}

/// How the regions routed for a [`Gap`] cover it.
enum Tiling {
    Tiled,
    /// Not at all, or with a hole: a region born by a split is not
    /// started here yet, or one is frozen for a merge.
    Hole,
    /// Past a split gap's edges: a region read already merged with a new
    /// one.
    Merged,
}

impl Gap {
    fn tiled_by(&self, routed: &[(std::sync::Arc<super::Region>, Vec<u8>, Vec<u8>)]) -> Tiling {
        let end = self.end.as_deref();
        if !self.first {
            let reaches_back = routed.first().is_some_and(|(_, s, _)| *s < self.start);
            let reaches_past = self.end_exact
                && routed
                    .last()
                    .is_some_and(|(_, _, e)| e.as_slice() != end.unwrap_or_default());
            if reaches_back || reaches_past {
                return Tiling::Merged;
            }
        }
        if tiles(routed, &self.start, end) {
            Tiling::Tiled
        } else {
            Tiling::Hole
        }
    }
}

/// The spans [`Node::regions_caught_up_at`] still has to route, and how
/// many more times it may route one: each split met, and each wait for a
/// region being started, costs one of [`GAP_ROUTES`].
struct Gaps {
    left: Vec<Gap>,
    routes: usize,
}

/// How many spans one read routes at most before it begins again.
const GAP_ROUTES: usize = 200;

impl Gaps {
    fn new(key: &[u8], end: Option<&[u8]>) -> Self {
        Gaps {
            left: vec![Gap {
                start: key.to_vec(),
                end: end.map(<[u8]>::to_vec),
                first: true,
                end_exact: false,
            }],
            routes: 0,
        }
    }

    fn next(&mut self) -> Option<Gap> {
        self.left.pop()
    }

    /// `gap` to route again; false when out of routes.
    fn again(&mut self, gap: Gap) -> bool {
        self.routes += 1;
        self.left.push(gap);
        self.routes <= GAP_ROUTES
    }

    /// A region routed as ending at `stop` (empty: the end of the
    /// keyspace) split at `at`: what of `[at, stop)` the read reaches
    /// (`end`: the read's end) to route; false when out of routes.
    fn split(&mut self, at: &[u8], stop: &[u8], end: Option<&[u8]>) -> bool {
        if end.is_some_and(|e| e <= at) {
            return true;
        }
        let stop = (!stop.is_empty()).then_some(stop);
        // The nearer of the region's end and the read's.
        let (gap_end, end_exact) = match (stop, end) {
            (Some(s), Some(e)) if e < s => (Some(e), false),
            (None, Some(e)) => (Some(e), false),
            (s, _) => (s, true),
        };
        self.again(Gap {
            start: at.to_vec(),
            end: gap_end.map(<[u8]>::to_vec),
            first: false,
            end_exact,
        })
    }
}

impl Node {
    /// The revisions to read an engine view at (the view taken just
    /// before this call): the newest and the highest compaction revision
    /// of the regions holding `spans` now (a region born by a split since
    /// holds its parent's).
    /// They must tile the spans (`None`: look again): a region frozen for
    /// a merge lists no range, and may have compacted more than the rest.
    /// Each is read once no write is half done there, so the view holds no
    /// version or compaction they lack.
    pub(super) async fn revisions_after_view(
        &self,
        spans: &[KeySpan],
        stale: &super::kv::StaleRoutes,
    ) -> Result<Option<cairn_mvcc::Revisions>> {
        let mut now = Vec::new();
        for s in spans {
            let end = (!s.1.is_empty()).then_some(s.1.as_slice());
            let mut routed = self.regions_overlapping(&s.0, end);
            routed.sort_by(|a, b| a.1.cmp(&b.1));
            if !tiles(&routed, &s.0, end) {
                return Ok(None);
            }
            now.extend(routed.into_iter().map(|(r, _, _)| r));
        }
        let mut revs = cairn_mvcc::Revisions::default();
        for r in now {
            let theirs = loop {
                match r.shared.published_revisions() {
                    Some(theirs) => break theirs,
                    // A write half done; bounded (a replica whose write
                    // failed stays so).
                    None => stale.wait().await?,
                }
            };
            revs.current = revs.current.max(theirs.current);
            revs.compacted = revs.compacted.max(theirs.compacted);
        }
        Ok(Some(revs))
    }
}

/// Where a Range's keys end for routing (`None`: the end of the
/// keyspace), and whether the range is inverted: its end at or below its
/// key, so it holds no key — etcd answers it empty (checking its revision
/// as any read's) — and it is routed to the region holding its key.
pub(super) fn routed_end(req: &RangeRequest) -> (Option<Vec<u8>>, bool) {
    let one_key = [req.key.as_slice(), &[0]].concat();
    let end = match req.range_end.as_slice() {
        [] => Some(one_key.clone()),
        [0] => None,
        e => Some(e.to_vec()),
    };
    let inverted = end.as_deref().is_some_and(|e| e <= req.key.as_slice());
    (if inverted { Some(one_key) } else { end }, inverted)
}

/// A region's read view, its revisions, and its range.
pub(crate) type RegionView = (
    std::sync::Arc<dyn cairn_storage::Snapshot>,
    cairn_mvcc::Revisions,
    cairn_raft::RegionRange,
);

/// True when `routed` (sorted by start) covers `[key, end)` (`end` None:
/// to the end of the keyspace) without a gap.
pub(super) fn tiles(
    routed: &[(std::sync::Arc<super::Region>, Vec<u8>, Vec<u8>)],
    key: &[u8],
    end: Option<&[u8]>,
) -> bool {
    bounds_tile(
        routed.iter().map(|(_, s, e)| (s.as_slice(), e.as_slice())),
        key,
        end,
    )
}

/// True when `bounds` (`(start, end)` of regions, sorted by start; end
/// empty: to the end) cover `[key, end)` (`end` None: to the end of the
/// keyspace) without a gap.
pub(crate) fn bounds_tile<'a>(
    mut bounds: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    key: &[u8],
    end: Option<&[u8]>,
) -> bool {
    let Some((first, mut reached)) = bounds.next() else {
        return false;
    };
    if first > key {
        return false;
    }
    for (start, stop) in bounds {
        if reached.is_empty() || start != reached {
            return false;
        }
        reached = stop;
    }
    reached.is_empty() || end.is_some_and(|e| e <= reached)
}
