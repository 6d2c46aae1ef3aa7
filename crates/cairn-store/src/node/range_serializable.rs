//! A serializable `Range` whose keys lie in several regions, served by
//! this replica alone — as etcd serves a serializable read from any
//! member, with no leader's help: possibly stale, never torn.
//!
//! Each region's replica here is complete up to its *resolved* revision:
//! every write of the region at or below it is applied, and no lock can
//! still commit at or below it (a transaction across regions commits
//! above its locks' floors). So the replica's regions, each read at R =
//! the lowest of their resolved revisions, are one snapshot of the store
//! at R: a transaction across regions is in every part or in none. R is
//! the answer's header revision (etcd's is the member's own revision).
//! Idle regions' resolved revisions move with closed timestamps, which
//! their leaders propose only while someone asks (`closes.rs`): the read
//! asks for the regions behind. So R trails the newest write by about a
//! close interval, or by a lock still standing. A region that was not
//! being closed lately may be far behind: the read waits (up to the
//! sequential wait below) for it to reach the freshest region here, then
//! is served in any case. A read that waits hurries the closes of the
//! regions behind (`close_hurry`).
//!
//! R is at least every revision this member has answered a write with
//! (`sequential.rs`): below that, the read waits for the regions here to
//! resolve that far, briefly, then is read linearizably.
//!
//! A request at an explicit revision above R — one another region of this
//! replica has not resolved yet — is read linearizably instead
//! (`range_across`): its answer is the same, or it is a future revision.
//! So is a read through a replica that holds nothing yet (one adopted
//! after a missed split, before its snapshot), and one of the newest keys
//! where a region here is compacted past R.

use cairn_api::etcdserverpb::{RangeRequest, RangeResponse};

use super::range_across::{routed_end, tiles, RegionView};
use crate::node::Node;
use crate::{Access, Error, Result};

impl Node {
    /// Serves serializable `req` across regions from this replica (see
    /// the module essay); true with it when it was (false: read at a
    /// timestamp instead).
    pub(crate) async fn range_serializable_across(
        &self,
        req: RangeRequest,
        access: &Access,
        floor: i64,
        since: std::time::Instant,
    ) -> Result<(RangeResponse, bool)> {
        let stale = super::kv::StaleRoutes::new();
        let at_timestamp = |r: Result<RangeResponse>| r.map(|r| (r, false));
        let (routed_end, inverted) = routed_end(&req);
        // The freshest revision a region here had resolved, if a region
        // behind it was not being closed lately (see below).
        let mut catch_up: Option<i64> = None;
        // When this read last named the regions it waits on (`close_hurry`).
        let mut pace = super::close_hurry::HurryPace::default();
        loop {
            let mut routed = self.regions_overlapping(&req.key, routed_end.as_deref());
            routed.sort_by(|a, b| a.1.cmp(&b.1));
            if !tiles(&routed, &req.key, routed_end.as_deref()) {
                // A region born by a split is being started here.
                stale.wait().await?;
                continue;
            }
            if routed.iter().any(|(r, _, _)| r.shared.applied_index() == 0) {
                return at_timestamp(Box::pin(self.range_across(req, access)).await);
            }
            let mut views: Vec<RegionView> = Vec::with_capacity(routed.len());
            let mut resolved = i64::MAX;
            let mut ats = Vec::with_capacity(routed.len());
            for (r, start, stop) in &routed {
                let (view, at) = r.shared.resolved_view_in();
                if view.2.start != *start || view.2.end != *stop {
                    break;
                }
                resolved = resolved.min(at);
                ats.push(at);
                views.push(view);
            }
            if views.len() < routed.len() {
                // One split since it was routed.
                stale.wait().await?;
                continue;
            }
            // An idle region's revision moves only while someone asks for
            // closes (`closes.rs`): ask for those behind. If one was not
            // being closed lately, it may be far behind; wait for it, as
            // for the floor, to reach the freshest region here, but serve
            // the read anyway when the wait is over.
            let freshest = ats.iter().copied().max().unwrap_or(0);
            // The regions a wait below waits on: behind the freshest, or
            // below the floor.
            let behind: Vec<u64> = routed
                .iter()
                .zip(&ats)
                .filter(|(_, at)| **at < freshest.max(floor))
                .map(|((r, _, _), _)| r.id)
                .collect();
            for ((r, _, _), at) in routed.iter().zip(&ats) {
                if *at < freshest {
                    if catch_up.is_none() && req.revision == 0 && !r.closes.flowing() {
                        catch_up = Some(freshest);
                    }
                    self.want_closes(r);
                }
            }
            if resolved < floor {
                // Below a revision this member answered with: wait for
                // the regions here to resolve that far (sequential.rs).
                if since.elapsed() < super::sequential::SEQUENTIAL_WAIT && !self.is_stopped() {
                    if !behind.is_empty() && pace.due() {
                        self.hurries.hurry(behind);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                }
                return at_timestamp(Box::pin(self.range_across(req, access)).await);
            }
            if catch_up.is_some_and(|t| resolved < t)
                && since.elapsed() < super::sequential::SEQUENTIAL_WAIT
                && !self.is_stopped()
            {
                if !behind.is_empty() && pace.due() {
                    self.hurries.hurry(behind);
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
            if req.revision > resolved {
                return at_timestamp(Box::pin(self.range_across(req, access)).await);
            }
            self.authorize(access).await?;
            let at = if req.revision > 0 {
                req.revision
            } else {
                resolved
            };
            return match self.read_parts(&req, views, at, resolved, inverted).await {
                // One region compacted past R (another one here has not
                // resolved that far yet): a read of the newest keys is
                // never refused as compacted; the leaders answer it.
                Err(Error::Rejected(cairn_mvcc::Rejection::Compacted)) if req.revision == 0 => {
                    at_timestamp(Box::pin(self.range_across(req, access)).await)
                }
                other => other.map(|r| (r, true)),
            };
        }
    }
}
