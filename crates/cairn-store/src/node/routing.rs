//! Routing: which data region holds a key, and which regions a span
//! touches — read from the ranges of the replicas this node hosts (every
//! node hosts a replica of every region until placement exists). A replica
//! that has not applied a split yet still shows the wider range; the
//! region's leader then answers `EpochMismatch` and the caller routes
//! again. Splits only narrow ranges, so a span that crosses regions here
//! crosses them everywhere. A merge widens one: a member that applied it
//! routes a span to the one region a member behind still sees as two; that
//! region's leader refuses what is not within its range as it applied it
//! (`WrongRegion`), and the caller routes again. A region frozen for a
//! merge holds no key here: its keys route nowhere (`EpochMismatch`,
//! retried) until the merge ends.
//!
//! A key is looked up through the registry's hint (`registry.rs`) and
//! checked against the range of the one replica it names: a request costs
//! the same with two regions or a thousand. Spans still look at every
//! replica.

use crate::node::{Node, Region, DATA_REGION, META_REGION};
use crate::{Error, Result};
use std::sync::Arc;

use cairn_api::etcdserverpb::TxnRequest;

impl Node {
    /// The data regions whose ranges overlap `[start, end)` (`end` None: to
    /// the end), each with its own range (`end` empty: to the end).
    pub fn regions_overlapping(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Vec<(Arc<Region>, Vec<u8>, Vec<u8>)> {
        self.regions
            .all()
            .into_iter()
            .filter(|r| r.id != META_REGION)
            .filter_map(|r| {
                let range = r.shared.range();
                // (A region frozen for a merge holds no key.)
                let overlaps = !range.is_empty()
                    && (range.end.is_empty() || start < range.end.as_slice())
                    && end.is_none_or(|e| range.start.as_slice() < e);
                overlaps.then_some((r, range.start, range.end))
            })
            .collect()
    }

    /// How many data regions are hosted here.
    pub(crate) fn data_region_count(&self) -> usize {
        self.regions.len() - usize::from(self.regions.get(META_REGION).is_some())
    }

    /// Every data region replica hosted here.
    pub(crate) fn data_regions(&self) -> Vec<Arc<Region>> {
        let mut all = self.regions.all();
        all.retain(|r| r.id != META_REGION);
        all
    }

    /// The data region holding `key`: `EpochMismatch` while none hosted
    /// here does (a region born by a split is being started here; route
    /// again shortly).
    pub fn route(&self, key: &[u8]) -> Result<Arc<Region>> {
        let holds = |r: &Region| r.shared.with_applied(|a| a.range.contains(key));
        // One lookup and one look at the region found, however many
        // regions: the hint is right unless a split, merge or new replica
        // changed a range since it was drawn. (A hint drawn while a merge
        // took a replica out can name it: retired, it holds nothing.)
        let hint = self.regions.hint(key);
        if let Some(r) = hint.filter(|r| !r.shared.is_retired() && holds(r)) {
            return Ok(r);
        }
        let data = self.data_regions();
        let found = data.iter().find(|r| holds(r)).cloned();
        // Redrawn only when it would now hit: while a key routes nowhere
        // (a merge freeze, a split's new region not yet started here) its
        // retries would each redraw it for nothing.
        if found.is_some() {
            self.regions.draw_hint(&data);
        }
        found.ok_or(Error::EpochMismatch)
    }

    /// The one data region holding every key `req` names, or
    /// `SpansRegions` (also for a put with a lease outside the first
    /// region).
    pub(crate) fn route_txn(&self, req: &TxnRequest) -> Result<u64> {
        let r = self.route(&first_key(req))?;
        let within = r
            .shared
            .with_applied(|a| cairn_raft::txn_within(req, &a.range));
        // A put with a lease outside the first region also writes the
        // lease table (in the first region): a transaction across regions.
        let leased_elsewhere = r.id != DATA_REGION && !cairn_raft::leases_put(req).is_empty();
        if within && !leased_elsewhere {
            Ok(r.id)
        } else {
            Err(Error::SpansRegions)
        }
    }

    /// The one data region holding the span `[key, range_end)` (etcd's
    /// form), or `SpansRegions`.
    pub(crate) fn route_span(&self, key: &[u8], range_end: &[u8]) -> Result<u64> {
        let r = self.route(key)?;
        if r.shared.with_applied(|a| a.range.covers(key, range_end)) {
            Ok(r.id)
        } else {
            Err(Error::SpansRegions)
        }
    }
}

/// The key a transaction is routed by: its first named key, past spans
/// that hold no key (an end at or below the key: every region covers
/// those, so routing by one could pick a region holding none of the rest).
pub(super) fn first_key(req: &TxnRequest) -> Vec<u8> {
    fn first(req: &TxnRequest) -> Option<&[u8]> {
        use cairn_api::etcdserverpb::request_op::Request;
        let holds_keys = |key: &[u8], end: &[u8]| matches!(end, [] | [0]) || end > key;
        if let Some(c) = req
            .compare
            .iter()
            .find(|c| holds_keys(&c.key, &c.range_end))
        {
            return Some(&c.key);
        }
        req.success
            .iter()
            .chain(&req.failure)
            .find_map(|op| match &op.request {
                Some(Request::RequestPut(p)) => Some(p.key.as_slice()),
                Some(Request::RequestRange(r)) => {
                    holds_keys(&r.key, &r.range_end).then_some(&r.key[..])
                }
                Some(Request::RequestDeleteRange(d)) => {
                    holds_keys(&d.key, &d.range_end).then_some(&d.key[..])
                }
                Some(Request::RequestTxn(t)) => first(t),
                None => None,
            })
    }
    first(req).map(<[u8]>::to_vec).unwrap_or_default()
}
