//! A `Range` whose keys lie in several regions, read at one timestamp
//! (issue 17, phase 3): no torn reads, in key order, with etcd's count,
//! limit, sort and `more` across region boundaries.
//!
//! Reading each region at its own newest state is not a snapshot: two
//! regions' read indexes are taken at two moments, and a write in one
//! acknowledged before a write in the other began can be missed while the
//! later one is seen (two such reads can disagree on their order). So:
//!
//! 1. take a read timestamp T from the TSO, whose leader confirms it
//!    still leads after handing it out (a leader paused past an election
//!    would hand out one below its successor's). Every write acknowledged
//!    before the read began got its timestamp, which is its revision,
//!    before T; every write that begins after T was taken gets one above.
//!    (A group of writes applies only in the leader term it was stamped
//!    in, `Command::InTerm`: one stamped before a leader change cannot
//!    commit after a read the next leader served.)
//! 2. In each region, its leader waits until every write it stamped at or
//!    below T is answered (`Proposer::settled`: a group registers before
//!    it fetches its timestamps, so a group with a timestamp below T is
//!    seen), then gives a read index, which the replica here waits to
//!    apply. A leader elected since has every entry of its predecessors
//!    that can still commit in its log before its read index.
//! 3. Read every region at revision T (a region's newest revision when
//!    that is lower: nothing at or below T is left to apply there), each
//!    part cut to its region, and merge them (`cairn_mvcc::merge_ranges`).
//!
//! The header carries T: the store's revision as of the read, above every
//! revision the answer holds. A read at an older revision reads every
//! region there, and one above T is a future revision. A linearizable read
//! within one region at a revision above that region's newest (one another
//! region wrote) takes this path too: only a timestamp says whether it is
//! in the future.
//!
//! A serializable read across regions takes the same path: one replica's
//! regions are not a snapshot of one moment either. So, unlike etcd's, it
//! needs the meta region's leader and each region's leader to answer.

use cairn_api::etcdserverpb::{RangeRequest, RangeResponse};
use futures::{StreamExt, TryStreamExt};

use crate::node::{Node, META_REGION};
use crate::remote::ForwardOp;
use crate::{Access, Error, Result};

/// Regions caught up at once for one read.
const CATCH_UP_AT_ONCE: usize = 16;

impl Node {
    /// Serves `req`, whose keys lie in more than one region, or which
    /// reads one region at a revision above its newest (see the module
    /// essay). Regions routed by a replica that has not applied a
    /// split yet are routed again.
    pub(crate) async fn range_across(
        &self,
        req: RangeRequest,
        access: &Access,
    ) -> Result<RangeResponse> {
        let stale = super::kv::StaleRoutes::new();
        loop {
            let t = self
                .submit(META_REGION, ForwardOp::ReadTimestamp)
                .await?
                .timestamp()?;
            if req.revision > t {
                return Err(Error::Rejected(cairn_mvcc::Rejection::FutureRevision));
            }
            let at = if req.revision > 0 { req.revision } else { t };
            let one_key = [req.key.as_slice(), &[0]].concat();
            let end = match req.range_end.as_slice() {
                [] => Some(one_key.as_slice()),
                [0] => None,
                e => Some(e),
            };
            let mut routed = self.regions_overlapping(&req.key, end);
            routed.sort_by(|a, b| a.1.cmp(&b.1));
            if !tiles(&routed, &req.key, end) {
                // A region born by a split is being started here.
                stale.wait().await?;
                continue;
            }
            // The regions' leaders are asked together, a few at a time.
            let ids: Vec<u64> = routed.iter().map(|(r, _, _)| r.id).collect();
            let ready: Vec<_> = futures::stream::iter(ids)
                .map(|id| self.caught_up_at(id, t))
                .buffered(CATCH_UP_AT_ONCE)
                .try_collect()
                .await?;
            let mut views = Vec::with_capacity(routed.len());
            let mut moved = false;
            for (r, (_, start, stop)) in ready.into_iter().zip(&routed) {
                let (snap, revs, range) = r.shared.read_view_in();
                if range.start != *start || range.end != *stop {
                    moved = true;
                    break;
                }
                let Some(part) = cairn_mvcc::part_request(&req, start, stop, at.min(revs.current))?
                else {
                    continue;
                };
                views.push((snap, revs, part));
            }
            if moved {
                stale.wait().await?;
                continue;
            }
            self.authorize(access).await?;
            let whole = req.clone();
            let answer = self
                .spans
                .run(move || {
                    let mut parts = Vec::with_capacity(views.len());
                    for (snap, revs, part) in views {
                        parts.push(cairn_mvcc::range(&*snap, &part, revs)?);
                    }
                    cairn_mvcc::merge_ranges(&whole, parts, t)
                })
                .await?
                .map_err(Error::from);
            match answer {
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
}

/// True when `routed` (sorted by start) covers `[key, end)` (`end` None:
/// to the end of the keyspace) without a gap.
fn tiles(
    routed: &[(std::sync::Arc<super::Region>, Vec<u8>, Vec<u8>)],
    key: &[u8],
    end: Option<&[u8]>,
) -> bool {
    let Some(first) = routed.first() else {
        return false;
    };
    if first.1.as_slice() > key {
        return false;
    }
    let mut reached: &[u8] = &first.2;
    for (_, start, stop) in &routed[1..] {
        if reached.is_empty() || start.as_slice() != reached {
            return false;
        }
        reached = stop;
    }
    reached.is_empty() || end.is_some_and(|e| e <= reached)
}
